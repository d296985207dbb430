/* reachback-ctl: the operator's tool. One table of commands; each takes
 * its own arguments. The admin commands (sessions, show, kick, whois,
 * pools) talk to a broker's admin API (ctl_http.c) and read its JSON with
 * a bounded parser (ctl_json.c). */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "ctl_http.h"
#include "ctl_json.h"
#include "rb_buf.h"
#include "rb_log.h"
#include "rb_passwd.h"
#include "rb_zmq.h"

#define EXIT_USAGE 2
/* Admin commands: the API refused the token; the user or address has no
 * session. */
#define EXIT_UNAUTHORIZED 3
#define EXIT_NOT_FOUND 4
#define PASSWORD_MAX 1024

typedef int(cmd_fn)(int argc, char **argv);

static int s_cmd_passwd(int argc, char **argv);
static int s_cmd_keygen(int argc, char **argv);
static int s_cmd_sessions(int argc, char **argv);
static int s_cmd_show(int argc, char **argv);
static int s_cmd_kick(int argc, char **argv);
static int s_cmd_whois(int argc, char **argv);
static int s_cmd_pools(int argc, char **argv);

#define ADMIN_OPTS "[--admin-url URL] [--token T] [--json]"

static const struct {
    const char *name;
    cmd_fn *fn;
    const char *args;
    const char *help;
} s_cmds[] = {
    {"passwd", s_cmd_passwd, "[--cost LN] [--password-file F] USER",
     "hash a password; prints 'USER:$scrypt$...' to append to the edge's users file.\n"
     "      The password is read from F (first line), or from stdin (asked twice,\n"
     "      without echo, on a terminal). LN is log2 of scrypt's N, 1..20 (default 15;\n"
     "      low values only for benchmark users)"},
    {"keygen", s_cmd_keygen, "DIR NAME",
     "write a CURVE key pair: DIR/NAME.key (secret, mode 0600) and DIR/NAME.pub"},
    {"sessions", s_cmd_sessions, ADMIN_OPTS,
     "list every live session: user, IP, DNS name, device, edge, since, last seen (UTC)"},
    {"show", s_cmd_show, ADMIN_OPTS " USER", "the session of USER, one field a line"},
    {"kick", s_cmd_kick, ADMIN_OPTS " USER",
     "end USER's session; the device is told \"closed by administrator\""},
    {"whois", s_cmd_whois, ADMIN_OPTS " IP", "the session holding intranet address IP"},
    {"pools", s_cmd_pools, ADMIN_OPTS, "address pools: size, used and free addresses"},
};
#define NCMDS (sizeof s_cmds / sizeof s_cmds[0])

static void s_help(FILE *out)
{
    fprintf(out, "usage: reachback-ctl COMMAND [ARGS]\n\nCommands:\n");
    for (size_t i = 0; i < NCMDS; i++)
        fprintf(out, "  %s %s\n      %s\n", s_cmds[i].name, s_cmds[i].args, s_cmds[i].help);
    fprintf(out,
            "\nAdmin commands talk to a broker's admin API:\n"
            "  --admin-url URL   its status server, http://HOST:PORT (default: $ADMIN_URL;\n"
            "                    --url is the same)\n"
            "  --token T         the broker's admin_token (default: $ADMIN_TOKEN)\n"
            "  --json            print the API's JSON answer as it came\n"
            "  These options may also come before the command.\n"
            "\nOther options:\n  --help      this text\n  --version   the version\n"
            "\nExit codes:\n  0  done\n  1  failed (the message says why)\n"
            "  2  usage error\n"
            "  3  the admin API refused the token (401)\n"
            "  4  no session for that user or address (404)\n");
}

static int s_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "reachback-ctl: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'reachback-ctl --help'.\n");
    return EXIT_USAGE;
}

/* One line from f into buf, without its line ending. 0, or -1 at EOF. */
static int s_line(FILE *f, char *buf, size_t len)
{
    if (!fgets(buf, (int)len, f)) return -1;
    buf[strcspn(buf, "\r\n")] = '\0';
    return 0;
}

/* Reads a line from the terminal without echo, prompting on stderr. */
static int s_ask(const char *prompt, char *buf, size_t len)
{
    struct termios old, quiet;
    if (tcgetattr(STDIN_FILENO, &old) < 0) return -1;
    quiet = old;
    quiet.c_lflag &= ~(tcflag_t)ECHO;
    fputs(prompt, stderr);
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    int rc = s_line(stdin, buf, len);
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
    fputs("\n", stderr);
    return rc;
}

