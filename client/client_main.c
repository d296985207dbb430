/* reachback-client: the device side. `connect` logs on through an edge and
 * stays connected until SIGINT/SIGTERM, then logs off; it answers a
 * transfer offer (asking the person, or as --transfer says) and resumes
 * the session through another edge when the connection drops. Human output
 * goes to stdout and stderr; the libraries' JSON log lines go to stderr,
 * and only errors unless --verbose. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <time.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "client_session.h"
#include "client_streams.h"
#include "rb_buf.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_tls.h"

#define EXIT_USAGE 2
#define DEFAULT_RESUME_TIMEOUT_S 60

static const char s_usage[] =
    "usage: reachback-client COMMAND [OPTIONS]\n"
    "\n"
    "Commands:\n"
    "  connect    log on through an edge and stay connected until interrupted;\n"
    "             SIGINT or SIGTERM logs off and exits 0\n"
    "\n"
    "Options of connect:\n"
    "  --server HOST:PORT     an edge's tunnel address (required); give every edge of the\n"
    "                         cluster (repeat the option, or a comma list): the first is\n"
    "                         tried first, and a dropped session resumes on the next\n"
    "  --ca FILE              CA certificate the edge's certificate must chain to (required)\n"
    "  --user NAME            user name (required)\n"
    "  --password-file FILE   file whose first line is the password (required)\n"
    "  --device NAME          a name for this device, shown to operators\n"
    "  --transfer ask|yes|no  when the user has a session already (default ask): ask at\n"
    "                         the terminal whether to take it over; yes: take it over;\n"
    "                         no: leave it alone and exit 10. ask without a terminal\n"
    "                         declines (exit 10)\n"
    "  --resume-timeout SEC   after the connection drops, try to resume the session for\n"
    "                         this long (default 60, the broker's session_timeout; 0: never)\n"
    "  --server-name NAME     name (or IP) the certificate must carry; default: HOST\n"
    "  --cert FILE --key FILE client certificate, when the edge asks for one\n"
    "  --expose PROTO:PORT[=HOST:PORT]\n"
    "                         let internal servers (and other devices, as policy allows)\n"
    "                         reach this device's intranet address on PORT (tcp or udp);\n"
    "                         their connections go to HOST:PORT here (default\n"
    "                         127.0.0.1:PORT). Repeatable: --expose tcp:22\n"
    "                         --expose tcp:5900=127.0.0.1:5901 --expose udp:5353=127.0.0.1:5454\n"
    "  --forward [tcp:|udp:][BIND:]LPORT:HOST:PORT\n"
    "                         listen on BIND:LPORT (default 127.0.0.1) and carry each\n"
    "                         connection (udp: each local sender's datagrams, a flow that\n"
    "                         ends after the gateway's UDP idle time) to HOST:PORT in the\n"
    "                         intranet (a name is resolved by the gateway); the server\n"
    "                         sees our intranet address. Repeatable\n"
    "  --socks [BIND:]PORT    a SOCKS5 proxy (CONNECT) into the intranet on BIND:PORT;\n"
    "                         names are resolved by the gateway (curl --socks5-hostname)\n"
    "  --status-file FILE     write {\"user\",\"ip\",\"fqdn\",\"session\",\"listen_ports\"} as JSON\n"
    "                         while logged on (replaced atomically, again after a resume;\n"
    "                         ip and fqdn are \"\" without an intranet address;\n"
    "                         listen_ports: the --forward ports, then the --socks ports;\n"
    "                         removed at exit)\n"
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
    "  7  the user already has a session (and no transfer could be offered)\n"
    "  8  connection lost, and the session could not be resumed in --resume-timeout\n"
    "  9  protocol error between client and edge\n"
    "  10 transfer declined (answered no, --transfer no, or no terminal to ask)\n"
    "  11 session transferred to another device\n"
    "  12 replaced by a newer logon\n"
    "  13 closed by administrator\n"
    "  14 session expired\n"
    "  15 transfer offer expired\n"
    "  16 resume refused (the session ended, or the token was refused)\n";

typedef struct {
    const char *servers[CLIENT_MAX_SERVERS];
    size_t n_servers;
    char *server_lists[CLIENT_MAX_SERVERS];   /* strdup'ed --server values */
    size_t n_lists;
    const char *ca, *user, *password_file, *device, *server_name;
    const char *cert, *key, *status_file;
    enum { TRANSFER_ASK, TRANSFER_YES, TRANSFER_NO } transfer;
    unsigned resume_timeout_s;
    int verbose;
    const char *expose[64], *forward[32], *socks[32];
    size_t n_expose, n_forward, n_socks;
} opts_t;

