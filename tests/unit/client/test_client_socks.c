/* client_socks: greetings and CONNECT requests of every address type, fed
 * whole, in one buffer together, byte by byte and in odd chunks, with early
 * data after the request; and refusals with the right reply: no acceptable
 * method, BIND / UDP ASSOCIATE / unknown commands (07), unknown address
 * types (08), bad versions, RSV, domain names and port 0; socks_reply's
 * bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client_socks.h"

/* A well-behaved client's greeting: version 5, one method, 00. */
static const uint8_t s_hello[] = {5, 1, 0};

/* Writes VER CMD RSV ATYP addr[alen] PORT into out; returns its length. */
static size_t s_req(uint8_t *out, uint8_t ver, uint8_t cmd, uint8_t rsv, uint8_t atyp,
                    const void *addr, size_t alen, uint16_t port)
{
    out[0] = ver;
    out[1] = cmd;
    out[2] = rsv;
    out[3] = atyp;
    memcpy(out + 4, addr, alen);
    out[4 + alen] = (uint8_t)(port >> 8);
    out[5 + alen] = (uint8_t)port;
    return 6 + alen;
}

/* A CONNECT to a domain name of n bytes. */
static size_t s_req_name(uint8_t *out, const char *name, size_t n, uint16_t port)
{
    uint8_t addr[256];
    addr[0] = (uint8_t)n;
    memcpy(addr + 1, name, n);
    return s_req(out, 5, 1, 0, 3, addr, 1 + n, port);
}

/* The greeting, then the request: one client's whole first flight. */
static size_t s_flight(uint8_t *out, const uint8_t *req, size_t n)
{
    memcpy(out, s_hello, sizeof s_hello);
    memcpy(out + sizeof s_hello, req, n);
    return sizeof s_hello + n;
}

/* Plays the caller: delivers msg[0..len) chunk bytes at a time, keeps what
 * is not consumed, and calls socks_feed until it answers SOCKS_REQUEST or
 * SOCKS_ERROR, or needs more than there is. Checks the promises about
 * *used and the method reply on the way; *consumed is the total used. */
static socks_step_t s_drive(socks_t *s, const uint8_t *msg, size_t len, size_t chunk,
                            size_t *consumed)
{
    socks_init(s);
    size_t have = 0, off = 0;
    for (;;) {
        size_t used = 12345;
        socks_step_t st = socks_feed(s, msg + off, have - off, &used);
        assert_true(used <= have - off);
        if (st == SOCKS_NEED_MORE) {
            assert_int_equal(used, 0);
            if (have == len) break;
            have += chunk < len - have ? chunk : len - have;
            continue;
        }
        if (st == SOCKS_REPLY_METHOD) {
            assert_int_equal(s->reply_len, 2);
            assert_int_equal(s->reply[0], 5);
            assert_true(s->reply[1] == 0x00 || s->reply[1] == 0xFF);
            assert_true(used >= 3);
            off += used;
            continue;
        }
        if (st == SOCKS_ERROR) {
            assert_int_equal(used, 0);
            assert_non_null(s->why);
        }
        off += used;
        *consumed = off;
        return st;
    }
    *consumed = off;
    return SOCKS_NEED_MORE;
}

/* Whole, byte by byte and in chunks of 2, 3 and 7: the request is read,
 * every byte consumed, and host and port are as expected. */
static void s_expect_request(const uint8_t *req, size_t n, const char *host, uint16_t port)
{
    uint8_t msg[600];
    size_t len = s_flight(msg, req, n);
    const size_t chunks[] = {len, 1, 2, 3, 7};
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        socks_t s;
        size_t consumed = 0;
        assert_int_equal(s_drive(&s, msg, len, chunks[i], &consumed), SOCKS_REQUEST);
        assert_int_equal(consumed, len);
        assert_string_equal(s.host, host);
        assert_int_equal(s.port, port);
        assert_int_equal(s.reply_len, 0);
    }
    /* Every proper prefix needs more, and consumes nothing past the
     * greeting. */
    for (size_t cut = 0; cut < len; cut++) {
        socks_t s;
        size_t consumed = 99;
        assert_int_equal(s_drive(&s, msg, cut, 1, &consumed), SOCKS_NEED_MORE);
        assert_int_equal(consumed, cut < sizeof s_hello ? 0 : sizeof s_hello);
        assert_string_equal(s.host, "");
    }
}

