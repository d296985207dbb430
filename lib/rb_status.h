/* rb_status: the status HTTP server every service runs (libmicrohttpd,
 * driven from the service's loop, so handlers read live state without locks
 * and never block):
 *   GET /healthz  200 "ok" while the process runs
 *   GET /readyz   200 when every dependency answers, else 503 and why
 *   GET /metrics  Prometheus text
 *   GET /status   JSON: service, version, uptime, ready, plus the service's own
 * Extra routes may require the admin bearer token (Authorization: Bearer T);
 * without it they answer 401. */
#ifndef RB_STATUS_H
#define RB_STATUS_H
#include <stdbool.h>
#include "rb_buf.h"
#include "rb_loop.h"

typedef struct rb_status rb_status_t;

/* Returns true when ready; otherwise appends the reason to why. */
typedef bool(rb_ready_fn)(void *arg, rb_buf_t *why);
/* Appends the service's fields as JSON members ("k":v,...), no braces. */
typedef void(rb_status_info_fn)(void *arg, rb_buf_t *json);
/* Answers a route. path is the full path; body_in the request body. Writes
 * the response to out, sets *content_type (static string), returns the HTTP
 * status. */
typedef int(rb_route_fn)(void *arg, const char *method, const char *path, const char *body_in,
                         size_t body_len, rb_buf_t *out, const char **content_type);

/* A route that must wait for something (Redis, another service) calls
 * rb_status_defer() from inside its handler, returns any status (ignored),
 * and later calls rb_status_finish() exactly once with the answer. The
 * connection waits meanwhile; the loop goes on. */
typedef struct rb_status_pending rb_status_pending_t;

/* listen is "host:port" (port 0: any free port). Returns NULL on error. */
rb_status_t *rb_status_new(rb_loop_t *loop, const char *listen, const char *service);
void rb_status_destroy(rb_status_t **st);
/* The port actually bound. */
int rb_status_port(const rb_status_t *st);
void rb_status_set_ready(rb_status_t *st, rb_ready_fn *fn, void *arg);
void rb_status_set_info(rb_status_t *st, rb_status_info_fn *fn, void *arg);
void rb_status_set_admin_token(rb_status_t *st, const char *token);
/* Routes match path_prefix; admin routes need the bearer token. 0 or -1. */
int rb_status_add_route(rb_status_t *st, const char *path_prefix, bool admin, rb_route_fn *fn,
                        void *arg);

/* Only valid inside a route handler. Returns NULL when memory runs out (the
 * handler then answers at once as usual). */
rb_status_pending_t *rb_status_defer(rb_status_t *st);
/* Sends the answer and frees p. When the client went away meanwhile, only
 * frees p. ctype is a static string. */
void rb_status_finish(rb_status_pending_t *p, int code, const char *ctype, const char *body,
                      size_t len);

#endif
