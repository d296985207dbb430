/* forwarder_policy: the example policy of the header evaluated for many
 * queries (first match wins, default deny, port ranges and their edges,
 * the proto filter, device sources against CIDR sources, the target's
 * groups); every kind of malformed line with its exact "name:line:" error;
 * the limits; empty policies; comments and CRLF; policy_load. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forwarder_policy.h"
#include "rb_cidr.h"

#define NAME "policy.conf"
/* A NULL-terminated list of groups. */
#define G(...) ((const char *const[]){__VA_ARGS__, NULL})

/* The example of forwarder_policy.h; its rules are on lines 2 to 5. */
static const char s_example[] = "# action  source           target           ports          proto\n"
                                "allow     127.0.0.0/8      *                *              any\n"
                                "allow     10.0.0.0/8       group:helpdesk   22,5900-5910   tcp\n"
                                "deny      user:bob         user:alice       *              any\n"
                                "allow     group:staff      group:staff      1024-65535     tcp\n";

static size_t s_count(const char *const *l)
{
    size_t n = 0;
    while (l && l[n])
        n++;
    return n;
}

/* Asserts that the query is decided as allow by rule line (0: no rule). */
static void s_expect(int at, const policy_t *p, const char *ip, const char *su,
                     const char *const *sg, const char *du, const char *const *dg, uint16_t port,
                     int proto, bool allow, unsigned line)
{
    policy_query_t q = {.src_user = su,
                        .src_groups = sg,
                        .n_src_groups = s_count(sg),
                        .dst_user = du,
                        .dst_groups = dg,
                        .n_dst_groups = s_count(dg),
                        .port = port,
                        .proto = proto};
    if (rb_ip_parse(ip, &q.src_ip) != 0) fail_msg("test line %d: bad address %s", at, ip);
    unsigned got_line = 12345;
    bool got = policy_allows(p, &q, &got_line);
    if (got != allow || got_line != line)
        fail_msg("test line %d: %s by line %u, want %s by line %u", at, got ? "allow" : "deny",
                 got_line, allow ? "allow" : "deny", line);
    /* line may be NULL. */
    assert_true(policy_allows(p, &q, NULL) == allow);
}
#define ALLOW(line, ...) s_expect(__LINE__, p, __VA_ARGS__, true, line)
#define DENY(line, ...) s_expect(__LINE__, p, __VA_ARGS__, false, line)

static policy_t *s_parse(const char *text)
{
    char err[512] = "";
    policy_t *p = policy_parse(text, strlen(text), NAME, err, sizeof err);
    if (!p) fail_msg("parse failed: %s", err);
    return p;
}

/* Asserts that text (len bytes) fails with exactly want (or, when prefix,
 * with an error starting with want). */
static void s_fails(int at, const char *text, size_t len, const char *want, bool prefix)
{
    char err[1024] = "";
    policy_t *p = policy_parse(text, len, NAME, err, sizeof err);
    if (p) {
        policy_destroy(&p);
        fail_msg("test line %d: parsed, want \"%s\"", at, want);
    }
    if (prefix ? strncmp(err, want, strlen(want)) != 0 : strcmp(err, want) != 0)
        fail_msg("test line %d: err \"%s\", want \"%s\"%s", at, err, want, prefix ? "..." : "");
}
#define FAILS(text, want) s_fails(__LINE__, text, strlen(text), want, false)
#define FAILS_PREFIX(text, want) s_fails(__LINE__, text, strlen(text), want, true)

