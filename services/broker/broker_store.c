/* broker_store: sessions in Redis (see broker_store.h).
 *
 * Redis model (shared by every broker; ipalloc's keys are rb:ip:*):
 *   rb:user:<user>       STRING the user's one session id. Set with a 30 s
 *                               TTL while the logon is pending, made
 *                               permanent by commit; its existence is what
 *                               makes a second logon answer "exists"/offer
 *   rb:label:<label>     STRING the user owning this DNS label, for ever, so
 *                               a user keeps their name across sessions
 *   rb:session:<sid>     HASH   user, label, fqdn, ip, device, edge, source,
 *                               since (Unix ms), token_sha256 (never the
 *                               token), state (pending | live), via_transfer
 *                               (1 when made by accepting an offer), groups
 *                               (comma-separated), origin (the session the
 *                               accepted offer named)
 *   rb:sessions:live     SET    ids of live sessions (snapshots, gauge)
 *   rb:sessions:seen     ZSET   live session id -> last seen (Unix ms):
 *                               logon, transfer, resume and edge refreshes;
 *                               the idle timeout reads it
 *   rb:sessions:since    ZSET   live session id -> since (Unix ms), for the
 *                               absolute timeout
 *   rb:sessions:by_ip    HASH   address -> live session id (whois)
 *   rb:offer:<id>        HASH   user, session: a transfer offer, with the
 *                               offer's TTL; deleted when used
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
/* Refresh ids per script call: ARGV stays a few hundred KiB at most. */
#define BROKER_REFRESH_MAX 20000

/* Helpers every script starts with. A live session travels as 12 strings:
 * sid, user, label, fqdn, ip, device, edge, source, since, via_transfer,
 * last_seen, groups (SESS_FIELDS below must match). */
#define LUA_PRELUDE                                                                              \
    "local K_LIVE, K_SEEN, K_SINCE = 'rb:sessions:live', 'rb:sessions:seen', "                   \
    "'rb:sessions:since'\n"                                                                      \
    "local K_BYIP, K_SEQ = 'rb:sessions:by_ip', 'rb:events:seq'\n"                               \
    "local function sess_get(sid)\n"                                                             \
    "  local f = redis.call('HMGET', 'rb:session:' .. sid, 'state', 'user', 'label', 'fqdn',\n"  \
    "                       'ip', 'device', 'edge', 'source', 'since', 'via_transfer',\n"       \
    "                       'groups')\n"                                                        \
    "  if f[1] ~= 'live' then return nil end\n"                                                  \
    "  local seen = redis.call('ZSCORE', K_SEEN, sid)\n"                                         \
    "  return {sid, f[2], f[3] or '', f[4] or '', f[5] or '', f[6] or '', f[7] or '',\n"         \
    "          f[8] or '', f[9] or '0', f[10] or '0', seen or '0', f[11] or ''}\n"               \
    "end\n"                                                                                      \
    "local function sess_live(sid, since, now, ip)\n"                                            \
    "  redis.call('SADD', K_LIVE, sid)\n"                                                        \
    "  redis.call('ZADD', K_SEEN, now, sid)\n"                                                   \
    "  redis.call('ZADD', K_SINCE, since, sid)\n"                                                \
    "  if ip ~= '' then redis.call('HSET', K_BYIP, ip, sid) end\n"                               \
    "end\n"                                                                                      \
    "local function sess_drop(s, reason)\n"                                                      \
    "  local sid = s[1]\n"                                                                       \
    "  redis.call('DEL', 'rb:session:' .. sid)\n"                                                \
    "  redis.call('SET', 'rb:ended:' .. sid, reason, 'EX', 600)\n"                              \
    "  local ukey = 'rb:user:' .. s[2]\n"                                                        \
    "  if redis.call('GET', ukey) == sid then redis.call('DEL', ukey) end\n"                     \
    "  redis.call('SREM', K_LIVE, sid)\n"                                                        \
    "  redis.call('ZREM', K_SEEN, sid)\n"                                                        \
    "  redis.call('ZREM', K_SINCE, sid)\n"                                                       \
    "  if s[5] ~= '' and redis.call('HGET', K_BYIP, s[5]) == sid then\n"                         \
    "    redis.call('HDEL', K_BYIP, s[5])\n"                                                     \
    "  end\n"                                                                                    \
    "  return redis.call('INCR', K_SEQ)\n"                                                       \
    "end\n"                                                                                      \
    "local function append(out, s) for i = 1, 12 do out[#out + 1] = s[i] end end\n"