typedef struct {
    rb_loop_t *loop;
    const opts_t *o;
    client_session_t *s;
    client_streams_t *streams;
    client_result_t result;
    bool logged_on;
    bool status_written;
    /* --transfer ask: the terminal being asked, while it is */
    int ask_fd;
    bool ask_own_fd;          /* opened /dev/tty: close it */
    FILE *ask_out;
    char answer[64];
    size_t answer_len;
} app_t;

static int s_usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "reachback-client: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'reachback-client --help'.\n");
    return EXIT_USAGE;
}

/* --server HOST:PORT[,HOST:PORT...], repeatable. 0 or an exit code. */
static int s_add_servers(opts_t *o, const char *arg)
{
    if (o->n_lists == CLIENT_MAX_SERVERS) return s_usage_error("%s", "too many --server options");
    char *list = strdup(arg);
    if (!list) return 1;
    o->server_lists[o->n_lists++] = list;
    char *save = NULL;
    for (char *sv = strtok_r(list, ", ", &save); sv; sv = strtok_r(NULL, ", ", &save)) {
        if (o->n_servers == CLIENT_MAX_SERVERS)
            return s_usage_error("more than %s servers", "16");
        if (!strrchr(sv, ':')) return s_usage_error("--server '%s' is not HOST:PORT", sv);
        o->servers[o->n_servers++] = sv;
    }
    if (o->n_servers == 0) return s_usage_error("%s", "--server needs HOST:PORT");
    return 0;
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
static int s_write_status(const char *path, const char *user, const client_logon_info_t *i,
                          const client_streams_t *cs)
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
    rb_buf_puts(&b, "\",\"listen_ports\":[");
    for (size_t k = 0; client_streams_listener_port(cs, k) >= 0; k++)
        rb_buf_printf(&b, "%s%d", k ? "," : "", client_streams_listener_port(cs, k));
    rb_buf_puts(&b, "]}\n");
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
    if (info->resumed)
        printf("resumed session on %s: ip %s, name %s\n", info->edge_id, info->ip, info->fqdn);
    else if (info->no_address)
        printf("logged on as %s without an intranet address (pool full; outbound traffic is "
               "NATed)\n", app->o->user);
    else
        printf("logged on as %s: ip %s, name %s\n", app->o->user, info->ip, info->fqdn);
    fflush(stdout);
    if (app->o->status_file) {
        if (s_write_status(app->o->status_file, app->o->user, info, app->streams) == 0)
            app->status_written = true;
        else
            fprintf(stderr, "reachback-client: cannot write %s: %s\n", app->o->status_file,
                    strerror(errno));
    }
}

/* ---- the transfer question ---- */

static void s_ask_done(app_t *app)
{
    if (app->ask_fd < 0) return;
    rb_loop_del_fd(app->loop, app->ask_fd);
    if (app->ask_own_fd) {
        fclose(app->ask_out);   /* closes ask_fd too */
    }
    app->ask_fd = -1;
    app->ask_out = NULL;
    app->ask_own_fd = false;
}

/* y or yes (any case) accepts; anything else, or end of input, declines. */
static bool s_yes(const char *line)
{
    while (*line == ' ' || *line == '\t') line++;
    size_t n = strcspn(line, " \t\r\n");
    return (n == 1 && (line[0] == 'y' || line[0] == 'Y')) ||
           (n == 3 && strncasecmp(line, "yes", 3) == 0);
}

static void s_on_answer_input(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    app_t *app = arg;
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    bool eof = n <= 0;
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            eof = true;   /* the line is complete */
            break;
        }
        if (app->answer_len < sizeof app->answer - 1) app->answer[app->answer_len++] = buf[i];
    }
    if (!eof) return;
    app->answer[app->answer_len] = '\0';
    bool yes = n > 0 && s_yes(app->answer);
    if (n <= 0 && app->ask_out) fputs("\n", app->ask_out);
    s_ask_done(app);
    client_session_answer(app->s, yes);
}

static void s_describe_offer(char *out, size_t len, const char *user, const client_offer_t *o)
{
    char since[64] = "an unknown time";
    time_t t = (time_t)(o->since_ms / 1000);
    struct tm tm;
    if (o->since_ms && gmtime_r(&t, &tm)) strftime(since, sizeof since, "%Y-%m-%d %H:%M:%S UTC", &tm);
    snprintf(out, len, "%s already has a session since %s from device \"%s\" (edge %s, %s).",
             user, since, o->device, *o->edge_id ? o->edge_id : "?",
             *o->source ? o->source : "unknown address");
}