static void test_example_addresses(void **state)
{
    (void)state;
    policy_t *p = s_parse(s_example);
    assert_int_equal(policy_rule_count(p), 4);
    /* Loopback reaches anyone on any port and protocol, edges included. */
    ALLOW(2, "127.0.0.1", NULL, NULL, "alice", NULL, 22, POLICY_TCP);
    ALLOW(2, "127.255.255.255", NULL, NULL, "bob", NULL, 1, POLICY_UDP);
    ALLOW(2, "127.0.0.0", NULL, NULL, "bob", NULL, 65535, POLICY_TCP);
    DENY(0, "128.0.0.0", NULL, NULL, "bob", NULL, 22, POLICY_TCP);
    DENY(0, "126.255.255.255", NULL, NULL, "bob", NULL, 22, POLICY_TCP);
    /* 10/8 reaches the helpdesk's users on 22 and 5900..5910 over TCP only. */
    const char *const *hd = G("staff", "helpdesk");
    ALLOW(3, "10.1.2.3", NULL, NULL, "carol", hd, 22, POLICY_TCP);
    ALLOW(3, "10.255.255.255", NULL, NULL, "carol", hd, 5900, POLICY_TCP);
    ALLOW(3, "10.0.0.0", NULL, NULL, "carol", hd, 5905, POLICY_TCP);
    ALLOW(3, "10.1.2.3", NULL, NULL, "carol", hd, 5910, POLICY_TCP);
    DENY(0, "10.1.2.3", NULL, NULL, "carol", hd, 5899, POLICY_TCP);
    DENY(0, "10.1.2.3", NULL, NULL, "carol", hd, 5911, POLICY_TCP);
    DENY(0, "10.1.2.3", NULL, NULL, "carol", hd, 21, POLICY_TCP);
    DENY(0, "10.1.2.3", NULL, NULL, "carol", hd, 23, POLICY_TCP);
    DENY(0, "10.1.2.3", NULL, NULL, "carol", hd, 22, POLICY_UDP);
    DENY(0, "11.0.0.1", NULL, NULL, "carol", hd, 22, POLICY_TCP);
    /* The target must be in the group; names are case-sensitive. */
    DENY(0, "10.1.2.3", NULL, NULL, "carol", G("staff"), 22, POLICY_TCP);
    DENY(0, "10.1.2.3", NULL, NULL, "carol", G("Helpdesk"), 22, POLICY_TCP);
    DENY(0, "10.1.2.3", NULL, NULL, "helpdesk", NULL, 22, POLICY_TCP);
    DENY(0, "10.1.2.3", NULL, NULL, "carol", NULL, 22, POLICY_TCP);
    policy_destroy(&p);
    assert_null(p);
}

static void test_example_devices(void **state)
{
    (void)state;
    policy_t *p = s_parse(s_example);
    /* Devices have intranet addresses outside 10/8 and 127/8 here. */
    const char *const *staff = G("staff");
    /* bob may not reach alice, whatever her groups (line 4 before line 5). */
    DENY(4, "100.64.0.2", "bob", staff, "alice", staff, 2000, POLICY_TCP);
    DENY(4, "100.64.0.2", "bob", NULL, "alice", NULL, 22, POLICY_UDP);
    DENY(4, "100.64.0.2", "bob", NULL, "alice", NULL, 1, POLICY_TCP);
    /* ... but a CIDR source matches on the address even for a device: from
     * 10/8 the helpdesk rule comes first. */
    ALLOW(3, "10.9.9.9", "bob", staff, "alice", G("helpdesk"), 22, POLICY_TCP);
    ALLOW(2, "127.0.0.1", "bob", NULL, "alice", NULL, 80, POLICY_TCP);
    /* Staff to staff on 1024..65535 over TCP. */
    ALLOW(5, "100.64.0.2", "bob", staff, "carol", staff, 1024, POLICY_TCP);
    ALLOW(5, "100.64.0.2", "bob", G("x", "staff"), "carol", G("y", "staff"), 65535, POLICY_TCP);
    DENY(0, "100.64.0.2", "bob", staff, "carol", staff, 1023, POLICY_TCP);
    DENY(0, "100.64.0.2", "bob", staff, "carol", staff, 2000, POLICY_UDP);
    DENY(0, "100.64.0.2", "bob", staff, "carol", G("helpdesk"), 2000, POLICY_TCP);
    DENY(0, "100.64.0.2", "bob", G("Staff"), "carol", staff, 2000, POLICY_TCP);
    /* Other users are not bob: carol may reach alice when both are staff. */
    ALLOW(5, "100.64.0.3", "carol", staff, "alice", staff, 2000, POLICY_TCP);
    DENY(0, "100.64.0.3", "Bob", NULL, "alice", NULL, 2000, POLICY_TCP);
    /* Without a logged-on device, user: and group: sources never match,
     * even with groups in the query. */
    DENY(0, "100.64.0.2", NULL, staff, "carol", staff, 2000, POLICY_TCP);
    policy_destroy(&p);
}

