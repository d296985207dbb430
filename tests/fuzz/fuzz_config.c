// part: lib
/* Fuzz target for rb_config: arbitrary bytes as a service's config file,
 * against a table with each kind of option. When they load, every value
 * keeps its option's promises (strings set, integers in range) and prints;
 * when they do not, the error is a terminated string naming the file. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz_file.h"
#include "rb_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    char *log_level;
    char *status_listen;
    char *suffix;
    char *secret_token;
    long port;
    long ttl;
    bool tcp;
} cfg_t;

static const rb_option_t s_opts[] = {
    RB_OPT_COMMON(cfg_t),
    {"suffix", RB_OPT_STRING, NULL, offsetof(cfg_t, suffix), 0, 0, "required"},
    {"secret_token", RB_OPT_STRING, "", offsetof(cfg_t, secret_token), 0, 0, "never printed"},
    {"port", RB_OPT_INT, "53", offsetof(cfg_t, port), 1, 65535, "a port"},
    {"ttl", RB_OPT_INT, "0", offsetof(cfg_t, ttl), -5, 86400, "seconds"},
    {"tcp", RB_OPT_BOOL, "yes", offsetof(cfg_t, tcp), 0, 0, "a switch"},
    RB_OPT_END,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *sink;
    if (!sink && !(sink = fopen("/dev/null", "w"))) return 0;
    char path[64];
    int fd = fuzz_file(data, size, path, sizeof path);
    if (fd < 0) return 0;
    cfg_t c = {0};
    char err[512];
    memset(err, 'x', sizeof err);
    if (rb_config_load(s_opts, &c, "fuzzsvc", path, err, sizeof err) == 0) {
        if (!c.log_level || !c.status_listen || !c.suffix || !c.secret_token) __builtin_trap();
        if (c.port < 1 || c.port > 65535 || c.ttl < -5 || c.ttl > 86400) __builtin_trap();
        rb_config_print(sink, s_opts, &c);
    } else if (!memchr(err, '\0', sizeof err) || strncmp(err, path, strlen(path)) != 0) {
        __builtin_trap();
    }
    rb_config_free(s_opts, &c);
    if (c.suffix || c.log_level) __builtin_trap();
    close(fd);
    return 0;
}
