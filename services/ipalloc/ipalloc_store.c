/* ipalloc_store: leases of intranet addresses, kept in Redis.
 *
 * Redis model (every key starts with "rb:ip:"; addresses are dotted quads).
 * Each pool has four keys under its prefix P: "rb:ip:" for the default pool
 * (the keys of the single-pool version, unchanged), "rb:ip:g:<group>:" for a
 * group's pool:
 *   P pool                 SET   every address of the pool
 *   P pool:digest          STRING SHA-256 of the pool's addresses and
 *                                reservations (hex); when it differs from the
 *                                config's, the pool's sets are rebuilt
 *   P free                 SET   addresses that may be leased now
 *                                (= pool minus rb:ip:leased minus reserved)
 *   P reserved             HASH  reserved address -> its user (`static`)
 * Shared by all pools:
 *   rb:ip:leased           SET   addresses under lease (possibly outside
 *                                every pool after a pool change, until
 *                                released)
 *   rb:ip:lease:<ip>       HASH  session, user, since (Unix ms: when the
 *                                lease was made or last moved to another
 *                                session; the reconcile leaves leases younger
 *                                than its grace period alone)
 *   rb:ip:session:<sid>    STRING the session's address
 *   rb:ip:user:<user>      STRING the user's last address (sticky addresses;
 *                                kept after release, on purpose)
 *
 * Every change is one Lua script, so instances sharing a Redis can never
 * hand an address out twice. The scripts name the per-lease and per-pool
 * keys themselves (they are chosen inside the script), which a single Redis
 * allows; a Redis Cluster would need hash tags. */
#include "ipalloc_store.h"
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rb_log.h"

#define K_LEASED "rb:ip:leased"
/* "rb:ip:g:" + a group name + ":" */
#define IPALLOC_PREFIX_MAX (16 + IPALLOC_GROUP_MAX)
#define IPALLOC_KEY_MAX (IPALLOC_PREFIX_MAX + 16)

/* Users and session ids are short names; anything longer is a bug or abuse. */
#define IPALLOC_NAME_MAX 256
/* Bigger pools would take seconds to rebuild and megabytes per rebuild. */
#define IPALLOC_POOL_MAX (1u << 22)
/* Pools of one store; group_pools beyond this is not a plan but a mistake. */
#define IPALLOC_POOLS_MAX 256

/* KEYS: pool, free, leased, digest, reserved. ARGV: digest, nres, then nres
 * pairs ip, user, then the addresses. Rebuilds the pool's sets in one step;
 * SADD in batches that Lua's unpack() can take (its C stack holds ~8000
 * values). Returns {free count, "ip user holder"...} where each string is
 * a reserved address leased to another user (left alone: never steal a live
 * lease). */
static const char LUA_REBUILD[] =
    "redis.call('DEL', KEYS[1])\n"
    "local n = #ARGV\n"
    "local nres = tonumber(ARGV[2])\n"
    "local i = 3 + 2 * nres\n"
    "local first = i\n"
    "while i <= n do\n"
    "  local j = math.min(i + 999, n)\n"
    "  redis.call('SADD', KEYS[1], unpack(ARGV, i, j))\n"
    "  i = j + 1\n"
    "end\n"
    "redis.call('DEL', KEYS[2])\n"
    "if n >= first then redis.call('SDIFFSTORE', KEYS[2], KEYS[1], KEYS[3]) end\n"
    "redis.call('DEL', KEYS[5])\n"
    "local out = {0}\n"
    "for k = 0, nres - 1 do\n"
    "  local ip, user = ARGV[3 + 2 * k], ARGV[4 + 2 * k]\n"
    "  redis.call('HSET', KEYS[5], ip, user)\n"
    "  redis.call('SREM', KEYS[2], ip)\n"
    "  local holder = redis.call('HGET', 'rb:ip:lease:' .. ip, 'user')\n"
    "  if holder and holder ~= user then out[#out + 1] = ip .. ' ' .. user .. ' ' .. holder end\n"
    "end\n"
    "redis.call('SET', KEYS[4], ARGV[1])\n"
    "out[1] = redis.call('SCARD', KEYS[2])\n"
    "return out\n";

