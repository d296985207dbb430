/* edge_users: loading the users file (comments, blank lines, CR LF), lookups,
 * and the errors that name file and line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <unistd.h>

#include "edge_users.h"
#include "rb_passwd.h"

static char s_file[64];

static void s_write_n(const char *text, size_t len)
{
    snprintf(s_file, sizeof s_file, "/tmp/rb-users-XXXXXX");
    int fd = mkstemp(s_file);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
}

static void s_write(const char *text)
{
    s_write_n(text, strlen(text));
}

#define H1 "$scrypt$ln=1,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA==$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U="

static void test_load_and_lookup(void **state)
{
    char alice[RB_PASSWD_MAX];
    assert_int_equal(rb_passwd_hash("wonderland", 1, 8, 1, alice), 0);
    char text[1024];
    snprintf(text, sizeof text,
             "# users of the lab\n"
             "\n"
             "alice:%s\r\n"
             "   # indented comment\n"
             "CORP\\bob:" H1 "   \n"
             "carol@corp:" H1 "\n",
             alice);
    s_write(text);
    char err[256] = "";
    edge_users_t *u = edge_users_load(s_file, err, sizeof err);
    assert_non_null(u);
    assert_int_equal(edge_users_count(u), 3);
    const char *h = edge_users_lookup(u, "alice");
    assert_non_null(h);
    assert_string_equal(h, alice);   /* CR and spaces dropped */
    assert_int_equal(rb_passwd_verify("wonderland", h), 1);
    assert_non_null(edge_users_lookup(u, "CORP\\bob"));
    assert_non_null(edge_users_lookup(u, "carol@corp"));
    assert_null(edge_users_lookup(u, "Alice"));   /* names are exact */
    assert_null(edge_users_lookup(u, "mallory"));
    assert_null(edge_users_lookup(u, ""));
    edge_users_destroy(&u);
    assert_null(u);
    edge_users_destroy(NULL);
    unlink(s_file);
}

static void s_expect_error(const char *text, const char *want)
{
    s_write(text);
    char err[256] = "";
    edge_users_t *u = edge_users_load(s_file, err, sizeof err);
    assert_null(u);
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s:", s_file);
    assert_memory_equal(err, prefix, strlen(prefix));
    if (!strstr(err, want)) fail_msg("error '%s' lacks '%s'", err, want);
    unlink(s_file);
}

static void test_bad_lines_name_file_and_line(void **state)
{
    s_expect_error("# ok\nalice " H1 "\n", ":2: expected name:$scrypt$");
    s_expect_error("alice:" H1 "\n:" H1 "\n", ":2: empty user name");
    s_expect_error("alice:plaintext\n", ":1: hash is not");
    s_expect_error("alice:$scrypt$ln=40,r=8,p=1$c2FsdA==$a2V5\n", ":1: hash cost out of range");
    /* Each in range, but 4 GiB and minutes for every check. */
    s_expect_error("alice:$scrypt$ln=20,r=32,p=16$c2FsdA==$a2V5\n", ":1: hash cost out of range");
    s_expect_error("alice:$scrypt$ln=1,r=8,p=1$c2F*dA==$a2V5\n", ":1: hash salt or key");
    s_expect_error("alice:$scrypt$ln=1,r=8,p=1$c2FsdA==\n", ":1: hash salt or key");
    s_expect_error("al\tice:" H1 "\n", ":1: control character");
    s_expect_error("alice:" H1 "\nbob:" H1 "\n\nalice:" H1 "\n",
                   ":4: user 'alice' already defined on line 1");
}

/* The optional third field: groups for the broker. Old two-field lines
 * stay valid and have none. */
static void test_groups(void **state)
{
    s_write("alice:" H1 ":staff,vpn-admins\n"
            "bob:" H1 "\n"
            "carol:" H1 ":\n"
            "dave:" H1 ":ops.eu_1   \n");
    char err[256] = "";
    edge_users_t *u = edge_users_load(s_file, err, sizeof err);
    if (!u) fail_msg("%s", err);
    assert_int_equal(edge_users_count(u), 4);
    assert_string_equal(edge_users_lookup(u, "alice"), H1);   /* the hash stops at ':' */
    assert_string_equal(edge_users_groups(u, "alice"), "staff,vpn-admins");
    assert_string_equal(edge_users_groups(u, "bob"), "");
    assert_string_equal(edge_users_lookup(u, "bob"), H1);
    assert_string_equal(edge_users_groups(u, "carol"), "");
    assert_string_equal(edge_users_groups(u, "dave"), "ops.eu_1");
    assert_null(edge_users_groups(u, "mallory"));
    edge_users_destroy(&u);
    unlink(s_file);

    s_expect_error("alice:" H1 ":staff,,ops\n", ":1: empty group name");
    s_expect_error("alice:" H1 ":staff,\n", ":1: empty group name");
    s_expect_error("alice:" H1 ":sta ff\n", ":1: group names are");
    s_expect_error("alice:" H1 ":a:b\n", ":1: group names are");
    char many[512] = "alice:" H1 ":";
    for (int i = 0; i <= EDGE_USERS_MAX_GROUPS; i++) strcat(many, i ? ",g" : "g");
    strcat(many, "\n");
    s_expect_error(many, ":1: too many groups");
    char longg[256] = "alice:" H1 ":";
    memset(longg + strlen(longg), 'g', EDGE_USERS_GROUP_MAX + 1);
    strcat(longg, "\n");
    s_expect_error(longg, ":1: group name too long");
}

/* A NUL anywhere is an error naming its line; at the start of a line it
 * would otherwise make the line look blank and hide what follows. */
static void test_nul_bytes(void **state)
{
    static const char lead[] = "bob:" H1 "\n\0mallory:" H1 "\n";
    static const char inner[] = "bob:" H1 "\nmal\0lory:" H1 "\n";
    const char *texts[] = {lead, inner};
    const size_t lens[] = {sizeof lead - 1, sizeof inner - 1};
    for (int i = 0; i < 2; i++) {
        s_write_n(texts[i], lens[i]);
        char err[256] = "";
        edge_users_t *u = edge_users_load(s_file, err, sizeof err);
        assert_null(u);
        if (!strstr(err, ":2: NUL byte in line")) fail_msg("case %d: error '%s'", i, err);
        unlink(s_file);
    }
}

static void test_missing_file(void **state)
{
    char err[256] = "";
    assert_null(edge_users_load("/nonexistent/users", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/users: No such file"));
}

static void test_empty_file(void **state)
{
    s_write("# nobody yet\n");
    char err[256] = "";
    edge_users_t *u = edge_users_load(s_file, err, sizeof err);
    assert_non_null(u);
    assert_int_equal(edge_users_count(u), 0);
    assert_null(edge_users_lookup(u, "alice"));
    edge_users_destroy(&u);
    unlink(s_file);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_and_lookup), cmocka_unit_test(test_bad_lines_name_file_and_line),
        cmocka_unit_test(test_groups),          cmocka_unit_test(test_nul_bytes),
        cmocka_unit_test(test_missing_file),    cmocka_unit_test(test_empty_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
