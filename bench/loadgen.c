/* reachback-loadgen: many tunnel sessions from one process and one loop, for
 * the benchmarks in bench/. Each session connects, completes the TLS
 * handshake, says Hello, logs on as <prefix><i> and waits for LogonOk; with
 * --dns it then polls the DNS service over UDP until the session's name
 * answers with the session's IP. The latency of a complete logon runs from
 * the TCP connect to that moment. With --hold the sessions then stay open and
 * idle (answering pings, sending keepalives) before everyone logs off.
 *
 * One summary line of JSON goes to stdout at the end; logs (rb_log) go there
 * too, one JSON object a line, so scripts take the line with "logons_per_s".
 *
 * --tls-only stops after the handshake and holds the bare TLS connections:
 * that is how the benchmarks load a peer TLS server (stunnel) the same way.
 *
 * --resume-server: a held session whose connection drops (its edge died)
 * comes back through that edge with Resume{session_id, resume_token}, as a
 * device would, --concurrency at a time; the summary then tells how many
 * resumed, how fast, and how long from the first drop to the last resume. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "rb_cursor.h"
#include "rb_frame.h"
#include "rb_label.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_tconn.h"
#include "rb_tls.h"

#define MAX_REASONS 32
#define DNS_RETRANSMIT_MS 200   /* no answer at all: ask again */
#define DNS_MAX_MSG 512

typedef enum { S_IDLE, S_TLS, S_HELLO, S_LOGON, S_DNS, S_UP, S_LOGOFF, S_DONE, S_RWAIT } sst_t;
typedef enum { P_LOGON, P_HOLD, P_LOGOFF, P_END } phase_t;

typedef struct lg lg_t;

typedef struct {
    lg_t *lg;
    unsigned idx;
    sst_t st;
    rb_tconn_t *c;
    rb_timer_t *deadline;   /* logon or logoff must finish by then */
    rb_timer_t *timer;      /* DNS poll, or keepalive */
    uint64_t t0_us;
    uint64_t t_logon_us;    /* LogonOk received */
    struct in_addr ip;
    char *fqdn;
    int dns_id;             /* -1: none assigned */
    uint32_t keepalive_ms;
    uint64_t nonce;
    char *sid, *token;      /* from LogonOk, for --resume-server */
    bool resuming;          /* S_TLS..S_LOGON belong to a resume */
    uint64_t t_drop_us;
} sess_t;

typedef struct {
    char name[48];
    unsigned n;
} reason_t;

struct lg {
    /* options */
    const char *server, *ca, *prefix, *verify_name, *ready_file, *sessions_file;
    const char *resume_server, *resumed_file;
    char password[256];
    unsigned count, first, concurrency;
    unsigned timeout_ms, logoff_timeout_ms, dns_poll_ms;
    double hold_s, duration_s;
    bool tls_only;
    bool dns;
    struct sockaddr_in dns_addr;
    const char *suffix;

    rb_loop_t *loop;
    SSL_CTX *ctx;
    sess_t *s;
    phase_t phase;
    unsigned next;          /* next session to start (logon or logoff) */
    unsigned in_flight;     /* sessions in S_TLS..S_DNS, or S_LOGOFF */
    unsigned up;            /* sessions in S_UP */
    unsigned ok, dropped, logged_off;
    uint32_t *lat_us, *logon_us, *dns_us;   /* per complete logon */
    reason_t reasons[MAX_REASONS];
    unsigned n_reasons;
    reason_t off_reasons[MAX_REASONS];      /* logoff problems */
    unsigned n_off_reasons;
    uint64_t t_start_us, t_end_us;
    int dns_fd;
    sess_t *by_id[65536];
    unsigned next_id;
    rb_timer_t *phase_timer;   /* end of hold, or end of the logoff grace */
    int signals;
    /* --resume-server */
    unsigned *rqueue, rq_head, rq_len;   /* dropped sessions waiting to resume */
    unsigned r_in_flight, r_dropped, resumed, r_failed, r_wrote;
    uint32_t *resume_us;                 /* drop -> LogonOk, per resume */
    reason_t r_reasons[MAX_REASONS];
    unsigned n_r_reasons;
    uint64_t t_first_drop_us, t_last_resume_us;
};

static void s_start_more(lg_t *lg);
static void s_arm_keepalive(sess_t *s);
static void s_check_phase(lg_t *lg);
static void s_logoff_phase(lg_t *lg, const char *why);
static void s_start_resumes(lg_t *lg);
static void s_resume_settled(lg_t *lg);

static uint64_t s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* The table's last slot is kept for "other", so it never overflows. */
static void s_count(reason_t *tab, unsigned *n, const char *why)
{
    for (int pass = 0; pass < 2; pass++) {
        for (unsigned i = 0; i < *n; i++)
            if (strcmp(tab[i].name, why) == 0) {
                tab[i].n++;
                return;
            }
        if (*n < MAX_REASONS - 1) break;
        why = "other";
    }
    snprintf(tab[*n].name, sizeof tab[*n].name, "%s", why);
    tab[(*n)++].n = 1;
}

static void s_cancel_timers(sess_t *s)
{
    rb_loop_cancel_timer(s->lg->loop, s->deadline);
    s->deadline = NULL;
    rb_loop_cancel_timer(s->lg->loop, s->timer);
    s->timer = NULL;
}

static void s_release_id(sess_t *s)
{
    if (s->dns_id >= 0) s->lg->by_id[s->dns_id] = NULL;
    s->dns_id = -1;
}

/* Counts why a logon did not complete and drops the session, nothing more. */
static void s_abort(sess_t *s, const char *why)
{
    s_count(s->lg->reasons, &s->lg->n_reasons, why);
    s_cancel_timers(s);
    s_release_id(s);
    rb_tconn_destroy(&s->c);
    s->st = S_DONE;
}