static void s_on_offer(void *arg, const client_offer_t *o)
{
    app_t *app = arg;
    if (!o || app->ask_fd >= 0) {
        /* The offer we asked about left with its connection; the next
         * edge's offer, if one comes, is asked anew. */
        if (app->ask_fd >= 0) {
            fputs("\n(connection lost; that offer is gone)\n", app->ask_out);
            fflush(app->ask_out);
        }
        s_ask_done(app);
        if (!o) return;
    }
    char what[512];
    s_describe_offer(what, sizeof what, app->o->user, o);
    if (app->o->transfer == TRANSFER_YES) {
        printf("%s\nTransferring it to this device (--transfer yes).\n", what);
        fflush(stdout);
        client_session_answer(app->s, true);
        return;
    }
    if (app->o->transfer == TRANSFER_NO) {
        printf("%s\nLeaving it alone (--transfer no).\n", what);
        fflush(stdout);
        client_session_answer(app->s, false);
        return;
    }
    /* ask: on stdin when it is a terminal, else on the controlling
     * terminal if there is one and the person can see our output (a
     * script with everything redirected is not asked). */
    app->answer_len = 0;
    if (isatty(STDIN_FILENO)) {
        app->ask_fd = STDIN_FILENO;
        app->ask_out = stdout;
    } else {
        int fd = isatty(fileno(stdout)) || isatty(STDERR_FILENO)
                     ? open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC)
                     : -1;
        FILE *f = fd >= 0 ? fdopen(fd, "r+") : NULL;
        if (!f) {
            if (fd >= 0) close(fd);
            fprintf(stderr, "reachback-client: %s\nreachback-client: no terminal to ask whether "
                    "to transfer it; declined (use --transfer yes to take it over)\n", what);
            client_session_answer(app->s, false);
            return;
        }
        app->ask_fd = fd;
        app->ask_out = f;
        app->ask_own_fd = true;
    }
    char expires[64];
    if (o->expires_in_s >= 60 && o->expires_in_s % 60 == 0)
        snprintf(expires, sizeof expires, "%u minute%s", o->expires_in_s / 60,
                 o->expires_in_s == 60 ? "" : "s");
    else
        snprintf(expires, sizeof expires, "%u second%s", o->expires_in_s,
                 o->expires_in_s == 1 ? "" : "s");
    fprintf(app->ask_out, "%s\nTransfer it to this device? The offer expires in %s. [y/N] ",
            what, expires);
    fflush(app->ask_out);
    if (rb_loop_add_fd(app->loop, app->ask_fd, RB_EV_READ, s_on_answer_input, app) < 0) {
        fprintf(stderr, "reachback-client: cannot read the answer; declined\n");
        s_ask_done(app);
        client_session_answer(app->s, false);
    }
}

static void s_on_resuming(void *arg, const char *why)
{
    app_t *app = arg;
    fprintf(stderr, "reachback-client: connection lost (%s); resuming the session\n", why);
    (void)app;
}

static void s_on_end(void *arg, client_result_t r, const char *msg)
{
    app_t *app = arg;
    app->result = r;
    if (app->ask_fd >= 0) {
        /* The question is moot now (e.g. the offer ran out). */
        fputs("\n", app->ask_out);
        fflush(app->ask_out);
        s_ask_done(app);
    }
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
    /* Fixed words, so that people and scripts can rely on them; the
     * edge's own message may say more. */
    case CLIENT_DECLINED:
    case CLIENT_TRANSFERRED:
    case CLIENT_REPLACED:
    case CLIENT_KICKED:
    case CLIENT_EXPIRED:
    case CLIENT_OFFER_EXPIRED:
    case CLIENT_RESUME_REFUSED:
        printf("%s\n", client_result_str(r));
        fflush(stdout);
        break;
    default: fprintf(stderr, "reachback-client: %s\n", msg);
    }
    rb_loop_stop(app->loop);
}

static void s_on_tunnel(void *arg, rb_tconn_t *t)
{
    app_t *app = arg;
    client_streams_tunnel(app->streams, t);
}

static void s_on_stream(void *arg, const rb_frame_t *f, const Rb__Tunnel__TunnelControl *m)
{
    app_t *app = arg;
    client_streams_input(app->streams, f, m);
}

static void s_on_drained(void *arg)
{
    app_t *app = arg;
    client_streams_drained(app->streams);
}

static void s_on_signal(rb_loop_t *loop, int signo, void *arg)
{
    app_t *app = arg;
    client_session_logoff(app->s);
}

