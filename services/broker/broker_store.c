/* broker_store: sessions in Redis (see broker_store.h).
 *
 * Redis model (shared by every broker; ipalloc's keys are rb:ip:*):
 *   rb:user:<user>       STRING the user's one session id. Set with a 30 s
 *                               TTL while the logon is pending, made
 *                               permanent by commit; its existence is what
 *                               makes a second logon answer "exists"
 *   rb:label:<label>     STRING the user owning this DNS label, for ever, so
 *                               a user keeps their name across sessions
 *   rb:session:<sid>     HASH   user, label, fqdn, ip, device, edge, source,
 *                               since (Unix ms), token_sha256 (never the
 *                               token), state (pending | live)
 *   rb:sessions:live     SET    ids of live sessions (snapshots, gauge)
 *   rb:events:seq        STRING the event sequence, one across all brokers;
 *                               bumped in the same script as the change it
 *                               numbers
 * The scripts name keys built from their arguments, which a single Redis
 * allows; a Redis Cluster would need hash tags. */
#include "broker_store.h"
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include "rb_log.h"

#define BROKER_PENDING_TTL_MS "30000"
#define BROKER_FIELD_MAX 256

/* ARGV: sid, user, label, alt, device, edge, source, now, ttl.
 * Returns {1, sid, label}, {0, existing sid} or {-1, why}. */
static const char LUA_BEGIN[] =
    "local sid, user, label, alt = ARGV[1], ARGV[2], ARGV[3], ARGV[4]\n"
    "local ukey = 'rb:user:' .. user\n"
    "local cur = redis.call('GET', ukey)\n"
    "if cur then return {0, cur} end\n"
    "local lab = label\n"
    "local owner = redis.call('GET', 'rb:label:' .. label)\n"
    "if owner and owner ~= user then\n"
    "  lab = alt\n"
    "  owner = redis.call('GET', 'rb:label:' .. alt)\n"
    "  if owner and owner ~= user then return {-1, 'label ' .. alt .. ' is taken'} end\n"
    "end\n"
    "redis.call('SET', 'rb:label:' .. lab, user)\n"
    "redis.call('SET', ukey, sid, 'PX', ARGV[9])\n"
    "local skey = 'rb:session:' .. sid\n"
    "redis.call('HSET', skey, 'user', user, 'label', lab, 'device', ARGV[5],\n"
    "           'edge', ARGV[6], 'source', ARGV[7], 'since', ARGV[8], 'state', 'pending')\n"
    "redis.call('PEXPIRE', skey, ARGV[9])\n"
    "return {1, sid, lab}\n";

/* ARGV: sid, ip, fqdn, token_sha256. Returns the new seq, or -1. */
static const char LUA_COMMIT[] =
    "local sid = ARGV[1]\n"
    "local skey = 'rb:session:' .. sid\n"
    "if redis.call('HGET', skey, 'state') ~= 'pending' then return -1 end\n"
    "local ukey = 'rb:user:' .. redis.call('HGET', skey, 'user')\n"
    "if redis.call('GET', ukey) ~= sid then return -1 end\n"
    "redis.call('HSET', skey, 'ip', ARGV[2], 'fqdn', ARGV[3], 'token_sha256', ARGV[4],\n"
    "           'state', 'live')\n"
    "redis.call('PERSIST', skey)\n"
    "redis.call('PERSIST', ukey)\n"
    "redis.call('SADD', 'rb:sessions:live', sid)\n"
    "return redis.call('INCR', 'rb:events:seq')\n";

/* ARGV: sid. Returns 1 when a pending session was dropped, else 0. */
static const char LUA_ABORT[] =
    "local sid = ARGV[1]\n"
    "local skey = 'rb:session:' .. sid\n"
    "if redis.call('HGET', skey, 'state') ~= 'pending' then return 0 end\n"
    "local ukey = 'rb:user:' .. redis.call('HGET', skey, 'user')\n"
    "redis.call('DEL', skey)\n"
    "if redis.call('GET', ukey) == sid then redis.call('DEL', ukey) end\n"
    "return 1\n";

