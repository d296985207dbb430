/* edge_link against a stand-in forwarder: a ROUTER bound to
 * tcp://127.0.0.1:* that the edge's DEALER connects to. The edge says
 * Hello until the forwarder answers; it answers an Open for a session it
 * does not carry; and garbage from the forwarder (undecodable control
 * messages, messages only an edge sends, malformed frames, frames for
 * streams that do not exist, an Open with an edge-side id) is logged,
 * counted and dropped while the link keeps working. A tunnel replaced by a
 * newer one of the same session does not detach its successor, unless the
 * successor went to another forwarder, whose predecessor must let go. A
 * tunnel with more streams than one Relayed may name gives all their
 * credit back, in pieces; a forwarder that sends past a stream's window
 * has that stream reset on both sides, and only that one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "edge_link.h"
#include "rb_frame.h"
#include "rb_link.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_metrics.h"
#include "rb_zmq.h"

#include "../tls_fixture.h"

typedef struct {
    rb_loop_t *loop;
    void *router;
    char rid[2 * RB_LINK_RID_MAX + 1];
    int hellos;
    int results;
    int attaches, detaches;
    char last_detached[64];
    Rb__Tunnel__StreamError last_error;
    uint32_t last_link_id;
    int relayed_msgs;             /* Relayed messages, */
    size_t relayed_most;          /* the most ids one carried, */
    uint64_t relayed_bytes;       /* and the bytes they gave back */
    uint32_t relayed_by_id[1200]; /* by link id / 2 */
    uint32_t reset_link_id;       /* the last stream the edge reset here */
    bool (*done)(void *);
} fake_t;

static void s_on_router(rb_loop_t *l, void *sock, void *arg)
{
    fake_t *fk = arg;
    for (;;) {
        rb_link_msg_t m;
        rb_frame_t f;
        const char *why = NULL;
        int rc = rb_link_recv(sock, true, &m, &f, &why);
        if (rc == 0) break;
        assert_int_equal(rc, 1);
        snprintf(fk->rid, sizeof fk->rid, "%s", m.rid_text);
        if (f.type == RB_FRAME_CONTROL) {
            Rb__Fwd__LinkControl *c = rb_link_control(&f);
            assert_non_null(c);
            if (c->msg_case == RB__FWD__LINK_CONTROL__MSG_HELLO) {
                assert_int_equal(c->hello->version, RB_LINK_VERSION);
                assert_string_equal(c->hello->edge_id, "edge-t");
                fk->hellos++;
            } else if (c->msg_case == RB__FWD__LINK_CONTROL__MSG_ATTACH) {
                fk->attaches++;
            } else if (c->msg_case == RB__FWD__LINK_CONTROL__MSG_DETACH) {
                fk->detaches++;
                snprintf(fk->last_detached, sizeof fk->last_detached, "%s", c->detach->session_id);
            } else if (c->msg_case == RB__FWD__LINK_CONTROL__MSG_RELAYED) {
                const Rb__Fwd__Relayed *r = c->relayed;
                assert_int_equal(r->n_link_ids, r->n_bytes);
                fk->relayed_msgs++;
                if (r->n_link_ids > fk->relayed_most) fk->relayed_most = r->n_link_ids;
                for (size_t i = 0; i < r->n_link_ids; i++) {
                    assert_true(r->link_ids[i] / 2 < 1200);
                    fk->relayed_by_id[r->link_ids[i] / 2] += r->bytes[i];
                    fk->relayed_bytes += r->bytes[i];
                }
            } else if (c->msg_case == RB__FWD__LINK_CONTROL__MSG_OPEN_RESULT) {
                fk->results++;
                fk->last_error = c->open_result->error;
                fk->last_link_id = c->open_result->link_id;
            }
            rb__fwd__link_control__free_unpacked(c, NULL);
        } else if (f.type == RB_FRAME_DATA && (f.flags & RB_FRAME_RST)) {
            fk->reset_link_id = f.stream_id;
        }
        rb_link_msg_close(&m);
    }
    if (fk->done && fk->done(fk)) rb_loop_stop(l);
}

static void s_timeout(rb_loop_t *l, void *arg)
{
    rb_loop_stop(l);
}

