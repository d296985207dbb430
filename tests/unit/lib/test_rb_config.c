/* rb_config: defaults, file, environment, and errors naming file/line/key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rb_config.h"

typedef struct {
    char *log_level;
    char *status_listen;
    char *suffix;
    long ttl;
    bool tcp;
} cfg_t;

static const rb_option_t s_opts[] = {
    RB_OPT_COMMON(cfg_t),
    {"suffix", RB_OPT_STRING, NULL, offsetof(cfg_t, suffix), 0, 0, "zone"},
    {"ttl", RB_OPT_INT, "30", offsetof(cfg_t, ttl), 0, 86400, "seconds"},
    {"tcp", RB_OPT_BOOL, "yes", offsetof(cfg_t, tcp), 0, 0, "serve TCP"},
    RB_OPT_END,
};

static char s_path[64];

static void s_write_n(const char *text, size_t len)
{
    strcpy(s_path, "/tmp/rb-test-config-XXXXXX");
    int fd = mkstemp(s_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
}

static void s_write(const char *text)
{
    s_write_n(text, strlen(text));
}

static void test_file_env_defaults(void **state)
{
    s_write("# comment\n\nsuffix = \"vpn.lab\"\n  ttl=5  \n");
    setenv("RB_TESTSVC_TCP", "no", 1);
    cfg_t c = {0};
    char err[256] = "";
    assert_int_equal(rb_config_load(s_opts, &c, "testsvc", s_path, err, sizeof err), 0);
    assert_string_equal(c.suffix, "vpn.lab");
    assert_int_equal(c.ttl, 5);
    assert_false(c.tcp);
    assert_string_equal(c.log_level, "info");
    unsetenv("RB_TESTSVC_TCP");
    setenv("RB_TESTSVC_TTL", "7", 1);   /* environment beats the file */
    assert_int_equal(rb_config_load(s_opts, &c, "testsvc", s_path, err, sizeof err), 0);
    assert_int_equal(c.ttl, 7);
    unsetenv("RB_TESTSVC_TTL");
    rb_config_free(s_opts, &c);
    unlink(s_path);
}

static void s_expect_error(const char *text, const char *needle)
{
    s_write(text);
    cfg_t c = {0};
    char err[256] = "";
    assert_int_equal(rb_config_load(s_opts, &c, "testsvc", s_path, err, sizeof err), -1);
    if (!strstr(err, needle)) fail_msg("error '%s' lacks '%s'", err, needle);
    rb_config_free(s_opts, &c);
    unlink(s_path);
}

static void test_errors_name_file_line_key(void **state)
{
    char want[128];
    s_expect_error("suffix = a\nbogus = 1\n", ":2: key 'bogus': unknown key");
    s_expect_error("suffix = a\n\nttl = 99999999\n", ":3: key 'ttl': 99999999 is out of range");
    s_expect_error("suffix = a\nttl = 5x\n", "key 'ttl': '5x' is not an integer");
    s_expect_error("suffix = a\ntcp = maybe\n", "key 'tcp': 'maybe' is not yes/no");
    s_expect_error("suffix\n", ":1: expected 'key = value'");
    s_expect_error("ttl = 5\n", "key 'suffix': required but not set");
    snprintf(want, sizeof want, "%s", "line longer than");
    char *huge = malloc(10000);
    memset(huge, 'a', 9998);
    huge[9998] = '\n';
    huge[9999] = '\0';
    s_expect_error(huge, want);
    free(huge);
}

/* A NUL inside a line is an error, not the end of the line: what follows
 * it would otherwise be ignored without a word. */
static void test_nul_byte(void **state)
{
    static const char text[] = "ttl = 5\nsuffix = a\0b\n";
    s_write_n(text, sizeof text - 1);
    cfg_t c = {0};
    char err[256] = "";
    assert_int_equal(rb_config_load(s_opts, &c, "testsvc", s_path, err, sizeof err), -1);
    if (!strstr(err, ":2: NUL byte in line")) fail_msg("error '%s'", err);
    rb_config_free(s_opts, &c);
    unlink(s_path);
}

/* 4096 bytes before the newline are the most a line may have. */
static void test_longest_line(void **state)
{
    char text[4200];
    int n = snprintf(text, sizeof text, "suffix = ");
    memset(text + n, 'a', 4096 - (size_t)n);
    strcpy(text + 4096, "\n");
    s_write(text);
    cfg_t c = {0};
    char err[256] = "";
    if (rb_config_load(s_opts, &c, "testsvc", s_path, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(strlen(c.suffix), 4096 - 9);
    rb_config_free(s_opts, &c);
    unlink(s_path);
    strcpy(text + 4096, "a\n");
    s_expect_error(text, ":1: line longer than 4096 bytes");
}

static void test_set_and_missing_file(void **state)
{
    cfg_t c = {0};
    char err[256];
    assert_int_equal(rb_config_load(s_opts, &c, "testsvc", "/nonexistent/x.conf", err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/x.conf: cannot open"));
    assert_int_equal(rb_config_set(s_opts, &c, "ttl", "9", err, sizeof err), 0);
    assert_int_equal(c.ttl, 9);
    assert_int_equal(rb_config_set(s_opts, &c, "nope", "9", err, sizeof err), -1);
    rb_config_free(s_opts, &c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_env_defaults),
        cmocka_unit_test(test_errors_name_file_line_key),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_longest_line),
        cmocka_unit_test(test_set_and_missing_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
