/* Tests for dns_zone: records follow up/down/reset, addresses move between
 * users, names are case-insensitive, reverse zones come from the pool, and
 * dns_zone_answer gives the right rcode and sections. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "dns_zone.h"
#include "rb_cidr.h"

#define IP(a, b, c, d) ((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (d))

static dns_zone_t *s_zone(void)
{
    dns_zone_config_t cfg = {"vpn.lab", "127.77.0.0/16,10.9.8.0/24,10.9.9.0/26,10.9.9.64/26", IP(127, 0, 0, 1),
                             30};
    char err[256] = "";
    dns_zone_t *z = dns_zone_new(&cfg, err, sizeof err);
    assert_non_null(z);
    return z;
}

static void test_up_down_reset(void **state)
{
    (void)state;
    dns_zone_t *z = s_zone();
    uint32_t ip;
    char name[256];
    uint32_t serial = dns_zone_serial(z);
    assert_int_equal(dns_zone_up(z, "s1", "alice", "alice.vpn.lab", IP(127, 77, 0, 2)), 0);
    assert_int_equal(dns_zone_up(z, "s2", "bob", "", IP(127, 77, 0, 3)), 0);
    assert_int_equal(dns_zone_records(z), 2);
    assert_true(dns_zone_serial(z) != serial);
    assert_int_equal(dns_zone_lookup_a(z, "alice.vpn.lab", &ip), 0);
    assert_int_equal(ip, IP(127, 77, 0, 2));
    assert_int_equal(dns_zone_lookup_a(z, "bob.vpn.lab.", &ip), 0);
    assert_int_equal(ip, IP(127, 77, 0, 3));
    assert_int_equal(dns_zone_lookup_ptr(z, IP(127, 77, 0, 2), name, sizeof name), 0);
    assert_string_equal(name, "alice.vpn.lab");
    assert_int_equal(dns_zone_lookup_a(z, "ns.vpn.lab", &ip), 0);
    assert_int_equal(ip, IP(127, 0, 0, 1));

    /* The same up again changes nothing. */
    serial = dns_zone_serial(z);
    assert_int_equal(dns_zone_up(z, "s1", "alice", "alice.vpn.lab", IP(127, 77, 0, 2)), 0);
    assert_int_equal(dns_zone_serial(z), serial);

    assert_int_equal(dns_zone_down(z, "s1", "alice", "alice.vpn.lab"), 1);
    assert_int_equal(dns_zone_lookup_a(z, "alice.vpn.lab", &ip), -1);
    assert_int_equal(dns_zone_lookup_ptr(z, IP(127, 77, 0, 2), name, sizeof name), -1);
    assert_int_equal(dns_zone_down(z, "s1", "alice", "alice.vpn.lab"), 0);
    assert_int_equal(dns_zone_records(z), 1);

    dns_zone_reset(z);
    assert_int_equal(dns_zone_records(z), 0);
    assert_int_equal(dns_zone_lookup_a(z, "bob.vpn.lab", &ip), -1);

    /* Names that are not one label under the suffix never enter the zone. */
    assert_int_equal(dns_zone_up(z, "x", "", "a.b.vpn.lab", IP(127, 77, 0, 9)), -1);
    assert_int_equal(dns_zone_up(z, "x", "", "alice.other.lab", IP(127, 77, 0, 9)), -1);
    assert_int_equal(dns_zone_up(z, "x", "", "vpn.lab", IP(127, 77, 0, 9)), -1);
    assert_int_equal(dns_zone_up(z, "x", "", "ns.vpn.lab", IP(127, 77, 0, 9)), -1);
    assert_int_equal(dns_zone_up(z, "x", "a.b", "", IP(127, 77, 0, 9)), -1);
    assert_int_equal(dns_zone_up(z, "x", "a b", "", IP(127, 77, 0, 9)), -1);
    assert_int_equal(dns_zone_records(z), 0);
    dns_zone_destroy(&z);
    assert_null(z);
    dns_zone_destroy(&z);
}

