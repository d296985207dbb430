/* edge_smap: session id -> connection, for the sessions whose tunnel ends
 * on this edge. Events and refresh answers name sessions by id; this finds
 * their connection in O(1). Keys are borrowed from the values' owners and
 * must stay valid while they are in the map. */
#ifndef EDGE_SMAP_H
#define EDGE_SMAP_H
#include <stddef.h>

typedef struct edge_smap edge_smap_t;

/* NULL when memory runs out. */
edge_smap_t *edge_smap_new(void);
/* Accepts NULL; clears the pointer. The values are not touched. */
void edge_smap_destroy(edge_smap_t **m);
/* Maps key to val, replacing an entry of the same key (its old value is
 * returned through *old, or NULL). 0, or -1 when memory runs out. */
int edge_smap_put(edge_smap_t *m, const char *key, void *val, void **old);
/* The value of key, or NULL. */
void *edge_smap_get(const edge_smap_t *m, const char *key);
/* Removes key if it maps to val (a newer owner of the same id stays). */
void edge_smap_del(edge_smap_t *m, const char *key, const void *val);
size_t edge_smap_count(const edge_smap_t *m);

#endif