#define SESS_FIELDS 12

/* ARGV: sid, user, label, alt, device, edge, source, now, ttl, offer id,
 * offer ttl (s), groups. Returns {1, sid, label}, {0, pending sid},
 * {2, offer id, live session...} or {-1, why}. */
static const char LUA_BEGIN[] =
    LUA_PRELUDE
    "local sid, user, label, alt = ARGV[1], ARGV[2], ARGV[3], ARGV[4]\n"
    "local ukey = 'rb:user:' .. user\n"
    "local cur = redis.call('GET', ukey)\n"
    "if cur then\n"
    "  local s = sess_get(cur)\n"
    "  if not s then return {0, cur} end\n"
    "  local okey = 'rb:offer:' .. ARGV[10]\n"
    "  redis.call('HSET', okey, 'user', user, 'session', cur)\n"
    "  redis.call('EXPIRE', okey, ARGV[11])\n"
    "  local out = {2, ARGV[10]}\n"
    "  append(out, s)\n"
    "  return out\n"
    "end\n"
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
    "           'edge', ARGV[6], 'source', ARGV[7], 'since', ARGV[8], 'state', 'pending',\n"
    "           'via_transfer', '0', 'groups', ARGV[12])\n"
    "redis.call('PEXPIRE', skey, ARGV[9])\n"
    "return {1, sid, lab}\n";

/* ARGV: sid, ip, fqdn, token_sha256, now. Returns the new seq, or -1. */
static const char LUA_COMMIT[] =
    LUA_PRELUDE
    "local sid = ARGV[1]\n"
    "local skey = 'rb:session:' .. sid\n"
    "if redis.call('HGET', skey, 'state') ~= 'pending' then return -1 end\n"
    "local ukey = 'rb:user:' .. redis.call('HGET', skey, 'user')\n"
    "if redis.call('GET', ukey) ~= sid then return -1 end\n"
    "redis.call('HSET', skey, 'ip', ARGV[2], 'fqdn', ARGV[3], 'token_sha256', ARGV[4],\n"
    "           'state', 'live')\n"
    "redis.call('PERSIST', skey)\n"
    "redis.call('PERSIST', ukey)\n"
    "sess_live(sid, redis.call('HGET', skey, 'since'), ARGV[5], ARGV[2])\n"
    "return redis.call('INCR', K_SEQ)\n";

/* ARGV: sid. Returns 1 when a pending session was dropped, else 0. */
static const char LUA_ABORT[] =
    "local sid = ARGV[1]\n"
    "local skey = 'rb:session:' .. sid\n"
    "if redis.call('HGET', skey, 'state') ~= 'pending' then return 0 end\n"
    "local ukey = 'rb:user:' .. redis.call('HGET', skey, 'user')\n"
    "redis.call('DEL', skey)\n"
    "if redis.call('GET', ukey) == sid then redis.call('DEL', ukey) end\n"
    "return 1\n";

/* ARGV: offer id, user, new sid, device, edge, source, now, token_sha256,
 * groups.
 * The offer is checked and consumed. The user's current session ends and
 * the new one takes its address and name when the current session is the
 * one offered ("transferred"), or came from an accept of that same offer's
 * session (concurrent accepts: the last wins, "replaced"). A current
 * session the offer never named (the offered one ended and the user logged
 * on afresh) is not touched: the offer no longer applies. Returns {1, down
 * seq, reason, up seq, old session...}, {0} (no such offer for user, or it
 * no longer applies), {2} (no session), {3} (a logon in flight). */
