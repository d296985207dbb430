/* dns_zone: the in-memory zones this server is authoritative for.
 *
 * The user zone <suffix> holds one A record per logged-on user with an
 * intranet address (<label>.<suffix>), plus SOA and NS at the apex and an A
 * record for ns.<suffix>. One reverse zone per block of the address pool
 * (the smallest octet-aligned in-addr.arpa zone covering it) holds the PTR
 * records. Names map to addresses and addresses to names through two hash
 * tables over the same entries, so both lookups are O(1); the zone is
 * always a bijection: a name has one address and an address one name.
 *
 * The zone changes only through up/down/reset (the session event stream)
 * and answers queries with dns_zone_answer, which does not allocate. */
#ifndef DNS_ZONE_H
#define DNS_ZONE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dns_wire.h"

typedef struct dns_zone dns_zone_t;

typedef struct {
    const char *suffix;      /* "vpn.lab": the user zone's apex */
    const char *pool;        /* comma-separated CIDRs for reverse zones; NULL or "" for none */
    uint32_t ns_address;     /* the A record of ns.<suffix>, host byte order */
    uint32_t ttl;            /* of every record, and the negative TTL (SOA minimum) */
} dns_zone_config_t;

/* NULL with err set on a bad suffix or pool. */
dns_zone_t *dns_zone_new(const dns_zone_config_t *cfg, char *err, size_t errlen);
void dns_zone_destroy(dns_zone_t **z);

/* A session came up: <fqdn> (or <label>.<suffix> when fqdn is empty) now
 * resolves to ip (host order), and ip back to it. Any other name holding ip
 * and any older address of the name are replaced. session_id may be NULL;
 * it lets a later down for an older session leave a newer one alone.
 * Returns 0, or -1 (logged) when the name is not a single label directly
 * under the suffix, or is the apex or ns.<suffix>. */
int dns_zone_up(dns_zone_t *z, const char *session_id, const char *label, const char *fqdn,
                uint32_t ip);
/* A session went down: its name is removed, unless it now belongs to a
 * different session (a transfer logon's up may arrive first). Returns 1 when
 * a record was removed, 0 when there was nothing to remove, -1 on a bad
 * name. */
int dns_zone_down(dns_zone_t *z, const char *session_id, const char *label, const char *fqdn);
/* Forgets every user record (a snapshot follows). */
void dns_zone_reset(dns_zone_t *z);

size_t dns_zone_records(const dns_zone_t *z);
/* Changes whenever the zone's content changes. */
uint32_t dns_zone_serial(const dns_zone_t *z);
/* Number of reverse zones, and the name of the i-th ("77.127.in-addr.arpa"). */
size_t dns_zone_reverse_count(const dns_zone_t *z);
const char *dns_zone_reverse_name(const dns_zone_t *z, size_t i);

/* Lookups by text, for tests and logs. 0 or -1 (no such record). */
int dns_zone_lookup_a(const dns_zone_t *z, const char *name, uint32_t *ip);
int dns_zone_lookup_ptr(const dns_zone_t *z, uint32_t ip, char *out, size_t outlen);

/* Answers q (already parsed with rcode NOERROR) when its name is in one of
 * our zones: writes the response, at most max bytes, to buf and sets *len.
 * Returns the response's rcode, or -1 when the name is in none of our zones
 * (the caller forwards it or refuses). */
int dns_zone_answer(const dns_zone_t *z, const dns_query_t *q, uint8_t *buf, size_t max,
                    size_t *len);

#endif
