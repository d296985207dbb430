/* rb_smap: see rb_smap.h. Chained buckets, a power-of-two count that
 * doubles when the map holds as many entries as buckets. */
#include "rb_smap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INITIAL_BUCKETS 64

typedef struct ent {
    struct ent *next;
    const char *key;
    void *val;
    uint64_t hash;
} ent_t;

struct rb_smap {
    ent_t **b;
    size_t nb, n;
};

/* FNV-1a. Session ids are random from the broker; one that a peer makes up
 * to collide only lengthens a chain, as keys are compared whole. */
static uint64_t s_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

rb_smap_t *rb_smap_new(void)
{
    rb_smap_t *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->nb = INITIAL_BUCKETS;
    m->b = calloc(m->nb, sizeof *m->b);
    if (!m->b) {
        free(m);
        return NULL;
    }
    return m;
}

void rb_smap_destroy(rb_smap_t **mp)
{
    if (!mp || !*mp) return;
    rb_smap_t *m = *mp;
    for (size_t i = 0; i < m->nb; i++) {
        ent_t *e = m->b[i];
        while (e) {
            ent_t *next = e->next;
            free(e);
            e = next;
        }
    }
    free(m->b);
    free(m);
    *mp = NULL;
}

static ent_t **s_slot(const rb_smap_t *m, const char *key, uint64_t h)
{
    ent_t **pp = &m->b[h & (m->nb - 1)];
    while (*pp && ((*pp)->hash != h || strcmp((*pp)->key, key) != 0))
        pp = &(*pp)->next;
    return pp;
}

/* Doubling is best effort: a failed one leaves longer chains, not errors. */
static void s_grow(rb_smap_t *m)
{
    size_t nb = m->nb * 2;
    ent_t **b = calloc(nb, sizeof *b);
    if (!b) return;
    for (size_t i = 0; i < m->nb; i++) {
        ent_t *e = m->b[i];
        while (e) {
            ent_t *next = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
}

int rb_smap_put(rb_smap_t *m, const char *key, void *val, void **old)
{
    uint64_t h = s_hash(key);
    ent_t **pp = s_slot(m, key, h);
    if (*pp) {
        if (old) *old = (*pp)->val;
        (*pp)->key = key;
        (*pp)->val = val;
        return 0;
    }
    if (old) *old = NULL;
    ent_t *e = calloc(1, sizeof *e);
    if (!e) return -1;
    e->key = key;
    e->val = val;
    e->hash = h;
    *pp = e;
    if (++m->n >= m->nb) s_grow(m);
    return 0;
}

void *rb_smap_get(const rb_smap_t *m, const char *key)
{
    ent_t **pp = s_slot(m, key, s_hash(key));
    return *pp ? (*pp)->val : NULL;
}

void rb_smap_del(rb_smap_t *m, const char *key, const void *val)
{
    ent_t **pp = s_slot(m, key, s_hash(key));
    if (!*pp || (*pp)->val != val) return;
    ent_t *e = *pp;
    *pp = e->next;
    free(e);
    m->n--;
}

size_t rb_smap_count(const rb_smap_t *m)
{
    return m->n;
}

void rb_smap_each(rb_smap_t *m, void (*fn)(void *arg, const char *key, void *val), void *arg)
{
    for (size_t i = 0; i < m->nb; i++) {
        for (ent_t *e = m->b[i], *next; e; e = next) {
            next = e->next;
            fn(arg, e->key, e->val);
        }
    }
}
