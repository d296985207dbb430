/* Tests for rb_passwd: scrypt hashes, their text form, and the checks on
 * malformed entries. Low costs keep the suite fast; one round trip runs at
 * the default cost. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "rb_loop.h"
#include "rb_passwd.h"

static void test_default_cost_roundtrip(void **state)
{
    (void)state;
    char e[RB_PASSWD_MAX];
    assert_int_equal(rb_passwd_hash("correct horse", RB_PASSWD_DEFAULT_LN, 8, 1, e), 0);
    assert_true(strncmp(e, "$scrypt$ln=15,r=8,p=1$", 22) == 0);
    assert_int_equal(rb_passwd_verify("correct horse", e), 1);
    assert_int_equal(rb_passwd_verify("correct horsf", e), 0);
}

/* An entry made by another scrypt implementation (Python's hashlib.scrypt,
 * salt bytes 0..15): proves the parameters reach the KDF as the format
 * says, not merely that this module agrees with itself. */
static void test_known_vector(void **state)
{
    (void)state;
    const char *e = "$scrypt$ln=10,r=8,p=2$AAECAwQFBgcICQoLDA0ODw==$"
                    "DdnK8AkhFHXiNxZD7ne9GFFT37CBalD0Apvnq4WVOLU=";
    assert_int_equal(rb_passwd_verify("hunter2", e), 1);
    assert_int_equal(rb_passwd_verify("hunter3", e), 0);
}

static void test_format_and_salt(void **state)
{
    (void)state;
    char a[RB_PASSWD_MAX], b[RB_PASSWD_MAX];
    assert_int_equal(rb_passwd_hash("pw", 4, 8, 1, a), 0);
    assert_int_equal(rb_passwd_hash("pw", 4, 8, 1, b), 0);
    /* A fresh salt each time: the same password never hashes the same. */
    assert_string_not_equal(a, b);
    /* $scrypt$ln=4,r=8,p=1$ + 24 chars of salt + $ + 44 chars of key */
    assert_int_equal(strlen(a), strlen("$scrypt$ln=4,r=8,p=1$") + 24 + 1 + 44);
    assert_null(strchr(a, '\n'));
    const char *salt = strchr(a + strlen("$scrypt$"), '$') + 1;
    assert_true(strncmp(salt + 22, "==$", 3) == 0);
    assert_int_equal(a[strlen(a) - 1], '=');
}

static void test_verify_low_costs(void **state)
{
    (void)state;
    char e[RB_PASSWD_MAX];
    const unsigned costs[][3] = {{1, 1, 1}, {1, 8, 1}, {3, 2, 3}, {5, 32, 1}, {2, 1, 16}};
    for (size_t i = 0; i < sizeof costs / sizeof costs[0]; i++) {
        assert_int_equal(rb_passwd_hash("s3cret", costs[i][0], costs[i][1], costs[i][2], e), 0);
        assert_int_equal(rb_passwd_verify("s3cret", e), 1);
        assert_int_equal(rb_passwd_verify("s3cre", e), 0);
        assert_int_equal(rb_passwd_verify("", e), 0);
    }
    /* The empty password and long ones work too. */
    assert_int_equal(rb_passwd_hash("", 2, 8, 1, e), 0);
    assert_int_equal(rb_passwd_verify("", e), 1);
    assert_int_equal(rb_passwd_verify("x", e), 0);
    char longpw[1000];
    memset(longpw, 'q', sizeof longpw - 1);
    longpw[sizeof longpw - 1] = '\0';
    assert_int_equal(rb_passwd_hash(longpw, 2, 8, 1, e), 0);
    assert_int_equal(rb_passwd_verify(longpw, e), 1);
}

static void test_hash_bad_cost(void **state)
{
    (void)state;
    char e[RB_PASSWD_MAX];
    assert_int_equal(rb_passwd_hash("pw", 0, 8, 1, e), -1);
    assert_int_equal(rb_passwd_hash("pw", 21, 8, 1, e), -1);
    assert_int_equal(rb_passwd_hash("pw", 4, 0, 1, e), -1);
    assert_int_equal(rb_passwd_hash("pw", 4, 33, 1, e), -1);
    assert_int_equal(rb_passwd_hash("pw", 4, 8, 0, e), -1);
    assert_int_equal(rb_passwd_hash("pw", 4, 8, 17, e), -1);
    /* RFC 7914: N must be below 2^(16 r). */
    assert_int_equal(rb_passwd_hash("pw", 16, 1, 1, e), -1);
    assert_int_equal(rb_passwd_hash(NULL, 4, 8, 1, e), -1);
}

/* Each parameter in range is not enough: memory (128 r N) and work
 * (r p N) are bounded together. */
