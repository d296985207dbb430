/* edge_ratelimit: see edge_ratelimit.h.
 *
 * Each key keeps the times of its last max failures in a ring: the window
 * holds max failures exactly when the oldest of them is younger than the
 * window, so the count is exact with max timestamps per key. Keys sit in a
 * hash table (chained) and in a list ordered by last failure; since an
 * entry's expiry time is its last failure plus a constant, the list head is
 * always the next to expire, and also the one to evict when full. */
#include "edge_ratelimit.h"

#include <stdlib.h>
#include <string.h>

#include "rb_log.h"

typedef struct ent {
    struct ent *hnext;               /* hash chain */
    struct ent *prev, *next;         /* by last failure, oldest first */
    uint64_t last_ms;                /* last failure */
    uint64_t locked_until_ms;
    unsigned count;                  /* failures in the ring (<= max) */
    unsigned head;                   /* ring index of the oldest */
    uint64_t *ring;                  /* max timestamps, allocated with the entry */
    char key[];
} ent_t;

typedef struct {
    const char *what;   /* "user" or "address", for logs */
    unsigned max;
    ent_t **buckets;
    size_t nbuckets;    /* a power of two */
    size_t n, cap;
    ent_t *oldest, *newest;
} table_t;

struct edge_rl {
    uint64_t window_ms, lockout_ms, keep_ms;
    table_t users, addrs;
};

/* FNV-1a: keys are short and the table is not exposed to a hash-flooding
 * peer beyond cap entries (chains stay bounded by the cap). */
static size_t s_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (size_t)h;
}

static int s_table_init(table_t *t, const char *what, unsigned max, size_t cap)
{
    t->what = what;
    t->max = max;
    t->cap = cap;
    t->nbuckets = 16;
    while (t->nbuckets < cap && t->nbuckets < ((size_t)1 << 20)) t->nbuckets <<= 1;
    t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
    return t->buckets ? 0 : -1;
}

static void s_unlink(table_t *t, ent_t *e)
{
    if (e->prev) e->prev->next = e->next;
    else t->oldest = e->next;
    if (e->next) e->next->prev = e->prev;
    else t->newest = e->prev;
    e->prev = e->next = NULL;
}

static void s_append(table_t *t, ent_t *e)
{
    e->prev = t->newest;
    e->next = NULL;
    if (t->newest) t->newest->next = e;
    else t->oldest = e;
    t->newest = e;
}

static void s_remove(table_t *t, ent_t *e)
{
    ent_t **pp = &t->buckets[s_hash(e->key) & (t->nbuckets - 1)];
    while (*pp != e) pp = &(*pp)->hnext;
    *pp = e->hnext;
    s_unlink(t, e);
    t->n--;
    free(e);
}

static void s_table_free(table_t *t)
{
    while (t->oldest) s_remove(t, t->oldest);
    free(t->buckets);
    t->buckets = NULL;
}

static void s_expire(edge_rl_t *rl, table_t *t, uint64_t now)
{
    while (t->oldest && t->oldest->last_ms + rl->keep_ms <= now) s_remove(t, t->oldest);
}

static ent_t *s_find(table_t *t, const char *key)
{
    for (ent_t *e = t->buckets[s_hash(key) & (t->nbuckets - 1)]; e; e = e->hnext)
        if (strcmp(e->key, key) == 0) return e;
    return NULL;
}

static bool s_locked(edge_rl_t *rl, table_t *t, const char *key, uint64_t now)
{
    s_expire(rl, t, now);
    ent_t *e = s_find(t, key);
    return e && now < e->locked_until_ms;
}