static bool s_run_until(fake_t *fk, bool (*done)(void *), unsigned ms)
{
    if (done(fk)) return true;
    fk->done = done;
    rb_timer_t *t = rb_loop_add_timer(fk->loop, ms, false, s_timeout, NULL);
    rb_loop_run(fk->loop);
    fk->done = NULL;
    if (done(fk)) {
        rb_loop_cancel_timer(fk->loop, t);
        return true;
    }
    return false;
}

static bool s_hello_seen(void *arg)
{
    return ((fake_t *)arg)->hellos > 0;
}

static void s_send_ctl(fake_t *fk, Rb__Fwd__LinkControl *m)
{
    assert_int_equal(rb_link_send_control(fk->router, fk->rid, strlen(fk->rid), m), 0);
}

/* A HelloAck; cidr: the one network this forwarder serves (NULL: any). */
static void s_answer_hello(fake_t *fk, uint64_t instance, const char *cidr)
{
    Rb__Fwd__LinkControl m = RB__FWD__LINK_CONTROL__INIT;
    Rb__Fwd__HelloAck a = RB__FWD__HELLO_ACK__INIT;
    char *cidrs[] = {(char *)cidr};
    a.version = RB_LINK_VERSION;
    a.forwarder_id = "fake";
    a.instance = instance;
    a.n_cidrs = cidr ? 1 : 0;
    a.cidrs = cidrs;
    m.msg_case = RB__FWD__LINK_CONTROL__MSG_HELLO_ACK;
    m.hello_ack = &a;
    s_send_ctl(fk, &m);
}

static bool s_up(void *arg)
{
    fake_t *fk = arg;
    return fk->results < 0; /* never: run the loop for the whole wait */
}

static void s_send_open_with(fake_t *fk, uint32_t link_id, const char *session, bool udp,
                             size_t early_len)
{
    static uint8_t early[RB_LINK_EARLY_MAX + 1];
    Rb__Fwd__LinkControl m = RB__FWD__LINK_CONTROL__INIT;
    Rb__Fwd__Open o = RB__FWD__OPEN__INIT;
    o.link_id = link_id;
    o.session_id = (char *)session;
    o.proto = udp ? RB__TUNNEL__PROTO__PROTO_UDP : RB__TUNNEL__PROTO__PROTO_TCP;
    o.early_data.data = early;
    o.early_data.len = early_len;
    o.port = 22;
    o.peer_addr = "10.0.0.9";
    o.peer_port = 40000;
    m.msg_case = RB__FWD__LINK_CONTROL__MSG_OPEN;
    m.open = &o;
    s_send_ctl(fk, &m);
}

static void s_send_open(fake_t *fk, uint32_t link_id, const char *session)
{
    s_send_open_with(fk, link_id, session, false, 0);
}

static bool s_one_result(void *arg)
{
    return ((fake_t *)arg)->results >= 1;
}
static bool s_two_results(void *arg)
{
    return ((fake_t *)arg)->results >= 2;
}
static bool s_four_results(void *arg)
{
    return ((fake_t *)arg)->results >= 4;
}
static bool s_five_results(void *arg)
{
    return ((fake_t *)arg)->results >= 5;
}

/* Binds a stand-in forwarder on loop; its endpoint goes to ep. */
static void s_bind_fake(fake_t *fk, rb_loop_t *loop, char *ep, size_t cap)
{
    fk->loop = loop;
    fk->router = rb_zsock_bind_with(ZMQ_ROUTER, "tcp://127.0.0.1:*", NULL, rb_link_setup);
    assert_non_null(fk->router);
    assert_int_equal(zmq_getsockopt(fk->router, ZMQ_LAST_ENDPOINT, ep, &cap), 0);
    assert_int_equal(rb_loop_add_zsock(loop, fk->router, s_on_router, fk), 0);
}

static void s_unbind_fake(fake_t *fk)
{
    rb_loop_del_zsock(fk->loop, fk->router);
    rb_zsock_close(&fk->router);
}

