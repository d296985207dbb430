/* rb_imap: a hash table from 64-bit keys to borrowed pointers (stream and
 * flow tables). Chained, grows by doubling; keys are mixed, so sequential
 * ids spread evenly. */
#ifndef RB_IMAP_H
#define RB_IMAP_H
#include <stddef.h>
#include <stdint.h>

typedef struct rb_imap rb_imap_t;

/* NULL when memory runs out. */
rb_imap_t *rb_imap_new(void);
/* Accepts NULL; clears the pointer. The values are not freed. */
void rb_imap_destroy(rb_imap_t **m);
/* Adds or replaces. 0, or -1 when memory runs out (nothing changed). */
int rb_imap_put(rb_imap_t *m, uint64_t key, void *value);
/* The value, or NULL. */
void *rb_imap_get(const rb_imap_t *m, uint64_t key);
/* Removes key; returns its value, or NULL when absent. */
void *rb_imap_del(rb_imap_t *m, uint64_t key);
size_t rb_imap_count(const rb_imap_t *m);
/* Calls fn for every entry; fn may delete the entry it is given (and only
 * that one). */
void rb_imap_each(rb_imap_t *m, void (*fn)(void *arg, uint64_t key, void *value), void *arg);

#endif