/* Ends a session that never completed its logon, and starts the next. */
static void s_fail(sess_t *s, const char *why)
{
    if (s->resuming) {
        lg_t *lg = s->lg;
        s_count(lg->r_reasons, &lg->n_r_reasons, why);
        s_cancel_timers(s);
        rb_tconn_destroy(&s->c);
        s->st = S_DONE;
        s->resuming = false;
        lg->r_in_flight--;
        lg->r_failed++;
        s_start_resumes(lg);
        s_resume_settled(lg);
        s_check_phase(lg);
        return;
    }
    s_abort(s, why);
    s->lg->in_flight--;
    s_start_more(s->lg);
    s_check_phase(s->lg);
}

static void s_complete(sess_t *s)
{
    lg_t *lg = s->lg;
    uint64_t now = s_now_us();
    lg->lat_us[lg->ok] = (uint32_t)(now - s->t0_us);
    lg->logon_us[lg->ok] = (uint32_t)((s->t_logon_us ? s->t_logon_us : now) - s->t0_us);
    lg->dns_us[lg->ok] = s->t_logon_us ? (uint32_t)(now - s->t_logon_us) : 0;
    lg->ok++;
    lg->t_end_us = now;
    s_cancel_timers(s);
    s_release_id(s);
    s->st = S_UP;
    lg->in_flight--;
    lg->up++;
    s_arm_keepalive(s);
    s_start_more(lg);
    s_check_phase(lg);
}

static int s_send(sess_t *s, Rb__Tunnel__TunnelControl *m)
{
    return rb_tconn_send_control(s->c, m);
}

/* ---- keepalive ---------------------------------------------------------- */

static void s_keepalive(rb_loop_t *loop, void *arg);

static void s_arm_keepalive(sess_t *s)
{
    /* Three quarters of the interval the edge asked for, spread by +-10% so
     * that sessions opened together do not ping together forever. */
    uint64_t base = (uint64_t)s->keepalive_ms * 3 / 4;
    uint64_t ms = base * 9 / 10 + (base ? (uint64_t)rand() % (base / 5 + 1) : 0);
    if (ms < 100) ms = 100;
    s->timer = rb_loop_add_timer(s->lg->loop, ms, false, s_keepalive, s);
}

static void s_keepalive(rb_loop_t *loop, void *arg)
{
    sess_t *s = arg;
    s->timer = NULL;
    if (s->st != S_UP) return;
    if (!s->lg->tls_only) {
        Rb__Tunnel__Ping ping = RB__TUNNEL__PING__INIT;
        ping.nonce = ++s->nonce;
        Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
        m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_PING;
        m.ping = &ping;
        s_send(s, &m);
    }
    s_arm_keepalive(s);
}

/* ---- DNS ---------------------------------------------------------------- */

/* Writes an A query for name with the given id into out. Length or -1. */
static int s_dns_query(uint8_t *out, size_t cap, uint16_t id, const char *name)
{
    size_t n = 0;
    if (cap < 12) return -1;
    memset(out, 0, 12);
    out[0] = (uint8_t)(id >> 8);
    out[1] = (uint8_t)id;
    out[5] = 1;   /* QDCOUNT; RD clear: the service is authoritative */
    n = 12;
    const char *p = name;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        if (l == 0 || l > 63 || n + 1 + l + 5 > cap) return -1;
        out[n++] = (uint8_t)l;
        memcpy(out + n, p, l);
        n += l;
        p += l;
        if (*p == '.') p++;
    }
    if (n + 5 > cap) return -1;
    out[n++] = 0;
    out[n++] = 0, out[n++] = 1;   /* QTYPE A */
    out[n++] = 0, out[n++] = 1;   /* QCLASS IN */
    return (int)n;
}

/* Skips a possibly compressed name: a pointer ends it, so no loop. */
static void s_dns_skip_name(rb_cursor_t *c)
{
    for (;;) {
        uint8_t l = rb_cur_u8(c);
        if (c->err || l == 0) return;
        if ((l & 0xC0) == 0xC0) {
            rb_cur_u8(c);
            return;
        }
        if (l & 0xC0) {
            c->err = true;
            return;
        }
        rb_cur_bytes(c, l);
    }
}

static void s_dns_poll(rb_loop_t *loop, void *arg);

static void s_dns_send(sess_t *s)
{
    lg_t *lg = s->lg;
    if (s->dns_id < 0) {
        for (unsigned tries = 0; tries < 65536; tries++) {
            unsigned id = lg->next_id++ & 0xFFFF;
            if (!lg->by_id[id]) {
                lg->by_id[id] = s;
                s->dns_id = (int)id;
                break;
            }
        }
        if (s->dns_id < 0) {
            s_fail(s, "dns_no_id");
            return;
        }
    }
    uint8_t q[DNS_MAX_MSG];
    int n = s_dns_query(q, sizeof q, (uint16_t)s->dns_id, s->fqdn);
    if (n < 0) {
        s_fail(s, "dns_bad_name");
        return;
    }
    /* A full socket buffer is like a lost datagram: the retransmit covers it. */
    (void)send(lg->dns_fd, q, (size_t)n, MSG_DONTWAIT);
    rb_loop_cancel_timer(lg->loop, s->timer);
    s->timer = rb_loop_add_timer(lg->loop, DNS_RETRANSMIT_MS, false, s_dns_poll, s);
}

static void s_dns_poll(rb_loop_t *loop, void *arg)
{
    sess_t *s = arg;
    s->timer = NULL;
    if (s->st == S_DNS) s_dns_send(s);
}

