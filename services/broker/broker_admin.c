/* broker_admin: the admin API on the status server (rb_status routes that
 * need the bearer token admin_token). Each answer waits on Redis (one script)
 * or ipalloc, so the route defers and finishes from the callback:
 *   GET  /admin/sessions         every live session (JSON array)
 *   GET  /admin/sessions/<user>  the user's session, or 404
 *   GET  /admin/whois/<ip>       the session holding the address, or 404
 *   POST /admin/kick/<user>      ends the session ("kicked"), or 404
 *   GET  /admin/pools            pool usage from ipalloc (PoolsRequest)
 * A session is {"session","user","label","ip","fqdn","device","edge",
 * "source","since_ms","last_seen_ms","via_transfer"}; errors are
 * {"error": "..."}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "broker_int.h"
#include "rb_cidr.h"
#include "rb_log.h"

typedef struct admin_req {
    struct admin_req *prev, *next;
    broker_admin_t *a;
    rb_status_pending_t *pending;
    bool one; /* answer one object (or 404), not an array */
    char what[BROKER_FIELD_MAX + 1]; /* for 404 texts and logs */
} admin_req_t;

struct broker_admin {
    broker_t *b;
    rb_status_t *st;
    admin_req_t *reqs;
};

static admin_req_t *s_req_new(broker_admin_t *a, bool one, const char *what)
{
    admin_req_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->a = a;
    r->one = one;
    snprintf(r->what, sizeof(r->what), "%s", what);
    r->next = a->reqs;
    if (a->reqs) a->reqs->prev = r;
    a->reqs = r;
    return r;
}

static void s_req_free(admin_req_t *r)
{
    broker_admin_t *a = r->a;
    if (r->prev)
        r->prev->next = r->next;
    else
        a->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    free(r);
}

/* Sends the answer and frees r. */
static void s_finish(admin_req_t *r, int code, rb_buf_t *body)
{
    rb_status_finish(r->pending, code, "application/json", body->data ? body->data : "",
                     body->len);
    s_req_free(r);
}

static void s_error(rb_buf_t *out, const char *msg)
{
    rb_buf_puts(out, "{\"error\":\"");
    rb_buf_json_escape(out, msg);
    rb_buf_puts(out, "\"}\n");
}

static void s_finish_error(admin_req_t *r, int code, const char *msg)
{
    rb_buf_t out = RB_BUF_INIT;
    s_error(&out, msg);
    s_finish(r, code, &out);
    rb_buf_free(&out);
}

static void s_str(rb_buf_t *out, const char *key, const char *v, bool comma)
{
    rb_buf_printf(out, "%s\"%s\":\"", comma ? "," : "", key);
    rb_buf_json_escape(out, v ? v : "");
    rb_buf_puts(out, "\"");
}

static void s_session_json(rb_buf_t *out, const broker_session_t *s)
{
    rb_buf_puts(out, "{");
    s_str(out, "session", s->session_id, false);
    s_str(out, "user", s->user, true);
    s_str(out, "label", s->label, true);
    s_str(out, "ip", s->ip, true);
    s_str(out, "fqdn", s->fqdn, true);
    s_str(out, "device", s->device, true);
    s_str(out, "edge", s->edge_id, true);
    s_str(out, "source", s->source, true);
    rb_buf_printf(out, ",\"since_ms\":%llu,\"last_seen_ms\":%llu,\"via_transfer\":%s}",
                  (unsigned long long)s->since_ms, (unsigned long long)s->last_seen_ms,
                  s->via_transfer ? "true" : "false");
}

/* ---- sessions, whois ---- */

static void s_on_list(void *arg, int rc, uint64_t seq, const broker_session_t *list, size_t n)
{
    admin_req_t *r = arg;
    rb_buf_t out = RB_BUF_INIT;
    if (rc != 0) {
        s_finish_error(r, 503, "the session store is unavailable");
        return;
    }
    if (r->one && n == 0) {
        char msg[BROKER_FIELD_MAX + 32];
        snprintf(msg, sizeof(msg), "no session for %s", r->what);
        s_finish_error(r, 404, msg);
        return;
    }
    if (r->one) {
        s_session_json(&out, &list[0]);
    } else {
        rb_buf_puts(&out, "[");
        for (size_t i = 0; i < n; i++) {
            if (i) rb_buf_puts(&out, ",");
            s_session_json(&out, &list[i]);
        }
        rb_buf_puts(&out, "]");
    }
    rb_buf_puts(&out, "\n");
    s_finish(r, 200, &out);
    rb_buf_free(&out);
}

/* ---- kick ---- */

static void s_on_kick(void *arg, int found, uint64_t seq, const broker_session_t *s)
{
    admin_req_t *r = arg;
    broker_t *b = r->a->b;
    if (found < 0) {
        s_finish_error(r, 503, "the session store is unavailable");
        return;
    }
    if (found == 0) {
        char msg[BROKER_FIELD_MAX + 32];
        snprintf(msg, sizeof(msg), "no session for %s", r->what);
        s_finish_error(r, 404, msg);
        return;
    }
    rb_metric_inc(b->m_kicked);
    rb_info("kicked", "user %s: session %.8s on %s ended by an administrator", s->user,
            s->session_id, s->edge_id);
    broker_session_ended(b, seq, s, "kicked");
    rb_buf_t out = RB_BUF_INIT;
    rb_buf_puts(&out, "{\"kicked\":true,\"session\":");
    s_session_json(&out, s);
    rb_buf_puts(&out, "}\n");
    s_finish(r, 200, &out);
    rb_buf_free(&out);
}

