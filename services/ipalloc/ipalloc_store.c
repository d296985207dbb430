/* ipalloc_store: leases of intranet addresses, kept in Redis.
 *
 * Redis model (every key starts with "rb:ip:"; addresses are dotted quads):
 *   rb:ip:pool             SET   every address of the configured pool
 *   rb:ip:pool:digest      STRING SHA-256 of the pool's addresses (hex); when
 *                                it differs from the config's, the pool and
 *                                free sets are rebuilt
 *   rb:ip:free             SET   addresses that may be leased now
 *                                (= rb:ip:pool minus rb:ip:leased)
 *   rb:ip:leased           SET   addresses under lease (possibly outside the
 *                                pool after a pool change, until released)
 *   rb:ip:lease:<ip>       HASH  session, user, since (Unix ms)
 *   rb:ip:session:<sid>    STRING the session's address
 *   rb:ip:user:<user>      STRING the user's last address (sticky addresses;
 *                                kept after release, on purpose)
 *
 * Every change is one Lua script, so instances sharing a Redis can never
 * hand an address out twice. The scripts name the per-lease keys themselves
 * (they are chosen inside the script), which a single Redis allows; a Redis
 * Cluster would need hash tags. */
#include "ipalloc_store.h"
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rb_log.h"

#define K_POOL "rb:ip:pool"
#define K_DIGEST "rb:ip:pool:digest"
#define K_FREE "rb:ip:free"
#define K_LEASED "rb:ip:leased"

/* Users and session ids are short names; anything longer is a bug or abuse. */
#define IPALLOC_NAME_MAX 256
/* Bigger pools would take seconds to rebuild and megabytes per rebuild. */
#define IPALLOC_POOL_MAX (1u << 22)

/* KEYS: pool, free, leased, digest. ARGV: digest, address... Rebuilds the
 * pool and free sets in one step; SADD in batches that Lua's unpack() can
 * take (its C stack holds ~8000 values). */
static const char LUA_REBUILD[] =
    "redis.call('DEL', KEYS[1])\n"
    "local n = #ARGV\n"
    "local i = 2\n"
    "while i <= n do\n"
    "  local j = math.min(i + 999, n)\n"
    "  redis.call('SADD', KEYS[1], unpack(ARGV, i, j))\n"
    "  i = j + 1\n"
    "end\n"
    "redis.call('DEL', KEYS[2])\n"
    "if n >= 2 then redis.call('SDIFFSTORE', KEYS[2], KEYS[1], KEYS[3]) end\n"
    "redis.call('SET', KEYS[4], ARGV[1])\n"
    "return redis.call('SCARD', KEYS[2])\n";

/* KEYS: free, leased. ARGV: user, session, now_ms.
 * Returns {1, ip} or {0} when the pool is exhausted. */
static const char LUA_LEASE[] =
    "local user, sid, now = ARGV[1], ARGV[2], ARGV[3]\n"
    "local skey = 'rb:ip:session:' .. sid\n"
    "local cur = redis.call('GET', skey)\n"
    "if cur then\n"
    "  if redis.call('HGET', 'rb:ip:lease:' .. cur, 'session') == sid then\n"
    "    return {1, cur}\n"
    "  end\n"
    "  redis.call('DEL', skey)\n"
    "end\n"
    "local ukey = 'rb:ip:user:' .. user\n"
    "local ip = false\n"
    "local last = redis.call('GET', ukey)\n"
    "if last and redis.call('SREM', KEYS[1], last) == 1 then ip = last end\n"
    "if not ip then ip = redis.call('SPOP', KEYS[1]) end\n"
    "if not ip then return {0} end\n"
    "redis.call('HSET', 'rb:ip:lease:' .. ip, 'session', sid, 'user', user, 'since', now)\n"
    "redis.call('SET', skey, ip)\n"
    "redis.call('SET', ukey, ip)\n"
    "redis.call('SADD', KEYS[2], ip)\n"
    "return {1, ip}\n";

