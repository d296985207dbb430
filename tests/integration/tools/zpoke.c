/* rb-zpoke: sends multipart messages, given as hex frames, to a reachback
 * ZeroMQ endpoint from one DEALER socket, optionally waiting for a reply.
 * Integration tests use it to throw garbage at services and to check that
 * CURVE refuses keys it does not know.
 *
 *   rb-zpoke ENDPOINT SERVER_PUB_FILE (SECRET_KEY_FILE | new) WAIT_MS HEX... [, HEX...]...
 *
 * A lone "," starts another message on the same connection (a data link
 * peer says Hello before anything else). "zeros:N" is a frame of N zero
 * bytes (at most 65536: a full DATA payload). SERVER_PUB_FILE "-" means no
 * CURVE. "new" makes a fresh key the server has never seen. With WAIT_MS,
 * each message but the last may get one reply, which is read and dropped;
 * "reply" then means the last message got one. Exits 0 when a reply
 * arrived within WAIT_MS (or WAIT_MS is 0), 1 when none did or the link
 * never came up (about 2 s), 2 on usage errors. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "rb_zmq.h"

static int s_unhex(const char *s, unsigned char *out, size_t cap)
{
    size_t n = strlen(s);
    if (n % 2 || n / 2 > cap) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (unsigned char)v;
    }
    return (int)(n / 2);
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: rb-zpoke ENDPOINT SERVER_PUB_FILE (SECRET_KEY_FILE|new) WAIT_MS HEX...\n");
        return 2;
    }
    rb_curve_t curve = {0};
    char server_pub[RB_Z85_KEY_LEN + 1] = "", err[256];
    if (strcmp(argv[2], "-") != 0) {
        if (rb_curve_read_public(argv[2], server_pub, err, sizeof err) < 0) {
            fprintf(stderr, "rb-zpoke: %s\n", err);
            return 2;
        }
        if (strcmp(argv[3], "new") == 0) {
            zmq_curve_keypair(curve.public_key, curve.secret_key);
            curve.enabled = true;
        } else if (rb_curve_load(&curve, argv[3], err, sizeof err) < 0) {
            fprintf(stderr, "rb-zpoke: %s\n", err);
            return 2;
        }
    }
    void *s = rb_zsock_connect(ZMQ_DEALER, argv[1], &curve, server_pub);
    if (!s) return 2;
    int wait_ms = atoi(argv[4]);
    /* Our DEALERs use ZMQ_IMMEDIATE: nothing is queued until the (CURVE)
     * handshake is done, so a refused key shows up as a message that can
     * never leave. Retry the first frame until a deadline instead of
     * blocking. */
    int nframes = argc - 5;
    enum { MAX_FRAMES = 128, MAX_HEX = 4096, MAX_ZEROS = 65536 };
    static unsigned char hex[MAX_FRAMES][MAX_HEX], zeros[MAX_ZEROS];
    unsigned char *frames[MAX_FRAMES];
    int lens[MAX_FRAMES];
    bool last[MAX_FRAMES]; /* the frame ends its message */
    if (nframes > MAX_FRAMES) {
        fprintf(stderr, "rb-zpoke: more than %d frames\n", MAX_FRAMES);
        return 2;
    }
    int n = 0;
    for (int i = 0; i < nframes; i++) {
        const char *arg = argv[i + 5];
        if (strcmp(arg, ",") == 0) {
            if (n == 0 || last[n - 1]) {
                fprintf(stderr, "rb-zpoke: an empty message\n");
                return 2;
            }
            last[n - 1] = true;
            continue;
        }
        if (strncmp(arg, "zeros:", 6) == 0) {
            char *end;
            long len = strtol(arg + 6, &end, 10);
            frames[n] = zeros;
            lens[n] = end == arg + 6 || *end || len < 0 || len > MAX_ZEROS ? -1 : (int)len;
        } else {
            frames[n] = hex[n];
            lens[n] = s_unhex(arg, hex[n], sizeof hex[n]);
        }
        if (lens[n] < 0) {
            fprintf(stderr, "rb-zpoke: bad frame '%s'\n", arg);
            return 2;
        }
        last[n++] = false;
    }
    if (n == 0 || last[n - 1]) {
        fprintf(stderr, "rb-zpoke: an empty message\n");
        return 2;
    }
    last[n - 1] = true;
    nframes = n;
    int tries = 0;
    while (zmq_send(s, frames[0], (size_t)lens[0], ZMQ_DONTWAIT | (last[0] ? 0 : ZMQ_SNDMORE)) <
           0) {
        if (++tries > 100) {
            printf("not connected\n");
            rb_zsock_close(&s);
            rb_zmq_term();
            return 1;
        }
        zmq_pollitem_t it = {s, 0, ZMQ_POLLOUT, 0};
        zmq_poll(&it, 1, 20);
    }
    for (int i = 1; i < nframes; i++) {
        if (last[i - 1] && wait_ms > 0) {
            /* The reply to the message before, if any (a HelloAck). */
            zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
            if (zmq_poll(&it, 1, wait_ms) == 1) {
                int more = 1;
                size_t ml = sizeof more;
                while (more) {
                    zmq_msg_t m;
                    zmq_msg_init(&m);
                    zmq_msg_recv(&m, s, 0);
                    zmq_msg_close(&m);
                    zmq_getsockopt(s, ZMQ_RCVMORE, &more, &ml);
                }
            }
        }
        zmq_send(s, frames[i], (size_t)lens[i], last[i] ? 0 : ZMQ_SNDMORE);
    }
    int rc = 0;
    if (wait_ms > 0) {
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        rc = zmq_poll(&it, 1, wait_ms) == 1 ? 0 : 1;
        printf("%s\n", rc == 0 ? "reply" : "no reply");
    } else {
        /* Give the handshake time to complete so the message leaves, and
         * what is still queued (megabytes of DATA) time to follow: our
         * sockets linger 0, which would drop it at close. */
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        zmq_poll(&it, 1, 300);
        int linger = 2000;
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    }
    rb_zsock_close(&s);
    rb_zmq_term();
    return rc;
}
