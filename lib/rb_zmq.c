/* rb_zmq: the process's ZeroMQ context, CURVE key files, socket set-up and
 * the ZAP handler (RFC 27) that decides which CURVE clients may connect. */
#include "rb_zmq.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "rb_buf.h"
#include "rb_log.h"
#include "rb_pb.h"

#define RB_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define RB_ZAP_DOMAIN "reachback"
/* A key file is a few lines; anything bigger is not one. */
#define RB_KEYFILE_MAX 4096
/* ZAP frames are short strings and a 32-byte key; cap what we copy. */
#define RB_ZAP_MAX_FRAMES 16
#define RB_ZAP_FIELD_MAX 256

static void *g_ctx;

void *rb_zmq_ctx(void)
{
    if (g_ctx) return g_ctx;
    g_ctx = zmq_ctx_new();
    if (!g_ctx) rb_error("zmq_ctx", "zmq_ctx_new: %s", zmq_strerror(errno));
    return g_ctx;
}

void rb_zmq_term(void)
{
    if (!g_ctx) return;
    /* zmq_ctx_term waits for every socket to be closed, the ZAP handler's
     * too: a service that forgot it never exited. */
    rb_zap_stop();
    zmq_ctx_term(g_ctx);
    g_ctx = NULL;
}

/* ---- key files ---- */

static void s_trim(char **s, char **e)
{
    while (*s < *e && (**s == ' ' || **s == '\t')) (*s)++;
    while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t' || (*e)[-1] == '\r')) (*e)--;
}

static bool s_z85_key_ok(const char *k)
{
    uint8_t bin[32];
    if (strlen(k) != RB_Z85_KEY_LEN) return false;
    bool ok = zmq_z85_decode(bin, k) != NULL;
    explicit_bzero(bin, sizeof bin);
    return ok;
}

/* Parses a key file into pub/sec (either may come out empty). 0 or -1. */
static int s_keyfile_parse(const char *path, char pub[RB_Z85_KEY_LEN + 1],
                           char sec[RB_Z85_KEY_LEN + 1], char *err, size_t errlen)
{
    char buf[RB_KEYFILE_MAX + 1];
    int rc = -1;
    pub[0] = sec[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, sizeof buf - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n >= sizeof buf - 1) {
            snprintf(err, errlen, "%s: larger than %d bytes, not a key file", path,
                     RB_KEYFILE_MAX);
            goto out;
        }
    }
    buf[n] = '\0';
    if (memchr(buf, '\0', n)) {
        snprintf(err, errlen, "%s: binary data, not a key file", path);
        goto out;
    }
    int line = 0;
    for (char *p = buf; *p;) {
        char *eol = strchr(p, '\n');
        char *next = eol ? eol + 1 : p + strlen(p);
        char *s = p, *e = eol ? eol : next;
        line++;
        p = next;
        s_trim(&s, &e);
        if (s == e || *s == '#') continue;
        char *eq = memchr(s, '=', (size_t)(e - s));
        if (!eq) {
            snprintf(err, errlen, "%s:%d: expected 'public = KEY' or 'secret = KEY'", path, line);
            goto out;
        }
        char *ks = s, *ke = eq, *vs = eq + 1, *ve = e;
        s_trim(&ks, &ke);
        s_trim(&vs, &ve);
        if (ve - vs >= 2 && *vs == '"' && ve[-1] == '"') {
            vs++;
            ve--;
        }
        char *dst;
        if ((size_t)(ke - ks) == 6 && memcmp(ks, "public", 6) == 0)
            dst = pub;
        else if ((size_t)(ke - ks) == 6 && memcmp(ks, "secret", 6) == 0)
            dst = sec;
        else {
            snprintf(err, errlen, "%s:%d: unknown key '%.*s'", path, line,
                     (int)(ke - ks > 32 ? 32 : ke - ks), ks);
            goto out;
        }
        if (dst[0]) {
            snprintf(err, errlen, "%s:%d: '%s' given twice", path, line,
                     dst == pub ? "public" : "secret");
            goto out;
        }
        if (ve - vs != RB_Z85_KEY_LEN) {
            snprintf(err, errlen, "%s:%d: key must be %d Z85 characters, got %d", path, line,
                     RB_Z85_KEY_LEN, (int)(ve - vs));
            goto out;
        }
        memcpy(dst, vs, RB_Z85_KEY_LEN);
        dst[RB_Z85_KEY_LEN] = '\0';
        if (!s_z85_key_ok(dst)) {
            snprintf(err, errlen, "%s:%d: not a valid Z85 key", path, line);
            dst[0] = '\0';
            goto out;
        }
    }
    rc = 0;