static const char LUA_TRANSFER[] =
    LUA_PRELUDE
    "local oid, user, sid, now = ARGV[1], ARGV[2], ARGV[3], ARGV[7]\n"
    "local okey = 'rb:offer:' .. oid\n"
    "if redis.call('HGET', okey, 'user') ~= user then return {0} end\n"
    "local offered = redis.call('HGET', okey, 'session')\n"
    "redis.call('DEL', okey)\n"
    "local ukey = 'rb:user:' .. user\n"
    "local cur = redis.call('GET', ukey)\n"
    "if not cur then return {2} end\n"
    "local s = sess_get(cur)\n"
    "if not s then return {3} end\n"
    "local reason = 'transferred'\n"
    "if cur ~= offered then\n"
    "  if redis.call('HGET', 'rb:session:' .. cur, 'origin') ~= offered then return {0} end\n"
    "  reason = 'replaced'\n"
    "end\n"
    "local down = sess_drop(s, reason)\n"
    "redis.call('HSET', 'rb:session:' .. sid, 'user', user, 'label', s[3], 'fqdn', s[4],\n"
    "           'ip', s[5], 'device', ARGV[4], 'edge', ARGV[5], 'source', ARGV[6],\n"
    "           'since', now, 'token_sha256', ARGV[8], 'state', 'live', 'via_transfer', '1',\n"
    "           'groups', ARGV[9], 'origin', offered)\n"
    "redis.call('SET', ukey, sid)\n"
    "sess_live(sid, now, now, s[5])\n"
    "local out = {1, down, reason, redis.call('INCR', K_SEQ)}\n"
    "append(out, s)\n"
    "return out\n";

/* ARGV: sid, token_sha256, device, edge, source, now. Returns {1, seq,
 * session...} or {0, why}. The token is compared as its SHA-256: knowing how
 * many leading characters of a digest match tells nothing about a token. */
static const char LUA_RESUME[] =
    LUA_PRELUDE
    "local sid, now = ARGV[1], ARGV[6]\n"
    "local skey = 'rb:session:' .. sid\n"
    "local s = sess_get(sid)\n"
    "if not s then return {0, 'unknown session'} end\n"
    "if redis.call('HGET', skey, 'token_sha256') ~= ARGV[2] then return {0, 'wrong token'} end\n"
    "if ARGV[3] ~= '' then redis.call('HSET', skey, 'device', ARGV[3]); s[6] = ARGV[3] end\n"
    "redis.call('HSET', skey, 'edge', ARGV[4], 'source', ARGV[5])\n"
    "s[7], s[8], s[11] = ARGV[4], ARGV[5], now\n"
    "redis.call('ZADD', K_SEEN, now, sid)\n"
    "local out = {1, redis.call('INCR', K_SEQ)}\n"
    "append(out, s)\n"
    "return out\n";

/* ARGV: now, edge, sid... Returns {id, reason, id, reason...} for the ids
 * that are not live on that edge: the reason the session ended with (kept
 * 10 minutes in rb:ended:<sid>), "moved" when it is live on another edge,
 * or "" when nobody knows. */
static const char LUA_REFRESH[] =
    LUA_PRELUDE
    "local now, edge = ARGV[1], ARGV[2]\n"
    "local gone = {}\n"
    "for i = 3, #ARGV do\n"
    "  local f = redis.call('HMGET', 'rb:session:' .. ARGV[i], 'state', 'edge')\n"
    "  if f[1] == 'live' and (edge == '' or f[2] == edge) then\n"
    "    redis.call('ZADD', K_SEEN, now, ARGV[i])\n"
    "  else\n"
    "    local why = ''\n"
    "    if f[1] == 'live' then why = 'moved'\n"
    "    else why = redis.call('GET', 'rb:ended:' .. ARGV[i]) or '' end\n"
    "    gone[#gone + 1] = ARGV[i]\n"
    "    gone[#gone + 1] = why\n"
    "  end\n"
    "end\n"
    "return gone\n";

/* ARGV: now, idle ms, lifetime ms (0: none), limit. Ends at most limit
 * sessions; returns {seq, session..., seq, session...}. */
static const char LUA_SWEEP[] =
    LUA_PRELUDE
    "local now, idle = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local life, limit = tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "local out, n = {}, 0\n"
    "local function reap(ids)\n"
    "  for _, sid in ipairs(ids) do\n"
    "    local s = sess_get(sid)\n"
    "    if s then\n"
    "      out[#out + 1] = sess_drop(s, 'expired')\n"
    "      append(out, s)\n"
    "    else\n"
    "      redis.call('ZREM', K_SEEN, sid)\n"
    "      redis.call('ZREM', K_SINCE, sid)\n"
    "    end\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "reap(redis.call('ZRANGEBYSCORE', K_SEEN, '-inf', now - idle, 'LIMIT', 0, limit))\n"
    "if life > 0 and n < limit then\n"
    "  reap(redis.call('ZRANGEBYSCORE', K_SINCE, '-inf', now - life, 'LIMIT', 0, limit - n))\n"
    "end\n"
    "return out\n";