/* KEYS: the pool's free set, leased, the reserved address's pool's free set.
 * ARGV: user, session, now_ms, take_over session or "", reserved ip or "",
 * then every pool's prefix. Returns {1, ip, how, notes} or {0, "", "", notes}
 * when the pool is exhausted; notes is a space-separated list of
 * "takeover_missed", "reserved_busy", "own_released".
 *
 * A take-over comes before "the session holds one already": a broker that
 * lost a race may have leased a stand-in address for the new session and
 * then asks again for the old session's; the stand-in goes back (it is the
 * same session's, so nobody else is affected). A retry after a move finds
 * the old session empty and the address held: idempotent. */
static const char LUA_LEASE[] =
    "local user, sid, now, old, resv = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]\n"
    "local skey = 'rb:ip:session:' .. sid\n"
    "local notes = ''\n"
    "local function grant(ip, how)\n"
    "  redis.call('HSET', 'rb:ip:lease:' .. ip, 'session', sid, 'user', user, 'since', now)\n"
    "  redis.call('SET', skey, ip)\n"
    "  redis.call('SET', 'rb:ip:user:' .. user, ip)\n"
    "  redis.call('SADD', KEYS[2], ip)\n"
    "  return {1, ip, how, notes}\n"
    "end\n"
    "local cur = redis.call('GET', skey)\n"
    "if cur and redis.call('HGET', 'rb:ip:lease:' .. cur, 'session') ~= sid then\n"
    "  redis.call('DEL', skey)\n"
    "  cur = false\n"
    "end\n"
    /* The lease changes hands in this one step: never free in between. */
    "if old ~= '' then\n"
    "  local okey = 'rb:ip:session:' .. old\n"
    "  local oip = redis.call('GET', okey)\n"
    "  if oip and oip ~= cur then\n"
    "    local l = redis.call('HMGET', 'rb:ip:lease:' .. oip, 'session', 'user')\n"
    "    if l[1] == old and l[2] == user then\n"
    "      redis.call('DEL', okey)\n"
    "      if cur then\n"
    "        redis.call('DEL', 'rb:ip:lease:' .. cur)\n"
    "        redis.call('SREM', KEYS[2], cur)\n"
    "        for i = 6, #ARGV do\n"
    "          local p = ARGV[i]\n"
    "          if redis.call('SISMEMBER', p .. 'pool', cur) == 1 then\n"
    "            if redis.call('HEXISTS', p .. 'reserved', cur) == 0 then\n"
    "              redis.call('SADD', p .. 'free', cur)\n"
    "            end\n"
    "            break\n"
    "          end\n"
    "        end\n"
    "        notes = 'own_released'\n"
    "      end\n"
    "      return grant(oip, 'moved')\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if cur then return {1, cur, 'held', notes} end\n"
    "if old ~= '' then notes = 'takeover_missed' end\n"
    "if resv ~= '' then\n"
    "  if redis.call('EXISTS', 'rb:ip:lease:' .. resv) == 0 then\n"
    "    redis.call('SREM', KEYS[3], resv)\n"
    "    return grant(resv, 'reserved')\n"
    "  end\n"
    "  notes = notes .. ' reserved_busy'\n"
    "end\n"
    "local last = redis.call('GET', 'rb:ip:user:' .. user)\n"
    "if last and redis.call('SREM', KEYS[1], last) == 1 then return grant(last, 'sticky') end\n"
    "local ip = redis.call('SPOP', KEYS[1])\n"
    "if ip then return grant(ip, 'any') end\n"
    "return {0, '', '', notes}\n";

/* KEYS: leased. ARGV: ip (or ""), session, then every pool's prefix.
 * Returns 1 when the session held the address and it was released, else 0.
 * The address returns to its pool's free set unless it is reserved (its
 * user gets it next) or in no pool any more. */
static const char LUA_RELEASE[] =
    "local ip, sid = ARGV[1], ARGV[2]\n"
    "local skey = 'rb:ip:session:' .. sid\n"
    "if ip == '' then\n"
    "  ip = redis.call('GET', skey)\n"
    "  if not ip then return 0 end\n"
    "end\n"
    "local lkey = 'rb:ip:lease:' .. ip\n"
    "if redis.call('HGET', lkey, 'session') ~= sid then return 0 end\n"
    "redis.call('DEL', lkey)\n"
    "if redis.call('GET', skey) == ip then redis.call('DEL', skey) end\n"
    "redis.call('SREM', KEYS[1], ip)\n"
    "for i = 3, #ARGV do\n"
    "  local p = ARGV[i]\n"
    "  if redis.call('SISMEMBER', p .. 'pool', ip) == 1 then\n"
    "    if redis.call('HEXISTS', p .. 'reserved', ip) == 0 then\n"
    "      redis.call('SADD', p .. 'free', ip)\n"
    "    end\n"
    "    break\n"
    "  end\n"
    "end\n"
    "return 1\n";

