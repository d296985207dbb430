/* rb_smap: a hash table from strings (session ids) to borrowed pointers.
 * Lookups compare the whole string, so two keys whose hashes collide are
 * two entries, never one replacing the other. Keys are borrowed from the
 * values' owners and must stay valid while they are in the map. */
#ifndef RB_SMAP_H
#define RB_SMAP_H
#include <stddef.h>

typedef struct rb_smap rb_smap_t;

/* NULL when memory runs out. */
rb_smap_t *rb_smap_new(void);
/* Accepts NULL; clears the pointer. The values are not touched. */
void rb_smap_destroy(rb_smap_t **m);
/* Maps key to val, replacing an entry of the same key (its old value is
 * returned through *old, or NULL). 0, or -1 when memory runs out. */
int rb_smap_put(rb_smap_t *m, const char *key, void *val, void **old);
/* The value of key, or NULL. */
void *rb_smap_get(const rb_smap_t *m, const char *key);
/* Removes key if it maps to val (a newer owner of the same id stays). */
void rb_smap_del(rb_smap_t *m, const char *key, const void *val);
size_t rb_smap_count(const rb_smap_t *m);
/* Calls fn for every entry; fn may delete the entry it is given (and only
 * that one), and must not add any. */
void rb_smap_each(rb_smap_t *m, void (*fn)(void *arg, const char *key, void *val), void *arg);

#endif
