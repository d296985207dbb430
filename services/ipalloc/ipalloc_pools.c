/* ipalloc_pools: the address plan (see ipalloc_pools.h).
 *
 * Every mistake is a config error naming the key and the entry, found before
 * the service touches Redis: overlapping pools would let two pools hand out
 * one address, and a reservation outside every pool or reserved twice could
 * never be honoured. */
#include "ipalloc_pools.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* As ipalloc_store's limit on user names. */
#define IPALLOC_USER_MAX 256

typedef struct {
    char *name;
    char *cidrs; /* normalised: "a/n,b/m" */
    rb_pool_t *pool;
    size_t res_first, res_n; /* its slice of by_pool */
} s_pool_t;

struct ipalloc_pools {
    s_pool_t *pools;
    size_t npools;
    char **noaddr;
    size_t nnoaddr;
    /* The reservations twice: sorted by user (lookups), and by pool then
     * address (a pool's slice for its digest and rebuild). Users are owned
     * by by_user. */
    ipalloc_reservation_t *by_user, *by_pool;
    size_t *pool_of; /* pool of by_user[i] */
    size_t nres;
    const char *exclude; /* borrowed, only while ipalloc_pools_new parses */
};

static char *s_trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

/* Splits s in place at sep into trimmed pieces; calls fn for each. An empty
 * piece is an error (as in rb_pool_new's lists); an all-blank s is empty. */
typedef int(s_piece_fn)(ipalloc_pools_t *p, char *piece, char *err, size_t errlen);

static int s_split(ipalloc_pools_t *p, const char *key, const char *in, char sep, s_piece_fn *fn,
                   char *err, size_t errlen)
{
    if (!in || in[strspn(in, " \t")] == '\0') return 0;
    char *copy = strdup(in);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = 0;
    char *s = copy;
    for (;;) {
        char *end = strchr(s, sep);
        if (end) *end = '\0';
        char *piece = s_trim(s);
        if (*piece == '\0') {
            snprintf(err, errlen, "key '%s': empty entry in '%s'", key, in);
            rc = -1;
            break;
        }
        if ((rc = fn(p, piece, err, errlen)) != 0) break;
        if (!end) break;
        s = end + 1;
    }
    free(copy);
    return rc;
}