/* KEYS: leased. ARGV: grace_ms, now_ms, npools, npools pool prefixes, then
 * triples session, ip, user: every live session with an address. For every
 * lease not made or moved within grace_ms whose session is not live with its
 * address: a live session of the same user with that address gets it (the
 * steps of a take-over: lease hash, session keys, sticky address; an address
 * that session held besides goes back), else it goes back as a release
 * would. Returns {moved, released, {action, ip, old session, new session,
 * user}...}, action "moved" or "released".
 *
 * Leases younger than the grace period are the ones a logon the broker has
 * not committed yet or a take-over on its way may hold: not judged from a
 * list that may predate them. One pass over rb:ip:leased costs Redis about
 * a millisecond per thousand leases. */
static const char LUA_RECONCILE[] =
    "local grace, now, np = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local live, holder = {}, {}\n"
    "for i = 4 + np, #ARGV - 2, 3 do\n"
    "  local sid, ip, user = ARGV[i], ARGV[i + 1], ARGV[i + 2]\n"
    "  live[sid] = ip\n"
    "  local k = ip .. '\\0' .. user\n"
    "  if not holder[k] then holder[k] = sid end\n"
    "end\n"
    "local function to_pool(ip)\n"
    "  redis.call('DEL', 'rb:ip:lease:' .. ip)\n"
    "  redis.call('SREM', KEYS[1], ip)\n"
    "  for i = 4, 3 + np do\n"
    "    local p = ARGV[i]\n"
    "    if redis.call('SISMEMBER', p .. 'pool', ip) == 1 then\n"
    "      if redis.call('HEXISTS', p .. 'reserved', ip) == 0 then\n"
    "        redis.call('SADD', p .. 'free', ip)\n"
    "      end\n"
    "      return\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local out = {0, 0}\n"
    "for _, ip in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    /* An earlier step of this pass may have released it already. */
    "  if redis.call('SISMEMBER', KEYS[1], ip) == 1 then\n"
    "    local lkey = 'rb:ip:lease:' .. ip\n"
    "    local l = redis.call('HMGET', lkey, 'session', 'user', 'since')\n"
    "    local sid, user, since = l[1] or '', l[2] or '', tonumber(l[3] or '0') or 0\n"
    "    if now - since >= grace and live[sid] ~= ip then\n"
    "      local okey = 'rb:ip:session:' .. sid\n"
    "      if redis.call('GET', okey) == ip then redis.call('DEL', okey) end\n"
    "      local new = user ~= '' and holder[ip .. '\\0' .. user]\n"
    "      if new then\n"
    "        local nkey = 'rb:ip:session:' .. new\n"
    "        local cur = redis.call('GET', nkey)\n"
    "        if cur and cur ~= ip and redis.call('HGET', 'rb:ip:lease:' .. cur, 'session') == new then\n"
    "          to_pool(cur)\n"
    "          out[2] = out[2] + 1\n"
    "          out[#out + 1] = {'released', cur, new, '', user}\n"
    "        end\n"
    "        redis.call('HSET', lkey, 'session', new, 'user', user, 'since', now)\n"
    "        redis.call('SET', nkey, ip)\n"
    "        redis.call('SET', 'rb:ip:user:' .. user, ip)\n"
    "        out[1] = out[1] + 1\n"
    "        out[#out + 1] = {'moved', ip, sid, new, user}\n"
    "      else\n"
    "        to_pool(ip)\n"
    "        out[2] = out[2] + 1\n"
    "        out[#out + 1] = {'released', ip, sid, '', user}\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

/* KEYS: leased. ARGV: every pool's prefix. Returns {leased, then per pool:
 * size, free, reservations, reserved and not leased, digest}. */
static const char LUA_STATS[] =
    "local out = {redis.call('SCARD', KEYS[1])}\n"
    "for i = 1, #ARGV do\n"
    "  local p = ARGV[i]\n"
    "  local idle = 0\n"
    "  local res = redis.call('HKEYS', p .. 'reserved')\n"
    "  for _, ip in ipairs(res) do\n"
    "    if redis.call('SISMEMBER', KEYS[1], ip) == 0 and\n"
    "       redis.call('SISMEMBER', p .. 'pool', ip) == 1 then idle = idle + 1 end\n"
    "  end\n"
    "  out[#out + 1] = redis.call('SCARD', p .. 'pool')\n"
    "  out[#out + 1] = redis.call('SCARD', p .. 'free')\n"
    "  out[#out + 1] = #res\n"
    "  out[#out + 1] = idle\n"
    "  out[#out + 1] = redis.call('GET', p .. 'pool:digest') or ''\n"
    "end\n"
    "return out\n";

