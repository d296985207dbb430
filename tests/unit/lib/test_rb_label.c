/* Tests for rb_label: user name -> DNS label, and the collision label. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/evp.h>

#include "rb_label.h"

/* Every label must be a single LDH label: 1..63 bytes of [a-z0-9-], not
 * starting or ending with '-'. */
static void s_assert_ldh(const char *l)
{
    size_t n = strlen(l);
    assert_true(n >= 1 && n <= RB_LABEL_MAX);
    for (size_t i = 0; i < n; i++) {
        char c = l[i];
        assert_true((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-');
    }
    assert_true(l[0] != '-' && l[n - 1] != '-');
}

static void s_label_is(const char *user, const char *want)
{
    char out[RB_LABEL_MAX + 1];
    assert_int_equal(rb_label_from_user(user, out), 0);
    assert_string_equal(out, want);
    s_assert_ldh(out);
}

/* "user-" + the first 8 hex digits of SHA-256(s), computed here
 * independently. */
static void s_hash_label(const char *prefix, const char *s, char *out, size_t outlen)
{
    unsigned char md[32];
    unsigned int mdlen;
    EVP_Digest(s, strlen(s), md, &mdlen, EVP_sha256(), NULL);
    snprintf(out, outlen, "%s%02x%02x%02x%02x", prefix, md[0], md[1], md[2], md[3]);
}

static void test_domain_parts(void **state)
{
    (void)state;
    s_label_is("CORP\\alice", "alice");
    s_label_is("alice@corp", "alice");
    s_label_is("alice@corp.example.com", "alice");
    s_label_is("EU\\CORP\\Bob", "bob");
    s_label_is("CORP\\carol@corp.example", "carol");
    s_label_is("dave@x@y", "dave");
    s_label_is("alice", "alice");
}

static void test_mapping(void **state)
{
    (void)state;
    s_label_is("Alice.Smith", "alice-smith");
    s_label_is("a.b.c", "a-b-c");
    s_label_is("evil.com.", "evil-com");
    s_label_is("..x..", "x");
    s_label_is("--bob--", "bob");
    s_label_is("O'Brien", "o-brien");
    s_label_is("ann_lee 2", "ann-lee-2");
    s_label_is("UPPER-123", "upper-123");
    /* "José" in UTF-8: each byte outside ASCII becomes '-'. */
    s_label_is("Jos\xc3\xa9", "jos");
    s_label_is("J\xc3\xb6rg", "j--rg");
    /* Injection attempts stay one label. */
    s_label_is("x.evil.example.com", "x-evil-example-com");
    s_label_is("a\nb IN A 1.2.3.4", "a-b-in-a-1-2-3-4");
}

static void test_no_dot_ever(void **state)
{
    (void)state;
    /* Every single byte value, alone and between letters. */
    char out[RB_LABEL_MAX + 1];
    for (int b = 1; b < 256; b++) {
        char name[4] = {'a', (char)b, 'b', '\0'};
        assert_int_equal(rb_label_from_user(name, out), 0);
        s_assert_ldh(out);
        assert_null(strchr(out, '.'));
    }
}

static void test_long_names(void **state)
{
    (void)state;
    char name[201], out[RB_LABEL_MAX + 1];
    memset(name, 'a', 200);
    name[200] = '\0';
    assert_int_equal(rb_label_from_user(name, out), 0);
    assert_int_equal(strlen(out), RB_LABEL_MAX);
    s_assert_ldh(out);

    /* A cut that lands on a '-' must not leave it at the end. */
    memset(name, 'b', 200);
    name[62] = '.';
    assert_int_equal(rb_label_from_user(name, out), 0);
    assert_int_equal(strlen(out), 62);
    s_assert_ldh(out);

    /* Leading symbols do not use up the 63. */
    memset(name, '.', 100);
    memset(name + 100, 'c', 100);
    assert_int_equal(rb_label_from_user(name, out), 0);
    assert_int_equal(strlen(out), RB_LABEL_MAX);
    assert_int_equal(out[0], 'c');
}

static void test_empty_names(void **state)
{
    (void)state;
    const char *names[] = {"", "...", "@corp", "CORP\\", "CORP\\@x", "\xe4\xb8\xad\xe6\x96\x87",
                           "-", "!!!"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char want[RB_LABEL_MAX + 1];
        /* The hash is of the whole user name, so different names that
         * leave nothing get different labels. */
        s_hash_label("user-", names[i], want, sizeof want);
        s_label_is(names[i], want);
    }
    char a[RB_LABEL_MAX + 1], b[RB_LABEL_MAX + 1];
    assert_int_equal(rb_label_from_user("...", a), 0);
    assert_int_equal(rb_label_from_user("!!!", b), 0);
    assert_string_not_equal(a, b);
    assert_int_equal(rb_label_from_user(NULL, a), -1);
}

static void test_disambiguate(void **state)
{
    (void)state;
    char out[RB_LABEL_MAX + 1], want[RB_LABEL_MAX + 1];

    assert_int_equal(rb_label_disambiguate("alice", "CORP\\alice", out), 0);
    s_hash_label("alice-", "CORP\\alice", want, sizeof want);
    assert_string_equal(out, want);
    s_assert_ldh(out);
    /* A different user with the same base gets a different label. */
    char other[RB_LABEL_MAX + 1];
    assert_int_equal(rb_label_disambiguate("alice", "alice@corp", other), 0);
    assert_string_not_equal(out, other);

    /* A 63-byte base is cut to 54 so the result is exactly 63. */
    char base[RB_LABEL_MAX + 1];
    memset(base, 'x', RB_LABEL_MAX);
    base[RB_LABEL_MAX] = '\0';
    assert_int_equal(rb_label_disambiguate(base, "u", out), 0);
    assert_int_equal(strlen(out), RB_LABEL_MAX);
    assert_int_equal(out[53], 'x');
    assert_int_equal(out[54], '-');
    s_assert_ldh(out);

    /* The cut leaves a '-' at the end of the base: it is trimmed. */
    memset(base, 'y', RB_LABEL_MAX);
    base[52] = '-';
    base[53] = '-';
    assert_int_equal(rb_label_disambiguate(base, "u", out), 0);
    s_hash_label("", "u", want, sizeof want);
    assert_int_equal(strlen(out), 52 + 1 + 8);
    assert_true(strncmp(out, base, 52) == 0);
    assert_string_equal(out + 53, want);
    s_assert_ldh(out);

    assert_int_equal(rb_label_disambiguate(NULL, "u", out), -1);
    assert_int_equal(rb_label_disambiguate("a", NULL, out), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_domain_parts),
        cmocka_unit_test(test_mapping),
        cmocka_unit_test(test_no_dot_ever),
        cmocka_unit_test(test_long_names),
        cmocka_unit_test(test_empty_names),
        cmocka_unit_test(test_disambiguate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