static int s_read_password(const char *file, char *pw, size_t len)
{
    if (file) {
        FILE *f = fopen(file, "r");
        if (!f) {
            fprintf(stderr, "reachback-ctl: cannot read %s: %s\n", file, strerror(errno));
            return -1;
        }
        int rc = s_line(f, pw, len);
        fclose(f);
        if (rc < 0) fprintf(stderr, "reachback-ctl: %s is empty\n", file);
        return rc;
    }
    if (!isatty(STDIN_FILENO)) {
        if (s_line(stdin, pw, len) == 0) return 0;
        fprintf(stderr, "reachback-ctl: no password on stdin\n");
        return -1;
    }
    char again[PASSWORD_MAX + 2];
    int rc = -1;
    if (s_ask("Password: ", pw, len) == 0 && s_ask("Again: ", again, sizeof again) == 0) {
        if (strcmp(pw, again) == 0) rc = 0;
        else fprintf(stderr, "reachback-ctl: the passwords differ\n");
    }
    OPENSSL_cleanse(again, sizeof again);
    return rc;
}

static int s_cmd_passwd(int argc, char **argv)
{
    unsigned ln = RB_PASSWD_DEFAULT_LN;
    const char *file = NULL, *user = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--cost") == 0 && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 20) return s_usage("--cost wants 1..20, not '%s'", argv[i]);
            ln = (unsigned)v;
        } else if (strcmp(argv[i], "--password-file") == 0 && i + 1 < argc) {
            file = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return s_usage("passwd: unknown option '%s'", argv[i]);
        } else if (!user) {
            user = argv[i];
        } else {
            return s_usage("passwd: unexpected argument '%s'", argv[i]);
        }
    }
    if (!user) return s_usage("%s", "passwd: which USER?");
    /* The users file splits at the first ':' and takes one line each. */
    if (!*user || strchr(user, ':') || strlen(user) > 256)
        return s_usage("passwd: '%s' cannot be a user name (empty, ':' or too long)", user);
    for (const char *p = user; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return s_usage("%s", "passwd: control character in the user name");
    char pw[PASSWORD_MAX + 2];
    if (s_read_password(file, pw, sizeof pw) < 0) return 1;
    if (strlen(pw) > PASSWORD_MAX) {
        OPENSSL_cleanse(pw, sizeof pw);
        fprintf(stderr, "reachback-ctl: password longer than %d bytes\n", PASSWORD_MAX);
        return 1;
    }
    char out[RB_PASSWD_MAX];
    int rc = rb_passwd_hash(pw, ln, 8, 1, out);
    OPENSSL_cleanse(pw, sizeof pw);
    if (rc < 0) {
        fprintf(stderr, "reachback-ctl: hashing failed\n");
        return 1;
    }
    printf("%s:%s\n", user, out);
    return 0;
}

