/* broker_edge: the requests of edges (proto/edge_broker.proto), one context
 * each (broker_ctx_t), every step asynchronous:
 *   logon:    begin (claim, or offer when the user has a live session) ->
 *             LeaseRequest -> commit -> SESSION_UP -> LogonReply; a failure
 *             unwinds what was done (abort the claim, release the lease)
 *   transfer: one script (offer used, current session ended, new one live
 *             with its address) -> SESSION_DOWN + SESSION_UP -> LogonReply,
 *             then the lease follows (broker_takeover_start)
 *   resume:   one script (token checked, session moved) -> SESSION_UP ->
 *             LogonReply with the same address and token
 *   logoff:   end -> SESSION_DOWN -> ReleaseRequest -> LogoffReply
 *   refresh:  one script for the whole batch -> RefreshReply{gone} */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "broker_int.h"
#include "edge_broker.pb-c.h"
#include "rb_cidr.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_redis.h"

/* An EdgeToBroker is a few short strings, except a RefreshRequest, which
 * names every session of an edge (10,000 ids are ~350 KiB). */
#define BROKER_MAX_REQUEST (1024 * 1024)
#define BROKER_REFRESH_IDS_MAX 20000
/* Leases are idempotent per session, so one resend is safe: 2 x 1 s. */
#define BROKER_LEASE_RETRIES 1
/* The edge gives a logon 5 s (edge_broker.c's LOGON_TIMEOUT_MS) and drops a
 * later answer. A commit takes up to 2 s (the Redis timeout), so one not
 * started 2.5 s after the request could land after the edge gave up: a
 * live session, with an address, that nobody holds. Past this, abort. */
#define BROKER_COMMIT_DEADLINE_MS 2500

typedef Rb__Edgebroker__LogonStatus status_t;
#define ST(x) RB__EDGEBROKER__LOGON_STATUS__LOGON_##x

/* Copies a peer's string field, refusing empty (when required) or long. */
static bool s_copy_field(char *dst, size_t cap, const char *src, bool required)
{
    size_t n = src ? strlen(src) : 0;
    if ((required && n == 0) || n >= cap) return false;
    memcpy(dst, src ? src : "", n + 1);
    return true;
}

static void s_reply(rb_rpc_req_t *req, Rb__Edgebroker__BrokerToEdge *env)
{
    env->version = RB_PROTO_VERSION;
    rb_rpc_reply(req, &env->base); /* logs a failure itself, and frees req */
}

/* Answers a LogonReply and frees c. offer: with LOGON_TRANSFER_OFFER. */
static void s_answer(broker_ctx_t *c, status_t status, const char *message,
                     const Rb__Edgebroker__TransferOfferInfo *offer)
{
    Rb__Edgebroker__BrokerToEdge env = RB__EDGEBROKER__BROKER_TO_EDGE__INIT;
    Rb__Edgebroker__LogonReply lr = RB__EDGEBROKER__LOGON_REPLY__INIT;
    lr.status = status;
    lr.message = (char *)(message ? message : "");
    if (status == ST(OK)) {
        lr.session_id = c->session_id;
        lr.ip = c->ip;
        lr.fqdn = c->ip[0] ? c->fqdn : "";
        lr.resume_token = c->token;
        lr.no_address = !c->ip[0];
        lr.user = c->user;
        lr.up_seq = c->up_seq;
    }
    lr.offer = (Rb__Edgebroker__TransferOfferInfo *)offer;
    env.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGON;
    env.logon = &lr;
    s_reply(c->req, &env);
    c->req = NULL;
    broker_ctx_free(c);
}

/* ---- logon ---- */

/* Undoes what a failed logon did and answers the edge. */
static void s_logon_fail(broker_ctx_t *c, status_t status, const char *message)
{
    broker_t *b = c->b;
    if (c->claimed && broker_store_abort(b->store, c->session_id, NULL, NULL) != 0)
        rb_warn("abort_failed", "session %s stays pending until its claim expires", c->session_id);
    if (c->leasing && broker_send_release(b, c->ip, c->session_id, NULL, NULL) != 0)
        rb_warn("release_failed", "could not ask ipalloc to release session %s", c->session_id);
    switch (status) {
    case ST(POOL_EXHAUSTED):
        rb_metric_inc(b->m_exhausted);
        break;
    case ST(SESSION_EXISTS):
        rb_metric_inc(b->m_exists);
        break;
    case ST(BAD_REQUEST):
        rb_metric_inc(b->m_bad);
        break;
    default:
        rb_metric_inc(b->m_unavailable);
        break;
    }
    rb_info("logon_failed", "user %s from %s via %s: %s", c->user, c->source, c->edge_id, message);
    s_answer(c, status, message, NULL);
}