out:
    explicit_bzero(buf, sizeof buf);
    close(fd);
    if (rc < 0) explicit_bzero(sec, RB_Z85_KEY_LEN + 1);
    return rc;
}

int rb_curve_load(rb_curve_t *c, const char *path, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    if (!path || !*path) return 0;
    char pub[RB_Z85_KEY_LEN + 1], sec[RB_Z85_KEY_LEN + 1];
    if (s_keyfile_parse(path, pub, sec, err, errlen) < 0) return -1;
    if (!sec[0]) {
        snprintf(err, errlen, "%s: no 'secret = KEY' line (is this the .pub file?)", path);
        return -1;
    }
    /* The public key is derived from the secret one; a file whose public line
     * disagrees was edited by hand and would fail every handshake. */
    char derived[RB_Z85_KEY_LEN + 1];
    if (zmq_curve_public(derived, sec) != 0) {
        snprintf(err, errlen, "%s: cannot derive the public key: %s", path, zmq_strerror(errno));
        explicit_bzero(sec, sizeof sec);
        return -1;
    }
    if (pub[0] && strcmp(pub, derived) != 0) {
        snprintf(err, errlen, "%s: public key does not match the secret key", path);
        explicit_bzero(sec, sizeof sec);
        return -1;
    }
    struct stat st;
    if (stat(path, &st) == 0 && (st.st_mode & 077))
        rb_warn("key_file_mode", "%s is readable by group or others (mode %o); use 0600", path,
                (unsigned)(st.st_mode & 0777));
    c->enabled = true;
    memcpy(c->public_key, derived, sizeof c->public_key);
    memcpy(c->secret_key, sec, sizeof c->secret_key);
    explicit_bzero(sec, sizeof sec);
    return 0;
}

int rb_curve_read_public(const char *path, char out[RB_Z85_KEY_LEN + 1], char *err,
                         size_t errlen)
{
    char pub[RB_Z85_KEY_LEN + 1], sec[RB_Z85_KEY_LEN + 1];
    out[0] = '\0';
    if (!path || !*path) {
        snprintf(err, errlen, "no key file given");
        return -1;
    }
    if (s_keyfile_parse(path, pub, sec, err, errlen) < 0) return -1;
    if (!pub[0] && sec[0] && zmq_curve_public(pub, sec) != 0) pub[0] = '\0';
    explicit_bzero(sec, sizeof sec);
    if (!pub[0]) {
        snprintf(err, errlen, "%s: no 'public = KEY' line", path);
        return -1;
    }
    memcpy(out, pub, RB_Z85_KEY_LEN + 1);
    return 0;
}

/* Writes text to path atomically (temp file + rename) with the given mode. */
static int s_write_file(const char *path, const char *text, mode_t mode)
{
    rb_buf_t tmp = RB_BUF_INIT;
    int rc = -1, fd = -1;
    if (rb_buf_printf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0) goto out;
    fd = open(tmp.data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) goto out;
    /* O_CREAT's mode is filtered by umask and ignored for an old file. */
    if (fchmod(fd, mode) < 0) goto out;
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) goto out;
        off += (size_t)w;
    }
    if (fsync(fd) < 0) goto out;
    if (close(fd) < 0) {
        fd = -1;
        goto out;
    }
    fd = -1;
    if (rename(tmp.data, path) < 0) goto out;
    rc = 0;