/* One answer: visible when it holds an A record with the session's IP. */
static void s_dns_answer(lg_t *lg, const uint8_t *buf, size_t len)
{
    rb_cursor_t c;
    rb_cur_init(&c, buf, len);
    uint16_t id = rb_cur_u16(&c);
    uint16_t flags = rb_cur_u16(&c);
    uint16_t qd = rb_cur_u16(&c), an = rb_cur_u16(&c);
    rb_cur_u16(&c), rb_cur_u16(&c);
    if (c.err || !(flags & 0x8000)) return;
    sess_t *s = lg->by_id[id];
    if (!s || s->st != S_DNS) return;
    bool visible = false;
    for (unsigned i = 0; i < qd && !c.err; i++) {
        s_dns_skip_name(&c);
        rb_cur_u32(&c);
    }
    if ((flags & 0x000F) == 0) {
        for (unsigned i = 0; i < an && !c.err && !visible; i++) {
            s_dns_skip_name(&c);
            uint16_t type = rb_cur_u16(&c);
            rb_cur_u16(&c);
            rb_cur_u32(&c);
            uint16_t rdlen = rb_cur_u16(&c);
            const uint8_t *rd = rb_cur_bytes(&c, rdlen);
            if (!c.err && type == 1 && rdlen == 4 && memcmp(rd, &s->ip, 4) == 0) visible = true;
        }
    }
    if (visible) {
        s_complete(s);
        return;
    }
    /* Not there yet (NXDOMAIN, or an old address): ask again shortly. */
    rb_loop_cancel_timer(lg->loop, s->timer);
    s->timer = rb_loop_add_timer(lg->loop, lg->dns_poll_ms, false, s_dns_poll, s);
}

static void s_dns_io(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    lg_t *lg = arg;
    uint8_t buf[DNS_MAX_MSG * 8];
    for (int i = 0; i < 256; i++) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) return;   /* EAGAIN, or ICMP unreachable: retransmits cover it */
        s_dns_answer(lg, buf, (size_t)n);
    }
}

/* ---- tunnel ------------------------------------------------------------- */

static void s_on_open(rb_tconn_t *c, void *arg)
{
    sess_t *s = arg;
    if (s->lg->tls_only) {
        s->keepalive_ms = 30000;
        s_complete(s);
        return;
    }
    Rb__Tunnel__Hello hello = RB__TUNNEL__HELLO__INIT;
    hello.version = RB_TUNNEL_VERSION;
    hello.software = "reachback-loadgen " RB_VERSION;
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO;
    m.hello = &hello;
    if (s_send(s, &m) < 0) {
        s_fail(s, "send_hello");
        return;
    }
    s->st = S_HELLO;
}

static void s_lower(char *dst, size_t cap, const char *prefix, const char *name)
{
    snprintf(dst, cap, "%s%s", prefix, name);
    for (char *p = dst; *p; p++)
        if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
}

static void s_on_logon_ok(sess_t *s, const Rb__Tunnel__LogonOk *ok)
{
    lg_t *lg = s->lg;
    s->t_logon_us = s_now_us();
    s->keepalive_ms = ok->keepalive_s ? ok->keepalive_s * 1000u : 30000u;
    if (lg->resume_server) {
        free(s->sid);
        free(s->token);
        s->sid = strdup(ok->session_id ? ok->session_id : "");
        s->token = strdup(ok->resume_token ? ok->resume_token : "");
        if (!s->sid || !s->token) {
            s_fail(s, "out_of_memory");
            return;
        }
    }
    if (inet_pton(AF_INET, ok->ip, &s->ip) != 1) {
        s_fail(s, "logon_ok_bad_ip");
        return;
    }
    const char *name = ok->fqdn;
    char fallback[256];
    if (!name || !*name) {
        /* An edge that leaves out the name: ask for <label>.<suffix>. */
        if (!lg->suffix && lg->dns) {
            s_fail(s, "logon_ok_no_fqdn");
            return;
        }
        char user[64], label[RB_LABEL_MAX + 1];
        snprintf(user, sizeof user, "%s%u", lg->prefix, lg->first + s->idx);
        rb_label_from_user(user, label);
        snprintf(fallback, sizeof fallback, "%s.%s", label, lg->suffix ? lg->suffix : "");
        name = fallback;
    } else if (lg->suffix) {
        size_t nl = strlen(name), sl = strlen(lg->suffix);
        if (nl <= sl || strcmp(name + nl - sl, lg->suffix) != 0 || name[nl - sl - 1] != '.') {
            s_fail(s, "logon_ok_fqdn_not_in_suffix");
            return;
        }
    }
    s->fqdn = strdup(name);
    if (!s->fqdn) {
        s_fail(s, "out_of_memory");
        return;
    }
    if (!lg->dns) {
        s_complete(s);
        return;
    }
    s->st = S_DNS;
    s_dns_send(s);
}

/* ---- resume (--resume-server) ------------------------------------------ */

static void s_session_deadline(rb_loop_t *loop, void *arg);
static const rb_tconn_handlers_t s_handlers;

static void s_queue_resume(sess_t *s)
{
    lg_t *lg = s->lg;
    s->st = S_RWAIT;
    s->t_drop_us = s_now_us();
    if (!lg->t_first_drop_us) lg->t_first_drop_us = s->t_drop_us;
    lg->r_dropped++;
    lg->rqueue[(lg->rq_head + lg->rq_len++) % lg->count] = s->idx;
    s_start_resumes(lg);
}

static void s_start_resumes(lg_t *lg)
{
    while (lg->rq_len > 0 && lg->r_in_flight < lg->concurrency && lg->phase == P_HOLD) {
        sess_t *s = &lg->s[lg->rqueue[lg->rq_head]];
        lg->rq_head = (lg->rq_head + 1) % lg->count;
        lg->rq_len--;
        if (s->st != S_RWAIT) continue;
        s->resuming = true;
        s->st = S_TLS;
        lg->r_in_flight++;
        s->deadline = rb_loop_add_timer(lg->loop, lg->timeout_ms, false, s_session_deadline, s);
        s->c = rb_tconn_dial(lg->loop, lg->ctx, lg->resume_server, lg->verify_name, &s_handlers, s);
        if (!s->c) s_fail(s, "dial");
    }
}