/* ARGV: sid, user (sid empty: the user's session), reason. Returns {seq,
 * session...} or {0}. */
static const char LUA_END[] =
    LUA_PRELUDE
    "local sid = ARGV[1]\n"
    "if sid == '' then\n"
    "  sid = redis.call('GET', 'rb:user:' .. ARGV[2])\n"
    "  if not sid then return {0} end\n"
    "end\n"
    "local s = sess_get(sid)\n"
    "if not s then return {0} end\n"
    "local out = {sess_drop(s, ARGV[3])}\n"
    "append(out, s)\n"
    "return out\n";

/* ARGV: sid, user, ip. Returns 1 when ip is still wanted by sid or by the
 * user's live session. */
static const char LUA_WANTED[] =
    "local function live_with(sid)\n"
    "  local f = redis.call('HMGET', 'rb:session:' .. sid, 'state', 'ip')\n"
    "  return f[1] == 'live' and f[2] == ARGV[3]\n"
    "end\n"
    "if live_with(ARGV[1]) then return 1 end\n"
    "local cur = redis.call('GET', 'rb:user:' .. ARGV[2])\n"
    "if cur and live_with(cur) then return 1 end\n"
    "return 0\n";

/* ARGV: mode (all | user | ip), key. Returns {seq, session, session...}. */
static const char LUA_LIST[] =
    LUA_PRELUDE
    "local out = {tonumber(redis.call('GET', K_SEQ) or '0')}\n"
    "local function add(sid)\n"
    "  local s = sess_get(sid)\n"
    "  if s then append(out, s) end\n"
    "end\n"
    "if ARGV[1] == 'all' then\n"
    "  for _, sid in ipairs(redis.call('SMEMBERS', K_LIVE)) do add(sid) end\n"
    "elseif ARGV[1] == 'user' then\n"
    "  local sid = redis.call('GET', 'rb:user:' .. ARGV[2])\n"
    "  if sid then add(sid) end\n"
    "else\n"
    "  local sid = redis.call('HGET', K_BYIP, ARGV[2])\n"
    "  if sid then add(sid) end\n"
    "end\n"
    "return out\n";

static const char LUA_STATS[] = "return {tonumber(redis.call('GET', 'rb:events:seq') or '0'),\n"
                                "        redis.call('SCARD', 'rb:sessions:live')}\n";

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
        broker_transfer_fn *transfer;
        broker_resume_fn *resume;
        broker_refresh_fn *refresh;
        broker_sweep_fn *sweep;
    } fn;
    void *arg;
    char session_id[BROKER_SESSION_ID_LEN + 1];
    uint64_t since_ms;
    /* transfer: what the new session is made of */
    char user[BROKER_FIELD_MAX + 1];
    char device[BROKER_FIELD_MAX + 1];
    char edge_id[BROKER_FIELD_MAX + 1];
    char source[BROKER_FIELD_MAX + 1];
    char groups[BROKER_GROUPS_MAX + 1];
} broker_op_t;

