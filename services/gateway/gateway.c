/* gateway: an edge and a forwarder in one process (see gateway.h). */
#include "gateway.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "rb_cli.h"
#include "rb_metrics.h"
#include "rb_zmq.h"

static bool s_is_inproc(const char *e, size_t len)
{
    return len > strlen("inproc://") && strncmp(e, "inproc://", strlen("inproc://")) == 0;
}

int gateway_check(const edge_config_t *edge, const forwarder_config_t *fwd, char *err,
                  size_t errlen)
{
    /* One forwarder per process, so one inproc:// endpoint: the edge's. */
    const char *ep = NULL, *e, *at = fwd->data_endpoint;
    size_t eplen = 0, len;
    int n = 0;
    while ((e = rb_zmq_endpoint_next(&at, &len)))
        if (s_is_inproc(e, len) && n++ == 0) ep = e, eplen = len;
    if (n != 1) {
        snprintf(err, errlen,
                 "forwarder key 'data_endpoint': '%s' lists %d inproc:// endpoints, not one "
                 "(for the edge in this process; tcp:// ones beside it serve edges elsewhere)",
                 fwd->data_endpoint, n);
        return -1;
    }
    bool named = false;
    for (at = edge->forwarder_endpoints; (e = rb_zmq_endpoint_next(&at, &len));) {
        if (len == eplen && strncmp(e, ep, len) == 0) {
            named = true;
        } else if (s_is_inproc(e, len)) {
            snprintf(err, errlen,
                     "edge key 'forwarder_endpoints': %.*s is not the forwarder's inproc:// "
                     "endpoint %.*s, and no other forwarder runs in this process",
                     (int)len, e, (int)eplen, ep);
            return -1;
        }
    }
    if (named) return 0;
    snprintf(err, errlen,
             "edge key 'forwarder_endpoints': '%s' does not name the forwarder's inproc:// "
             "endpoint %.*s",
             edge->forwarder_endpoints, (int)eplen, ep);
    return -1;
}

typedef struct {
    const forwarder_config_t *cfg;
    rb_log_level_t level;
    int stop_fd; /* eventfd: written when the edge has stopped */
    bool stopping; /* s_on_stop ran */
    sem_t started;
    bool ok;
    int rc;
} fwd_thread_t;

static void s_on_stop(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    uint64_t v;
    if (read(fd, &v, sizeof v) < 0 && errno == EAGAIN) return;
    fwd_thread_t *t = arg;
    t->stopping = true;
    rb_info("shutdown", "the edge has stopped: stopping");
    rb_loop_stop(loop);
}

static void *s_forwarder_main(void *arg)
{
    fwd_thread_t *t = arg;
    rb_log_init_thread("forwarder", t->level);
    rb_loop_t *loop = NULL;
    forwarder_t *fw = NULL;
    /* Its own /metrics; the edge's thread keeps the process's registry. */
    if (rb_metrics_init_thread() == 0 && (loop = rb_loop_new()) &&
        rb_loop_add_fd(loop, t->stop_fd, RB_EV_READ, s_on_stop, t) == 0) {
        rb_cli_zap(loop, t->cfg->curve_secret_key, t->cfg->curve_allowed_keys);
        fw = forwarder_new(loop, t->cfg);
    }
    t->ok = fw != NULL;
    sem_post(&t->started);
    t->rc = fw ? rb_loop_run(loop) : -1;
    /* Ended without the edge's word (its loop failed): one process ending
     * takes both services with it, so the edge stops too, as on SIGTERM. */
    if (t->ok && !t->stopping) {
        rb_error("forwarder_stopped", "the forwarder's loop ended; stopping the edge");
        kill(getpid(), SIGTERM);
    }
    forwarder_destroy(&fw);
    rb_zap_stop();
    if (loop) rb_loop_del_fd(loop, t->stop_fd);
    rb_loop_destroy(&loop);
    return NULL;
}

int gateway_run(const edge_config_t *edge_cfg, rb_log_level_t edge_level,
                const forwarder_config_t *fwd_cfg, rb_log_level_t fwd_level)
{
    /* Every thread made from here on inherits this mask: SIGHUP reaches
     * only the forwarder's loop (its signalfd), SIGINT and SIGTERM only
     * the edge's. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    rb_log_init_thread("edge", edge_level);
    edge_raise_nofile();
    /* One context: inproc:// connects sockets of the same context only. */
    if (!rb_zmq_ctx()) return -1;

    fwd_thread_t ft = {.cfg = fwd_cfg, .level = fwd_level};
    ft.stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ft.stop_fd < 0 || sem_init(&ft.started, 0, 0) < 0) {
        rb_error("gateway_start", "eventfd/sem_init: %s", strerror(errno));
        if (ft.stop_fd >= 0) close(ft.stop_fd);
        return -1;
    }
    pthread_t th;
    int rc = -1;
    if (pthread_create(&th, NULL, s_forwarder_main, &ft) != 0) {
        rb_error("gateway_start", "cannot start the forwarder's thread");
        goto out;
    }
    while (sem_wait(&ft.started) < 0 && errno == EINTR) {
    }
    rb_loop_t *loop = NULL;
    edge_t *edge = NULL;
    if (!ft.ok) {
        rb_error("gateway_start", "the forwarder did not start; see the messages above");
    } else if (!(loop = rb_loop_new()) || edge_watch_signals(loop, &edge) < 0) {
        rb_error("gateway_start", "cannot create the edge's loop");
    } else if (!(edge = edge_new(loop, edge_cfg))) {
        rb_error("gateway_start", "cannot start the edge; see the messages above");
    } else {
        rc = rb_loop_run(loop);
    }
    edge_destroy(&edge);
    rb_loop_destroy(&loop);
    uint64_t one = 1;
    if (write(ft.stop_fd, &one, sizeof one) < 0)
        rb_error("gateway_stop", "cannot tell the forwarder to stop: %s", strerror(errno));
    pthread_join(th, NULL);
    if (ft.rc < 0) rc = -1;
    if (rc == 0) rb_info("gateway_stopped", "the edge and the forwarder stopped cleanly");
out:
    sem_destroy(&ft.started);
    close(ft.stop_fd);
    rb_zmq_term();
    return rc;
}
