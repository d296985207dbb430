/* Tests for rb_cidr: strict address and CIDR parsing, reverse names, and
 * pools with exclusions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "rb_cidr.h"

#define IP(a, b, c, d) ((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (d))

static void test_ip_parse(void **state)
{
    (void)state;
    uint32_t ip;
    assert_int_equal(rb_ip_parse("127.77.0.2", &ip), 0);
    assert_int_equal(ip, IP(127, 77, 0, 2));
    assert_int_equal(rb_ip_parse("0.0.0.0", &ip), 0);
    assert_int_equal(ip, 0);
    assert_int_equal(rb_ip_parse("255.255.255.255", &ip), 0);
    assert_int_equal(ip, UINT32_MAX);

    const char *bad[] = {"", "1.2.3", "1.2.3.4.5", "1.2.3.256", "010.0.0.1", "1.2.3.04",
                         "00.1.2.3", " 1.2.3.4", "1.2.3.4 ", "1.2 .3.4", "1..3.4", "1.2.3.",
                         ".1.2.3", "0x1.2.3.4", "1.2.3.4/32", "-1.2.3.4", "1.2.3.1000",
                         "1.2.3.4\n", "16909060"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(rb_ip_parse(bad[i], &ip), -1);
    assert_int_equal(rb_ip_parse(NULL, &ip), -1);
}

static void test_ip_format(void **state)
{
    (void)state;
    char b[16];
    assert_string_equal(rb_ip_format(IP(255, 255, 255, 255), b), "255.255.255.255");
    assert_string_equal(rb_ip_format(IP(10, 0, 20, 3), b), "10.0.20.3");
}

static void test_cidr_parse(void **state)
{
    (void)state;
    rb_cidr_t c;
    assert_int_equal(rb_cidr_parse("127.77.0.0/16", &c), 0);
    assert_int_equal(c.net, IP(127, 77, 0, 0));
    assert_int_equal(c.prefix, 16);
    assert_int_equal(rb_cidr_parse("10.0.0.5", &c), 0);
    assert_int_equal(c.net, IP(10, 0, 0, 5));
    assert_int_equal(c.prefix, 32);
    assert_int_equal(rb_cidr_parse("0.0.0.0/0", &c), 0);
    assert_int_equal(c.prefix, 0);
    assert_int_equal(rb_cidr_parse("10.0.0.0/8", &c), 0);

    const char *bad[] = {"10.0.0.1/8",  "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/08",
                         "10.0.0.0/-1", "10.0.0.0 /8", "10.0.0.0/ 8", "10.0.0.0/8 ",
                         "10.0.0/8",    "10.0.0.0/8/8", "/8", "10.0.0.0/100", "10.0.0.128/24"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(rb_cidr_parse(bad[i], &c), -1);
}

static void test_contains(void **state)
{
    (void)state;
    rb_cidr_t c;
    assert_int_equal(rb_cidr_parse("192.168.4.0/22", &c), 0);
    assert_true(rb_cidr_contains(&c, IP(192, 168, 4, 0)));
    assert_true(rb_cidr_contains(&c, IP(192, 168, 7, 255)));
    assert_false(rb_cidr_contains(&c, IP(192, 168, 8, 0)));
    assert_false(rb_cidr_contains(&c, IP(192, 168, 3, 255)));
    assert_int_equal(rb_cidr_parse("0.0.0.0/0", &c), 0);
    assert_true(rb_cidr_contains(&c, IP(8, 8, 8, 8)));
    assert_int_equal(rb_cidr_parse("1.2.3.4/32", &c), 0);
    assert_true(rb_cidr_contains(&c, IP(1, 2, 3, 4)));
    assert_false(rb_cidr_contains(&c, IP(1, 2, 3, 5)));
}

static void s_zone_is(const char *cidr, const char *want)
{
    rb_cidr_t c;
    char out[32];
    assert_int_equal(rb_cidr_parse(cidr, &c), 0);
    rb_cidr_reverse_zone(&c, out);
    assert_string_equal(out, want);
}

static void test_reverse_names(void **state)
{
    (void)state;
    char out[32];
    rb_ip_ptr_name(IP(1, 2, 3, 4), out);
    assert_string_equal(out, "4.3.2.1.in-addr.arpa");
    rb_ip_ptr_name(IP(255, 255, 255, 255), out);
    assert_string_equal(out, "255.255.255.255.in-addr.arpa");

    s_zone_is("10.0.0.0/8", "10.in-addr.arpa");
    s_zone_is("127.77.0.0/16", "77.127.in-addr.arpa");
    s_zone_is("192.168.5.0/24", "5.168.192.in-addr.arpa");
    s_zone_is("172.16.16.0/20", "16.172.in-addr.arpa");
    s_zone_is("10.1.2.3/32", "3.2.1.10.in-addr.arpa");
    s_zone_is("10.1.2.0/25", "2.1.10.in-addr.arpa");
    s_zone_is("0.0.0.0/0", "in-addr.arpa");
}

static void test_pool_simple(void **state)
{
    (void)state;
    char err[128] = "";
    rb_pool_t *p = rb_pool_new("127.77.0.0/29", NULL, err, sizeof err);
    assert_non_null(p);
    /* .0 and .7 are network and broadcast. */
    assert_int_equal(rb_pool_size(p), 6);
    assert_false(rb_pool_contains(p, IP(127, 77, 0, 0)));
    assert_true(rb_pool_contains(p, IP(127, 77, 0, 1)));
    assert_true(rb_pool_contains(p, IP(127, 77, 0, 6)));
    assert_false(rb_pool_contains(p, IP(127, 77, 0, 7)));
    uint32_t ip;
    for (uint64_t n = 0; n < 6; n++) {
        assert_int_equal(rb_pool_nth(p, n, &ip), 0);
        assert_int_equal(ip, IP(127, 77, 0, 1) + n);
    }
    assert_int_equal(rb_pool_nth(p, 6, &ip), -1);
    assert_int_equal(rb_pool_blocks(p), 1);
    assert_int_equal(rb_pool_block(p, 0)->net, IP(127, 77, 0, 0));
    assert_int_equal(rb_pool_block(p, 0)->prefix, 29);
    assert_null(rb_pool_block(p, 1));
    rb_pool_destroy(&p);
    assert_null(p);
    rb_pool_destroy(&p);
}