static void s_on_commit(void *arg, int rc, uint64_t seq)
{
    broker_ctx_t *c = arg;
    broker_t *b = c->b;
    if (rc != 0) {
        /* When the outcome is unknown the session may be live with this
         * address: keep the lease rather than risk handing it out twice. It
         * goes when the session ends (or expires: nobody refreshes it). */
        if (rc < 0) {
            c->leasing = false;
            rb_warn("commit_unknown", "session %s of %s may be live; its lease %s is kept",
                    c->session_id, c->user, c->ip);
        }
        s_logon_fail(c, ST(UNAVAILABLE), "the session could not be stored");
        return;
    }
    c->claimed = c->leasing = false;
    broker_session_t s = {.session_id = c->session_id,
                          .user = c->user,
                          .label = c->label,
                          .fqdn = c->ip[0] ? c->fqdn : "",
                          .ip = c->ip,
                          .device = c->device,
                          .edge_id = c->edge_id,
                          .source = c->source,
                          .since_ms = c->since_ms,
                          .groups = c->groups_csv};
    broker_events_publish(b->events, seq, true, &s, "");
    if (seq > b->seq) b->seq = seq;
    c->up_seq = seq;
    rb_metric_inc(b->m_ok);
    rb_metric_observe(b->m_duration, (double)(rb_now_ms() - c->start_ms) / 1000.0);
    rb_info("logon_ok", "user %s from %s via %s: session %.8s, %s, %s (seq %llu)", c->user,
            c->source, c->edge_id, c->session_id, c->ip, c->fqdn, (unsigned long long)seq);
    s_answer(c, ST(OK), "", NULL);
}

static void s_on_lease(void *arg, const uint8_t *body, size_t len)
{
    broker_ctx_t *c = arg;
    broker_t *b = c->b;
    char token_sha[65];
    uint32_t addr;
    if (!body) {
        rb_warn("ipalloc_timeout", "ipalloc did not answer a lease for %s", c->user);
        s_logon_fail(c, ST(UNAVAILABLE), "the address allocator did not answer");
        return;
    }
    Rb__Brokeripalloc__IpallocToBroker *m =
        broker_unpack_ipalloc(body, len, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_LEASE);
    const Rb__Brokeripalloc__LeaseReply *lr = m ? m->lease : NULL;
    if (!lr) {
        s_logon_fail(c, ST(UNAVAILABLE), "the address allocator answered nonsense");
    } else if (lr->status == RB__BROKERIPALLOC__LEASE_STATUS__LEASE_POOL_EXHAUSTED) {
        c->leasing = false;
        s_logon_fail(c, ST(POOL_EXHAUSTED),
                     "no intranet address is free: the address pool is exhausted");
    } else if (lr->status != RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK &&
               lr->status != RB__BROKERIPALLOC__LEASE_STATUS__LEASE_NO_ADDRESS) {
        rb_warn("lease_failed", "ipalloc: status %d: %s", (int)lr->status,
                lr->message ? lr->message : "");
        s_logon_fail(c, ST(UNAVAILABLE), "the address allocator is unavailable");
    } else if (lr->status == RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK &&
               (!lr->ip || rb_ip_parse(lr->ip, &addr) != 0)) {
        rb_warn("lease_failed", "ipalloc answered OK without a valid address");
        s_logon_fail(c, ST(UNAVAILABLE), "the address allocator is unavailable");
    } else if (rb_now_ms() - c->start_ms > BROKER_COMMIT_DEADLINE_MS) {
        snprintf(c->ip, sizeof(c->ip), "%s", lr->ip ? lr->ip : "");
        rb_warn("logon_too_slow", "user %s: %llu ms since the request; not committing a session "
                "the edge may no longer wait for", c->user,
                (unsigned long long)(rb_now_ms() - c->start_ms));
        s_logon_fail(c, ST(UNAVAILABLE), "the session service is too slow; try again");
    } else {
        /* LEASE_NO_ADDRESS: spillover or a group without addresses; the
         * session has neither address nor DNS name. */
        bool none = lr->status == RB__BROKERIPALLOC__LEASE_STATUS__LEASE_NO_ADDRESS;
        snprintf(c->ip, sizeof(c->ip), "%s", none ? "" : lr->ip);
        if (none) c->leasing = false;
        if (broker_random_hex(c->token, BROKER_TOKEN_BYTES) != 0 ||
            broker_sha256_hex(c->token, token_sha) != 0 ||
            broker_store_commit(b->store, c->session_id, c->ip, none ? "" : c->fqdn, token_sha,
                                s_on_commit, c) != 0)
            s_logon_fail(c, ST(UNAVAILABLE), "the session could not be stored");
    }
    if (m) protobuf_c_message_free_unpacked(&m->base, NULL);
}

