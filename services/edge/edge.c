/* edge: the service object (edge.h): config, the listener and the table
 * of connections, status and metrics. The dialogue with each device lives
 * in edge_conn.c. */
#include "edge.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "edge_auth.h"
#include "edge_broker.h"
#include "edge_conn.h"
#include "edge_ratelimit.h"
#include "rb_smap.h"
#include "edge_users.h"
#include "rb_cli.h"
#include "rb_events.h"
#include "rb_log.h"
#include "rb_status.h"
#include "rb_tls.h"
#include "rb_zmq.h"

/* After SIGTERM, devices get this long to take their SessionClosed. */
#define SHUTDOWN_GRACE_MS 2000
/* accept() failing for lack of descriptors is retried after this pause
 * (the listener stays readable, so retrying at once would spin). */
#define ACCEPT_PAUSE_MS 100
/* Session ids per RefreshRequest: 5000 ids of ~40 bytes stay far below
 * RB_PB_MAX_MESSAGE, and one message stays cheap for the broker. */
#define REFRESH_BATCH 5000

const rb_option_t edge_options[] = {
    RB_OPT_COMMON(edge_config_t),
    {"edge_id", RB_OPT_STRING, "", offsetof(edge_config_t, edge_id), 0, 0,
     "this edge's name in sessions and logs; empty: the host name"},
    {"listen", RB_OPT_STRING, "127.0.0.1:8443", offsetof(edge_config_t, listen), 0, 0,
     "host:port of the TLS tunnel listener (port 0: any free port, logged)"},
    {"tls_cert", RB_OPT_STRING, NULL, offsetof(edge_config_t, tls_cert), 0, 0,
     "PEM certificate chain of the edge"},
    {"tls_key", RB_OPT_STRING, NULL, offsetof(edge_config_t, tls_key), 0, 0,
     "PEM private key of tls_cert"},
    {"tls_client_ca", RB_OPT_STRING, "", offsetof(edge_config_t, tls_client_ca), 0, 0,
     "CA whose client certificates are requested and verified; empty: none"},
    {"users_file", RB_OPT_STRING, NULL, offsetof(edge_config_t, users_file), 0, 0,
     "users and password hashes, lines 'name:$scrypt$...' (reachback-ctl passwd)"},
    {"broker_endpoint", RB_OPT_STRING, NULL, offsetof(edge_config_t, broker_endpoint), 0, 0,
     "ZeroMQ endpoint(s) of the broker(s), comma-separated"},
    {"broker_public_key", RB_OPT_STRING, "", offsetof(edge_config_t, broker_public_key), 0, 0,
     "key file holding the brokers' CURVE public key (needed with curve_secret_key)"},
    {"curve_secret_key", RB_OPT_STRING, "", offsetof(edge_config_t, curve_secret_key), 0, 0,
     "our CURVE secret key file; empty for links in the clear (ipc://)"},
    {"keepalive_s", RB_OPT_INT, "15", offsetof(edge_config_t, keepalive_s), 1, 3600,
     "devices ping at least this often; silent for 3 times this: closed"},
    {"auth_threads", RB_OPT_INT, "2", offsetof(edge_config_t, auth_threads), 1, 64,
     "threads checking passwords (scrypt)"},
    {"auth_max_failures", RB_OPT_INT, "5", offsetof(edge_config_t, auth_max_failures), 1,
     EDGE_RL_MAX_FAILURES,
     "failed (or still checked) logons per user name per window before a lockout"},
    {"auth_max_failures_per_addr", RB_OPT_INT, "20",
     offsetof(edge_config_t, auth_max_failures_per_addr), 1, EDGE_RL_MAX_FAILURES,
     "failed (or still checked) logons per source address per window before a lockout"},
    {"auth_window_s", RB_OPT_INT, "60", offsetof(edge_config_t, auth_window_s), 1, 86400,
     "the sliding window failures are counted in (seconds)"},
    {"auth_lockout_s", RB_OPT_INT, "60", offsetof(edge_config_t, auth_lockout_s), 0, 86400,
     "how long a locked-out user or address is refused without a check (seconds)"},
    {"max_connections", RB_OPT_INT, "20000", offsetof(edge_config_t, max_connections), 1, 10000000,
     "tunnel connections held at once; more are closed at accept"},
    {"refresh_s", RB_OPT_INT, "5", offsetof(edge_config_t, refresh_s), 1, 300,
     "tell the broker this often which sessions are carried here (seconds); keep it well "
     "under the broker's session_timeout"},
    {"events_endpoints", RB_OPT_STRING, "", offsetof(edge_config_t, events_endpoints), 0, 0,
     "the brokers' session event PUB endpoints, comma-separated (CURVE as for "
     "broker_endpoint); empty: no event stream, sessions ended elsewhere reach devices "
     "only through refresh"},
    {"snapshot_endpoints", RB_OPT_STRING, "", offsetof(edge_config_t, snapshot_endpoints), 0, 0,
     "the brokers' snapshot ROUTER endpoints, comma-separated (with events_endpoints)"},
    {"forwarder_endpoints", RB_OPT_STRING, "", offsetof(edge_config_t, forwarder_endpoints), 0, 0,
     "the forwarders' data links, comma-separated (tcp:// with CURVE, ipc://, or inproc:// "
     "in reachback-gateway); empty: "
     "devices' streams are refused"},
    {"forwarder_public_key", RB_OPT_STRING, "", offsetof(edge_config_t, forwarder_public_key), 0, 0,
     "key file holding the forwarders' CURVE public key (with curve_secret_key and tcp://)"},
    {"max_streams", RB_OPT_INT, "256", offsetof(edge_config_t, max_streams), 1, 1000000,
     "streams and flows at most per tunnel"},
    RB_OPT_END,
};