/* The request after a good greeting is refused with a full reply carrying
 * code, however it is split; the host is left empty. */
static void s_expect_refusal(const uint8_t *req, size_t n, uint8_t code)
{
    uint8_t msg[600];
    size_t len = s_flight(msg, req, n);
    const size_t chunks[] = {len, 1, 4};
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        socks_t s;
        size_t consumed = 0;
        assert_int_equal(s_drive(&s, msg, len, chunks[i], &consumed), SOCKS_ERROR);
        assert_int_equal(consumed, sizeof s_hello);
        const uint8_t want[10] = {5, code, 0, 1, 0, 0, 0, 0, 0, 0};
        assert_int_equal(s.reply_len, 10);
        assert_memory_equal(s.reply, want, 10);
        assert_string_equal(s.host, "");
    }
}

static void test_one_buffer(void **state)
{
    uint8_t req[32], msg[64];
    size_t n = s_req(req, 5, 1, 0, 1, "\x7f\x00\x00\x01", 4, 80);
    size_t len = s_flight(msg, req, n);

    socks_t s;
    socks_init(&s);
    size_t used = 0;
    assert_int_equal(socks_feed(&s, msg, len, &used), SOCKS_REPLY_METHOD);
    assert_int_equal(used, 3);
    assert_int_equal(s.reply_len, 2);
    assert_memory_equal(s.reply, "\x05\x00", 2);
    assert_int_equal(socks_feed(&s, msg + used, len - used, &used), SOCKS_REQUEST);
    assert_int_equal(used, 10);
    assert_string_equal(s.host, "127.0.0.1");
    assert_int_equal(s.port, 80);

    /* Nothing at all, even from a NULL buffer, needs more. */
    socks_init(&s);
    assert_int_equal(socks_feed(&s, NULL, 0, &used), SOCKS_NEED_MORE);
    assert_int_equal(used, 0);
}

static void test_every_atyp(void **state)
{
    uint8_t req[300];
    s_expect_request(req, s_req(req, 5, 1, 0, 1, "\x01\x02\x03\x04", 4, 443), "1.2.3.4", 443);
    s_expect_request(req, s_req(req, 5, 1, 0, 1, "\xff\xff\xff\xff", 4, 65535), "255.255.255.255",
                     65535);
    s_expect_request(req, s_req_name(req, "example.com", 11, 8080), "example.com", 8080);
    s_expect_request(req, s_req_name(req, "x", 1, 1), "x", 1);
    /* Names are not judged beyond their bytes: the resolver does that. */
    s_expect_request(req, s_req_name(req, "10.0.0.1", 8, 22), "10.0.0.1", 22);
    s_expect_request(req, s_req_name(req, "caf\xc3\xa9.lab", 9, 22), "caf\xc3\xa9.lab", 22);

    /* The gateway's intranet is IPv4: IPv6 is refused at once (reply 8),
     * but an IPv4-mapped address is the IPv4 address inside it. */
    const uint8_t mapped[16] = {[10] = 0xff, [11] = 0xff, 10, 0, 0, 1};
    s_expect_request(req, s_req(req, 5, 1, 0, 4, mapped, 16, 80), "10.0.0.1", 80);
    const uint8_t lo6[16] = {[15] = 1};
    s_expect_refusal(req, s_req(req, 5, 1, 0, 4, lo6, 16, 22), SOCKS_ATYP_UNSUPPORTED);
    const uint8_t doc6[16] = {0x20, 0x01, 0x0d, 0xb8, [14] = 0xab, [15] = 0xcd};
    s_expect_refusal(req, s_req(req, 5, 1, 0, 4, doc6, 16, 5000), SOCKS_ATYP_UNSUPPORTED);
    const uint8_t compat[16] = {[12] = 10, 0, 0, 1}; /* ::10.0.0.1 is not mapped */
    s_expect_refusal(req, s_req(req, 5, 1, 0, 4, compat, 16, 80), SOCKS_ATYP_UNSUPPORTED);
}