static void test_sources(void **state)
{
    (void)state;
    policy_t *p = s_parse("deny device user:x * any\n"
                          "allow device * 22\n"
                          "allow 192.168.1.7 * 80\n"
                          "allow * group:open 443 udp\n");
    assert_int_equal(policy_rule_count(p), 4);
    ALLOW(2, "1.2.3.4", "anyone", NULL, "y", NULL, 22, POLICY_TCP);
    DENY(1, "1.2.3.4", "anyone", NULL, "x", NULL, 22, POLICY_TCP);
    DENY(0, "1.2.3.4", NULL, NULL, "y", NULL, 22, POLICY_TCP);
    /* An address without /n is a /32. */
    ALLOW(3, "192.168.1.7", NULL, NULL, "y", NULL, 80, POLICY_UDP);
    ALLOW(3, "192.168.1.7", "dev", NULL, "y", NULL, 80, POLICY_TCP);
    DENY(0, "192.168.1.8", NULL, NULL, "y", NULL, 80, POLICY_TCP);
    /* * source: anything, device or not. */
    ALLOW(4, "0.0.0.0", NULL, NULL, "y", G("open"), 443, POLICY_UDP);
    ALLOW(4, "255.255.255.255", "dev", NULL, "y", G("open"), 443, POLICY_UDP);
    DENY(0, "0.0.0.0", NULL, NULL, "y", G("open"), 443, POLICY_TCP);
    policy_destroy(&p);

    /* 0.0.0.0/0 matches every address; a deny rule decides with its line. */
    p = s_parse("deny 0.0.0.0/0 * *\nallow * * *\n");
    DENY(1, "8.8.8.8", NULL, NULL, "y", NULL, 1, POLICY_TCP);
    DENY(1, "8.8.8.8", "dev", NULL, "y", NULL, 1, POLICY_TCP);
    policy_destroy(&p);
}

static void test_ports_and_proto(void **state)
{
    (void)state;
    policy_t *p = s_parse("allow * * 1 udp\n"
                          "allow * * 65535 tcp\n"
                          "allow * * 100-200,300,400-400,65534-65535 any\n"
                          "allow * * 1-65535 tcp\n");
    ALLOW(1, "1.1.1.1", NULL, NULL, "u", NULL, 1, POLICY_UDP);
    ALLOW(4, "1.1.1.1", NULL, NULL, "u", NULL, 1, POLICY_TCP);
    DENY(0, "1.1.1.1", NULL, NULL, "u", NULL, 2, POLICY_UDP);
    ALLOW(2, "1.1.1.1", NULL, NULL, "u", NULL, 65535, POLICY_TCP);
    ALLOW(3, "1.1.1.1", NULL, NULL, "u", NULL, 65535, POLICY_UDP);
    ALLOW(3, "1.1.1.1", NULL, NULL, "u", NULL, 65534, POLICY_UDP);
    DENY(0, "1.1.1.1", NULL, NULL, "u", NULL, 65533, POLICY_UDP);
    ALLOW(3, "1.1.1.1", NULL, NULL, "u", NULL, 100, POLICY_UDP);
    ALLOW(3, "1.1.1.1", NULL, NULL, "u", NULL, 200, POLICY_UDP);
    DENY(0, "1.1.1.1", NULL, NULL, "u", NULL, 99, POLICY_UDP);
    DENY(0, "1.1.1.1", NULL, NULL, "u", NULL, 201, POLICY_UDP);
    ALLOW(3, "1.1.1.1", NULL, NULL, "u", NULL, 300, POLICY_UDP);
    DENY(0, "1.1.1.1", NULL, NULL, "u", NULL, 301, POLICY_UDP);
    ALLOW(3, "1.1.1.1", NULL, NULL, "u", NULL, 400, POLICY_UDP);
    ALLOW(4, "1.1.1.1", NULL, NULL, "u", NULL, 401, POLICY_TCP);
    /* Port 0 is no port: only * matches it. */
    DENY(0, "1.1.1.1", NULL, NULL, "u", NULL, 0, POLICY_TCP);
    policy_destroy(&p);

    /* No proto field means any; * ports match port 0 too. */
    p = s_parse("allow * * *\n");
    ALLOW(1, "1.1.1.1", NULL, NULL, "u", NULL, 0, POLICY_UDP);
    ALLOW(1, "1.1.1.1", NULL, NULL, "u", NULL, 65535, POLICY_TCP);
    policy_destroy(&p);
}

