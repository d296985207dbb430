/* forwarder: the service object (see forwarder.h). Sessions are kept in a
 * chained hash table keyed by session id, with indexes by address and by
 * name for the data plane; the event stream is the only writer. */
#include "forwarder.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "forwarder_plane.h"
#include "forwarder_policy.h"
#include "rb_cidr.h"
#include "rb_events.h"
#include "rb_imap.h"
#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_status.h"
#include "rb_zmq.h"

const rb_option_t forwarder_options[] = {
    RB_OPT_COMMON(forwarder_config_t),
    {"forwarder_id", RB_OPT_STRING, "forwarder", offsetof(forwarder_config_t, forwarder_id), 0,
     0, "this instance's name in the brokers' logs"},
    {"events_endpoints", RB_OPT_STRING, NULL, offsetof(forwarder_config_t, events_endpoints), 0,
     0, "comma-separated broker PUB endpoints of the session event stream"},
    {"snapshot_endpoints", RB_OPT_STRING, NULL,
     offsetof(forwarder_config_t, snapshot_endpoints), 0, 0,
     "comma-separated broker snapshot endpoints"},
    {"broker_public_key", RB_OPT_STRING, "", offsetof(forwarder_config_t, broker_public_key), 0,
     0, "key file holding the brokers' CURVE public key (needed with curve_secret_key)"},
    {"curve_secret_key", RB_OPT_STRING, "", offsetof(forwarder_config_t, curve_secret_key), 0,
     0, "our CURVE secret key file; empty for links in the clear (ipc://)"},
    {"curve_allowed_keys", RB_OPT_STRING, "", offsetof(forwarder_config_t, curve_allowed_keys),
     0, 0, "comma-separated public key files of the edges allowed on the data link"},
    {"data_endpoint", RB_OPT_STRING, "tcp://127.0.0.1:7450",
     offsetof(forwarder_config_t, data_endpoint), 0, 0,
     "the data link(s) the edges connect to, comma-separated: tcp:// (CURVE), ipc:// on one "
     "host (not beside tcp://), inproc:// only in reachback-gateway"},
    {"serve_cidrs", RB_OPT_STRING, "", offsetof(forwarder_config_t, serve_cidrs), 0, 0,
     "comma-separated blocks: serve only sessions whose address is in them (empty: all)"},
    {"policy_file", RB_OPT_STRING, "", offsetof(forwarder_config_t, policy_file), 0, 0,
     "who may reach which users' ports (docs/operations.md); empty denies all; SIGHUP reloads"},
    {"connect_timeout_ms", RB_OPT_INT, "10000", offsetof(forwarder_config_t, connect_timeout_ms),
     100, 120000, "outbound connects for devices give up after this long"},
    {"udp_idle_s", RB_OPT_INT, "60", offsetof(forwarder_config_t, udp_idle_s), 1, 3600,
     "a UDP flow ends after this long without a datagram"},
    {"max_streams", RB_OPT_INT, "256", offsetof(forwarder_config_t, max_streams), 1, 1000000,
     "streams and flows at most per session"},
    {"max_held_per_session_kib", RB_OPT_INT, "32768",
     offsetof(forwarder_config_t, max_held_per_session_kib), 2048, 4194304,
     "bytes (KiB) one session may have waiting at the forwarder for internal peers that do not "
     "read; past it the stream holding the most is reset (2048-4194304)"},
    RB_OPT_END,
};

/* As many as an edge's users file allows a user (EDGE_USERS_MAX_GROUPS). */
#define SESSION_MAX_GROUPS 32

typedef struct fw_session {
    struct fw_session *next;
    char *session_id, *user, *ip, *edge_id, *fqdn;
    char *groups_csv; /* the groups, cut in place at the commas */
    const char *groups[SESSION_MAX_GROUPS];
    size_t ngroups;
    uint32_t ip_n;
} fw_session_t;

struct forwarder {
    rb_loop_t *loop;
    const forwarder_config_t *cfg;
    rb_curve_t curve;
    char broker_public[RB_Z85_KEY_LEN + 1];
    rb_events_t *events;
    rb_status_t *status;
    fw_session_t **buckets;
    size_t nbuckets, count;
    rb_imap_t *by_ip;       /* address -> fw_session_t */
    rb_imap_t *by_name;     /* hash of the name -> fw_session_t */
    plane_t *plane;
    plane_config_t pcfg;
    rb_metric_t *m_sessions;
};

