/* rb_label: user name -> DNS label (DESIGN §4, docs/operations.md).
 * The domain part is dropped ("CORP\alice", "alice@corp" -> "alice"), the
 * rest lower-cased, every character outside [a-z0-9-] becomes '-', leading
 * and trailing '-' are trimmed, and the label is cut to 63 characters. A name
 * that leaves nothing becomes "user-<hash>". A label can never contain a dot,
 * so a user name can never inject another name into the zone. */
#ifndef RB_LABEL_H
#define RB_LABEL_H
#include <stddef.h>

#define RB_LABEL_MAX 63

/* Writes the label of user into out. 0, or -1 when user is NULL. */
int rb_label_from_user(const char *user, char out[RB_LABEL_MAX + 1]);
/* The label used when base is already held by another user:
 * base cut so that "<base>-<8 hex of SHA-256(user)>" fits in 63. */
int rb_label_disambiguate(const char *base, const char *user, char out[RB_LABEL_MAX + 1]);

#endif
