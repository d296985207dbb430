/* Tests for dns_wire: query parsing (good queries, truncation, hostile
 * names, counts, EDNS) and the response writer (compression, TC, case). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "dns_wire.h"

/* Header: id 0x1234, RD, one question, no other records. */
static size_t s_header(uint8_t *p, uint16_t qd, uint16_t an, uint16_t ns, uint16_t ar)
{
    const uint8_t h[12] = {0x12, 0x34, 0x01, 0x00, (uint8_t)(qd >> 8), (uint8_t)qd,
                           (uint8_t)(an >> 8), (uint8_t)an, (uint8_t)(ns >> 8), (uint8_t)ns,
                           (uint8_t)(ar >> 8), (uint8_t)ar};
    memcpy(p, h, 12);
    return 12;
}

static void test_parse_good(void **state)
{
    (void)state;
    uint8_t pkt[512];
    size_t n = dns_wire_build_query(pkt, sizeof pkt, 77, "Alice.VPN.lab", DNS_TYPE_A, 0);
    assert_true(n > 0);
    dns_query_t q;
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), DNS_RCODE_NOERROR);
    assert_int_equal(q.id, 77);
    assert_int_equal(q.qtype, DNS_TYPE_A);
    assert_int_equal(q.qclass, DNS_CLASS_IN);
    assert_int_equal(q.nlabels, 3);
    assert_int_equal(q.qname_len, 15);
    assert_memory_equal(q.qname, "\x05" "Alice\x03VPN\x03lab", 15);
    assert_memory_equal(q.qlower, "\x05" "alice\x03vpn\x03lab", 15);
    assert_false(q.edns);
    assert_int_equal(dns_wire_max_response(&q, false), 512);
    assert_int_equal(dns_wire_max_response(&q, true), 65535);

    n = dns_wire_build_query(pkt, sizeof pkt, 1, "2.0.77.127.in-addr.arpa", DNS_TYPE_PTR, 0);
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), DNS_RCODE_NOERROR);
    assert_int_equal(q.qtype, DNS_TYPE_PTR);
    assert_int_equal(q.nlabels, 6);

    /* The root as the question. */
    n = s_header(pkt, 1, 0, 0, 0);
    memcpy(pkt + n, "\x00\x00\x02\x00\x01", 5);
    assert_int_equal(dns_wire_parse_query(pkt, n + 5, &q), DNS_RCODE_NOERROR);
    assert_int_equal(q.nlabels, 0);
}

static void test_parse_truncated(void **state)
{
    (void)state;
    uint8_t pkt[512];
    size_t n = dns_wire_build_query(pkt, sizeof pkt, 9, "alice.vpn.lab", DNS_TYPE_A, 1232);
    dns_query_t q;
    /* Shorter than a header: dropped. Any cut after it: FORMERR. */
    for (size_t cut = 0; cut < 12; cut++) assert_int_equal(dns_wire_parse_query(pkt, cut, &q), -1);
    for (size_t cut = 12; cut < n; cut++)
        assert_int_equal(dns_wire_parse_query(pkt, cut, &q), DNS_RCODE_FORMERR);
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), DNS_RCODE_NOERROR);
    /* Trailing garbage. */
    pkt[n] = 0;
    assert_int_equal(dns_wire_parse_query(pkt, n + 1, &q), DNS_RCODE_FORMERR);
}

