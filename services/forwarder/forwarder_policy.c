/* forwarder_policy: parsing and evaluating the access policy (see
 * forwarder_policy.h).
 *
 * The file is operator input, but it may be edited by hand under pressure,
 * so the parser is strict and total: every byte is checked, every limit is
 * enforced before anything is allocated for it, and the first mistake fails
 * the whole load. Half a policy would be worse than none: a dropped deny
 * line silently widens access. */
#include "forwarder_policy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rb_cidr.h"

typedef enum { S_ANY, S_CIDR, S_DEVICE, S_USER, S_GROUP } s_kind_t;

typedef struct {
    s_kind_t kind;
    rb_cidr_t cidr; /* S_CIDR */
    char *name;     /* S_USER, S_GROUP; owned */
} s_match_t;

typedef struct {
    uint16_t lo, hi; /* inclusive */
} s_ports_t;

typedef struct {
    bool allow;
    s_match_t src, dst;
    s_ports_t *ports; /* owned; NULL (nports 0) means any port */
    size_t nports;
    int proto; /* POLICY_TCP, POLICY_UDP, or 0 for any */
    unsigned line;
} s_rule_t;

struct policy {
    s_rule_t *rules;
    size_t nrules, cap;
};

#define S_FIELDS_HINT "(expected: action source target ports [proto])"

static void s_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void s_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Text from the file as it may appear in an error (and so in a log): at most
 * S_QUOTE_SRC bytes of it, "..." when cut, and unprintable bytes, quotes and
 * backslashes as \xNN so that a hostile file cannot forge log lines. */
#define S_QUOTE_SRC 64
#define S_QUOTE_MAX (S_QUOTE_SRC * 4 + 4)

static const char *s_quote(const char *s, size_t n, char out[S_QUOTE_MAX])
{
    size_t w = 0;
    for (size_t i = 0; i < n && i < S_QUOTE_SRC; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '\'' || c == '\\')
            w += (size_t)snprintf(out + w, 5, "\\x%02x", c);
        else
            out[w++] = (char)c;
    }
    if (n > S_QUOTE_SRC) {
        memcpy(out + w, "...", 3);
        w += 3;
    }
    out[w] = '\0';
    return out;
}

static void s_rule_free(s_rule_t *r)
{
    free(r->src.name);
    free(r->dst.name);
    free(r->ports);
    memset(r, 0, sizeof *r);
}

/* A user or group name after "user:"/"group:"; field is the whole field,
 * for the message. */
static int s_name(const char *field, const char *name, char **out, char *why, size_t len)
{
    char q[S_QUOTE_MAX];
    size_t n = strlen(name);
    if (n == 0) {
        s_err(why, len, "empty name in '%s'", s_quote(field, strlen(field), q));
        return -1;
    }
    if (n > POLICY_NAME_MAX) {
        s_err(why, len, "name longer than %d bytes in '%s'", POLICY_NAME_MAX,
              s_quote(field, strlen(field), q));
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 0x20 || c == 0x7f) {
            s_err(why, len, "control character in name '%s'", s_quote(field, strlen(field), q));
            return -1;
        }
    }
    if (!(*out = strdup(name))) {
        s_err(why, len, "out of memory");
        return -1;
    }
    return 0;
}

/* user:NAME or group:NAME into m; 1 when field is neither, else 0 or -1. */
static int s_principal(const char *field, s_match_t *m, char *why, size_t len)
{
    if (strncmp(field, "user:", 5) == 0) {
        m->kind = S_USER;
        return s_name(field, field + 5, &m->name, why, len);
    }
    if (strncmp(field, "group:", 6) == 0) {
        m->kind = S_GROUP;
        return s_name(field, field + 6, &m->name, why, len);
    }
    return 1;
}