/* An edge_link (edge "edge-t") to the forwarders at endpoints. */
static edge_link_t *s_edge_link_with(rb_loop_t *loop, const char *endpoints, unsigned max_streams)
{
    static const rb_curve_t none = {0};
    edge_link_config_t cfg = {.endpoints = endpoints,
                              .curve = &none,
                              .forwarder_public = "",
                              .edge_id = "edge-t",
                              .max_streams = max_streams};
    edge_link_t *l = edge_link_new(loop, &cfg);
    assert_non_null(l);
    return l;
}

static edge_link_t *s_edge_link(rb_loop_t *loop, const char *endpoints)
{
    return s_edge_link_with(loop, endpoints, 8);
}

/* Binds the stand-in forwarder and links an edge_link to it, which allows
 * max_streams per tunnel. */
static edge_link_t *s_link_up_with(fake_t *fk, unsigned max_streams)
{
    rb_loop_t *loop = rb_loop_new();
    assert_non_null(loop);
    char ep[128];
    s_bind_fake(fk, loop, ep, sizeof ep);
    edge_link_t *l = s_edge_link_with(loop, ep, max_streams);
    assert_int_equal(edge_link_forwarders(l), 1);
    assert_int_equal(edge_link_forwarders_up(l), 0);

    /* Hello comes (retried until the link is up), with our routing id. */
    assert_true(s_run_until(fk, s_hello_seen, 3000));
    assert_string_equal(fk->rid, "edge-t");
    s_answer_hello(fk, 42, NULL);
    s_run_until(fk, s_up, 200);
    assert_int_equal(edge_link_forwarders_up(l), 1);
    return l;
}

static edge_link_t *s_link_up(fake_t *fk)
{
    return s_link_up_with(fk, 8);
}

static void s_link_down(fake_t *fk, edge_link_t **l)
{
    edge_link_destroy(l);
    assert_null(*l);
    s_unbind_fake(fk);
    rb_loop_destroy(&fk->loop);
}