typedef enum {
    OP_INIT_CHECK,
    OP_INIT_REBUILD,
    OP_LEASE,
    OP_RELEASE,
    OP_STATS,
    OP_RECONCILE
} op_kind_t;

typedef struct ipalloc_op {
    struct ipalloc_op *prev, *next;
    ipalloc_store_t *store;
    op_kind_t kind;
    union {
        ipalloc_init_fn *init;
        ipalloc_lease_fn *lease;
        ipalloc_release_fn *release;
        ipalloc_stats_fn *stats;
        ipalloc_reconcile_fn *reconcile;
    } fn;
    void *arg;
    /* OP_INIT_*: the rebuild arguments, kept between the two steps. */
    char digest[65];
    size_t pool; /* index in store->pools */
    char **argv; /* nargs strings, owned: digest, nres, reservations */
    size_t nargs;
    char *addrs; /* naddrs x 16 bytes of dotted quads */
    size_t naddrs;
} ipalloc_op_t;

typedef struct {
    char *name;
    char prefix[IPALLOC_PREFIX_MAX];
} s_pool_t;

struct ipalloc_store {
    rb_redis_t *redis;
    rb_redis_script_t *rebuild, *lease, *release, *stats, *reconcile;
    ipalloc_op_t *ops; /* in flight, so destroy can cancel them */
    s_pool_t *pools;   /* every pool initialised so far */
    size_t npools;
};

static ipalloc_op_t *s_op_new(ipalloc_store_t *s, op_kind_t kind, void *arg)
{
    ipalloc_op_t *op = calloc(1, sizeof(*op));
    if (!op) return NULL;
    op->store = s;
    op->kind = kind;
    op->arg = arg;
    op->next = s->ops;
    if (s->ops) s->ops->prev = op;
    s->ops = op;
    return op;
}

static void s_op_free(ipalloc_op_t *op)
{
    ipalloc_store_t *s = op->store;
    if (op->prev)
        op->prev->next = op->next;
    else
        s->ops = op->next;
    if (op->next) op->next->prev = op->prev;
    for (size_t i = 0; i < op->nargs; i++)
        free(op->argv[i]);
    free(op->argv);
    free(op->addrs);
    free(op);
}

static bool s_name_ok(const char *v)
{
    size_t n = v ? strlen(v) : 0;
    return n > 0 && n <= IPALLOC_NAME_MAX;
}

/* The key prefix of a pool; -1 for a name that cannot be one. */
static int s_prefix(const char *name, char out[IPALLOC_PREFIX_MAX])
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > IPALLOC_GROUP_MAX || strpbrk(name, ": \t{}")) return -1;
    if (strcmp(name, IPALLOC_DEFAULT_POOL) == 0)
        snprintf(out, IPALLOC_PREFIX_MAX, "rb:ip:");
    else
        snprintf(out, IPALLOC_PREFIX_MAX, "rb:ip:g:%s:", name);
    return 0;
}

static int s_pool_register(ipalloc_store_t *s, const char *name)
{
    for (size_t i = 0; i < s->npools; i++)
        if (strcmp(s->pools[i].name, name) == 0) return (int)i;
    char prefix[IPALLOC_PREFIX_MAX];
    if (s->npools == IPALLOC_POOLS_MAX || s_prefix(name, prefix) != 0) return -1;
    s_pool_t *v = realloc(s->pools, (s->npools + 1) * sizeof(*v));
    if (!v) return -1;
    s->pools = v;
    if (!(v[s->npools].name = strdup(name))) return -1;
    memcpy(v[s->npools].prefix, prefix, sizeof(prefix));
    return (int)s->npools++;
}

ipalloc_store_t *ipalloc_store_new(rb_redis_t *redis)
{
    ipalloc_store_t *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->redis = redis;
    s->rebuild = rb_redis_script(redis, LUA_REBUILD);
    s->lease = rb_redis_script(redis, LUA_LEASE);
    s->release = rb_redis_script(redis, LUA_RELEASE);
    s->stats = rb_redis_script(redis, LUA_STATS);
    s->reconcile = rb_redis_script(redis, LUA_RECONCILE);
    if (!s->rebuild || !s->lease || !s->release || !s->stats || !s->reconcile) {
        free(s);
        return NULL;
    }
    return s;
}