static void test_pool_exclusions_and_blocks(void **state)
{
    (void)state;
    char err[128] = "";
    /* Given out of order; sorted in the pool. Exclusions overlap each
     * other and cover addresses outside the pool, which is harmless. */
    rb_pool_t *p = rb_pool_new("10.2.0.0/30 , 10.1.0.0/29,10.3.0.8/31,10.4.0.1",
                               " 10.1.0.2,10.1.0.4/31 ,10.1.0.5, 10.9.0.0/16", err, sizeof err);
    assert_non_null(p);
    /* 10.1.0.0/29: .1 .3 .6 (without .2 .4 .5); 10.2.0.0/30: .1 .2;
     * 10.3.0.8/31: both; 10.4.0.1/32: itself. */
    const uint32_t want[] = {IP(10, 1, 0, 1), IP(10, 1, 0, 3), IP(10, 1, 0, 6),
                             IP(10, 2, 0, 1), IP(10, 2, 0, 2), IP(10, 3, 0, 8),
                             IP(10, 3, 0, 9), IP(10, 4, 0, 1)};
    assert_int_equal(rb_pool_size(p), sizeof want / sizeof want[0]);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        uint32_t ip = 0;
        assert_int_equal(rb_pool_nth(p, i, &ip), 0);
        assert_int_equal(ip, want[i]);
        assert_true(rb_pool_contains(p, want[i]));
    }
    assert_false(rb_pool_contains(p, IP(10, 1, 0, 2)));
    assert_false(rb_pool_contains(p, IP(10, 1, 0, 5)));
    assert_false(rb_pool_contains(p, IP(10, 2, 0, 3)));
    assert_false(rb_pool_contains(p, IP(10, 5, 0, 0)));
    assert_int_equal(rb_pool_blocks(p), 4);
    assert_int_equal(rb_pool_block(p, 0)->net, IP(10, 1, 0, 0));
    assert_int_equal(rb_pool_block(p, 3)->net, IP(10, 4, 0, 1));
    rb_pool_destroy(&p);
}

