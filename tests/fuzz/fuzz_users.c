// part: edge
/* Fuzz target for the edge's users file: arbitrary bytes as the file. When
 * they load, the first entry's name is found with its hash and groups, and
 * the groups are a well-formed comma list; when they do not, the error is
 * a terminated string naming the file. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "edge_users.h"
#include "fuzz_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool s_group_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-' || c == ',';
}

/* The name on the first line that is not blank or a comment, as the file
 * format defines it: after leading blanks, up to the first ':'. */
static size_t s_first_name(const uint8_t *data, size_t size, char *out, size_t outlen)
{
    size_t i = 0;
    while (i < size) {
        while (i < size && (data[i] == ' ' || data[i] == '\t'))
            i++;
        size_t eol = i;
        while (eol < size && data[eol] != '\n')
            eol++;
        bool blank = true;
        for (size_t j = i; j < eol; j++)
            if (data[j] != ' ' && data[j] != '\t' && data[j] != '\r') blank = false;
        if (!blank && data[i] != '#') {
            size_t n = 0;
            while (i + n < eol && data[i + n] != ':' && n + 1 < outlen) {
                out[n] = (char)data[i + n];
                n++;
            }
            out[n] = '\0';
            return n;
        }
        i = eol + 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_file(data, size, path, sizeof path);
    if (fd < 0) return 0;
    char err[512];
    memset(err, 'x', sizeof err);
    edge_users_t *u = edge_users_load(path, err, sizeof err);
    if (!u) {
        if (!memchr(err, '\0', sizeof err) || strncmp(err, path, strlen(path)) != 0)
            __builtin_trap();
        close(fd);
        return 0;
    }
    char name[300];
    if (s_first_name(data, size, name, sizeof name)) {
        const char *hash = edge_users_lookup(u, name);
        const char *groups = edge_users_groups(u, name);
        if (!hash || strncmp(hash, "$scrypt$", 8) != 0 || !groups) __builtin_trap();
        for (const char *g = groups; *g; g++)
            if (!s_group_char(*g)) __builtin_trap();
    } else if (edge_users_count(u) != 0) {
        __builtin_trap();
    }
    if (edge_users_lookup(u, "") || edge_users_groups(u, "")) __builtin_trap();
    edge_users_destroy(&u);
    if (u) __builtin_trap();
    close(fd);
    return 0;
}