out:
    if (rc < 0) {
        rb_error("key_write", "%s: %s", path, strerror(errno));
        if (tmp.data) unlink(tmp.data);
    }
    if (fd >= 0) close(fd);
    rb_buf_free(&tmp);
    return rc;
}

int rb_curve_generate(const char *dir, const char *name)
{
    char pub[RB_Z85_KEY_LEN + 1], sec[RB_Z85_KEY_LEN + 1];
    rb_buf_t path = RB_BUF_INIT, text = RB_BUF_INIT;
    int rc = -1;
    if (zmq_curve_keypair(pub, sec) != 0) {
        rb_error("key_generate", "zmq_curve_keypair: %s (libzmq without CURVE?)",
                 zmq_strerror(errno));
        return -1;
    }
    if (rb_buf_printf(&text, "# reachback CURVE key pair '%s'; keep this file secret\n"
                             "public = %s\nsecret = %s\n", name, pub, sec) < 0 ||
        rb_buf_printf(&path, "%s/%s.key", dir, name) < 0)
        goto out;
    if (s_write_file(path.data, text.data, 0600) < 0) goto out;
    explicit_bzero(text.data, text.len);
    rb_buf_reset(&text);
    rb_buf_reset(&path);
    if (rb_buf_printf(&text, "# reachback CURVE public key '%s'\npublic = %s\n", name, pub) < 0 ||
        rb_buf_printf(&path, "%s/%s.pub", dir, name) < 0)
        goto out;
    if (s_write_file(path.data, text.data, 0644) < 0) goto out;
    rc = 0;
out:
    explicit_bzero(sec, sizeof sec);
    if (text.data) explicit_bzero(text.data, text.len);
    rb_buf_free(&text);
    rb_buf_free(&path);
    return rc;
}

/* ---- sockets ---- */

const char *rb_zmq_endpoint_next(const char **cursor, size_t *len)
{
    const char *e = *cursor + strspn(*cursor, ", ");
    *len = strcspn(e, ", ");
    *cursor = e + *len;
    return *len ? e : NULL;
}

bool rb_zmq_endpoint_local(const char *endpoints)
{
    size_t len;
    for (const char *e; (e = rb_zmq_endpoint_next(&endpoints, &len));)
        if (strncmp(e, "ipc://", 6) != 0 && strncmp(e, "inproc://", 9) != 0) return false;
    return true;
}

static bool g_zap_running;

static int s_setint(void *s, int opt, int v, const char *what, const char *endpoint)
{
    if (zmq_setsockopt(s, opt, &v, sizeof v) == 0) return 0;
    rb_error("zmq_sockopt", "%s: setting %s: %s", endpoint, what, zmq_strerror(errno));
    return -1;
}

static int s_setkey(void *s, int opt, const char *key, const char *what, const char *endpoint)
{
    if (key && strlen(key) == RB_Z85_KEY_LEN &&
        zmq_setsockopt(s, opt, key, RB_Z85_KEY_LEN + 1) == 0)
        return 0;
    rb_error("zmq_sockopt", "%s: setting %s: %s", endpoint, what,
             key && strlen(key) == RB_Z85_KEY_LEN ? zmq_strerror(errno) : "bad key");
    return -1;
}

/* Options every socket gets: no lingering at close, room for bursts, a
 * message cap so a peer cannot make us allocate without bound, and liveness
 * checks so a peer that vanished (host down, cable cut) is noticed in
 * seconds rather than by TCP's hours-long timeouts. */
