/* ctl_http: the smallest HTTP/1.1 client reachback-ctl needs to talk to a
 * broker's admin API: http://host:port only (the status port is internal),
 * one request per connection ("Connection: close"), a bearer token, and a
 * bounded reader of the answer (status line, headers, a body given by
 * Content-Length, chunked, or the end of the connection). */
#ifndef CTL_HTTP_H
#define CTL_HTTP_H
#include <stddef.h>
#include "rb_buf.h"

/* Largest answer read (headers and body). */
#define CTL_HTTP_MAX_RESPONSE (16u * 1024 * 1024)
#define CTL_HTTP_TIMEOUT_MS 10000

/* Splits "http://host:port[/prefix]" (host may be "[v6]"). 0, or -1 with
 * the reason in err. */
int ctl_http_parse_url(const char *url, char *host, size_t hostlen, char *port, size_t portlen,
                       char *prefix, size_t prefixlen, char *err, size_t errlen);
/* Parses a whole response (as read until the peer closed) into its status
 * and body. 0, or -1 with the reason in err. */
int ctl_http_parse_response(const char *buf, size_t len, int *status, rb_buf_t *body, char *err,
                            size_t errlen);
/* method ("GET", "POST") path (starting with '/') on url, with
 * "Authorization: Bearer token" when token is non-empty. 0 with the
 * status and body, or -1 (connect, timeout, malformed answer) with err. */
int ctl_http_request(const char *url, const char *method, const char *path, const char *token,
                     int *status, rb_buf_t *body, char *err, size_t errlen);

#endif
