/* rb_label: the DNS label of a user name (rules in rb_label.h). Every
 * output byte is from [a-z0-9-], so whatever a directory lets people call
 * themselves, the DNS service only ever publishes one label per user. */
#include "rb_label.h"

#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define HASH_HEX 8

/* The first 8 hex digits of SHA-256(user): stable across restarts and
 * instances, so every service derives the same label without talking. */
static int s_hash8(const char *user, char out[HASH_HEX + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(user, strlen(user), md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen < 4)
        return -1;
    snprintf(out, HASH_HEX + 1, "%02x%02x%02x%02x", md[0], md[1], md[2], md[3]);
    return 0;
}

/* Cuts trailing '-' of s[0..n) and returns the new length. */
static size_t s_trim_tail(const char *s, size_t n)
{
    while (n > 0 && s[n - 1] == '-') n--;
    return n;
}

int rb_label_from_user(const char *user, char out[RB_LABEL_MAX + 1])
{
    if (!user) return -1;
    /* "DOMAIN\user" (down-level logon name): the user is after the last
     * backslash. "user@domain" (UPN): the user is before the first '@'. */
    const char *start = strrchr(user, '\\');
    start = start ? start + 1 : user;
    const char *at = strchr(start, '@');
    size_t n = at ? (size_t)(at - start) : strlen(start);

    size_t len = 0;
    for (size_t i = 0; i < n && len < RB_LABEL_MAX; i++) {
        unsigned char ch = (unsigned char)start[i];
        if (ch >= 'A' && ch <= 'Z') ch = (unsigned char)(ch - 'A' + 'a');
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9'))) ch = '-';
        /* Leading '-' are dropped before they take room in the 63. */
        if (ch == '-' && len == 0) continue;
        out[len++] = (char)ch;
    }
    /* Trimmed after the cut as well: cutting can expose a '-'. */
    len = s_trim_tail(out, len);
    out[len] = '\0';
    if (len > 0) return 0;

    char h[HASH_HEX + 1];
    if (s_hash8(user, h) != 0) return -1;
    snprintf(out, RB_LABEL_MAX + 1, "user-%s", h);
    return 0;
}

int rb_label_disambiguate(const char *base, const char *user, char out[RB_LABEL_MAX + 1])
{
    if (!base || !user) return -1;
    char h[HASH_HEX + 1];
    if (s_hash8(user, h) != 0) return -1;
    size_t keep = strnlen(base, RB_LABEL_MAX - 1 - HASH_HEX);
    keep = s_trim_tail(base, keep);
    /* A base that leaves nothing would give a label starting with '-'. */
    if (keep == 0) {
        snprintf(out, RB_LABEL_MAX + 1, "user-%s", h);
        return 0;
    }
    snprintf(out, RB_LABEL_MAX + 1, "%.*s-%s", (int)keep, base, h);
    return 0;
}