static void s_on_begin(void *arg, broker_begin_result_t res, const char *session_id,
                       const char *label, uint64_t since_ms, const broker_offer_t *offer)
{
    broker_ctx_t *c = arg;
    broker_t *b = c->b;
    if (res == BROKER_BEGIN_OFFER && !c->fallback) {
        Rb__Edgebroker__TransferOfferInfo oi = RB__EDGEBROKER__TRANSFER_OFFER_INFO__INIT;
        oi.offer_id = (char *)offer->offer_id;
        oi.session_since_ms = offer->since_ms;
        oi.device = (char *)offer->device;
        oi.edge_id = (char *)offer->edge_id;
        oi.source = (char *)offer->source;
        oi.expires_in_s = (uint32_t)b->cfg->transfer_offer_ttl;
        rb_metric_inc(b->m_offer);
        rb_info("transfer_offered", "user %s from %s via %s: session %.8s since %llu on %s; "
                "offer %.8s for %us", c->user, c->source, c->edge_id, offer->session_id,
                (unsigned long long)offer->since_ms, offer->edge_id, offer->offer_id,
                oi.expires_in_s);
        s_answer(c, ST(TRANSFER_OFFER), "the user has a session: transfer offered", &oi);
        return;
    }
    if (res == BROKER_BEGIN_EXISTS || res == BROKER_BEGIN_OFFER) {
        s_logon_fail(c, ST(SESSION_EXISTS), res == BROKER_BEGIN_EXISTS
                                                ? "another logon of the user is in progress"
                                                : "the user already has a session");
        return;
    }
    if (res != BROKER_BEGIN_CLAIMED) {
        s_logon_fail(c, ST(UNAVAILABLE), "the session store is unavailable");
        return;
    }
    c->claimed = true;
    c->since_ms = since_ms;
    snprintf(c->session_id, sizeof(c->session_id), "%s", session_id);
    snprintf(c->label, sizeof(c->label), "%s", label);
    snprintf(c->fqdn, sizeof(c->fqdn), "%s.%s", c->label, b->cfg->dns_suffix);
    if (broker_send_lease(b, c->user, c->session_id, c->groups, c->ngroups, NULL,
                          BROKER_LEASE_RETRIES, s_on_lease, c) != 0) {
        s_logon_fail(c, ST(UNAVAILABLE), "the address allocator is unreachable");
        return;
    }
    c->leasing = true;
}

static void s_begin(broker_ctx_t *c)
{
    broker_t *b = c->b;
    if (broker_store_begin(b->store, c->user, c->label, c->alt_label, c->device, c->edge_id,
                           c->source, c->groups_csv, (unsigned)b->cfg->transfer_offer_ttl,
                           s_on_begin, c) != 0)
        s_logon_fail(c, ST(UNAVAILABLE), "the session store is unavailable");
}

/* The fields every logon-like request has; false (logged) when bad. */
static bool s_take_fields(broker_ctx_t *c, const char *user, const char *device,
                          const char *edge_id, const char *source, char *const *groups,
                          size_t ngroups)
{
    if (!s_copy_field(c->user, sizeof(c->user), user, true) ||
        !s_copy_field(c->device, sizeof(c->device), device, false) ||
        !s_copy_field(c->edge_id, sizeof(c->edge_id), edge_id, false) ||
        !s_copy_field(c->source, sizeof(c->source), source, false) ||
        !broker_ctx_set_groups(c, groups, ngroups) ||
        rb_label_from_user(c->user, c->label) != 0 ||
        rb_label_disambiguate(c->label, c->user, c->alt_label) != 0) {
        rb_warn("bad_request", "edge %s: logon or transfer without a valid user, or fields "
                "too long", rb_rpc_req_peer(c->req));
        return false;
    }
    return true;
}

