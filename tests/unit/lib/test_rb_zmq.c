/* rb_zmq: key files, CURVE links through the ZAP handler, and a ZAP handler
 * that survives malformed requests. Real ZeroMQ over tcp://127.0.0.1:* and
 * ipc:// in a temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "rb_log.h"
#include "rb_loop.h"
#include "rb_zmq.h"

static char s_dir[] = "/tmp/rb_test_zmq_XXXXXX";

static void s_path(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", s_dir, name);
}

static void s_write(const char *name, const char *text)
{
    char p[256];
    s_path(p, sizeof p, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void s_stop(rb_loop_t *l, void *arg) { rb_loop_stop(l); }

/* Runs the loop until *flag is set or ms pass. */
typedef struct {
    int *flag;
} watch_t;

static void s_watch(rb_loop_t *l, void *arg)
{
    watch_t *w = arg;
    if (*w->flag) rb_loop_stop(l);
}

static void s_run(rb_loop_t *l, int *flag, unsigned ms)
{
    watch_t w = {flag};
    rb_timer_t *t = rb_loop_add_timer(l, 5, true, s_watch, &w);
    rb_timer_t *d = rb_loop_add_timer(l, ms, true, s_stop, NULL);
    rb_loop_run(l);
    rb_loop_cancel_timer(l, t);
    rb_loop_cancel_timer(l, d);
}

static void test_keys_generate_and_load(void **state)
{
    assert_int_equal(rb_curve_generate(s_dir, "svc"), 0);
    char key[256], pub[256];
    s_path(key, sizeof key, "svc.key");
    s_path(pub, sizeof pub, "svc.pub");
    struct stat st;
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    char err[256] = "";
    rb_curve_t c;
    assert_int_equal(rb_curve_load(&c, key, err, sizeof err), 0);
    assert_true(c.enabled);
    assert_int_equal(strlen(c.public_key), RB_Z85_KEY_LEN);
    assert_int_equal(strlen(c.secret_key), RB_Z85_KEY_LEN);

    char p1[RB_Z85_KEY_LEN + 1], p2[RB_Z85_KEY_LEN + 1];
    assert_int_equal(rb_curve_read_public(pub, p1, err, sizeof err), 0);
    assert_int_equal(rb_curve_read_public(key, p2, err, sizeof err), 0);
    assert_string_equal(p1, c.public_key);
    assert_string_equal(p2, c.public_key);

    /* No path: CURVE off, not an error. */
    assert_int_equal(rb_curve_load(&c, "", err, sizeof err), 0);
    assert_false(c.enabled);
    assert_int_equal(rb_curve_load(&c, NULL, err, sizeof err), 0);
    assert_false(c.enabled);

    /* A second generate replaces the pair, still 0600. */
    assert_int_equal(chmod(key, 0644), 0);
    assert_int_equal(rb_curve_generate(s_dir, "svc"), 0);
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char p3[RB_Z85_KEY_LEN + 1];
    assert_int_equal(rb_curve_read_public(pub, p3, err, sizeof err), 0);
    assert_string_not_equal(p3, p1);
}

static void s_expect_bad(const char *name, const char *text, const char *needle, bool secret)
{
    char p[256], err[256] = "";
    s_path(p, sizeof p, name);
    if (text) s_write(name, text);
    rb_curve_t c;
    char pub[RB_Z85_KEY_LEN + 1];
    int rc = secret ? rb_curve_load(&c, p, err, sizeof err)
                    : rb_curve_read_public(p, pub, err, sizeof err);
    assert_int_equal(rc, -1);
    if (!strstr(err, needle)) fail_msg("'%s': error '%s' lacks '%s'", name, err, needle);
    if (secret) assert_false(c.enabled);
}