void ipalloc_store_destroy(ipalloc_store_t **sp)
{
    if (!sp || !*sp) return;
    ipalloc_store_t *s = *sp;
    *sp = NULL;
    while (s->ops) {
        rb_redis_cancel(s->redis, s->ops);
        s_op_free(s->ops);
    }
    for (size_t i = 0; i < s->npools; i++)
        free(s->pools[i].name);
    free(s->pools);
    /* The scripts belong to the rb_redis handle and live as long as it. */
    free(s);
}

int ipalloc_store_pool_digest(const rb_pool_t *pool, const ipalloc_reservation_t *res, size_t nres,
                              char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    uint64_t n = rb_pool_size(pool);
    int rc = -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) goto out;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t ip;
        if (rb_pool_nth(pool, i, &ip) != 0) goto out;
        unsigned char b[4] = {ip >> 24, ip >> 16, ip >> 8, ip};
        if (EVP_DigestUpdate(ctx, b, sizeof(b)) != 1) goto out;
    }
    /* Without reservations the digest is the single-pool version's, so an
     * upgrade does not rebuild the default pool for nothing. */
    for (size_t i = 0; i < nres; i++) {
        uint32_t ip = res[i].ip;
        unsigned char b[5] = {'=', ip >> 24, ip >> 16, ip >> 8, ip};
        if (EVP_DigestUpdate(ctx, b, sizeof(b)) != 1 ||
            EVP_DigestUpdate(ctx, res[i].user, strlen(res[i].user) + 1) != 1)
            goto out;
    }
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32) goto out;
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    rc = 0;
out:
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* ---- pool ---- */

static void s_on_init(void *arg, const redisReply *rep);

static int s_send_rebuild(ipalloc_op_t *op)
{
    ipalloc_store_t *s = op->store;
    const char *prefix = s->pools[op->pool].prefix;
    char kpool[IPALLOC_KEY_MAX], kfree[IPALLOC_KEY_MAX], kdigest[IPALLOC_KEY_MAX],
        kres[IPALLOC_KEY_MAX];
    snprintf(kpool, sizeof(kpool), "%spool", prefix);
    snprintf(kfree, sizeof(kfree), "%sfree", prefix);
    snprintf(kdigest, sizeof(kdigest), "%spool:digest", prefix);
    snprintf(kres, sizeof(kres), "%sreserved", prefix);
    int argc = (int)(op->nargs + op->naddrs) + 5;
    const char **av = calloc((size_t)argc, sizeof(*av));
    if (!av) return -1;
    av[0] = kpool;
    av[1] = kfree;
    av[2] = K_LEASED;
    av[3] = kdigest;
    av[4] = kres;
    for (size_t i = 0; i < op->nargs; i++)
        av[5 + i] = op->argv[i];
    for (size_t i = 0; i < op->naddrs; i++)
        av[5 + op->nargs + i] = op->addrs + 16 * i;
    op->kind = OP_INIT_REBUILD;
    int rc = rb_redis_eval(s->redis, s->rebuild, 5, argc, av, NULL, s_on_init, op);
    free(av);
    return rc;
}

static void s_on_init(void *arg, const redisReply *rep)
{
    ipalloc_op_t *op = arg;
    ipalloc_init_fn *fn = op->fn.init;
    const char *name = op->store->pools[op->pool].name;
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        rb_error("pool_init_failed", "pool %s: Redis: %s", name, rep ? rep->str : "no answer");
        fn(op->arg, -1, false);
        s_op_free(op);
        return;
    }
    if (op->kind == OP_INIT_CHECK) {
        if (rep->type == REDIS_REPLY_STRING && strcmp(rep->str, op->digest) == 0) {
            fn(op->arg, 0, false);
            s_op_free(op);
            return;
        }
        rb_info("pool_rebuild", "the stored pool %s differs from the config; rebuilding it", name);
        if (s_send_rebuild(op) != 0) {
            fn(op->arg, -1, false);
            s_op_free(op);
        }
        return;
    }
    long long nfree = -1;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER)
        nfree = rep->element[0]->integer;
    for (size_t i = 1; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        if (rep->element[i]->type != REDIS_REPLY_STRING) continue;
        /* "ip user holder": the config now reserves an address someone else
         * holds. Stealing a live lease would cut that session off. */
        rb_warn("reserved_address_leased",
                "pool %s: reserved address (ip, for, held by) %s; its user gets it once it is "
                "released",
                name, rep->element[i]->str);
    }
    rb_info("pool_rebuilt", "pool %s rebuilt, %lld addresses free", name, nfree);
    fn(op->arg, 0, true);
    s_op_free(op);
}

