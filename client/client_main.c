/* reachback-client: the device side. `connect` logs on through an edge and
 * stays connected until SIGINT/SIGTERM, then logs off. Human output goes to
 * stdout and stderr; the libraries' JSON log lines go to stderr, and only
 * errors unless --verbose. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "client_session.h"
#include "rb_buf.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_tls.h"

#define EXIT_USAGE 2

static const char s_usage[] =
    "usage: reachback-client COMMAND [OPTIONS]\n"
    "\n"
    "Commands:\n"
    "  connect    log on through an edge and stay connected until interrupted;\n"
    "             SIGINT or SIGTERM logs off and exits 0\n"
    "\n"
    "Options of connect:\n"
    "  --server HOST:PORT     the edge's tunnel address (required)\n"
    "  --ca FILE              CA certificate the edge's certificate must chain to (required)\n"
    "  --user NAME            user name (required)\n"
    "  --password-file FILE   file whose first line is the password (required)\n"
    "  --device NAME          a name for this device, shown to operators\n"
    "  --server-name NAME     name (or IP) the certificate must carry; default: HOST\n"
    "  --cert FILE --key FILE client certificate, when the edge asks for one\n"
    "  --status-file FILE     write {\"user\",\"ip\",\"fqdn\",\"session\"} as JSON while logged\n"
    "                         on (replaced atomically; removed at exit)\n"
    "  --verbose, -v          log lines (JSON, on stderr); twice for debug\n"
    "\n"
    "Other options:\n"
    "  --help                 this text\n"
    "  --version              the version\n"
    "\n"
    "Exit codes:\n"
    "  0  logged off (or stopped before logging on)\n"
    "  1  internal error\n"
    "  2  usage error (bad options, unreadable password file)\n"
    "  3  cannot connect, or the TLS handshake failed (certificate not trusted)\n"
    "  4  logon failed: invalid user name or password\n"
    "  5  logon refused: too many failed attempts, wait and retry\n"
    "  6  server unavailable, or no intranet address free\n"
    "  7  the user already has a session\n"
    "  8  connection lost, or closed by the edge\n"
    "  9  protocol error between client and edge\n";

typedef struct {
    const char *server, *ca, *user, *password_file, *device, *server_name;
    const char *cert, *key, *status_file;
    int verbose;
} opts_t;

typedef struct {
    rb_loop_t *loop;
    const opts_t *o;
    client_session_t *s;
    client_result_t result;
    bool logged_on;
    bool status_written;
} app_t;

static int s_usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "reachback-client: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'reachback-client --help'.\n");
    return EXIT_USAGE;
}

/* The first line of path, without its line ending. 0 or -1. */
static int s_read_password(const char *path, char *out, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    bool ok = fgets(out, (int)len, f) != NULL;
    fclose(f);
    if (!ok) out[0] = '\0';
    out[strcspn(out, "\r\n")] = '\0';
    return 0;
}

/* Writes the status file next to its final name, then renames: readers
 * never see half a file. */
static int s_write_status(const char *path, const char *user, const client_logon_info_t *i)
{
    rb_buf_t b = RB_BUF_INIT;
    rb_buf_puts(&b, "{\"user\":\"");
    rb_buf_json_escape(&b, user);
    rb_buf_puts(&b, "\",\"ip\":\"");
    rb_buf_json_escape(&b, i->ip ? i->ip : "");
    rb_buf_puts(&b, "\",\"fqdn\":\"");
    rb_buf_json_escape(&b, i->fqdn ? i->fqdn : "");
    rb_buf_puts(&b, "\",\"session\":\"");
    rb_buf_json_escape(&b, i->session_id ? i->session_id : "");
    rb_buf_puts(&b, "\"}\n");
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    int rc = -1;
    if (f && b.data) {
        bool ok = fwrite(b.data, 1, b.len, f) == b.len;
        ok = fclose(f) == 0 && ok;
        f = NULL;
        rc = ok && rename(tmp, path) == 0 ? 0 : -1;
    }
    if (f) fclose(f);
    if (rc < 0) unlink(tmp);
    rb_buf_free(&b);
    return rc;
}

static void s_on_logon(void *arg, const client_logon_info_t *info)
{
    app_t *app = arg;
    app->logged_on = true;
    printf("logged on as %s: ip %s, name %s\n", app->o->user, info->ip ? info->ip : "",
           info->fqdn ? info->fqdn : "");
    fflush(stdout);
    if (app->o->status_file) {
        if (s_write_status(app->o->status_file, app->o->user, info) == 0)
            app->status_written = true;
        else
            fprintf(stderr, "reachback-client: cannot write %s: %s\n", app->o->status_file,
                    strerror(errno));
    }
}

static void s_on_end(void *arg, client_result_t r, const char *msg)
{
    app_t *app = arg;
    app->result = r;
    switch (r) {
    case CLIENT_OK: break;
    case CLIENT_BAD_CREDENTIALS:
        fprintf(stderr, "reachback-client: logon failed: invalid user name or password\n");
        break;
    case CLIENT_RATE_LIMITED:
    case CLIENT_UNAVAILABLE:
    case CLIENT_SESSION_EXISTS:
        fprintf(stderr, "reachback-client: logon failed: %s\n", msg);
        break;
    default: fprintf(stderr, "reachback-client: %s\n", msg);
    }
    rb_loop_stop(app->loop);
}