static bool s_group_name_ok(const char *g)
{
    size_t n = strlen(g);
    if (n == 0 || n > IPALLOC_GROUP_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = g[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

static int s_pool_index(const ipalloc_pools_t *p, const char *name)
{
    for (size_t i = 0; i < p->npools; i++)
        if (strcmp(p->pools[i].name, name) == 0) return (int)i;
    return -1;
}

/* Adds a pool; cidrs uses sep between blocks ("," or "+"). */
static int s_add_pool(ipalloc_pools_t *p, const char *key, const char *name, const char *cidrs,
                      char sep, const char *exclude, char *err, size_t errlen)
{
    char perr[160];
    s_pool_t *v = realloc(p->pools, (p->npools + 1) * sizeof(*v));
    if (!v) goto oom;
    p->pools = v;
    s_pool_t *sp = &p->pools[p->npools];
    memset(sp, 0, sizeof(*sp));
    sp->name = strdup(name);
    sp->cidrs = strdup(cidrs);
    if (!sp->name || !sp->cidrs) {
        free(sp->name);
        free(sp->cidrs);
        goto oom;
    }
    p->npools++;
    /* Normalise: separators become commas, blanks around blocks go. */
    char *w = sp->cidrs;
    for (const char *r = cidrs; *r; r++) {
        if (*r == ' ' || *r == '\t') continue;
        *w++ = *r == sep ? ',' : *r;
    }
    *w = '\0';
    sp->pool = rb_pool_new(sp->cidrs, exclude, perr, sizeof(perr));
    if (!sp->pool) {
        snprintf(err, errlen, "key '%s': pool '%s' (%s): %s", key, name, cidrs, perr);
        return -1;
    }
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

static uint32_t s_last(const rb_cidr_t *c)
{
    return c->prefix == 0 ? UINT32_MAX : c->net | (UINT32_MAX >> c->prefix);
}

/* Pools must be disjoint: an address in two pools could be leased twice. */
static int s_check_overlaps(const ipalloc_pools_t *p, char *err, size_t errlen)
{
    for (size_t i = 0; i < p->npools; i++) {
        for (size_t j = i + 1; j < p->npools; j++) {
            const rb_pool_t *a = p->pools[i].pool, *b = p->pools[j].pool;
            for (size_t x = 0; x < rb_pool_blocks(a); x++) {
                for (size_t y = 0; y < rb_pool_blocks(b); y++) {
                    const rb_cidr_t *ca = rb_pool_block(a, x), *cb = rb_pool_block(b, y);
                    if (ca->net > s_last(cb) || cb->net > s_last(ca)) continue;
                    char na[16], nb[16];
                    snprintf(err, errlen,
                             "key 'group_pools': pool '%s' (%s/%u) overlaps pool '%s' (%s/%u)",
                             p->pools[j].name, rb_ip_format(cb->net, nb), cb->prefix,
                             p->pools[i].name, rb_ip_format(ca->net, na), ca->prefix);
                    return -1;
                }
            }
        }
    }
    return 0;
}

static int s_on_group_pool(ipalloc_pools_t *p, char *piece, char *err, size_t errlen)
{
    char *eq = strchr(piece, '=');
    if (!eq) {
        snprintf(err, errlen, "key 'group_pools': entry '%s' is not group=cidr[+cidr...]", piece);
        return -1;
    }
    *eq = '\0';
    char *name = s_trim(piece), *cidrs = s_trim(eq + 1);
    if (!s_group_name_ok(name) || strcmp(name, IPALLOC_DEFAULT_POOL) == 0) {
        snprintf(err, errlen,
                 "key 'group_pools': '%s' is not a group name (1 to %d of A-Z a-z 0-9 . _ -, "
                 "not \"%s\")",
                 name, IPALLOC_GROUP_MAX, IPALLOC_DEFAULT_POOL);
        return -1;
    }
    if (s_pool_index(p, name) >= 0) {
        snprintf(err, errlen, "key 'group_pools': group '%s' has two pools", name);
        return -1;
    }
    return s_add_pool(p, "group_pools", name, cidrs, '+', p->exclude, err, errlen);
}

static int s_on_noaddr(ipalloc_pools_t *p, char *piece, char *err, size_t errlen)
{
    if (!s_group_name_ok(piece)) {
        snprintf(err, errlen, "key 'no_address_groups': '%s' is not a group name", piece);
        return -1;
    }
    /* A group with a pool and without addresses: one of the two is a typo. */
    if (s_pool_index(p, piece) > 0) {
        snprintf(err, errlen, "key 'no_address_groups': group '%s' also has a pool in group_pools",
                 piece);
        return -1;
    }
    char **v = realloc(p->noaddr, (p->nnoaddr + 1) * sizeof(*v));
    if (!v || !(v[p->nnoaddr] = strdup(piece))) {
        if (v) p->noaddr = v;
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    p->noaddr = v;
    p->nnoaddr++;
    return 0;
}

static int s_on_static(ipalloc_pools_t *p, char *piece, char *err, size_t errlen)
{
    char *eq = strchr(piece, '=');
    if (!eq) {
        snprintf(err, errlen, "key 'static': entry '%s' is not user=ip", piece);
        return -1;
    }
    *eq = '\0';
    char *user = s_trim(piece), *ips = s_trim(eq + 1);
    uint32_t ip;
    if (*user == '\0' || strlen(user) > IPALLOC_USER_MAX) {
        snprintf(err, errlen, "key 'static': entry '%s=%s' has no valid user name", user, ips);
        return -1;
    }
    if (rb_ip_parse(ips, &ip) != 0) {
        snprintf(err, errlen, "key 'static': entry '%s=%s': '%s' is not an IPv4 address", user, ips,
                 ips);
        return -1;
    }
    if (ipalloc_pools_find(p, ip) < 0) {
        snprintf(err, errlen,
                 "key 'static': entry '%s=%s': the address is in no pool (or excluded, or a "
                 "network or broadcast address)",
                 user, ips);
        return -1;
    }
    ipalloc_reservation_t *v = realloc(p->by_user, (p->nres + 1) * sizeof(*v));
    if (!v) goto oom;
    p->by_user = v;
    v[p->nres].ip = ip;
    if (!(v[p->nres].user = strdup(user))) goto oom;
    p->nres++;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

static int s_cmp_user(const void *a, const void *b)
{
    return strcmp(((const ipalloc_reservation_t *)a)->user,
                  ((const ipalloc_reservation_t *)b)->user);
}

static int s_cmp_ip(const void *a, const void *b)
{
    uint32_t x = ((const ipalloc_reservation_t *)a)->ip, y = ((const ipalloc_reservation_t *)b)->ip;
    return x < y ? -1 : x > y;
}

/* Sorts the reservations, refuses duplicates, and cuts them per pool. */
static int s_index_reservations(ipalloc_pools_t *p, char *err, size_t errlen)
{
    if (p->nres == 0) return 0;
    qsort(p->by_user, p->nres, sizeof(*p->by_user), s_cmp_user);
    for (size_t i = 1; i < p->nres; i++) {
        if (strcmp(p->by_user[i].user, p->by_user[i - 1].user) == 0) {
            snprintf(err, errlen, "key 'static': user '%s' has two reservations",
                     p->by_user[i].user);
            return -1;
        }
    }
    p->by_pool = malloc(p->nres * sizeof(*p->by_pool));
    p->pool_of = malloc(p->nres * sizeof(*p->pool_of));
    if (!p->by_pool || !p->pool_of) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(p->by_pool, p->by_user, p->nres * sizeof(*p->by_pool));
    qsort(p->by_pool, p->nres, sizeof(*p->by_pool), s_cmp_ip);
    for (size_t i = 1; i < p->nres; i++) {
        if (p->by_pool[i].ip == p->by_pool[i - 1].ip) {
            char a[16];
            snprintf(err, errlen, "key 'static': %s is reserved for both '%s' and '%s'",
                     rb_ip_format(p->by_pool[i].ip, a), p->by_pool[i - 1].user, p->by_pool[i].user);
            return -1;
        }
    }
    for (size_t i = 0; i < p->nres; i++)
        p->pool_of[i] = (size_t)ipalloc_pools_find(p, p->by_user[i].ip);
    /* One slice per pool, each in address order: sweep the address-sorted
     * list once per pool (pools are few). */
    size_t k = 0;
    ipalloc_reservation_t *sorted = malloc(p->nres * sizeof(*sorted));
    if (!sorted) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < p->npools; i++) {
        p->pools[i].res_first = k;
        for (size_t j = 0; j < p->nres; j++)
            if (rb_pool_contains(p->pools[i].pool, p->by_pool[j].ip)) sorted[k++] = p->by_pool[j];
        p->pools[i].res_n = k - p->pools[i].res_first;
    }
    free(p->by_pool);
    p->by_pool = sorted;
    return 0;
}

ipalloc_pools_t *ipalloc_pools_new(const char *pool, const char *exclude, const char *group_pools,
                                   const char *statics, const char *no_address_groups, char *err,
                                   size_t errlen)
{
    char scratch[1];
    if (!err || errlen == 0) {
        err = scratch;
        errlen = sizeof(scratch);
    }
    err[0] = '\0';
    ipalloc_pools_t *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->exclude = exclude;
    if (s_add_pool(p, "pool", IPALLOC_DEFAULT_POOL, pool ? pool : "", ',', exclude, err, errlen) !=
            0 ||
        s_split(p, "group_pools", group_pools, ';', s_on_group_pool, err, errlen) != 0 ||
        s_check_overlaps(p, err, errlen) != 0 ||
        s_split(p, "no_address_groups", no_address_groups, ',', s_on_noaddr, err, errlen) != 0 ||
        s_split(p, "static", statics, ',', s_on_static, err, errlen) != 0 ||
        s_index_reservations(p, err, errlen) != 0) {
        ipalloc_pools_destroy(&p);
        return NULL;
    }
    p->exclude = NULL;
    return p;
}

void ipalloc_pools_destroy(ipalloc_pools_t **pp)
{
    if (!pp || !*pp) return;
    ipalloc_pools_t *p = *pp;
    *pp = NULL;
    for (size_t i = 0; i < p->npools; i++) {
        free(p->pools[i].name);
        free(p->pools[i].cidrs);
        rb_pool_destroy(&p->pools[i].pool);
    }
    free(p->pools);
    for (size_t i = 0; i < p->nnoaddr; i++)
        free(p->noaddr[i]);
    free(p->noaddr);
    for (size_t i = 0; i < p->nres; i++)
        free((char *)p->by_user[i].user);
    free(p->by_user);
    free(p->by_pool);
    free(p->pool_of);
    free(p);
}

size_t ipalloc_pools_count(const ipalloc_pools_t *p)
{
    return p->npools;
}

const char *ipalloc_pools_name(const ipalloc_pools_t *p, size_t i)
{
    return p->pools[i].name;
}

const char *ipalloc_pools_cidrs(const ipalloc_pools_t *p, size_t i)
{
    return p->pools[i].cidrs;
}

const rb_pool_t *ipalloc_pools_pool(const ipalloc_pools_t *p, size_t i)
{
    return p->pools[i].pool;
}

const ipalloc_reservation_t *ipalloc_pools_reservations(const ipalloc_pools_t *p, size_t i,
                                                        size_t *n)
{
    *n = p->pools[i].res_n;
    return p->by_pool ? p->by_pool + p->pools[i].res_first : NULL;
}

size_t ipalloc_pools_for_groups(const ipalloc_pools_t *p, char *const *groups, size_t ngroups)
{
    for (size_t i = 0; i < ngroups; i++) {
        int k = groups[i] ? s_pool_index(p, groups[i]) : -1;
        if (k > 0) return (size_t)k;
    }
    return 0;
}

bool ipalloc_pools_no_address(const ipalloc_pools_t *p, char *const *groups, size_t ngroups)
{
    for (size_t i = 0; i < ngroups; i++)
        for (size_t j = 0; groups[i] && j < p->nnoaddr; j++)
            if (strcmp(groups[i], p->noaddr[j]) == 0) return true;
    return false;
}

int ipalloc_pools_reserved(const ipalloc_pools_t *p, const char *user, uint32_t *ip, size_t *pool)
{
    if (p->nres == 0 || !user) return 0;
    ipalloc_reservation_t key = {.user = user};
    const ipalloc_reservation_t *r =
        bsearch(&key, p->by_user, p->nres, sizeof(*p->by_user), s_cmp_user);
    if (!r) return 0;
    *ip = r->ip;
    *pool = p->pool_of[r - p->by_user];
    return 1;
}

int ipalloc_pools_find(const ipalloc_pools_t *p, uint32_t ip)
{
    for (size_t i = 0; i < p->npools; i++)
        if (rb_pool_contains(p->pools[i].pool, ip)) return (int)i;
    return -1;
}