static void *s_socket(int type, const char *endpoint)
{
    void *ctx = rb_zmq_ctx();
    if (!ctx) return NULL;
    void *s = zmq_socket(ctx, type);
    if (!s) {
        rb_error("zmq_socket", "%s: zmq_socket: %s", endpoint, zmq_strerror(errno));
        return NULL;
    }
    int64_t maxmsg = (int64_t)RB_PB_MAX_MESSAGE + 4096;
    if (s_setint(s, ZMQ_LINGER, 0, "ZMQ_LINGER", endpoint) < 0 ||
        s_setint(s, ZMQ_SNDHWM, 100000, "ZMQ_SNDHWM", endpoint) < 0 ||
        s_setint(s, ZMQ_RCVHWM, 100000, "ZMQ_RCVHWM", endpoint) < 0 ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) < 0 ||
        s_setint(s, ZMQ_TCP_KEEPALIVE, 1, "ZMQ_TCP_KEEPALIVE", endpoint) < 0 ||
        s_setint(s, ZMQ_TCP_KEEPALIVE_IDLE, 30, "ZMQ_TCP_KEEPALIVE_IDLE", endpoint) < 0 ||
        s_setint(s, ZMQ_TCP_KEEPALIVE_INTVL, 10, "ZMQ_TCP_KEEPALIVE_INTVL", endpoint) < 0 ||
        s_setint(s, ZMQ_TCP_KEEPALIVE_CNT, 3, "ZMQ_TCP_KEEPALIVE_CNT", endpoint) < 0 ||
        s_setint(s, ZMQ_HEARTBEAT_IVL, 1000, "ZMQ_HEARTBEAT_IVL", endpoint) < 0 ||
        s_setint(s, ZMQ_HEARTBEAT_TIMEOUT, 3000, "ZMQ_HEARTBEAT_TIMEOUT", endpoint) < 0 ||
        s_setint(s, ZMQ_HEARTBEAT_TTL, 3000, "ZMQ_HEARTBEAT_TTL", endpoint) < 0 ||
        s_setint(s, ZMQ_RECONNECT_IVL, 100, "ZMQ_RECONNECT_IVL", endpoint) < 0 ||
        s_setint(s, ZMQ_RECONNECT_IVL_MAX, 2000, "ZMQ_RECONNECT_IVL_MAX", endpoint) < 0) {
        zmq_close(s);
        return NULL;
    }
    if (type == ZMQ_ROUTER && s_setint(s, ZMQ_ROUTER_MANDATORY, 1, "ZMQ_ROUTER_MANDATORY",
                                       endpoint) < 0) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

void *rb_zsock_bind(int type, const char *endpoint, const rb_curve_t *curve)
{
    return rb_zsock_bind_with(type, endpoint, curve, NULL);
}

void *rb_zsock_bind_with(int type, const char *endpoint, const rb_curve_t *curve,
                         rb_zsock_setup_t *setup)
{
    if (!endpoint || !*endpoint) {
        rb_error("zmq_bind", "empty endpoint");
        return NULL;
    }
    if (curve && curve->enabled && !g_zap_running) {
        /* Without a ZAP handler libzmq lets every CURVE client in. */
        rb_error("zmq_bind", "%s: CURVE server needs rb_zap_start first", endpoint);
        return NULL;
    }
    void *s = s_socket(type, endpoint);
    if (!s) return NULL;
    if (curve && curve->enabled) {
        if (s_setint(s, ZMQ_CURVE_SERVER, 1, "ZMQ_CURVE_SERVER", endpoint) < 0 ||
            s_setkey(s, ZMQ_CURVE_SECRETKEY, curve->secret_key, "ZMQ_CURVE_SECRETKEY",
                     endpoint) < 0)
            goto fail;
    }
    /* The domain routes every handshake through our ZAP handler, also for
     * NULL-mechanism sockets (which it accepts): one place logs every peer. */
    if (zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, RB_ZAP_DOMAIN, strlen(RB_ZAP_DOMAIN)) < 0) {
        rb_error("zmq_sockopt", "%s: setting ZMQ_ZAP_DOMAIN: %s", endpoint, zmq_strerror(errno));
        goto fail;
    }
    if (setup) setup(s);
    size_t len, bound = 0;
    for (const char *e, *at = endpoint; (e = rb_zmq_endpoint_next(&at, &len)); bound++) {
        char one[512];
        if (len >= sizeof one) {
            rb_error("zmq_bind", "%.*s...: endpoint too long", 40, e);
            goto fail;
        }
        memcpy(one, e, len);
        one[len] = '\0';
        if (zmq_bind(s, one) < 0) {
            rb_error("zmq_bind", "%s: %s", one, zmq_strerror(errno));
            goto fail;
        }
    }
    if (bound == 0) {
        rb_error("zmq_bind", "'%s': no endpoint in the list", endpoint);
        goto fail;
    }
    return s;