/* The longest name, and the longest messages: SOCKS_MAX_MSG bytes never
 * need more. */
static void test_longest(void **state)
{
    char name[256];
    memset(name, 'a', 255);
    name[255] = '\0';
    uint8_t req[300];
    size_t n = s_req_name(req, name, 255, 443);
    assert_int_equal(n, SOCKS_MAX_MSG);
    s_expect_request(req, n, name, 443);

    socks_t s;
    socks_init(&s);
    size_t used;
    uint8_t hello[SOCKS_MAX_MSG] = {5, 255};
    memset(hello + 2, 0x80, 255);
    hello[256] = 0; /* the last method offered is 00 */
    assert_int_equal(socks_feed(&s, hello, 257, &used), SOCKS_REPLY_METHOD);
    assert_int_equal(used, 257);
    assert_memory_equal(s.reply, "\x05\x00", 2);
    assert_int_equal(socks_feed(&s, req, n, &used), SOCKS_REQUEST);
    assert_int_equal(used, SOCKS_MAX_MSG);
    assert_int_equal(strlen(s.host), 255);
}

/* Bytes after the request belong to the application; whatever the split,
 * they are not consumed. */
static void test_early_data(void **state)
{
    uint8_t req[64], msg[128];
    size_t n = s_req_name(req, "intranet.lab", 12, 80);
    size_t len = s_flight(msg, req, n);
    const char *early = "GET / HTTP/1.0\r\n\r\n";
    memcpy(msg + len, early, strlen(early));
    size_t total = len + strlen(early);
    const size_t chunks[] = {total, 1, 5, 16};
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        socks_t s;
        size_t consumed = 0;
        assert_int_equal(s_drive(&s, msg, total, chunks[i], &consumed), SOCKS_REQUEST);
        assert_int_equal(consumed, len);
        assert_string_equal(s.host, "intranet.lab");
    }
    /* A pipelined request right after a one-buffer greeting, too. */
    socks_t s;
    socks_init(&s);
    size_t used;
    assert_int_equal(socks_feed(&s, msg, total, &used), SOCKS_REPLY_METHOD);
    assert_int_equal(socks_feed(&s, msg + used, total - used, &used), SOCKS_REQUEST);
    assert_int_equal(used, n);
}

static void test_methods(void **state)
{
    socks_t s;
    size_t used;
    /* 00 among others is chosen. */
    const uint8_t several[] = {5, 3, 2, 0, 1};
    socks_init(&s);
    assert_int_equal(socks_feed(&s, several, sizeof several, &used), SOCKS_REPLY_METHOD);
    assert_int_equal(used, sizeof several);
    assert_memory_equal(s.reply, "\x05\x00", 2);

    /* Only username/password and GSSAPI: 05 FF, then the end. */
    const uint8_t no_none[] = {5, 2, 2, 1, 5, 1, 0};
    socks_init(&s);
    assert_int_equal(socks_feed(&s, no_none, sizeof no_none, &used), SOCKS_REPLY_METHOD);
    assert_int_equal(used, 4);
    assert_int_equal(s.reply_len, 2);
    assert_memory_equal(s.reply, "\x05\xff", 2);
    assert_int_equal(socks_feed(&s, no_none + used, sizeof no_none - used, &used), SOCKS_ERROR);
    assert_int_equal(used, 0);
    assert_int_equal(s.reply_len, 0); /* 05 FF went out already */
    assert_non_null(s.why);
    assert_string_equal(s.host, "");
    /* Also when nothing else arrives. */
    socks_init(&s);
    assert_int_equal(socks_feed(&s, no_none, 4, &used), SOCKS_REPLY_METHOD);
    assert_int_equal(socks_feed(&s, NULL, 0, &used), SOCKS_ERROR);
    assert_int_equal(s.reply_len, 0);

    /* NMETHODS 0 is malformed: 05 FF straight away. */
    const uint8_t none[] = {5, 0};
    socks_init(&s);
    assert_int_equal(socks_feed(&s, none, sizeof none, &used), SOCKS_ERROR);
    assert_int_equal(s.reply_len, 2);
    assert_memory_equal(s.reply, "\x05\xff", 2);
    assert_non_null(s.why);

    /* A greeting announcing more methods than arrived needs more. */
    const uint8_t partial[] = {5, 4, 1, 0};
    socks_init(&s);
    assert_int_equal(socks_feed(&s, partial, sizeof partial, &used), SOCKS_NEED_MORE);
    assert_int_equal(used, 0);
}