struct broker_store {
    rb_redis_t *redis;
    rb_redis_script_t *begin, *commit, *abort, *transfer, *resume, *refresh, *sweep, *end, *wanted,
        *list, *stats;
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

static bool s_groups_ok(const char *v) { return v && strlen(v) <= BROKER_GROUPS_MAX; }

static const char *s_reply_error(const redisReply *rep)
{
    if (!rep) return "no answer";
    return rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply";
}

static bool s_is_str(const redisReply *rep)
{
    return rep->type == REDIS_REPLY_STRING || rep->type == REDIS_REPLY_STATUS;
}

/* Reads SESS_FIELDS strings of a session as the scripts' append() wrote
 * them. The strings stay owned by the reply. false when malformed. */
static bool s_read_session(redisReply *const *e, broker_session_t *out)
{
    for (size_t k = 0; k < SESS_FIELDS; k++)
        if (!s_is_str(e[k])) return false;
    *out = (broker_session_t){.session_id = e[0]->str,
                              .user = e[1]->str,
                              .label = e[2]->str,
                              .fqdn = e[3]->str,
                              .ip = e[4]->str,
                              .device = e[5]->str,
                              .edge_id = e[6]->str,
                              .source = e[7]->str,
                              .since_ms = strtoull(e[8]->str, NULL, 10),
                              .via_transfer = strcmp(e[9]->str, "1") == 0,
                              /* a ZSET score: may be "1.7e12"-style */
                              .last_seen_ms = (uint64_t)strtod(e[10]->str, NULL),
                              .groups = e[11]->str};
    return true;
}

static void s_now(char out[24])
{
    snprintf(out, 24, "%" PRIu64, rb_wall_ms());
}

static int s_random_hex(char *out, size_t nbytes)
{
    unsigned char b[64];
    if (nbytes > sizeof(b) || getrandom(b, nbytes, 0) != (ssize_t)nbytes) return -1;
    for (size_t i = 0; i < nbytes; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

broker_store_t *broker_store_new(rb_redis_t *redis)
{
    broker_store_t *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->redis = redis;
    s->begin = rb_redis_script(redis, LUA_BEGIN);
    s->commit = rb_redis_script(redis, LUA_COMMIT);
    s->abort = rb_redis_script(redis, LUA_ABORT);
    s->transfer = rb_redis_script(redis, LUA_TRANSFER);
    s->resume = rb_redis_script(redis, LUA_RESUME);
    s->refresh = rb_redis_script(redis, LUA_REFRESH);
    s->sweep = rb_redis_script(redis, LUA_SWEEP);
    s->end = rb_redis_script(redis, LUA_END);
    s->wanted = rb_redis_script(redis, LUA_WANTED);
    s->list = rb_redis_script(redis, LUA_LIST);
    s->stats = rb_redis_script(redis, LUA_STATS);
    if (!s->begin || !s->commit || !s->abort || !s->transfer || !s->resume || !s->refresh ||
        !s->sweep || !s->end || !s->wanted || !s->list || !s->stats) {
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
    broker_offer_t offer = {0};
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER && s_is_str(rep->element[1])) {
        long long code = rep->element[0]->integer;
        broker_session_t cur;
        if (code == 1 && rep->elements == 3 && s_is_str(rep->element[2])) {
            res = BROKER_BEGIN_CLAIMED;
            sid = rep->element[1]->str;
            label = rep->element[2]->str;
        } else if (code == 0) {
            res = BROKER_BEGIN_EXISTS;
            sid = rep->element[1]->str;
        } else if (code == 2 && rep->elements == 2 + SESS_FIELDS &&
                   s_read_session(rep->element + 2, &cur)) {
            res = BROKER_BEGIN_OFFER;
            sid = cur.session_id;
            offer = (broker_offer_t){.offer_id = rep->element[1]->str,
                                     .session_id = cur.session_id,
                                     .since_ms = cur.since_ms,
                                     .device = cur.device,
                                     .edge_id = cur.edge_id,
                                     .source = cur.source};
        } else {
            rb_warn("session_begin_failed", "%s", rep->element[1]->str);
        }
    } else {
        rb_warn("session_begin_failed", "Redis: %s", s_reply_error(rep));
    }
    if (op->fn.begin)
        op->fn.begin(op->arg, res, sid, label, res == BROKER_BEGIN_CLAIMED ? op->since_ms : 0,
                     res == BROKER_BEGIN_OFFER ? &offer : NULL);
    s_op_free(op);
}

int broker_store_begin(broker_store_t *s, const char *user, const char *label,
                       const char *alt_label, const char *device, const char *edge_id,
                       const char *source, const char *groups, unsigned offer_ttl_s,
                       broker_begin_fn *fn, void *arg)
{
    char now[24], offer_id[BROKER_OFFER_ID_LEN + 1], ttl[16];
    if (!s_field_ok(user, true) || !s_field_ok(label, true) || !s_field_ok(alt_label, true) ||
        !s_field_ok(device, false) || !s_field_ok(edge_id, false) || !s_field_ok(source, false) ||
        !s_groups_ok(groups) || offer_ttl_s == 0)
        return -1;
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.begin = fn;
    if (s_random_hex(op->session_id, BROKER_SESSION_ID_LEN / 2) != 0 ||
        s_random_hex(offer_id, BROKER_OFFER_ID_LEN / 2) != 0) {
        s_op_free(op);
        return -1;
    }
    op->since_ms = rb_wall_ms();
    snprintf(now, sizeof(now), "%" PRIu64, op->since_ms);
    snprintf(ttl, sizeof(ttl), "%u", offer_ttl_s);
    const char *av[] = {op->session_id, user, label, alt_label, device, edge_id, source, now,
                        BROKER_PENDING_TTL_MS, offer_id, ttl, groups};
    return s_eval(op, s->begin, 12, av, s_on_begin);
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
    char now[24];
    if (!s_field_ok(session_id, true) || !s_field_ok(ip, false) || !s_field_ok(fqdn, false) ||
        !s_field_ok(token_sha256, false))
        return -1;
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.seq = fn;
    snprintf(op->session_id, sizeof(op->session_id), "%s", session_id);
    s_now(now);
    const char *av[] = {session_id, ip, fqdn, token_sha256, now};
    return s_eval(op, s->commit, 5, av, s_on_commit);
}

static void s_on_found(void *arg, const redisReply *rep)
{
    broker_op_t *op = arg;
    int found = -1;
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        found = rep->integer == 1;
    else
        rb_warn("session_script_failed", "Redis: %s", s_reply_error(rep));
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

/* ---- transfer ---- */

static void s_on_transfer(void *arg, const redisReply *rep)
{
    broker_op_t *op = arg;
    broker_transfer_t t = {.res = BROKER_XFER_ERROR};
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER) {
        long long code = rep->element[0]->integer;
        if (code == 0)
            t.res = BROKER_XFER_EXPIRED;
        else if (code == 2)
            t.res = BROKER_XFER_GONE;
        else if (code == 3)
            t.res = BROKER_XFER_PENDING;
        else if (code == 1 && rep->elements == 4 + SESS_FIELDS &&
                 rep->element[1]->type == REDIS_REPLY_INTEGER && s_is_str(rep->element[2]) &&
                 rep->element[3]->type == REDIS_REPLY_INTEGER &&
                 s_read_session(rep->element + 4, &t.old)) {
            t.res = BROKER_XFER_OK;
            t.down_seq = (uint64_t)rep->element[1]->integer;
            t.reason = rep->element[2]->str;
            t.up_seq = (uint64_t)rep->element[3]->integer;
            t.cur = t.old;
            t.cur.session_id = op->session_id;
            t.cur.device = op->device;
            t.cur.edge_id = op->edge_id;
            t.cur.source = op->source;
            t.cur.since_ms = t.cur.last_seen_ms = op->since_ms;
            t.cur.via_transfer = true;
            t.cur.groups = op->groups;
        }
    }
    if (t.res == BROKER_XFER_ERROR)
        rb_warn("session_transfer_failed", "Redis: %s", s_reply_error(rep));
    if (op->fn.transfer) op->fn.transfer(op->arg, &t);
    s_op_free(op);
}

int broker_store_transfer(broker_store_t *s, const char *offer_id, const char *user,
                          const char *device, const char *edge_id, const char *source,
                          const char *groups, const char *token_sha256, broker_transfer_fn *fn,
                          void *arg)
{
    char now[24];
    if (!s_field_ok(offer_id, true) || !s_field_ok(user, true) || !s_field_ok(device, false) ||
        !s_field_ok(edge_id, false) || !s_field_ok(source, false) || !s_groups_ok(groups) ||
        !s_field_ok(token_sha256, true))
        return -1;
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.transfer = fn;
    if (s_random_hex(op->session_id, BROKER_SESSION_ID_LEN / 2) != 0) {
        s_op_free(op);
        return -1;
    }
    snprintf(op->user, sizeof(op->user), "%s", user);
    snprintf(op->device, sizeof(op->device), "%s", device);
    snprintf(op->edge_id, sizeof(op->edge_id), "%s", edge_id);
    snprintf(op->source, sizeof(op->source), "%s", source);
    snprintf(op->groups, sizeof(op->groups), "%s", groups);
    op->since_ms = rb_wall_ms();
    snprintf(now, sizeof(now), "%" PRIu64, op->since_ms);
    const char *av[] = {offer_id, user, op->session_id, device, edge_id, source, now, token_sha256,
                        groups};
    return s_eval(op, s->transfer, 9, av, s_on_transfer);
}

/* ---- resume ---- */

static void s_on_resume(void *arg, const redisReply *rep)
{
    broker_op_t *op = arg;
    int rc = -1;
    const char *why = "error";
    uint64_t seq = 0;
    broker_session_t sess = {0};
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER) {
        if (rep->element[0]->integer == 0 && s_is_str(rep->element[1])) {
            rc = 0;
            why = rep->element[1]->str;
        } else if (rep->element[0]->integer == 1 && rep->elements == 2 + SESS_FIELDS &&
                   rep->element[1]->type == REDIS_REPLY_INTEGER &&
                   s_read_session(rep->element + 2, &sess)) {
            rc = 1;
            why = "";
            seq = (uint64_t)rep->element[1]->integer;
        }
    }
    if (rc < 0) rb_warn("session_resume_failed", "Redis: %s", s_reply_error(rep));
    if (op->fn.resume) op->fn.resume(op->arg, rc, why, seq, rc == 1 ? &sess : NULL);
    s_op_free(op);
}

int broker_store_resume(broker_store_t *s, const char *session_id, const char *token_sha256,
                        const char *device, const char *edge_id, const char *source,
                        broker_resume_fn *fn, void *arg)
{
    char now[24];
    if (!s_field_ok(session_id, true) || !s_field_ok(token_sha256, true) ||
        !s_field_ok(device, false) || !s_field_ok(edge_id, false) || !s_field_ok(source, false))
        return -1;
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.resume = fn;
    s_now(now);
    const char *av[] = {session_id, token_sha256, device, edge_id, source, now};
    return s_eval(op, s->resume, 6, av, s_on_resume);
}

/* ---- refresh, sweep ---- */

static void s_on_refresh(void *arg, const redisReply *rep)
{
    broker_op_t *op = arg;
    const char **gone = NULL, **why = NULL;
    size_t n = 0;
    int rc = -1;
    if (rep && rep->type == REDIS_REPLY_ARRAY) {
        size_t cap = rep->elements / 2 + 1;
        gone = calloc(cap, sizeof(*gone));
        why = calloc(cap, sizeof(*why));
        rc = gone && why ? 0 : -1;
        for (size_t i = 0; rc == 0 && i + 1 < rep->elements; i += 2) {
            if (!s_is_str(rep->element[i]) || !s_is_str(rep->element[i + 1])) continue;
            gone[n] = rep->element[i]->str;
            why[n++] = rep->element[i + 1]->str;
        }
    } else {
        rb_warn("session_refresh_failed", "Redis: %s", s_reply_error(rep));
    }
    if (op->fn.refresh) op->fn.refresh(op->arg, rc, gone, why, n);
    free(gone);
    free(why);
    s_op_free(op);
}

int broker_store_refresh(broker_store_t *s, const char *edge_id, const char *const *ids, size_t n,
                         broker_refresh_fn *fn, void *arg)
{
    char now[24];
    if (!s_field_ok(edge_id, false) || n > BROKER_REFRESH_MAX) return -1;
    for (size_t i = 0; i < n; i++)
        if (!s_field_ok(ids[i], true)) return -1;
    const char **av = calloc(n + 2, sizeof(*av));
    if (!av) return -1;
    broker_op_t *op = s_op_new(s, arg);
    if (!op) {
        free(av);
        return -1;
    }
    op->fn.refresh = fn;
    s_now(now);
    av[0] = now;
    av[1] = edge_id;
    memcpy(av + 2, ids, n * sizeof(*ids));
    int rc = s_eval(op, s->refresh, (int)n + 2, av, s_on_refresh);
    free(av); /* rb_redis copies the arguments */
    return rc;
}

static void s_on_sweep(void *arg, const redisReply *rep)
{
    broker_op_t *op = arg;
    const size_t stride = 1 + SESS_FIELDS;
    broker_session_t *list = NULL;
    uint64_t *seqs = NULL;
    size_t n = 0;
    int rc = -1;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements % stride) {
        rb_warn("session_sweep_failed", "Redis: %s", s_reply_error(rep));
        goto out;
    }
    n = rep->elements / stride;
    list = calloc(n ? n : 1, sizeof(*list));
    seqs = calloc(n ? n : 1, sizeof(*seqs));
    if (!list || !seqs) goto out;
    for (size_t i = 0; i < n; i++) {
        redisReply *const *e = rep->element + i * stride;
        if (e[0]->type != REDIS_REPLY_INTEGER || !s_read_session(e + 1, &list[i])) goto out;
        seqs[i] = (uint64_t)e[0]->integer;
    }
    rc = 0;
out:
    if (op->fn.sweep)
        op->fn.sweep(op->arg, rc, rc == 0 ? seqs : NULL, rc == 0 ? list : NULL, rc == 0 ? n : 0);
    free(list);
    free(seqs);
    s_op_free(op);
}

int broker_store_sweep(broker_store_t *s, uint64_t idle_ms, uint64_t life_ms, unsigned limit,
                       broker_sweep_fn *fn, void *arg)
{
    char now[24], idle[24], life[24], lim[16];
    if (limit == 0) return -1;
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.sweep = fn;
    s_now(now);
    snprintf(idle, sizeof(idle), "%" PRIu64, idle_ms);
    snprintf(life, sizeof(life), "%" PRIu64, life_ms);
    snprintf(lim, sizeof(lim), "%u", limit);
    const char *av[] = {now, idle, life, lim};
    return s_eval(op, s->sweep, 4, av, s_on_sweep);
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
        if (rep->element[0]->integer > 0) {
            found = -1;
            if (rep->elements == 1 + SESS_FIELDS && s_read_session(rep->element + 1, &sess)) {
                found = 1;
                seq = (uint64_t)rep->element[0]->integer;
            }
        }
    }
    if (found < 0) rb_warn("session_end_failed", "Redis: %s", s_reply_error(rep));
    if (op->fn.end) op->fn.end(op->arg, found, seq, found == 1 ? &sess : NULL);
    s_op_free(op);
}

