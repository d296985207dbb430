/* dns_zone: the user zone and the reverse zones, in memory. See dns_zone.h. */
#include "dns_zone.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rb_cidr.h"
#include "rb_log.h"

#define DNS_ZONE_MAX_APEX 16
#define DNS_SOA_REFRESH 3600
#define DNS_SOA_RETRY 600
#define DNS_SOA_EXPIRE 86400

typedef struct dns_entry {
    struct dns_entry *name_next;   /* chain in the name table */
    struct dns_entry *ip_next;     /* chain in the address table */
    uint32_t name_hash;
    uint32_t ip;
    char *session;                 /* points into the allocation; "" when unknown */
    uint8_t name_len;
    uint8_t name[];                /* lower-case wire form, then the session id */
} dns_entry_t;

typedef struct {
    uint8_t apex[DNS_NAME_MAX];
    uint16_t apex_len;
    uint8_t labels;
    bool reverse;
    unsigned octets;               /* reverse: address octets named by the apex */
    uint32_t prefix_ip;            /* reverse: those octets, in place */
    char text[32];
} dns_apex_t;

struct dns_zone {
    dns_apex_t apex[DNS_ZONE_MAX_APEX];   /* [0] is the user zone */
    size_t napex;
    uint8_t ns[DNS_NAME_MAX];             /* ns.<suffix> */
    uint16_t ns_len;
    uint8_t rname[DNS_NAME_MAX];          /* hostmaster.<suffix> */
    uint16_t rname_len;
    uint32_t ns_address;
    uint32_t ttl;
    uint32_t serial;
    dns_entry_t **by_name;
    dns_entry_t **by_ip;
    size_t nbuckets;                      /* power of two, both tables */
    size_t count;
};

/* FNV-1a over the lower-case wire name. */
static uint32_t s_hash_name(const uint8_t *name, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= name[i];
        h *= 16777619u;
    }
    return h;
}

static uint32_t s_hash_ip(uint32_t ip)
{
    /* Pool addresses differ in their low bits; a multiplicative hash spreads
     * them over the high bits, which the shift keeps. */
    return (uint32_t)((ip * 2654435761u) >> 7);
}

static unsigned s_count_labels(const uint8_t *name)
{
    unsigned n = 0;
    for (size_t p = 0; name[p] != 0; p += 1 + (size_t)name[p]) n++;
    return n;
}

static int s_prefix_name(const char *label, const dns_apex_t *apex, uint8_t *out, uint16_t *len)
{
    size_t n = strlen(label);
    if (1 + n + apex->apex_len > DNS_NAME_MAX) return -1;
    out[0] = (uint8_t)n;
    memcpy(out + 1, label, n);
    memcpy(out + 1 + n, apex->apex, apex->apex_len);
    *len = (uint16_t)(1 + n + apex->apex_len);
    return 0;
}

static int s_add_apex(dns_zone_t *z, const char *text, bool reverse, char *err, size_t errlen)
{
    dns_apex_t a;
    memset(&a, 0, sizeof a);
    int n = dns_wire_name_from_text(text, a.apex);
    if (n <= 1) {
        snprintf(err, errlen, "'%s' is not a valid domain name", text);
        return -1;
    }
    a.apex_len = (uint16_t)n;
    a.labels = (uint8_t)s_count_labels(a.apex);
    a.reverse = reverse;
    snprintf(a.text, sizeof a.text, "%s", text);
    if (reverse) {
        /* "77.127.in-addr.arpa": the octets read right to left. */
        a.octets = a.labels - 2;
        size_t p = 0;
        for (unsigned i = 0; i < a.octets; i++) {
            unsigned v = 0;
            for (unsigned k = 1; k <= a.apex[p]; k++) v = v * 10 + (unsigned)(a.apex[p + k] - '0');
            a.prefix_ip |= v << (8 * (4 - a.octets + i));
            p += 1 + (size_t)a.apex[p];
        }
    }
    for (size_t i = 0; i < z->napex; i++)
        if (dns_wire_name_equal(z->apex[i].apex, z->apex[i].apex_len, a.apex, a.apex_len))
            return 0;   /* two blocks in one reverse zone */
    if (z->napex == DNS_ZONE_MAX_APEX) {
        snprintf(err, errlen, "more than %d reverse zones", DNS_ZONE_MAX_APEX - 1);
        return -1;
    }
    z->apex[z->napex++] = a;
    return 0;
}