static void test_cost_products(void **state)
{
    (void)state;
    assert_true(rb_passwd_cost_ok(15, 8, 1));  /* the default */
    assert_true(rb_passwd_cost_ok(20, 8, 1));  /* 1 GiB, the most memory */
    assert_true(rb_passwd_cost_ok(20, 8, 2));  /* work 2^24 */
    assert_true(rb_passwd_cost_ok(14, 32, 16));
    assert_false(rb_passwd_cost_ok(20, 16, 1)); /* 2 GiB */
    assert_false(rb_passwd_cost_ok(20, 32, 16)); /* 4 GiB, 2^29 work */
    assert_false(rb_passwd_cost_ok(20, 8, 4));   /* work 2^25 */
    assert_false(rb_passwd_cost_ok(16, 32, 16)); /* 256 MiB but work 2^25 */
    assert_false(rb_passwd_cost_ok(21, 8, 1));
    /* Refused before any work: a verify of such an entry returns at once. */
    uint64_t t0 = rb_now_ms();
    assert_int_equal(rb_passwd_verify("pw", "$scrypt$ln=20,r=32,p=16$c2FsdHNhbHRzYWx0c2FsdA==$"
                                            "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U="),
                     -1);
    assert_true(rb_now_ms() - t0 < 100);
}

/* Rewrites a valid entry's cost text and checks the result is refused. */
static void s_bad_cost(const char *valid, const char *cost)
{
    char e[RB_PASSWD_MAX + 32];
    const char *rest = strchr(valid + strlen("$scrypt$"), '$');
    snprintf(e, sizeof e, "$scrypt$%s%s", cost, rest);
    assert_int_equal(rb_passwd_verify("pw", e), -1);
}

static void test_verify_malformed(void **state)
{
    (void)state;
    char e[RB_PASSWD_MAX];
    assert_int_equal(rb_passwd_hash("pw", 2, 8, 1, e), 0);
    assert_int_equal(rb_passwd_verify("pw", e), 1);

    /* Costs out of range or badly written. */
    const char *costs[] = {"ln=0,r=8,p=1", "ln=21,r=8,p=1", "ln=2,r=0,p=1", "ln=2,r=33,p=1",
                           "ln=2,r=8,p=0", "ln=2,r=8,p=17", "ln=02,r=8,p=1", "ln=,r=8,p=1",
                           "ln=2,r=8", "r=8,ln=2,p=1", "ln=2, r=8,p=1", "ln=-2,r=8,p=1",
                           "ln=4294967298,r=8,p=1", "ln=2,r=8,p=1,x=1", "ln=16,r=1,p=1"};
    for (size_t i = 0; i < sizeof costs / sizeof costs[0]; i++) s_bad_cost(e, costs[i]);

    const char *salt = strchr(e + strlen("$scrypt$"), '$') + 1;
    const char *key = strchr(salt, '$') + 1;
    char bad[RB_PASSWD_MAX + 32];

    /* Wrong scheme, missing parts, extra parts. */
    assert_int_equal(rb_passwd_verify("pw", ""), -1);
    assert_int_equal(rb_passwd_verify("pw", "pw"), -1);
    assert_int_equal(rb_passwd_verify("pw", "$2b$10$abcdefghijklmnopqrstuv"), -1);
    assert_int_equal(rb_passwd_verify("pw", NULL), -1);
    snprintf(bad, sizeof bad, "$scrypt$ln=2,r=8,p=1$%.*s", (int)(key - salt - 1), salt);
    assert_int_equal(rb_passwd_verify("pw", bad), -1);
    snprintf(bad, sizeof bad, "%s$", e);
    assert_int_equal(rb_passwd_verify("pw", bad), -1);
    snprintf(bad, sizeof bad, "%s\n", e);
    assert_int_equal(rb_passwd_verify("pw", bad), -1);

    /* Key of the wrong length: one base64 group short, or one more. */
    snprintf(bad, sizeof bad, "%.*s", (int)(strlen(e) - 4), e);
    assert_int_equal(rb_passwd_verify("pw", bad), -1);
    snprintf(bad, sizeof bad, "%sAAAA", e);
    assert_int_equal(rb_passwd_verify("pw", bad), -1);
    /* Padding removed (length no longer a multiple of 4). */
    snprintf(bad, sizeof bad, "%.*s", (int)(strlen(e) - 1), e);
    assert_int_equal(rb_passwd_verify("pw", bad), -1);
    /* A character outside the alphabet in the key. */
    strcpy(bad, e);
    bad[key - e + 3] = '*';
    assert_int_equal(rb_passwd_verify("pw", bad), -1);
    /* '=' in the middle of the salt. */
    strcpy(bad, e);
    bad[salt - e + 4] = '=';
    assert_int_equal(rb_passwd_verify("pw", bad), -1);
    /* Salt of the wrong length (12 bytes). */
    snprintf(bad, sizeof bad, "$scrypt$ln=2,r=8,p=1$%.16s$%s", salt, key);
    assert_int_equal(rb_passwd_verify("pw", bad), -1);

    /* One key bit flipped: well-formed, but the password no longer
     * matches. */
    strcpy(bad, e);
    size_t k = (size_t)(key - e);
    bad[k] = bad[k] == 'A' ? 'B' : 'A';
    assert_int_equal(rb_passwd_verify("pw", bad), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_cost_roundtrip),
        cmocka_unit_test(test_known_vector),
        cmocka_unit_test(test_format_and_salt),
        cmocka_unit_test(test_verify_low_costs),
        cmocka_unit_test(test_hash_bad_cost),
        cmocka_unit_test(test_cost_products),
        cmocka_unit_test(test_verify_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
