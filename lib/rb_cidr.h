/* rb_cidr: IPv4 addresses, CIDR blocks, and address pools (several CIDRs
 * minus exclusions). Addresses are uint32_t in host byte order. */
#ifndef RB_CIDR_H
#define RB_CIDR_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t net;      /* host bits zero */
    unsigned prefix;   /* 0..32 */
} rb_cidr_t;

/* Strict dotted quad. 0 or -1. */
int rb_ip_parse(const char *s, uint32_t *ip);
/* out needs 16 bytes. Returns out. */
char *rb_ip_format(uint32_t ip, char out[16]);
/* "a.b.c.d/n" (host bits must be zero) or "a.b.c.d" (= /32). 0 or -1. */
int rb_cidr_parse(const char *s, rb_cidr_t *out);
bool rb_cidr_contains(const rb_cidr_t *c, uint32_t ip);
/* The in-addr.arpa name of ip, e.g. "4.3.2.1.in-addr.arpa". */
void rb_ip_ptr_name(uint32_t ip, char out[32]);
/* The smallest octet-aligned reverse zone covering c, e.g. 127.77.0.0/16 ->
 * "77.127.in-addr.arpa". */
void rb_cidr_reverse_zone(const rb_cidr_t *c, char out[32]);

typedef struct rb_pool rb_pool_t;

/* cidrs: comma-separated blocks; exclude: comma-separated addresses or
 * blocks (may be NULL or ""). Network and broadcast addresses of blocks wider
 * than /31 are never handed out. NULL with err set on a bad list or an empty
 * pool. */
rb_pool_t *rb_pool_new(const char *cidrs, const char *exclude, char *err, size_t errlen);
void rb_pool_destroy(rb_pool_t **pool);
/* Number of addresses the pool hands out. */
uint64_t rb_pool_size(const rb_pool_t *pool);
bool rb_pool_contains(const rb_pool_t *pool, uint32_t ip);
/* The n-th usable address (0-based), in ascending order. 0 or -1. */
int rb_pool_nth(const rb_pool_t *pool, uint64_t n, uint32_t *ip);
/* Number of blocks and the i-th block, for reverse zones. */
size_t rb_pool_blocks(const rb_pool_t *pool);
const rb_cidr_t *rb_pool_block(const rb_pool_t *pool, size_t i);

#endif