/* Once no session waits or resumes any more, --resumed-file says how it went. */
static void s_resume_settled(lg_t *lg)
{
    if (lg->rq_len || lg->r_in_flight || !lg->r_dropped || lg->r_wrote == lg->r_dropped) return;
    lg->r_wrote = lg->r_dropped;
    double el = lg->t_last_resume_us > lg->t_first_drop_us
                    ? (lg->t_last_resume_us - lg->t_first_drop_us) / 1e6 : 0;
    rb_info("resumed", "%u of %u dropped sessions resumed in %.3f s", lg->resumed, lg->r_dropped, el);
    if (!lg->resumed_file) return;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", lg->resumed_file);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fprintf(f, "{\"dropped\":%u,\"resumed\":%u,\"failed\":%u,\"elapsed_s\":%.3f}\n", lg->r_dropped,
            lg->resumed, lg->r_failed, el);
    fclose(f);
    if (rename(tmp, lg->resumed_file) < 0) rb_warn("resumed_file", "%s: %s", lg->resumed_file, strerror(errno));
}

static void s_on_resumed(sess_t *s, const Rb__Tunnel__LogonOk *ok)
{
    lg_t *lg = s->lg;
    struct in_addr ip;
    if (!ok->ip || inet_pton(AF_INET, ok->ip, &ip) != 1 || ip.s_addr != s->ip.s_addr) {
        s_fail(s, "resume_other_address");
        return;
    }
    if (ok->resume_token && *ok->resume_token) {
        char *t = strdup(ok->resume_token);
        if (t) {
            free(s->token);
            s->token = t;
        }
    }
    uint64_t now = s_now_us();
    lg->resume_us[lg->resumed++] = (uint32_t)(now - s->t_drop_us);
    lg->t_last_resume_us = now;
    s_cancel_timers(s);
    s->resuming = false;
    s->st = S_UP;
    lg->r_in_flight--;
    lg->up++;
    s_arm_keepalive(s);
    s_start_resumes(lg);
    s_resume_settled(lg);
}

static void s_on_frame(rb_tconn_t *c, const rb_frame_t *f, void *arg)
{
    sess_t *s = arg;
    lg_t *lg = s->lg;
    if (f->type != RB_FRAME_CONTROL) return;   /* no streams are opened here */
    Rb__Tunnel__TunnelControl *m = rb_frame_control(f);
    if (!m) {
        if (s->st == S_UP || s->st == S_LOGOFF) return;
        s_fail(s, "bad_control");
        return;
    }
    switch (m->msg_case) {
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO_ACK:
        if (s->st == S_HELLO && s->resuming) {
            Rb__Tunnel__Resume rs = RB__TUNNEL__RESUME__INIT;
            rs.session_id = s->sid;
            rs.resume_token = s->token;
            rs.device = "loadgen";
            Rb__Tunnel__TunnelControl r = RB__TUNNEL__TUNNEL_CONTROL__INIT;
            r.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_RESUME;
            r.resume = &rs;
            if (s_send(s, &r) < 0)
                s_fail(s, "send_resume");
            else
                s->st = S_LOGON;
        } else if (s->st == S_HELLO) {
            char user[64];
            snprintf(user, sizeof user, "%s%u", lg->prefix, lg->first + s->idx);
            Rb__Tunnel__Logon logon = RB__TUNNEL__LOGON__INIT;
            logon.user = user;
            logon.password = lg->password;
            logon.device = "loadgen";
            Rb__Tunnel__TunnelControl r = RB__TUNNEL__TUNNEL_CONTROL__INIT;
            r.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON;
            r.logon = &logon;
            if (s_send(s, &r) < 0)
                s_fail(s, "send_logon");
            else
                s->st = S_LOGON;
        }
        break;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK:
        if (s->st == S_LOGON && s->resuming)
            s_on_resumed(s, m->logon_ok);
        else if (s->st == S_LOGON)
            s_on_logon_ok(s, m->logon_ok);
        break;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED:
        if (s->st == S_LOGON) {
            const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
                &rb__tunnel__fail_reason__descriptor, (int)m->logon_failed->reason);
            char why[64];
            s_lower(why, sizeof why, s->resuming ? "resume_" : "logon_",
                    v ? v->name : "fail_unknown");
            s_fail(s, why);
        }
        break;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_PING: {
        Rb__Tunnel__Pong pong = RB__TUNNEL__PONG__INIT;
        pong.nonce = m->ping->nonce;
        Rb__Tunnel__TunnelControl r = RB__TUNNEL__TUNNEL_CONTROL__INIT;
        r.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_PONG;
        r.pong = &pong;
        s_send(s, &r);
        break;
    }
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED:
        if (s->st == S_LOGOFF) {
            /* The edge closes after it; counting here saves the linger. */
            lg->logged_off++;
            s_cancel_timers(s);
            rb_tconn_destroy(&s->c);
            s->st = S_DONE;
            lg->in_flight--;
            s_start_more(lg);
            s_check_phase(lg);
        } else if (s->st == S_UP) {
            const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
                &rb__tunnel__close_reason__descriptor, (int)m->session_closed->reason);
            char why[64];
            s_lower(why, sizeof why, "closed_", v ? v->name : "close_unknown");
            rb_warn("session_closed", "%s%u: %s: %s", lg->prefix, lg->first + s->idx, why,
                    m->session_closed->message);
            s_count(lg->off_reasons, &lg->n_off_reasons, why);
            lg->dropped++;
            lg->up--;
            s_cancel_timers(s);
            rb_tconn_destroy(&s->c);
            s->st = S_DONE;
            s_check_phase(lg);
        } else if (s->st != S_DONE) {
            s_fail(s, "session_closed_during_logon");
        }
        break;
    default:
        break;
    }
    rb__tunnel__tunnel_control__free_unpacked(m, NULL);
}