static void test_parse_bad_names(void **state)
{
    (void)state;
    uint8_t pkt[1024];
    dns_query_t q;
    size_t n;

    /* A pointer to itself, a pointer forward, a pointer into the header. */
    n = s_header(pkt, 1, 0, 0, 0);
    memcpy(pkt + n, "\xc0\x0c\x00\x01\x00\x01", 6);
    assert_int_equal(dns_wire_parse_query(pkt, n + 6, &q), DNS_RCODE_FORMERR);
    assert_false(q.has_question);
    memcpy(pkt + n, "\xc0\x12\x00\x01\x00\x01\x01\x61\x00", 9);
    assert_int_equal(dns_wire_parse_query(pkt, n + 9, &q), DNS_RCODE_FORMERR);
    memcpy(pkt + n, "\xc0\x02\x00\x01\x00\x01", 6);
    assert_int_equal(dns_wire_parse_query(pkt, n + 6, &q), DNS_RCODE_FORMERR);

    /* A label, then a pointer back to that pointer. */
    n = s_header(pkt, 1, 0, 0, 1);
    memcpy(pkt + n, "\x01\x61\xc0\x0e", 4);   /* "a" then a pointer to itself+2 */
    assert_int_equal(dns_wire_parse_query(pkt, n + 4 + 4, &q), DNS_RCODE_FORMERR);

    /* dns_wire_read_name directly: a loop of two pointers. */
    uint8_t loop[32] = {0};
    loop[12] = 0xc0;
    loop[13] = 14;
    loop[14] = 0xc0;
    loop[15] = 12;
    uint8_t name[DNS_NAME_MAX];
    size_t pos = 14;
    assert_int_equal(dns_wire_read_name(loop, 16, &pos, name), -1);
    pos = 12;
    assert_int_equal(dns_wire_read_name(loop, 16, &pos, name), -1);
    /* A legal backward pointer. */
    memcpy(loop + 12, "\x03vpn\x03lab\x00\x05" "alice\xc0\x0c", 17);
    pos = 21;
    assert_int_equal(dns_wire_read_name(loop, 31, &pos, name), 15);
    assert_int_equal(pos, 29);
    assert_memory_equal(name, "\x05" "alice\x03vpn\x03lab", 15);

    /* A label of 64 (the 0x40 bit is an extended label type). */
    n = s_header(pkt, 1, 0, 0, 0);
    pkt[n] = 64;
    memset(pkt + n + 1, 'a', 64);
    memcpy(pkt + n + 65, "\x00\x00\x01\x00\x01", 5);
    assert_int_equal(dns_wire_parse_query(pkt, n + 70, &q), DNS_RCODE_FORMERR);
    /* 63 is fine. */
    pkt[n] = 63;
    memcpy(pkt + n + 64, "\x00\x00\x01\x00\x01", 5);
    assert_int_equal(dns_wire_parse_query(pkt, n + 69, &q), DNS_RCODE_NOERROR);

    /* A 300-character name: five 59-byte labels. 255 bytes exactly passes. */
    n = s_header(pkt, 1, 0, 0, 0);
    size_t p = n;
    for (int i = 0; i < 5; i++) {
        pkt[p] = 59;
        memset(pkt + p + 1, 'x', 59);
        p += 60;
    }
    memcpy(pkt + p, "\x00\x00\x01\x00\x01", 5);
    assert_int_equal(dns_wire_parse_query(pkt, p + 5, &q), DNS_RCODE_FORMERR);
    p = n;
    for (int i = 0; i < 4; i++) {   /* 4 * 62 + 6 + 1 = 255 */
        pkt[p] = 61;
        memset(pkt + p + 1, 'x', 61);
        p += 62;
    }
    pkt[p] = 5;
    memset(pkt + p + 1, 'y', 5);
    p += 6;
    memcpy(pkt + p, "\x00\x00\x01\x00\x01", 5);
    assert_int_equal(dns_wire_parse_query(pkt, p + 5, &q), DNS_RCODE_NOERROR);
    assert_int_equal(q.qname_len, 255);
    pkt[p - 6] = 6;   /* one more byte: 256 */
    memmove(pkt + p + 1, pkt + p, 5);
    pkt[p] = 'y';
    assert_int_equal(dns_wire_parse_query(pkt, p + 6, &q), DNS_RCODE_FORMERR);

    /* Text names. */
    assert_int_equal(dns_wire_name_from_text("a..b", name), -1);
    assert_int_equal(dns_wire_name_from_text("a b.c", name), -1);
    assert_int_equal(dns_wire_name_from_text("evil\\.x", name), -1);
    assert_int_equal(dns_wire_name_from_text("ok.", name), 4);
    assert_int_equal(dns_wire_name_from_text(".", name), 1);
}

