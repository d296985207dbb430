/* rb_cursor: a bounded reader for untrusted bytes. Every read asks whether
 * enough bytes are left; a failed read sets err and returns 0, so a parser
 * can read a whole header and check err once. */
#ifndef RB_CURSOR_H
#define RB_CURSOR_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const uint8_t *buf;
    size_t len;
    size_t pos;
    bool err;
} rb_cursor_t;

static inline void rb_cur_init(rb_cursor_t *c, const void *buf, size_t len)
{
    c->buf = (const uint8_t *)buf;
    c->len = len;
    c->pos = 0;
    c->err = false;
}

static inline size_t rb_cur_left(const rb_cursor_t *c) { return c->err ? 0 : c->len - c->pos; }

static inline bool rb_cur_have(rb_cursor_t *c, size_t n)
{
    if (c->err || c->len - c->pos < n) {
        c->err = true;
        return false;
    }
    return true;
}

static inline uint8_t rb_cur_u8(rb_cursor_t *c)
{
    if (!rb_cur_have(c, 1)) return 0;
    return c->buf[c->pos++];
}

static inline uint16_t rb_cur_u16(rb_cursor_t *c)
{
    if (!rb_cur_have(c, 2)) return 0;
    uint16_t v = (uint16_t)(c->buf[c->pos] << 8 | c->buf[c->pos + 1]);
    c->pos += 2;
    return v;
}

static inline uint32_t rb_cur_u32(rb_cursor_t *c)
{
    if (!rb_cur_have(c, 4)) return 0;
    const uint8_t *p = c->buf + c->pos;
    c->pos += 4;
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Returns a pointer to the next n bytes and skips them, or NULL. */
static inline const uint8_t *rb_cur_bytes(rb_cursor_t *c, size_t n)
{
    if (!rb_cur_have(c, n)) return NULL;
    const uint8_t *p = c->buf + c->pos;
    c->pos += n;
    return p;
}

#endif