/* KEYS: free, leased, pool. ARGV: ip (or ""), session. Returns 1 when the
 * session held the address and it was released, else 0. */
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
    "redis.call('SREM', KEYS[2], ip)\n"
    "if redis.call('SISMEMBER', KEYS[3], ip) == 1 then redis.call('SADD', KEYS[1], ip) end\n"
    "return 1\n";

/* KEYS: pool, leased, free, digest. */
static const char LUA_STATS[] =
    "return {redis.call('SCARD', KEYS[1]), redis.call('SCARD', KEYS[2]),\n"
    "        redis.call('SCARD', KEYS[3]), redis.call('GET', KEYS[4]) or ''}\n";

typedef enum { OP_INIT_CHECK, OP_INIT_REBUILD, OP_LEASE, OP_RELEASE, OP_STATS } op_kind_t;

typedef struct ipalloc_op {
    struct ipalloc_op *prev, *next;
    ipalloc_store_t *store;
    op_kind_t kind;
    union {
        ipalloc_init_fn *init;
        ipalloc_lease_fn *lease;
        ipalloc_release_fn *release;
        ipalloc_stats_fn *stats;
    } fn;
    void *arg;
    /* OP_INIT_*: the rebuild arguments, kept between the two steps. */
    char digest[65];
    char *addrs; /* n x 16 bytes of dotted quads */
    size_t naddrs;
} ipalloc_op_t;

struct ipalloc_store {
    rb_redis_t *redis;
    rb_redis_script_t *rebuild, *lease, *release, *stats;
    ipalloc_op_t *ops; /* in flight, so destroy can cancel them */
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
    free(op->addrs);
    free(op);
}

static bool s_name_ok(const char *v)
{
    size_t n = v ? strlen(v) : 0;
    return n > 0 && n <= IPALLOC_NAME_MAX;
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
    if (!s->rebuild || !s->lease || !s->release || !s->stats) {
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
    /* The scripts belong to the rb_redis handle and live as long as it. */
    free(s);
}

int ipalloc_store_pool_digest(const rb_pool_t *pool, char out[65])
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
    int argc = (int)op->naddrs + 5;
    const char **av = calloc((size_t)argc, sizeof(*av));
    if (!av) return -1;
    av[0] = K_POOL;
    av[1] = K_FREE;
    av[2] = K_LEASED;
    av[3] = K_DIGEST;
    av[4] = op->digest;
    for (size_t i = 0; i < op->naddrs; i++)
        av[5 + i] = op->addrs + 16 * i;
    op->kind = OP_INIT_REBUILD;
    int rc = rb_redis_eval(s->redis, s->rebuild, 4, argc, av, NULL, s_on_init, op);
    free(av);
    return rc;
}

static void s_on_init(void *arg, const redisReply *rep)
{
    ipalloc_op_t *op = arg;
    ipalloc_init_fn *fn = op->fn.init;
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        rb_error("pool_init_failed", "Redis: %s", rep ? rep->str : "no answer");
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
        rb_info("pool_rebuild", "the stored pool differs from the config; rebuilding %zu addresses",
                op->naddrs);
        if (s_send_rebuild(op) != 0) {
            fn(op->arg, -1, false);
            s_op_free(op);
        }
        return;
    }
    rb_info("pool_rebuilt", "pool of %zu addresses, %lld free", op->naddrs,
            rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1LL);
    fn(op->arg, 0, true);
    s_op_free(op);
}