static int s_end(broker_store_t *s, const char *session_id, const char *user, const char *reason,
                 broker_end_fn *fn, void *arg)
{
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.end = fn;
    const char *av[] = {session_id, user, reason ? reason : ""};
    rb_debug("session_end", "ending %s%s: %s", session_id, user, reason ? reason : "");
    return s_eval(op, s->end, 3, av, s_on_end);
}

int broker_store_end(broker_store_t *s, const char *session_id, const char *reason,
                     broker_end_fn *fn, void *arg)
{
    if (!s_field_ok(session_id, true) || strlen(session_id) > BROKER_SESSION_ID_LEN) return -1;
    return s_end(s, session_id, "", reason, fn, arg);
}

int broker_store_end_user(broker_store_t *s, const char *user, const char *reason,
                          broker_end_fn *fn, void *arg)
{
    if (!s_field_ok(user, true)) return -1;
    return s_end(s, "", user, reason, fn, arg);
}

int broker_store_lease_wanted(broker_store_t *s, const char *session_id, const char *user,
                              const char *ip, broker_found_fn *fn, void *arg)
{
    if (!s_field_ok(session_id, true) || !s_field_ok(user, true) || !s_field_ok(ip, true))
        return -1;
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.found = fn;
    const char *av[] = {session_id, user, ip};
    return s_eval(op, s->wanted, 3, av, s_on_found);
}

