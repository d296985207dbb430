/* rb_imap: see rb_imap.h. */
#include "rb_imap.h"

#include <stdlib.h>

typedef struct node {
    struct node *next;
    uint64_t key;
    void *value;
} node_t;

struct rb_imap {
    node_t **b;
    size_t nb, count;
};

/* splitmix64's finaliser: ids that differ in a few low bits land far
 * apart. */
static size_t s_slot(uint64_t k, size_t nb)
{
    k ^= k >> 30;
    k *= 0xbf58476d1ce4e5b9ULL;
    k ^= k >> 27;
    k *= 0x94d049bb133111ebULL;
    k ^= k >> 31;
    return (size_t)k & (nb - 1);
}

rb_imap_t *rb_imap_new(void)
{
    rb_imap_t *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->nb = 16;
    m->b = calloc(m->nb, sizeof *m->b);
    if (!m->b) {
        free(m);
        return NULL;
    }
    return m;
}

void rb_imap_destroy(rb_imap_t **pm)
{
    if (!pm || !*pm) return;
    rb_imap_t *m = *pm;
    *pm = NULL;
    for (size_t i = 0; i < m->nb; i++) {
        for (node_t *n = m->b[i], *next; n; n = next) {
            next = n->next;
            free(n);
        }
    }
    free(m->b);
    free(m);
}

static void s_grow(rb_imap_t *m)
{
    size_t nb = m->nb * 2;
    node_t **b = calloc(nb, sizeof *b);
    if (!b) return; /* longer chains, still correct */
    for (size_t i = 0; i < m->nb; i++) {
        for (node_t *n = m->b[i], *next; n; n = next) {
            next = n->next;
            size_t s = s_slot(n->key, nb);
            n->next = b[s];
            b[s] = n;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
}

int rb_imap_put(rb_imap_t *m, uint64_t key, void *value)
{
    for (node_t *n = m->b[s_slot(key, m->nb)]; n; n = n->next) {
        if (n->key == key) {
            n->value = value;
            return 0;
        }
    }
    node_t *n = malloc(sizeof *n);
    if (!n) return -1;
    if (m->count + 1 > m->nb) s_grow(m);
    size_t s = s_slot(key, m->nb);
    n->key = key;
    n->value = value;
    n->next = m->b[s];
    m->b[s] = n;
    m->count++;
    return 0;
}

void *rb_imap_get(const rb_imap_t *m, uint64_t key)
{
    for (node_t *n = m->b[s_slot(key, m->nb)]; n; n = n->next)
        if (n->key == key) return n->value;
    return NULL;
}

void *rb_imap_del(rb_imap_t *m, uint64_t key)
{
    for (node_t **pp = &m->b[s_slot(key, m->nb)]; *pp; pp = &(*pp)->next) {
        node_t *n = *pp;
        if (n->key != key) continue;
        void *v = n->value;
        *pp = n->next;
        free(n);
        m->count--;
        return v;
    }
    return NULL;
}

size_t rb_imap_count(const rb_imap_t *m)
{
    return m ? m->count : 0;
}

void rb_imap_each(rb_imap_t *m, void (*fn)(void *arg, uint64_t key, void *value), void *arg)
{
    for (size_t i = 0; i < m->nb; i++) {
        for (node_t *n = m->b[i], *next; n; n = next) {
            next = n->next;
            fn(arg, n->key, n->value);
        }
    }
}