static void test_keys_bad_files(void **state)
{
    char pub[RB_Z85_KEY_LEN + 1], sec[RB_Z85_KEY_LEN + 1], other[41], osec[41];
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    assert_int_equal(zmq_curve_keypair(other, osec), 0);
    char text[512];

    s_expect_bad("missing.key", NULL, "No such file", true);
    s_expect_bad("garbage.key", "# comment\n\nthis is not a key\n", ":3:", true);
    s_expect_bad("unknown.key", "private = abc\n", "unknown key", true);
    s_expect_bad("short.key", "secret = abc\n", "40 Z85", true);
    /* 40 characters, but '"' and ' ' are not in the Z85 alphabet. */
    /* 40 characters, but '~' is not in the Z85 alphabet. */
    s_expect_bad("notz85.key", "secret = ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~\n",
                 "not a valid Z85", true);
    snprintf(text, sizeof text, "public = %s\n", pub);
    s_expect_bad("only.pub", text, "no 'secret", true);
    snprintf(text, sizeof text, "public = %s\nsecret = %s\n", other, sec);
    s_expect_bad("mismatch.key", text, "does not match", true);
    snprintf(text, sizeof text, "secret = %s\nsecret = %s\n", sec, sec);
    s_expect_bad("twice.key", text, "twice", true);
    s_expect_bad("empty.pub", "# nothing\n", "no 'public", false);
    s_expect_bad("binary.pub", "public = \x01\x02", "40 Z85", false);

    /* A big file is refused before it is parsed. */
    char *big = malloc(10000);
    memset(big, '#', 9999);
    big[9999] = '\0';
    s_expect_bad("big.key", big, "larger than", true);
    free(big);

    /* Quotes and comments are fine; a secret-only file derives its public key. */
    snprintf(text, sizeof text, "# hand-written\n  secret = \"%s\"  \n", sec);
    s_write("quoted.key", text);
    char p[256], err[256];
    s_path(p, sizeof p, "quoted.key");
    rb_curve_t c;
    assert_int_equal(rb_curve_load(&c, p, err, sizeof err), 0);
    assert_string_equal(c.public_key, pub);
}

/* ---- CURVE links ---- */

typedef struct {
    int got;
    char last[64];
} sink_t;

static void s_on_router(rb_loop_t *l, void *sock, void *arg)
{
    sink_t *s = arg;
    zmq_msg_t m;
    for (;;) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        /* ROUTER: [routing id][payload] */
        if (!zmq_msg_more(&m)) {
            size_t n = zmq_msg_size(&m) < 63 ? zmq_msg_size(&m) : 63;
            memcpy(s->last, zmq_msg_data(&m), n);
            s->last[n] = '\0';
            s->got++;
        }
        zmq_msg_close(&m);
    }
}

typedef struct {
    void *sock;
    const char *text;
    int sent;
} sender_t;

/* A DEALER with ZMQ_IMMEDIATE refuses to queue before its handshake is
 * done, and the handshake needs the ZAP handler on this very loop: so send
 * from a timer until the socket takes the message. */
static void s_try_send(rb_loop_t *l, void *arg)
{
    sender_t *s = arg;
    if (!s->sent && zmq_send(s->sock, s->text, strlen(s->text), ZMQ_DONTWAIT) >= 0) s->sent = 1;
}

static void s_last_endpoint(void *sock, char *out, size_t len)
{
    assert_int_equal(zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, out, &len), 0);
}

