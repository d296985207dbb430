/* edge_users: the users file (format in edge_users.h). Kept as an array
 * sorted by name, searched by bisection: loading sorts once and finds
 * duplicates on the way, and a lookup touches log2(n) entries. */
#include "edge_users.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_passwd.h"

/* Longest name accepted; longer ones are almost surely a broken line. */
#define NAME_MAX_LEN 256

typedef struct {
    char *name;
    char *hash;
    char *groups;   /* comma list, "" for none */
    unsigned line;
} user_t;

struct edge_users {
    user_t *v;
    size_t n;
};

static int s_cmp(const void *a, const void *b)
{
    return strcmp(((const user_t *)a)->name, ((const user_t *)b)->name);
}

static bool s_b64ish(const char *s, size_t n)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/' || c == '='))
            return false;
    }
    return true;
}

/* A groups field: comma-separated names of [A-Za-z0-9._-], none empty. */
static const char *s_check_groups(const char *g)
{
    unsigned n = 0;
    size_t len = 0;
    for (const char *p = g;; p++) {
        if (*p == ',' || *p == '\0') {
            if (len == 0) return *g ? "empty group name" : NULL;
            if (++n > EDGE_USERS_MAX_GROUPS) return "too many groups";
            if (*p == '\0') return NULL;
            len = 0;
            continue;
        }
        char c = *p;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return "group names are letters, digits, '.', '_' and '-'";
        if (++len > EDGE_USERS_GROUP_MAX) return "group name too long";
    }
}

/* The shape of an entry, so that a broken line is reported at start with
 * its line number rather than as a failed logon later. rb_passwd_verify
 * still checks everything (including the cost ranges) when it runs. */
static const char *s_check_hash(const char *h)
{
    unsigned ln, r, p;
    int end = 0;
    if (strlen(h) >= RB_PASSWD_MAX) return "hash too long";
    if (sscanf(h, "$scrypt$ln=%u,r=%u,p=%u$%n", &ln, &r, &p, &end) != 3 || end == 0)
        return "hash is not $scrypt$ln=N,r=R,p=P$salt$key";
    if (!rb_passwd_cost_ok(ln, r, p)) return "hash cost out of range";
    const char *salt = h + end;
    const char *d = strchr(salt, '$');
    if (!d || !s_b64ish(salt, (size_t)(d - salt)) || !s_b64ish(d + 1, strlen(d + 1)))
        return "hash salt or key is not base64";
    return NULL;
}

static void s_free_users(user_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].groups);
        if (v[i].hash) {
            OPENSSL_cleanse(v[i].hash, strlen(v[i].hash));
            free(v[i].hash);
        }
    }
    free(v);
}

edge_users_t *edge_users_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    edge_users_t *u = calloc(1, sizeof *u);
    size_t cap = 0;
    char *line = NULL;
    size_t linecap = 0;
    unsigned lineno = 0;
    const char *why = NULL;
    ssize_t len;
    if (!u) {
        why = "out of memory";
        goto fail;
    }
    while ((len = getline(&line, &linecap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' ||
                           line[len - 1] == ' ' || line[len - 1] == '\t'))
            line[--len] = '\0';
        /* Even in a comment: a NUL at the start would pass for a blank line. */
        if (strlen(line) != (size_t)len) {
            why = "NUL byte in line";
            goto fail;
        }
        const char *s = line;
        while (*s == ' ' || *s == '\t')
            s++;
        if (*s == '\0' || *s == '#') continue;
        const char *colon = strchr(s, ':');
        if (!colon) {
            why = "expected name:$scrypt$...";
            goto fail;
        }
        size_t nlen = (size_t)(colon - s);
        if (nlen == 0) {
            why = "empty user name";
            goto fail;
        }
        if (nlen > NAME_MAX_LEN) {
            why = "user name too long";
            goto fail;
        }
        for (size_t i = 0; i < nlen; i++) {
            if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
                why = "control character in user name";
                goto fail;
            }
        }
        /* The hash ends at the next ':', if any; the groups follow. */
        char *hash_start = (char *)colon + 1;
        char *gcolon = strchr(hash_start, ':');
        const char *groups = "";
        if (gcolon) {
            *gcolon = '\0';
            groups = gcolon + 1;
            if ((why = s_check_groups(groups)) != NULL) goto fail;
        }
        if ((why = s_check_hash(hash_start)) != NULL) goto fail;
        if (u->n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            user_t *nv = realloc(u->v, ncap * sizeof *nv);
            if (!nv) {
                why = "out of memory";
                goto fail;
            }
            u->v = nv;
            cap = ncap;
        }
        user_t *e = &u->v[u->n];
        e->name = strndup(s, nlen);
        e->hash = strdup(hash_start);
        e->groups = strdup(groups);
        e->line = lineno;
        u->n++;
        if (!e->name || !e->hash || !e->groups) {
            why = "out of memory";
            goto fail;
        }
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        goto fail_reported;
    }
    if (u->n > 1) qsort(u->v, u->n, sizeof *u->v, s_cmp);
    for (size_t i = 1; i < u->n; i++) {
        if (strcmp(u->v[i - 1].name, u->v[i].name) == 0) {
            unsigned a = u->v[i - 1].line, b = u->v[i].line;
            snprintf(err, errlen, "%s:%u: user '%s' already defined on line %u", path,
                     a > b ? a : b, u->v[i].name, a < b ? a : b);
            goto fail_reported;
        }
    }
    if (line) OPENSSL_cleanse(line, linecap);
    free(line);
    fclose(f);
    return u;

fail:
    snprintf(err, errlen, "%s:%u: %s", path, lineno, why);
fail_reported:
    if (line) OPENSSL_cleanse(line, linecap);
    free(line);
    fclose(f);
    if (u) {
        s_free_users(u->v, u->n);
        free(u);
    }
    return NULL;
}

void edge_users_destroy(edge_users_t **up)
{
    if (!up || !*up) return;
    s_free_users((*up)->v, (*up)->n);
    free(*up);
    *up = NULL;
}

static const user_t *s_find(const edge_users_t *u, const char *name)
{
    if (!u || !name || u->n == 0) return NULL;
    user_t key = {.name = (char *)name};
    return bsearch(&key, u->v, u->n, sizeof *u->v, s_cmp);
}

const char *edge_users_lookup(const edge_users_t *u, const char *name)
{
    const user_t *e = s_find(u, name);
    return e ? e->hash : NULL;
}

const char *edge_users_groups(const edge_users_t *u, const char *name)
{
    const user_t *e = s_find(u, name);
    return e ? e->groups : NULL;
}

size_t edge_users_count(const edge_users_t *u) { return u ? u->n : 0; }