static void s_handle_logon(broker_t *b, rb_rpc_req_t *req, const Rb__Edgebroker__EdgeToBroker *env)
{
    const Rb__Edgebroker__LogonRequest *lr = env->logon;
    broker_ctx_t *c = broker_ctx_new(b, req);
    if (!c) {
        rb_rpc_req_free(req);
        return;
    }
    if (!lr || !s_take_fields(c, lr->user, lr->device, lr->edge_id, lr->source, lr->groups,
                              lr->n_groups)) {
        s_logon_fail(c, ST(BAD_REQUEST), "a logon needs a user name of 1 to 256 bytes");
        return;
    }
    s_begin(c);
}

/* ---- transfer ---- */

static void s_on_transfer(void *arg, const broker_transfer_t *t)
{
    broker_ctx_t *c = arg;
    broker_t *b = c->b;
    switch (t->res) {
    case BROKER_XFER_OK:
        break;
    case BROKER_XFER_EXPIRED:
        rb_metric_inc(b->m_xfer_expired);
        rb_info("transfer_refused", "user %s via %s: the offer expired, was used or is unknown",
                c->user, c->edge_id);
        s_answer(c, ST(OFFER_EXPIRED), "transfer offer expired", NULL);
        return;
    case BROKER_XFER_GONE:
        /* The offered session ended meanwhile (logoff, expiry, kick): what
         * the device asked for is a session, so it logs on afresh; it gets
         * its sticky address back if it is still free. */
        rb_info("transfer_as_logon", "user %s via %s: the session ended before the accept; "
                "logging on", c->user, c->edge_id);
        c->fallback = true;
        explicit_bzero(c->token, sizeof(c->token));
        s_begin(c);
        return;
    case BROKER_XFER_PENDING:
        rb_metric_inc(b->m_xfer_failed);
        s_logon_fail(c, ST(SESSION_EXISTS), "another logon of the user is in progress");
        return;
    default:
        /* Unknown outcome: the script may have run; the event sequence then
         * has a gap and subscribers take a snapshot. */
        rb_metric_inc(b->m_xfer_failed);
        s_logon_fail(c, ST(UNAVAILABLE), "the session store is unavailable");
        return;
    }
    rb_metric_inc(b->m_xfer_ok);
    broker_events_publish(b->events, t->down_seq, false, &t->old, t->reason);
    broker_events_publish(b->events, t->up_seq, true, &t->cur, "");
    if (t->up_seq > b->seq) b->seq = t->up_seq;
    c->up_seq = t->up_seq;
    snprintf(c->session_id, sizeof(c->session_id), "%s", t->cur.session_id);
    snprintf(c->ip, sizeof(c->ip), "%s", t->cur.ip);
    snprintf(c->fqdn, sizeof(c->fqdn), "%s", t->cur.fqdn);
    rb_info("transfer_ok", "user %s from %s via %s: session %.8s (%s on %s) %s, now %.8s with "
            "%s, %s (seq %llu, %llu)", c->user, c->source, c->edge_id, t->old.session_id,
            t->old.device, t->old.edge_id, t->reason, c->session_id,
            c->ip[0] ? c->ip : "no address", c->fqdn, (unsigned long long)t->down_seq,
            (unsigned long long)t->up_seq);
    if (c->ip[0])
        broker_takeover_start(b, c->user, c->session_id, t->old.session_id, c->ip, c->groups,
                              c->ngroups);
    rb_metric_observe(b->m_duration, (double)(rb_now_ms() - c->start_ms) / 1000.0);
    s_answer(c, ST(OK), "", NULL);
}