int forwarder_config_validate(void *vcfg, char *err, size_t errlen)
{
    forwarder_config_t *cfg = vcfg;
    if (!cfg->events_endpoints || !*cfg->events_endpoints) {
        snprintf(err, errlen, "key 'events_endpoints': at least one endpoint is needed");
        return -1;
    }
    if (!cfg->snapshot_endpoints || !*cfg->snapshot_endpoints) {
        snprintf(err, errlen, "key 'snapshot_endpoints': at least one endpoint is needed");
        return -1;
    }
    if (cfg->policy_file && *cfg->policy_file) {
        /* --check-config names the policy's bad line, not only the keys. */
        char perr[400];
        policy_t *pol = policy_load(cfg->policy_file, perr, sizeof perr);
        if (!pol) {
            snprintf(err, errlen, "key 'policy_file': %s", perr);
            return -1;
        }
        policy_destroy(&pol);
    }
    if (!cfg->data_endpoint || !*cfg->data_endpoint) {
        snprintf(err, errlen, "key 'data_endpoint': the data link needs an endpoint");
        return -1;
    }
    /* Beside tcp:// the socket is a CURVE server for ipc:// peers too,
     * while edges connect to ipc:// without CURVE: they would never link. */
    if (!rb_zmq_endpoint_local(cfg->data_endpoint) && strstr(cfg->data_endpoint, "ipc://")) {
        snprintf(err, errlen,
                 "key 'data_endpoint': ipc:// beside tcp:// would want CURVE from edges that "
                 "connect to ipc:// without it; list ipc:// only with ipc:// or inproc://");
        return -1;
    }
    if (cfg->curve_secret_key && *cfg->curve_secret_key &&
        (!cfg->broker_public_key || !*cfg->broker_public_key)) {
        snprintf(err, errlen, "key 'broker_public_key': needed when curve_secret_key is set");
        return -1;
    }
    return 0;
}

/* FNV-1a: session ids come from the broker, not from an attacker, but the
 * table must not degrade on similar ids. */
static size_t s_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return (size_t)h & (n - 1);
}

/* Names are compared without case (DNS); the hash folds it. */
static uint64_t s_name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c - 'A' + 'a');
        h = (h ^ c) * 1099511628211ULL;
    }
    return h;
}

static void s_unindex(forwarder_t *fw, fw_session_t *s)
{
    if (s->ip_n && rb_imap_get(fw->by_ip, s->ip_n) == s) rb_imap_del(fw->by_ip, s->ip_n);
    if (*s->fqdn && rb_imap_get(fw->by_name, s_name_hash(s->fqdn)) == s)
        rb_imap_del(fw->by_name, s_name_hash(s->fqdn));
}

static void s_index(forwarder_t *fw, fw_session_t *s)
{
    if (s->ip_n) rb_imap_put(fw->by_ip, s->ip_n, s);
    if (*s->fqdn) rb_imap_put(fw->by_name, s_name_hash(s->fqdn), s);
}

static const char *s_user_of_ip(void *arg, uint32_t ip, const char *const **groups,
                               size_t *ngroups)
{
    forwarder_t *fw = arg;
    fw_session_t *s = rb_imap_get(fw->by_ip, ip);
    *groups = s ? s->groups : NULL;
    *ngroups = s ? s->ngroups : 0;
    return s ? s->user : NULL;
}

static int s_ip_of_name(void *arg, const char *name, uint32_t *ip)
{
    forwarder_t *fw = arg;
    size_t n = strlen(name);
    char buf[256];
    /* A trailing dot is the same name. */
    if (n && n < sizeof buf && name[n - 1] == '.') {
        memcpy(buf, name, n - 1);
        buf[n - 1] = '\0';
        name = buf;
    }
    fw_session_t *s = rb_imap_get(fw->by_name, s_name_hash(name));
    if (!s || strcasecmp(s->fqdn, name) != 0 || !s->ip_n) return -1;
    *ip = s->ip_n;
    return 0;
}

static void s_session_free(fw_session_t *s)
{
    free(s->fqdn);
    free(s->session_id);
    free(s->user);
    free(s->ip);
    free(s->edge_id);
    free(s->groups_csv);
    free(s);
}

static fw_session_t **s_find(forwarder_t *fw, const char *id)
{
    fw_session_t **pp = &fw->buckets[s_hash(id, fw->nbuckets)];
    while (*pp && strcmp((*pp)->session_id, id) != 0) pp = &(*pp)->next;
    return pp;
}

static void s_grow(forwarder_t *fw)
{
    size_t n = fw->nbuckets * 2;
    fw_session_t **b = calloc(n, sizeof *b);
    if (!b) return;   /* longer chains, still correct */
    for (size_t i = 0; i < fw->nbuckets; i++) {
        for (fw_session_t *s = fw->buckets[i], *next; s; s = next) {
            next = s->next;
            size_t h = s_hash(s->session_id, n);
            s->next = b[h];
            b[h] = s;
        }
    }
    free(fw->buckets);
    fw->buckets = b;
    fw->nbuckets = n;
}

