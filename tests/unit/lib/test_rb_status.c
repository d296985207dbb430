/* rb_status: the real HTTP server on 127.0.0.1, driven by the loop, asked by
 * a plain socket client in a second thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rb_metrics.h"
#include "rb_status.h"

typedef struct {
    int port;
    const char *src; /* source address; NULL: the kernel's choice */
    const char *request;
    char response[8192];
    atomic_int done;
} http_t;

static void *s_client(void *arg)
{
    http_t *h = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (h->src) {
        struct sockaddr_in from = {.sin_family = AF_INET};
        inet_pton(AF_INET, h->src, &from.sin_addr);
        bind(fd, (struct sockaddr *)&from, sizeof from);
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)h->port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        size_t len = strlen(h->request);
        if (write(fd, h->request, len) == (ssize_t)len) {
            size_t got = 0;
            ssize_t n;
            while (got < sizeof h->response - 1 &&
                   (n = read(fd, h->response + got, sizeof h->response - 1 - got)) > 0)
                got += (size_t)n;
            h->response[got] = '\0';
        }
    }
    close(fd);
    atomic_store(&h->done, 1);
    return NULL;
}

static void s_poll_done(rb_loop_t *l, void *arg)
{
    if (atomic_load(&((http_t *)arg)->done)) rb_loop_stop(l);
}

static bool s_ready;
static bool s_ready_fn(void *arg, rb_buf_t *why)
{
    if (!s_ready) rb_buf_puts(why, "redis: no answer");
    return s_ready;
}

static void s_info(void *arg, rb_buf_t *json) { rb_buf_puts(json, "\"sessions\":3"); }

static int s_admin(void *arg, const char *method, const char *path, const char *body, size_t len,
                   rb_buf_t *out, const char **ctype)
{
    rb_buf_printf(out, "{\"method\":\"%s\",\"body\":%zu}", method, len);
    return 200;
}

static const char *s_ask_from(rb_loop_t *l, rb_status_t *st, const char *src, const char *request)
{
    static http_t h;
    memset(&h, 0, sizeof h);
    h.port = rb_status_port(st);
    h.src = src;
    h.request = request;
    pthread_t th;
    pthread_create(&th, NULL, s_client, &h);
    rb_timer_t *t = rb_loop_add_timer(l, 5, true, s_poll_done, &h);
    rb_loop_run(l);
    rb_loop_cancel_timer(l, t);
    pthread_join(th, NULL);
    return h.response;
}

static const char *s_ask(rb_loop_t *l, rb_status_t *st, const char *request)
{
    return s_ask_from(l, st, NULL, request);
}

/* A thread with a registry of its own renders only its metrics: the edge
 * and the forwarder that reachback-gateway runs on two threads keep their
 * own /metrics. Other threads share the process's. */
static void *s_shared_thread(void *arg)
{
    *(double *)arg = rb_metric_value(rb_counter("reachback_test_mine_total", NULL, ""));
    return NULL;
}

static void *s_other_thread(void *arg)
{
    if (rb_metrics_init_thread() < 0) return NULL;
    rb_metric_add(rb_counter("reachback_test_total", "kind=\"a\"", "test counter"), 5);
    rb_buf_t *out = arg;
    rb_metrics_render(out);
    return NULL;
}

static void test_a_registry_per_thread(void **state)
{
    rb_metric_t *mine = rb_counter("reachback_test_mine_total", NULL, "this thread's");
    rb_metric_inc(mine);
    rb_buf_t theirs = RB_BUF_INIT, ours = RB_BUF_INIT;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_other_thread, &theirs), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    rb_buf_append(&theirs, "", 1);
    assert_non_null(strstr(theirs.data, "reachback_test_total{kind=\"a\"} 5"));
    assert_null(strstr(theirs.data, "reachback_test_mine_total"));
    rb_metrics_render(&ours);
    rb_buf_append(&ours, "", 1);
    assert_non_null(strstr(ours.data, "reachback_test_mine_total 1"));
    assert_null(strstr(ours.data, "} 5"));
    double seen = 0;
    assert_int_equal(pthread_create(&t, NULL, s_shared_thread, &seen), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(seen == 1);
    rb_buf_free(&theirs);
    rb_buf_free(&ours);
}

