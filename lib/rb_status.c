/* rb_status: libmicrohttpd in external-epoll mode, its epoll fd watched by
 * the service's rb_loop, so every handler runs on the loop thread and reads
 * live state without locks (see rb_status.h). */
#include "rb_status.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "rb_log.h"
#include "rb_metrics.h"

#define MAX_ROUTES 16
#define MAX_BODY (64 * 1024)

typedef struct {
    char *prefix;
    bool admin;
    rb_route_fn *fn;
    void *arg;
} route_t;

struct rb_status {
    rb_loop_t *loop;
    struct MHD_Daemon *mhd;
    rb_timer_t *tick;
    int epfd;
    int port;
    char *service;
    char *admin_token;
    uint64_t started_ms;
    rb_ready_fn *ready_fn;
    void *ready_arg;
    rb_status_info_fn *info_fn;
    void *info_arg;
    route_t routes[MAX_ROUTES];
    size_t nroutes;
    rb_metric_t *requests;
    rb_defer_t kick; /* MHD_run soon: a resumed connection has its answer */
    unsigned kicks;  /* in a row, while MHD has work at once */
    /* While a route handler runs: its connection, and the deferral it asked
     * for, if any. */
    struct MHD_Connection *current_conn;
    struct req *current_req;
    rb_status_pending_t *deferred;
    rb_status_pending_t *waiting;   /* every unfinished deferral */
};

/* Per-request state: the body of POST/PUT/DELETE as it arrives, and the
 * answer of a deferred route once it is known. */
typedef struct req {
    rb_buf_t body;
    bool too_large;
    rb_status_pending_t *pending;
    bool answered;
    int code;
    const char *ctype;
    rb_buf_t answer;
} req_t;

struct rb_status_pending {
    rb_status_t *st;
    struct MHD_Connection *conn;
    req_t *req;   /* NULL once the client went away */
    rb_status_pending_t *prev, *next;
};

static void s_log(void *arg, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n') msg[--n] = '\0';
    rb_warn("http_error", "%s", msg);
}

static enum MHD_Result s_send(struct MHD_Connection *c, unsigned code, const char *ctype,
                              const char *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result rc = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return rc;
}

static bool s_authorized(const rb_status_t *st, struct MHD_Connection *c)
{
    if (!st->admin_token || !*st->admin_token) return false;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    size_t n = strlen(st->admin_token);
    return strlen(h) == n && CRYPTO_memcmp(h, st->admin_token, n) == 0;
}

static bool s_is_ready(rb_status_t *st, rb_buf_t *why)
{
    return !st->ready_fn || st->ready_fn(st->ready_arg, why);
}

static enum MHD_Result s_builtin(rb_status_t *st, struct MHD_Connection *c, const char *url)
{
    rb_buf_t out = RB_BUF_INIT;
    enum MHD_Result rc;
    if (strcmp(url, "/healthz") == 0) {
        rc = s_send(c, MHD_HTTP_OK, "text/plain", "ok\n", 3);
    } else if (strcmp(url, "/readyz") == 0) {
        rb_buf_t why = RB_BUF_INIT;
        bool ok = s_is_ready(st, &why);
        if (ok) {
            rb_buf_puts(&out, "ready\n");
        } else {
            rb_buf_printf(&out, "not ready: %s\n", why.data ? why.data : "");
        }
        rb_buf_free(&why);
        rc = s_send(c, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain", out.data,
                    out.len);
    } else if (strcmp(url, "/metrics") == 0) {
        rb_metrics_render(&out);
        rc = s_send(c, MHD_HTTP_OK, "text/plain; version=0.0.4", out.data ? out.data : "",
                    out.len);
    } else if (strcmp(url, "/status") == 0) {
        rb_buf_t why = RB_BUF_INIT;
        bool ok = s_is_ready(st, &why);
        rb_buf_puts(&out, "{\"service\":\"");
        rb_buf_json_escape(&out, st->service);
        rb_buf_printf(&out, "\",\"version\":\"%s\",\"uptime_s\":%llu,\"ready\":%s,\"not_ready\":\"",
                      RB_VERSION, (unsigned long long)((rb_now_ms() - st->started_ms) / 1000),
                      ok ? "true" : "false");
        rb_buf_json_escape(&out, why.data ? why.data : "");
        rb_buf_puts(&out, "\"");
        rb_buf_free(&why);
        if (st->info_fn) {
            size_t before = out.len;
            rb_buf_puts(&out, ",");
            st->info_fn(st->info_arg, &out);
            if (out.len == before + 1) rb_buf_consume(&out, 0), out.len = before;
        }
        rb_buf_puts(&out, "}\n");
        rc = s_send(c, MHD_HTTP_OK, "application/json", out.data, out.len);
    } else {
        rc = s_send(c, MHD_HTTP_NOT_FOUND, "text/plain", "not found\n", 10);
    }
    rb_buf_free(&out);
    return rc;
}

