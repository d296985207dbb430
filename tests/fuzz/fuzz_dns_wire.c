// part: dns
/* Fuzz target for the DNS codec: arbitrary bytes parsed as a query the way
 * the server does; whenever it would answer, the answer is built from a
 * small zone into a small and a large buffer, and must read back as a
 * well-formed message no longer than the limit. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dns_wire.h"
#include "dns_zone.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static dns_zone_t *s_zone(void)
{
    static dns_zone_t *z;
    if (!z) {
        dns_zone_config_t cfg = {"vpn.lab", "127.77.0.0/16,10.1.2.0/24", 0x7f000001, 30};
        char err[128];
        z = dns_zone_new(&cfg, err, sizeof err);
        if (!z) abort();
        dns_zone_up(z, "s1", "alice", "", 0x7f4d0002);
        dns_zone_up(z, "s2", "bob", "", 0x0a010203);
    }
    return z;
}

/* The response must parse: header, question, then exactly the records its
 * counts announce, and nothing after them. */
static void s_check(const uint8_t *r, size_t len, size_t max)
{
    if (len < 12 || len > max) abort();
    unsigned qd = (unsigned)(r[4] << 8 | r[5]);
    size_t pos = 12;
    if (qd == 1) {
        dns_query_t q;
        if (dns_wire_parse_response_question(r, len, &q) < 0) abort();
        pos += q.qname_len + 4u;
    } else if (qd != 0) {
        abort();
    }
    unsigned rrs = (unsigned)(r[6] << 8 | r[7]) + (unsigned)(r[8] << 8 | r[9]) +
                   (unsigned)(r[10] << 8 | r[11]);
    for (unsigned i = 0; i < rrs; i++) {
        dns_rr_t rr;
        if (dns_wire_read_rr(r, len, &pos, &rr) < 0) abort();
    }
    if (pos != len) abort();
}

static void s_answer(const dns_query_t *q, int rc, uint8_t *out, size_t max)
{
    size_t len = 0;
    if (rc == DNS_RCODE_NOERROR) {
        int zr = dns_zone_answer(s_zone(), q, out, max, &len);
        if (zr >= 0) {
            if (len) s_check(out, len, max);
            return;
        }
        rc = DNS_RCODE_REFUSED;
    }
    dns_writer_t w;
    if (dns_writer_begin(&w, out, max, q, (unsigned)rc, false) < 0) return;
    len = dns_writer_finish(&w);
    s_check(out, len, max);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t small[96], large[DNS_TCP_MAX];
    dns_query_t q;
    int rc = dns_wire_parse_query(data, size, &q);
    if (rc >= 0) {
        s_answer(&q, rc, small, sizeof small);
        s_answer(&q, rc, large, dns_wire_max_response(&q, false));
        s_answer(&q, rc, large, sizeof large);
    }
    /* The same bytes as an upstream's answer being relayed. */
    if (size <= 4096) {
        uint8_t copy[4096];
        memcpy(copy, data, size);
        size_t n = dns_wire_truncate(copy, size, 512);
        if (n > 512) abort();
    }
    return 0;
}