/* ARGV: sid. Returns {seq, user, label, fqdn, ip, device, edge, since} or {0}. */
static const char LUA_END[] =
    "local sid = ARGV[1]\n"
    "local skey = 'rb:session:' .. sid\n"
    "local f = redis.call('HMGET', skey, 'state', 'user', 'label', 'fqdn', 'ip', 'device',\n"
    "                     'edge', 'since')\n"
    "if f[1] ~= 'live' then return {0} end\n"
    "redis.call('DEL', skey)\n"
    "local ukey = 'rb:user:' .. f[2]\n"
    "if redis.call('GET', ukey) == sid then redis.call('DEL', ukey) end\n"
    "redis.call('SREM', 'rb:sessions:live', sid)\n"
    "local seq = redis.call('INCR', 'rb:events:seq')\n"
    "return {seq, f[2], f[3] or '', f[4] or '', f[5] or '', f[6] or '', f[7] or '',\n"
    "        f[8] or '0'}\n";

/* Returns {seq, sid, user, label, fqdn, ip, device, edge, since, sid, ...}. */
static const char LUA_SNAPSHOT[] =
    "local out = {tonumber(redis.call('GET', 'rb:events:seq') or '0')}\n"
    "for _, sid in ipairs(redis.call('SMEMBERS', 'rb:sessions:live')) do\n"
    "  local f = redis.call('HMGET', 'rb:session:' .. sid, 'user', 'label', 'fqdn', 'ip',\n"
    "                       'device', 'edge', 'since')\n"
    "  out[#out + 1] = sid\n"
    "  for i = 1, 7 do out[#out + 1] = f[i] or '' end\n"
    "end\n"
    "return out\n";

static const char LUA_STATS[] = "return {tonumber(redis.call('GET', 'rb:events:seq') or '0'),\n"
                                "        redis.call('SCARD', 'rb:sessions:live')}\n";

/* Fields per session in LUA_SNAPSHOT's answer. */
#define SNAP_FIELDS 8

typedef struct broker_op {
    struct broker_op *prev, *next;
    broker_store_t *store;
    union {
        broker_begin_fn *begin;
        broker_seq_fn *seq;
        broker_found_fn *found;
        broker_end_fn *end;
        broker_snapshot_fn *snapshot;
        broker_stats_fn *stats;
    } fn;
    void *arg;
    char session_id[BROKER_SESSION_ID_LEN + 1];
    uint64_t since_ms;
} broker_op_t;

struct broker_store {
    rb_redis_t *redis;
    rb_redis_script_t *begin, *commit, *abort, *end, *snapshot, *stats;
    broker_op_t *ops;
};

static broker_op_t *s_op_new(broker_store_t *s, void *arg)
{
    broker_op_t *op = calloc(1, sizeof(*op));
    if (!op) return NULL;
    op->store = s;
    op->arg = arg;
    op->next = s->ops;
    if (s->ops) s->ops->prev = op;
    s->ops = op;
    return op;
}

static void s_op_free(broker_op_t *op)
{
    broker_store_t *s = op->store;
    if (op->prev)
        op->prev->next = op->next;
    else
        s->ops = op->next;
    if (op->next) op->next->prev = op->prev;
    free(op);
}

/* Sends a script for op; frees op and returns -1 when it cannot. */
static int s_eval(broker_op_t *op, rb_redis_script_t *script, int argc, const char **argv,
                  rb_redis_reply_fn *cb)
{
    if (rb_redis_eval(op->store->redis, script, 0, argc, argv, NULL, cb, op) != 0) {
        s_op_free(op);
        return -1;
    }
    return 0;
}

static bool s_field_ok(const char *v, bool required)
{
    if (!v) return false;
    size_t n = strlen(v);
    return (n > 0 || !required) && n <= BROKER_FIELD_MAX;
}

static const char *s_reply_error(const redisReply *rep)
{
    if (!rep) return "no answer";
    return rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply";
}

static bool s_is_str(const redisReply *rep)
{
    return rep->type == REDIS_REPLY_STRING || rep->type == REDIS_REPLY_STATUS;
}

broker_store_t *broker_store_new(rb_redis_t *redis)
{
    broker_store_t *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->redis = redis;
    s->begin = rb_redis_script(redis, LUA_BEGIN);
    s->commit = rb_redis_script(redis, LUA_COMMIT);
    s->abort = rb_redis_script(redis, LUA_ABORT);
    s->end = rb_redis_script(redis, LUA_END);
    s->snapshot = rb_redis_script(redis, LUA_SNAPSHOT);
    s->stats = rb_redis_script(redis, LUA_STATS);
    if (!s->begin || !s->commit || !s->abort || !s->end || !s->snapshot || !s->stats) {
        free(s);
        return NULL;
    }
    return s;
}

