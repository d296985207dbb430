// part: client
/* Fuzz target for client_socks: arbitrary bytes as a local program would
 * send them to reachback-client --socks, delivered whole, byte by byte and
 * in pseudo-random splits drawn from a hash of the input, through a
 * caller that keeps unconsumed bytes the way the client does. Checks the
 * parser's promises on every call, and that the outcome (step, bytes
 * consumed, host, port, reply) is the same however the bytes were split. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "client_socks.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    socks_step_t step; /* the last answer: NEED_MORE (input ran out), REQUEST or ERROR */
    size_t consumed;
    unsigned methods; /* SOCKS_REPLY_METHOD answers */
    char host[256];
    uint16_t port;
    uint8_t reply[16];
    size_t reply_len;
} outcome_t;

/* Splits: 0 delivers everything at once, 1 a byte at a time, anything
 * else drives an xorshift for chunk sizes of 1..16. */
static size_t s_chunk(uint32_t *rng, size_t left)
{
    if (*rng == 0) return left;
    if (*rng == 1) return 1;
    *rng ^= *rng << 13;
    *rng ^= *rng >> 17;
    *rng ^= *rng << 5;
    size_t n = 1 + *rng % 16;
    return n < left ? n : left;
}

/* The answer's promises, whatever the step. */
static void s_check(const socks_t *s, socks_step_t st, size_t used, size_t len)
{
    if (used > len || memchr(s->host, '\0', sizeof s->host) == NULL ||
        s->reply_len > sizeof s->reply)
        __builtin_trap();
    if (st == SOCKS_ERROR) {
        /* Nothing, 05 FF, or a full reply that is not a success. */
        if (used != 0 || s->why == NULL) __builtin_trap();
        if (s->reply_len == 2 && (s->reply[0] != 5 || s->reply[1] != 0xFF)) __builtin_trap();
        if (s->reply_len == 10 &&
            (s->reply[0] != 5 || s->reply[1] == 0 || s->reply[2] != 0 || s->reply[3] != 1))
            __builtin_trap();
        if (s->reply_len != 0 && s->reply_len != 2 && s->reply_len != 10) __builtin_trap();
    }
}

/* Plays the caller over data[0..size), delivered in splits from rng. */
static void s_run(const uint8_t *data, size_t size, uint32_t rng, outcome_t *o)
{
    socks_t s;
    socks_init(&s);
    size_t have = 0, off = 0;
    bool refused = false; /* 05 FF handed out */
    socks_step_t st;
    o->methods = 0;
    for (;;) {
        size_t used = (size_t)-1;
        st = socks_feed(&s, data + off, have - off, &used);
        s_check(&s, st, used, have - off);
        if (refused && (st != SOCKS_ERROR || s.reply_len != 0)) __builtin_trap();
        if (st == SOCKS_NEED_MORE) {
            /* Never short of a message when a whole one is there. */
            if (used != 0 || have - off >= SOCKS_MAX_MSG) __builtin_trap();
            if (have == size) break;
            have += s_chunk(&rng, size - have);
        } else if (st == SOCKS_REPLY_METHOD) {
            if (s.reply_len != 2 || s.reply[0] != 5 || (s.reply[1] != 0x00 && s.reply[1] != 0xFF) ||
                used < 3 || used != 2u + data[off + 1] || o->methods++ > 0)
                __builtin_trap();
            refused = s.reply[1] == 0xFF;
            off += used;
        } else if (st == SOCKS_REQUEST) {
            /* After an accepted greeting: exactly one request consumed
             * (a domain name read as its bytes), a non-empty host without
             * control bytes or spaces, and a port. */
            const uint8_t *r = data + off;
            size_t n = strlen(s.host);
            size_t alen = r[3] == 1 ? 4 : r[3] == 4 ? 16 : 1u + r[4];
            if (o->methods != 1 || used != 4 + alen + 2 || n == 0 || s.port == 0 ||
                (r[3] == 3 && (n != r[4] || memcmp(s.host, r + 5, n) != 0)))
                __builtin_trap();
            for (size_t i = 0; i < n; i++)
                if ((uint8_t)s.host[i] <= 0x20 || (uint8_t)s.host[i] == 0x7F) __builtin_trap();
            off += used;
            break;
        } else if (st == SOCKS_ERROR) {
            break;
        } else {
            __builtin_trap();
        }
    }
    o->step = st;
    o->consumed = off;
    memcpy(o->host, s.host, sizeof o->host);
    o->port = s.port;
    memcpy(o->reply, s.reply, sizeof o->reply);
    o->reply_len = s.reply_len;
    if (st == SOCKS_NEED_MORE) return;
    /* Once over, it stays over, with nothing more to send. */
    size_t used = (size_t)-1;
    st = socks_feed(&s, data + off, size - off, &used);
    s_check(&s, st, used, size - off);
    if (st != SOCKS_ERROR || s.reply_len != 0) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* FNV-1a of the input seeds the pseudo-random split. */
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 16777619u;
    if (h < 2) h += 2;

    outcome_t o[3];
    const uint32_t seeds[3] = {0, 1, h};
    for (int i = 0; i < 3; i++)
        s_run(data, size, seeds[i], &o[i]);
    for (int i = 1; i < 3; i++)
        if (o[i].step != o[0].step || o[i].consumed != o[0].consumed ||
            o[i].methods != o[0].methods || o[i].port != o[0].port ||
            o[i].reply_len != o[0].reply_len || strcmp(o[i].host, o[0].host) != 0 ||
            memcmp(o[i].reply, o[0].reply, o[0].reply_len) != 0)
            __builtin_trap();
    return 0;
}