static int s_cmd_keygen(int argc, char **argv)
{
    if (argc != 3) return s_usage("%s", "keygen wants DIR NAME");
    if (strchr(argv[2], '/') || !*argv[2])
        return s_usage("keygen: '%s' is not a file name", argv[2]);
    if (rb_curve_generate(argv[1], argv[2]) < 0) {
        fprintf(stderr, "reachback-ctl: cannot write %s/%s.key and .pub\n", argv[1], argv[2]);
        return 1;
    }
    printf("%s/%s.key\n%s/%s.pub\n", argv[1], argv[2], argv[1], argv[2]);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Admin commands                                                      */

typedef struct {
    const char *url, *token;
    bool json;
} admin_opts_t;

/* Set by options before the command; the command's own options win. */
static admin_opts_t s_admin;

/* Takes admin option i of argv (and its value). 1 when it was one, 0 when
 * not, -1 on a usage error (reported). */
static int s_admin_opt(admin_opts_t *o, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    if (strcmp(a, "--admin-url") == 0 || strcmp(a, "--url") == 0 || strcmp(a, "--token") == 0) {
        if (*i + 1 >= argc) {
            s_usage("%s needs a value", a);
            return -1;
        }
        if (strcmp(a, "--token") == 0) o->token = argv[++*i];
        else o->url = argv[++*i];
        return 1;
    }
    if (strcmp(a, "--json") == 0) {
        o->json = true;
        return 1;
    }
    return 0;
}

/* Parses a command's arguments: admin options and up to one operand
 * (want_arg names it for messages, NULL when none is taken). 0 or an exit
 * code. */
static int s_admin_args(int argc, char **argv, const char *want_arg, admin_opts_t *o,
                        const char **arg)
{
    *o = s_admin;
    *arg = NULL;
    for (int i = 1; i < argc; i++) {
        int r = s_admin_opt(o, argc, argv, &i);
        if (r < 0) return EXIT_USAGE;
        if (r > 0) continue;
        if (argv[i][0] == '-' && argv[i][1]) return s_usage("unknown option '%s'", argv[i]);
        if (!want_arg || *arg) return s_usage("unexpected argument '%s'", argv[i]);
        *arg = argv[i];
    }
    if (want_arg && !*arg) return s_usage("%s: which one?", want_arg);
    if (!o->url || !*o->url) o->url = getenv("ADMIN_URL");
    if (!o->token || !*o->token) o->token = getenv("ADMIN_TOKEN");
    if (!o->url || !*o->url)
        return s_usage("%s", "no admin API address: --admin-url URL or ADMIN_URL");
    if (!o->token || !*o->token)
        return s_usage("%s", "no admin token: --token T or ADMIN_TOKEN");
    return 0;
}

/* Appends s to b percent-encoded (a user name may hold '/', '\\', '@'...). */
static void s_path_escape(rb_buf_t *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~')
            rb_buf_append(b, s, 1);
        else
            rb_buf_printf(b, "%%%02X", c);
    }
}

/* Text from the network, made safe for a terminal: control bytes (escape
 * sequences) become '?'. Returns a static buffer, truncated to 255 bytes. */
static const char *s_clean(const char *s)
{
    static char out[256];
    size_t n = 0;
    for (; *s && n < sizeof out - 1; s++)
        out[n++] = (unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s;
    out[n] = '\0';
    return out;
}

/* Unix ms as "2026-11-25T17:40:12Z"; "-" for 0 or nonsense. */
static void s_utc(const char *ms_text, char *out, size_t len)
{
    char *end;
    errno = 0;
    unsigned long long ms = strtoull(ms_text, &end, 10);
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (errno || end == ms_text || *end || ms == 0 || !gmtime_r(&t, &tm) ||
        strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, len, "-");
}

/* Calls the API. 0 with the parsed answer in *doc (and the raw body
 * printed when --json), or an exit code after saying what went wrong;
 * what404 is the message for a 404. */
static int s_admin_call(const admin_opts_t *o, const char *method, const char *path,
                        const char *what404, ctl_json_t **doc)
{
    rb_buf_t body = RB_BUF_INIT;
    char err[512];
    int status = 0;
    *doc = NULL;
    if (ctl_http_request(o->url, method, path, o->token, &status, &body, err, sizeof err) < 0) {
        fprintf(stderr, "reachback-ctl: %s\n", err);
        rb_buf_free(&body);
        return 1;
    }
    int rc = 0;
    if (status == 401 || status == 403) {
        fprintf(stderr, "reachback-ctl: the admin API refused the token (%d)\n", status);
        rc = EXIT_UNAUTHORIZED;
    } else if (status == 404) {
        fprintf(stderr, "reachback-ctl: %s\n", what404);
        rc = EXIT_NOT_FOUND;
    } else if (o->json && status == 200) {
        if (body.len) fwrite(body.data, 1, body.len, stdout);
    } else {
        *doc = ctl_json_parse(body.data ? body.data : "", body.len, err, sizeof err);
        if (status != 200) {
            const char *why = *doc ? ctl_json_field(*doc, ctl_json_root(*doc), "error") : "";
            fprintf(stderr, "reachback-ctl: the admin API answered %d%s%s\n", status,
                    *why ? ": " : "", s_clean(why));
            ctl_json_free(doc);
            rc = 1;
        } else if (!*doc) {
            fprintf(stderr, "reachback-ctl: the admin API's answer is not JSON: %s\n", err);
            rc = 1;
        }
    }
    rb_buf_free(&body);
    return rc;
}

/* ---- tables ---- */

#define MAX_COLS 8

typedef struct {
    const char *head[MAX_COLS];
    size_t ncols;
    char **cells;   /* rows x ncols, owned */
    size_t nrows, cap;
    size_t width[MAX_COLS];
} table_t;

static void s_table_add(table_t *t, const char *const *vals)
{
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        char **c = realloc(t->cells, cap * t->ncols * sizeof *c);
        if (!c) return;
        t->cells = c;
        t->cap = cap;
    }
    for (size_t i = 0; i < t->ncols; i++) {
        char *v = strdup(s_clean(*vals[i] ? vals[i] : "-"));
        t->cells[t->nrows * t->ncols + i] = v;
        size_t w = v ? strlen(v) : 0;
        if (w > t->width[i]) t->width[i] = w;
    }
    t->nrows++;
}