static void test_parse_counts_and_flags(void **state)
{
    (void)state;
    uint8_t pkt[512];
    dns_query_t q;
    size_t n = dns_wire_build_query(pkt, sizeof pkt, 5, "alice.vpn.lab", DNS_TYPE_A, 0);

    /* Huge counts, QDCOUNT 0 and 2, answers in a query. */
    static const uint16_t bad[][4] = {{0xffff, 0xffff, 0xffff, 0xffff}, {0, 0, 0, 0},
                                      {2, 0, 0, 0}, {1, 1, 0, 0}, {1, 0, 1, 0}, {1, 0, 0, 2},
                                      {1, 0, 0, 0xffff}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t c[512];
        memcpy(c, pkt, n);
        for (int k = 0; k < 4; k++) {
            c[4 + 2 * k] = (uint8_t)(bad[i][k] >> 8);
            c[5 + 2 * k] = (uint8_t)bad[i][k];
        }
        assert_int_equal(dns_wire_parse_query(c, n, &q), DNS_RCODE_FORMERR);
    }
    /* A response is dropped; another opcode is NOTIMP with the question. */
    pkt[2] |= 0x80;
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), -1);
    pkt[2] = (uint8_t)(0x01 | (5 << 3));   /* UPDATE */
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), DNS_RCODE_NOTIMP);
    assert_true(q.has_question);
}

static void test_parse_edns(void **state)
{
    (void)state;
    uint8_t pkt[512];
    dns_query_t q;
    size_t n = dns_wire_build_query(pkt, sizeof pkt, 5, "alice.vpn.lab", DNS_TYPE_A, 4096);
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), DNS_RCODE_NOERROR);
    assert_true(q.edns);
    assert_int_equal(q.edns_size, 4096);
    assert_int_equal(dns_wire_max_response(&q, false), DNS_EDNS_PAYLOAD);

    n = dns_wire_build_query(pkt, sizeof pkt, 5, "alice.vpn.lab", DNS_TYPE_A, 100);
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), DNS_RCODE_NOERROR);
    assert_int_equal(dns_wire_max_response(&q, false), 512);

    n = dns_wire_build_query(pkt, sizeof pkt, 5, "alice.vpn.lab", DNS_TYPE_A, 800);
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), DNS_RCODE_NOERROR);
    assert_int_equal(dns_wire_max_response(&q, false), 800);

    /* DO bit set: ignored. Version 1: BADVERS. */
    pkt[n - 4] = 0x80;
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), DNS_RCODE_NOERROR);
    pkt[n - 5] = 1;
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), DNS_RCODE_BADVERS);
    pkt[n - 5] = 0;

    /* An option that overruns the rdata. */
    uint8_t c[512];
    memcpy(c, pkt, n);
    c[n - 1] = 4;
    memcpy(c + n, "\x00\x0a\x00\x08", 4);   /* cookie claiming 8 bytes */
    assert_int_equal(dns_wire_parse_query(c, n + 4, &q), DNS_RCODE_FORMERR);
    c[n + 3] = 0;
    assert_int_equal(dns_wire_parse_query(c, n + 4, &q), DNS_RCODE_NOERROR);
    /* OPT owned by something else than the root. */
    memcpy(c, pkt, n);
    size_t opt = n - 11;
    memcpy(c + opt, "\x01" "a\x00", 3);
    memcpy(c + opt + 3, pkt + opt + 1, 10);
    assert_int_equal(dns_wire_parse_query(c, n + 2, &q), DNS_RCODE_FORMERR);
}