int edge_config_validate(void *cfgp, char *err, size_t errlen)
{
    edge_config_t *cfg = cfgp;
    if (*cfg->curve_secret_key && !*cfg->broker_public_key) {
        snprintf(err, errlen, "key 'broker_public_key': required with curve_secret_key");
        return -1;
    }
    if (!*cfg->events_endpoints != !*cfg->snapshot_endpoints) {
        snprintf(err, errlen, "key '%s': required with %s",
                 *cfg->events_endpoints ? "snapshot_endpoints" : "events_endpoints",
                 *cfg->events_endpoints ? "events_endpoints" : "snapshot_endpoints");
        return -1;
    }
    if (*cfg->curve_secret_key && *cfg->forwarder_endpoints && !*cfg->forwarder_public_key) {
        snprintf(err, errlen, "key 'forwarder_public_key': required with curve_secret_key "
                              "and forwarder_endpoints");
        return -1;
    }
    if (!strchr(cfg->listen, ':')) {
        snprintf(err, errlen, "key 'listen': '%s' is not host:port", cfg->listen);
        return -1;
    }
    return 0;
}

struct edge {
    rb_loop_t *loop;
    const edge_config_t *cfg;
    char forwarder_public[RB_Z85_KEY_LEN + 1];
    edge_link_config_t link_cfg; /* its strings are borrowed by ctx.link */
    char edge_id[256];
    edge_users_t *users;
    rb_curve_t curve;
    edge_ctx_t ctx;
    int lfd;
    int port;
    rb_timer_t *stop_timer;
    rb_timer_t *refresh_timer;
    rb_timer_t *snapshot_done;    /* clears in_snapshot after a reset */
    rb_events_t *events;
    bool in_snapshot;             /* applying a snapshot (see s_ev_up) */
    uint64_t seq_before_snapshot; /* the event seq when it began */
    uint64_t refresh_rounds, refresh_failures, refresh_gone;
    rb_heap_follow_t heap; /* connections: memory goes back after many end */
    rb_status_t *status;
    uint64_t refused;         /* connections over max_connections */
    uint64_t last_refuse_log;
    uint64_t stop_deadline;
    bool stopping;
};