fail:
    zmq_close(s);
    return NULL;
}

void *rb_zsock_connect(int type, const char *endpoint, const rb_curve_t *curve,
                       const char *server_public)
{
    return rb_zsock_connect_as(type, endpoint, curve, server_public, NULL, NULL);
}

void *rb_zsock_connect_as(int type, const char *endpoint, const rb_curve_t *curve,
                          const char *server_public, const char *routing_id,
                          rb_zsock_setup_t *setup)
{
    if (!endpoint || !*endpoint) {
        rb_error("zmq_connect", "empty endpoint");
        return NULL;
    }
    void *s = s_socket(type, endpoint);
    if (!s) return NULL;
    if (curve && curve->enabled) {
        if (s_setkey(s, ZMQ_CURVE_SERVERKEY, server_public, "ZMQ_CURVE_SERVERKEY", endpoint) < 0 ||
            s_setkey(s, ZMQ_CURVE_PUBLICKEY, curve->public_key, "ZMQ_CURVE_PUBLICKEY",
                     endpoint) < 0 ||
            s_setkey(s, ZMQ_CURVE_SECRETKEY, curve->secret_key, "ZMQ_CURVE_SECRETKEY",
                     endpoint) < 0)
            goto fail;
    }
    /* A DEALER round-robins over its peers; without IMMEDIATE it would also
     * queue requests on links still (re)connecting, where they wait until
     * they time out instead of going to a live peer. */
    if (type == ZMQ_DEALER && s_setint(s, ZMQ_IMMEDIATE, 1, "ZMQ_IMMEDIATE", endpoint) < 0)
        goto fail;
    if (routing_id && zmq_setsockopt(s, ZMQ_ROUTING_ID, routing_id, strlen(routing_id)) < 0) {
        rb_error("zmq_connect", "%s: routing id '%s': %s", endpoint, routing_id,
                 zmq_strerror(errno));
        goto fail;
    }
    if (setup) setup(s);
    if (zmq_connect(s, endpoint) < 0) {
        rb_error("zmq_connect", "%s: %s", endpoint, zmq_strerror(errno));
        goto fail;
    }
    return s;
fail:
    zmq_close(s);
    return NULL;
}

void rb_zsock_close(void **sock)
{
    if (!sock || !*sock) return;
    zmq_close(*sock);
    *sock = NULL;
}

/* ---- ZAP handler ---- */

typedef struct {
    rb_loop_t *loop;
    void *sock;
    uint8_t (*keys)[32];
    size_t nkeys;
} rb_zap_t;

static rb_zap_t g_zap;

typedef struct {
    char f[RB_ZAP_MAX_FRAMES][RB_ZAP_FIELD_MAX];
    size_t len[RB_ZAP_MAX_FRAMES];
    size_t n;          /* frames stored */
    bool truncated;    /* a frame was longer than RB_ZAP_FIELD_MAX */
    bool too_many;     /* more than RB_ZAP_MAX_FRAMES frames */
} rb_zap_req_t;

