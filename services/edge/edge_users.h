/* edge_users: the users file, read once at start.
 *
 * Format: one user per line, "name:$scrypt$ln=..,r=..,p=..$salt$key" (what
 * `reachback-ctl passwd` prints), optionally followed by ":group1,group2"
 * (the groups go to the broker with the logon: address pools, policy);
 * lines starting with '#' and blank lines are ignored; trailing spaces and
 * CR are dropped. The name is everything before the first ':'; the hash
 * never holds a ':', so the next one starts the groups. A group name is
 * 1..64 characters of [A-Za-z0-9._-], at most EDGE_USERS_MAX_GROUPS. */
#ifndef EDGE_USERS_H
#define EDGE_USERS_H
#include <stddef.h>

#define EDGE_USERS_MAX_GROUPS 32
#define EDGE_USERS_GROUP_MAX 64

typedef struct edge_users edge_users_t;

/* Reads path. NULL with "FILE:LINE: reason" in err on a bad line, a
 * duplicate name or an unreadable file. */
edge_users_t *edge_users_load(const char *path, char *err, size_t errlen);
/* Accepts NULL; clears the pointer. Wipes the hashes. */
void edge_users_destroy(edge_users_t **u);
/* The hash entry of name, or NULL when there is no such user. The pointer
 * stays valid until destroy. */
const char *edge_users_lookup(const edge_users_t *u, const char *name);
/* The user's groups as a comma list ("" when none; NULL when there is no
 * such user). Valid until destroy. */
const char *edge_users_groups(const edge_users_t *u, const char *name);
size_t edge_users_count(const edge_users_t *u);

#endif