static void s_handle_transfer(broker_t *b, rb_rpc_req_t *req,
                              const Rb__Edgebroker__EdgeToBroker *env)
{
    const Rb__Edgebroker__TransferRequest *tr = env->transfer;
    char offer_id[BROKER_OFFER_ID_LEN + 1], token_sha[65];
    broker_ctx_t *c = broker_ctx_new(b, req);
    if (!c) {
        rb_rpc_req_free(req);
        return;
    }
    if (!tr || !s_copy_field(offer_id, sizeof(offer_id), tr->offer_id, true) ||
        !s_take_fields(c, tr->user, tr->device, tr->edge_id, tr->source, tr->groups,
                       tr->n_groups)) {
        s_logon_fail(c, ST(BAD_REQUEST), "a transfer needs an offer id and a user name");
        return;
    }
    if (broker_random_hex(c->token, BROKER_TOKEN_BYTES) != 0 ||
        broker_sha256_hex(c->token, token_sha) != 0 ||
        broker_store_transfer(b->store, offer_id, c->user, c->device, c->edge_id, c->source,
                              c->groups_csv, token_sha, s_on_transfer, c) != 0)
        s_logon_fail(c, ST(UNAVAILABLE), "the session store is unavailable");
}

/* ---- resume ---- */

static void s_on_resume(void *arg, int rc, const char *why, uint64_t seq,
                        const broker_session_t *s)
{
    broker_ctx_t *c = arg;
    broker_t *b = c->b;
    if (rc < 0) {
        rb_metric_inc(b->m_unavailable);
        s_answer(c, ST(UNAVAILABLE), "the session store is unavailable", NULL);
        return;
    }
    if (rc == 0) {
        rb_metric_inc(b->m_resume_refused);
        /* Never the token: the session id and why are enough. */
        rb_info("resume_refused", "session %.8s from %s via %s: %s", c->session_id, c->source,
                c->edge_id, why);
        s_answer(c, ST(RESUME_REFUSED), "resume refused", NULL);
        return;
    }
    rb_metric_inc(b->m_resume_ok);
    broker_events_publish(b->events, seq, true, s, "");
    if (seq > b->seq) b->seq = seq;
    c->up_seq = seq;
    snprintf(c->ip, sizeof(c->ip), "%s", s->ip);
    snprintf(c->fqdn, sizeof(c->fqdn), "%s", s->fqdn);
    snprintf(c->user, sizeof(c->user), "%s", s->user);
    rb_info("resume_ok", "user %s: session %.8s now on %s from %s (seq %llu)", s->user,
            s->session_id, s->edge_id, s->source, (unsigned long long)seq);
    s_answer(c, ST(OK), "", NULL);
}

static void s_handle_resume(broker_t *b, rb_rpc_req_t *req,
                            const Rb__Edgebroker__EdgeToBroker *env)
{
    const Rb__Edgebroker__ResumeRequest *rr = env->resume;
    char token_sha[65];
    broker_ctx_t *c = broker_ctx_new(b, req);
    if (!c) {
        rb_rpc_req_free(req);
        return;
    }
    if (!rr || !s_copy_field(c->session_id, sizeof(c->session_id), rr->session_id, true) ||
        !s_copy_field(c->token, sizeof(c->token), rr->resume_token, true) ||
        !s_copy_field(c->device, sizeof(c->device), rr->device, false) ||
        !s_copy_field(c->edge_id, sizeof(c->edge_id), rr->edge_id, false) ||
        !s_copy_field(c->source, sizeof(c->source), rr->source, false)) {
        rb_metric_inc(b->m_resume_refused);
        rb_info("resume_refused", "edge %s: malformed resume (session id or token of the "
                "wrong size)", rb_rpc_req_peer(req));
        s_answer(c, ST(RESUME_REFUSED), "resume refused", NULL);
        return;
    }
    if (broker_sha256_hex(c->token, token_sha) != 0 ||
        broker_store_resume(b->store, c->session_id, token_sha, c->device, c->edge_id, c->source,
                            s_on_resume, c) != 0) {
        rb_metric_inc(b->m_unavailable);
        s_answer(c, ST(UNAVAILABLE), "the session store is unavailable", NULL);
    }
}

/* ---- logoff ---- */

static void s_reply_logoff(broker_ctx_t *c, bool found)
{
    Rb__Edgebroker__BrokerToEdge env = RB__EDGEBROKER__BROKER_TO_EDGE__INIT;
    Rb__Edgebroker__LogoffReply lr = RB__EDGEBROKER__LOGOFF_REPLY__INIT;
    lr.found = found;
    env.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGOFF;
    env.logoff = &lr;
    s_reply(c->req, &env);
    c->req = NULL;
    broker_ctx_free(c);
}