/* Receives every frame of one request, copying at most the caps. 0 when a
 * request was read, -1 when none was waiting. */
static int s_zap_recv(void *sock, rb_zap_req_t *r)
{
    memset(r, 0, sizeof *r);
    bool first = true;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, first ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(&m);
            return first ? -1 : 0;
        }
        first = false;
        size_t len = zmq_msg_size(&m);
        if (r->n < RB_ZAP_MAX_FRAMES) {
            if (len > RB_ZAP_FIELD_MAX - 1) r->truncated = true;
            size_t cp = len > RB_ZAP_FIELD_MAX - 1 ? RB_ZAP_FIELD_MAX - 1 : len;
            memcpy(r->f[r->n], zmq_msg_data(&m), cp);
            r->f[r->n][cp] = '\0';
            r->len[r->n] = cp;
            r->n++;
        } else {
            r->too_many = true;
        }
        bool more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        if (!more) return 0;
    }
}

static void s_zap_send(void *sock, const char *reqid, size_t reqid_len, const char *code,
                       const char *text)
{
    /* RFC 27 reply: version, request id, status code, status text, user id,
     * metadata. */
    rb_loop_zsock_used(sock);
    int rc = zmq_send(sock, "1.0", 3, ZMQ_SNDMORE);
    if (rc >= 0) rc = zmq_send(sock, reqid, reqid_len, ZMQ_SNDMORE);
    if (rc >= 0) rc = zmq_send(sock, code, strlen(code), ZMQ_SNDMORE);
    if (rc >= 0) rc = zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
    if (rc >= 0) rc = zmq_send(sock, "", 0, ZMQ_SNDMORE);
    if (rc >= 0) rc = zmq_send(sock, "", 0, 0);
    if (rc < 0) rb_error("zap_send", "ZAP reply failed: %s", zmq_strerror(errno));
}

/* Printable form of a peer-supplied string for logs: non-printable bytes
 * become '?', so a hostile address cannot forge log lines. */
static void s_printable(char *out, size_t outlen, const char *in, size_t len)
{
    size_t i;
    for (i = 0; i < len && i + 1 < outlen; i++)
        out[i] = (in[i] >= 0x20 && in[i] < 0x7f && in[i] != '"' && in[i] != '\\') ? in[i] : '?';
    out[i] = '\0';
}

static void s_zap_handle(void *sock, const rb_zap_req_t *r)
{
    const char *reqid = r->n >= 2 ? r->f[1] : "";
    size_t reqid_len = r->n >= 2 ? r->len[1] : 0;
    char addr[64];
    s_printable(addr, sizeof addr, r->n >= 4 ? r->f[3] : "?", r->n >= 4 ? r->len[3] : 1);
    if (r->n < 6 || r->too_many || r->truncated || r->len[0] != 3 ||
        memcmp(r->f[0], "1.0", 3) != 0) {
        rb_warn("zap_bad_request", "malformed ZAP request (%zu frames%s) from %s", r->n,
                r->too_many ? ", too many" : r->truncated ? ", oversized frame" : "", addr);
        s_zap_send(sock, reqid, reqid_len, "500", "malformed request");
        return;
    }
    const char *mech = r->f[5];
    if (r->len[5] == 4 && memcmp(mech, "NULL", 4) == 0 && r->n == 6) {
        s_zap_send(sock, reqid, reqid_len, "200", "OK");
        return;
    }
    if (r->len[5] == 5 && memcmp(mech, "CURVE", 5) == 0) {
        if (r->n != 7 || r->len[6] != 32) {
            rb_warn("zap_bad_request", "CURVE request from %s without a 32-byte key", addr);
            s_zap_send(sock, reqid, reqid_len, "500", "malformed request");
            return;
        }
        char z85[RB_Z85_KEY_LEN + 1];
        zmq_z85_encode(z85, (const uint8_t *)r->f[6], 32);
        for (size_t i = 0; i < g_zap.nkeys; i++) {
            if (memcmp(g_zap.keys[i], r->f[6], 32) == 0) {
                rb_debug("zap_ok", "CURVE client %s from %s accepted", z85, addr);
                s_zap_send(sock, reqid, reqid_len, "200", "OK");
                return;
            }
        }
        rb_warn("zap_refused", "CURVE client %s from %s refused: key not allowed", z85, addr);
        s_zap_send(sock, reqid, reqid_len, "400", "key not allowed");
        return;
    }
    /* PLAIN (clear-text passwords) and anything else: never. */
    char m[16];
    s_printable(m, sizeof m, mech, r->len[5]);
    rb_warn("zap_refused", "mechanism %s from %s refused", m, addr);
    s_zap_send(sock, reqid, reqid_len, "400", "mechanism not allowed");
}