static void s_table_print(table_t *t)
{
    for (size_t i = 0; i < t->ncols; i++)
        if (strlen(t->head[i]) > t->width[i]) t->width[i] = strlen(t->head[i]);
    for (size_t r = 0; r <= t->nrows; r++) {
        for (size_t i = 0; i < t->ncols; i++) {
            const char *v = r == 0 ? t->head[i] : t->cells[(r - 1) * t->ncols + i];
            if (!v) v = "?";
            if (i + 1 == t->ncols) printf("%s\n", v);
            else printf("%-*s  ", (int)t->width[i], v);
        }
    }
    for (size_t k = 0; k < t->nrows * t->ncols; k++) free(t->cells[k]);
    free(t->cells);
}

static void s_session_row(table_t *t, const ctl_json_t *j, int v)
{
    char since[32], seen[32];
    s_utc(ctl_json_field(j, v, "since_ms"), since, sizeof since);
    s_utc(ctl_json_field(j, v, "last_seen_ms"), seen, sizeof seen);
    const char *vals[] = {ctl_json_field(j, v, "user"),   ctl_json_field(j, v, "ip"),
                          ctl_json_field(j, v, "fqdn"),   ctl_json_field(j, v, "device"),
                          ctl_json_field(j, v, "edge"),   since,
                          seen};
    s_table_add(t, vals);
}

static int s_cmd_sessions(int argc, char **argv)
{
    admin_opts_t o;
    const char *arg;
    ctl_json_t *j;
    int rc = s_admin_args(argc, argv, NULL, &o, &arg);
    if (rc || (rc = s_admin_call(&o, "GET", "/admin/sessions", "no such API", &j)) || !j)
        return rc;
    int root = ctl_json_root(j);
    if (ctl_json_type(j, root) != CTL_JSON_ARRAY) {
        fprintf(stderr, "reachback-ctl: the admin API did not answer a list\n");
        ctl_json_free(&j);
        return 1;
    }
    table_t t = {.head = {"USER", "IP", "NAME", "DEVICE", "EDGE", "SINCE", "LAST-SEEN"}, .ncols = 7};
    for (int v = ctl_json_child(j, root); v != CTL_JSON_NONE; v = ctl_json_next(j, v))
        if (ctl_json_type(j, v) == CTL_JSON_OBJECT) s_session_row(&t, j, v);
    s_table_print(&t);
    ctl_json_free(&j);
    return 0;
}

/* A flat object as "key: value" lines; *_ms times also as UTC. */
static void s_print_fields(const ctl_json_t *j, int obj)
{
    size_t w = 0;
    for (int v = ctl_json_child(j, obj); v != CTL_JSON_NONE; v = ctl_json_next(j, v))
        if (strlen(ctl_json_key(j, v)) > w) w = strlen(ctl_json_key(j, v));
    for (int v = ctl_json_child(j, obj); v != CTL_JSON_NONE; v = ctl_json_next(j, v)) {
        const char *k = ctl_json_key(j, v);
        ctl_json_type_t ty = ctl_json_type(j, v);
        if (ty == CTL_JSON_OBJECT || ty == CTL_JSON_ARRAY) continue;
        char key[260];   /* s_clean gives at most 255 bytes */
        snprintf(key, sizeof key, "%s:", s_clean(k));
        printf("%-*s  ", (int)w + 1, key);
        printf("%s", s_clean(ctl_json_str(j, v)));
        size_t kl = strlen(k);
        if (kl > 3 && strcmp(k + kl - 3, "_ms") == 0) {
            char utc[32];
            s_utc(ctl_json_str(j, v), utc, sizeof utc);
            if (strcmp(utc, "-") != 0) printf(" (%s)", utc);
        }
        printf("\n");
    }
}