void forwarder_reset(forwarder_t *fw)
{
    for (size_t i = 0; i < fw->nbuckets; i++) {
        for (fw_session_t *s = fw->buckets[i], *next; s; s = next) {
            next = s->next;
            s_unindex(fw, s);
            s_session_free(s);
        }
        fw->buckets[i] = NULL;
    }
    fw->count = 0;
    rb_metric_set(fw->m_sessions, 0);
}

int forwarder_session_up(forwarder_t *fw, const Rb__Events__Session *in)
{
    const char *id = in->session_id ? in->session_id : "";
    if (!*id) {
        rb_warn("bad_session", "session event for user '%s' without a session id",
                in->user ? in->user : "");
        return -1;
    }
    fw_session_t *s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->session_id = strdup(id);
    s->user = strdup(in->user ? in->user : "");
    s->ip = strdup(in->ip ? in->ip : "");
    s->edge_id = strdup(in->edge_id ? in->edge_id : "");
    s->fqdn = strdup(in->fqdn ? in->fqdn : "");
    s->groups_csv = strdup(in->groups ? in->groups : "");
    if (rb_ip_parse(s->ip ? s->ip : "", &s->ip_n) < 0) s->ip_n = 0;
    /* A policy's group: sources are matched against these, for devices
     * of every forwarder (Attach brings groups only for ours). */
    char *save = NULL;
    for (char *g = s->groups_csv ? strtok_r(s->groups_csv, ",", &save) : NULL;
         g && s->ngroups < SESSION_MAX_GROUPS; g = strtok_r(NULL, ",", &save))
        s->groups[s->ngroups++] = g;
    if (!s->session_id || !s->user || !s->ip || !s->edge_id || !s->fqdn || !s->groups_csv) {
        s_session_free(s);
        rb_error("session_up", "out of memory for session %s", id);
        return -1;
    }
    fw_session_t **pp = s_find(fw, id);
    if (*pp) {   /* an update (moved edge, resumed): replace in place */
        s->next = (*pp)->next;
        s_unindex(fw, *pp);
        s_session_free(*pp);
        *pp = s;
    } else {
        if (fw->count + 1 > fw->nbuckets) {
            s_grow(fw);
            pp = s_find(fw, id);
        }
        s->next = NULL;
        *pp = s;
        fw->count++;
    }
    s_index(fw, s);
    rb_debug("session_up", "%s (%s) at %s via edge %s", s->user, s->session_id,
             *s->ip ? s->ip : "no address", s->edge_id);
    rb_metric_set(fw->m_sessions, (double)fw->count);
    return 0;
}

void forwarder_session_down(forwarder_t *fw, const Rb__Events__Session *in, const char *reason)
{
    fw_session_t **pp = s_find(fw, in->session_id ? in->session_id : "");
    if (!*pp) return;   /* never seen, or already gone: nothing to undo */
    fw_session_t *s = *pp;
    *pp = s->next;
    fw->count--;
    s_unindex(fw, s);
    if (fw->plane) plane_session_down(fw->plane, s->session_id, reason);
    rb_debug("session_down", "%s (%s): %s", s->user, s->session_id, reason);
    s_session_free(s);
    rb_metric_set(fw->m_sessions, (double)fw->count);
}

static void s_on_reset(void *arg) { forwarder_reset(arg); }
static void s_on_up(void *arg, uint64_t seq, const Rb__Events__Session *s)
{
    forwarder_session_up(arg, s);
}
static void s_on_down(void *arg, const Rb__Events__Session *s, const char *reason)
{
    forwarder_session_down(arg, s, reason);
}

static const rb_events_handlers_t s_handlers = {s_on_reset, s_on_up, s_on_down};

static bool s_ready(void *arg, rb_buf_t *why)
{
    forwarder_t *fw = arg;
    if (rb_events_ready(fw->events)) return true;
    rb_buf_puts(why, "session events: no snapshot yet, or no broker heard for 3 s");
    return false;
}

static void s_info(void *arg, rb_buf_t *json)
{
    forwarder_t *fw = arg;
    rb_buf_puts(json, "\"forwarder_id\":\"");
    rb_buf_json_escape(json, fw->cfg->forwarder_id ? fw->cfg->forwarder_id : "");
    rb_buf_printf(json, "\",\"sessions\":%zu,\"events_seq\":%llu,\"snapshots\":%llu,", fw->count,
                  (unsigned long long)rb_events_seq(fw->events),
                  (unsigned long long)rb_events_snapshots(fw->events));
    plane_status_json(fw->plane, json);
}