static void s_on_logoff_release(void *arg, const uint8_t *body, size_t len)
{
    broker_ctx_t *c = arg;
    if (!body)
        rb_warn("release_timeout", "ipalloc did not answer the release of %s (session %.8s)", c->ip,
                c->session_id);
    /* The session has ended either way; the edge needs no more. */
    s_reply_logoff(c, true);
}

static void s_on_end(void *arg, int found, uint64_t seq, const broker_session_t *s)
{
    broker_ctx_t *c = arg;
    broker_t *b = c->b;
    if (found < 0) {
        /* No honest answer: the edge's call times out and it may ask again. */
        broker_ctx_free(c);
        return;
    }
    if (found == 0) {
        /* Nothing to release here: the session may have been transferred,
         * its address now the new session's while ipalloc's lease still
         * names the old one until the move. A release lost after an
         * earlier attempt ended it is the reconcile's to find. */
        s_reply_logoff(c, false);
        return;
    }
    rb_metric_inc(b->m_logoffs);
    broker_events_publish(b->events, seq, false, s, c->reason);
    if (seq > b->seq) b->seq = seq;
    rb_info("logoff", "user %s: session %.8s ended (%s), %s released (seq %llu)", s->user,
            s->session_id, c->reason, s->ip, (unsigned long long)seq);
    snprintf(c->ip, sizeof(c->ip), "%s", s->ip);
    if (!s->ip[0] || broker_send_release(b, s->ip, c->session_id, s_on_logoff_release, c) != 0)
        s_reply_logoff(c, true);
}

static void s_handle_logoff(broker_t *b, rb_rpc_req_t *req, const Rb__Edgebroker__EdgeToBroker *env)
{
    const Rb__Edgebroker__LogoffRequest *lr = env->logoff;
    broker_ctx_t *c = broker_ctx_new(b, req);
    if (!c) {
        rb_rpc_req_free(req);
        return;
    }
    if (!lr || !s_copy_field(c->session_id, sizeof(c->session_id), lr->session_id, true) ||
        !s_copy_field(c->reason, sizeof(c->reason), lr->reason, false)) {
        rb_warn("bad_request", "edge %s: logoff without a valid session id", rb_rpc_req_peer(req));
        broker_ctx_free(c); /* dropped: LogoffReply cannot say "bad request" */
        return;
    }
    if (!c->reason[0]) snprintf(c->reason, sizeof(c->reason), "logoff");
    if (broker_store_end(b->store, c->session_id, c->reason, s_on_end, c) != 0) broker_ctx_free(c);
}

/* ---- refresh ---- */

static void s_reply_refresh(broker_ctx_t *c, const char *const *gone, const char *const *reasons,
                            size_t n)
{
    Rb__Edgebroker__BrokerToEdge env = RB__EDGEBROKER__BROKER_TO_EDGE__INIT;
    Rb__Edgebroker__RefreshReply rr = RB__EDGEBROKER__REFRESH_REPLY__INIT;
    rr.gone = (char **)gone;
    rr.n_gone = n;
    rr.reasons = (char **)reasons;
    rr.n_reasons = reasons ? n : 0;
    env.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_REFRESH;
    env.refresh = &rr;
    s_reply(c->req, &env);
    c->req = NULL;
    broker_ctx_free(c);
}

static void s_on_refresh(void *arg, int rc, const char *const *gone, const char *const *reasons,
                         size_t n)
{
    broker_ctx_t *c = arg;
    if (rc != 0) {
        broker_ctx_free(c); /* no answer: the edge refreshes again soon */
        return;
    }
    if (n) rb_info("refresh_gone", "edge %s: %zu sessions are no longer live", c->edge_id, n);
    s_reply_refresh(c, gone, reasons, n);
}

static void s_handle_refresh(broker_t *b, rb_rpc_req_t *req,
                             const Rb__Edgebroker__EdgeToBroker *env)
{
    const Rb__Edgebroker__RefreshRequest *rr = env->refresh;
    broker_ctx_t *c = broker_ctx_new(b, req);
    if (!c) {
        rb_rpc_req_free(req);
        return;
    }
    if (!rr || !s_copy_field(c->edge_id, sizeof(c->edge_id), rr->edge_id, false) ||
        rr->n_session_ids > BROKER_REFRESH_IDS_MAX) {
        rb_warn("bad_request", "edge %s: refresh with a bad edge id or more than %d sessions",
                rb_rpc_req_peer(req), BROKER_REFRESH_IDS_MAX);
        broker_ctx_free(c);
        return;
    }
    for (size_t i = 0; i < rr->n_session_ids; i++) {
        size_t n = strlen(rr->session_ids[i]);
        if (n == 0 || n > BROKER_SESSION_ID_LEN) {
            rb_warn("bad_request", "edge %s: refresh with a malformed session id",
                    rb_rpc_req_peer(req));
            broker_ctx_free(c);
            return;
        }
    }
    if (rr->n_session_ids == 0) {
        s_reply_refresh(c, NULL, NULL, 0);
        return;
    }
    if (broker_store_refresh(b->store, c->edge_id, (const char *const *)rr->session_ids,
                             rr->n_session_ids, s_on_refresh, c) != 0)
        broker_ctx_free(c);
}