void broker_store_destroy(broker_store_t **sp)
{
    if (!sp || !*sp) return;
    broker_store_t *s = *sp;
    *sp = NULL;
    while (s->ops) {
        rb_redis_cancel(s->redis, s->ops);
        s_op_free(s->ops);
    }
    free(s);
}

void broker_store_cancel(broker_store_t *s, void *arg)
{
    broker_op_t *op = s->ops;
    while (op) {
        broker_op_t *next = op->next;
        if (op->arg == arg) {
            rb_redis_cancel(s->redis, op);
            s_op_free(op);
        }
        op = next;
    }
}

/* ---- begin ---- */

static void s_on_begin(void *arg, const redisReply *rep)
{
    broker_op_t *op = arg;
    broker_begin_result_t res = BROKER_BEGIN_ERROR;
    const char *sid = NULL, *label = NULL;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER && s_is_str(rep->element[1])) {
        long long code = rep->element[0]->integer;
        if (code == 1 && rep->elements == 3 && s_is_str(rep->element[2])) {
            res = BROKER_BEGIN_CLAIMED;
            sid = rep->element[1]->str;
            label = rep->element[2]->str;
        } else if (code == 0) {
            res = BROKER_BEGIN_EXISTS;
            sid = rep->element[1]->str;
        } else {
            rb_warn("session_begin_failed", "%s", rep->element[1]->str);
        }
    } else {
        rb_warn("session_begin_failed", "Redis: %s", s_reply_error(rep));
    }
    if (op->fn.begin)
        op->fn.begin(op->arg, res, sid, label, res == BROKER_BEGIN_CLAIMED ? op->since_ms : 0);
    s_op_free(op);
}