int ipalloc_store_init_pool(ipalloc_store_t *s, const rb_pool_t *pool, ipalloc_init_fn *fn,
                            void *arg)
{
    uint64_t n = rb_pool_size(pool);
    if (n == 0 || n > IPALLOC_POOL_MAX) {
        rb_error("pool_too_large", "a pool must hold 1 to %u addresses, not %" PRIu64,
                 IPALLOC_POOL_MAX, n);
        return -1;
    }
    ipalloc_op_t *op = s_op_new(s, OP_INIT_CHECK, arg);
    if (!op) return -1;
    op->fn.init = fn;
    op->naddrs = (size_t)n;
    op->addrs = malloc(op->naddrs * 16);
    if (!op->addrs || ipalloc_store_pool_digest(pool, op->digest) != 0) goto fail;
    for (size_t i = 0; i < op->naddrs; i++) {
        uint32_t ip;
        if (rb_pool_nth(pool, i, &ip) != 0) goto fail;
        rb_ip_format(ip, op->addrs + 16 * i);
    }
    const char *av[] = {"GET", K_DIGEST};
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
    ipalloc_lease_result_t res = IPALLOC_LEASE_ERROR;
    const char *ip = NULL;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER) {
        if (rep->element[0]->integer == 0) {
            res = IPALLOC_LEASE_EXHAUSTED;
        } else if (rep->elements == 2 && rep->element[1]->type == REDIS_REPLY_STRING) {
            res = IPALLOC_LEASE_OK;
            ip = rep->element[1]->str;
        }
    }
    if (res == IPALLOC_LEASE_ERROR)
        rb_warn("lease_failed", "Redis: %s",
                rep ? (rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply")
                    : "no answer");
    fn(op->arg, res, ip);
    s_op_free(op);
}

int ipalloc_store_lease(ipalloc_store_t *s, const char *user, const char *session,
                        ipalloc_lease_fn *fn, void *arg)
{
    char now[24];
    if (!s_name_ok(user) || !s_name_ok(session)) return -1;
    snprintf(now, sizeof(now), "%" PRIu64, rb_wall_ms());
    ipalloc_op_t *op = s_op_new(s, OP_LEASE, arg);
    if (!op) return -1;
    op->fn.lease = fn;
    const char *av[] = {K_FREE, K_LEASED, user, session, now};
    if (rb_redis_eval(s->redis, s->lease, 2, 5, av, NULL, s_on_lease, op) != 0) {
        s_op_free(op);
        return -1;
    }
    return 0;
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
    ipalloc_op_t *op = s_op_new(s, OP_RELEASE, arg);
    if (!op) return -1;
    op->fn.release = fn;
    const char *av[] = {K_FREE, K_LEASED, K_POOL, ip, session};
    if (rb_redis_eval(s->redis, s->release, 3, 5, av, NULL, s_on_release, op) != 0) {
        s_op_free(op);
        return -1;
    }
    return 0;
}

/* ---- stats ---- */

static void s_on_stats(void *arg, const redisReply *rep)
{
    ipalloc_op_t *op = arg;
    ipalloc_stats_fn *fn = op->fn.stats;
    ipalloc_stats_t st = {0};
    bool good = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 4;
    for (size_t i = 0; good && i < 3; i++)
        good = rep->element[i]->type == REDIS_REPLY_INTEGER && rep->element[i]->integer >= 0;
    if (good && rep->element[3]->type == REDIS_REPLY_STRING) {
        st.pool = (uint64_t)rep->element[0]->integer;
        st.leased = (uint64_t)rep->element[1]->integer;
        st.free = (uint64_t)rep->element[2]->integer;
        snprintf(st.digest, sizeof(st.digest), "%s", rep->element[3]->str);
        fn(op->arg, &st);
    } else {
        fn(op->arg, NULL);
    }
    s_op_free(op);
}

int ipalloc_store_stats(ipalloc_store_t *s, ipalloc_stats_fn *fn, void *arg)
{
    ipalloc_op_t *op = s_op_new(s, OP_STATS, arg);
    if (!op) return -1;
    op->fn.stats = fn;
    const char *av[] = {K_POOL, K_LEASED, K_FREE, K_DIGEST};
    if (rb_redis_eval(s->redis, s->stats, 4, 4, av, NULL, s_on_stats, op) != 0) {
        s_op_free(op);
        return -1;
    }
    return 0;
}