/* ---- snapshot, list, stats ---- */

static void s_on_list(void *arg, const redisReply *rep)
{
    broker_op_t *op = arg;
    broker_session_t *list = NULL;
    size_t n = 0;
    int rc = -1;
    uint64_t seq = 0;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER || (rep->elements - 1) % SESS_FIELDS) {
        rb_warn("session_list_failed", "Redis: %s", s_reply_error(rep));
        goto out;
    }
    seq = (uint64_t)rep->element[0]->integer;
    n = (rep->elements - 1) / SESS_FIELDS;
    list = calloc(n ? n : 1, sizeof(*list));
    if (!list) goto out;
    for (size_t i = 0; i < n; i++)
        if (!s_read_session(rep->element + 1 + i * SESS_FIELDS, &list[i])) goto out;
    rc = 0;
out:
    if (op->fn.snapshot) op->fn.snapshot(op->arg, rc, seq, rc == 0 ? list : NULL, rc == 0 ? n : 0);
    free(list);
    s_op_free(op);
}

int broker_store_list(broker_store_t *s, broker_list_by_t by, const char *key,
                      broker_snapshot_fn *fn, void *arg)
{
    static const char *const modes[] = {"all", "user", "ip"};
    if ((unsigned)by > BROKER_LIST_IP || (by != BROKER_LIST_ALL && !s_field_ok(key, true)))
        return -1;
    broker_op_t *op = s_op_new(s, arg);
    if (!op) return -1;
    op->fn.snapshot = fn;
    const char *av[] = {modes[by], by == BROKER_LIST_ALL ? "" : key};
    return s_eval(op, s->list, 2, av, s_on_list);
}

int broker_store_snapshot(broker_store_t *s, broker_snapshot_fn *fn, void *arg)
{
    return broker_store_list(s, BROKER_LIST_ALL, NULL, fn, arg);
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
