/* ctl_json and ctl_http's response reader: the broker's shapes (an array
 * of flat objects, a flat object, kick's one nested object), escapes and
 * UTF-8, and hostile input: truncation at every byte, deep nesting, huge
 * strings, bad escapes and surrogates, control bytes, trailing garbage,
 * numbers off the grammar; HTTP answers truncated, oversized or chunked. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ctl_http.h"
#include "ctl_json.h"

static ctl_json_t *s_parse(const char *text)
{
    char err[160];
    return ctl_json_parse(text, strlen(text), err, sizeof err);
}

static void s_reject(const char *text, const char *want)
{
    char err[160] = "";
    ctl_json_t *j = ctl_json_parse(text, strlen(text), err, sizeof err);
    if (j) fail_msg("accepted: %s", text);
    if (want && !strstr(err, want)) fail_msg("'%s': error '%s' lacks '%s'", text, err, want);
}

static const char *s_sessions =
    "[{\"session\":\"9f3a\",\"user\":\"alice\",\"ip\":\"10.9.0.2\",\"fqdn\":\"alice.vpn.lab\","
    "\"device\":\"laptop\",\"edge\":\"edge1\",\"since_ms\":1764092412000,"
    "\"last_seen_ms\":1764092499000,\"via_transfer\":false},\n"
    " {\"session\":\"77b1\",\"user\":\"CORP\\\\bob\",\"ip\":\"\",\"fqdn\":\"\",\"device\":\"ph\\u00f6ne\","
    "\"edge\":\"edge2\",\"since_ms\":0,\"last_seen_ms\":1,\"via_transfer\":true}]\n";

static void test_broker_shapes(void **state)
{
    ctl_json_t *j = s_parse(s_sessions);
    assert_non_null(j);
    int root = ctl_json_root(j);
    assert_int_equal(ctl_json_type(j, root), CTL_JSON_ARRAY);
    assert_int_equal(ctl_json_count(j, root), 2);
    int a = ctl_json_child(j, root);
    int b = ctl_json_next(j, a);
    assert_int_equal(ctl_json_next(j, b), CTL_JSON_NONE);
    assert_string_equal(ctl_json_field(j, a, "user"), "alice");
    assert_string_equal(ctl_json_field(j, a, "since_ms"), "1764092412000");
    assert_int_equal(ctl_json_type(j, ctl_json_get(j, a, "since_ms")), CTL_JSON_NUMBER);
    assert_string_equal(ctl_json_field(j, a, "via_transfer"), "false");
    assert_string_equal(ctl_json_field(j, b, "user"), "CORP\\bob");
    assert_string_equal(ctl_json_field(j, b, "device"), "ph\xc3\xb6ne");
    assert_string_equal(ctl_json_field(j, b, "ip"), "");
    assert_string_equal(ctl_json_field(j, b, "missing"), "");
    assert_int_equal(ctl_json_get(j, b, "missing"), CTL_JSON_NONE);
    assert_int_equal(ctl_json_type(j, ctl_json_get(j, b, "via_transfer")), CTL_JSON_TRUE);
    ctl_json_free(&j);
    assert_null(j);
    ctl_json_free(NULL);

    j = s_parse("{\"kicked\":true,\"session\":{\"session\":\"9f3a\",\"edge\":\"edge1\"}}");
    assert_non_null(j);
    int sv = ctl_json_get(j, ctl_json_root(j), "session");
    assert_int_equal(ctl_json_type(j, sv), CTL_JSON_OBJECT);
    assert_string_equal(ctl_json_field(j, sv, "edge"), "edge1");
    assert_string_equal(ctl_json_str(j, sv), "");   /* containers have no text */
    ctl_json_free(&j);

    j = s_parse(" [ ] ");
    assert_non_null(j);
    assert_int_equal(ctl_json_count(j, ctl_json_root(j)), 0);
    ctl_json_free(&j);
    j = s_parse("{\"a\":\"\\ud83d\\ude00 \\\"q\\\" \\/ \\n\",\"n\":-0.5e+3,\"z\":null}");
    assert_non_null(j);
    assert_string_equal(ctl_json_field(j, ctl_json_root(j), "a"), "\xf0\x9f\x98\x80 \"q\" / \n");
    assert_string_equal(ctl_json_field(j, ctl_json_root(j), "n"), "-0.5e+3");
    assert_string_equal(ctl_json_field(j, ctl_json_root(j), "z"), "null");
    ctl_json_free(&j);
    /* Out-of-range indices are absent, not a crash. */
    assert_string_equal(ctl_json_str(NULL, 5), "");
    j = s_parse("1");
    assert_string_equal(ctl_json_str(j, 99), "");
    assert_int_equal(ctl_json_child(j, -7), CTL_JSON_NONE);
    assert_null(ctl_json_key(j, 0));
    ctl_json_free(&j);
}

