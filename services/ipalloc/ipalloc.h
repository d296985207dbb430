/* ipalloc: the IP allocator service object. It answers BrokerToIpalloc
 * requests (proto/broker_ipalloc.proto) on a ROUTER socket, keeps its state
 * in Redis through ipalloc_store, and reports readiness (Redis answers and
 * every pool is initialised) and per-pool usage to the status server. */
#ifndef IPALLOC_H
#define IPALLOC_H
#include <stdbool.h>
#include "rb_buf.h"
#include "rb_config.h"
#include "rb_loop.h"

typedef struct {
    char *log_level;
    char *status_listen;
    char *ipalloc_id;
    char *listen;
    char *pool;
    char *exclude;
    char *group_pools;
    char *statics; /* key "static" */
    bool spillover;
    char *no_address_groups;
    char *redis_host;
    long redis_port;
    char *redis_socket;
    char *redis_password;
    char *curve_secret_key;
    char *curve_allowed_keys;
} ipalloc_config_t;

/* The option table of reachback-ipalloc (rb_config). */
extern const rb_option_t ipalloc_options[];
/* rb_cli's cross-field check (cfg is an ipalloc_config_t): the pools,
 * reservations and groups parse and agree. 0 or -1 with err naming the key
 * and the bad entry. */
int ipalloc_config_validate(void *cfg, char *err, size_t errlen);

typedef struct ipalloc ipalloc_t;

/* Binds cfg->listen and starts connecting to Redis. cfg is borrowed and must
 * outlive the object. NULL on error (logged). */
ipalloc_t *ipalloc_new(rb_loop_t *loop, const ipalloc_config_t *cfg);
/* Accepts NULL; clears the pointer. Requests in progress are dropped. */
void ipalloc_destroy(ipalloc_t **ia);

/* rb_status hooks (arg is the ipalloc_t). */
bool ipalloc_ready(void *arg, rb_buf_t *why);
void ipalloc_status_info(void *arg, rb_buf_t *json);

#endif