static void test_edge_link_with_a_stand_in_forwarder(void **state)
{
    fake_t fk = {0};
    edge_link_t *l = s_link_up(&fk);

    /* An Open for a session this edge does not carry: answered, not lost. */
    s_send_open(&fk, 2, "no-such-session");
    assert_true(s_run_until(&fk, s_one_result, 3000));
    assert_int_equal(fk.last_link_id, 2);
    assert_int_equal(fk.last_error, RB__TUNNEL__STREAM_ERROR__STREAM_UNREACHABLE);

    /* Garbage from the forwarder: counted and dropped. */
    rb_metric_t *errs = rb_counter("reachback_edge_link_errors_total", NULL, "");
    double before = rb_metric_value(errs);
    uint8_t hdr[RB_FRAME_HEADER];
    rb_frame_header(hdr, RB_FRAME_CONTROL, 0, 0, 4);
    const char *rid = fk.rid;
    zmq_send(fk.router, rid, strlen(rid), ZMQ_SNDMORE);
    zmq_send(fk.router, hdr, sizeof hdr, ZMQ_SNDMORE);
    zmq_send(fk.router, "\xff\xff\xff\xff", 4, 0); /* undecodable protobuf */
    zmq_send(fk.router, rid, strlen(rid), ZMQ_SNDMORE);
    zmq_send(fk.router, "short", 5, 0); /* not a header */
    rb_frame_header(hdr, 9, 0, 1, 0);
    zmq_send(fk.router, rid, strlen(rid), ZMQ_SNDMORE);
    zmq_send(fk.router, hdr, sizeof hdr, 0);              /* unknown type */
    Rb__Fwd__LinkControl m = RB__FWD__LINK_CONTROL__INIT; /* only edges send Attach */
    Rb__Fwd__Attach at = RB__FWD__ATTACH__INIT;
    at.session_id = "x";
    m.msg_case = RB__FWD__LINK_CONTROL__MSG_ATTACH;
    m.attach = &at;
    s_send_ctl(&fk, &m);
    s_send_open(&fk, 3, "no-such-session"); /* odd: an edge's id */
    assert_int_equal(rb_link_send(fk.router, rid, strlen(rid), RB_FRAME_DATA, 0, 77, "x", 1), 0);
    assert_int_equal(
        rb_link_send(fk.router, rid, strlen(rid), RB_FRAME_DATA, RB_FRAME_RST, 79, NULL, 0),
        0); /* streams never opened */
    /* The link still works: another Open is answered. */
    s_send_open(&fk, 4, "still-none");
    assert_true(s_run_until(&fk, s_two_results, 3000));
    assert_int_equal(fk.last_link_id, 4);
    assert_true(rb_metric_value(errs) - before >= 5);

    /* Early data where it cannot be (a UDP flow, or more than an Open may
     * carry): refused as a bad Open, before the session is even looked
     * up. */
    before = rb_metric_value(errs);
    s_send_open_with(&fk, 6, "no-such-session", true, 10);
    s_send_open_with(&fk, 8, "no-such-session", false, RB_LINK_EARLY_MAX + 1);
    assert_true(s_run_until(&fk, s_four_results, 3000));
    assert_int_equal(fk.last_link_id, 8);
    assert_int_equal(fk.last_error, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED);
    assert_true(rb_metric_value(errs) - before == 2);

    /* Relayed from the forwarder (its datagrams taken): ids and counts
     * that do not pair up are an error; a flow this edge does not know is
     * not (it ended meanwhile). */
    before = rb_metric_value(errs);
    uint32_t ids[] = {5}, bytes[] = {1, 2}, unknown[] = {99}, count[] = {100};
    Rb__Fwd__Relayed rel = RB__FWD__RELAYED__INIT;
    rel.n_link_ids = 1;
    rel.link_ids = ids;
    rel.n_bytes = 2;
    rel.bytes = bytes;
    m.msg_case = RB__FWD__LINK_CONTROL__MSG_RELAYED;
    m.relayed = &rel;
    s_send_ctl(&fk, &m);
    rel.link_ids = unknown;
    rel.n_bytes = 1;
    rel.bytes = count;
    s_send_ctl(&fk, &m);
    s_send_open(&fk, 10, "still-none");
    assert_true(s_run_until(&fk, s_five_results, 3000));
    assert_int_equal(fk.last_link_id, 10);
    assert_true(rb_metric_value(errs) - before == 1);

    /* A restarted forwarder (a new instance) is noticed and linked again. */
    s_answer_hello(&fk, 43, NULL);
    s_run_until(&fk, s_up, 200);
    assert_int_equal(edge_link_forwarders_up(l), 1);

    rb_buf_t json = RB_BUF_INIT;
    edge_link_status_json(l, &json);
    assert_non_null(strstr(json.data, "\"forwarders\":1,\"forwarders_up\":1,\"streams\":0"));
    rb_buf_free(&json);

    s_link_down(&fk, &l);
    edge_link_destroy(NULL);
}

static bool s_one_detach(void *arg)
{
    return ((fake_t *)arg)->detaches >= 1;
}
static bool s_two_attaches(void *arg)
{
    return ((fake_t *)arg)->attaches >= 2;
}

/* A device resumes its session on a new tunnel while the old one is still
 * closing: when the old tunnel finally goes, the forwarder must not hear
 * Detach for the session, or it would drop the new tunnel's attachment. */
static void test_stale_tunnel_does_not_detach_its_successor(void **state)
{
    fake_t fk = {0};
    edge_link_t *l = s_link_up(&fk);
    edge_tunnel_t *old = edge_link_attach(l, NULL, "sess-1", "alice", "10.0.0.5", "");
    edge_tunnel_t *cur = edge_link_attach(l, NULL, "sess-1", "alice", "10.0.0.5", "");
    assert_non_null(old);
    assert_non_null(cur);
    assert_true(s_run_until(&fk, s_two_attaches, 3000));
    edge_link_detach(&old, "closed");
    assert_null(old);
    /* The link keeps order: a Detach from the old tunnel would arrive first. */
    edge_link_detach(&cur, "logoff");
    assert_true(s_run_until(&fk, s_one_detach, 3000));
    s_run_until(&fk, s_up, 100);
    assert_int_equal(fk.detaches, 1);
    assert_string_equal(fk.last_detached, "sess-1");
    s_link_down(&fk, &l);
}

static bool s_one_attach(void *arg)
{
    return ((fake_t *)arg)->attaches >= 1;
}