static int s_resize(dns_zone_t *z, size_t nbuckets)
{
    dns_entry_t **bn = calloc(nbuckets, sizeof *bn);
    dns_entry_t **bi = calloc(nbuckets, sizeof *bi);
    if (!bn || !bi) {
        free(bn);
        free(bi);
        return -1;
    }
    for (size_t i = 0; i < z->nbuckets; i++) {
        for (dns_entry_t *e = z->by_name[i], *next; e; e = next) {
            next = e->name_next;
            size_t b = e->name_hash & (nbuckets - 1);
            e->name_next = bn[b];
            bn[b] = e;
        }
        for (dns_entry_t *e = z->by_ip[i], *next; e; e = next) {
            next = e->ip_next;
            size_t b = s_hash_ip(e->ip) & (nbuckets - 1);
            e->ip_next = bi[b];
            bi[b] = e;
        }
    }
    free(z->by_name);
    free(z->by_ip);
    z->by_name = bn;
    z->by_ip = bi;
    z->nbuckets = nbuckets;
    return 0;
}

dns_zone_t *dns_zone_new(const dns_zone_config_t *cfg, char *err, size_t errlen)
{
    dns_zone_t *z = calloc(1, sizeof *z);
    if (!z) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    z->ns_address = cfg->ns_address;
    z->ttl = cfg->ttl;
    /* Start from the clock so a restarted server does not go back in time
     * for anyone who compares serials. */
    z->serial = (uint32_t)time(NULL);
    if (!cfg->suffix || s_add_apex(z, cfg->suffix, false, err, errlen) < 0) {
        if (!cfg->suffix) snprintf(err, errlen, "no suffix");
        goto fail;
    }
    if (s_prefix_name("ns", &z->apex[0], z->ns, &z->ns_len) < 0 ||
        s_prefix_name("hostmaster", &z->apex[0], z->rname, &z->rname_len) < 0) {
        snprintf(err, errlen, "suffix '%s' is too long", cfg->suffix);
        goto fail;
    }
    if (cfg->pool && cfg->pool[0]) {
        rb_pool_t *pool = rb_pool_new(cfg->pool, NULL, err, errlen);
        if (!pool) goto fail;
        for (size_t i = 0; i < rb_pool_blocks(pool); i++) {
            char rz[32];
            rb_cidr_reverse_zone(rb_pool_block(pool, i), rz);
            if (s_add_apex(z, rz, true, err, errlen) < 0) {
                rb_pool_destroy(&pool);
                goto fail;
            }
        }
        rb_pool_destroy(&pool);
    }
    if (s_resize(z, 1024) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    return z;
fail:
    dns_zone_destroy(&z);
    return NULL;
}

void dns_zone_destroy(dns_zone_t **zp)
{
    if (!zp || !*zp) return;
    dns_zone_t *z = *zp;
    dns_zone_reset(z);
    free(z->by_name);
    free(z->by_ip);
    free(z);
    *zp = NULL;
}

static dns_entry_t *s_find_name(const dns_zone_t *z, const uint8_t *name, size_t len, uint32_t h)
{
    for (dns_entry_t *e = z->by_name[h & (z->nbuckets - 1)]; e; e = e->name_next)
        if (e->name_hash == h && e->name_len == len && memcmp(e->name, name, len) == 0) return e;
    return NULL;
}

static dns_entry_t *s_find_ip(const dns_zone_t *z, uint32_t ip)
{
    for (dns_entry_t *e = z->by_ip[s_hash_ip(ip) & (z->nbuckets - 1)]; e; e = e->ip_next)
        if (e->ip == ip) return e;
    return NULL;
}

static void s_unlink(dns_zone_t *z, dns_entry_t *e)
{
    dns_entry_t **pp = &z->by_name[e->name_hash & (z->nbuckets - 1)];
    while (*pp != e) pp = &(*pp)->name_next;
    *pp = e->name_next;
    pp = &z->by_ip[s_hash_ip(e->ip) & (z->nbuckets - 1)];
    while (*pp != e) pp = &(*pp)->ip_next;
    *pp = e->ip_next;
    free(e);
    z->count--;
    z->serial++;
}

/* The wire name of a session's record: fqdn when given, else label under the
 * suffix. It must be exactly one label under the suffix, and not ns. */
static int s_session_name(const dns_zone_t *z, const char *label, const char *fqdn,
                          uint8_t out[DNS_NAME_MAX])
{
    const dns_apex_t *a = &z->apex[0];
    int n;
    if (fqdn && fqdn[0]) {
        n = dns_wire_name_from_text(fqdn, out);
    } else if (label && label[0] && !strchr(label, '.')) {
        uint8_t l[DNS_NAME_MAX];
        n = dns_wire_name_from_text(label, l);
        if (n < 2 || 1 + (size_t)(n - 1) + a->apex_len - 1 > DNS_NAME_MAX) return -1;
        memcpy(out, l, (size_t)n - 1);
        memcpy(out + n - 1, a->apex, a->apex_len);
        n = n - 1 + a->apex_len;
    } else {
        return -1;
    }
    if (n < 0 || (size_t)n != 1 + (size_t)out[0] + a->apex_len ||
        memcmp(out + 1 + out[0], a->apex, a->apex_len) != 0)
        return -1;
    if (dns_wire_name_equal(out, (size_t)n, z->ns, z->ns_len)) return -1;
    return n;
}

int dns_zone_up(dns_zone_t *z, const char *session_id, const char *label, const char *fqdn,
                uint32_t ip)
{
    uint8_t name[DNS_NAME_MAX];
    int n = s_session_name(z, label, fqdn, name);
    if (n < 0) {
        rb_warn("dns_bad_name", "session %s: name '%s' is not a label under the zone",
                session_id ? session_id : "?", fqdn && fqdn[0] ? fqdn : label ? label : "");
        return -1;
    }
    if (!session_id) session_id = "";
    uint32_t h = s_hash_name(name, (size_t)n);
    dns_entry_t *old = s_find_name(z, name, (size_t)n, h);
    if (old && old->ip == ip && strcmp(old->session, session_id) == 0) return 0;
    if (old) s_unlink(z, old);
    dns_entry_t *holder = s_find_ip(z, ip);
    if (holder) {
        char t[DNS_NAME_MAX + 1], ipt[16];
        rb_warn("dns_ip_moved", "%s moves from %s to a new session",
                rb_ip_format(ip, ipt), dns_wire_name_to_text(holder->name, t, sizeof t));
        s_unlink(z, holder);
    }
    size_t slen = strlen(session_id);
    dns_entry_t *e = malloc(sizeof *e + (size_t)n + slen + 1);
    if (!e) {
        rb_error("dns_oom", "no memory for a zone entry");
        return -1;
    }
    e->name_len = (uint8_t)n;
    memcpy(e->name, name, (size_t)n);
    e->session = (char *)e->name + n;
    memcpy(e->session, session_id, slen + 1);
    e->name_hash = h;
    e->ip = ip;
    if (z->count >= z->nbuckets && s_resize(z, z->nbuckets * 2) < 0)
        rb_warn("dns_oom", "zone hash table stays at %zu buckets", z->nbuckets);
    size_t b = h & (z->nbuckets - 1);
    e->name_next = z->by_name[b];
    z->by_name[b] = e;
    b = s_hash_ip(ip) & (z->nbuckets - 1);
    e->ip_next = z->by_ip[b];
    z->by_ip[b] = e;
    z->count++;
    z->serial++;
    return 0;
}

int dns_zone_down(dns_zone_t *z, const char *session_id, const char *label, const char *fqdn)
{
    uint8_t name[DNS_NAME_MAX];
    int n = s_session_name(z, label, fqdn, name);
    if (n < 0) return -1;
    dns_entry_t *e = s_find_name(z, name, (size_t)n, s_hash_name(name, (size_t)n));
    if (!e) return 0;
    if (session_id && session_id[0] && e->session[0] && strcmp(session_id, e->session) != 0)
        return 0;   /* the name already belongs to a newer session */
    s_unlink(z, e);
    return 1;
}

void dns_zone_reset(dns_zone_t *z)
{
    for (size_t i = 0; i < z->nbuckets; i++) {
        for (dns_entry_t *e = z->by_name[i], *next; e; e = next) {
            next = e->name_next;
            free(e);
        }
        z->by_name[i] = NULL;
        z->by_ip[i] = NULL;
    }
    if (z->count) z->serial++;
    z->count = 0;
}

size_t dns_zone_records(const dns_zone_t *z) { return z->count; }
uint32_t dns_zone_serial(const dns_zone_t *z) { return z->serial; }
size_t dns_zone_reverse_count(const dns_zone_t *z) { return z->napex - 1; }

const char *dns_zone_reverse_name(const dns_zone_t *z, size_t i)
{
    return i + 1 < z->napex ? z->apex[i + 1].text : NULL;
}

int dns_zone_lookup_a(const dns_zone_t *z, const char *name, uint32_t *ip)
{
    uint8_t w[DNS_NAME_MAX];
    int n = dns_wire_name_from_text(name, w);
    if (n < 0) return -1;
    if (dns_wire_name_equal(w, (size_t)n, z->ns, z->ns_len)) {
        *ip = z->ns_address;
        return 0;
    }
    dns_entry_t *e = s_find_name(z, w, (size_t)n, s_hash_name(w, (size_t)n));
    if (!e) return -1;
    *ip = e->ip;
    return 0;
}

int dns_zone_lookup_ptr(const dns_zone_t *z, uint32_t ip, char *out, size_t outlen)
{
    dns_entry_t *e = s_find_ip(z, ip);
    if (!e) return -1;
    dns_wire_name_to_text(e->name, out, outlen);
    return 0;
}

/* ---- answering ---- */

/* The zone q's name falls in (the deepest apex that is a suffix of it), and
 * how many labels lie below that apex. */
static const dns_apex_t *s_find_apex(const dns_zone_t *z, const dns_query_t *q, unsigned *depth)
{
    const dns_apex_t *best = NULL;
    for (size_t i = 0; i < z->napex; i++) {
        const dns_apex_t *a = &z->apex[i];
        if (q->nlabels < a->labels || (best && best->labels >= a->labels)) continue;
        unsigned d = q->nlabels - a->labels;
        size_t off = q->label_off[d];
        if (q->qname_len - off == a->apex_len && memcmp(q->qlower + off, a->apex, a->apex_len) == 0) {
            best = a;
            *depth = d;
        }
    }
    return best;
}

/* Reads the first n labels of q as address octets (least significant
 * first), strict decimal. 0 or -1. */
static int s_octets(const dns_query_t *q, unsigned n, uint32_t *bits)
{
    uint32_t v = 0;
    for (unsigned i = 0; i < n; i++) {
        const uint8_t *l = q->qlower + q->label_off[i];
        if (l[0] < 1 || l[0] > 3 || (l[0] > 1 && l[1] == '0')) return -1;
        unsigned x = 0;
        for (unsigned k = 1; k <= l[0]; k++) {
            if (l[k] < '0' || l[k] > '9') return -1;
            x = x * 10 + (unsigned)(l[k] - '0');
        }
        if (x > 255) return -1;
        v |= (uint32_t)x << (8 * i);
    }
    *bits = v;
    return 0;
}

typedef enum { S_NXDOMAIN, S_NODATA, S_A, S_PTR, S_APEX } s_kind_t;

static void s_soa(const dns_zone_t *z, dns_writer_t *w, dns_section_t sec, const dns_apex_t *a)
{
    dns_soa_t soa = {z->serial, DNS_SOA_REFRESH, DNS_SOA_RETRY, DNS_SOA_EXPIRE, z->ttl};
    dns_writer_soa(w, sec, a->apex, a->apex_len, z->ttl, z->ns, z->ns_len, z->rname,
                   z->rname_len, &soa);
}

int dns_zone_answer(const dns_zone_t *z, const dns_query_t *q, uint8_t *buf, size_t max,
                    size_t *len)
{
    if (q->qclass != DNS_CLASS_IN) return -1;
    unsigned depth = 0;
    const dns_apex_t *a = s_find_apex(z, q, &depth);
    if (!a) return -1;
    dns_writer_t w;
    if (q->qtype == DNS_TYPE_AXFR || q->qtype == DNS_TYPE_IXFR) {
        /* No zone transfers: secondaries follow the event stream instead. */
        if (dns_writer_begin(&w, buf, max, q, DNS_RCODE_REFUSED, false) < 0) return -1;
        *len = dns_writer_finish(&w);
        return DNS_RCODE_REFUSED;
    }
    s_kind_t kind = S_NXDOMAIN;
    uint32_t ip = 0;
    const dns_entry_t *e = NULL;
    bool apex_rr = depth == 0 && (q->qtype == DNS_TYPE_SOA || q->qtype == DNS_TYPE_NS ||
                                  q->qtype == DNS_TYPE_ANY);
    if (apex_rr) {
        kind = S_APEX;
    } else if (!a->reverse) {
        if (depth == 0) {
            kind = S_NODATA;
        } else if (depth == 1) {
            if (dns_wire_name_equal(q->qlower, q->qname_len, z->ns, z->ns_len)) {
                kind = S_A;
                ip = z->ns_address;
            } else if ((e = s_find_name(z, q->qlower, q->qname_len,
                                        s_hash_name(q->qlower, q->qname_len)))) {
                kind = S_A;
                ip = e->ip;
            }
        }
        if (kind == S_A && q->qtype != DNS_TYPE_A && q->qtype != DNS_TYPE_ANY) kind = S_NODATA;
    } else {
        unsigned need = 4 - a->octets;
        uint32_t low;
        if (depth == need && s_octets(q, need, &low) == 0 &&
            (e = s_find_ip(z, a->prefix_ip | low))) {
            kind = (q->qtype == DNS_TYPE_PTR || q->qtype == DNS_TYPE_ANY) ? S_PTR : S_NODATA;
        } else if (depth < need) {
            /* An empty non-terminal (RFC 8020: NXDOMAIN here would tell a
             * resolver that nothing exists below it). */
            kind = S_NODATA;
        }
    }
    unsigned rcode = kind == S_NXDOMAIN ? DNS_RCODE_NXDOMAIN : DNS_RCODE_NOERROR;
    if (dns_writer_begin(&w, buf, max, q, rcode, true) < 0) return -1;
    switch (kind) {
    case S_A:
        dns_writer_a(&w, DNS_SEC_ANSWER, q->qname, q->qname_len, z->ttl, ip);
        break;
    case S_PTR:
        dns_writer_ptr(&w, DNS_SEC_ANSWER, q->qname, q->qname_len, z->ttl, e->name, e->name_len);
        break;
    case S_APEX:
        if (q->qtype != DNS_TYPE_NS) s_soa(z, &w, DNS_SEC_ANSWER, a);
        if (q->qtype != DNS_TYPE_SOA) {
            dns_writer_ns(&w, DNS_SEC_ANSWER, a->apex, a->apex_len, z->ttl, z->ns, z->ns_len);
            dns_writer_a(&w, DNS_SEC_ADDITIONAL, z->ns, z->ns_len, z->ttl, z->ns_address);
        }
        break;
    case S_NODATA:
    case S_NXDOMAIN:
        /* RFC 2308: the SOA in authority gives the negative TTL. */
        s_soa(z, &w, DNS_SEC_AUTHORITY, a);
        break;
    }
    *len = dns_writer_finish(&w);
    return (int)rcode;
}
