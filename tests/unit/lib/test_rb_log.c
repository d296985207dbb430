/* rb_log: lines below the level are dropped, audit records never are (an
 * operator who sets log_level = warn keeps the forwarder's audit trail),
 * and every line is one JSON object with its fields escaped. Around each
 * call stdout is a pipe, read back after it (cmocka reports on stdout). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "rb_log.h"

static int s_saved = -1, s_pipe[2];

static int s_setup(void **state)
{
    s_saved = dup(STDOUT_FILENO);
    return s_saved < 0 || pipe2(s_pipe, O_NONBLOCK) < 0 ? -1 : 0;
}

static int s_teardown(void **state)
{
    close(s_saved);
    close(s_pipe[0]);
    close(s_pipe[1]);
    return 0;
}

/* What stmt wrote to stdout ("" for nothing). */
static char s_out[4096];
#define WRITTEN(stmt)                                                                              \
    (fflush(stdout), dup2(s_pipe[1], STDOUT_FILENO), (stmt), dup2(s_saved, STDOUT_FILENO), s_read())

static const char *s_read(void)
{
    ssize_t n = read(s_pipe[0], s_out, sizeof s_out - 1);
    s_out[n > 0 ? n : 0] = '\0';
    return s_out;
}

static void test_audit_ignores_the_level(void **state)
{
    rb_log_init("forwarder", RB_LOG_WARN);
    assert_string_equal(WRITTEN(rb_info("stream_in", "quiet at warn")), "");
    const char *line =
        WRITTEN(rb_audit("\"verdict\":\"allowed\"", "inbound tcp %s port %u", "10.0.0.9:4000", 22));
    assert_int_equal(line[0], '{');
    assert_non_null(strstr(line, "\"level\":\"audit\",\"svc\":\"forwarder\",\"event\":\"audit\","
                                 "\"msg\":\"inbound tcp 10.0.0.9:4000 port 22\","
                                 "\"verdict\":\"allowed\"}\n"));
    assert_ptr_equal(strchr(line, '\n'), line + strlen(line) - 1); /* one line */

    rb_log_set_level(RB_LOG_ERROR);
    assert_non_null(strstr(WRITTEN(rb_audit(NULL, "at error too")), "\"msg\":\"at error too\"}"));
    assert_string_equal(WRITTEN(rb_warn("x", "dropped")), "");
}

static void test_levels_and_escaping(void **state)
{
    rb_log_init("edge", RB_LOG_INFO);
    assert_string_equal(WRITTEN(rb_debug("d", "dropped")), "");
    assert_non_null(strstr(WRITTEN(rb_info("logon_ok", "say \"hi\"\n\\")),
                           "\"level\":\"info\",\"svc\":\"edge\",\"event\":\"logon_ok\","
                           "\"msg\":\"say \\\"hi\\\"\\n\\\\\"}\n"));
    assert_non_null(strstr(WRITTEN(rb_log_with(RB_LOG_WARN, "w", "\"n\":1", "m")),
                           "\"level\":\"warn\",\"svc\":\"edge\",\"event\":\"w\","
                           "\"msg\":\"m\",\"n\":1}\n"));
}

/* reachback-gateway runs an edge and a forwarder on two threads of one
 * process: each thread's lines name its service and follow its level. */
static void *s_forwarder_thread(void *arg)
{
    rb_log_init_thread("forwarder", RB_LOG_WARN);
    rb_info("quiet", "below the forwarder's level");
    rb_warn("fwd_warn", "from the forwarder");
    return NULL;
}

static void s_run_forwarder_thread(void)
{
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_forwarder_thread, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
}

static void test_a_thread_with_its_own_service(void **state)
{
    rb_log_init("edge", RB_LOG_INFO);
    const char *out = WRITTEN(s_run_forwarder_thread());
    assert_non_null(strstr(out, "\"level\":\"warn\",\"svc\":\"forwarder\",\"event\":\"fwd_warn\""));
    assert_null(strstr(out, "quiet"));
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1); /* that line alone */
    /* This thread keeps the process's name and level. */
    assert_non_null(strstr(WRITTEN(rb_info("edge_info", "x")), "\"svc\":\"edge\""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_audit_ignores_the_level),
        cmocka_unit_test(test_levels_and_escaping),
        cmocka_unit_test(test_a_thread_with_its_own_service),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