int ipalloc_store_init_pool(ipalloc_store_t *s, const char *name, const rb_pool_t *pool,
                            const ipalloc_reservation_t *res, size_t nres, ipalloc_init_fn *fn,
                            void *arg)
{
    uint64_t n = rb_pool_size(pool);
    if (n == 0 || n > IPALLOC_POOL_MAX) {
        rb_error("pool_too_large", "a pool must hold 1 to %u addresses, not %" PRIu64,
                 IPALLOC_POOL_MAX, n);
        return -1;
    }
    int idx = s_pool_register(s, name);
    if (idx < 0) {
        rb_error("bad_pool_name", "cannot use '%s' as a pool name", name ? name : "");
        return -1;
    }
    ipalloc_op_t *op = s_op_new(s, OP_INIT_CHECK, arg);
    if (!op) return -1;
    op->fn.init = fn;
    op->pool = (size_t)idx;
    op->argv = calloc(2 + 2 * nres, sizeof(*op->argv));
    op->naddrs = (size_t)n;
    op->addrs = malloc(op->naddrs * 16);
    if (!op->argv || !op->addrs || ipalloc_store_pool_digest(pool, res, nres, op->digest) != 0)
        goto fail;
    char num[24];
    snprintf(num, sizeof(num), "%zu", nres);
    if (!(op->argv[op->nargs++] = strdup(op->digest))) goto fail;
    if (!(op->argv[op->nargs++] = strdup(num))) goto fail;
    for (size_t i = 0; i < nres; i++) {
        char ip[16];
        if (!(op->argv[op->nargs++] = strdup(rb_ip_format(res[i].ip, ip)))) goto fail;
        if (!(op->argv[op->nargs++] = strdup(res[i].user))) goto fail;
    }
    for (size_t i = 0; i < op->naddrs; i++) {
        uint32_t ip;
        if (rb_pool_nth(pool, i, &ip) != 0) goto fail;
        rb_ip_format(ip, op->addrs + 16 * i);
    }
    char kdigest[IPALLOC_KEY_MAX];
    snprintf(kdigest, sizeof(kdigest), "%spool:digest", s->pools[idx].prefix);
    const char *av[] = {"GET", kdigest};
    if (rb_redis_command(s->redis, 2, av, NULL, s_on_init, op) != 0) goto fail;
    return 0;
fail:
    s_op_free(op);
    return -1;
}

/* ---- leases ---- */

static void s_on_lease(void *arg, const redisReply *rep)
{
    ipalloc_op_t *op = arg;
    ipalloc_lease_fn *fn = op->fn.lease;
    ipalloc_lease_t l = {.res = IPALLOC_LEASE_ERROR};
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 4 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER &&
        rep->element[1]->type == REDIS_REPLY_STRING &&
        rep->element[2]->type == REDIS_REPLY_STRING &&
        rep->element[3]->type == REDIS_REPLY_STRING) {
        l.res = rep->element[0]->integer == 1 ? IPALLOC_LEASE_OK : IPALLOC_LEASE_EXHAUSTED;
        l.ip = rep->element[1]->str;
        l.how = rep->element[2]->str;
        l.takeover_missed = strstr(rep->element[3]->str, "takeover_missed") != NULL;
        l.reserved_busy = strstr(rep->element[3]->str, "reserved_busy") != NULL;
        l.own_released = strstr(rep->element[3]->str, "own_released") != NULL;
    } else {
        rb_warn("lease_failed", "Redis: %s",
                rep ? (rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply")
                    : "no answer");
    }
    fn(op->arg, &l);
    s_op_free(op);
}