static int s_one_session(int argc, char **argv, const char *what, const char *method,
                         const char *prefix)
{
    admin_opts_t o;
    const char *arg;
    int rc = s_admin_args(argc, argv, what, &o, &arg);
    if (rc) return rc;
    rb_buf_t path = RB_BUF_INIT;
    rb_buf_puts(&path, prefix);
    s_path_escape(&path, arg);
    char msg404[320];
    snprintf(msg404, sizeof msg404, strcmp(what, "IP") == 0 ? "no session holds %s"
                                                            : "no session for %s", s_clean(arg));
    ctl_json_t *j;
    rc = s_admin_call(&o, method, path.data, msg404, &j);
    rb_buf_free(&path);
    if (rc || !j) return rc;
    int root = ctl_json_root(j);
    if (strcmp(method, "POST") == 0) {
        int sv = ctl_json_get(j, root, "session");
        /* s_clean's buffer is shared: one call per printf. */
        printf("kicked %s: ", s_clean(arg));
        printf("session %s ", s_clean(ctl_json_field(j, sv, "session")));
        printf("on edge %s\n", s_clean(ctl_json_field(j, sv, "edge")));
    } else if (ctl_json_type(j, root) == CTL_JSON_OBJECT) {
        s_print_fields(j, root);
    } else {
        fprintf(stderr, "reachback-ctl: the admin API did not answer an object\n");
        rc = 1;
    }
    ctl_json_free(&j);
    return rc;
}

static int s_cmd_show(int argc, char **argv)
{
    return s_one_session(argc, argv, "USER", "GET", "/admin/sessions/");
}

static int s_cmd_kick(int argc, char **argv)
{
    return s_one_session(argc, argv, "USER", "POST", "/admin/kick/");
}

static int s_cmd_whois(int argc, char **argv)
{
    return s_one_session(argc, argv, "IP", "GET", "/admin/whois/");
}

static int s_cmd_pools(int argc, char **argv)
{
    admin_opts_t o;
    const char *arg;
    ctl_json_t *j;
    int rc = s_admin_args(argc, argv, NULL, &o, &arg);
    if (rc || (rc = s_admin_call(&o, "GET", "/admin/pools", "no such API", &j)) || !j) return rc;
    int root = ctl_json_root(j);
    if (ctl_json_type(j, root) != CTL_JSON_ARRAY) {
        fprintf(stderr, "reachback-ctl: the admin API did not answer a list\n");
        ctl_json_free(&j);
        return 1;
    }
    table_t t = {.head = {"POOL", "CIDRS", "SIZE", "USED", "FREE"}, .ncols = 5};
    for (int v = ctl_json_child(j, root); v != CTL_JSON_NONE; v = ctl_json_next(j, v)) {
        const char *vals[] = {ctl_json_field(j, v, "name"), ctl_json_field(j, v, "cidrs"),
                              ctl_json_field(j, v, "size"), ctl_json_field(j, v, "used"),
                              ctl_json_field(j, v, "free")};
        s_table_add(&t, vals);
    }
    s_table_print(&t);
    ctl_json_free(&j);
    return 0;
}

int main(int argc, char **argv)
{
    /* Library log lines (JSON) are for services; here only errors, and on
     * stderr, so that stdout carries just the command's output. */
    rb_log_init("ctl", RB_LOG_ERROR);
    int out = dup(STDOUT_FILENO);
    if (out < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0 || !(stdout = fdopen(out, "w"))) {
        fprintf(stderr, "reachback-ctl: cannot set up output\n");
        return 1;
    }
    /* Admin options may come before the command. */
    int first = 1;
    while (first < argc) {
        int r = s_admin_opt(&s_admin, argc, argv, &first);
        if (r < 0) return EXIT_USAGE;
        if (r == 0) break;
        first++;
    }
    argc -= first - 1;
    argv += first - 1;
    if (argc < 2) return s_usage("%s", "no command given");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        s_help(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("reachback-ctl %s\n", RB_VERSION);
        return 0;
    }
    for (size_t i = 0; i < NCMDS; i++)
        if (strcmp(argv[1], s_cmds[i].name) == 0) return s_cmds[i].fn(argc - 1, argv + 1);
    return s_usage("unknown command '%s'", argv[1]);
}