static void test_malformed(void **state)
{
    (void)state;
    FAILS("allow * * *\nallwo * * *\n", NAME ":2: unknown action 'allwo' (expected allow or deny)");
    FAILS("ALLOW * * *", NAME ":1: unknown action 'ALLOW' (expected allow or deny)");
    FAILS("\n\n  allow 10.0.0.1/8 * *\n", NAME ":3: bad address or CIDR '10.0.0.1/8'");
    FAILS("allow 10.0.0.0/33 * *", NAME ":1: bad address or CIDR '10.0.0.0/33'");
    FAILS("allow 10.0.0 * *", NAME ":1: bad address or CIDR '10.0.0'");
    FAILS("allow 010.0.0.0/8 * *", NAME ":1: bad address or CIDR '010.0.0.0/8'");
    FAILS("allow devices * *", NAME ":1: bad source 'devices' (expected *, device, "
                                    "user:NAME, group:NAME or a.b.c.d[/n])");
    FAILS("allow ** * *", NAME ":1: bad source '**' (expected *, device, user:NAME, "
                               "group:NAME or a.b.c.d[/n])");
    FAILS("allow * device *", NAME ":1: bad target 'device' (expected *, user:NAME or group:NAME)");
    FAILS("allow * 10.0.0.0/8 *",
          NAME ":1: bad target '10.0.0.0/8' (expected *, user:NAME or group:NAME)");
    FAILS("allow * users:x *",
          NAME ":1: bad target 'users:x' (expected *, user:NAME or group:NAME)");
    /* Ports. */
    FAILS("# c\n# c\nallow * * 90-80", NAME ":3: bad port range '90-80'");
    FAILS("allow * * 0", NAME ":1: bad port '0'");
    FAILS("allow * * 65536", NAME ":1: bad port '65536'");
    FAILS("allow * * 000022", NAME ":1: bad port '000022'");
    FAILS("allow * * 0-22", NAME ":1: bad port range '0-22'");
    FAILS("allow * * 22-65536", NAME ":1: bad port range '22-65536'");
    FAILS("allow * * 22-", NAME ":1: bad port range '22-'");
    FAILS("allow * * -22", NAME ":1: bad port range '-22'");
    FAILS("allow * * 1-2-3", NAME ":1: bad port range '1-2-3'");
    FAILS("allow * * ssh", NAME ":1: bad port 'ssh'");
    FAILS("allow * * 22x", NAME ":1: bad port '22x'");
    FAILS("allow * * +22", NAME ":1: bad port '+22'");
    FAILS("allow * * 22,*", NAME ":1: bad port '*'");
    FAILS("allow * * 22,,23", NAME ":1: empty item in port list '22,,23'");
    FAILS("allow * * 22,", NAME ":1: empty item in port list '22,'");
    FAILS("allow * * ,22", NAME ":1: empty item in port list ',22'");
    /* Fields. */
    FAILS("allow * *", NAME ":1: missing fields (expected: action source target ports [proto])");
    FAILS("allow", NAME ":1: missing fields (expected: action source target ports [proto])");
    FAILS("allow * * * tcp extra",
          NAME ":1: too many fields (expected: action source target ports [proto])");
    FAILS("allow * * * tcp a b c d e f",
          NAME ":1: too many fields (expected: action source target ports [proto])");
    FAILS("allow * * * icmp", NAME ":1: unknown proto 'icmp' (expected tcp, udp or any)");
    FAILS("allow * * * TCP", NAME ":1: unknown proto 'TCP' (expected tcp, udp or any)");
    /* A stray CR (not part of a line end) is part of a field. */
    FAILS("allow * * *\r tcp\n", NAME ":1: bad port '*\\x0d'");
    FAILS("allow\v* * *", NAME ":1: missing fields (expected: action source target ports "
                               "[proto])");
    /* Names. */
    FAILS("allow user: * *", NAME ":1: empty name in 'user:'");
    FAILS("allow * group: *", NAME ":1: empty name in 'group:'");
    FAILS("allow user:a\x01z * *", NAME ":1: control character in name 'user:a\\x01z'");
    FAILS("allow * group:a\x7fz *", NAME ":1: control character in name 'group:a\\x7fz'");
    FAILS("allow user:a\x1b[31m * *", NAME ":1: control character in name 'user:a\\x1b[31m'");
    char name[300 + 64];
    memset(name, 0, sizeof name);
    strcpy(name, "allow * user:");
    memset(name + strlen(name), 'n', POLICY_NAME_MAX);
    strcat(name, " *");
    policy_t *p = s_parse(name);
    assert_int_equal(policy_rule_count(p), 1);
    policy_destroy(&p);
    strcpy(name, "allow * user:");
    memset(name + strlen(name), 'n', POLICY_NAME_MAX + 1);
    strcat(name, " *");
    /* Quoted text is cut at 64 bytes. */
    char want[256];
    snprintf(want, sizeof want, NAME ":1: name longer than 256 bytes in 'user:%.59s...'",
             name + strlen("allow * user:"));
    FAILS(name, want);
    /* A NUL byte, even in a comment. */
    s_fails(__LINE__, "allow * * *\n# a\0b\n", 18, NAME ":2: NUL byte in line", false);
    /* Quotes and backslashes are escaped too. */
    FAILS("allow * * 'x\\", NAME ":1: bad port '\\x27x\\x5c'");
    /* Only the first error is reported. */
    FAILS("allow * * 1\nbad\nworse * * * * * *", NAME ":2: missing fields (expected: action "
                                                      "source target ports [proto])");
    /* A NULL name and a NULL or short err are fine. */
    char err[64];
    assert_null(policy_parse("x", 1, NULL, err, sizeof err));
    assert_int_equal(strlen(err), sizeof err - 1);
    assert_memory_equal(err, "policy:1: missing fields", 24);
    assert_null(policy_parse("x", 1, NAME, NULL, 0));
    assert_null(policy_parse("x", 1, NAME, err, 0));
    assert_null(policy_parse(NULL, 1, NAME, err, sizeof err));
    assert_string_equal(err, NAME ": no text");
}