static void test_pool_large(void **state)
{
    (void)state;
    char err[128] = "";
    /* A /8 with a /16 cut out of the middle: nth must not walk. */
    rb_pool_t *p = rb_pool_new("10.0.0.0/8", "10.128.0.0/16", err, sizeof err);
    assert_non_null(p);
    assert_int_equal(rb_pool_size(p), (1u << 24) - 2 - (1u << 16));
    uint32_t ip;
    assert_int_equal(rb_pool_nth(p, 0, &ip), 0);
    assert_int_equal(ip, IP(10, 0, 0, 1));
    /* 10.127.255.255 is index 0x7fffff - 1; the next is 10.129.0.0. */
    assert_int_equal(rb_pool_nth(p, 0x7ffffe, &ip), 0);
    assert_int_equal(ip, IP(10, 127, 255, 255));
    assert_int_equal(rb_pool_nth(p, 0x7fffff, &ip), 0);
    assert_int_equal(ip, IP(10, 129, 0, 0));
    assert_int_equal(rb_pool_nth(p, rb_pool_size(p) - 1, &ip), 0);
    assert_int_equal(ip, IP(10, 255, 255, 254));
    assert_int_equal(rb_pool_nth(p, rb_pool_size(p), &ip), -1);
    rb_pool_destroy(&p);

    p = rb_pool_new("0.0.0.0/0", "", err, sizeof err);
    assert_non_null(p);
    assert_int_equal(rb_pool_size(p), (uint64_t)UINT32_MAX - 1);
    assert_int_equal(rb_pool_nth(p, rb_pool_size(p) - 1, &ip), 0);
    assert_int_equal(ip, UINT32_MAX - 1);
    rb_pool_destroy(&p);
}

static void test_pool_small_blocks(void **state)
{
    (void)state;
    char err[128] = "";
    /* RFC 3021: both addresses of a /31 are hosts; a /32 is one. */
    rb_pool_t *p = rb_pool_new("10.0.0.0/31", NULL, err, sizeof err);
    assert_non_null(p);
    assert_int_equal(rb_pool_size(p), 2);
    assert_true(rb_pool_contains(p, IP(10, 0, 0, 0)));
    assert_true(rb_pool_contains(p, IP(10, 0, 0, 1)));
    rb_pool_destroy(&p);
    p = rb_pool_new("10.0.0.7/32", NULL, err, sizeof err);
    assert_non_null(p);
    assert_int_equal(rb_pool_size(p), 1);
    uint32_t ip;
    assert_int_equal(rb_pool_nth(p, 0, &ip), 0);
    assert_int_equal(ip, IP(10, 0, 0, 7));
    rb_pool_destroy(&p);
    /* A /30 has two hosts. */
    p = rb_pool_new("10.0.0.4/30", NULL, err, sizeof err);
    assert_non_null(p);
    assert_int_equal(rb_pool_size(p), 2);
    rb_pool_destroy(&p);
}

static void s_pool_fails(const char *cidrs, const char *exclude, const char *needle)
{
    char err[128] = "";
    rb_pool_t *p = rb_pool_new(cidrs, exclude, err, sizeof err);
    assert_null(p);
    assert_true(err[0] != '\0');
    if (needle && !strstr(err, needle)) fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
}

static void test_pool_errors(void **state)
{
    (void)state;
    s_pool_fails("10.0.0.0/24,10.0.0.128/25", NULL, "overlaps");
    s_pool_fails("10.0.0.0/25,10.0.0.0/24", NULL, "overlaps");
    s_pool_fails("10.0.0.5,10.0.0.5", NULL, "overlaps");
    s_pool_fails("10.0.0.0/24,10.0.1.300", NULL, "10.0.1.300");
    s_pool_fails("10.0.0.1/24", NULL, "10.0.0.1/24");
    s_pool_fails("10.0.0.0/24", "10.0.0.x", "10.0.0.x");
    s_pool_fails("10.0.0.0/24,", NULL, NULL);
    s_pool_fails("10.0.0.0/24,,10.0.1.0/24", NULL, NULL);
    s_pool_fails("", NULL, NULL);
    s_pool_fails("   ", NULL, NULL);
    s_pool_fails(NULL, NULL, NULL);
    /* Nothing left to hand out. */
    s_pool_fails("10.0.0.0/30", "10.0.0.1,10.0.0.2", "no usable");
    s_pool_fails("10.0.0.0/24", "10.0.0.0/24", "no usable");
    s_pool_fails("10.0.0.0/32", "0.0.0.0/0", "no usable");
    /* A NULL err buffer is tolerated. */
    assert_null(rb_pool_new("bad", NULL, NULL, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ip_parse),
        cmocka_unit_test(test_ip_format),
        cmocka_unit_test(test_cidr_parse),
        cmocka_unit_test(test_contains),
        cmocka_unit_test(test_reverse_names),
        cmocka_unit_test(test_pool_simple),
        cmocka_unit_test(test_pool_exclusions_and_blocks),
        cmocka_unit_test(test_pool_large),
        cmocka_unit_test(test_pool_small_blocks),
        cmocka_unit_test(test_pool_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
