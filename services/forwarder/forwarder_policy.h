/* forwarder_policy: the forwarder's access policy. It decides whether a
 * connection to a user's intranet address may pass, from where it comes
 * (an address, or a logged-on device of some user), whom it goes to, the
 * port and the protocol. Parsed once from a file, read-only afterwards.
 *
 * File format: one rule per line; '#' starts a comment that runs to the end
 * of the line (so names cannot contain '#'); blank lines are ignored; fields
 * are separated by spaces or tabs; "\n" and "\r\n" line ends are accepted.
 *
 *   # action  source           target           ports          proto
 *   allow     127.0.0.0/8      *                *              any
 *   allow     10.0.0.0/8       group:helpdesk   22,5900-5910   tcp
 *   deny      user:bob         user:alice       *              any
 *   allow     group:staff      group:staff      1024-65535     tcp
 *
 *   action  allow | deny
 *   source  *            anything
 *           a.b.c.d/n    the connection's source address is in the block
 *           a.b.c.d      the source address is exactly this one
 *           user:NAME    a logged-on device of user NAME (device-to-device)
 *           group:NAME   a logged-on device of a user in group NAME
 *           device       any logged-on device
 *   target  *, user:NAME or group:NAME: the user whose intranet address is
 *           being connected to (group: that user is in group NAME)
 *   ports   * or a comma list of N or N-M (1..65535, N <= M), at most 64 items
 *   proto   optional: tcp, udp or any (default any)
 *
 * Keywords are lower case. Names are compared exactly (case-sensitive),
 * 1..256 bytes, no control characters. Rules are evaluated in file order, the
 * first match decides, and no match denies (default deny); an empty policy
 * denies everything.
 *
 * Limits: a line at most 4096 bytes (without its line end), at most 10000
 * rules, a file at most 4 MiB. Anything malformed or over a limit fails the
 * whole load with err "NAME:LINE: reason", e.g. "policy.conf:3: bad port
 * range '90-80'" (the size limit and read errors have no line: "NAME:
 * reason"). Text from the file quoted in err is cut short and has its
 * unprintable bytes escaped, so err is safe to log. */
#ifndef FORWARDER_POLICY_H
#define FORWARDER_POLICY_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define POLICY_MAX_LINE 4096
#define POLICY_MAX_RULES 10000
#define POLICY_MAX_BYTES (4u << 20)
#define POLICY_MAX_PORT_ITEMS 64
#define POLICY_NAME_MAX 256

enum { POLICY_TCP = 1, POLICY_UDP = 2 };

typedef struct policy policy_t;

/* One connection to decide on. Every pointer is borrowed for the call. */
typedef struct {
    uint32_t src_ip;               /* host byte order */
    const char *src_user;          /* NULL unless the source is a logged-on device */
    const char *const *src_groups; /* the source user's groups (may be NULL if n is 0) */
    size_t n_src_groups;
    const char *dst_user;          /* never NULL */
    const char *const *dst_groups; /* the target user's groups */
    size_t n_dst_groups;
    uint16_t port;
    int proto; /* POLICY_TCP or POLICY_UDP */
} policy_query_t;

/* Parses text (len bytes, need not be NUL-terminated; NULL is allowed when
 * len is 0, giving an empty policy). name is used in error messages (NULL
 * reads "policy"). NULL on error with err set ("NAME:LINE: reason"); err may
 * be NULL. Never aborts on any input. */
policy_t *policy_parse(const char *text, size_t len, const char *name, char *err, size_t errlen);
/* Reads and parses a file of at most POLICY_MAX_BYTES. NULL on error with err
 * set ("PATH: cannot read: ..." or "PATH:LINE: ..."). */
policy_t *policy_load(const char *path, char *err, size_t errlen);
/* Accepts NULL; clears the pointer. */
void policy_destroy(policy_t **p);

/* Number of rules; 0 for NULL. */
size_t policy_rule_count(const policy_t *p);

/* True when the first matching rule allows. *line gets that rule's line
 * number in the file, or 0 when no rule matched (default deny); line may be
 * NULL. A user:, group: or device source matches only when q->src_user is
 * not NULL; a CIDR source matches on q->src_ip whatever src_user is; * matches
 * everything. A rule's proto "any" matches any q->proto. A NULL p or q
 * denies. */
bool policy_allows(const policy_t *p, const policy_query_t *q, unsigned *line);

#endif