static enum MHD_Result s_handle(void *cls, struct MHD_Connection *c, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_size, void **con_cls)
{
    rb_status_t *st = cls;
    req_t *rq = *con_cls;
    if (!rq) {
        rq = calloc(1, sizeof *rq);
        if (!rq) return MHD_NO;
        *con_cls = rq;
        return MHD_YES;
    }
    if (rq->answered) {   /* resumed after rb_status_finish */
        enum MHD_Result rc = s_send(c, (unsigned)rq->code, rq->ctype,
                                    rq->answer.data ? rq->answer.data : "", rq->answer.len);
        rq->answered = false;
        return rc;
    }
    if (*upload_size) {
        if (rq->body.len + *upload_size > MAX_BODY || rb_buf_append(&rq->body, upload, *upload_size) < 0)
            rq->too_large = true;
        *upload_size = 0;
        return MHD_YES;
    }
    rb_metric_inc(st->requests);
    if (rq->too_large) return s_send(c, MHD_HTTP_CONTENT_TOO_LARGE, "text/plain", "body too large\n", 15);

    for (size_t i = 0; i < st->nroutes; i++) {
        route_t *r = &st->routes[i];
        if (strncmp(url, r->prefix, strlen(r->prefix)) != 0) continue;
        if (r->admin && !s_authorized(st, c)) {
            rb_warn("admin_denied", "%s %s without a valid bearer token", method, url);
            return s_send(c, MHD_HTTP_UNAUTHORIZED, "application/json",
                          "{\"error\":\"missing or wrong bearer token\"}\n", 42);
        }
        rb_buf_t out = RB_BUF_INIT;
        const char *ctype = "application/json";
        st->current_conn = c;
        st->current_req = rq;
        st->deferred = NULL;
        int code = r->fn(r->arg, method, url, rq->body.data ? rq->body.data : "", rq->body.len, &out,
                         &ctype);
        st->current_conn = NULL;
        st->current_req = NULL;
        if (st->deferred) {
            st->deferred = NULL;
            rb_buf_free(&out);
            MHD_suspend_connection(c);
            return MHD_YES;
        }
        enum MHD_Result rc = s_send(c, (unsigned)code, ctype, out.data ? out.data : "", out.len);
        rb_buf_free(&out);
        return rc;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return s_send(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n", 19);
    return s_builtin(st, c, url);
}

static void s_done(void *cls, struct MHD_Connection *c, void **con_cls,
                   enum MHD_RequestTerminationCode toe)
{
    req_t *rq = *con_cls;
    if (!rq) return;
    if (rq->pending) rq->pending->req = NULL;   /* rb_status_finish will only free it */
    rb_buf_free(&rq->body);
    rb_buf_free(&rq->answer);
    free(rq);
    *con_cls = NULL;
}

static void s_run(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    rb_status_t *st = arg;
    MHD_run(st->mhd);
}

/* Connection timeouts and deferred work need MHD_run even when no fd fires. */
static void s_tick(rb_loop_t *loop, void *arg)
{
    rb_status_t *st = arg;
    MHD_run(st->mhd);
}

/* A resumed connection is only served by a later MHD_run, which takes more
 * than one pass (the handler is called again, then the answer is sent):
 * run again while MHD says it has work at once, a few times. */
static void s_on_kick(rb_loop_t *loop, void *arg)
{
    rb_status_t *st = arg;
    MHD_run(st->mhd);
    MHD_UNSIGNED_LONG_LONG ms = 1;
    if (++st->kicks < 4 && MHD_get_timeout(st->mhd, &ms) == MHD_YES && ms == 0)
        rb_loop_defer(loop, &st->kick, s_on_kick, st);
    else
        st->kicks = 0;
}

static int s_parse_listen(const char *listen, struct sockaddr_in *sa)
{
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen) return -1;
    char host[64];
    size_t hl = (size_t)(colon - listen);
    if (hl >= sizeof host) return -1;
    memcpy(host, listen, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) return -1;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (strcmp(host, "*") == 0 || strcmp(host, "0.0.0.0") == 0) {
        sa->sin_addr.s_addr = htonl(INADDR_ANY);
        return 0;
    }
    if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

rb_status_t *rb_status_new(rb_loop_t *loop, const char *listen, const char *service)
{
    struct sockaddr_in sa;
    if (s_parse_listen(listen, &sa) < 0) {
        rb_error("status_listen_invalid", "status_listen '%s' is not host:port (IPv4)", listen);
        return NULL;
    }
    rb_status_t *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->loop = loop;
    st->epfd = -1;
    st->service = strdup(service);
    st->started_ms = rb_now_ms();
    st->requests = rb_counter("reachback_status_http_requests_total", NULL,
                              "Requests answered by the status HTTP server");
    st->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME, 0, NULL, NULL, s_handle, st,
                               MHD_OPTION_EXTERNAL_LOGGER, s_log, NULL,
                               MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                               MHD_OPTION_NOTIFY_COMPLETED, s_done, st,
                               MHD_OPTION_CONNECTION_LIMIT, (unsigned)128,
                               /* Slow clients from one address must not take
                                * the probes' connections. */
                               MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)16,
                               MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                               MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(128 * 1024),
                               MHD_OPTION_END);
    if (!st->mhd) {
        rb_error("status_listen_failed", "cannot serve status HTTP on %s", listen);
        rb_status_destroy(&st);
        return NULL;
    }
    const union MHD_DaemonInfo *ep = MHD_get_daemon_info(st->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    const union MHD_DaemonInfo *pi = MHD_get_daemon_info(st->mhd, MHD_DAEMON_INFO_BIND_PORT);
    st->port = pi ? pi->port : ntohs(sa.sin_port);
    if (!ep || rb_loop_add_fd(loop, ep->epoll_fd, RB_EV_READ, s_run, st) < 0 ||
        !(st->tick = rb_loop_add_timer(loop, 200, true, s_tick, st))) {
        rb_error("status_listen_failed", "cannot watch the status HTTP server");
        rb_status_destroy(&st);
        return NULL;
    }
    st->epfd = ep->epoll_fd;
    rb_info("status_listening", "status HTTP on %s port %d", listen, st->port);
    return st;
}

void rb_status_destroy(rb_status_t **stp)
{
    if (!stp || !*stp) return;
    rb_status_t *st = *stp;
    if (st->epfd >= 0) rb_loop_del_fd(st->loop, st->epfd);
    rb_loop_cancel_timer(st->loop, st->tick);
    /* libmicrohttpd must not be stopped with suspended connections. */
    while (st->waiting)
        rb_status_finish(st->waiting, 503, "text/plain", "shutting down\n", 14);
    rb_loop_undefer(st->loop, &st->kick);
    if (st->mhd) MHD_stop_daemon(st->mhd);
    for (size_t i = 0; i < st->nroutes; i++) free(st->routes[i].prefix);
    free(st->service);
    free(st->admin_token);
    free(st);
    *stp = NULL;
}

int rb_status_port(const rb_status_t *st) { return st->port; }

void rb_status_set_ready(rb_status_t *st, rb_ready_fn *fn, void *arg)
{
    st->ready_fn = fn;
    st->ready_arg = arg;
}

void rb_status_set_info(rb_status_t *st, rb_status_info_fn *fn, void *arg)
{
    st->info_fn = fn;
    st->info_arg = arg;
}

void rb_status_set_admin_token(rb_status_t *st, const char *token)
{
    free(st->admin_token);
    st->admin_token = token && *token ? strdup(token) : NULL;
}

int rb_status_add_route(rb_status_t *st, const char *path_prefix, bool admin, rb_route_fn *fn,
                        void *arg)
{
    if (st->nroutes == MAX_ROUTES) return -1;
    char *p = strdup(path_prefix);
    if (!p) return -1;
    st->routes[st->nroutes++] = (route_t){p, admin, fn, arg};
    return 0;
}

rb_status_pending_t *rb_status_defer(rb_status_t *st)
{
    if (!st->current_conn || st->deferred) return NULL;
    rb_status_pending_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->st = st;
    p->conn = st->current_conn;
    p->req = st->current_req;
    p->next = st->waiting;
    if (p->next) p->next->prev = p;
    st->waiting = p;
    p->req->pending = p;
    st->deferred = p;
    return p;
}

void rb_status_finish(rb_status_pending_t *p, int code, const char *ctype, const char *body,
                      size_t len)
{
    if (!p) return;
    if (p->prev) p->prev->next = p->next;
    else p->st->waiting = p->next;
    if (p->next) p->next->prev = p->prev;
    req_t *rq = p->req;
    if (rq) {
        rq->pending = NULL;
        rq->answered = true;
        rq->code = code;
        rq->ctype = ctype;
        rb_buf_reset(&rq->answer);
        if (rb_buf_append(&rq->answer, body ? body : "", body ? len : 0) < 0) {
            rq->code = 500;
            rq->ctype = "text/plain";
        }
        /* MHD calls the handler again for this request, which sends it. */
        MHD_resume_connection(p->conn);
        p->st->kicks = 0;
        rb_loop_defer(p->st->loop, &p->st->kick, s_on_kick, p->st);
    }
    free(p);
}