static void s_on_close(rb_tconn_t *c, rb_tconn_end_t end, const char *reason, void *arg)
{
    sess_t *s = arg;
    lg_t *lg = s->lg;
    switch (s->st) {
    case S_TLS:
    case S_HELLO:
    case S_LOGON:
    case S_DNS:
        rb_debug("session_failed", "%s%u: %s", lg->prefix, lg->first + s->idx, reason);
        s_fail(s, rb_tconn_end_str(end));
        return;
    case S_UP:
        if (lg->resume_server && lg->phase == P_HOLD) {
            s_cancel_timers(s);
            rb_tconn_destroy(&s->c);
            lg->up--;
            s_queue_resume(s);
            return;
        }
        rb_warn("session_dropped", "%s%u: %s", lg->prefix, lg->first + s->idx, reason);
        s_count(lg->off_reasons, &lg->n_off_reasons, "dropped_while_up");
        lg->dropped++;
        lg->up--;
        break;
    case S_LOGOFF:
        if (lg->tls_only && end == RB_TCONN_LOCAL)
            lg->logged_off++;
        else
            s_count(lg->off_reasons, &lg->n_off_reasons, "closed_without_session_closed");
        lg->in_flight--;
        break;
    default:
        break;
    }
    s_cancel_timers(s);
    rb_tconn_destroy(&s->c);
    s->st = S_DONE;
    s_start_more(lg);
    s_check_phase(lg);
}

static const rb_tconn_handlers_t s_handlers = {s_on_open, s_on_frame, s_on_close, NULL};

static void s_session_deadline(rb_loop_t *loop, void *arg)
{
    sess_t *s = arg;
    s->deadline = NULL;
    static const char *names[] = {"idle", "timeout_tls", "timeout_hello", "timeout_logon",
                                  "timeout_dns", "up", "timeout_logoff", "done"};
    if (s->st == S_LOGOFF) {
        s_count(s->lg->off_reasons, &s->lg->n_off_reasons, names[S_LOGOFF]);
        s_cancel_timers(s);
        rb_tconn_destroy(&s->c);
        s->st = S_DONE;
        s->lg->in_flight--;
        s_start_more(s->lg);
        s_check_phase(s->lg);
        return;
    }
    if (s->st >= S_TLS && s->st <= S_DNS) s_fail(s, names[s->st]);
}

/* ---- phases ------------------------------------------------------------- */

static void s_start_logon(lg_t *lg, sess_t *s)
{
    s->t0_us = s_now_us();
    if (!lg->t_start_us) lg->t_start_us = s->t0_us;
    s->st = S_TLS;
    lg->in_flight++;
    s->deadline = rb_loop_add_timer(lg->loop, lg->timeout_ms, false, s_session_deadline, s);
    s->c = rb_tconn_dial(lg->loop, lg->ctx, lg->server, lg->verify_name, &s_handlers, s);
    if (!s->c) s_fail(s, "dial");
}

static void s_start_logoff(lg_t *lg, sess_t *s)
{
    s_cancel_timers(s);
    lg->up--;
    lg->in_flight++;
    s->st = S_LOGOFF;
    s->deadline = rb_loop_add_timer(lg->loop, lg->timeout_ms, false, s_session_deadline, s);
    if (lg->tls_only) {
        rb_tconn_close_after_flush(s->c);
        return;
    }
    Rb__Tunnel__Logoff off = RB__TUNNEL__LOGOFF__INIT;
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGOFF;
    m.logoff = &off;
    if (s_send(s, &m) < 0) {
        s_count(lg->off_reasons, &lg->n_off_reasons, "send_logoff");
        s_cancel_timers(s);
        rb_tconn_destroy(&s->c);
        s->st = S_DONE;
        lg->in_flight--;
    }
}

/* Keeps `concurrency` logons (or logoffs) in flight. Logoffs are paced the
 * same way so that the end of a run does not flood the edge. */
static void s_start_more(lg_t *lg)
{
    if (lg->phase == P_LOGON) {
        while (lg->in_flight < lg->concurrency && lg->next < lg->count && lg->phase == P_LOGON)
            s_start_logon(lg, &lg->s[lg->next++]);
    } else if (lg->phase == P_LOGOFF) {
        while (lg->in_flight < lg->concurrency && lg->next < lg->count && lg->phase == P_LOGOFF) {
            sess_t *s = &lg->s[lg->next++];
            if (s->st == S_UP) s_start_logoff(lg, s);
        }
    }
}

/* "user ip fqdn" of every session that is up, for peers serving the same
 * names (the DNS benchmark's dnsmasq). */
static void s_write_sessions(lg_t *lg)
{
    FILE *f = fopen(lg->sessions_file, "w");
    if (!f) {
        rb_warn("sessions_file", "%s: %s", lg->sessions_file, strerror(errno));
        return;
    }
    for (unsigned i = 0; i < lg->count; i++) {
        const sess_t *s = &lg->s[i];
        char ip[INET_ADDRSTRLEN];
        if (s->st != S_UP || !s->fqdn || !inet_ntop(AF_INET, &s->ip, ip, sizeof ip)) continue;
        fprintf(f, "%s%u %s %s\n", lg->prefix, lg->first + i, ip, s->fqdn);
    }
    fclose(f);
}

static void s_write_ready(lg_t *lg)
{
    if (lg->sessions_file) s_write_sessions(lg);
    if (!lg->ready_file) return;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", lg->ready_file);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        rb_warn("ready_file", "%s: %s", tmp, strerror(errno));
        return;
    }
    fprintf(f, "{\"up\":%u,\"ok\":%u,\"pid\":%d}\n", lg->up, lg->ok, (int)getpid());
    fclose(f);
    if (rename(tmp, lg->ready_file) < 0) rb_warn("ready_file", "%s: %s", lg->ready_file, strerror(errno));
}

static void s_finish(lg_t *lg)
{
    lg->phase = P_END;
    rb_loop_cancel_timer(lg->loop, lg->phase_timer);
    lg->phase_timer = NULL;
    rb_loop_stop(lg->loop);
}