/* Reads a response: rcode, flags, counts, and checks every record parses. */
static void s_check_response(const uint8_t *r, size_t len, unsigned rcode, unsigned an,
                             unsigned ns, unsigned ar)
{
    assert_true(len >= 12);
    assert_int_equal(r[3] & 0xf, rcode);
    assert_true(r[2] & 0x80);
    assert_int_equal(r[7], an);
    assert_int_equal(r[9], ns);
    assert_int_equal(r[11], ar);
    dns_query_t q;
    assert_int_equal(dns_wire_parse_response_question(r, len, &q), 0);
    size_t pos = 12 + q.qname_len + 4u;
    for (unsigned i = 0; i < an + ns + ar; i++) {
        dns_rr_t rr;
        assert_int_equal(dns_wire_read_rr(r, len, &pos, &rr), 0);
    }
    assert_int_equal(pos, len);
}

static void test_writer(void **state)
{
    (void)state;
    uint8_t pkt[512], out[1024];
    size_t n = dns_wire_build_query(pkt, sizeof pkt, 0xbeef, "ALICE.Vpn.Lab", DNS_TYPE_A, 0);
    dns_query_t q;
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), 0);
    dns_writer_t w;
    assert_int_equal(dns_writer_begin(&w, out, 512, &q, DNS_RCODE_NOERROR, true), 0);
    uint8_t apex[DNS_NAME_MAX], ns[DNS_NAME_MAX], rname[DNS_NAME_MAX];
    int al = dns_wire_name_from_text("vpn.lab", apex);
    int nl = dns_wire_name_from_text("ns.vpn.lab", ns);
    int rl = dns_wire_name_from_text("hostmaster.vpn.lab", rname);
    assert_int_equal(dns_writer_a(&w, DNS_SEC_ANSWER, q.qlower, q.qname_len, 30, 0x7f4d0002), 0);
    dns_soa_t soa = {1, 2, 3, 4, 5};
    assert_int_equal(dns_writer_soa(&w, DNS_SEC_AUTHORITY, apex, (size_t)al, 30, ns, (size_t)nl,
                                    rname, (size_t)rl, &soa),
                     0);
    assert_int_equal(dns_writer_a(&w, DNS_SEC_ADDITIONAL, ns, (size_t)nl, 30, 0x7f000001), 0);
    size_t len = dns_writer_finish(&w);
    s_check_response(out, len, 0, 1, 1, 1);
    /* The answer's owner is a pointer to the question, so it echoes its
     * case; the SOA owner points into the question too. */
    size_t a = 12 + q.qname_len + 4u;
    assert_int_equal(out[a], 0xc0);
    assert_int_equal(out[a + 1], 12);
    size_t pos = a;
    dns_rr_t rr;
    dns_wire_read_rr(out, len, &pos, &rr);
    assert_memory_equal(rr.name, "\x05" "ALICE\x03Vpn\x03Lab", 15);
    assert_memory_equal(out + rr.rdata, "\x7f\x4d\x00\x02", 4);
    assert_int_equal(out[pos], 0xc0);
    assert_int_equal(out[pos + 1], 12 + 6);
    /* 12 header + 19 question + 16 A + SOA (2+10 + "ns"+ptr 5 +
     * "hostmaster"+ptr 13 + 20) + additional A ("ns" is a pointer: 16). */
    assert_int_equal(len, 12 + 19 + 16 + 50 + 16);
    assert_int_equal(out[0], 0xbe);
    assert_int_equal(out[1], 0xef);
    assert_int_equal(out[2], 0x80 | 0x04 | 0x01);   /* QR AA RD */
}