/* A session resumed with a new address that another forwarder serves:
 * when its old tunnel goes, the old forwarder must hear Detach (nothing
 * else would free the listeners it keeps there), and the new forwarder
 * must not. */
static void test_stale_tunnel_on_another_forwarder_detaches(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    fake_t a = {0}, b = {0};
    char ep_a[128], ep_b[128], eps[260];
    s_bind_fake(&a, loop, ep_a, sizeof ep_a);
    s_bind_fake(&b, loop, ep_b, sizeof ep_b);
    snprintf(eps, sizeof eps, "%s,%s", ep_a, ep_b);
    edge_link_t *l = s_edge_link(loop, eps);
    assert_true(s_run_until(&a, s_hello_seen, 3000));
    assert_true(s_run_until(&b, s_hello_seen, 3000));
    s_answer_hello(&a, 42, "10.0.0.0/24");
    s_answer_hello(&b, 43, "10.0.1.0/24");
    s_run_until(&a, s_up, 200);
    assert_int_equal(edge_link_forwarders_up(l), 2);

    edge_tunnel_t *old = edge_link_attach(l, NULL, "sess-2", "alice", "10.0.0.5", "");
    assert_non_null(old);
    assert_true(s_run_until(&a, s_one_attach, 3000));
    edge_tunnel_t *cur = edge_link_attach(l, NULL, "sess-2", "alice", "10.0.1.5", "");
    assert_non_null(cur);
    assert_true(s_run_until(&b, s_one_attach, 3000));
    assert_int_equal(a.attaches, 1);

    edge_link_detach(&old, "closed");
    assert_true(s_run_until(&a, s_one_detach, 3000));
    assert_string_equal(a.last_detached, "sess-2");
    s_run_until(&b, s_up, 100);
    assert_int_equal(b.detaches, 0);

    edge_link_detach(&cur, "logoff");
    assert_true(s_run_until(&b, s_one_detach, 3000));
    assert_int_equal(a.detaches, 1);

    edge_link_destroy(&l);
    s_unbind_fake(&a);
    s_unbind_fake(&b);
    rb_loop_destroy(&loop);
}

/* ---- one tunnel with more streams than one Relayed may name ---- */

static SSL_CTX *s_sctx, *s_cctx;

/* The tunnel's two ends: the edge's connection (accepted) and the device's
 * (dialled), which notes the StreamOpens and DATA it gets. */
typedef struct {
    int lfd;
    rb_tconn_t *edge, *dev;
    edge_tunnel_t *tun;
    bool up, edge_up;    /* each end's TLS handshake done */
    uint32_t tids[1200]; /* the edge's ids, from its StreamOpens */
    size_t opens;
    size_t data_frames;
    uint64_t data_bytes;
    uint32_t reset_tid; /* the last stream the edge reset at the device */
} tunnel_rig_t;

static void s_dev_open(rb_tconn_t *c, void *arg)
{
    ((tunnel_rig_t *)arg)->up = true;
}

static void s_dev_frame(rb_tconn_t *c, const rb_frame_t *f, void *arg)
{
    tunnel_rig_t *t = arg;
    if (f->type == RB_FRAME_DATA) {
        t->data_frames++;
        t->data_bytes += f->len;
        if (f->flags & RB_FRAME_RST) t->reset_tid = f->stream_id;
        return;
    }
    if (f->type != RB_FRAME_CONTROL) return;
    Rb__Tunnel__TunnelControl *m = rb_frame_control(f);
    assert_non_null(m);
    if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_OPEN) {
        assert_true(t->opens < 1200);
        t->tids[t->opens++] = m->stream_open->stream_id;
    }
    rb__tunnel__tunnel_control__free_unpacked(m, NULL);
}

static void s_quiet_close(rb_tconn_t *c, rb_tconn_end_t end, const char *reason, void *arg) {}

static const rb_tconn_handlers_t s_dev_h = {s_dev_open, s_dev_frame, s_quiet_close, NULL};
static void s_edge_open(rb_tconn_t *c, void *arg)
{
    ((tunnel_rig_t *)arg)->edge_up = true;
}

static const rb_tconn_handlers_t s_edge_h = {s_edge_open, NULL, s_quiet_close, NULL};