static void s_fail(edge_rl_t *rl, table_t *t, const char *key, uint64_t now)
{
    s_expire(rl, t, now);
    ent_t *e = s_find(t, key);
    if (!e) {
        if (t->n >= t->cap) {
            rb_warn("ratelimit_full", "%s table full (%zu keys); forgetting the oldest",
                    t->what, t->cap);
            s_remove(t, t->oldest);
        }
        size_t klen = strlen(key);
        /* The ring follows the key, aligned for uint64_t. */
        size_t koff = sizeof(ent_t) + klen + 1;
        koff = (koff + 7) & ~(size_t)7;
        e = calloc(1, koff + t->max * sizeof(uint64_t));
        if (!e) return;   /* out of memory: this failure goes uncounted */
        memcpy(e->key, key, klen + 1);
        e->ring = (uint64_t *)((char *)e + koff);
        size_t b = s_hash(key) & (t->nbuckets - 1);
        e->hnext = t->buckets[b];
        t->buckets[b] = e;
        t->n++;
    } else {
        s_unlink(t, e);
    }
    if (e->count < t->max) {
        e->ring[(e->head + e->count) % t->max] = now;
        e->count++;
    } else {
        e->ring[e->head] = now;   /* overwrite the oldest */
        e->head = (e->head + 1) % t->max;
    }
    e->last_ms = now;
    s_append(t, e);
    /* The oldest of the last max failures is inside the window: the limit
     * is reached. */
    if (e->count == t->max && now - e->ring[e->head] < rl->window_ms) {
        if (e->locked_until_ms <= now)
            rb_info("ratelimit_lockout", "%s '%s' locked out for %llu s after %u failures",
                    t->what, key, (unsigned long long)(rl->lockout_ms / 1000), t->max);
        e->locked_until_ms = now + rl->lockout_ms;
    }
}

edge_rl_t *edge_rl_new(const edge_rl_config_t *cfg)
{
    if (cfg->max_user == 0 || cfg->max_user > EDGE_RL_MAX_FAILURES || cfg->max_addr == 0 ||
        cfg->max_addr > EDGE_RL_MAX_FAILURES || cfg->window_s == 0)
        return NULL;
    edge_rl_t *rl = calloc(1, sizeof *rl);
    if (!rl) return NULL;
    rl->window_ms = (uint64_t)cfg->window_s * 1000;
    rl->lockout_ms = (uint64_t)cfg->lockout_s * 1000;
    rl->keep_ms = rl->window_ms > rl->lockout_ms ? rl->window_ms : rl->lockout_ms;
    size_t cap = cfg->cap ? cfg->cap : EDGE_RL_DEFAULT_CAP;
    if (s_table_init(&rl->users, "user", cfg->max_user, cap) < 0 ||
        s_table_init(&rl->addrs, "address", cfg->max_addr, cap) < 0) {
        edge_rl_destroy(&rl);
        return NULL;
    }
    return rl;
}

void edge_rl_destroy(edge_rl_t **rlp)
{
    if (!rlp || !*rlp) return;
    edge_rl_t *rl = *rlp;
    if (rl->users.buckets) s_table_free(&rl->users);
    if (rl->addrs.buckets) s_table_free(&rl->addrs);
    free(rl);
    *rlp = NULL;
}

bool edge_rl_blocked(edge_rl_t *rl, const char *user, const char *addr, uint64_t now_ms)
{
    bool u = user && s_locked(rl, &rl->users, user, now_ms);
    bool a = s_locked(rl, &rl->addrs, addr, now_ms);
    return u || a;
}

void edge_rl_failure(edge_rl_t *rl, const char *user, const char *addr, uint64_t now_ms)
{
    if (user) s_fail(rl, &rl->users, user, now_ms);
    s_fail(rl, &rl->addrs, addr, now_ms);
}

void edge_rl_success(edge_rl_t *rl, const char *user, uint64_t now_ms)
{
    s_expire(rl, &rl->users, now_ms);
    ent_t *e = s_find(&rl->users, user);
    if (e) s_remove(&rl->users, e);
}

size_t edge_rl_users(const edge_rl_t *rl) { return rl->users.n; }
size_t edge_rl_addrs(const edge_rl_t *rl) { return rl->addrs.n; }