static void test_writer_truncates(void **state)
{
    (void)state;
    uint8_t pkt[512], out[512];
    size_t n = dns_wire_build_query(pkt, sizeof pkt, 1, "alice.vpn.lab", DNS_TYPE_A, 1232);
    dns_query_t q;
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), 0);
    dns_writer_t w;
    /* Room for the header, question and OPT, not for an A record. */
    size_t small = 12 + q.qname_len + 4u + 11 + 10;
    assert_int_equal(dns_writer_begin(&w, out, small, &q, 0, true), 0);
    assert_int_equal(dns_writer_a(&w, DNS_SEC_ANSWER, q.qname, q.qname_len, 30, 1), -1);
    assert_int_equal(dns_writer_a(&w, DNS_SEC_ANSWER, q.qname, q.qname_len, 30, 2), -1);
    size_t len = dns_writer_finish(&w);
    assert_true(len <= small);
    assert_true(out[2] & 0x02);   /* TC */
    s_check_response(out, len, 0, 0, 0, 1);
    /* Too small even for the question: begin refuses. */
    assert_int_equal(dns_writer_begin(&w, out, 20, &q, 0, true), -1);

    /* BADVERS travels in the OPT record's extended rcode. */
    pkt[n - 5] = 1;
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), DNS_RCODE_BADVERS);
    assert_int_equal(dns_writer_begin(&w, out, 512, &q, DNS_RCODE_BADVERS, false), 0);
    len = dns_writer_finish(&w);
    s_check_response(out, len, 0, 0, 0, 1);
    assert_int_equal(out[len - 11 + 5], 1);   /* extended rcode 16 >> 4 */

    /* Relayed responses too large for the client are cut to the question. */
    uint8_t big[1500];
    memcpy(big, out, len);
    assert_int_equal(dns_wire_truncate(big, 1500, 512), 12 + q.qname_len + 4u);
    assert_true(big[2] & 0x02);
    assert_int_equal(big[11], 0);
}

/* The OPT we added for the upstream leaves the answer; every other record
 * stays, in order, and so does a response without OPT. */
static void test_strip_opt(void **state)
{
    uint8_t pkt[512], out[512];
    size_t n = dns_wire_build_query(pkt, sizeof pkt, 9, "www.example.org", DNS_TYPE_A, 4096);
    dns_query_t q;
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), 0);
    dns_writer_t w;
    assert_int_equal(dns_writer_begin(&w, out, sizeof out, &q, 0, false), 0);
    assert_int_equal(dns_writer_a(&w, DNS_SEC_ANSWER, q.qname, q.qname_len, 30, 0x0a000001), 0);
    assert_int_equal(dns_writer_a(&w, DNS_SEC_ADDITIONAL, q.qname, q.qname_len, 30, 0x0a000002), 0);
    size_t len = dns_writer_finish(&w);
    s_check_response(out, len, 0, 1, 0, 2);
    size_t m = dns_wire_strip_opt(out, len);
    assert_int_equal(m, len - 11);
    s_check_response(out, m, 0, 1, 0, 1);
    assert_memory_equal(out + m - 4, "\x0a\x00\x00\x02", 4);
    assert_int_equal(dns_wire_strip_opt(out, m), m); /* nothing left to strip */
    /* Records that run past the end: refused. */
    assert_int_equal(dns_wire_strip_opt(out, m - 3), 0);
    assert_int_equal(dns_wire_strip_opt(out, 5), 0);
    /* BADVERS (16) lives in the OPT: without it the client would read 0. */
    pkt[n - 5] = 1;
    assert_int_equal(dns_wire_parse_query(pkt, n, &q), DNS_RCODE_BADVERS);
    assert_int_equal(dns_writer_begin(&w, out, sizeof out, &q, DNS_RCODE_BADVERS, false), 0);
    len = dns_writer_finish(&w);
    assert_int_equal(dns_wire_strip_opt(out, len), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),       cmocka_unit_test(test_parse_truncated),
        cmocka_unit_test(test_parse_bad_names),  cmocka_unit_test(test_parse_counts_and_flags),
        cmocka_unit_test(test_parse_edns),       cmocka_unit_test(test_writer),
        cmocka_unit_test(test_writer_truncates), cmocka_unit_test(test_strip_opt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