static int s_tls_setup(void **state)
{
    return tlsfx_pair_setup("edge-link", &s_sctx, &s_cctx);
}

static int s_tls_teardown(void **state)
{
    return tlsfx_pair_teardown(&s_sctx, &s_cctx);
}

static void s_tunnel_accept(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    tunnel_rig_t *t = arg;
    int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    assert_true(cfd >= 0);
    t->edge = rb_tconn_accept(loop, s_sctx, cfd, "device", &s_edge_h, t);
    assert_non_null(t->edge);
}

static tunnel_rig_t *s_trig;
static size_t s_want;

static bool s_tunnel_is_up(void *arg)
{
    return s_trig->up && s_trig->edge_up;
}
static bool s_all_opened(void *arg)
{
    return s_trig->opens >= s_want;
}
static bool s_all_data(void *arg)
{
    return s_trig->data_frames >= s_want;
}
static bool s_all_relayed(void *arg)
{
    return ((fake_t *)arg)->relayed_bytes >= s_want * 1000;
}

/* A device's tunnel (real TLS) carrying session sess-r, attached on l. */
static void s_tunnel_up(fake_t *fk, edge_link_t *l, tunnel_rig_t *t)
{
    memset(t, 0, sizeof *t);
    s_trig = t;
    t->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    assert_int_equal(bind(t->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(t->lfd, 4), 0);
    assert_int_equal(getsockname(t->lfd, (struct sockaddr *)&a, &alen), 0);
    assert_int_equal(rb_loop_add_fd(fk->loop, t->lfd, RB_EV_READ, s_tunnel_accept, t), 0);
    char hp[32];
    snprintf(hp, sizeof hp, "127.0.0.1:%u", ntohs(a.sin_port));
    t->dev = rb_tconn_dial(fk->loop, s_cctx, hp, "127.0.0.1", &s_dev_h, t);
    assert_non_null(t->dev);
    assert_true(s_run_until(fk, s_tunnel_is_up, 5000));
    t->tun = edge_link_attach(l, t->edge, "sess-r", "alice", "10.0.0.5", "");
    assert_non_null(t->tun);
    assert_true(s_run_until(fk, s_one_attach, 3000));
}

static void s_tunnel_down(fake_t *fk, tunnel_rig_t *t)
{
    edge_link_detach(&t->tun, "done");
    rb_tconn_destroy(&t->dev);
    rb_tconn_destroy(&t->edge);
    rb_loop_del_fd(fk->loop, t->lfd);
    close(t->lfd);
}

/* n streams opened by the forwarder (link ids 2, 4, ...), seen by the
 * device. */
static void s_open_streams(fake_t *fk, size_t n)
{
    s_want = n;
    for (uint32_t i = 0; i < n; i++)
        s_send_open(fk, 2 * (i + 1), "sess-r");
    assert_true(s_run_until(fk, s_all_opened, 10000));
    assert_int_equal(fk->results, 0); /* none refused */
}

/* A session with 1100 streams, each with 1000 bytes sent to its device:
 * when the tunnel drains, the forwarder hears of every stream's bytes, in
 * Relayed messages of at most RB_LINK_RELAYED_MAX streams each (one
 * message for all would be too large to send, and the session's credit
 * would be lost with it). */
static void test_relayed_in_pieces(void **state)
{
    enum { N = 1100 };
    fake_t fk = {0};
    edge_link_t *l = s_link_up_with(&fk, N);
    tunnel_rig_t t;
    s_tunnel_up(&fk, l, &t);
    s_open_streams(&fk, N);

    static uint8_t payload[1000];
    for (uint32_t i = 0; i < N; i++)
        assert_int_equal(rb_link_send(fk.router, fk.rid, strlen(fk.rid), RB_FRAME_DATA, 0,
                                      2 * (i + 1), payload, sizeof payload),
                         0);
    assert_true(s_run_until(&fk, s_all_data, 10000));
    assert_int_equal(fk.relayed_msgs, 0);

    edge_link_drained(t.tun);
    if (!s_run_until(&fk, s_all_relayed, 5000))
        fail_msg("Relayed gave back %llu of %u bytes in %d messages",
                 (unsigned long long)fk.relayed_bytes, N * 1000, fk.relayed_msgs);
    assert_int_equal(fk.relayed_bytes, (uint64_t)N * 1000);
    assert_true(fk.relayed_msgs >= 2);
    assert_true(fk.relayed_most <= RB_LINK_RELAYED_MAX);
    for (uint32_t i = 0; i < N; i++)
        if (fk.relayed_by_id[i + 1] != 1000)
            fail_msg("link stream %u: %u bytes relayed", 2 * (i + 1), fk.relayed_by_id[i + 1]);

    s_tunnel_down(&fk, &t);
    s_link_down(&fk, &l);
}

static bool s_reset_both_ways(void *arg)
{
    return ((fake_t *)arg)->reset_link_id == 2 && s_trig->reset_tid == s_trig->tids[0];
}
static bool s_window_and_more(void *arg)
{
    return s_trig->data_bytes >= RB_STREAM_WINDOW + 1000;
}

/* A forwarder that sends a stream more than its window (the device never
 * granted more): that stream is reset at the device and at the forwarder,
 * counted, and the session's other stream goes on. */
static void test_forwarder_overrun_resets_the_stream(void **state)
{
    fake_t fk = {0};
    edge_link_t *l = s_link_up_with(&fk, 8);
    tunnel_rig_t t;
    s_tunnel_up(&fk, l, &t);
    s_open_streams(&fk, 2);
    rb_metric_t *overruns = rb_counter("reachback_edge_window_overruns_total", NULL, "");
    double before = rb_metric_value(overruns);

    static uint8_t chunk[RB_FRAME_MAX_DATA];
    for (uint32_t sent = 0; sent <= RB_STREAM_WINDOW; sent += sizeof chunk)
        assert_int_equal(rb_link_send(fk.router, fk.rid, strlen(fk.rid), RB_FRAME_DATA, 0, 2, chunk,
                                      sizeof chunk),
                         0);
    if (!s_run_until(&fk, s_reset_both_ways, 5000))
        fail_msg("after %llu bytes: reset at the forwarder %u, at the device %u (want 2, %u)",
                 (unsigned long long)t.data_bytes, fk.reset_link_id, t.reset_tid, t.tids[0]);
    assert_int_equal(t.data_bytes, RB_STREAM_WINDOW); /* the window, not a byte more */
    assert_true(rb_metric_value(overruns) - before == 1);

    assert_int_equal(
        rb_link_send(fk.router, fk.rid, strlen(fk.rid), RB_FRAME_DATA, 0, 4, chunk, 1000), 0);
    assert_true(s_run_until(&fk, s_window_and_more, 3000));
    assert_int_not_equal(t.reset_tid, t.tids[1]);

    s_tunnel_down(&fk, &t);
    s_link_down(&fk, &l);
}

static void test_edge_link_without_forwarders(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    rb_curve_t none = {0};
    edge_link_config_t cfg = {.endpoints = "", .curve = &none, .edge_id = "e", .max_streams = 8};
    edge_link_t *l = edge_link_new(loop, &cfg);
    assert_non_null(l);
    assert_int_equal(edge_link_forwarders(l), 0);
    assert_int_equal(edge_link_forwarders_up(l), 0);
    edge_link_destroy(&l);
    cfg.endpoints = "not-an-endpoint";
    assert_null(edge_link_new(loop, &cfg));
    rb_loop_destroy(&loop);
}

int main(void)
{
    rb_log_init("test", RB_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edge_link_with_a_stand_in_forwarder),
        cmocka_unit_test(test_stale_tunnel_does_not_detach_its_successor),
        cmocka_unit_test(test_stale_tunnel_on_another_forwarder_detaches),
        cmocka_unit_test(test_edge_link_without_forwarders),
        cmocka_unit_test(test_relayed_in_pieces),
        cmocka_unit_test(test_forwarder_overrun_resets_the_stream),
    };
    int rc = cmocka_run_group_tests(tests, s_tls_setup, s_tls_teardown);
    /* A failed test leaves its sockets open, and terminating the context
     * would wait for them forever. */
    if (rc == 0) rb_zmq_term();
    return rc;
}