static void test_ip_reuse_and_transfer(void **state)
{
    (void)state;
    dns_zone_t *z = s_zone();
    uint32_t ip;
    char name[256];
    /* alice leaves, bob gets her address. */
    assert_int_equal(dns_zone_up(z, "s1", "alice", "", IP(127, 77, 0, 2)), 0);
    assert_int_equal(dns_zone_down(z, "s1", "alice", ""), 1);
    assert_int_equal(dns_zone_up(z, "s2", "bob", "", IP(127, 77, 0, 2)), 0);
    assert_int_equal(dns_zone_lookup_ptr(z, IP(127, 77, 0, 2), name, sizeof name), 0);
    assert_string_equal(name, "bob.vpn.lab");
    /* An address handed to someone else while its old holder is still up
     * (a missed down): the zone stays a bijection. */
    assert_int_equal(dns_zone_up(z, "s3", "carol", "", IP(127, 77, 0, 2)), 0);
    assert_int_equal(dns_zone_lookup_a(z, "bob.vpn.lab", &ip), -1);
    assert_int_equal(dns_zone_lookup_ptr(z, IP(127, 77, 0, 2), name, sizeof name), 0);
    assert_string_equal(name, "carol.vpn.lab");
    assert_int_equal(dns_zone_records(z), 1);
    /* A transfer logon: the new session's up arrives before the old one's
     * down, which must not remove the new record. */
    assert_int_equal(dns_zone_up(z, "s4", "carol", "", IP(127, 77, 0, 2)), 0);
    assert_int_equal(dns_zone_down(z, "s3", "carol", ""), 0);
    assert_int_equal(dns_zone_lookup_a(z, "carol.vpn.lab", &ip), 0);
    /* A user moving to a new address loses the old PTR. */
    assert_int_equal(dns_zone_up(z, "s4", "carol", "", IP(127, 77, 0, 7)), 0);
    assert_int_equal(dns_zone_lookup_ptr(z, IP(127, 77, 0, 2), name, sizeof name), -1);
    assert_int_equal(dns_zone_records(z), 1);
    dns_zone_destroy(&z);
}

static void test_case_insensitive(void **state)
{
    (void)state;
    dns_zone_t *z = s_zone();
    uint32_t ip;
    assert_int_equal(dns_zone_up(z, "s1", "", "Alice.VPN.Lab", IP(127, 77, 0, 2)), 0);
    assert_int_equal(dns_zone_lookup_a(z, "alice.vpn.lab", &ip), 0);
    assert_int_equal(dns_zone_lookup_a(z, "ALICE.vpn.LAB", &ip), 0);
    assert_int_equal(dns_zone_up(z, "s2", "ALICE", "", IP(127, 77, 0, 3)), 0);
    assert_int_equal(dns_zone_records(z), 1);
    assert_int_equal(dns_zone_down(z, "s2", "", "aLiCe.vpn.lab"), 1);
    assert_int_equal(dns_zone_records(z), 0);
    dns_zone_destroy(&z);
}

/* Asks z about name/type; returns the rcode and fills the counts. */
static int s_ask(const dns_zone_t *z, const char *name, uint16_t type, unsigned *an, unsigned *ns,
                 uint8_t *out, size_t *outlen)
{
    uint8_t pkt[512];
    size_t n = dns_wire_build_query(pkt, sizeof pkt, 1, name, type, 0);
    dns_query_t q;
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), 0);
    size_t len = 0;
    int rc = dns_zone_answer(z, &q, out, 512, &len);
    if (rc < 0) return rc;
    assert_int_equal(out[3] & 0xf, rc);
    assert_true(out[2] & 0x04);   /* AA */
    *an = out[7];
    *ns = out[9];
    *outlen = len;
    return rc;
}