/* ---- ping ---- */

static void s_handle_ping(broker_t *b, rb_rpc_req_t *req, const Rb__Edgebroker__EdgeToBroker *env)
{
    Rb__Edgebroker__BrokerToEdge out = RB__EDGEBROKER__BROKER_TO_EDGE__INIT;
    Rb__Edgebroker__PingReply pr = RB__EDGEBROKER__PING_REPLY__INIT;
    pr.broker_id = b->cfg->broker_id;
    pr.redis_ok = rb_redis_ok(b->redis);
    pr.ipalloc_ok = broker_ipalloc_ok(b);
    out.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_PING;
    out.ping = &pr;
    s_reply(req, &out);
}

/* ---- dispatch ---- */

typedef void(s_handler_fn)(broker_t *b, rb_rpc_req_t *req, const Rb__Edgebroker__EdgeToBroker *env);

static const struct {
    Rb__Edgebroker__EdgeToBroker__BodyCase body;
    const char *name;
    s_handler_fn *fn;
} s_dispatch[] = {
    {RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGON, "logon", s_handle_logon},
    {RB__EDGEBROKER__EDGE_TO_BROKER__BODY_TRANSFER, "transfer", s_handle_transfer},
    {RB__EDGEBROKER__EDGE_TO_BROKER__BODY_RESUME, "resume", s_handle_resume},
    {RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGOFF, "logoff", s_handle_logoff},
    {RB__EDGEBROKER__EDGE_TO_BROKER__BODY_REFRESH, "refresh", s_handle_refresh},
    {RB__EDGEBROKER__EDGE_TO_BROKER__BODY_PING, "ping", s_handle_ping},
};

void broker_edge_request(void *arg, rb_rpc_req_t *req, const uint8_t *body, size_t len)
{
    broker_t *b = arg;
    Rb__Edgebroker__EdgeToBroker *env = (Rb__Edgebroker__EdgeToBroker *)rb_pb_unpack(
        &rb__edgebroker__edge_to_broker__descriptor, body, len, BROKER_MAX_REQUEST,
        rb_rpc_req_peer(req));
    if (!env) {
        rb_rpc_req_free(req); /* logged by rb_pb_unpack */
        return;
    }
    if (env->version != RB_PROTO_VERSION) {
        rb_warn("bad_version", "edge %s speaks protocol version %u, we speak %u",
                rb_rpc_req_peer(req), env->version, RB_PROTO_VERSION);
        Rb__Edgebroker__EdgeToBroker__BodyCase k = env->body_case;
        broker_ctx_t *c = NULL;
        if ((k == RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGON ||
             k == RB__EDGEBROKER__EDGE_TO_BROKER__BODY_TRANSFER ||
             k == RB__EDGEBROKER__EDGE_TO_BROKER__BODY_RESUME) &&
            (c = broker_ctx_new(b, req)))
            s_answer(c, ST(BAD_REQUEST), "protocol version mismatch", NULL);
        else
            rb_rpc_req_free(req);
        goto out;
    }
    for (size_t i = 0; i < sizeof(s_dispatch) / sizeof(s_dispatch[0]); i++) {
        if (s_dispatch[i].body == env->body_case) {
            rb_debug("request", "%s from edge %s", s_dispatch[i].name, rb_rpc_req_peer(req));
            s_dispatch[i].fn(b, req, env);
            goto out;
        }
    }
    rb_warn("unknown_request", "edge %s sent a request of unknown type %d; dropped",
            rb_rpc_req_peer(req), (int)env->body_case);
    rb_rpc_req_free(req);
out:
    protobuf_c_message_free_unpacked(&env->base, NULL);
}
