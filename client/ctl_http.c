/* ctl_http: see ctl_http.h. Blocking I/O with poll() deadlines: the tool
 * does one thing and exits, so a loop would add nothing. */
#include "ctl_http.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rb_loop.h"

/* Header lines we accept; a longer head is not an admin API answer. */
#define MAX_HEAD 65536

int ctl_http_parse_url(const char *url, char *host, size_t hostlen, char *port, size_t portlen,
                       char *prefix, size_t prefixlen, char *err, size_t errlen)
{
    if (strncmp(url, "http://", 7) != 0) {
        snprintf(err, errlen, "'%s': only http://HOST:PORT URLs are supported", url);
        return -1;
    }
    const char *hp = url + 7;
    const char *slash = strchr(hp, '/');
    size_t hplen = slash ? (size_t)(slash - hp) : strlen(hp);
    const char *colon = NULL;
    const char *hstart = hp;
    size_t hlen;
    if (*hp == '[') {
        const char *rb = memchr(hp, ']', hplen);
        if (!rb || rb + 1 >= hp + hplen || rb[1] != ':') goto bad;
        hstart = hp + 1;
        hlen = (size_t)(rb - hstart);
        colon = rb + 1;
    } else {
        for (const char *p = hp; p < hp + hplen; p++)
            if (*p == ':') colon = p;
        if (!colon) goto bad;
        hlen = (size_t)(colon - hp);
    }
    size_t plen = (size_t)(hp + hplen - colon - 1);
    if (hlen == 0 || hlen >= hostlen || plen == 0 || plen >= portlen) goto bad;
    for (size_t i = 0; i < plen; i++)
        if (colon[1 + i] < '0' || colon[1 + i] > '9') goto bad;
    memcpy(host, hstart, hlen);
    host[hlen] = '\0';
    memcpy(port, colon + 1, plen);
    port[plen] = '\0';
    /* A prefix (a proxy path) is kept without its trailing slash. */
    const char *pre = slash ? slash : "";
    size_t prelen = strlen(pre);
    while (prelen > 0 && pre[prelen - 1] == '/') prelen--;
    if (prelen >= prefixlen) goto bad;
    memcpy(prefix, pre, prelen);
    prefix[prelen] = '\0';
    return 0;
bad:
    snprintf(err, errlen, "'%s' is not http://HOST:PORT", url);
    return -1;
}

/* Finds "\r\n" in [p, end); NULL when absent. */
static const char *s_eol(const char *p, const char *end)
{
    for (; p + 1 < end; p++)
        if (p[0] == '\r' && p[1] == '\n') return p;
    return NULL;
}

/* Decodes a chunked body [p, end) into body. 0 or -1. */
static int s_dechunk(const char *p, const char *end, rb_buf_t *body, char *err, size_t errlen)
{
    for (;;) {
        const char *eol = s_eol(p, end);
        if (!eol) break;
        uint64_t n = 0;
        const char *q = p;
        int digits = 0;
        for (; q < eol; q++, digits++) {
            char c = *q;
            unsigned d;
            if (c >= '0' && c <= '9') d = (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f') d = (unsigned)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') d = (unsigned)(c - 'A' + 10);
            else break;   /* chunk extensions follow ';' */
            if (digits >= 8) goto bad;
            n = n * 16 + d;
        }
        if (digits == 0) goto bad;
        p = eol + 2;
        if (n == 0) return 0;   /* trailers, if any, are ignored */
        if ((uint64_t)(end - p) < n + 2 || p[n] != '\r' || p[n + 1] != '\n') break;
        if (rb_buf_append(body, p, (size_t)n) < 0) goto bad;
        p += n + 2;
    }
    snprintf(err, errlen, "the answer ends inside its chunked body");
    return -1;
bad:
    snprintf(err, errlen, "malformed chunked body");
    return -1;
}