static void s_zap_readable(rb_loop_t *loop, void *sock, void *arg)
{
    rb_zap_req_t *r = malloc(sizeof *r);   /* 4 KiB: keep it off the stack */
    if (!r) return;
    /* REP: one request, one reply, then the next. */
    while (s_zap_recv(sock, r) == 0) s_zap_handle(sock, r);
    explicit_bzero(r, sizeof *r);
    free(r);
}

static int s_zap_load_keys(const char *allowed_files, char *err, size_t errlen)
{
    g_zap.keys = NULL;
    g_zap.nkeys = 0;
    if (!allowed_files) return 0;
    const char *p = allowed_files;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
        if (len) {
            char *path = strndup(p, len);
            char z85[RB_Z85_KEY_LEN + 1];
            if (!path) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            int rc = rb_curve_read_public(path, z85, err, errlen);
            free(path);
            if (rc < 0) return -1;
            uint8_t(*k)[32] = realloc(g_zap.keys, (g_zap.nkeys + 1) * sizeof *k);
            if (!k) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            g_zap.keys = k;
            zmq_z85_decode(g_zap.keys[g_zap.nkeys++], z85);
        }
        if (!comma) break;
        p = comma + 1;
    }
    return 0;
}

int rb_zap_start(rb_loop_t *loop, const char *allowed_files, char *err, size_t errlen)
{
    if (g_zap_running) {
        snprintf(err, errlen, "ZAP handler already running");
        return -1;
    }
    if (s_zap_load_keys(allowed_files, err, errlen) < 0) goto fail;
    void *ctx = rb_zmq_ctx();
    if (!ctx) {
        snprintf(err, errlen, "no ZeroMQ context");
        goto fail;
    }
    g_zap.sock = zmq_socket(ctx, ZMQ_REP);
    int zero = 0;
    if (!g_zap.sock || zmq_setsockopt(g_zap.sock, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_bind(g_zap.sock, RB_ZAP_ENDPOINT) < 0) {
        snprintf(err, errlen, "ZAP handler: %s", zmq_strerror(errno));
        goto fail;
    }
    if (rb_loop_add_zsock(loop, g_zap.sock, s_zap_readable, NULL) < 0) {
        snprintf(err, errlen, "ZAP handler: cannot join the loop");
        goto fail;
    }
    g_zap.loop = loop;
    g_zap_running = true;
    rb_info("zap_start", "ZAP handler running, %zu CURVE client key(s) allowed", g_zap.nkeys);
    return 0;
fail:
    if (g_zap.sock) zmq_close(g_zap.sock);
    g_zap.sock = NULL;
    free(g_zap.keys);
    g_zap.keys = NULL;
    g_zap.nkeys = 0;
    return -1;
}

void rb_zap_stop(void)
{
    if (!g_zap_running) return;
    rb_loop_del_zsock(g_zap.loop, g_zap.sock);
    zmq_close(g_zap.sock);
    free(g_zap.keys);
    memset(&g_zap, 0, sizeof g_zap);
    g_zap_running = false;
}
