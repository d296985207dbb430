/* edge_ratelimit: see edge_ratelimit.h.
 *
 * Each key keeps the times of its last max failures in a ring: the window
 * holds max failures exactly when the oldest of them is younger than the
 * window, so the count is exact with max timestamps per key. Keys sit in a
 * hash table (chained) and in a list ordered by last failure; since an
 * entry's expiry time is its last failure plus a constant, the list head is
 * always the next to expire, and also the one to evict when full. */
#include "edge_ratelimit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_log.h"
#include "rb_smap.h"

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

/* Checks in flight for one key; exists only while n > 0, so the map is
 * bounded by the checks running, not by history. */
typedef struct {
    unsigned n;
    char key[];
} flight_t;

struct edge_rl {
    uint64_t window_ms, lockout_ms, keep_ms;
    table_t users, addrs;
    rb_smap_t *flights; /* "u:" user or "a:" address -> flight_t */
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

/* Failures of key younger than the window. */
static unsigned s_recent(const edge_rl_t *rl, table_t *t, const char *key, uint64_t now)
{
    ent_t *e = s_find(t, key);
    unsigned n = 0;
    for (unsigned i = 0; e && i < e->count; i++)
        if (now - e->ring[(e->head + i) % t->max] < rl->window_ms) n++;
    return n;
}

static void s_flight_key(char *out, size_t len, char kind, const char *key)
{
    snprintf(out, len, "%c:%s", kind, key);
}

static unsigned s_flying(const edge_rl_t *rl, char kind, const char *key)
{
    char k[320];
    s_flight_key(k, sizeof k, kind, key);
    flight_t *f = rb_smap_get(rl->flights, k);
    return f ? f->n : 0;
}

static bool s_fly(edge_rl_t *rl, char kind, const char *key, int delta)
{
    char k[320];
    s_flight_key(k, sizeof k, kind, key);
    flight_t *f = rb_smap_get(rl->flights, k);
    if (delta < 0) {
        if (f && --f->n == 0) {
            rb_smap_del(rl->flights, f->key, f);
            free(f);
        }
        return true;
    }
    if (!f) {
        size_t klen = strlen(k);
        if (!(f = calloc(1, sizeof *f + klen + 1))) return false;
        memcpy(f->key, k, klen + 1);
        if (rb_smap_put(rl->flights, f->key, f, NULL) < 0) {
            free(f);
            return false;
        }
    }
    f->n++;
    return true;
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
        s_table_init(&rl->addrs, "address", cfg->max_addr, cap) < 0 ||
        !(rl->flights = rb_smap_new())) {
        edge_rl_destroy(&rl);
        return NULL;
    }
    return rl;
}

static void s_flight_free(void *arg, const char *key, void *val)
{
    rb_smap_del(arg, key, val);
    free(val);
}

void edge_rl_destroy(edge_rl_t **rlp)
{
    if (!rlp || !*rlp) return;
    edge_rl_t *rl = *rlp;
    if (rl->users.buckets) s_table_free(&rl->users);
    if (rl->addrs.buckets) s_table_free(&rl->addrs);
    if (rl->flights) rb_smap_each(rl->flights, s_flight_free, rl->flights);
    rb_smap_destroy(&rl->flights);
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

edge_rl_verdict_t edge_rl_begin(edge_rl_t *rl, const char *user, const char *addr, uint64_t now_ms)
{
    if (edge_rl_blocked(rl, user, addr, now_ms)) return EDGE_RL_LOCKED;
    if ((user &&
         s_recent(rl, &rl->users, user, now_ms) + s_flying(rl, 'u', user) >= rl->users.max) ||
        s_recent(rl, &rl->addrs, addr, now_ms) + s_flying(rl, 'a', addr) >= rl->addrs.max)
        return EDGE_RL_BUSY;
    /* Out of memory: refused, since edge_rl_end must undo exactly this. */
    if (user && !s_fly(rl, 'u', user, 1)) return EDGE_RL_BUSY;
    if (!s_fly(rl, 'a', addr, 1)) {
        if (user) s_fly(rl, 'u', user, -1);
        return EDGE_RL_BUSY;
    }
    return EDGE_RL_GO;
}

void edge_rl_end(edge_rl_t *rl, const char *user, const char *addr)
{
    if (user) s_fly(rl, 'u', user, -1);
    s_fly(rl, 'a', addr, -1);
}

unsigned edge_rl_in_flight(const edge_rl_t *rl, const char *key)
{
    return s_flying(rl, 'u', key) + s_flying(rl, 'a', key);
}