static void test_curve_allowed_and_refused(void **state)
{
    rb_loop_t *l = rb_loop_new();
    assert_non_null(l);
    assert_int_equal(rb_curve_generate(s_dir, "server"), 0);
    assert_int_equal(rb_curve_generate(s_dir, "good"), 0);
    assert_int_equal(rb_curve_generate(s_dir, "bad"), 0);
    char p[256], allowed[512], err[256];
    rb_curve_t server, good, bad;
    s_path(p, sizeof p, "server.key");
    assert_int_equal(rb_curve_load(&server, p, err, sizeof err), 0);
    s_path(p, sizeof p, "good.key");
    assert_int_equal(rb_curve_load(&good, p, err, sizeof err), 0);
    s_path(p, sizeof p, "bad.key");
    assert_int_equal(rb_curve_load(&bad, p, err, sizeof err), 0);

    /* A CURVE server without a ZAP handler would let anyone in: refused. */
    assert_null(rb_zsock_bind(ZMQ_ROUTER, "tcp://127.0.0.1:*", &server));

    snprintf(allowed, sizeof allowed, "%s/good.pub, %s/server.pub", s_dir, s_dir);
    assert_int_equal(rb_zap_start(l, allowed, err, sizeof err), 0);
    assert_int_equal(rb_zap_start(l, allowed, err, sizeof err), -1);   /* only one */

    void *router = rb_zsock_bind(ZMQ_ROUTER, "tcp://127.0.0.1:*", &server);
    assert_non_null(router);
    char ep[256];
    s_last_endpoint(router, ep, sizeof ep);
    sink_t sink = {0};
    assert_int_equal(rb_loop_add_zsock(l, router, s_on_router, &sink), 0);

    void *c_bad = rb_zsock_connect(ZMQ_DEALER, ep, &bad, server.public_key);
    assert_non_null(c_bad);
    sender_t sb = {c_bad, "intruder", 0};
    rb_timer_t *tb = rb_loop_add_timer(l, 10, true, s_try_send, &sb);
    /* The refused client never completes its handshake, so nothing arrives. */
    s_run(l, &sink.got, 800);
    assert_int_equal(sink.got, 0);
    assert_int_equal(sb.sent, 0);
    rb_loop_cancel_timer(l, tb);

    void *c_good = rb_zsock_connect(ZMQ_DEALER, ep, &good, server.public_key);
    assert_non_null(c_good);
    sender_t sg = {c_good, "hello", 0};
    rb_timer_t *tg = rb_loop_add_timer(l, 10, true, s_try_send, &sg);
    s_run(l, &sink.got, 3000);
    rb_loop_cancel_timer(l, tg);
    assert_int_equal(sink.got, 1);
    assert_string_equal(sink.last, "hello");

    /* A client that expects another server key cannot talk either. */
    void *c_wrong = rb_zsock_connect(ZMQ_DEALER, ep, &good, bad.public_key);
    sender_t sw = {c_wrong, "wrong server", 0};
    rb_timer_t *tw = rb_loop_add_timer(l, 10, true, s_try_send, &sw);
    int never = 0;
    s_run(l, &never, 500);
    rb_loop_cancel_timer(l, tw);
    assert_int_equal(sink.got, 1);

    /* An ipc link in a private directory, without CURVE: the ZAP handler
     * accepts the NULL mechanism. */
    char ipc[300];
    snprintf(ipc, sizeof ipc, "ipc://%s/data.sock", s_dir);
    void *plain = rb_zsock_bind(ZMQ_ROUTER, ipc, NULL);
    assert_non_null(plain);
    sink_t psink = {0};
    assert_int_equal(rb_loop_add_zsock(l, plain, s_on_router, &psink), 0);
    void *pc = rb_zsock_connect(ZMQ_DEALER, ipc, NULL, NULL);
    assert_non_null(pc);
    sender_t sp = {pc, "clear", 0};
    rb_timer_t *tp = rb_loop_add_timer(l, 10, true, s_try_send, &sp);
    s_run(l, &psink.got, 3000);
    rb_loop_cancel_timer(l, tp);
    assert_int_equal(psink.got, 1);
    assert_string_equal(psink.last, "clear");

    rb_loop_del_zsock(l, router);
    rb_loop_del_zsock(l, plain);
    rb_zsock_close(&router);
    assert_null(router);
    rb_zsock_close(&plain);
    rb_zsock_close(&c_bad);
    rb_zsock_close(&c_good);
    rb_zsock_close(&c_wrong);
    rb_zsock_close(&pc);
    rb_zsock_close(NULL);
    rb_zap_stop();
    rb_loop_destroy(&l);
}

/* ---- malformed ZAP requests ---- */

typedef struct {
    int done;
} flag_t;