static void s_logoff_grace_over(rb_loop_t *loop, void *arg)
{
    lg_t *lg = arg;
    lg->phase_timer = NULL;
    for (unsigned i = 0; i < lg->count; i++) {
        sess_t *s = &lg->s[i];
        if (s->st == S_LOGOFF || s->st == S_UP) {
            s_count(lg->off_reasons, &lg->n_off_reasons, "logoff_not_done");
            s_cancel_timers(s);
            rb_tconn_destroy(&s->c);
            s->st = S_DONE;
        }
    }
    s_finish(lg);
}

static void s_hold_over(rb_loop_t *loop, void *arg)
{
    lg_t *lg = arg;
    lg->phase_timer = NULL;
    s_logoff_phase(lg, "hold over");
}

static void s_logoff_phase(lg_t *lg, const char *why)
{
    if (lg->phase >= P_LOGOFF) return;
    rb_info("logoff_phase", "%s: logging off %u sessions", why, lg->up);
    if (!lg->t_end_us) lg->t_end_us = s_now_us();
    /* Logons still in flight will not finish now. */
    for (unsigned i = 0; i < lg->count; i++) {
        sess_t *s = &lg->s[i];
        if (s->resuming || s->st == S_RWAIT) {
            s_count(lg->r_reasons, &lg->n_r_reasons, "run_ended");
            s_cancel_timers(s);
            rb_tconn_destroy(&s->c);
            s->st = S_DONE;
            s->resuming = false;
        } else if (s->st >= S_TLS && s->st <= S_DNS) {
            s_abort(s, "run_ended");
        }
    }
    lg->rq_len = 0;
    lg->r_in_flight = 0;
    lg->phase = P_LOGOFF;
    lg->next = 0;
    lg->in_flight = 0;
    rb_loop_cancel_timer(lg->loop, lg->phase_timer);
    lg->phase_timer = rb_loop_add_timer(lg->loop, lg->logoff_timeout_ms, false,
                                        s_logoff_grace_over, lg);
    s_start_more(lg);
    s_check_phase(lg);
}

static void s_check_phase(lg_t *lg)
{
    if (lg->phase == P_LOGON && lg->next == lg->count && lg->in_flight == 0) {
        if (lg->hold_s > 0 && lg->up > 0) {
            lg->phase = P_HOLD;
            rb_info("hold", "holding %u sessions for %.1f s", lg->up, lg->hold_s);
            s_write_ready(lg);
            lg->phase_timer = rb_loop_add_timer(lg->loop, (uint64_t)(lg->hold_s * 1000), false,
                                                s_hold_over, lg);
        } else {
            s_logoff_phase(lg, "logons done");
        }
    } else if (lg->phase == P_HOLD && lg->up == 0 && lg->rq_len == 0 && lg->r_in_flight == 0) {
        s_logoff_phase(lg, "every session dropped");
    } else if (lg->phase == P_LOGOFF && lg->next == lg->count && lg->in_flight == 0) {
        s_finish(lg);
    }
}

static void s_deadline(rb_loop_t *loop, void *arg)
{
    lg_t *lg = arg;
    if (lg->phase < P_LOGOFF) {
        rb_warn("duration_reached", "--duration reached in phase %s",
                lg->phase == P_LOGON ? "logon" : "hold");
        s_logoff_phase(lg, "duration reached");
    }
}

static void s_on_signal(rb_loop_t *loop, int signo, void *arg)
{
    lg_t *lg = arg;
    if (++lg->signals > 1) {
        rb_warn("signal", "second signal %d: stopping without logoff", signo);
        s_logoff_grace_over(loop, lg);
        return;
    }
    s_logoff_phase(lg, "signal");
}

/* ---- summary ------------------------------------------------------------ */

static int s_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double s_pct_ms(uint32_t *v, unsigned n, unsigned pct)
{
    if (n == 0) return 0;
    return v[(size_t)(n - 1) * pct / 100] / 1000.0;
}

static void s_reasons_json(const reason_t *tab, unsigned n)
{
    printf("{");
    for (unsigned i = 0; i < n; i++) printf("%s\"%s\":%u", i ? "," : "", tab[i].name, tab[i].n);
    printf("}");
}

static void s_summary(lg_t *lg)
{
    unsigned n = lg->ok, failed = 0;
    for (unsigned i = 0; i < lg->n_reasons; i++) failed += lg->reasons[i].n;
    qsort(lg->lat_us, n, sizeof *lg->lat_us, s_cmp_u32);
    qsort(lg->logon_us, n, sizeof *lg->logon_us, s_cmp_u32);
    qsort(lg->dns_us, n, sizeof *lg->dns_us, s_cmp_u32);
    double elapsed = lg->t_end_us > lg->t_start_us ? (lg->t_end_us - lg->t_start_us) / 1e6 : 0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"count\":%u,\"concurrency\":%u,\"mode\":\"%s\",\"ok\":%u,\"failed\":%u,"
           "\"failed_by\":",
           lg->count, lg->concurrency, lg->tls_only ? "tls" : lg->dns ? "logon+dns" : "logon",
           n, failed);
    s_reasons_json(lg->reasons, lg->n_reasons);
    printf(",\"elapsed_s\":%.3f,\"logons_per_s\":%.1f,"
           "\"p50_ms\":%.2f,\"p90_ms\":%.2f,\"p99_ms\":%.2f,\"max_ms\":%.2f,"
           "\"logon_p50_ms\":%.2f,\"logon_p99_ms\":%.2f,\"dns_lag_p50_ms\":%.2f,"
           "\"dns_lag_p99_ms\":%.2f,\"dropped\":%u,\"logged_off\":%u,\"logoff_problems\":",
           elapsed, elapsed > 0 ? n / elapsed : 0.0, s_pct_ms(lg->lat_us, n, 50),
           s_pct_ms(lg->lat_us, n, 90), s_pct_ms(lg->lat_us, n, 99),
           s_pct_ms(lg->lat_us, n, 100), s_pct_ms(lg->logon_us, n, 50),
           s_pct_ms(lg->logon_us, n, 99), s_pct_ms(lg->dns_us, n, 50),
           s_pct_ms(lg->dns_us, n, 99), lg->dropped, lg->logged_off);
    s_reasons_json(lg->off_reasons, lg->n_off_reasons);
    if (lg->resume_server) {
        unsigned r = lg->resumed;
        qsort(lg->resume_us, r, sizeof *lg->resume_us, s_cmp_u32);
        double rel = lg->t_last_resume_us > lg->t_first_drop_us
                         ? (lg->t_last_resume_us - lg->t_first_drop_us) / 1e6 : 0;
        printf(",\"resume_dropped\":%u,\"resumed\":%u,\"resume_failed_by\":", lg->r_dropped, r);
        s_reasons_json(lg->r_reasons, lg->n_r_reasons);
        printf(",\"resume_elapsed_s\":%.3f,\"resumes_per_s\":%.1f,\"resume_p50_ms\":%.2f,"
               "\"resume_p99_ms\":%.2f,\"resume_max_ms\":%.2f",
               rel, rel > 0 ? r / rel : 0.0, s_pct_ms(lg->resume_us, r, 50),
               s_pct_ms(lg->resume_us, r, 99), s_pct_ms(lg->resume_us, r, 100));
    }
    printf(",\"loadgen_cpu_s\":%.2f,\"loadgen_maxrss_kib\":%ld}\n",
           ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
               (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6,
           ru.ru_maxrss);
    fflush(stdout);
}

