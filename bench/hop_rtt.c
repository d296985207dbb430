/* reachback-hop-rtt: what one ZeroMQ hop costs a round trip, next to a raw
 * socket, on this machine. A one-byte ping-pong between two processes, first
 * over a Unix socketpair, then over a ZeroMQ PAIR on ipc:// (the edge ->
 * forwarder link's transport when they share a host), then over inproc://
 * between two threads (reachback-gateway's), each --count times; prints one
 * markdown table (p50, p99 in microseconds).
 *
 * Why: a connect + first byte through the gateway crosses that link once
 * each way. ZeroMQ hands every message from the caller's thread to its I/O
 * thread and back on the other side, so each direction wakes two more
 * threads than a socket does; on a VM whose idle CPUs halt, that is most
 * of the difference between the first two rows. inproc:// has no I/O
 * thread: the message goes straight to the other thread.
 *
 *   reachback-hop-rtt [--count N]   (default 20000, at most 1000000) */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

static double s_now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void s_row(const char *what, double *lat, size_t n)
{
    qsort(lat, n, sizeof *lat, s_cmp);
    printf("| %s | %.1f | %.1f |\n", what, lat[n / 2], lat[n * 99 / 100]);
}

static int s_socketpair(double *lat, size_t n)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        char b;
        close(sv[0]);
        while (read(sv[1], &b, 1) == 1)
            if (write(sv[1], &b, 1) != 1) break;
        _exit(0);
    }
    close(sv[1]);
    char b = 'x';
    for (size_t i = 0; i < n; i++) {
        double t = s_now_us();
        if (write(sv[0], &b, 1) != 1 || read(sv[0], &b, 1) != 1) return -1;
        lat[i] = s_now_us() - t;
    }
    close(sv[0]);
    waitpid(pid, NULL, 0);
    return 0;
}

/* Echoes one-byte messages until 'q', then closes sock. */
static void *s_zmq_echo(void *sock)
{
    char m;
    while (zmq_recv(sock, &m, 1, 0) == 1 && m != 'q')
        if (zmq_send(sock, &m, 1, 0) != 1) break;
    zmq_close(sock);
    return NULL;
}

/* n timed one-byte round trips on s, then 'q' to end the echo. 0 or -1. */
static int s_zmq_pingpong(void *s, double *lat, size_t n)
{
    char m = 'x';
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        double t = s_now_us();
        if (zmq_send(s, &m, 1, 0) != 1 || zmq_recv(s, &m, 1, 0) != 1) rc = -1;
        lat[i] = s_now_us() - t;
    }
    m = 'q';
    zmq_send(s, &m, 1, 0);
    return rc;
}

static int s_zmq(double *lat, size_t n)
{
    char dir[] = "/tmp/rb-hop-XXXXXX", ep[64];
    if (!mkdtemp(dir)) return -1;
    snprintf(ep, sizeof ep, "ipc://%s/s", dir);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_PAIR);
        zmq_connect(s, ep);
        s_zmq_echo(s);
        zmq_ctx_term(ctx);
        _exit(0);
    }
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_PAIR);
    int rc = zmq_bind(s, ep);
    char m = 'x';
    /* The first exchange waits for the connect. */
    if (rc == 0) rc = zmq_send(s, &m, 1, 0) == 1 && zmq_recv(s, &m, 1, 0) == 1 ? 0 : -1;
    if (rc == 0)
        rc = s_zmq_pingpong(s, lat, n);
    else
        zmq_send(s, "q", 1, 0);
    waitpid(pid, NULL, 0);
    zmq_close(s);
    zmq_ctx_term(ctx);
    char path[80];
    snprintf(path, sizeof path, "%s/s", dir);
    unlink(path);
    rmdir(dir);
    return rc;
}

/* reachback-gateway's link: two threads of one process, one context. */
static int s_zmq_inproc(double *lat, size_t n)
{
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_PAIR), *peer = zmq_socket(ctx, ZMQ_PAIR);
    int rc = zmq_bind(s, "inproc://hop") == 0 && zmq_connect(peer, "inproc://hop") == 0 ? 0 : -1;
    pthread_t th;
    if (rc == 0 && pthread_create(&th, NULL, s_zmq_echo, peer) != 0) rc = -1;
    if (rc < 0) {
        zmq_close(peer);
        zmq_close(s);
        zmq_ctx_term(ctx);
        return -1;
    }
    rc = s_zmq_pingpong(s, lat, n);
    pthread_join(th, NULL);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return rc;
}

int main(int argc, char **argv)
{
    size_t n = 20000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--count") == 0 && i + 1 < argc) {
            char *end;
            unsigned long v = strtoul(argv[++i], &end, 10);
            if (*end || v < 100 || v > 1000000) {
                fprintf(stderr, "reachback-hop-rtt: --count wants 100..1000000\n");
                return 2;
            }
            n = v;
        } else {
            fprintf(stderr, "usage: reachback-hop-rtt [--count N]\n");
            return strcmp(argv[i], "--help") == 0 ? 0 : 2;
        }
    }
    double *lat = calloc(n, sizeof *lat);
    if (!lat) return 1;
    printf("| one-byte round trip (%zu each) | p50, us | p99, us |\n", n);
    printf("| --- | ---: | ---: |\n");
    if (s_socketpair(lat, n) < 0) {
        fprintf(stderr, "reachback-hop-rtt: socketpair run failed: %s\n", strerror(errno));
        return 1;
    }
    s_row("Unix socketpair, two processes", lat, n);
    if (s_zmq(lat, n) < 0) {
        fprintf(stderr, "reachback-hop-rtt: ZeroMQ run failed: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    s_row("ZeroMQ PAIR over ipc://, two processes", lat, n);
    if (s_zmq_inproc(lat, n) < 0) {
        fprintf(stderr, "reachback-hop-rtt: inproc run failed: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    s_row("ZeroMQ PAIR over inproc://, two threads of one process (reachback-gateway)", lat, n);
    free(lat);
    return 0;
}
