// part: client
/* Fuzz target for what reachback-ctl reads from the network: arbitrary
 * bytes as a JSON document (ctl_json), walked the way the commands walk it,
 * and as a whole HTTP answer (ctl_http_parse_response). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ctl_http.h"
#include "ctl_json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Visits every node; the promises: indices stay in range and text is a
 * C string. */
static size_t s_walk(const ctl_json_t *j, int v, int depth)
{
    if (depth > CTL_JSON_MAX_DEPTH + 1) __builtin_trap();
    size_t n = strlen(ctl_json_str(j, v));
    const char *k = ctl_json_key(j, v);
    if (k) n += strlen(k);
    for (int c = ctl_json_child(j, v); c != CTL_JSON_NONE; c = ctl_json_next(j, c))
        n += s_walk(j, c, depth + 1);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[160];
    ctl_json_t *j = ctl_json_parse((const char *)data, size, err, sizeof err);
    if (j) {
        int root = ctl_json_root(j);
        s_walk(j, root, 0);
        (void)ctl_json_field(j, root, "user");
        (void)ctl_json_field(j, ctl_json_child(j, root), "since_ms");
        ctl_json_free(&j);
    }
    int status;
    rb_buf_t body = RB_BUF_INIT;
    if (ctl_http_parse_response((const char *)data, size, &status, &body, err, sizeof err) == 0 &&
        (status < 100 || status > 599))
        __builtin_trap();
    rb_buf_free(&body);
    return 0;
}