static void test_endpoints(void **state)
{
    rb_loop_t *l = rb_loop_new();
    rb_status_t *st = rb_status_new(l, "127.0.0.1:0", "testsvc");
    assert_non_null(st);
    assert_true(rb_status_port(st) > 0);
    rb_status_set_ready(st, s_ready_fn, NULL);
    rb_status_set_info(st, s_info, NULL);
    rb_status_set_admin_token(st, "s3cret");
    assert_int_equal(rb_status_add_route(st, "/admin/", true, s_admin, NULL), 0);
    rb_metric_inc(rb_counter("reachback_test_total", "kind=\"a\"", "test counter"));

    const char *r = s_ask(l, st, "GET /healthz HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(r, "200 OK"));
    s_ready = false;
    r = s_ask(l, st, "GET /readyz HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(r, "503"));
    assert_non_null(strstr(r, "redis: no answer"));
    s_ready = true;
    r = s_ask(l, st, "GET /readyz HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(r, "200 OK"));
    r = s_ask(l, st, "GET /metrics HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(r, "# TYPE reachback_test_total counter"));
    assert_non_null(strstr(r, "reachback_test_total{kind=\"a\"} 1"));
    r = s_ask(l, st, "GET /status HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(r, "\"service\":\"testsvc\""));
    assert_non_null(strstr(r, "\"sessions\":3"));
    r = s_ask(l, st, "GET /admin/sessions HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(r, "401"));
    r = s_ask(l, st, "GET /admin/sessions HTTP/1.0\r\nAuthorization: Bearer wrong\r\n\r\n");
    assert_non_null(strstr(r, "401"));
    r = s_ask(l, st, "POST /admin/kick HTTP/1.0\r\nAuthorization: Bearer s3cret\r\n"
                     "Content-Length: 5\r\n\r\nalice");
    assert_non_null(strstr(r, "200 OK"));
    assert_non_null(strstr(r, "{\"method\":\"POST\",\"body\":5}"));
    r = s_ask(l, st, "GET /nothing HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(r, "404"));
    /* Garbage instead of HTTP: answered or closed, and the server goes on. */
    s_ask(l, st, "\x01\x02garbage\r\n\r\n");
    r = s_ask(l, st, "GET /healthz HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(r, "200 OK"));
    rb_status_destroy(&st);
    assert_null(st);
    rb_loop_destroy(&l);
}

/* A route that answers 50 ms later, from a timer, as one waiting on Redis
 * or another service would. */
static rb_status_t *s_st;
static void s_finish_later(rb_loop_t *l, void *arg)
{
    rb_status_finish(arg, 202, "application/json", "{\"later\":true}", 14);
}

static int s_slow(void *arg, const char *method, const char *path, const char *body, size_t len,
                  rb_buf_t *out, const char **ctype)
{
    rb_status_pending_t *p = rb_status_defer(s_st);
    assert_non_null(p);
    assert_null(rb_status_defer(s_st));   /* once per request */
    rb_loop_add_timer(arg, 50, false, s_finish_later, p);
    return 0;
}

static void test_deferred_route(void **state)
{
    rb_loop_t *l = rb_loop_new();
    s_st = rb_status_new(l, "127.0.0.1:0", "testsvc");
    assert_non_null(s_st);
    assert_int_equal(rb_status_add_route(s_st, "/slow", false, s_slow, l), 0);
    uint64_t t0 = rb_now_ms();
    const char *r = s_ask(l, s_st, "GET /slow HTTP/1.0\r\n\r\n");
    uint64_t took = rb_now_ms() - t0;
    assert_non_null(strstr(r, "202"));
    assert_non_null(strstr(r, "{\"later\":true}"));
    /* Sent as soon as it is finished, not at a later tick of the server
     * (it took ~400 ms when it waited for two). */
    assert_true(took >= 50 && took < 350);
    /* Other requests are served while one waits. */
    r = s_ask(l, s_st, "GET /healthz HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(r, "200 OK"));
    /* Outside a handler there is nothing to defer. */
    assert_null(rb_status_defer(s_st));
    rb_status_destroy(&s_st);
    rb_loop_destroy(&l);
}

/* Idle connections from one address (a slow client, or one trickling
 * bytes) cannot take the server from everyone: past 16 that address is
 * refused, and another is still served. */
static void test_per_address_limit(void **state)
{
    rb_loop_t *l = rb_loop_new();
    rb_status_t *st = rb_status_new(l, "127.0.0.1:0", "testsvc");
    assert_non_null(st);
    int idle[20];
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)rb_status_port(st))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    for (int i = 0; i < 20; i++) {
        idle[i] = socket(AF_INET, SOCK_STREAM, 0);
        assert_int_equal(connect(idle[i], (struct sockaddr *)&sa, sizeof sa), 0);
    }
    const char *r = s_ask_from(l, st, "127.0.0.2", "GET /healthz HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(r, "200 OK"));
    r = s_ask_from(l, st, "127.0.0.1", "GET /healthz HTTP/1.0\r\n\r\n");
    assert_null(strstr(r, "200 OK"));
    for (int i = 0; i < 20; i++) close(idle[i]);
    rb_status_destroy(&st);
    rb_loop_destroy(&l);
}

static void test_bad_listen(void **state)
{
    rb_loop_t *l = rb_loop_new();
    assert_null(rb_status_new(l, "nonsense", "x"));
    assert_null(rb_status_new(l, "127.0.0.1:99999", "x"));
    rb_loop_destroy(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_registry_per_thread),
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_deferred_route),
        cmocka_unit_test(test_per_address_limit),
        cmocka_unit_test(test_bad_listen),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