/* ---- options ------------------------------------------------------------ */

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: reachback-loadgen --server HOST:PORT --ca FILE --count N\n"
            "         [--users-prefix P] [--first I] --password-file F\n"
            "         [--concurrency C] [--dns HOST:PORT [--suffix S]] [--hold SECONDS]\n"
            "         [--duration SECONDS] [--timeout MS] [--logoff-timeout MS]\n"
            "         [--dns-poll-ms MS] [--verify-name NAME] [--ready-file F]\n"
            "         [--sessions-file F] [--tls-only] [--log-level L]\n"
            "         [--resume-server HOST:PORT [--resumed-file F]]\n"
            "Opens N sessions (users <P><I>..<P><I+N-1>, all with the password in F),\n"
            "C at a time; with --dns each counts once its name answers with its IP.\n"
            "--hold keeps them open and idle that long (--ready-file is written when\n"
            "they are all up, --sessions-file lists \"user ip fqdn\" of each),\n"
            "then every session logs off. --duration (default 300)\n"
            "ends the logon and hold phases; the logoff phase then takes at most\n"
            "--logoff-timeout (default 10000 ms). SIGINT/SIGTERM log off early.\n"
            "--tls-only: TLS handshakes only (for peer TLS servers). Prints one JSON line.\n"
            "--resume-server: held sessions whose connection drops resume there\n"
            "(C at a time); --resumed-file is written when none is left to resume.\n");
}

static int s_parse_hostport(const char *hp, struct sockaddr_in *out)
{
    char host[64];
    const char *colon = strrchr(hp, ':');
    if (!colon || (size_t)(colon - hp) >= sizeof host) return -1;
    memcpy(host, hp, (size_t)(colon - hp));
    host[colon - hp] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535) return -1;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &out->sin_addr) == 1 ? 0 : -1;
}

static int s_read_password(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    if (!fgets(out, (int)cap, f)) out[0] = 0;
    fclose(f);
    out[strcspn(out, "\r\n")] = 0;
    return 0;
}

static unsigned s_uint(const char *opt, const char *v, unsigned min)
{
    char *end;
    unsigned long x = strtoul(v, &end, 10);
    if (*end || !*v || x < min || x > 10000000) {
        fprintf(stderr, "loadgen: %s: bad number '%s'\n", opt, v);
        exit(2);
    }
    return (unsigned)x;
}