/* Every proper prefix of a valid document is refused. */
static void test_truncated(void **state)
{
    size_t n = strlen(s_sessions);
    /* The document ends at its closing bracket; only whitespace follows. */
    size_t last = n;
    while (last > 0 && (s_sessions[last - 1] == '\n' || s_sessions[last - 1] == ' ')) last--;
    for (size_t i = 0; i < last; i++) {
        char *cut = malloc(i + 1);
        memcpy(cut, s_sessions, i);
        cut[i] = '\0';
        char err[160];
        ctl_json_t *j = ctl_json_parse(cut, i, err, sizeof err);
        if (j) fail_msg("prefix of %zu bytes accepted", i);
        free(cut);
    }
    /* Lengths are honoured: no reading past len even without a NUL. */
    char buf[4] = {'[', '1', ',', '2'};
    char err[160];
    assert_null(ctl_json_parse(buf, sizeof buf, err, sizeof err));
    assert_null(ctl_json_parse("", 0, err, sizeof err));
    assert_null(ctl_json_parse(NULL, 0, NULL, 0));
}

static void test_hostile(void **state)
{
    /* Deep nesting: refused at the limit, not by the stack. */
    size_t depth = 100000;
    char *deep = malloc(depth * 2 + 1);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    deep[depth * 2] = '\0';
    s_reject(deep, "nested deeper");
    for (size_t i = 0; i < depth; i++) deep[i] = i % 2 ? '[' : '{';
    s_reject(deep, NULL);
    free(deep);
    char ok[64] = "";
    for (int i = 0; i < CTL_JSON_MAX_DEPTH; i++) strcat(ok, "[");
    for (int i = 0; i < CTL_JSON_MAX_DEPTH; i++) strcat(ok, "]");
    ctl_json_t *j = s_parse(ok);
    assert_non_null(j);
    ctl_json_free(&j);

    /* A huge string is fine while under the input limit ... */
    size_t big = 4u * 1024 * 1024;
    char *s = malloc(big + 3);
    s[0] = '"';
    memset(s + 1, 'x', big);
    s[big + 1] = '"';
    s[big + 2] = '\0';
    j = s_parse(s);
    assert_non_null(j);
    assert_int_equal(strlen(ctl_json_str(j, ctl_json_root(j))), big);
    ctl_json_free(&j);
    /* ... and unterminated it is refused. */
    s[big + 1] = 'x';
    s_reject(s, "unterminated string");
    free(s);
    /* Over the input limit: refused before parsing. */
    char err[160];
    assert_null(ctl_json_parse("[]", (size_t)CTL_JSON_MAX_INPUT + 1, err, sizeof err));
    assert_non_null(strstr(err, "larger"));

    s_reject("[1,2", "truncated");
    s_reject("{\"a\":1", "truncated");
    s_reject("{\"a\" 1}", "expected ':'");
    s_reject("{1:2}", "member name");
    s_reject("[1 2]", "expected ','");
    s_reject("[1,]", "unexpected character");
    s_reject("[] x", "trailing");
    s_reject("\"a\x01b\"", "control character");
    s_reject("\"a\\qb\"", "bad escape");
    s_reject("\"\\u12G4\"", "bad \\u");
    s_reject("\"\\u12\"", NULL);
    s_reject("\"\\ud800\"", "lone high surrogate");
    s_reject("\"\\ud800\\u0041\"", "bad surrogate pair");
    s_reject("\"\\udc00\"", "lone low surrogate");
    s_reject("\"abc\\", "truncated escape");
    s_reject("01", "trailing");
    s_reject("-", "bad number");
    s_reject("1.", "bad number");
    s_reject("1e", "bad number");
    s_reject(".5", "unexpected");
    s_reject("tru", "unexpected");
    s_reject("nulll", "trailing");
    s_reject("{\"a\":}", "unexpected");
    /* NUL inside a string arrives as \u0000: the text ends there. */
    j = s_parse("\"ab\\u0000cd\"");
    assert_non_null(j);
    assert_string_equal(ctl_json_str(j, ctl_json_root(j)), "ab");
    ctl_json_free(&j);
}