int ipalloc_store_lease(ipalloc_store_t *s, const ipalloc_lease_req_t *req, ipalloc_lease_fn *fn,
                        void *arg)
{
    char now[24], pfx[IPALLOC_PREFIX_MAX], rpfx[IPALLOC_PREFIX_MAX], resv[16] = "";
    char kfree[IPALLOC_KEY_MAX], krfree[IPALLOC_KEY_MAX];
    const char *old = req->take_over ? req->take_over : "";
    if (!s_name_ok(req->user) || !s_name_ok(req->session) ||
        (*old && (!s_name_ok(old) || strcmp(old, req->session) == 0)) ||
        s_prefix(req->pool, pfx) != 0)
        return -1;
    if (req->reserved_ip) {
        if (s_prefix(req->reserved_pool, rpfx) != 0) return -1;
        rb_ip_format(req->reserved_ip, resv);
    } else {
        memcpy(rpfx, pfx, sizeof(pfx));
    }
    snprintf(kfree, sizeof(kfree), "%sfree", pfx);
    snprintf(krfree, sizeof(krfree), "%sfree", rpfx);
    snprintf(now, sizeof(now), "%" PRIu64, rb_wall_ms());
    ipalloc_op_t *op = s_op_new(s, OP_LEASE, arg);
    if (!op) return -1;
    op->fn.lease = fn;
    const char **av = calloc(8 + s->npools, sizeof(*av));
    if (!av) {
        s_op_free(op);
        return -1;
    }
    const char *fixed[] = {kfree, K_LEASED, krfree, req->user, req->session, now, old, resv};
    memcpy(av, fixed, sizeof(fixed));
    for (size_t i = 0; i < s->npools; i++)
        av[8 + i] = s->pools[i].prefix;
    int rc = rb_redis_eval(s->redis, s->lease, 3, 8 + (int)s->npools, av, NULL, s_on_lease, op);
    free(av);
    if (rc != 0) s_op_free(op);
    return rc;
}