static void s_peer_str(const struct sockaddr_storage *ss, char *out, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?", port[8] = "?";
    getnameinfo((const struct sockaddr *)ss, sizeof *ss, host, sizeof host, port, sizeof port,
                NI_NUMERICHOST | NI_NUMERICSERV);
    snprintf(out, len, ss->ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

/* Accepts until the backlog is empty: one wake-up per burst of devices. */
static void s_on_accept(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    edge_t *e = arg;
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int cfd = accept4(fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR || errno == ECONNABORTED) continue;
            rb_warn("edge_accept", "accept: %s; pausing %d ms", strerror(errno), ACCEPT_PAUSE_MS);
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                rb_loop_pause_fd(loop, fd, ACCEPT_PAUSE_MS);
            return;
        }
        if (e->ctx.connections >= (size_t)e->cfg->max_connections) {
            close(cfd);
            e->refused++;
            if (rb_now_ms() - e->last_refuse_log >= 1000) {
                e->last_refuse_log = rb_now_ms();
                rb_warn("edge_full", "max_connections (%ld) reached; %llu refused so far",
                        e->cfg->max_connections, (unsigned long long)e->refused);
            }
            continue;
        }
        char peer[64];
        s_peer_str(&ss, peer, sizeof peer);
        if (!edge_conn_new(&e->ctx, cfd, peer))
            rb_warn("edge_accept", "cannot set up the connection from %s", peer);
    }
}