static void test_limits(void **state)
{
    (void)state;
    /* 64 port items are fine, 65 are not. */
    char line[1024] = "allow * * 1";
    for (int i = 2; i <= POLICY_MAX_PORT_ITEMS; i++)
        snprintf(line + strlen(line), sizeof line - strlen(line), ",%d", i);
    policy_t *p = s_parse(line);
    ALLOW(1, "1.1.1.1", NULL, NULL, "u", NULL, 64, POLICY_TCP);
    DENY(0, "1.1.1.1", NULL, NULL, "u", NULL, 65, POLICY_TCP);
    policy_destroy(&p);
    strcat(line, ",65");
    FAILS_PREFIX(line, NAME ":1: more than 64 port items in '1,2,3,");

    /* A line of exactly 4096 bytes (without its end) is fine, with LF or
     * CRLF or none; one more byte is not. */
    size_t big = POLICY_MAX_LINE + 16;
    char *text = malloc(big);
    assert_non_null(text);
    const char *ends[] = {"\n", "\r\n", ""};
    for (size_t e = 0; e < 3; e++) {
        memset(text, ' ', big);
        memcpy(text, "allow * * 22", 12);
        memcpy(text + 40, "# padding", 9);
        strcpy(text + POLICY_MAX_LINE, ends[e]);
        p = s_parse(text);
        assert_int_equal(policy_rule_count(p), 1);
        policy_destroy(&p);
        memset(text, ' ', big);
        memcpy(text, "# c\nallow * * 22", 16);
        strcpy(text + 4 + POLICY_MAX_LINE + 1, ends[e]);
        FAILS(text, NAME ":2: line longer than 4096 bytes");
    }
    free(text);

    /* 10000 rules are fine; the 10001st fails on its line. */
    size_t cap = (POLICY_MAX_RULES + 2) * 16;
    text = malloc(cap);
    assert_non_null(text);
    size_t n = 0;
    n += (size_t)snprintf(text + n, cap - n, "# many\n");
    for (int i = 0; i < POLICY_MAX_RULES; i++)
        n += (size_t)snprintf(text + n, cap - n, "deny * * %d\n", i % 65535 + 1);
    p = s_parse(text);
    assert_int_equal(policy_rule_count(p), POLICY_MAX_RULES);
    DENY(POLICY_MAX_RULES + 1, "1.1.1.1", NULL, NULL, "u", NULL, 10000, POLICY_TCP);
    DENY(0, "1.1.1.1", NULL, NULL, "u", NULL, 10001, POLICY_TCP);
    policy_destroy(&p);
    snprintf(text + n, cap - n, "\n# gap\nallow * * *\n");
    FAILS(text, NAME ":10004: more than 10000 rules");
    free(text);

    /* 4 MiB of comments are fine; one byte more is not. */
    text = malloc(POLICY_MAX_BYTES + 1);
    assert_non_null(text);
    memset(text, '#', POLICY_MAX_BYTES + 1);
    for (size_t i = 100; i < POLICY_MAX_BYTES; i += 101)
        text[i] = '\n';
    char err[256] = "";
    p = policy_parse(text, POLICY_MAX_BYTES, NAME, err, sizeof err);
    assert_non_null(p);
    assert_int_equal(policy_rule_count(p), 0);
    policy_destroy(&p);
    assert_null(policy_parse(text, POLICY_MAX_BYTES + 1, NAME, err, sizeof err));
    assert_string_equal(err, NAME ": larger than 4194304 bytes");
    free(text);
}