static int s_connect(opts_t *o)
{
    if (!o->n_servers || !o->ca || !o->user || !o->password_file)
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
    app_t app = {.loop = loop, .o = o, .result = CLIENT_CONNECT_FAILED, .ask_fd = -1};
    if (!loop || rb_loop_add_signal(loop, SIGINT, s_on_signal, &app) < 0 ||
        rb_loop_add_signal(loop, SIGTERM, s_on_signal, &app) < 0) {
        fprintf(stderr, "reachback-client: cannot set up the event loop\n");
        OPENSSL_cleanse(password, sizeof password);
        return 1;
    }
    client_session_config_t cfg = {o->servers,    o->n_servers, o->server_name,      o->user,
                                   password,      o->device,    o->resume_timeout_s};
    app.streams = client_streams_new(loop);
    if (!app.streams) {
        OPENSSL_cleanse(password, sizeof password);
        return 1;
    }
    int rc = 0;
    for (size_t i = 0; i < o->n_expose && !rc; i++)
        rc = client_streams_expose(app.streams, o->expose[i], err, sizeof err);
    for (size_t i = 0; i < o->n_forward && !rc; i++)
        rc = client_streams_forward(app.streams, o->forward[i], err, sizeof err);
    for (size_t i = 0; i < o->n_socks && !rc; i++)
        rc = client_streams_socks(app.streams, o->socks[i], err, sizeof err);
    if (rc) {
        OPENSSL_cleanse(password, sizeof password);
        client_streams_destroy(&app.streams);
        rb_loop_destroy(&loop);
        SSL_CTX_free(tls);
        fprintf(stderr, "reachback-client: %s\nTry 'reachback-client --help'.\n", err);
        return EXIT_USAGE;
    }
    client_session_handlers_t h = {s_on_logon,  s_on_offer,  s_on_resuming, s_on_end,
                                   s_on_tunnel, s_on_stream, s_on_drained};
    app.s = client_session_new(loop, tls, &cfg, &h, &app);
    OPENSSL_cleanse(password, sizeof password);
    if (!app.s) {
        fprintf(stderr, "reachback-client: cannot connect to %s\n", o->servers[0]);
    } else {
        rb_loop_run(loop);
    }
    s_ask_done(&app);
    client_session_destroy(&app.s);
    client_streams_destroy(&app.streams);
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
           O_TRANSFER, O_RESUME_TIMEOUT, O_HELP, O_VERSION, O_EXPOSE, O_FORWARD, O_SOCKS };
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
        {"transfer", required_argument, NULL, O_TRANSFER},
        {"resume-timeout", required_argument, NULL, O_RESUME_TIMEOUT},
        {"expose", required_argument, NULL, O_EXPOSE},
        {"forward", required_argument, NULL, O_FORWARD},
        {"socks", required_argument, NULL, O_SOCKS},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, O_HELP},
        {"version", no_argument, NULL, O_VERSION},
        {NULL, 0, NULL, 0},
    };
    opts_t o = {.resume_timeout_s = DEFAULT_RESUME_TIMEOUT_S};
    int ch, rc;
    while ((ch = getopt_long(argc, argv, "v", longopts, NULL)) != -1) {
        switch (ch) {
        case O_SERVER:
            if ((rc = s_add_servers(&o, optarg)) != 0) return rc;
            break;
        case O_TRANSFER:
            if (strcmp(optarg, "ask") == 0) o.transfer = TRANSFER_ASK;
            else if (strcmp(optarg, "yes") == 0) o.transfer = TRANSFER_YES;
            else if (strcmp(optarg, "no") == 0) o.transfer = TRANSFER_NO;
            else return s_usage_error("--transfer wants ask, yes or no, not '%s'", optarg);
            break;
        case O_RESUME_TIMEOUT: {
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || v < 0 || v > 86400)
                return s_usage_error("--resume-timeout wants 0..86400 seconds, not '%s'", optarg);
            o.resume_timeout_s = (unsigned)v;
            break;
        }
        case O_EXPOSE:
            if (o.n_expose == 64) return s_usage_error("%s", "at most 64 --expose");
            o.expose[o.n_expose++] = optarg;
            break;
        case O_FORWARD:
            if (o.n_forward == 32) return s_usage_error("%s", "at most 32 --forward");
            o.forward[o.n_forward++] = optarg;
            break;
        case O_SOCKS:
            if (o.n_socks == 32) return s_usage_error("%s", "at most 32 --socks");
            o.socks[o.n_socks++] = optarg;
            break;
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
    if (strcmp(cmd, "connect") == 0) rc = s_connect(&o);
    else rc = s_usage_error("unknown command '%s'", cmd);
    for (size_t i = 0; i < o.n_lists; i++) free(o.server_lists[i]);
    return rc;
}
