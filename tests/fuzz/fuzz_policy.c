// part: forwarder
/* Fuzz target for the forwarder's access policy: arbitrary bytes as a policy
 * file. When they parse, a few queries are evaluated, some fixed and some
 * taken from the input, and the answers checked against the module's
 * promises; when they do not, the error must name the file. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "forwarder_policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The number of lines in the input, the most a rule's line number can be. */
static unsigned s_lines(const uint8_t *data, size_t size)
{
    unsigned n = 0;
    for (size_t i = 0; i < size; i++)
        if (data[i] == '\n') n++;
    return n + 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    memset(err, 'x', sizeof err);
    policy_t *p = policy_parse((const char *)data, size, "fuzz", err, sizeof err);
    if (!p) {
        /* err is a terminated string naming the input. */
        if (!memchr(err, '\0', sizeof err) || strncmp(err, "fuzz:", 5) != 0) __builtin_trap();
        return 0;
    }
    if (policy_rule_count(p) > POLICY_MAX_RULES) __builtin_trap();

    static const char *const staff[] = {"staff", "helpdesk"};
    static const char *const none[] = {NULL};
    uint32_t ip = 0x0a000001; /* 10.0.0.1 */
    uint16_t port = 22;
    if (size >= 6) {
        memcpy(&ip, data, 4);
        memcpy(&port, data + 4, 2);
    }
    const policy_query_t qs[] = {
        {.src_ip = 0x7f000001, .dst_user = "alice", .port = 22, .proto = POLICY_TCP},
        {.src_ip = ip,
         .dst_user = "alice",
         .dst_groups = staff,
         .n_dst_groups = 2,
         .port = port,
         .proto = POLICY_UDP},
        {.src_ip = ip,
         .src_user = "bob",
         .src_groups = staff,
         .n_src_groups = 2,
         .dst_user = "carol",
         .dst_groups = staff,
         .n_dst_groups = 2,
         .port = 65535,
         .proto = POLICY_TCP},
        {.src_ip = 0,
         .src_user = "",
         .src_groups = none,
         .n_src_groups = 1,
         .dst_user = "",
         .port = 0,
         .proto = 0},
    };
    unsigned max_line = s_lines(data, size);
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        unsigned line = 12345;
        bool allow = policy_allows(p, &qs[i], &line);
        /* An allow always comes from a rule; a line is a line of the input;
         * the answer does not depend on whether line is asked for. */
        if ((allow && line == 0) || line > max_line) __builtin_trap();
        if (policy_rule_count(p) == 0 && (allow || line != 0)) __builtin_trap();
        if (policy_allows(p, &qs[i], NULL) != allow) __builtin_trap();
    }
    policy_destroy(&p);
    if (p) __builtin_trap();
    return 0;
}
