/* rb_cidr: IPv4 text parsing, reverse-DNS names, and address pools.
 * Parsing is strict (no leading zeros, no spaces, no shorthand like
 * "10.1") because inet_aton's liberal forms read "010" as octal and would let
 * an operator's typo name a different network than the one they meant.
 * A pool is kept as a short sorted list of usable ranges, so that a /8 costs
 * a few bytes and the n-th address is found without walking addresses. */
#include "rb_cidr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint32_t lo, hi;   /* inclusive */
} s_range_t;

struct rb_pool {
    rb_cidr_t *blocks;     /* as configured, sorted */
    size_t nblocks;
    s_range_t *ranges;     /* usable addresses, sorted, disjoint */
    size_t nranges;
    uint64_t size;
};

/* Reads a decimal of at most maxdigits digits, no leading zero, value <=
 * max. Moves *s past it. 0 or -1. */
static int s_read_dec(const char **s, unsigned maxdigits, unsigned max, unsigned *v)
{
    const char *p = *s;
    unsigned x = 0, digits = 0;
    while (*p >= '0' && *p <= '9') {
        if (digits == maxdigits || (digits == 1 && x == 0)) return -1;
        x = x * 10 + (unsigned)(*p - '0');
        digits++;
        p++;
    }
    if (digits == 0 || x > max) return -1;
    *v = x;
    *s = p;
    return 0;
}

/* Parses a dotted quad at *s and moves *s past it. */
static int s_read_ip(const char **s, uint32_t *ip)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned octet;
        if (i > 0) {
            if (**s != '.') return -1;
            (*s)++;
        }
        if (s_read_dec(s, 3, 255, &octet) != 0) return -1;
        v = v << 8 | octet;
    }
    *ip = v;
    return 0;
}

static uint32_t s_mask(unsigned prefix)
{
    return prefix == 0 ? 0 : UINT32_MAX << (32 - prefix);
}

int rb_ip_parse(const char *s, uint32_t *ip)
{
    if (!s) return -1;
    uint32_t v;
    if (s_read_ip(&s, &v) != 0 || *s != '\0') return -1;
    *ip = v;
    return 0;
}

char *rb_ip_format(uint32_t ip, char out[16])
{
    snprintf(out, 16, "%u.%u.%u.%u", ip >> 24, ip >> 16 & 0xff, ip >> 8 & 0xff, ip & 0xff);
    return out;
}

int rb_cidr_parse(const char *s, rb_cidr_t *out)
{
    if (!s) return -1;
    uint32_t ip;
    unsigned prefix = 32;
    if (s_read_ip(&s, &ip) != 0) return -1;
    if (*s == '/') {
        s++;
        if (s_read_dec(&s, 2, 32, &prefix) != 0) return -1;
    }
    if (*s != '\0') return -1;
    /* "10.0.0.1/8" is refused rather than rounded down: the operator meant
     * something, and we cannot tell whether it was the block or the host. */
    if ((ip & ~s_mask(prefix)) != 0) return -1;
    out->net = ip;
    out->prefix = prefix;
    return 0;
}

bool rb_cidr_contains(const rb_cidr_t *c, uint32_t ip)
{
    return (ip & s_mask(c->prefix)) == c->net;
}

void rb_ip_ptr_name(uint32_t ip, char out[32])
{
    snprintf(out, 32, "%u.%u.%u.%u.in-addr.arpa", ip & 0xff, ip >> 8 & 0xff, ip >> 16 & 0xff,
             ip >> 24);
}

void rb_cidr_reverse_zone(const rb_cidr_t *c, char out[32])
{
    /* RFC 1035 §3.5: in-addr.arpa delegates on octet boundaries, so a /20
     * lives in the zone of its /16. */
    unsigned octets = c->prefix / 8;
    size_t len = 0;
    out[0] = '\0';
    for (unsigned i = octets; i > 0; i--) {
        unsigned octet = c->net >> (32 - 8 * i) & 0xff;
        len += (size_t)snprintf(out + len, 32 - len, "%u.", octet);
    }
    snprintf(out + len, 32 - len, "in-addr.arpa");
}

/* --- pools --- */

typedef struct {
    rb_cidr_t *v;
    size_t n, cap;
} s_cidr_list_t;

static int s_list_push(s_cidr_list_t *l, rb_cidr_t c)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        rb_cidr_t *v = realloc(l->v, cap * sizeof *v);
        if (!v) return -1;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = c;
    return 0;
}

static int s_cidr_cmp(const void *a, const void *b)
{
    const rb_cidr_t *x = a, *y = b;
    if (x->net != y->net) return x->net < y->net ? -1 : 1;
    return x->prefix < y->prefix ? -1 : x->prefix > y->prefix;
}

static uint32_t s_last(const rb_cidr_t *c)
{
    return c->net | ~s_mask(c->prefix);
}

