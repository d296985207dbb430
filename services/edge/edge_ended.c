/* edge_ended: a ring of recent session ends with an index by id (see
 * edge_ended.h for why the edge needs it). */
#include "edge_ended.h"

#include <stdlib.h>
#include <string.h>

#include "rb_smap.h"
#include "rb_loop.h"

#define SID_MAX 128

typedef struct {
    char sid[SID_MAX + 1];
    char reason[32];
    uint64_t at_ms;
    int used;
} note_t;

struct edge_ended {
    note_t *ring;
    size_t cap, next;
    uint64_t keep_ms;
    rb_smap_t *by_sid; /* keys borrowed from the ring's notes */
};

edge_ended_t *edge_ended_new(size_t cap, uint64_t keep_ms)
{
    edge_ended_t *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->ring = calloc(cap ? cap : 1, sizeof *e->ring);
    e->by_sid = rb_smap_new();
    e->cap = cap ? cap : 1;
    e->keep_ms = keep_ms;
    if (!e->ring || !e->by_sid) edge_ended_destroy(&e);
    return e;
}

void edge_ended_destroy(edge_ended_t **ep)
{
    if (!ep || !*ep) return;
    rb_smap_destroy(&(*ep)->by_sid);
    free((*ep)->ring);
    free(*ep);
    *ep = NULL;
}

void edge_ended_note(edge_ended_t *e, const char *sid, const char *reason)
{
    if (!sid || !reason || strlen(sid) > SID_MAX || strlen(reason) >= sizeof e->ring->reason)
        return;
    note_t *n = &e->ring[e->next];
    e->next = (e->next + 1) % e->cap;
    if (n->used) rb_smap_del(e->by_sid, n->sid, n);
    strcpy(n->sid, sid);
    strcpy(n->reason, reason);
    n->at_ms = rb_now_ms();
    n->used = 1;
    if (rb_smap_put(e->by_sid, n->sid, n, NULL) < 0) n->used = 0;
}

int edge_ended_take(edge_ended_t *e, const char *sid, char reason[32])
{
    note_t *n = rb_smap_get(e->by_sid, sid);
    if (!n) return -1;
    rb_smap_del(e->by_sid, n->sid, n);
    n->used = 0;
    if (rb_now_ms() - n->at_ms > e->keep_ms) return -1;
    memcpy(reason, n->reason, sizeof n->reason);
    return 0;
}