static void s_on_signal(rb_loop_t *loop, int signo, void *arg)
{
    app_t *app = arg;
    client_session_logoff(app->s);
}

static int s_connect(opts_t *o)
{
    if (!o->server || !o->ca || !o->user || !o->password_file)
        return s_usage_error("%s", "connect needs --server, --ca, --user and --password-file");
    if ((o->cert == NULL) != (o->key == NULL))
        return s_usage_error("%s", "--cert and --key go together");
    char password[1025];
    if (s_read_password(o->password_file, password, sizeof password) < 0) {
        fprintf(stderr, "reachback-client: cannot read %s: %s\n", o->password_file,
                strerror(errno));
        return EXIT_USAGE;
    }
    char err[512];
    SSL_CTX *tls = rb_tls_client_ctx(o->ca, o->cert, o->key, err, sizeof err);
    if (!tls) {
        OPENSSL_cleanse(password, sizeof password);
        fprintf(stderr, "reachback-client: %s\n", err);
        return CLIENT_CONNECT_FAILED;
    }
    /* A write to a connection the edge just closed must not kill us. */
    signal(SIGPIPE, SIG_IGN);
    rb_loop_t *loop = rb_loop_new();
    app_t app = {.loop = loop, .o = o, .result = CLIENT_CONNECT_FAILED};
    if (!loop || rb_loop_add_signal(loop, SIGINT, s_on_signal, &app) < 0 ||
        rb_loop_add_signal(loop, SIGTERM, s_on_signal, &app) < 0) {
        fprintf(stderr, "reachback-client: cannot set up the event loop\n");
        OPENSSL_cleanse(password, sizeof password);
        return 1;
    }
    client_session_config_t cfg = {o->server, o->server_name, o->user, password, o->device};
    client_session_handlers_t h = {s_on_logon, s_on_end};
    app.s = client_session_new(loop, tls, &cfg, &h, &app);
    OPENSSL_cleanse(password, sizeof password);
    if (!app.s) {
        fprintf(stderr, "reachback-client: cannot connect to %s\n", o->server);
    } else {
        rb_loop_run(loop);
    }
    client_session_destroy(&app.s);
    if (app.status_written) unlink(o->status_file);
    rb_loop_destroy(&loop);
    SSL_CTX_free(tls);
    return (int)app.result;
}

int main(int argc, char **argv)
{
    /* The libraries log JSON to stdout; stdout belongs to the person here,
     * so those lines go to stderr. */
    int out = dup(STDOUT_FILENO);
    if (out < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0 || !(stdout = fdopen(out, "w"))) {
        fprintf(stderr, "reachback-client: cannot set up output\n");
        return 1;
    }
    enum { O_SERVER = 256, O_CA, O_USER, O_PWFILE, O_DEVICE, O_NAME, O_CERT, O_KEY, O_STATUS,
           O_HELP, O_VERSION };
    static const struct option longopts[] = {
        {"server", required_argument, NULL, O_SERVER},
        {"ca", required_argument, NULL, O_CA},
        {"user", required_argument, NULL, O_USER},
        {"password-file", required_argument, NULL, O_PWFILE},
        {"device", required_argument, NULL, O_DEVICE},
        {"server-name", required_argument, NULL, O_NAME},
        {"cert", required_argument, NULL, O_CERT},
        {"key", required_argument, NULL, O_KEY},
        {"status-file", required_argument, NULL, O_STATUS},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, O_HELP},
        {"version", no_argument, NULL, O_VERSION},
        {NULL, 0, NULL, 0},
    };
    opts_t o = {0};
    int ch;
    while ((ch = getopt_long(argc, argv, "v", longopts, NULL)) != -1) {
        switch (ch) {
        case O_SERVER: o.server = optarg; break;
        case O_CA: o.ca = optarg; break;
        case O_USER: o.user = optarg; break;
        case O_PWFILE: o.password_file = optarg; break;
        case O_DEVICE: o.device = optarg; break;
        case O_NAME: o.server_name = optarg; break;
        case O_CERT: o.cert = optarg; break;
        case O_KEY: o.key = optarg; break;
        case O_STATUS: o.status_file = optarg; break;
        case 'v': o.verbose++; break;
        case O_HELP: fputs(s_usage, stdout); return 0;
        case O_VERSION: printf("reachback-client %s\n", RB_VERSION); return 0;
        default: fprintf(stderr, "Try 'reachback-client --help'.\n"); return EXIT_USAGE;
        }
    }
    rb_log_init("client", o.verbose >= 2 ? RB_LOG_DEBUG : o.verbose ? RB_LOG_INFO : RB_LOG_ERROR);
    if (optind >= argc) return s_usage_error("%s", "no command given");
    const char *cmd = argv[optind];
    if (optind + 1 < argc) return s_usage_error("unexpected argument '%s'", argv[optind + 1]);
    if (strcmp(cmd, "connect") == 0) return s_connect(&o);
    return s_usage_error("unknown command '%s'", cmd);
}