static void test_commands(void **state)
{
    uint8_t req[32];
    const uint8_t ip[4] = {10, 0, 0, 1};
    s_expect_refusal(req, s_req(req, 5, 2, 0, 1, ip, 4, 80), SOCKS_CMD_UNSUPPORTED); /* BIND */
    s_expect_refusal(req, s_req(req, 5, 3, 0, 1, ip, 4, 80), SOCKS_CMD_UNSUPPORTED); /* UDP */
    s_expect_refusal(req, s_req(req, 5, 0, 0, 1, ip, 4, 80), SOCKS_CMD_UNSUPPORTED);
    s_expect_refusal(req, s_req(req, 5, 0xf0, 0, 1, ip, 4, 80), SOCKS_CMD_UNSUPPORTED);
    /* Refused as soon as the command byte is there. */
    socks_t s;
    size_t used;
    socks_init(&s);
    assert_int_equal(socks_feed(&s, s_hello, sizeof s_hello, &used), SOCKS_REPLY_METHOD);
    assert_int_equal(socks_feed(&s, (const uint8_t *)"\x05\x02", 2, &used), SOCKS_ERROR);
    assert_int_equal(s.reply[1], SOCKS_CMD_UNSUPPORTED);
    assert_non_null(strstr(s.why, "BIND"));
}

static void test_versions(void **state)
{
    socks_t s;
    size_t used;
    /* A SOCKS4 client, and an HTTP one: nothing sensible to answer. */
    const uint8_t socks4[] = {4, 1, 0, 80, 127, 0, 0, 1, 0};
    socks_init(&s);
    assert_int_equal(socks_feed(&s, socks4, sizeof socks4, &used), SOCKS_ERROR);
    assert_int_equal(s.reply_len, 0);
    assert_non_null(s.why);
    socks_init(&s);
    assert_int_equal(socks_feed(&s, (const uint8_t *)"C", 1, &used), SOCKS_ERROR);
    assert_int_equal(s.reply_len, 0);
    /* A request of another version after a SOCKS5 greeting. */
    uint8_t req[32];
    s_expect_refusal(req, s_req(req, 4, 1, 0, 1, "\x01\x02\x03\x04", 4, 80), SOCKS_GENERAL_FAILURE);
    s_expect_refusal(req, s_req(req, 0, 1, 0, 1, "\x01\x02\x03\x04", 4, 80), SOCKS_GENERAL_FAILURE);
}

static void test_rsv_and_atyp(void **state)
{
    uint8_t req[32];
    const uint8_t ip[4] = {10, 0, 0, 1};
    s_expect_refusal(req, s_req(req, 5, 1, 1, 1, ip, 4, 80), SOCKS_GENERAL_FAILURE);
    s_expect_refusal(req, s_req(req, 5, 1, 0x80, 1, ip, 4, 80), SOCKS_GENERAL_FAILURE);
    const uint8_t atyps[] = {0, 2, 5, 0xff};
    for (size_t i = 0; i < sizeof atyps; i++)
        s_expect_refusal(req, s_req(req, 5, 1, 0, atyps[i], ip, 4, 80), SOCKS_ATYP_UNSUPPORTED);
}