static void test_http_response(void **state)
{
    int status = 0;
    rb_buf_t body = RB_BUF_INIT;
    char err[160];
    const char *r1 = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]xx";
    assert_int_equal(ctl_http_parse_response(r1, strlen(r1), &status, &body, err, sizeof err), 0);
    assert_int_equal(status, 200);
    assert_int_equal(body.len, 2);
    assert_memory_equal(body.data, "[]", 2);
    rb_buf_reset(&body);
    const char *r2 = "HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n"
                     "3\r\n{\"a\r\n4;ext\r\n\":1}\r\n0\r\n\r\n";
    assert_int_equal(ctl_http_parse_response(r2, strlen(r2), &status, &body, err, sizeof err), 0);
    assert_int_equal(status, 401);
    assert_int_equal(body.len, 7);
    assert_memory_equal(body.data, "{\"a\":1}", 7);
    rb_buf_reset(&body);
    const char *r3 = "HTTP/1.0 404 Not Found\r\n\r\nuntil close";
    assert_int_equal(ctl_http_parse_response(r3, strlen(r3), &status, &body, err, sizeof err), 0);
    assert_int_equal(status, 404);
    assert_int_equal(body.len, 11);
    rb_buf_reset(&body);

    static const char *bad[] = {
        "",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 2x0 OK\r\n\r\n",
        "SMTP 220 hello\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (ctl_http_parse_response(bad[i], strlen(bad[i]), &status, &body, err, sizeof err) == 0)
            fail_msg("accepted bad answer %zu", i);
        rb_buf_reset(&body);
    }
    rb_buf_free(&body);

    char host[64], port[8], prefix[64];
    assert_int_equal(ctl_http_parse_url("http://127.0.0.1:8080", host, sizeof host, port,
                                        sizeof port, prefix, sizeof prefix, err, sizeof err),
                     0);
    assert_string_equal(host, "127.0.0.1");
    assert_string_equal(port, "8080");
    assert_string_equal(prefix, "");
    assert_int_equal(ctl_http_parse_url("http://[::1]:9/api/", host, sizeof host, port,
                                        sizeof port, prefix, sizeof prefix, err, sizeof err),
                     0);
    assert_string_equal(host, "::1");
    assert_string_equal(prefix, "/api");
    static const char *bad_urls[] = {"https://a:1", "http://a", "http://:1", "http://a:",
                                     "http://a:1x", "http://[::1]", "ftp://a:1"};
    for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++)
        assert_int_equal(ctl_http_parse_url(bad_urls[i], host, sizeof host, port, sizeof port,
                                            prefix, sizeof prefix, err, sizeof err),
                         -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_shapes),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_http_response),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