/* ---- pools ---- */

static void s_on_pools(void *arg, const uint8_t *body, size_t len)
{
    admin_req_t *r = arg;
    if (!body) {
        s_finish_error(r, 503, "ipalloc did not answer");
        return;
    }
    Rb__Brokeripalloc__IpallocToBroker *m =
        broker_unpack_ipalloc(body, len, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_POOLS);
    if (!m || !m->pools) {
        s_finish_error(r, 503, "ipalloc answered nonsense");
    } else {
        rb_buf_t out = RB_BUF_INIT;
        rb_buf_puts(&out, "[");
        for (size_t i = 0; i < m->pools->n_pools; i++) {
            const Rb__Brokeripalloc__PoolStats *p = m->pools->pools[i];
            rb_buf_puts(&out, i ? ",{" : "{");
            s_str(&out, "name", p->name, false);
            s_str(&out, "cidrs", p->cidrs, true);
            rb_buf_printf(&out, ",\"size\":%llu,\"used\":%llu,\"free\":%llu}",
                          (unsigned long long)p->size, (unsigned long long)p->used,
                          (unsigned long long)p->free);
        }
        rb_buf_puts(&out, "]\n");
        s_finish(r, 200, &out);
        rb_buf_free(&out);
    }
    if (m) protobuf_c_message_free_unpacked(&m->base, NULL);
}

/* ---- routing ---- */

/* The rest of path after prefix, or NULL when path does not start with it. */
static const char *s_after(const char *path, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(path, prefix, n) == 0 ? path + n : NULL;
}

static int s_route(void *arg, const char *method, const char *path, const char *body_in,
                   size_t body_len, rb_buf_t *out, const char **content_type)
{
    broker_admin_t *a = arg;
    broker_t *b = a->b;
    const char *rest;
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    enum { LIST, USER, WHOIS, KICK, POOLS } kind;
    *content_type = "application/json";
    if (strcmp(path, "/admin/sessions") == 0 || strcmp(path, "/admin/sessions/") == 0) {
        kind = LIST;
        rest = "";
    } else if ((rest = s_after(path, "/admin/sessions/"))) {
        kind = USER;
    } else if ((rest = s_after(path, "/admin/whois/"))) {
        kind = WHOIS;
    } else if ((rest = s_after(path, "/admin/kick/"))) {
        kind = KICK;
    } else if (strcmp(path, "/admin/pools") == 0) {
        kind = POOLS;
        rest = "";
    } else {
        s_error(out, "no such admin route");
        return 404;
    }
    if (kind == KICK ? !post : !get) {
        s_error(out, kind == KICK ? "use POST" : "use GET");
        return 405;
    }
    uint32_t addr;
    if ((kind == USER || kind == KICK) && (!*rest || strlen(rest) > BROKER_FIELD_MAX)) {
        s_error(out, "no such user");
        return 404;
    }
    if (kind == WHOIS && rb_ip_parse(rest, &addr) != 0) {
        s_error(out, "not an IPv4 address");
        return 400;
    }
    admin_req_t *r = s_req_new(a, kind != LIST && kind != POOLS, rest);
    if (!r) {
        s_error(out, "out of memory");
        return 503;
    }
    if (!(r->pending = rb_status_defer(a->st))) {
        s_req_free(r);
        s_error(out, "out of memory");
        return 503;
    }
    int rc;
    switch (kind) {
    case LIST:
        rc = broker_store_list(b->store, BROKER_LIST_ALL, NULL, s_on_list, r);
        break;
    case USER:
        rc = broker_store_list(b->store, BROKER_LIST_USER, rest, s_on_list, r);
        break;
    case WHOIS:
        rc = broker_store_list(b->store, BROKER_LIST_IP, rest, s_on_list, r);
        break;
    case KICK:
        rc = broker_store_end_user(b->store, rest, "kicked", s_on_kick, r);
        break;
    default:
        rc = broker_send_pools(b, s_on_pools, r);
        break;
    }
    if (rc != 0)
        s_finish_error(r, 503, kind == POOLS ? "ipalloc is unreachable"
                                             : "the session store is unavailable");
    return 0; /* deferred: the status is ignored */
}

int broker_admin_attach(broker_t *b, rb_status_t *st)
{
    if (b->admin) return -1;
    broker_admin_t *a = calloc(1, sizeof(*a));
    if (!a) return -1;
    a->b = b;
    a->st = st;
    if (rb_status_add_route(st, "/admin/", true, s_route, a) != 0) {
        free(a);
        return -1;
    }
    b->admin = a;
    return 0;
}

void broker_admin_destroy(broker_admin_t **ap)
{
    if (!ap || !*ap) return;
    broker_admin_t *a = *ap;
    *ap = NULL;
    /* The status server finishes (or has finished) the connections; the
     * store and ipalloc calls that point here are gone already. */
    while (a->reqs)
        s_req_free(a->reqs);
    free(a);
}