static bool s_is_space(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* Splits a comma-separated list (spaces around items allowed) and parses
 * each item as a CIDR. what names the list in errors. */
static int s_parse_list(const char *s, const char *what, s_cidr_list_t *l, char *err,
                        size_t errlen)
{
    /* A list of only blanks is an empty list (an unset option in a file). */
    if (s[strspn(s, " \t")] == '\0') return 0;
    while (*s) {
        const char *end = strchr(s, ',');
        size_t n = end ? (size_t)(end - s) : strlen(s);
        const char *a = s, *b = s + n;
        while (a < b && s_is_space(*a)) a++;
        while (b > a && s_is_space(b[-1])) b--;
        char item[64];
        rb_cidr_t c;
        if ((size_t)(b - a) >= sizeof item) {
            snprintf(err, errlen, "%s: entry too long: \"%.20s...\"", what, a);
            return -1;
        }
        memcpy(item, a, (size_t)(b - a));
        item[b - a] = '\0';
        if (rb_cidr_parse(item, &c) != 0) {
            snprintf(err, errlen, "%s: bad address or CIDR \"%s\"", what, item);
            return -1;
        }
        if (s_list_push(l, c) != 0) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        if (!end) break;
        s = end + 1;
        if (*s == '\0') {
            snprintf(err, errlen, "%s: empty entry after the last comma", what);
            return -1;
        }
    }
    return 0;
}

rb_pool_t *rb_pool_new(const char *cidrs, const char *exclude, char *err, size_t errlen)
{
    char scratch[1];
    if (!err || errlen == 0) {
        err = scratch;
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    s_cidr_list_t bl = {0}, ex = {0};
    rb_pool_t *pool = NULL;
    s_range_t *ranges = NULL, *xr = NULL;

    if (!cidrs || s_parse_list(cidrs, "pool", &bl, err, errlen) != 0) {
        if (!cidrs) snprintf(err, errlen, "pool: no CIDR given");
        goto fail;
    }
    if (bl.n == 0) {
        snprintf(err, errlen, "pool: no CIDR given");
        goto fail;
    }
    if (exclude && s_parse_list(exclude, "exclude", &ex, err, errlen) != 0) goto fail;

    qsort(bl.v, bl.n, sizeof *bl.v, s_cidr_cmp);
    for (size_t i = 1; i < bl.n; i++) {
        /* Sorted by start, so overlap means the next block starts inside
         * this one. Two blocks handing out one address twice is a
         * configuration error, not something to merge silently. */
        if (bl.v[i].net <= s_last(&bl.v[i - 1])) {
            char a[16], b[16];
            snprintf(err, errlen, "pool: %s/%u overlaps %s/%u",
                     rb_ip_format(bl.v[i].net, b), bl.v[i].prefix,
                     rb_ip_format(bl.v[i - 1].net, a), bl.v[i - 1].prefix);
            goto fail;
        }
    }
    /* Exclusions may overlap each other (an address inside an excluded
     * block): merge them into disjoint sorted ranges, so that one sweep over
     * blocks and exclusions together finds the usable ranges. */
    if (ex.n > 0) qsort(ex.v, ex.n, sizeof *ex.v, s_cidr_cmp);
    xr = calloc(ex.n + 1, sizeof *xr);
    /* Each exclusion can split at most one usable range in two. */
    ranges = calloc(bl.n + ex.n, sizeof *ranges);
    if (!xr || !ranges) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    size_t nx = 0;
    for (size_t i = 0; i < ex.n; i++) {
        uint32_t lo = ex.v[i].net, hi = s_last(&ex.v[i]);
        if (nx > 0 && (uint64_t)lo <= (uint64_t)xr[nx - 1].hi + 1) {
            if (hi > xr[nx - 1].hi) xr[nx - 1].hi = hi;
        } else {
            xr[nx++] = (s_range_t){lo, hi};
        }
    }

    size_t nr = 0, xi = 0;
    uint64_t size = 0;
    for (size_t i = 0; i < bl.n; i++) {
        uint64_t lo = bl.v[i].net, hi = s_last(&bl.v[i]);
        /* Network and broadcast addresses are not hosts; a /31 (RFC 3021)
         * and a /32 have none. */
        if (bl.v[i].prefix < 31) {
            lo++;
            hi--;
        }
        while (xi < nx && xr[xi].hi < lo) xi++;
        uint64_t cur = lo;
        for (size_t k = xi; k < nx && xr[k].lo <= hi; k++) {
            if (xr[k].lo > cur) {
                ranges[nr++] = (s_range_t){(uint32_t)cur, xr[k].lo - 1};
                size += xr[k].lo - cur;
            }
            if ((uint64_t)xr[k].hi + 1 > cur) cur = (uint64_t)xr[k].hi + 1;
        }
        if (cur <= hi) {
            ranges[nr++] = (s_range_t){(uint32_t)cur, (uint32_t)hi};
            size += hi - cur + 1;
        }
    }
    if (size == 0) {
        snprintf(err, errlen, "pool: no usable address left after exclusions");
        goto fail;
    }

    pool = calloc(1, sizeof *pool);
    if (!pool) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    pool->blocks = bl.v;
    pool->nblocks = bl.n;
    pool->ranges = ranges;
    pool->nranges = nr;
    pool->size = size;
    free(ex.v);
    free(xr);
    return pool;

fail:
    free(xr);
    free(ranges);
    free(bl.v);
    free(ex.v);
    return NULL;
}

void rb_pool_destroy(rb_pool_t **pool)
{
    if (!pool || !*pool) return;
    free((*pool)->blocks);
    free((*pool)->ranges);
    free(*pool);
    *pool = NULL;
}

uint64_t rb_pool_size(const rb_pool_t *pool)
{
    return pool->size;
}

bool rb_pool_contains(const rb_pool_t *pool, uint32_t ip)
{
    size_t lo = 0, hi = pool->nranges;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ip < pool->ranges[mid].lo)
            hi = mid;
        else if (ip > pool->ranges[mid].hi)
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

int rb_pool_nth(const rb_pool_t *pool, uint64_t n, uint32_t *ip)
{
    for (size_t i = 0; i < pool->nranges; i++) {
        uint64_t len = (uint64_t)pool->ranges[i].hi - pool->ranges[i].lo + 1;
        if (n < len) {
            *ip = pool->ranges[i].lo + (uint32_t)n;
            return 0;
        }
        n -= len;
    }
    return -1;
}

size_t rb_pool_blocks(const rb_pool_t *pool)
{
    return pool->nblocks;
}

const rb_cidr_t *rb_pool_block(const rb_pool_t *pool, size_t i)
{
    return i < pool->nblocks ? &pool->blocks[i] : NULL;
}