/* Binds host:port ("[v6]:port" too). The socket, or -1 (logged). */
static int s_listen(const char *hostport, int *port_out)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    size_t hl = colon ? (size_t)(colon - hostport) : 0;
    if (!colon || hl >= sizeof host) {
        rb_error("edge_listen", "listen '%s' is not host:port", hostport);
        return -1;
    }
    memcpy(host, hostport, hl);
    host[hl] = '\0';
    char *h = host;
    if (*h == '[' && hl >= 2 && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(*h ? h : NULL, colon + 1, &hints, &ai);
    if (gai != 0) {
        rb_error("edge_listen", "listen '%s': %s", hostport, gai_strerror(gai));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
        rb_error("edge_listen", "listen '%s': %s", hostport, strerror(errno));
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

static void s_metric_family(rb_metric_t **out, int n, const char *const *names,
                            const char *metric, const char *label, const char *help)
{
    for (int i = 0; i < n; i++) {
        char labels[64];
        snprintf(labels, sizeof labels, "%s=\"%s\"", label, names[i]);
        out[i] = rb_counter(metric, labels, help);
    }
}

static void s_metrics(edge_ctx_t *ctx)
{
    ctx->m_connections =
        rb_gauge("reachback_edge_connections", NULL, "Tunnel connections open on this edge");
    ctx->m_sessions = rb_gauge("reachback_edge_sessions", NULL,
                               "Logged-on sessions whose tunnel ends on this edge");
    ctx->m_protocol_errors = rb_counter("reachback_tunnel_protocol_errors_total", NULL,
                                        "Connections closed for breaking the tunnel protocol");
    ctx->m_logon_duration = rb_histogram("reachback_logon_duration_seconds", NULL,
                                         "Time from Logon to LogonOk, successful logons");
    s_metric_family(ctx->m_logons, EDGE_LOGON_NRESULTS, edge_logon_result_names,
                    "reachback_logons_total", "result", "Logon attempts by result");
    s_metric_family(ctx->m_resumes, EDGE_RESUME_NRESULTS, edge_resume_result_names,
                    "reachback_edge_resumes_total", "result", "Resume attempts by result");
    s_metric_family(ctx->m_transfers, EDGE_TRANSFER_NRESULTS, edge_transfer_result_names,
                    "reachback_edge_transfers_total", "result",
                    "Transfer offers answered on this edge, by result");
    s_metric_family(ctx->m_kicks, EDGE_KICK_NREASONS, edge_kick_reason_names,
                    "reachback_edge_kicks_total", "reason",
                    "Tunnels closed because their session ended elsewhere, by reason");
}

/* ------------------------------------------------------------------ */
/* Refresh: tell the broker which sessions are carried here            */

static void s_on_refresh_reply(void *arg, const Rb__Edgebroker__RefreshReply *r)
{
    edge_t *e = arg;
    if (!r) {
        e->refresh_failures++;
        return;
    }
    for (size_t i = 0; i < r->n_gone; i++) {
        if (!r->gone[i]) continue;
        edge_conn_t *c = rb_smap_get(e->ctx.by_session, r->gone[i]);
        if (!c) continue;
        e->refresh_gone++;
        /* The event that ended it did not reach us (a broker restarted, a
         * snapshot came instead): the broker still tells why. */
        const char *why = i < r->n_reasons && r->reasons[i] ? r->reasons[i] : "";
        if (strcmp(why, "moved") == 0)
            edge_conn_kick(c, RB__TUNNEL__CLOSE_REASON__CLOSE_REPLACED,
                           "the session resumed on another edge");
        else if (*why)
            edge_conn_end(c, why);
        else
            edge_conn_kick(c, RB__TUNNEL__CLOSE_REASON__CLOSE_EXPIRED, "session expired");
    }
}

static void s_on_refresh(rb_loop_t *loop, void *arg)
{
    edge_t *e = arg;
    if (e->stopping) return;
    const char *ids[REFRESH_BATCH];
    size_t n = 0;
    bool sent = false;
    unsigned timeout_ms = (unsigned)e->cfg->refresh_s * 1000;
    e->refresh_rounds++;
    if (rb_cli_heap_follow(&e->heap, e->ctx.connections))
        rb_debug("heap_trimmed", "%zu connections now", e->ctx.connections);
    /* An empty request still says "this edge is alive and carries
     * nothing", which costs the broker nothing to hear. */
    for (edge_conn_t *c = e->ctx.head;; c = edge_conn_next(c)) {
        const char *id = c ? edge_conn_session_id(c) : NULL;
        if (id) ids[n++] = id;
        if (n == REFRESH_BATCH || (!c && (n > 0 || !sent))) {
            if (edge_broker_refresh(e->ctx.broker, ids, n, timeout_ms, s_on_refresh_reply, e) < 0)
                e->refresh_failures++;
            n = 0;
            sent = true;
        }
        if (!c) break;
    }
}

/* ------------------------------------------------------------------ */
/* The session event stream: sessions ended or moved elsewhere         */

static void s_snapshot_done(rb_loop_t *loop, void *arg)
{
    edge_t *e = arg;
    e->snapshot_done = NULL;
    e->in_snapshot = false;
    /* The sequence went backwards (Redis lost or reset its data): the
     * up_seq our tunnels got are of the old numbering and would make every
     * new UP look older than them. Forget them; the stale-UP rule then
     * simply does not apply to these tunnels. */
    if (e->events && rb_events_seq(e->events) < e->seq_before_snapshot) {
        rb_info("events_seq_backwards",
                "event sequence went from %llu to %llu; forgetting our "
                "tunnels' UP seqs",
                (unsigned long long)e->seq_before_snapshot,
                (unsigned long long)rb_events_seq(e->events));
        for (edge_conn_t *c = e->ctx.head; c; c = edge_conn_next(c))
            edge_conn_forget_up_seq(c);
    }
}

/* A snapshot is applied in one go (reset, then every session, then the
 * events buffered meanwhile) from one loop callback; the flag lasts until
 * the loop's next turn. */
static void s_ev_reset(void *arg)
{
    edge_t *e = arg;
    if (!e->in_snapshot) e->seq_before_snapshot = e->events ? rb_events_seq(e->events) : 0;
    e->in_snapshot = true;
    if (!e->snapshot_done) e->snapshot_done = rb_loop_add_timer(e->loop, 0, false, s_snapshot_done, e);
    if (!e->snapshot_done) e->in_snapshot = false;
}

/* A session carried here that comes UP on another edge resumed there (its
 * device moved before this connection was noticed dead): close ours, as
 * REPLACED. Not while a snapshot is applied: a snapshot may be older than
 * a resume that just landed here, and would close a live tunnel. Nor for
 * an UP older than our own: events and RPC replies travel apart, so a
 * device that left and came back quickly has its resume here answered
 * before the event of its visit elsewhere arrives. */
static void s_ev_up(void *arg, uint64_t seq, const Rb__Events__Session *s)
{
    edge_t *e = arg;
    if (e->in_snapshot || !s->session_id || !s->edge_id) return;
    edge_conn_t *c = rb_smap_get(e->ctx.by_session, s->session_id);
    if (!c || strcmp(s->edge_id, e->edge_id) == 0) return;
    if (seq <= edge_conn_up_seq(c)) {
        rb_info("stale_up_ignored",
                "session %s: UP on edge %s (seq %llu) is older than ours (seq "
                "%llu)",
                s->session_id, s->edge_id, (unsigned long long)seq,
                (unsigned long long)edge_conn_up_seq(c));
        return;
    }
    char msg[320];
    snprintf(msg, sizeof msg, "the session resumed on edge %s", s->edge_id);
    edge_conn_kick(c, RB__TUNNEL__CLOSE_REASON__CLOSE_REPLACED, msg);
}

static void s_ev_down(void *arg, const Rb__Events__Session *s, const char *reason)
{
    edge_t *e = arg;
    if (!s->session_id) return;
    /* Noted even when a connection here carries it: a resume of it may be
     * at the broker, its answer still on the way. */
    edge_ended_note(e->ctx.ended, s->session_id, reason);
    edge_conn_t *c = rb_smap_get(e->ctx.by_session, s->session_id);
    if (c) edge_conn_end(c, reason);
}

static const rb_events_handlers_t s_ev_handlers = {s_ev_reset, s_ev_up, s_ev_down};

bool edge_ready(void *arg, rb_buf_t *why)
{
    edge_t *e = arg;
    if (e->lfd < 0) {
        rb_buf_puts(why, "tunnel listener not bound");
        return false;
    }
    if (!edge_broker_ready(e->ctx.broker)) {
        rb_buf_puts(why, "no broker answered a ping in the last 3 s");
        return false;
    }
    if (e->events && !rb_events_ready(e->events)) {
        rb_buf_puts(why, "the session event stream has no snapshot or is silent");
        return false;
    }
    return true;
}

void edge_status_json(void *arg, rb_buf_t *json)
{
    edge_t *e = arg;
    rb_buf_puts(json, "\"edge_id\":\"");
    rb_buf_json_escape(json, e->edge_id);
    rb_buf_printf(json,
                  "\",\"tunnel_port\":%d,\"connections\":%zu,\"sessions\":%zu,\"auth_queue\":%zu,"
                  "\"broker_pending\":%zu,\"broker_ready\":%s,\"users\":%zu,"
                  "\"ratelimit_users\":%zu,\"ratelimit_addrs\":%zu,\"refused_full\":%llu,"
                  "\"events\":%s,\"events_seq\":%llu,\"refresh_rounds\":%llu,"
                  "\"refresh_failures\":%llu,\"refresh_gone\":%llu",
                  e->port, e->ctx.connections, e->ctx.sessions, edge_auth_pending(e->ctx.auth),
                  edge_broker_pending(e->ctx.broker),
                  edge_broker_ready(e->ctx.broker) ? "true" : "false",
                  edge_users_count(e->users), edge_rl_users(e->ctx.rl), edge_rl_addrs(e->ctx.rl),
                  (unsigned long long)e->refused,
                  !e->events ? "\"off\"" : rb_events_ready(e->events) ? "\"ready\"" : "\"waiting\"",
                  (unsigned long long)(e->events ? rb_events_seq(e->events) : 0),
                  (unsigned long long)e->refresh_rounds, (unsigned long long)e->refresh_failures,
                  (unsigned long long)e->refresh_gone);
    if (e->ctx.link) {
        rb_buf_puts(json, ",");
        edge_link_status_json(e->ctx.link, json);
    }
}

edge_t *edge_new(rb_loop_t *loop, const edge_config_t *cfg)
{
    edge_t *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->loop = loop;
    e->cfg = cfg;
    e->lfd = -1;
    if (*cfg->edge_id) {
        snprintf(e->edge_id, sizeof e->edge_id, "%s", cfg->edge_id);
    } else if (gethostname(e->edge_id, sizeof e->edge_id - 1) < 0) {
        snprintf(e->edge_id, sizeof e->edge_id, "edge");
    }
    char err[512];
    edge_ctx_t *ctx = &e->ctx;
    ctx->loop = loop;
    ctx->edge_id = e->edge_id;
    ctx->keepalive_s = (unsigned)cfg->keepalive_s;
    s_metrics(ctx);

    e->users = edge_users_load(cfg->users_file, err, sizeof err);
    if (!e->users) {
        rb_error("edge_users", "%s", err);
        goto fail;
    }
    ctx->users = e->users;
    ctx->by_session = rb_smap_new();
    /* Every end seen in the last 10 s, up to 4096: far more than the
     * transfers and resumes that can be in flight at once. */
    ctx->ended = edge_ended_new(4096, 10000);
    if (!ctx->by_session || !ctx->ended) goto fail;
    ctx->tls = rb_tls_server_ctx(cfg->tls_cert, cfg->tls_key,
                                 *cfg->tls_client_ca ? cfg->tls_client_ca : NULL, 0, err,
                                 sizeof err);
    if (!ctx->tls) {
        rb_error("edge_tls", "%s", err);
        goto fail;
    }
    edge_rl_config_t rlc = {.max_user = (unsigned)cfg->auth_max_failures,
                            .max_addr = (unsigned)cfg->auth_max_failures_per_addr,
                            .window_s = (unsigned)cfg->auth_window_s,
                            .lockout_s = (unsigned)cfg->auth_lockout_s};
    ctx->rl = edge_rl_new(&rlc);
    if (!ctx->rl) {
        rb_error("edge_ratelimit", "cannot set up the rate limiter");
        goto fail;
    }
    ctx->auth = edge_auth_new(loop, e->users, (unsigned)cfg->auth_threads);
    if (!ctx->auth) goto fail;

    char broker_pub[RB_Z85_KEY_LEN + 1] = "";
    if (rb_curve_load(&e->curve, cfg->curve_secret_key, err, sizeof err) < 0 ||
        (e->curve.enabled &&
         rb_curve_read_public(cfg->broker_public_key, broker_pub, err, sizeof err) < 0)) {
        rb_error("edge_curve", "%s", err);
        goto fail;
    }
    ctx->broker = edge_broker_new(loop, cfg->broker_endpoint, &e->curve, broker_pub, e->edge_id);
    if (!ctx->broker) goto fail;
    if (e->curve.enabled && *cfg->forwarder_public_key &&
        rb_curve_read_public(cfg->forwarder_public_key, e->forwarder_public, err, sizeof err) < 0) {
        rb_error("edge_curve", "forwarder_public_key: %s", err);
        goto fail;
    }
    e->link_cfg = (edge_link_config_t){.endpoints = cfg->forwarder_endpoints,
                                       .curve = &e->curve,
                                       .forwarder_public = e->forwarder_public,
                                       .edge_id = e->edge_id,
                                       .max_streams = (unsigned)cfg->max_streams};
    ctx->link = edge_link_new(loop, &e->link_cfg);
    if (!ctx->link) goto fail;
    e->refresh_timer = rb_loop_add_timer(loop, (uint64_t)cfg->refresh_s * 1000, true,
                                         s_on_refresh, e);
    if (!e->refresh_timer) goto fail;
    if (*cfg->events_endpoints) {
        rb_events_config_t ec = {.pub_endpoints = cfg->events_endpoints,
                                 .snapshot_endpoints = cfg->snapshot_endpoints,
                                 .curve = &e->curve,
                                 .broker_public_key = e->curve.enabled ? broker_pub : NULL,
                                 .name = e->edge_id};
        e->events = rb_events_new(loop, &ec, &s_ev_handlers, e);
        if (!e->events) goto fail;
    } else {
        rb_warn("edge_no_events", "no events_endpoints: sessions transferred or kicked "
                "elsewhere reach their devices only at the next refresh (%ld s)", cfg->refresh_s);
    }

    e->lfd = s_listen(cfg->listen, &e->port);
    if (e->lfd < 0 || rb_loop_add_fd(loop, e->lfd, RB_EV_READ, s_on_accept, e) < 0) goto fail;
    rb_info("edge_listening", "tunnel on %s port %d (edge %s, %zu users)", cfg->listen, e->port,
            e->edge_id, edge_users_count(e->users));

    e->status = rb_status_new(loop, cfg->status_listen, "edge");
    if (!e->status) goto fail;
    rb_status_set_ready(e->status, edge_ready, e);
    rb_status_set_info(e->status, edge_status_json, e);
    return e;
fail:
    edge_destroy(&e);
    return NULL;
}

static void s_close_listener(edge_t *e)
{
    if (e->lfd >= 0) {
        rb_loop_del_fd(e->loop, e->lfd);
        close(e->lfd);
        e->lfd = -1;
    }
}

void edge_destroy(edge_t **ep)
{
    if (!ep || !*ep) return;
    edge_t *e = *ep;
    rb_loop_cancel_timer(e->loop, e->stop_timer);
    rb_loop_cancel_timer(e->loop, e->refresh_timer);
    rb_loop_cancel_timer(e->loop, e->snapshot_done);
    s_close_listener(e);
    rb_status_destroy(&e->status);
    rb_events_destroy(&e->events);
    while (e->ctx.head) {
        edge_conn_t *c = e->ctx.head;
        edge_conn_destroy(&c);
    }
    /* Threads first: nothing may finish a check into a freed table. */
    edge_auth_destroy(&e->ctx.auth);
    edge_link_destroy(&e->ctx.link);
    edge_broker_destroy(&e->ctx.broker);
    edge_rl_destroy(&e->ctx.rl);
    rb_smap_destroy(&e->ctx.by_session);
    edge_ended_destroy(&e->ctx.ended);
    if (e->ctx.tls) SSL_CTX_free(e->ctx.tls);
    edge_users_destroy(&e->users);
    free(e);
    *ep = NULL;
}

static void s_stop_check(rb_loop_t *loop, void *arg)
{
    edge_t *e = arg;
    if (e->ctx.connections == 0 || rb_now_ms() >= e->stop_deadline) {
        rb_loop_cancel_timer(loop, e->stop_timer);
        e->stop_timer = NULL;
        rb_loop_stop(loop);
    }
}

void edge_shutdown(edge_t *e)
{
    if (e->stopping) return;
    e->stopping = true;
    rb_info("edge_stopping", "closing %zu connections (%zu sessions)", e->ctx.connections,
            e->ctx.sessions);
    s_close_listener(e);
    for (edge_conn_t *c = e->ctx.head; c; c = edge_conn_next(c)) edge_conn_shutdown(c);
    e->stop_deadline = rb_now_ms() + SHUTDOWN_GRACE_MS;
    e->stop_timer = rb_loop_add_timer(e->loop, 20, true, s_stop_check, e);
    if (!e->stop_timer) rb_loop_stop(e->loop);
}

int edge_port(const edge_t *e) { return e->port; }

static void s_on_stop_signal(rb_loop_t *loop, int signo, void *arg)
{
    edge_t **edge = arg;
    rb_info("edge_signal", "signal %d", signo);
    if (*edge) edge_shutdown(*edge);
}

int edge_watch_signals(rb_loop_t *loop, edge_t **edge)
{
    return rb_loop_add_signal(loop, SIGINT, s_on_stop_signal, edge) < 0 ||
                   rb_loop_add_signal(loop, SIGTERM, s_on_stop_signal, edge) < 0
               ? -1
               : 0;
}

void edge_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            rb_warn("edge_rlimit", "cannot raise the descriptor limit");
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        rb_info("edge_rlimit", "descriptor limit %llu", (unsigned long long)rl.rlim_cur);
}