static int s_source(const char *f, s_match_t *m, char *why, size_t len)
{
    char q[S_QUOTE_MAX];
    if (strcmp(f, "*") == 0) {
        m->kind = S_ANY;
        return 0;
    }
    if (strcmp(f, "device") == 0) {
        m->kind = S_DEVICE;
        return 0;
    }
    int rc = s_principal(f, m, why, len);
    if (rc <= 0) return rc;
    if (rb_cidr_parse(f, &m->cidr) == 0) {
        m->kind = S_CIDR;
        return 0;
    }
    if (*f >= '0' && *f <= '9')
        s_err(why, len, "bad address or CIDR '%s'", s_quote(f, strlen(f), q));
    else
        s_err(why, len,
              "bad source '%s' (expected *, device, user:NAME, group:NAME or a.b.c.d[/n])",
              s_quote(f, strlen(f), q));
    return -1;
}

static int s_target(const char *f, s_match_t *m, char *why, size_t len)
{
    char q[S_QUOTE_MAX];
    if (strcmp(f, "*") == 0) {
        m->kind = S_ANY;
        return 0;
    }
    int rc = s_principal(f, m, why, len);
    if (rc <= 0) return rc;
    s_err(why, len, "bad target '%s' (expected *, user:NAME or group:NAME)",
          s_quote(f, strlen(f), q));
    return -1;
}

/* A port number of 1..5 digits at *s, 1..65535; moves *s past it. */
static int s_port(const char **s, const char *end, uint16_t *v)
{
    const char *p = *s;
    unsigned x = 0, digits = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        if (++digits > 5) return -1;
        x = x * 10 + (unsigned)(*p++ - '0');
    }
    if (digits == 0 || x < 1 || x > 65535) return -1;
    *v = (uint16_t)x;
    *s = p;
    return 0;
}

/* One item "N" or "N-M" of n bytes at s. */
static int s_port_item(const char *s, size_t n, s_ports_t *out, char *why, size_t len)
{
    char q[S_QUOTE_MAX];
    const char *end = s + n, *p = s;
    bool range = memchr(s, '-', n) != NULL;
    if (s_port(&p, end, &out->lo) != 0) goto bad;
    out->hi = out->lo;
    if (p < end) {
        if (*p != '-') goto bad;
        p++;
        if (s_port(&p, end, &out->hi) != 0 || p != end) goto bad;
        if (out->lo > out->hi) goto bad;
    }
    return 0;
bad:
    s_err(why, len, range ? "bad port range '%s'" : "bad port '%s'", s_quote(s, n, q));
    return -1;
}

static int s_ports(const char *f, s_rule_t *r, char *why, size_t len)
{
    char q[S_QUOTE_MAX];
    if (strcmp(f, "*") == 0) return 0;
    s_ports_t items[POLICY_MAX_PORT_ITEMS];
    size_t n = 0;
    const char *s = f;
    for (;;) {
        const char *comma = strchr(s, ',');
        size_t il = comma ? (size_t)(comma - s) : strlen(s);
        if (n == POLICY_MAX_PORT_ITEMS) {
            s_err(why, len, "more than %d port items in '%s'", POLICY_MAX_PORT_ITEMS,
                  s_quote(f, strlen(f), q));
            return -1;
        }
        if (il == 0) {
            s_err(why, len, "empty item in port list '%s'", s_quote(f, strlen(f), q));
            return -1;
        }
        if (s_port_item(s, il, &items[n], why, len) != 0) return -1;
        n++;
        if (!comma) break;
        s = comma + 1;
    }
    if (!(r->ports = malloc(n * sizeof *r->ports))) {
        s_err(why, len, "out of memory");
        return -1;
    }
    memcpy(r->ports, items, n * sizeof *r->ports);
    r->nports = n;
    return 0;
}

