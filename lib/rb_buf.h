/* rb_buf: a growable byte buffer, the one way this project builds strings
 * and messages of unknown length. */
#ifndef RB_BUF_H
#define RB_BUF_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *data;   /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
} rb_buf_t;

#define RB_BUF_INIT {NULL, 0, 0}

/* Returns 0, or -1 when memory runs out (the buffer is left as it was). */
int rb_buf_append(rb_buf_t *b, const void *data, size_t len);
int rb_buf_puts(rb_buf_t *b, const char *s);
int rb_buf_printf(rb_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends s as the body of a JSON string (no surrounding quotes), escaping
 * quotes, backslashes and control bytes. */
int rb_buf_json_escape(rb_buf_t *b, const char *s);
/* True when s is at most max bytes and has no control bytes (names and
 * ids from peers, before they reach logs and tables). */
bool rb_str_printable(const char *s, size_t max);
/* Room for n more bytes at data + len (a reader fills it, then calls
 * rb_buf_added): NULL when memory runs out. */
char *rb_buf_space(rb_buf_t *b, size_t n);
/* n bytes were written at data + len (at most what rb_buf_space gave). */
void rb_buf_added(rb_buf_t *b, size_t n);
/* Drops the first n bytes. */
void rb_buf_consume(rb_buf_t *b, size_t n);
void rb_buf_reset(rb_buf_t *b);
/* Frees the storage; the buffer can be used again. */
void rb_buf_free(rb_buf_t *b);

#endif