static void test_bad_domains(void **state)
{
    uint8_t req[300];
    s_expect_refusal(req, s_req_name(req, "", 0, 80), SOCKS_GENERAL_FAILURE);
    s_expect_refusal(req, s_req_name(req, "a\0b.lab", 7, 80), SOCKS_GENERAL_FAILURE);
    s_expect_refusal(req, s_req_name(req, "\0", 1, 80), SOCKS_GENERAL_FAILURE);
    s_expect_refusal(req, s_req_name(req, "evil.lab\r\nX: 1", 14, 80), SOCKS_GENERAL_FAILURE);
    s_expect_refusal(req, s_req_name(req, "a\tb", 3, 80), SOCKS_GENERAL_FAILURE);
    s_expect_refusal(req, s_req_name(req, "a\x1b[31m", 6, 80), SOCKS_GENERAL_FAILURE);
    s_expect_refusal(req, s_req_name(req, "a\x7f", 2, 80), SOCKS_GENERAL_FAILURE);
    s_expect_refusal(req, s_req_name(req, "two words.lab", 13, 80), SOCKS_GENERAL_FAILURE);
    s_expect_refusal(req, s_req_name(req, " ", 1, 80), SOCKS_GENERAL_FAILURE);
    /* A name cut short before its port is not an error yet. */
    socks_t s;
    size_t used;
    socks_init(&s);
    assert_int_equal(socks_feed(&s, s_hello, sizeof s_hello, &used), SOCKS_REPLY_METHOD);
    size_t n = s_req_name(req, "example.com", 11, 80);
    assert_int_equal(socks_feed(&s, req, n - 3, &used), SOCKS_NEED_MORE);
}

/* Port 0 reaches nothing: 01 (general failure), whatever the address. */
static void test_port_zero(void **state)
{
    uint8_t req[64];
    const uint8_t mapped[16] = {[10] = 0xff, [11] = 0xff, 127, 0, 0, 1};
    s_expect_refusal(req, s_req(req, 5, 1, 0, 1, "\x7f\x00\x00\x01", 4, 0), SOCKS_GENERAL_FAILURE);
    s_expect_refusal(req, s_req_name(req, "example.com", 11, 0), SOCKS_GENERAL_FAILURE);
    s_expect_refusal(req, s_req(req, 5, 1, 0, 4, mapped, 16, 0), SOCKS_GENERAL_FAILURE);
}

/* After the request or an error, the dialogue is over. */
static void test_after_end(void **state)
{
    uint8_t req[32], msg[64];
    size_t len = s_flight(msg, req, s_req(req, 5, 1, 0, 1, "\x01\x02\x03\x04", 4, 80));
    socks_t s;
    size_t consumed, used = 7;
    assert_int_equal(s_drive(&s, msg, len, len, &consumed), SOCKS_REQUEST);
    assert_int_equal(socks_feed(&s, msg, len, &used), SOCKS_ERROR);
    assert_int_equal(used, 0);
    assert_int_equal(s.reply_len, 0);
    assert_non_null(s.why);
    assert_string_equal(s.host, "1.2.3.4"); /* still there */

    socks_init(&s);
    assert_int_equal(socks_feed(&s, (const uint8_t *)"\x04", 1, &used), SOCKS_ERROR);
    const char *why = s.why;
    assert_int_equal(socks_feed(&s, msg, len, &used), SOCKS_ERROR);
    assert_int_equal(s.reply_len, 0);
    assert_ptr_equal(s.why, why);
}

static void test_reply(void **state)
{
    uint8_t out[10];
    assert_int_equal(socks_reply(out, SOCKS_OK, 0x0a000001, 1080), 10);
    assert_memory_equal(out, "\x05\x00\x00\x01\x0a\x00\x00\x01\x04\x38", 10);
    assert_int_equal(socks_reply(out, SOCKS_REFUSED, 0, 0), 10);
    assert_memory_equal(out, "\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00", 10);
    assert_int_equal(socks_reply(out, SOCKS_HOST_UNREACHABLE, 0xc0a80102, 65535), 10);
    assert_memory_equal(out, "\x05\x04\x00\x01\xc0\xa8\x01\x02\xff\xff", 10);
    /* The codes are RFC 1928's. */
    assert_int_equal(SOCKS_GENERAL_FAILURE, 1);
    assert_int_equal(SOCKS_TTL_EXPIRED, 6);
    assert_int_equal(SOCKS_ATYP_UNSUPPORTED, 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_buffer),  cmocka_unit_test(test_every_atyp),
        cmocka_unit_test(test_longest),     cmocka_unit_test(test_early_data),
        cmocka_unit_test(test_methods),     cmocka_unit_test(test_commands),
        cmocka_unit_test(test_versions),    cmocka_unit_test(test_rsv_and_atyp),
        cmocka_unit_test(test_bad_domains), cmocka_unit_test(test_port_zero),
        cmocka_unit_test(test_after_end),   cmocka_unit_test(test_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