static void s_options(lg_t *lg, int argc, char **argv)
{
    enum { O_SERVER = 256, O_CA, O_PREFIX, O_FIRST, O_COUNT, O_CONC, O_PWFILE, O_DNS, O_SUFFIX,
           O_HOLD, O_DURATION, O_TIMEOUT, O_LOGOFF_TIMEOUT, O_POLL, O_VERIFY, O_READY, O_TLS,
           O_LOG, O_SESSIONS, O_RESUME, O_RESUMED, O_HELP };
    static const struct option opts[] = {
        {"server", 1, 0, O_SERVER}, {"ca", 1, 0, O_CA}, {"users-prefix", 1, 0, O_PREFIX},
        {"first", 1, 0, O_FIRST}, {"count", 1, 0, O_COUNT}, {"concurrency", 1, 0, O_CONC},
        {"password-file", 1, 0, O_PWFILE}, {"dns", 1, 0, O_DNS}, {"suffix", 1, 0, O_SUFFIX},
        {"hold", 1, 0, O_HOLD}, {"duration", 1, 0, O_DURATION}, {"timeout", 1, 0, O_TIMEOUT},
        {"logoff-timeout", 1, 0, O_LOGOFF_TIMEOUT}, {"dns-poll-ms", 1, 0, O_POLL},
        {"verify-name", 1, 0, O_VERIFY}, {"ready-file", 1, 0, O_READY},
        {"sessions-file", 1, 0, O_SESSIONS}, {"resume-server", 1, 0, O_RESUME},
        {"resumed-file", 1, 0, O_RESUMED},
        {"tls-only", 0, 0, O_TLS}, {"log-level", 1, 0, O_LOG}, {"help", 0, 0, O_HELP},
        {0, 0, 0, 0}};
    const char *pwfile = NULL;
    lg->prefix = "bench";
    lg->concurrency = 100;
    lg->timeout_ms = 30000;
    lg->logoff_timeout_ms = 10000;
    lg->dns_poll_ms = 2;
    lg->duration_s = 300;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case O_SERVER: lg->server = optarg; break;
        case O_CA: lg->ca = optarg; break;
        case O_PREFIX: lg->prefix = optarg; break;
        case O_FIRST: lg->first = s_uint("--first", optarg, 0); break;
        case O_COUNT: lg->count = s_uint("--count", optarg, 1); break;
        case O_CONC: lg->concurrency = s_uint("--concurrency", optarg, 1); break;
        case O_PWFILE: pwfile = optarg; break;
        case O_DNS:
            if (s_parse_hostport(optarg, &lg->dns_addr) < 0) {
                fprintf(stderr, "loadgen: --dns wants IPv4:PORT, got '%s'\n", optarg);
                exit(2);
            }
            lg->dns = true;
            break;
        case O_SUFFIX: lg->suffix = optarg; break;
        case O_HOLD: lg->hold_s = atof(optarg); break;
        case O_DURATION: lg->duration_s = atof(optarg); break;
        case O_TIMEOUT: lg->timeout_ms = s_uint("--timeout", optarg, 1); break;
        case O_LOGOFF_TIMEOUT: lg->logoff_timeout_ms = s_uint("--logoff-timeout", optarg, 1); break;
        case O_POLL: lg->dns_poll_ms = s_uint("--dns-poll-ms", optarg, 1); break;
        case O_VERIFY: lg->verify_name = optarg; break;
        case O_READY: lg->ready_file = optarg; break;
        case O_SESSIONS: lg->sessions_file = optarg; break;
        case O_RESUME: lg->resume_server = optarg; break;
        case O_RESUMED: lg->resumed_file = optarg; break;
        case O_TLS: lg->tls_only = true; break;
        case O_LOG: {
            rb_log_level_t l;
            if (rb_log_level_parse(optarg, &l) < 0) {
                fprintf(stderr, "loadgen: bad --log-level '%s'\n", optarg);
                exit(2);
            }
            rb_log_set_level(l);
            break;
        }
        case O_HELP:
        case 'h': s_usage(stdout); exit(0);
        default: s_usage(stderr); exit(2);
        }
    }
    if (optind != argc || !lg->server || !lg->ca || !lg->count || (!pwfile && !lg->tls_only)) {
        s_usage(stderr);
        exit(2);
    }
    if (pwfile && s_read_password(pwfile, lg->password, sizeof lg->password) < 0) {
        fprintf(stderr, "loadgen: cannot read %s: %s\n", pwfile, strerror(errno));
        exit(2);
    }
    if (lg->duration_s <= 0 || lg->hold_s < 0) {
        fprintf(stderr, "loadgen: --duration must be > 0 and --hold >= 0\n");
        exit(2);
    }
}

/* Every session needs a descriptor; the soft limit is often 1024. */
static void s_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) rb_warn("rlimit", "RLIMIT_NOFILE: %s", strerror(errno));
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        rb_info("rlimit", "RLIMIT_NOFILE %llu", (unsigned long long)rl.rlim_cur);
}

int main(int argc, char **argv)
{
    rb_log_init("loadgen", RB_LOG_WARN);
    lg_t *lg = calloc(1, sizeof *lg);
    if (!lg) return 1;
    lg->dns_fd = -1;
    s_options(lg, argc, argv);
    s_raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)getpid());

    char err[256];
    lg->ctx = rb_tls_client_ctx(lg->ca, NULL, NULL, err, sizeof err);
    if (!lg->ctx) rb_fatal("tls", "client context: %s", err);
    lg->loop = rb_loop_new();
    lg->s = calloc(lg->count, sizeof *lg->s);
    lg->lat_us = calloc(lg->count, sizeof *lg->lat_us);
    lg->logon_us = calloc(lg->count, sizeof *lg->logon_us);
    lg->dns_us = calloc(lg->count, sizeof *lg->dns_us);
    lg->rqueue = calloc(lg->count, sizeof *lg->rqueue);
    lg->resume_us = calloc(lg->count, sizeof *lg->resume_us);
    if (!lg->loop || !lg->s || !lg->lat_us || !lg->logon_us || !lg->dns_us || !lg->rqueue ||
        !lg->resume_us)
        rb_fatal("oom", "cannot allocate %u sessions", lg->count);
    for (unsigned i = 0; i < lg->count; i++) {
        lg->s[i].lg = lg;
        lg->s[i].idx = i;
        lg->s[i].dns_id = -1;
    }
    if (lg->dns) {
        lg->dns_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (lg->dns_fd < 0 ||
            connect(lg->dns_fd, (struct sockaddr *)&lg->dns_addr, sizeof lg->dns_addr) < 0 ||
            rb_loop_add_fd(lg->loop, lg->dns_fd, RB_EV_READ, s_dns_io, lg) < 0)
            rb_fatal("dns_socket", "%s", strerror(errno));
        int rcv = 4 << 20;
        setsockopt(lg->dns_fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    }
    rb_loop_add_signal(lg->loop, SIGINT, s_on_signal, lg);
    rb_loop_add_signal(lg->loop, SIGTERM, s_on_signal, lg);
    rb_loop_add_timer(lg->loop, (uint64_t)(lg->duration_s * 1000), false, s_deadline, lg);

    lg->phase = P_LOGON;
    s_start_more(lg);
    s_check_phase(lg);
    if (lg->phase != P_END) rb_loop_run(lg->loop);
    s_summary(lg);

    for (unsigned i = 0; i < lg->count; i++) {
        rb_tconn_destroy(&lg->s[i].c);
        free(lg->s[i].fqdn);
        free(lg->s[i].sid);
        if (lg->s[i].token) OPENSSL_cleanse(lg->s[i].token, strlen(lg->s[i].token));
        free(lg->s[i].token);
    }
    int rc = lg->ok == lg->count ? 0 : 1;
    if (lg->dns_fd >= 0) close(lg->dns_fd);
    rb_loop_destroy(&lg->loop);
    SSL_CTX_free(lg->ctx);
    free(lg->s);
    free(lg->lat_us);
    free(lg->logon_us);
    free(lg->dns_us);
    free(lg->rqueue);
    free(lg->resume_us);
    OPENSSL_cleanse(lg->password, sizeof lg->password);
    free(lg);
    return rc;
}