static void test_empty(void **state)
{
    (void)state;
    const char *empties[] = {
        "", "\n", "\r\n", "   \t  \n\n", "# only\n  # comments\r\n#", "#allow * * *"};
    for (size_t i = 0; i < sizeof empties / sizeof empties[0]; i++) {
        policy_t *p = s_parse(empties[i]);
        assert_int_equal(policy_rule_count(p), 0);
        DENY(0, "127.0.0.1", NULL, NULL, "u", NULL, 22, POLICY_TCP);
        DENY(0, "10.0.0.1", "dev", G("g"), "u", G("g"), 22, POLICY_UDP);
        policy_destroy(&p);
    }
    char err[64] = "";
    policy_t *p = policy_parse(NULL, 0, NAME, err, sizeof err);
    assert_non_null(p);
    assert_int_equal(policy_rule_count(p), 0);
    policy_destroy(&p);
}

static void test_comments_and_crlf(void **state)
{
    (void)state;
    policy_t *p = s_parse("# header\r\n"
                          "\r\n"
                          "deny user:bob * *   # bob is out\r\n"
                          "\t allow\t*  *\t22,80 tcp#no space before the comment\r\n"
                          "   # indented comment\r\n"
                          "allow * * 443 udp"); /* no line end at all */
    assert_int_equal(policy_rule_count(p), 3);
    DENY(3, "1.1.1.1", "bob", NULL, "u", NULL, 22, POLICY_TCP);
    ALLOW(4, "1.1.1.1", "carol", NULL, "u", NULL, 80, POLICY_TCP);
    ALLOW(6, "1.1.1.1", NULL, NULL, "u", NULL, 443, POLICY_UDP);
    DENY(0, "1.1.1.1", NULL, NULL, "u", NULL, 443, POLICY_TCP);
    policy_destroy(&p);
    /* Names end at '#'. */
    FAILS("allow user:a#b * *", NAME ":1: missing fields (expected: action source target ports "
                                     "[proto])");
    /* Line numbers count CRLF lines. */
    FAILS("# a\r\n\r\nallow * * 80-1\r\n", NAME ":3: bad port range '80-1'");
    /* Mixed line ends, and a blank final line. */
    p = s_parse("allow * * 1\nallow * * 2\r\nallow * * 3\n\n");
    assert_int_equal(policy_rule_count(p), 3);
    ALLOW(3, "1.1.1.1", NULL, NULL, "u", NULL, 3, POLICY_TCP);
    policy_destroy(&p);
}

