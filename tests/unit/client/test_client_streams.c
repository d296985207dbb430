/* client_streams: what the device accepts on its command line (--expose,
 * --forward, --socks), with the error a person sees for each mistake, and
 * the local listeners it opens. The streams themselves run against a real
 * lab in tests/integration (test_expose, test_outbound, test_stream_close). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "client_streams.h"
#include "rb_log.h"
#include "rb_loop.h"

static client_streams_t *s_new(rb_loop_t **loop)
{
    *loop = rb_loop_new();
    assert_non_null(*loop);
    client_streams_t *cs = client_streams_new(*loop);
    assert_non_null(cs);
    return cs;
}

static void s_free(client_streams_t *cs, rb_loop_t *loop)
{
    client_streams_destroy(&cs);
    assert_null(cs);
    client_streams_destroy(NULL);
    rb_loop_destroy(&loop);
}

static void test_expose_specs(void **state)
{
    rb_loop_t *loop;
    client_streams_t *cs = s_new(&loop);
    char err[256];
    const char *good[] = {"tcp:22", "tcp:5900=127.0.0.1:5901", "udp:5353=127.0.0.1:5454", "udp:22",
                          "tcp:65535=10.1.2.3:1"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        assert_int_equal(client_streams_expose(cs, good[i], err, sizeof err), 0);
    const struct {
        const char *spec, *want;
    } bad[] = {
        {"sctp:22", "want tcp:PORT"},
        {"22", "want tcp:PORT"},
        {"tcp:0", "bad port"},
        {"tcp:65536", "bad port"},
        {"tcp:22x", "bad port"},
        {"tcp:", "bad port"},
        {"tcp:23=localhost:22", "IPv4:PORT"},
        {"tcp:23=127.0.0.1:0", "IPv4:PORT"},
        {"tcp:23=127.0.0.1:99999", "IPv4:PORT"},
        {"tcp:23=:22", "IPv4:PORT"},
        {"tcp:22", "exposed twice"},
        {"tcp:5900=127.0.0.1:7000", "exposed twice"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = '\0';
        assert_int_equal(client_streams_expose(cs, bad[i].spec, err, sizeof err), -1);
        if (!strstr(err, bad[i].want) || !strstr(err, bad[i].spec))
            fail_msg("'%s': error '%s' lacks '%s'", bad[i].spec, err, bad[i].want);
    }
    s_free(cs, loop);
}

static void test_expose_limit(void **state)
{
    rb_loop_t *loop;
    client_streams_t *cs = s_new(&loop);
    char err[256], spec[32];
    for (int i = 1; i <= 64; i++) {
        snprintf(spec, sizeof spec, "tcp:%d", 1000 + i);
        assert_int_equal(client_streams_expose(cs, spec, err, sizeof err), 0);
    }
    assert_int_equal(client_streams_expose(cs, "tcp:2000", err, sizeof err), -1);
    assert_non_null(strstr(err, "at most 64"));
    s_free(cs, loop);
}

static void test_forward_and_socks_listen(void **state)
{
    rb_loop_t *loop;
    client_streams_t *cs = s_new(&loop);
    char err[256];
    assert_int_equal(client_streams_listener_port(cs, 0), -1);
    assert_int_equal(client_streams_forward(cs, "0:intranet.example:443", err, sizeof err), 0);
    assert_int_equal(client_streams_forward(cs, "127.0.0.1:0:10.0.0.1:22", err, sizeof err), 0);
    assert_int_equal(client_streams_socks(cs, "127.0.0.1:0", err, sizeof err), 0);
    assert_int_equal(client_streams_socks(cs, "0", err, sizeof err), 0);
    /* The order they were given, each on a port of its own. */
    int p[4];
    for (int i = 0; i < 4; i++) {
        p[i] = client_streams_listener_port(cs, (size_t)i);
        assert_true(p[i] > 0);
        for (int k = 0; k < i; k++)
            assert_int_not_equal(p[i], p[k]);
    }
    assert_int_equal(client_streams_listener_port(cs, 4), -1);
    /* A port taken already is a clear error, not a silent failure. */
    char spec[64];
    snprintf(spec, sizeof spec, "127.0.0.1:%d:host:80", p[0]);
    assert_int_equal(client_streams_forward(cs, spec, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot listen"));
    assert_int_equal(client_streams_count(cs), 0);
    s_free(cs, loop);
}

static void test_forward_socks_specs(void **state)
{
    rb_loop_t *loop;
    client_streams_t *cs = s_new(&loop);
    char err[256];
    const char *bad_fwd[] = {
        "22",          "1:2",       "0:host:0",       "0:host:70000", "0::80",
        "x:0:host:80", "0:host:8x", "999999:host:80", "1.2.3:0:h:80", "0:host:80:extra"};
    for (size_t i = 0; i < sizeof bad_fwd / sizeof *bad_fwd; i++) {
        err[0] = '\0';
        assert_int_equal(client_streams_forward(cs, bad_fwd[i], err, sizeof err), -1);
        if (!strstr(err, "[BIND:]LPORT:HOST:PORT"))
            fail_msg("--forward '%s': error '%s'", bad_fwd[i], err);
    }
    const char *bad_socks[] = {"", "x", "localhost:1080", "127.0.0.1:70000", "1.2.3.4.5:80"};
    for (size_t i = 0; i < sizeof bad_socks / sizeof *bad_socks; i++) {
        err[0] = '\0';
        assert_int_equal(client_streams_socks(cs, bad_socks[i], err, sizeof err), -1);
        if (!strstr(err, "[BIND:]PORT")) fail_msg("--socks '%s': error '%s'", bad_socks[i], err);
    }
    assert_int_equal(client_streams_listener_port(cs, 0), -1);
    s_free(cs, loop);
}

int main(void)
{
    rb_log_init("test", RB_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expose_specs),
        cmocka_unit_test(test_expose_limit),
        cmocka_unit_test(test_forward_and_socks_listen),
        cmocka_unit_test(test_forward_socks_specs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
