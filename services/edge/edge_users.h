/* edge_users: the users file, read once at start.
 *
 * Format: one user per line, "name:$scrypt$ln=..,r=..,p=..$salt$key" (what
 * `reachback-ctl passwd` prints); lines starting with '#' and blank lines
 * are ignored; trailing spaces and CR are dropped. The name is everything
 * before the first ':'. */
#ifndef EDGE_USERS_H
#define EDGE_USERS_H
#include <stddef.h>

typedef struct edge_users edge_users_t;

/* Reads path. NULL with "FILE:LINE: reason" in err on a bad line, a
 * duplicate name or an unreadable file. */
edge_users_t *edge_users_load(const char *path, char *err, size_t errlen);
/* Accepts NULL; clears the pointer. Wipes the hashes. */
void edge_users_destroy(edge_users_t **u);
/* The hash entry of name, or NULL when there is no such user. The pointer
 * stays valid until destroy. */
const char *edge_users_lookup(const edge_users_t *u, const char *name);
size_t edge_users_count(const edge_users_t *u);

#endif