static void s_on_release(void *arg, const redisReply *rep)
{
    ipalloc_op_t *op = arg;
    ipalloc_release_fn *fn = op->fn.release;
    int found = -1;
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        found = rep->integer == 1;
    else
        rb_warn("release_failed", "Redis: %s",
                rep ? (rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply")
                    : "no answer");
    fn(op->arg, found);
    s_op_free(op);
}

int ipalloc_store_release(ipalloc_store_t *s, const char *ip, const char *session,
                          ipalloc_release_fn *fn, void *arg)
{
    uint32_t addr;
    if (!ip || !s_name_ok(session) || (*ip && rb_ip_parse(ip, &addr) != 0)) return -1;
    const char **av = calloc(3 + s->npools, sizeof(*av));
    if (!av) return -1;
    av[0] = K_LEASED;
    av[1] = ip;
    av[2] = session;
    for (size_t i = 0; i < s->npools; i++)
        av[3 + i] = s->pools[i].prefix;
    ipalloc_op_t *op = s_op_new(s, OP_RELEASE, arg);
    int rc = -1;
    if (op) {
        op->fn.release = fn;
        rc = rb_redis_eval(s->redis, s->release, 1, 3 + (int)s->npools, av, NULL, s_on_release, op);
        if (rc != 0) s_op_free(op);
    }
    free(av);
    return rc;
}

/* ---- stats ---- */

static bool s_int_ok(const redisReply *r)
{
    return r->type == REDIS_REPLY_INTEGER && r->integer >= 0;
}

static void s_on_stats(void *arg, const redisReply *rep)
{
    ipalloc_op_t *op = arg;
    ipalloc_store_t *s = op->store;
    ipalloc_stats_fn *fn = op->fn.stats;
    /* The pools registered when the script was sent: a pool registered
     * since then is simply not in this answer. */
    size_t n = op->pool;
    ipalloc_pool_stats_t *ps = calloc(n ? n : 1, sizeof(*ps));
    bool good = ps && rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 + 5 * n &&
                s_int_ok(rep->element[0]);
    for (size_t i = 0; good && i < n; i++) {
        redisReply **e = rep->element + 1 + 5 * i;
        good = s_int_ok(e[0]) && s_int_ok(e[1]) && s_int_ok(e[2]) && s_int_ok(e[3]) &&
               e[4]->type == REDIS_REPLY_STRING;
        if (!good) break;
        ps[i].name = s->pools[i].name;
        ps[i].size = (uint64_t)e[0]->integer;
        ps[i].free = (uint64_t)e[1]->integer;
        ps[i].reserved = (uint64_t)e[2]->integer;
        /* Every address of the pool is free, leased, or reserved and idle. */
        uint64_t idle = (uint64_t)e[3]->integer;
        ps[i].used = ps[i].size > ps[i].free + idle ? ps[i].size - ps[i].free - idle : 0;
        snprintf(ps[i].digest, sizeof(ps[i].digest), "%s", e[4]->str);
    }
    if (good) {
        ipalloc_stats_t st = {
            .leased = (uint64_t)rep->element[0]->integer, .npools = n, .pools = ps};
        fn(op->arg, &st);
    } else {
        fn(op->arg, NULL);
    }
    free(ps);
    s_op_free(op);
}

int ipalloc_store_stats(ipalloc_store_t *s, ipalloc_stats_fn *fn, void *arg)
{
    const char **av = calloc(1 + s->npools, sizeof(*av));
    if (!av) return -1;
    av[0] = K_LEASED;
    for (size_t i = 0; i < s->npools; i++)
        av[1 + i] = s->pools[i].prefix;
    ipalloc_op_t *op = s_op_new(s, OP_STATS, arg);
    int rc = -1;
    if (op) {
        op->fn.stats = fn;
        op->pool = s->npools;
        rc = rb_redis_eval(s->redis, s->stats, 1, 1 + (int)s->npools, av, NULL, s_on_stats, op);
        if (rc != 0) s_op_free(op);
    }
    free(av);
    return rc;
}

/* ---- reconcile ---- */

static void s_on_reconcile(void *arg, const redisReply *rep)
{
    ipalloc_op_t *op = arg;
    ipalloc_reconcile_fn *fn = op->fn.reconcile;
    bool good = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 &&
                s_int_ok(rep->element[0]) && s_int_ok(rep->element[1]);
    if (!good) {
        rb_warn("reconcile_failed", "Redis: %s",
                rep ? (rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply")
                    : "no answer");
        fn(op->arg, -1, 0, 0);
        s_op_free(op);
        return;
    }
    for (size_t i = 2; i < rep->elements; i++) {
        const redisReply *a = rep->element[i];
        if (a->type != REDIS_REPLY_ARRAY || a->elements != 5) continue;
        bool strs = true;
        for (size_t k = 0; k < 5; k++)
            strs = strs && a->element[k]->type == REDIS_REPLY_STRING;
        if (!strs) continue;
        if (strcmp(a->element[0]->str, "moved") == 0)
            rb_info("lease_reconciled", "moved %s of %s from ended session %s to live session %s",
                    a->element[1]->str, a->element[4]->str, a->element[2]->str,
                    a->element[3]->str);
        else
            rb_info("lease_reconciled", "released %s of %s: session %s is not live with it",
                    a->element[1]->str, a->element[4]->str,
                    a->element[2]->str[0] ? a->element[2]->str : "(none)");
    }
    fn(op->arg, 0, (uint64_t)rep->element[0]->integer, (uint64_t)rep->element[1]->integer);
    s_op_free(op);
}

int ipalloc_store_reconcile(ipalloc_store_t *s, const ipalloc_live_t *live, size_t n,
                            uint64_t grace_ms, uint64_t now_ms, ipalloc_reconcile_fn *fn, void *arg)
{
    char grace[24], now[24], np[24];
    uint32_t addr;
    if (n > IPALLOC_RECONCILE_MAX) return -1;
    for (size_t i = 0; i < n; i++)
        if (!s_name_ok(live[i].session) || !s_name_ok(live[i].user) || !live[i].ip ||
            rb_ip_parse(live[i].ip, &addr) != 0)
            return -1;
    snprintf(grace, sizeof(grace), "%" PRIu64, grace_ms);
    snprintf(now, sizeof(now), "%" PRIu64, now_ms);
    snprintf(np, sizeof(np), "%zu", s->npools);
    size_t argc = 4 + s->npools + 3 * n;
    const char **av = calloc(argc, sizeof(*av));
    if (!av) return -1;
    size_t k = 0;
    av[k++] = K_LEASED;
    av[k++] = grace;
    av[k++] = now;
    av[k++] = np;
    for (size_t i = 0; i < s->npools; i++)
        av[k++] = s->pools[i].prefix;
    for (size_t i = 0; i < n; i++) {
        av[k++] = live[i].session;
        av[k++] = live[i].ip;
        av[k++] = live[i].user;
    }
    ipalloc_op_t *op = s_op_new(s, OP_RECONCILE, arg);
    int rc = -1;
    if (op) {
        op->fn.reconcile = fn;
        rc = rb_redis_eval(s->redis, s->reconcile, 1, (int)argc, av, NULL, s_on_reconcile, op);
        if (rc != 0) s_op_free(op);
    }
    free(av);
    return rc;
}