static void test_null_arguments(void **state)
{
    (void)state;
    policy_t *p = s_parse("allow * group:g *\nallow group:h * *\n");
    policy_query_t q = {.dst_user = "u", .dst_groups = NULL, .n_dst_groups = 3, .port = 22};
    unsigned line = 99;
    /* Group lists that are NULL, or hold NULL entries, match nothing. */
    assert_false(policy_allows(p, &q, &line));
    assert_int_equal(line, 0);
    const char *const with_null[] = {NULL, "g"};
    q.dst_groups = with_null;
    q.n_dst_groups = 2;
    assert_true(policy_allows(p, &q, &line));
    assert_int_equal(line, 1);
    q.dst_groups = NULL;
    q.n_dst_groups = 0;
    q.src_user = "dev";
    q.n_src_groups = 5;
    assert_false(policy_allows(p, &q, &line));
    line = 99;
    assert_false(policy_allows(NULL, &q, &line));
    assert_int_equal(line, 0);
    line = 99;
    assert_false(policy_allows(p, NULL, &line));
    assert_int_equal(line, 0);
    assert_int_equal(policy_rule_count(NULL), 0);
    policy_destroy(&p);
    assert_null(p);
    policy_destroy(&p);
    policy_destroy(NULL);
}

/* Writes len bytes to a new file in dir; returns its path (static). */
static const char *s_write(const char *dir, const char *name, const char *text, size_t len)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void test_load(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    char dir[256];
    snprintf(dir, sizeof dir, "%s/rb-policy-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(dir));
    char err[512] = "", want[1024];

    /* A good file. */
    const char *path = s_write(dir, "good.conf", s_example, strlen(s_example));
    policy_t *p = policy_load(path, err, sizeof err);
    assert_non_null(p);
    assert_int_equal(policy_rule_count(p), 4);
    DENY(4, "100.64.0.2", "bob", NULL, "alice", NULL, 22, POLICY_TCP);
    policy_destroy(&p);
    assert_int_equal(unlink(path), 0);

    /* A bad one names the path and the line. */
    path = s_write(dir, "bad.conf", "allow * * *\nallow * * 22 sctp\n",
                   strlen("allow * * *\nallow * * 22 sctp\n"));
    assert_null(policy_load(path, err, sizeof err));
    snprintf(want, sizeof want, "%s:2: unknown proto 'sctp' (expected tcp, udp or any)", path);
    assert_string_equal(err, want);
    assert_int_equal(unlink(path), 0);

    /* Missing, a directory, too large. */
    snprintf(want, sizeof want, "%s/missing.conf", dir);
    assert_null(policy_load(want, err, sizeof err));
    strcat(want, ": cannot read: No such file or directory");
    assert_string_equal(err, want);
    assert_null(policy_load(dir, err, sizeof err));
    snprintf(want, sizeof want, "%s: cannot read: Is a directory", dir);
    assert_string_equal(err, want);
    assert_null(policy_load(NULL, err, sizeof err));
    assert_null(policy_load("/nonexistent/x", NULL, 0));

    char *big = malloc(POLICY_MAX_BYTES + 1);
    assert_non_null(big);
    memset(big, '\n', POLICY_MAX_BYTES + 1);
    path = s_write(dir, "big.conf", big, POLICY_MAX_BYTES);
    p = policy_load(path, err, sizeof err);
    assert_non_null(p);
    assert_int_equal(policy_rule_count(p), 0);
    policy_destroy(&p);
    path = s_write(dir, "big.conf", big, POLICY_MAX_BYTES + 1);
    assert_null(policy_load(path, err, sizeof err));
    snprintf(want, sizeof want, "%s: larger than 4194304 bytes", path);
    assert_string_equal(err, want);
    assert_int_equal(unlink(path), 0);
    free(big);

    /* An empty file denies everything. */
    path = s_write(dir, "empty.conf", "", 0);
    p = policy_load(path, err, sizeof err);
    assert_non_null(p);
    DENY(0, "127.0.0.1", NULL, NULL, "u", NULL, 22, POLICY_TCP);
    policy_destroy(&p);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_addresses),
        cmocka_unit_test(test_example_devices),
        cmocka_unit_test(test_sources),
        cmocka_unit_test(test_ports_and_proto),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_comments_and_crlf),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