static void test_reverse_zones_and_answers(void **state)
{
    (void)state;
    dns_zone_t *z = s_zone();
    /* The two /26 blocks share 9.9.10.in-addr.arpa. */
    assert_int_equal(dns_zone_reverse_count(z), 3);
    assert_null(dns_zone_reverse_name(z, 3));
    bool seen77 = false, seen9 = false;
    for (size_t i = 0; i < dns_zone_reverse_count(z); i++) {
        const char *r = dns_zone_reverse_name(z, i);
        if (strcmp(r, "77.127.in-addr.arpa") == 0) seen77 = true;
        if (strcmp(r, "8.9.10.in-addr.arpa") == 0 || strcmp(r, "9.9.10.in-addr.arpa") == 0)
            seen9 = true;
    }
    assert_true(seen77);
    assert_true(seen9);

    assert_int_equal(dns_zone_up(z, "s1", "alice", "", IP(127, 77, 0, 2)), 0);
    assert_int_equal(dns_zone_up(z, "s2", "dave", "", IP(10, 9, 8, 20)), 0);
    unsigned an, ns;
    uint8_t out[512];
    size_t len;
    assert_int_equal(s_ask(z, "alice.vpn.lab", DNS_TYPE_A, &an, &ns, out, &len), 0);
    assert_int_equal(an, 1);
    assert_memory_equal(out + len - 4, "\x7f\x4d\x00\x02", 4);
    assert_int_equal(s_ask(z, "alice.vpn.lab", DNS_TYPE_AAAA, &an, &ns, out, &len), 0);
    assert_int_equal(an, 0);
    assert_int_equal(ns, 1);   /* NODATA: SOA */
    assert_int_equal(s_ask(z, "nobody.vpn.lab", DNS_TYPE_A, &an, &ns, out, &len), 3);
    assert_int_equal(ns, 1);
    assert_int_equal(s_ask(z, "x.alice.vpn.lab", DNS_TYPE_A, &an, &ns, out, &len), 3);
    assert_int_equal(s_ask(z, "vpn.lab", DNS_TYPE_SOA, &an, &ns, out, &len), 0);
    assert_int_equal(an, 1);
    assert_int_equal(s_ask(z, "vpn.lab", DNS_TYPE_NS, &an, &ns, out, &len), 0);
    assert_int_equal(an, 1);
    assert_int_equal(out[11], 1);   /* glue A for ns.vpn.lab */
    assert_int_equal(s_ask(z, "vpn.lab", DNS_TYPE_A, &an, &ns, out, &len), 0);
    assert_int_equal(an, 0);
    assert_int_equal(s_ask(z, "ns.vpn.lab", DNS_TYPE_A, &an, &ns, out, &len), 0);
    assert_int_equal(an, 1);

    assert_int_equal(s_ask(z, "2.0.77.127.in-addr.arpa", DNS_TYPE_PTR, &an, &ns, out, &len), 0);
    assert_int_equal(an, 1);
    assert_int_equal(s_ask(z, "20.8.9.10.in-addr.arpa", DNS_TYPE_PTR, &an, &ns, out, &len), 0);
    assert_int_equal(an, 1);
    assert_int_equal(s_ask(z, "3.0.77.127.in-addr.arpa", DNS_TYPE_PTR, &an, &ns, out, &len), 3);
    assert_int_equal(s_ask(z, "02.0.77.127.in-addr.arpa", DNS_TYPE_PTR, &an, &ns, out, &len), 3);
    assert_int_equal(s_ask(z, "0.77.127.in-addr.arpa", DNS_TYPE_PTR, &an, &ns, out, &len), 0);
    assert_int_equal(an, 0);   /* empty non-terminal */
    assert_int_equal(s_ask(z, "77.127.in-addr.arpa", DNS_TYPE_SOA, &an, &ns, out, &len), 0);
    assert_int_equal(an, 1);

    /* Outside every zone: the caller decides. */
    assert_int_equal(s_ask(z, "example.com", DNS_TYPE_A, &an, &ns, out, &len), -1);
    assert_int_equal(s_ask(z, "lab", DNS_TYPE_A, &an, &ns, out, &len), -1);
    assert_int_equal(s_ask(z, "2.0.78.127.in-addr.arpa", DNS_TYPE_PTR, &an, &ns, out, &len), -1);
    assert_int_equal(s_ask(z, "xvpn.lab", DNS_TYPE_A, &an, &ns, out, &len), -1);
    dns_zone_destroy(&z);

    /* Bad configs. */
    char err[256];
    dns_zone_config_t bad = {"vpn..lab", NULL, 0, 30};
    assert_null(dns_zone_new(&bad, err, sizeof err));
    dns_zone_config_t badpool = {"vpn.lab", "10.0.0.0/33", 0, 30};
    assert_null(dns_zone_new(&badpool, err, sizeof err));
}

static void test_many_names(void **state)
{
    (void)state;
    dns_zone_t *z = s_zone();
    char label[32];
    for (unsigned i = 0; i < 20000; i++) {
        snprintf(label, sizeof label, "user%u", i);
        assert_int_equal(dns_zone_up(z, label, label, "", IP(127, 77, 0, 0) + i), 0);
    }
    assert_int_equal(dns_zone_records(z), 20000);
    uint32_t ip;
    assert_int_equal(dns_zone_lookup_a(z, "user12345.vpn.lab", &ip), 0);
    assert_int_equal(ip, IP(127, 77, 0, 0) + 12345);
    for (unsigned i = 0; i < 20000; i += 2) {
        snprintf(label, sizeof label, "user%u", i);
        assert_int_equal(dns_zone_down(z, label, label, ""), 1);
    }
    assert_int_equal(dns_zone_records(z), 10000);
    dns_zone_destroy(&z);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_up_down_reset),
        cmocka_unit_test(test_ip_reuse_and_transfer),
        cmocka_unit_test(test_case_insensitive),
        cmocka_unit_test(test_reverse_zones_and_answers),
        cmocka_unit_test(test_many_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