static void s_on_reply(rb_loop_t *l, void *sock, void *arg)
{
    flag_t *f = arg;
    f->done = 1;
    rb_loop_stop(l);
}

/* Sends one request of n frames to the ZAP handler and returns the status
 * code of its reply ("" when none came). */
static void s_zap_ask(rb_loop_t *l, void *req, const void *const *frames, const size_t *lens,
                      size_t n, char code[8])
{
    for (size_t i = 0; i < n; i++)
        assert_true(zmq_send(req, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
    flag_t f = {0};
    assert_int_equal(rb_loop_add_zsock(l, req, s_on_reply, &f), 0);
    s_run(l, &f.done, 2000);
    rb_loop_del_zsock(l, req);
    code[0] = '\0';
    char buf[64];
    int i = 0, more = 1;
    while (more) {
        int r = zmq_recv(req, buf, sizeof buf - 1, ZMQ_DONTWAIT);
        if (r < 0) break;
        if (i == 2 && r < 8) {
            memcpy(code, buf, (size_t)r);
            code[r] = '\0';
        }
        i++;
        size_t sz = sizeof more;
        zmq_getsockopt(req, ZMQ_RCVMORE, &more, &sz);
    }
}

#define ASK(code, ...)                                                                     \
    do {                                                                                   \
        const void *fr[] = {__VA_ARGS__};                                                  \
        size_t ln[sizeof fr / sizeof fr[0]];                                               \
        for (size_t k = 0; k < sizeof fr / sizeof fr[0]; k++) ln[k] = strlen(fr[k]);       \
        s_zap_ask(l, req, fr, ln, sizeof fr / sizeof fr[0], code);                         \
    } while (0)

static void test_zap_survives_garbage(void **state)
{
    rb_loop_t *l = rb_loop_new();
    char err[256], allowed[256], code[8];
    assert_int_equal(rb_curve_generate(s_dir, "zapok"), 0);
    snprintf(allowed, sizeof allowed, "%s/zapok.pub", s_dir);
    assert_int_equal(rb_zap_start(l, allowed, err, sizeof err), 0);
    void *req = zmq_socket(rb_zmq_ctx(), ZMQ_REQ);
    int zero = 0;
    zmq_setsockopt(req, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(req, "inproc://zeromq.zap.01"), 0);

    ASK(code, "garbage");
    assert_string_equal(code, "500");
    ASK(code, "2.0", "id", "reachback", "127.0.0.1", "", "NULL");
    assert_string_equal(code, "500");
    ASK(code, "1.0", "id", "reachback", "127.0.0.1", "", "CURVE", "short-key");
    assert_string_equal(code, "500");
    ASK(code, "1.0", "id", "reachback", "127.0.0.1", "", "CURVE");
    assert_string_equal(code, "500");
    ASK(code, "1.0", "id", "reachback", "127.0.0.1", "", "PLAIN", "user", "pass");
    assert_string_equal(code, "400");
    ASK(code, "1.0", "id", "reachback", "127.0.0.1\n{\"forged\":1}", "", "GSSAPI");
    assert_string_equal(code, "400");
    ASK(code, "1.0", "id", "d", "a", "i", "NULL", "1", "2", "3", "4", "5", "6", "7", "8", "9",
        "10", "11", "12", "13");
    assert_string_equal(code, "500");

    /* An oversized frame. */
    char *big = malloc(100000);
    memset(big, 'x', 99999);
    big[99999] = '\0';
    ASK(code, "1.0", big, "reachback", "127.0.0.1", "", "NULL");
    assert_string_equal(code, "500");
    free(big);

    /* After all that, real requests still get real answers. */
    ASK(code, "1.0", "id", "reachback", "127.0.0.1", "", "NULL");
    assert_string_equal(code, "200");
    char z85[RB_Z85_KEY_LEN + 1], p[256];
    uint8_t bin[32];
    s_path(p, sizeof p, "zapok.pub");
    assert_int_equal(rb_curve_read_public(p, z85, err, sizeof err), 0);
    assert_non_null(zmq_z85_decode(bin, z85));
    {
        const void *fr[] = {"1.0", "id", "reachback", "127.0.0.1", "", "CURVE", bin};
        size_t ln[] = {3, 2, 9, 9, 0, 5, 32};
        s_zap_ask(l, req, fr, ln, 7, code);
        assert_string_equal(code, "200");
        bin[0] ^= 1;
        s_zap_ask(l, req, fr, ln, 7, code);
        assert_string_equal(code, "400");
    }
    zmq_close(req);
    rb_zap_stop();
    rb_zap_stop();   /* idempotent */
    rb_loop_destroy(&l);
}

/* A forwarder in reachback-gateway binds inproc:// for the edge beside it
 * and tcp:// for edges elsewhere: one socket, a list of endpoints, and
 * CURVE only where some endpoint needs it. */
static void test_bind_a_list(void **state)
{
    assert_true(rb_zmq_endpoint_local("inproc://a"));
    assert_true(rb_zmq_endpoint_local("ipc:///run/x.sock, inproc://a"));
    assert_false(rb_zmq_endpoint_local("inproc://a,tcp://127.0.0.1:7450"));
    assert_false(rb_zmq_endpoint_local("tcp://127.0.0.1:7450"));

    void *r = rb_zsock_bind(ZMQ_ROUTER, "inproc://rb-test-list, tcp://127.0.0.1:0", NULL);
    assert_non_null(r);
    char tcp[128];
    size_t len = sizeof tcp;
    assert_int_equal(zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, tcp, &len), 0);
    assert_memory_equal(tcp, "tcp://127.0.0.1:", 16);
    void *a = rb_zsock_connect(ZMQ_DEALER, "inproc://rb-test-list", NULL, NULL);
    void *b = rb_zsock_connect(ZMQ_DEALER, tcp, NULL, NULL);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(zmq_send(a, "via-inproc", 10, 0), 10);
    assert_int_equal(zmq_send(b, "via-tcp", 7, 0), 7);
    int timeout = 3000;
    zmq_setsockopt(r, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    int seen = 0;
    for (int i = 0; i < 2; i++) {
        char id[256], body[16] = "";
        assert_true(zmq_recv(r, id, sizeof id, 0) > 0);
        int n = zmq_recv(r, body, sizeof body - 1, 0);
        assert_true(n > 0);
        seen |= strcmp(body, "via-inproc") == 0 ? 1 : strcmp(body, "via-tcp") == 0 ? 2 : 4;
    }
    assert_int_equal(seen, 3);
    rb_zsock_close(&a);
    rb_zsock_close(&b);
    rb_zsock_close(&r);
    /* One bad endpoint of the list, or none at all: no socket. */
    assert_null(rb_zsock_bind(ZMQ_ROUTER, "inproc://rb-test-list2,bogus://x", NULL));
    assert_null(rb_zsock_bind(ZMQ_ROUTER, " , ", NULL));
    assert_null(rb_zsock_bind(ZMQ_ROUTER, "", NULL));
    /* Separators around and between endpoints are only separators. */
    void *t = rb_zsock_bind(ZMQ_ROUTER, ", inproc://rb-test-list3 ,", NULL);
    assert_non_null(t);
    rb_zsock_close(&t);
}

static int s_setup(void **state)
{
    rb_log_init("test", RB_LOG_WARN);
    return mkdtemp(s_dir) ? 0 : -1;
}

static int s_teardown(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_generate_and_load),
        cmocka_unit_test(test_keys_bad_files),
        cmocka_unit_test(test_curve_allowed_and_refused),
        cmocka_unit_test(test_zap_survives_garbage),
        cmocka_unit_test(test_bind_a_list),
    };
    int rc = cmocka_run_group_tests(tests, s_setup, s_teardown);
    /* A failed test leaves its sockets open, and terminating the context
     * would wait for them forever. */
    if (rc == 0) rb_zmq_term();
    return rc;
}
