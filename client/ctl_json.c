/* ctl_json: see ctl_json.h. A recursive-descent parser whose recursion is
 * bounded by CTL_JSON_MAX_DEPTH; every read goes through s_peek/s_take,
 * which check the cursor against the end first. */
#include "ctl_json.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    ctl_json_type_t type;
    int key;          /* offset of the member name in strs, or -1 */
    int str;          /* offset of the text in strs, or -1 */
    int first, last, next;
    size_t count;
} node_t;

struct ctl_json {
    node_t *nodes;
    size_t n, cap;
    char *strs;
    size_t slen, scap;
    int root;
};

typedef struct {
    const char *p, *end, *start;
    ctl_json_t *j;
    char *err;
    size_t errlen;
    bool failed;
} parser_t;

static int s_fail(parser_t *ps, const char *fmt, ...)
{
    if (!ps->failed) {
        char what[128];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        snprintf(ps->err, ps->errlen, "%s at byte %zu", what, (size_t)(ps->p - ps->start));
        ps->failed = true;
    }
    return -1;
}

static bool s_more(const parser_t *ps, size_t n) { return (size_t)(ps->end - ps->p) >= n; }

static void s_ws(parser_t *ps)
{
    while (s_more(ps, 1) && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int s_node(parser_t *ps, ctl_json_type_t type)
{
    ctl_json_t *j = ps->j;
    if (j->n >= CTL_JSON_MAX_NODES) return s_fail(ps, "more than %d values", CTL_JSON_MAX_NODES);
    if (j->n == j->cap) {
        size_t cap = j->cap ? j->cap * 2 : 64;
        node_t *v = realloc(j->nodes, cap * sizeof *v);
        if (!v) return s_fail(ps, "out of memory");
        j->nodes = v;
        j->cap = cap;
    }
    node_t *nd = &j->nodes[j->n];
    memset(nd, 0, sizeof *nd);
    nd->type = type;
    nd->key = nd->str = -1;
    nd->first = nd->last = nd->next = CTL_JSON_NONE;
    return (int)j->n++;
}

static int s_put(parser_t *ps, const char *s, size_t n)
{
    ctl_json_t *j = ps->j;
    if (j->slen + n + 1 > j->scap) {
        size_t cap = j->scap ? j->scap : 256;
        while (cap < j->slen + n + 1) cap *= 2;
        char *v = realloc(j->strs, cap);
        if (!v) return s_fail(ps, "out of memory");
        j->strs = v;
        j->scap = cap;
    }
    memcpy(j->strs + j->slen, s, n);
    j->slen += n;
    return 0;
}

static int s_hex4(parser_t *ps, unsigned *out)
{
    if (!s_more(ps, 4)) return s_fail(ps, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = ps->p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return s_fail(ps, "bad \\u escape");
    }
    ps->p += 4;
    *out = v;
    return 0;
}

static int s_utf8(parser_t *ps, unsigned cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xc0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xe0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        b[0] = (char)(0xf0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return s_put(ps, b, n);
}

/* A string at the cursor (on its opening quote); its decoded offset. */
static int s_string(parser_t *ps)
{
    ps->p++;   /* the quote */
    int off = (int)ps->j->slen;
    for (;;) {
        if (!s_more(ps, 1)) return s_fail(ps, "unterminated string");
        /* Copy the run up to the next quote, backslash or control byte. */
        const char *run = ps->p;
        while (s_more(ps, 1) && *ps->p != '"' && *ps->p != '\\' && (unsigned char)*ps->p >= 0x20)
            ps->p++;
        if (ps->p > run && s_put(ps, run, (size_t)(ps->p - run)) < 0) return -1;
        if (!s_more(ps, 1)) return s_fail(ps, "unterminated string");
        char c = *ps->p;
        if (c == '"') {
            ps->p++;
            if (s_put(ps, "", 1) < 0) return -1;
            return off;
        }
        if ((unsigned char)c < 0x20) return s_fail(ps, "control character in a string");
        ps->p++;   /* the backslash */
        if (!s_more(ps, 1)) return s_fail(ps, "truncated escape");
        char e = *ps->p++;
        const char *lit = NULL;
        switch (e) {
        case '"': lit = "\""; break;
        case '\\': lit = "\\"; break;
        case '/': lit = "/"; break;
        case 'b': lit = "\b"; break;
        case 'f': lit = "\f"; break;
        case 'n': lit = "\n"; break;
        case 'r': lit = "\r"; break;
        case 't': lit = "\t"; break;
        case 'u': {
            unsigned cp;
            if (s_hex4(ps, &cp) < 0) return -1;
            if (cp >= 0xdc00 && cp <= 0xdfff) return s_fail(ps, "lone low surrogate");
            if (cp >= 0xd800 && cp <= 0xdbff) {
                unsigned lo;
                if (!s_more(ps, 2) || ps->p[0] != '\\' || ps->p[1] != 'u')
                    return s_fail(ps, "lone high surrogate");
                ps->p += 2;
                if (s_hex4(ps, &lo) < 0) return -1;
                if (lo < 0xdc00 || lo > 0xdfff) return s_fail(ps, "bad surrogate pair");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (s_utf8(ps, cp) < 0) return -1;
            continue;
        }
        default: return s_fail(ps, "bad escape");
        }
        if (s_put(ps, lit, 1) < 0) return -1;
    }
}

static bool s_digit(const parser_t *ps) { return s_more(ps, 1) && *ps->p >= '0' && *ps->p <= '9'; }

/* RFC 8259 number grammar; kept as written. */
static int s_number(parser_t *ps)
{
    const char *start = ps->p;
    if (s_more(ps, 1) && *ps->p == '-') ps->p++;
    if (!s_digit(ps)) return s_fail(ps, "bad number");
    if (*ps->p == '0') ps->p++;
    else while (s_digit(ps)) ps->p++;
    if (s_more(ps, 1) && *ps->p == '.') {
        ps->p++;
        if (!s_digit(ps)) return s_fail(ps, "bad number");
        while (s_digit(ps)) ps->p++;
    }
    if (s_more(ps, 1) && (*ps->p == 'e' || *ps->p == 'E')) {
        ps->p++;
        if (s_more(ps, 1) && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (!s_digit(ps)) return s_fail(ps, "bad number");
        while (s_digit(ps)) ps->p++;
    }
    int off = (int)ps->j->slen;
    if (s_put(ps, start, (size_t)(ps->p - start)) < 0 || s_put(ps, "", 1) < 0) return -1;
    return off;
}

static void s_link(ctl_json_t *j, int parent, int child)
{
    node_t *p = &j->nodes[parent];
    if (p->last == CTL_JSON_NONE) p->first = child;
    else j->nodes[p->last].next = child;
    p->last = child;
    p->count++;
}

static int s_value(parser_t *ps, int depth);

static int s_container(parser_t *ps, int depth, bool object)
{
    if (depth >= CTL_JSON_MAX_DEPTH) return s_fail(ps, "nested deeper than %d", CTL_JSON_MAX_DEPTH);
    int self = s_node(ps, object ? CTL_JSON_OBJECT : CTL_JSON_ARRAY);
    if (self < 0) return -1;
    ps->p++;   /* [ or { */
    s_ws(ps);
    char close = object ? '}' : ']';
    if (s_more(ps, 1) && *ps->p == close) {
        ps->p++;
        return self;
    }
    for (;;) {
        int key = -1;
        if (object) {
            s_ws(ps);
            if (!s_more(ps, 1) || *ps->p != '"') return s_fail(ps, "expected a member name");
            if ((key = s_string(ps)) < 0) return -1;
            s_ws(ps);
            if (!s_more(ps, 1) || *ps->p != ':') return s_fail(ps, "expected ':'");
            ps->p++;
        }
        int child = s_value(ps, depth + 1);
        if (child < 0) return -1;
        ps->j->nodes[child].key = key;
        s_link(ps->j, self, child);
        s_ws(ps);
        if (!s_more(ps, 1)) return s_fail(ps, "truncated %s", object ? "object" : "array");
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            return self;
        }
        return s_fail(ps, "expected ',' or '%c'", close);
    }
}

static int s_literal(parser_t *ps, const char *word, ctl_json_type_t type)
{
    size_t n = strlen(word);
    if (!s_more(ps, n) || memcmp(ps->p, word, n) != 0) return s_fail(ps, "unexpected character");
    ps->p += n;
    int v = s_node(ps, type);
    if (v < 0) return -1;
    int off = (int)ps->j->slen;
    if (s_put(ps, word, n + 1) < 0) return -1;
    ps->j->nodes[v].str = off;
    return v;
}

static int s_value(parser_t *ps, int depth)
{
    s_ws(ps);
    if (!s_more(ps, 1)) return s_fail(ps, "truncated: a value is missing");
    char c = *ps->p;
    if (c == '{' || c == '[') return s_container(ps, depth, c == '{');
    if (c == '"' || c == '-' || (c >= '0' && c <= '9')) {
        int v = s_node(ps, c == '"' ? CTL_JSON_STRING : CTL_JSON_NUMBER);
        if (v < 0) return -1;
        int off = c == '"' ? s_string(ps) : s_number(ps);
        if (off < 0) return -1;
        ps->j->nodes[v].str = off;
        return v;
    }
    if (c == 't') return s_literal(ps, "true", CTL_JSON_TRUE);
    if (c == 'f') return s_literal(ps, "false", CTL_JSON_FALSE);
    if (c == 'n') return s_literal(ps, "null", CTL_JSON_NULL);
    return s_fail(ps, "unexpected character");
}

ctl_json_t *ctl_json_parse(const char *text, size_t len, char *err, size_t errlen)
{
    char dummy[1];
    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    if (!text) {   /* no body at all: parse as the empty document (an error) */
        text = "";
        len = 0;
    }
    if (len > CTL_JSON_MAX_INPUT) {
        snprintf(err, errlen, "document larger than %u bytes", CTL_JSON_MAX_INPUT);
        return NULL;
    }
    ctl_json_t *j = calloc(1, sizeof *j);
    if (!j) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    parser_t ps = {text, text + len, text, j, err, errlen, false};
    j->root = s_value(&ps, 0);
    if (j->root >= 0) {
        s_ws(&ps);
        if (s_more(&ps, 1)) s_fail(&ps, "trailing bytes after the document");
    }
    if (ps.failed || j->root < 0) {
        ctl_json_free(&j);
        return NULL;
    }
    return j;
}

void ctl_json_free(ctl_json_t **jp)
{
    if (!jp || !*jp) return;
    free((*jp)->nodes);
    free((*jp)->strs);
    free(*jp);
    *jp = NULL;
}

static const node_t *s_at(const ctl_json_t *j, int v)
{
    return j && v >= 0 && (size_t)v < j->n ? &j->nodes[v] : NULL;
}

int ctl_json_root(const ctl_json_t *j) { return j ? j->root : CTL_JSON_NONE; }

ctl_json_type_t ctl_json_type(const ctl_json_t *j, int v)
{
    const node_t *n = s_at(j, v);
    return n ? n->type : CTL_JSON_NULL;
}

size_t ctl_json_count(const ctl_json_t *j, int v)
{
    const node_t *n = s_at(j, v);
    return n ? n->count : 0;
}

int ctl_json_child(const ctl_json_t *j, int v)
{
    const node_t *n = s_at(j, v);
    return n ? n->first : CTL_JSON_NONE;
}

int ctl_json_next(const ctl_json_t *j, int v)
{
    const node_t *n = s_at(j, v);
    return n ? n->next : CTL_JSON_NONE;
}

const char *ctl_json_key(const ctl_json_t *j, int v)
{
    const node_t *n = s_at(j, v);
    return n && n->key >= 0 ? j->strs + n->key : NULL;
}

int ctl_json_get(const ctl_json_t *j, int v, const char *key)
{
    if (ctl_json_type(j, v) != CTL_JSON_OBJECT) return CTL_JSON_NONE;
    for (int c = ctl_json_child(j, v); c != CTL_JSON_NONE; c = ctl_json_next(j, c))
        if (strcmp(ctl_json_key(j, c), key) == 0) return c;
    return CTL_JSON_NONE;
}

const char *ctl_json_str(const ctl_json_t *j, int v)
{
    const node_t *n = s_at(j, v);
    return n && n->str >= 0 ? j->strs + n->str : "";
}

const char *ctl_json_field(const ctl_json_t *j, int v, const char *key)
{
    return ctl_json_str(j, ctl_json_get(j, v, key));
}
