/* rb_passwd: password hashes (scrypt via OpenSSL), in one text format:
 *   $scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt, base64>$<key, base64>
 * The default cost is ln=15 (N=32768), r=8, p=1; the lowest the format takes
 * is ln=1, for benchmark users only. */
#ifndef RB_PASSWD_H
#define RB_PASSWD_H
#include <stdbool.h>
#include <stddef.h>

#define RB_PASSWD_DEFAULT_LN 15
#define RB_PASSWD_MAX 160   /* longest encoded entry, with NUL */

/* Whether a cost is one we hash and verify with: each parameter in range,
 * at most 1 GiB of memory (128 * r * 2^ln) and r * p * 2^ln at most 2^24. */
bool rb_passwd_cost_ok(unsigned ln, unsigned r, unsigned p);
/* Hashes password with a fresh random salt. 0, or -1 on bad cost or error. */
int rb_passwd_hash(const char *password, unsigned ln, unsigned r, unsigned p,
                   char out[RB_PASSWD_MAX]);
/* Returns 1 when password matches entry, 0 when not, -1 when entry is
 * malformed or its cost is out of range. The comparison is constant-time. */
int rb_passwd_verify(const char *password, const char *entry);

#endif