static int s_proto(const char *f, int *proto, char *why, size_t len)
{
    char q[S_QUOTE_MAX];
    if (strcmp(f, "tcp") == 0)
        *proto = POLICY_TCP;
    else if (strcmp(f, "udp") == 0)
        *proto = POLICY_UDP;
    else if (strcmp(f, "any") == 0)
        *proto = 0;
    else {
        s_err(why, len, "unknown proto '%s' (expected tcp, udp or any)", s_quote(f, strlen(f), q));
        return -1;
    }
    return 0;
}

/* Parses one NUL-terminated line (no line end) and appends its rule, if it
 * has one. On error writes only the reason into why. */
static int s_line(policy_t *p, char *line, unsigned lineno, char *why, size_t len)
{
    char q[S_QUOTE_MAX];
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    /* One more slot than a rule has, to tell "too many" from "enough". */
    char *f[6];
    size_t nf = 0;
    char *s = line;
    while (nf < 6) {
        s += strspn(s, " \t");
        if (!*s) break;
        f[nf++] = s;
        s += strcspn(s, " \t");
        if (*s) *s++ = '\0';
    }
    if (nf == 0) return 0;
    if (nf > 5) {
        s_err(why, len, "too many fields " S_FIELDS_HINT);
        return -1;
    }
    if (nf < 4) {
        s_err(why, len, "missing fields " S_FIELDS_HINT);
        return -1;
    }
    s_rule_t r = {.line = lineno};
    if (strcmp(f[0], "allow") == 0)
        r.allow = true;
    else if (strcmp(f[0], "deny") != 0) {
        s_err(why, len, "unknown action '%s' (expected allow or deny)",
              s_quote(f[0], strlen(f[0]), q));
        return -1;
    }
    if (s_source(f[1], &r.src, why, len) != 0 || s_target(f[2], &r.dst, why, len) != 0 ||
        s_ports(f[3], &r, why, len) != 0 || (nf == 5 && s_proto(f[4], &r.proto, why, len) != 0))
        goto fail;
    if (p->nrules == POLICY_MAX_RULES) {
        s_err(why, len, "more than %d rules", POLICY_MAX_RULES);
        goto fail;
    }
    if (p->nrules == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 16;
        if (ncap > POLICY_MAX_RULES) ncap = POLICY_MAX_RULES;
        s_rule_t *v = realloc(p->rules, ncap * sizeof *v);
        if (!v) {
            s_err(why, len, "out of memory");
            goto fail;
        }
        p->rules = v;
        p->cap = ncap;
    }
    p->rules[p->nrules++] = r;
    return 0;
fail:
    s_rule_free(&r);
    return -1;
}

policy_t *policy_parse(const char *text, size_t len, const char *name, char *err, size_t errlen)
{
    if (!name) name = "policy";
    if (len > POLICY_MAX_BYTES) {
        s_err(err, errlen, "%s: larger than %u bytes", name, POLICY_MAX_BYTES);
        return NULL;
    }
    if (!text && len > 0) {
        s_err(err, errlen, "%s: no text", name);
        return NULL;
    }
    policy_t *p = calloc(1, sizeof *p);
    if (!p) {
        s_err(err, errlen, "%s: out of memory", name);
        return NULL;
    }
    char buf[POLICY_MAX_LINE + 1], why[512];
    size_t off = 0;
    unsigned lineno = 0;
    while (off < len) {
        const char *start = text + off;
        const char *nl = memchr(start, '\n', len - off);
        size_t n = nl ? (size_t)(nl - start) : len - off;
        off += n + (nl ? 1 : 0);
        lineno++;
        if (n > 0 && start[n - 1] == '\r') n--;
        if (n > POLICY_MAX_LINE) {
            s_err(err, errlen, "%s:%u: line longer than %d bytes", name, lineno, POLICY_MAX_LINE);
            goto fail;
        }
        if (memchr(start, '\0', n)) {
            s_err(err, errlen, "%s:%u: NUL byte in line", name, lineno);
            goto fail;
        }
        memcpy(buf, start, n);
        buf[n] = '\0';
        if (s_line(p, buf, lineno, why, sizeof why) != 0) {
            s_err(err, errlen, "%s:%u: %s", name, lineno, why);
            goto fail;
        }
    }
    return p;
fail:
    policy_destroy(&p);
    return NULL;
}