static int s_random_hex(char *out, size_t nbytes)
{
    unsigned char b[64];
    if (nbytes > sizeof(b) || getrandom(b, nbytes, 0) != (ssize_t)nbytes) return -1;
    for (size_t i = 0; i < nbytes; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

int broker_store_begin(broker_store_t *s, const char *user, const char *label,
                       const char *alt_label, const char *device, const char *edge_id,
                       const char *source, broker_begin_fn *fn, void *arg)
{
    char now[24];
    if (!s_field_ok(user, true) || !s_field_ok(label, true) || !s_field_ok(alt_label, true) ||
        !s_field_ok(device, false) || !s_field_ok(edge_id, false) || !s_field_ok(source, false))
        return -1;
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.begin = fn;
    if (s_random_hex(op->session_id, BROKER_SESSION_ID_LEN / 2) != 0) {
        s_op_free(op);
        return -1;
    }
    op->since_ms = rb_wall_ms();
    snprintf(now, sizeof(now), "%" PRIu64, op->since_ms);
    const char *av[] = {op->session_id,       user, label, alt_label, device, edge_id, source, now,
                        BROKER_PENDING_TTL_MS};
    return s_eval(op, s->begin, 9, av, s_on_begin);
}

/* ---- commit, abort ---- */

static void s_on_commit(void *arg, const redisReply *rep)
{
    broker_op_t *op = arg;
    uint64_t seq = 0;
    int rc = -1;
    if (rep && rep->type == REDIS_REPLY_INTEGER && rep->integer > 0) {
        seq = (uint64_t)rep->integer;
        rc = 0;
    } else if (rep && rep->type == REDIS_REPLY_INTEGER) {
        rb_warn("session_commit_failed", "session %s is no longer pending", op->session_id);
        rc = 1;
    } else {
        rb_warn("session_commit_failed", "Redis: %s", s_reply_error(rep));
    }
    if (op->fn.seq) op->fn.seq(op->arg, rc, seq);
    s_op_free(op);
}

int broker_store_commit(broker_store_t *s, const char *session_id, const char *ip, const char *fqdn,
                        const char *token_sha256, broker_seq_fn *fn, void *arg)
{
    if (!s_field_ok(session_id, true) || !s_field_ok(ip, false) || !s_field_ok(fqdn, false) ||
        !s_field_ok(token_sha256, false))
        return -1;
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.seq = fn;
    snprintf(op->session_id, sizeof(op->session_id), "%s", session_id);
    const char *av[] = {session_id, ip, fqdn, token_sha256};
    return s_eval(op, s->commit, 4, av, s_on_commit);
}

static void s_on_found(void *arg, const redisReply *rep)
{
    broker_op_t *op = arg;
    int found = -1;
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        found = rep->integer == 1;
    else
        rb_warn("session_abort_failed", "Redis: %s", s_reply_error(rep));
    if (op->fn.found) op->fn.found(op->arg, found);
    s_op_free(op);
}

int broker_store_abort(broker_store_t *s, const char *session_id, broker_found_fn *fn, void *arg)
{
    if (!s_field_ok(session_id, true)) return -1;
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.found = fn;
    const char *av[] = {session_id};
    return s_eval(op, s->abort, 1, av, s_on_found);
}

/* ---- end ---- */

static void s_on_end(void *arg, const redisReply *rep)
{
    broker_op_t *op = arg;
    int found = -1;
    uint64_t seq = 0;
    broker_session_t sess = {0};
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER) {
        found = 0;
        if (rep->element[0]->integer > 0 && rep->elements == 8) {
            bool good = true;
            for (size_t i = 1; i < 8; i++)
                good = good && s_is_str(rep->element[i]);
            if (good) {
                found = 1;
                seq = (uint64_t)rep->element[0]->integer;
                sess.session_id = op->session_id;
                sess.user = rep->element[1]->str;
                sess.label = rep->element[2]->str;
                sess.fqdn = rep->element[3]->str;
                sess.ip = rep->element[4]->str;
                sess.device = rep->element[5]->str;
                sess.edge_id = rep->element[6]->str;
                sess.since_ms = strtoull(rep->element[7]->str, NULL, 10);
            } else {
                found = -1;
            }
        }
    }
    if (found < 0) rb_warn("session_end_failed", "Redis: %s", s_reply_error(rep));
    if (op->fn.end) op->fn.end(op->arg, found, seq, found == 1 ? &sess : NULL);
    s_op_free(op);
}

int broker_store_end(broker_store_t *s, const char *session_id, const char *reason,
                     broker_end_fn *fn, void *arg)
{
    if (!s_field_ok(session_id, true) || strlen(session_id) > BROKER_SESSION_ID_LEN) return -1;
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.end = fn;
    snprintf(op->session_id, sizeof(op->session_id), "%s", session_id);
    const char *av[] = {session_id};
    rb_debug("session_end", "ending %s: %s", session_id, reason ? reason : "");
    return s_eval(op, s->end, 1, av, s_on_end);
}

/* ---- snapshot, stats ---- */

static void s_on_snapshot(void *arg, const redisReply *rep)
{
    broker_op_t *op = arg;
    broker_session_t *list = NULL;
    size_t n = 0;
    int rc = -1;
    uint64_t seq = 0;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER || (rep->elements - 1) % SNAP_FIELDS) {
        rb_warn("snapshot_failed", "Redis: %s", s_reply_error(rep));
        goto out;
    }
    seq = (uint64_t)rep->element[0]->integer;
    n = (rep->elements - 1) / SNAP_FIELDS;
    list = calloc(n ? n : 1, sizeof(*list));
    if (!list) goto out;
    for (size_t i = 0; i < n; i++) {
        redisReply **e = rep->element + 1 + i * SNAP_FIELDS;
        for (size_t k = 0; k < SNAP_FIELDS; k++)
            if (!s_is_str(e[k])) goto out;
        list[i].session_id = e[0]->str;
        list[i].user = e[1]->str;
        list[i].label = e[2]->str;
        list[i].fqdn = e[3]->str;
        list[i].ip = e[4]->str;
        list[i].device = e[5]->str;
        list[i].edge_id = e[6]->str;
        list[i].since_ms = strtoull(e[7]->str, NULL, 10);
    }
    rc = 0;
out:
    if (op->fn.snapshot) op->fn.snapshot(op->arg, rc, seq, rc == 0 ? list : NULL, rc == 0 ? n : 0);
    free(list);
    s_op_free(op);
}

int broker_store_snapshot(broker_store_t *s, broker_snapshot_fn *fn, void *arg)
{
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.snapshot = fn;
    return s_eval(op, s->snapshot, 0, NULL, s_on_snapshot);
}

static void s_on_stats(void *arg, const redisReply *rep)
{
    broker_op_t *op = arg;
    bool good = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
                rep->element[0]->type == REDIS_REPLY_INTEGER &&
                rep->element[1]->type == REDIS_REPLY_INTEGER;
    if (op->fn.stats)
        op->fn.stats(op->arg, good ? 0 : -1, good ? (uint64_t)rep->element[0]->integer : 0,
                     good ? (uint64_t)rep->element[1]->integer : 0);
    s_op_free(op);
}

int broker_store_stats(broker_store_t *s, broker_stats_fn *fn, void *arg)
{
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.stats = fn;
    return s_eval(op, s->stats, 0, NULL, s_on_stats);
}
