/* rb_config: option-table driven configuration (see rb_config.h). */
#include "rb_config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_LINE 4096

static void s_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void s_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const rb_option_t *s_find(const rb_option_t *opts, const char *key)
{
    for (const rb_option_t *o = opts; o->key; o++)
        if (strcmp(o->key, key) == 0) return o;
    return NULL;
}

/* Sets o from text; on error writes only the reason into why. */
static int s_assign(const rb_option_t *o, void *cfg, const char *value, char *why, size_t len)
{
    char *field = (char *)cfg + o->offset;
    switch (o->type) {
    case RB_OPT_STRING: {
        char *copy = strdup(value);
        if (!copy) {
            s_err(why, len, "out of memory");
            return -1;
        }
        free(*(char **)field);
        *(char **)field = copy;
        return 0;
    }
    case RB_OPT_INT: {
        errno = 0;
        char *end;
        long v = strtol(value, &end, 10);
        if (!*value || *end || errno) {
            s_err(why, len, "'%s' is not an integer", value);
            return -1;
        }
        if (v < o->min || v > o->max) {
            s_err(why, len, "%ld is out of range %ld..%ld", v, o->min, o->max);
            return -1;
        }
        *(long *)field = v;
        return 0;
    }
    case RB_OPT_BOOL:
        if (!strcasecmp(value, "yes") || !strcasecmp(value, "true") || !strcmp(value, "1") ||
            !strcasecmp(value, "on")) {
            *(bool *)field = true;
        } else if (!strcasecmp(value, "no") || !strcasecmp(value, "false") ||
                   !strcmp(value, "0") || !strcasecmp(value, "off")) {
            *(bool *)field = false;
        } else {
            s_err(why, len, "'%s' is not yes/no", value);
            return -1;
        }
        return 0;
    }
    s_err(why, len, "unknown option type");
    return -1;
}

int rb_config_set(const rb_option_t *opts, void *cfg, const char *key, const char *value,
                  char *err, size_t errlen)
{
    const rb_option_t *o = s_find(opts, key);
    if (!o) {
        s_err(err, errlen, "key '%s': unknown key", key);
        return -1;
    }
    char why[256];
    if (s_assign(o, cfg, value, why, sizeof why) < 0) {
        s_err(err, errlen, "key '%s': %s", key, why);
        return -1;
    }
    return 0;
}

static char *s_trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

/* Reads one line without its newline into buf (terminated; *len bytes,
 * which may include NULs). 0 for a line, -1 at the end of the file, 1 when
 * the line does not fit in cap - 1 bytes: a file without newlines is not
 * read into memory whole. */
static int s_read_line(FILE *f, char *buf, size_t cap, size_t *len)
{
    size_t n = 0;
    int c;
    while ((c = getc(f)) != EOF && c != '\n') {
        if (n + 1 == cap) return 1;
        buf[n++] = (char)c;
    }
    if (c == EOF && n == 0) return -1;
    buf[n] = '\0';
    *len = n;
    return 0;
}

static int s_load_file(const rb_option_t *opts, void *cfg, const char *path, bool *seen,
                       char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        s_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char line[MAX_LINE + 1];
    size_t n;
    int lineno = 0, rc = 0, r;
    while ((r = s_read_line(f, line, sizeof line, &n)) >= 0) {
        lineno++;
        if (r == 1) {
            s_err(err, errlen, "%s:%d: line longer than %d bytes", path, lineno, MAX_LINE);
            rc = -1;
            break;
        }
        /* A NUL would silently cut the line short: the rest of it unread. */
        if (memchr(line, '\0', n)) {
            s_err(err, errlen, "%s:%d: NUL byte in line", path, lineno);
            rc = -1;
            break;
        }
        char *s = s_trim(line);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            s_err(err, errlen, "%s:%d: expected 'key = value'", path, lineno);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *key = s_trim(s), *val = s_trim(eq + 1);
        size_t vl = strlen(val);
        if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
            val[vl - 1] = '\0';
            val++;
        }
        const rb_option_t *o = s_find(opts, key);
        if (!o) {
            s_err(err, errlen, "%s:%d: key '%s': unknown key", path, lineno, key);
            rc = -1;
            break;
        }
        char why[256];
        if (s_assign(o, cfg, val, why, sizeof why) < 0) {
            s_err(err, errlen, "%s:%d: key '%s': %s", path, lineno, key, why);
            rc = -1;
            break;
        }
        seen[o - opts] = true;
    }
    fclose(f);
    return rc;
}

