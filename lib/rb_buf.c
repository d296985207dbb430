/* rb_buf: growable byte buffer. */
#include "rb_buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int s_reserve(rb_buf_t *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len - 1) return -1;
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int rb_buf_append(rb_buf_t *b, const void *data, size_t len)
{
    if (s_reserve(b, len) < 0) return -1;
    if (len) memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

char *rb_buf_space(rb_buf_t *b, size_t n)
{
    if (s_reserve(b, n) < 0) return NULL;
    return b->data + b->len;
}

void rb_buf_added(rb_buf_t *b, size_t n)
{
    b->len += n;
    b->data[b->len] = '\0';
}

int rb_buf_puts(rb_buf_t *b, const char *s) { return rb_buf_append(b, s, strlen(s)); }

int rb_buf_printf(rb_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < sizeof small) return rb_buf_append(b, small, (size_t)n);
    if (s_reserve(b, (size_t)n) < 0) return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int rb_buf_json_escape(rb_buf_t *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t run = 0;
    for (;; p++) {
        unsigned char c = *p;
        if (c && c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) {
            run++;
            continue;
        }
        if (run && rb_buf_append(b, p - run, run) < 0) return -1;
        run = 0;
        if (!c) return 0;
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
            if (rb_buf_append(b, esc, 2) < 0) return -1;
        } else if (c == '\n') {
            if (rb_buf_append(b, "\\n", 2) < 0) return -1;
        } else if (rb_buf_append(b, esc, 6) < 0) {
            return -1;
        }
    }
}

void rb_buf_consume(rb_buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data) b->data[b->len] = '\0';
}

void rb_buf_reset(rb_buf_t *b)
{
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

void rb_buf_free(rb_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

bool rb_str_printable(const char *s, size_t max)
{
    size_t n = 0;
    for (; *s; s++, n++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f || n >= max) return false;
    return true;
}