static void s_on_hup(rb_loop_t *loop, int signo, void *arg)
{
    forwarder_t *fw = arg;
    plane_reload_policy(fw->plane);
}

forwarder_t *forwarder_new(rb_loop_t *loop, const forwarder_config_t *cfg)
{
    char err[512];
    forwarder_t *fw = calloc(1, sizeof *fw);
    if (!fw) return NULL;
    fw->loop = loop;
    fw->cfg = cfg;
    fw->nbuckets = 1024;
    fw->buckets = calloc(fw->nbuckets, sizeof *fw->buckets);
    fw->by_ip = rb_imap_new();
    fw->by_name = rb_imap_new();
    if (!fw->buckets || !fw->by_ip || !fw->by_name) goto fail;
    fw->m_sessions = rb_gauge("reachback_forwarder_sessions", NULL,
                              "Live sessions known to this forwarder");
    if (rb_curve_load(&fw->curve, cfg->curve_secret_key, err, sizeof err) < 0) {
        rb_error("forwarder_keys", "curve_secret_key: %s", err);
        goto fail;
    }
    if (fw->curve.enabled &&
        rb_curve_read_public(cfg->broker_public_key, fw->broker_public, err, sizeof err) < 0) {
        rb_error("forwarder_keys", "broker_public_key: %s", err);
        goto fail;
    }
    rb_events_config_t ec = {
        .pub_endpoints = cfg->events_endpoints,
        .snapshot_endpoints = cfg->snapshot_endpoints,
        .curve = &fw->curve,
        .broker_public_key = fw->broker_public,
        .name = cfg->forwarder_id,
    };
    fw->pcfg = (plane_config_t){
        .endpoint = cfg->data_endpoint,
        .curve = &fw->curve,
        .forwarder_id = cfg->forwarder_id ? cfg->forwarder_id : "forwarder",
        .serve_cidrs = cfg->serve_cidrs,
        .policy_file = cfg->policy_file,
        .connect_timeout_ms = (unsigned)cfg->connect_timeout_ms,
        .udp_idle_s = (unsigned)cfg->udp_idle_s,
        .max_streams = (unsigned)cfg->max_streams,
        .max_held_per_session = (uint64_t)cfg->max_held_per_session_kib * 1024,
        .user_of_ip = s_user_of_ip,
        .ip_of_name = s_ip_of_name,
        .lookup_arg = fw,
    };
    fw->plane = plane_new(loop, &fw->pcfg);
    if (!fw->plane) goto fail;
    if (rb_loop_add_signal(loop, SIGHUP, s_on_hup, fw) < 0) goto fail;
    fw->events = rb_events_new(loop, &ec, &s_handlers, fw);
    if (!fw->events) goto fail;
    if (cfg->status_listen && *cfg->status_listen) {
        fw->status = rb_status_new(loop, cfg->status_listen, "forwarder");
        if (!fw->status) {
            rb_error("forwarder_status", "cannot start the status server on %s",
                     cfg->status_listen);
            goto fail;
        }
        rb_status_set_ready(fw->status, s_ready, fw);
        rb_status_set_info(fw->status, s_info, fw);
        rb_info("forwarder_status", "status server on port %d", rb_status_port(fw->status));
    }
    rb_info("forwarder_start", "%s following session events from %s",
            cfg->forwarder_id ? cfg->forwarder_id : "forwarder", cfg->events_endpoints);
    return fw;
fail:
    forwarder_destroy(&fw);
    return NULL;
}

void forwarder_destroy(forwarder_t **pfw)
{
    if (!pfw || !*pfw) return;
    forwarder_t *fw = *pfw;
    *pfw = NULL;
    rb_status_destroy(&fw->status);
    rb_events_destroy(&fw->events);
    plane_destroy(&fw->plane);
    if (fw->buckets && fw->by_ip && fw->by_name) forwarder_reset(fw);
    free(fw->buckets);
    rb_imap_destroy(&fw->by_ip);
    rb_imap_destroy(&fw->by_name);
    explicit_bzero(&fw->curve, sizeof fw->curve);
    free(fw);
}

bool forwarder_ready(const forwarder_t *fw) { return fw && rb_events_ready(fw->events); }

size_t forwarder_session_count(const forwarder_t *fw) { return fw ? fw->count : 0; }

int forwarder_status_port(const forwarder_t *fw)
{
    return fw && fw->status ? rb_status_port(fw->status) : -1;
}
