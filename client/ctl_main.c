/* reachback-ctl: the operator's tool. One table of commands; each takes
 * its own arguments. Admin commands (list, kick, ...) join the table later. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "rb_log.h"
#include "rb_passwd.h"
#include "rb_zmq.h"

#define EXIT_USAGE 2
#define PASSWORD_MAX 1024

typedef int(cmd_fn)(int argc, char **argv);

static int s_cmd_passwd(int argc, char **argv);
static int s_cmd_keygen(int argc, char **argv);

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
};
#define NCMDS (sizeof s_cmds / sizeof s_cmds[0])

static void s_help(FILE *out)
{
    fprintf(out, "usage: reachback-ctl COMMAND [ARGS]\n\nCommands:\n");
    for (size_t i = 0; i < NCMDS; i++)
        fprintf(out, "  %s %s\n      %s\n", s_cmds[i].name, s_cmds[i].args, s_cmds[i].help);
    fprintf(out, "\nOther options:\n  --help      this text\n  --version   the version\n"
                 "\nExit codes:\n  0  done\n  1  failed (the message says why)\n"
                 "  2  usage error\n");
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