policy_t *policy_load(const char *path, char *err, size_t errlen)
{
    if (!path) {
        s_err(err, errlen, "(no path): cannot read: no path given");
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        s_err(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    /* Read at most one byte past the limit: enough to tell it was passed,
     * whatever the file claims its size is (it may be a pipe, or growing). */
    policy_t *p = NULL;
    size_t cap = 16384, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        s_err(err, errlen, "%s: cannot read: out of memory", path);
        goto out;
    }
    for (;;) {
        if (n == cap) {
            size_t ncap = cap * 2 > POLICY_MAX_BYTES + 1 ? POLICY_MAX_BYTES + 1 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                s_err(err, errlen, "%s: cannot read: out of memory", path);
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0) {
            if (errno == EINTR) continue;
            s_err(err, errlen, "%s: cannot read: %s", path, strerror(errno));
            goto out;
        }
        if (got == 0) break;
        n += (size_t)got;
        if (n > POLICY_MAX_BYTES) {
            s_err(err, errlen, "%s: larger than %u bytes", path, POLICY_MAX_BYTES);
            goto out;
        }
    }
    p = policy_parse(buf, n, path, err, errlen);
out:
    free(buf);
    close(fd);
    return p;
}

void policy_destroy(policy_t **p)
{
    if (!p || !*p) return;
    for (size_t i = 0; i < (*p)->nrules; i++)
        s_rule_free(&(*p)->rules[i]);
    free((*p)->rules);
    free(*p);
    *p = NULL;
}

size_t policy_rule_count(const policy_t *p)
{
    return p ? p->nrules : 0;
}

/* Whether name is one of list's n entries (NULL entries never match). */
static bool s_in(const char *name, const char *const *list, size_t n)
{
    if (!list) return false;
    for (size_t i = 0; i < n; i++)
        if (list[i] && strcmp(list[i], name) == 0) return true;
    return false;
}

static bool s_src_matches(const s_match_t *m, const policy_query_t *q)
{
    switch (m->kind) {
    case S_ANY:
        return true;
    case S_CIDR:
        return rb_cidr_contains(&m->cidr, q->src_ip);
    case S_DEVICE:
        return q->src_user != NULL;
    case S_USER:
        return q->src_user && strcmp(q->src_user, m->name) == 0;
    case S_GROUP:
        return q->src_user && s_in(m->name, q->src_groups, q->n_src_groups);
    }
    return false;
}

static bool s_dst_matches(const s_match_t *m, const policy_query_t *q)
{
    switch (m->kind) {
    case S_ANY:
        return true;
    case S_USER:
        return q->dst_user && strcmp(q->dst_user, m->name) == 0;
    case S_GROUP:
        return s_in(m->name, q->dst_groups, q->n_dst_groups);
    case S_CIDR:
    case S_DEVICE:
        break; /* not targets; the parser never makes them */
    }
    return false;
}

static bool s_port_matches(const s_rule_t *r, uint16_t port)
{
    if (r->nports == 0) return true;
    for (size_t i = 0; i < r->nports; i++)
        if (port >= r->ports[i].lo && port <= r->ports[i].hi) return true;
    return false;
}

bool policy_allows(const policy_t *p, const policy_query_t *q, unsigned *line)
{
    if (line) *line = 0;
    if (!p || !q) return false;
    for (size_t i = 0; i < p->nrules; i++) {
        const s_rule_t *r = &p->rules[i];
        if (r->proto && r->proto != q->proto) continue;
        if (!s_port_matches(r, q->port)) continue;
        if (!s_src_matches(&r->src, q) || !s_dst_matches(&r->dst, q)) continue;
        if (line) *line = r->line;
        return r->allow;
    }
    return false;
}