int ctl_http_parse_response(const char *buf, size_t len, int *status, rb_buf_t *body, char *err,
                            size_t errlen)
{
    const char *end = buf + len;
    const char *line = s_eol(buf, end);
    if (!line) {
        snprintf(err, errlen, "no HTTP status line in the answer");
        return -1;
    }
    if (line - buf < 12 || strncmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ' ||
        buf[9] < '1' || buf[9] > '5' || buf[10] < '0' || buf[10] > '9' || buf[11] < '0' ||
        buf[11] > '9' || (line - buf > 12 && buf[12] != ' ')) {
        snprintf(err, errlen, "malformed HTTP status line");
        return -1;
    }
    *status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    bool chunked = false;
    long long clen = -1;
    const char *p = line + 2;
    for (;;) {
        const char *eol = s_eol(p, end);
        if (!eol || eol - buf > MAX_HEAD) {
            snprintf(err, errlen, "the answer's headers are truncated or too long");
            return -1;
        }
        if (eol == p) {
            p += 2;
            break;
        }
        size_t n = (size_t)(eol - p);
        if (n > 15 && strncasecmp(p, "Content-Length:", 15) == 0) {
            const char *v = p + 15;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            clen = 0;
            if (v == eol) clen = -2;
            for (; v < eol && *v != ' ' && *v != '\t'; v++) {
                if (*v < '0' || *v > '9' || clen > CTL_HTTP_MAX_RESPONSE) {
                    clen = -2;
                    break;
                }
                clen = clen * 10 + (*v - '0');
            }
            if (clen == -2) {
                snprintf(err, errlen, "malformed Content-Length");
                return -1;
            }
        } else if (n > 18 && strncasecmp(p, "Transfer-Encoding:", 18) == 0) {
            const char *v = p + 18;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            chunked = (size_t)(eol - v) >= 7 && strncasecmp(v, "chunked", 7) == 0;
        }
        p = eol + 2;
    }
    if (chunked) return s_dechunk(p, end, body, err, errlen);
    size_t have = (size_t)(end - p);
    if (clen >= 0) {
        if ((size_t)clen > have) {
            snprintf(err, errlen, "the answer is shorter than its Content-Length");
            return -1;
        }
        have = (size_t)clen;
    }
    if (have && rb_buf_append(body, p, have) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static uint64_t s_left(uint64_t deadline)
{
    uint64_t now = rb_now_ms();
    return now >= deadline ? 0 : deadline - now;
}

/* Waits for events on fd until the deadline. 0 or -1 (timeout/error). */
static int s_wait(int fd, short events, uint64_t deadline)
{
    for (;;) {
        struct pollfd pfd = {fd, events, 0};
        uint64_t left = s_left(deadline);
        if (left == 0) return -1;
        int r = poll(&pfd, 1, (int)left);
        if (r > 0) return 0;
        if (r == 0) return -1;
        if (errno != EINTR) return -1;
    }
}

static int s_connect(const char *host, const char *port, uint64_t deadline, char *err,
                     size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai != 0) {
        snprintf(err, errlen, "%s: %s", host, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    int why = ECONNREFUSED;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
        if (errno == EINPROGRESS && s_wait(fd, POLLOUT, deadline) == 0) {
            int so = 0;
            socklen_t sl = sizeof so;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl);
            if (so == 0) break;
            why = so;
        } else {
            why = errno == EINPROGRESS ? ETIMEDOUT : errno;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) snprintf(err, errlen, "cannot connect to %s:%s: %s", host, port, strerror(why));
    return fd;
}

int ctl_http_request(const char *url, const char *method, const char *path, const char *token,
                     int *status, rb_buf_t *body, char *err, size_t errlen)
{
    char host[256], port[8], prefix[256];
    if (ctl_http_parse_url(url, host, sizeof host, port, sizeof port, prefix, sizeof prefix, err,
                           errlen) < 0)
        return -1;
    uint64_t deadline = rb_now_ms() + CTL_HTTP_TIMEOUT_MS;
    int fd = s_connect(host, port, deadline, err, errlen);
    if (fd < 0) return -1;
    rb_buf_t req = RB_BUF_INIT, resp = RB_BUF_INIT;
    int rc = -1;
    bool v6 = strchr(host, ':') != NULL;
    rb_buf_printf(&req, "%s %s%s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: reachback-ctl/%s\r\n"
                        "Accept: application/json\r\nConnection: close\r\n",
                  method, prefix, path, v6 ? "[" : "", host, v6 ? "]" : "", port, RB_VERSION);
    if (token && *token) rb_buf_printf(&req, "Authorization: Bearer %s\r\n", token);
    if (strcmp(method, "GET") != 0) rb_buf_puts(&req, "Content-Length: 0\r\n");
    rb_buf_puts(&req, "\r\n");
    size_t off = 0;
    while (off < req.len) {
        ssize_t n = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR) && s_wait(fd, POLLOUT, deadline) == 0)
            continue;
        snprintf(err, errlen, "sending to %s: %s", url, n < 0 ? strerror(errno) : "closed");
        goto out;
    }
    for (;;) {
        char chunk[16384];
        ssize_t n = recv(fd, chunk, sizeof chunk, 0);
        if (n > 0) {
            if (resp.len + (size_t)n > CTL_HTTP_MAX_RESPONSE) {
                snprintf(err, errlen, "the answer is larger than %u bytes", CTL_HTTP_MAX_RESPONSE);
                goto out;
            }
            if (rb_buf_append(&resp, chunk, (size_t)n) < 0) {
                snprintf(err, errlen, "out of memory");
                goto out;
            }
            continue;
        }
        if (n == 0) break;
        if ((errno == EAGAIN || errno == EINTR) && s_wait(fd, POLLIN, deadline) == 0) continue;
        snprintf(err, errlen, "reading from %s: %s", url,
                 errno == EAGAIN ? "no answer in time" : strerror(errno));
        goto out;
    }
    rc = ctl_http_parse_response(resp.data ? resp.data : "", resp.len, status, body, err, errlen);
out:
    close(fd);
    rb_buf_free(&req);
    rb_buf_free(&resp);
    return rc;
}