static void s_env_name(const char *service, const char *key, char *out, size_t len)
{
    snprintf(out, len, "RB_%s_%s", service, key);
    for (char *p = out; *p; p++) *p = (char)toupper((unsigned char)*p);
}

int rb_config_load(const rb_option_t *opts, void *cfg, const char *service, const char *path,
                   char *err, size_t errlen)
{
    size_t n = 0;
    while (opts[n].key) n++;
    bool *seen = calloc(n + 1, sizeof *seen);
    if (!seen) {
        s_err(err, errlen, "out of memory");
        return -1;
    }
    int rc = -1;
    char why[256];
    for (size_t i = 0; i < n; i++) {
        if (opts[i].def && s_assign(&opts[i], cfg, opts[i].def, why, sizeof why) < 0) {
            s_err(err, errlen, "built-in default of key '%s': %s", opts[i].key, why);
            goto out;
        }
    }
    if (path && s_load_file(opts, cfg, path, seen, err, errlen) < 0) goto out;
    for (size_t i = 0; i < n; i++) {
        char env[128];
        s_env_name(service, opts[i].key, env, sizeof env);
        const char *v = getenv(env);
        if (!v) continue;
        if (s_assign(&opts[i], cfg, v, why, sizeof why) < 0) {
            s_err(err, errlen, "environment %s: key '%s': %s", env, opts[i].key, why);
            goto out;
        }
        seen[i] = true;
    }
    for (size_t i = 0; i < n; i++) {
        if (!opts[i].def && !seen[i]) {
            s_err(err, errlen, "%s: key '%s': required but not set", path ? path : "(no file)",
                  opts[i].key);
            goto out;
        }
    }
    rc = 0;
out:
    free(seen);
    return rc;
}

void rb_config_free(const rb_option_t *opts, void *cfg)
{
    for (const rb_option_t *o = opts; o->key; o++) {
        if (o->type != RB_OPT_STRING) continue;
        char **p = (char **)((char *)cfg + o->offset);
        free(*p);
        *p = NULL;
    }
}

void rb_config_print_help(FILE *out, const rb_option_t *opts, const char *service)
{
    fprintf(out, "Config keys (file: key = value; environment overrides):\n");
    for (const rb_option_t *o = opts; o->key; o++) {
        char env[128];
        s_env_name(service, o->key, env, sizeof env);
        fprintf(out, "  %-26s %s\n  %-26s default: %s; env %s\n", o->key, o->help ? o->help : "",
                "", o->def ? (*o->def ? o->def : "\"\"") : "(required)", env);
    }
}

void rb_config_print(FILE *out, const rb_option_t *opts, const void *cfg)
{
    for (const rb_option_t *o = opts; o->key; o++) {
        const char *field = (const char *)cfg + o->offset;
        switch (o->type) {
        case RB_OPT_STRING: {
            const char *v = *(char *const *)field;
            /* Never echo secrets. */
            bool secret = strstr(o->key, "password") || strstr(o->key, "token");
            fprintf(out, "%s = %s\n", o->key, secret && v && *v ? "(set)" : (v ? v : ""));
            break;
        }
        case RB_OPT_INT: fprintf(out, "%s = %ld\n", o->key, *(const long *)field); break;
        case RB_OPT_BOOL: fprintf(out, "%s = %s\n", o->key, *(const bool *)field ? "yes" : "no"); break;
        }
    }
}
