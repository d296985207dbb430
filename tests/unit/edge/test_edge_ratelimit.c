/* edge_ratelimit: the sliding window, the lockout and its end, per-user and
 * per-address limits, forgetting on success, expiry and the table cap.
 * Time is passed in, so the tests step through minutes instantly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <cmocka.h>

#include "edge_ratelimit.h"

#define S 1000ull   /* ms per second */

static edge_rl_t *s_new(size_t cap)
{
    edge_rl_config_t cfg = {.max_user = 5, .max_addr = 20, .window_s = 60, .lockout_s = 60,
                            .cap = cap};
    edge_rl_t *rl = edge_rl_new(&cfg);
    assert_non_null(rl);
    return rl;
}

static void test_window_and_lockout(void **state)
{
    edge_rl_t *rl = s_new(0);
    uint64_t t = 1000 * S;
    /* Four failures: still allowed. */
    for (int i = 0; i < 4; i++) {
        assert_false(edge_rl_blocked(rl, "alice", "10.0.0.1", t));
        edge_rl_failure(rl, "alice", "10.0.0.1", t);
        t += 5 * S;
    }
    assert_false(edge_rl_blocked(rl, "alice", "10.0.0.1", t));
    /* The fifth within the window locks the user, from any address. */
    edge_rl_failure(rl, "alice", "10.0.0.1", t);
    uint64_t locked_at = t;
    assert_true(edge_rl_blocked(rl, "alice", "10.0.0.1", t + 1));
    assert_true(edge_rl_blocked(rl, "alice", "10.9.9.9", t + 30 * S));
    assert_false(edge_rl_blocked(rl, "bob", "10.9.9.9", t + 30 * S));
    /* The lockout ends lockout_s after the failure that reached the limit. */
    assert_true(edge_rl_blocked(rl, "alice", "10.0.0.2", locked_at + 60 * S - 1));
    assert_false(edge_rl_blocked(rl, "alice", "10.0.0.2", locked_at + 60 * S));
    edge_rl_destroy(&rl);
    assert_null(rl);
    edge_rl_destroy(NULL);
}

static void test_window_slides(void **state)
{
    edge_rl_t *rl = s_new(0);
    /* Five failures spread over more than the window never lock. */
    uint64_t t = 1000 * S;
    for (int i = 0; i < 20; i++) {
        edge_rl_failure(rl, "alice", "10.0.0.1", t);
        assert_false(edge_rl_blocked(rl, "alice", "10.0.0.1", t));
        t += 16 * S;   /* 4 failures per 64 s */
    }
    /* ...but a burst after them does, counting only the recent ones. */
    t -= 16 * S;
    edge_rl_failure(rl, "alice", "10.0.0.1", t + 1 * S);
    assert_true(edge_rl_blocked(rl, "alice", "10.0.0.1", t + 1 * S));
    edge_rl_destroy(&rl);
}

static void test_per_address(void **state)
{
    edge_rl_t *rl = s_new(0);
    uint64_t t = 1000 * S;
    /* One address guessing 20 different users trips the address limit,
     * though no single user reached 5. */
    for (int i = 0; i < 20; i++) {
        char user[16];
        snprintf(user, sizeof user, "u%d", i);
        assert_false(edge_rl_blocked(rl, user, "10.6.6.6", t));
        edge_rl_failure(rl, user, "10.6.6.6", t);
        t += S;
    }
    assert_true(edge_rl_blocked(rl, "alice", "10.6.6.6", t));
    assert_false(edge_rl_blocked(rl, "alice", "10.0.0.1", t));
    assert_int_equal(edge_rl_users(rl), 20);
    assert_int_equal(edge_rl_addrs(rl), 1);
    edge_rl_destroy(&rl);
}

static void test_success_forgets_user_only(void **state)
{
    edge_rl_t *rl = s_new(0);
    uint64_t t = 1000 * S;
    for (int i = 0; i < 4; i++) edge_rl_failure(rl, "alice", "10.0.0.1", t + (uint64_t)i);
    edge_rl_success(rl, "alice", t + 10);
    assert_int_equal(edge_rl_users(rl), 0);
    assert_int_equal(edge_rl_addrs(rl), 1);
    /* Four more do not lock: the count started again. */
    for (int i = 0; i < 4; i++) edge_rl_failure(rl, "alice", "10.0.0.1", t + 20 + (uint64_t)i);
    assert_false(edge_rl_blocked(rl, "alice", "10.0.0.1", t + 30));
    edge_rl_destroy(&rl);
}

static void test_expiry_and_cap(void **state)
{
    edge_rl_t *rl = s_new(8);
    uint64_t t = 1000 * S;
    for (int i = 0; i < 8; i++) {
        char user[16], addr[16];
        snprintf(user, sizeof user, "u%d", i);
        snprintf(addr, sizeof addr, "10.0.0.%d", i);
        edge_rl_failure(rl, user, addr, t + (uint64_t)i);
    }
    assert_int_equal(edge_rl_users(rl), 8);
    /* Full: a new key evicts the oldest (u0), never grows the table. */
    edge_rl_failure(rl, "new", "10.1.1.1", t + 100);
    assert_int_equal(edge_rl_users(rl), 8);
    assert_int_equal(edge_rl_addrs(rl), 8);
    /* Lock one user, then let everything age out. */
    for (int i = 0; i < 5; i++) edge_rl_failure(rl, "locked", "10.2.2.2", t + 200);
    assert_true(edge_rl_blocked(rl, "locked", "10.3.3.3", t + 300));
    assert_int_equal(edge_rl_users(rl), 8);
    /* After max(window, lockout) past the last failure, entries go. */
    assert_false(edge_rl_blocked(rl, "locked", "10.3.3.3", t + 200 + 60 * S));
    assert_int_equal(edge_rl_users(rl), 0);
    assert_int_equal(edge_rl_addrs(rl), 0);
    edge_rl_destroy(&rl);
}

static void test_bad_config(void **state)
{
    edge_rl_config_t cfg = {.max_user = 0, .max_addr = 20, .window_s = 60, .lockout_s = 60};
    assert_null(edge_rl_new(&cfg));
    cfg.max_user = 5;
    cfg.window_s = 0;
    assert_null(edge_rl_new(&cfg));
    cfg.window_s = 60;
    cfg.max_addr = EDGE_RL_MAX_FAILURES + 1;
    assert_null(edge_rl_new(&cfg));
}

/* Checks in flight count like failures until they end; ending one without
 * a failure gives its place back; nothing stays counted. */
static void test_checks_in_flight(void **state)
{
    edge_rl_t *rl = s_new(0);
    uint64_t t = 1000 * S;
    char user[16];
    for (int i = 0; i < 20; i++) {
        snprintf(user, sizeof user, "u%d", i);
        assert_int_equal(edge_rl_begin(rl, user, "10.0.0.1", t), EDGE_RL_GO);
    }
    assert_int_equal(edge_rl_in_flight(rl, "10.0.0.1"), 20);
    /* The address has 20 in flight: a 21st waits, another address not. */
    assert_int_equal(edge_rl_begin(rl, "x", "10.0.0.1", t), EDGE_RL_BUSY);
    assert_int_equal(edge_rl_begin(rl, "x", "10.0.0.2", t), EDGE_RL_GO);
    edge_rl_end(rl, "x", "10.0.0.2");
    /* One fails: 19 in flight + 1 failure is still the limit. */
    edge_rl_end(rl, "u0", "10.0.0.1");
    edge_rl_failure(rl, "u0", "10.0.0.1", t);
    assert_int_equal(edge_rl_begin(rl, "x", "10.0.0.1", t), EDGE_RL_BUSY);
    /* One succeeds: its place is free again. */
    edge_rl_end(rl, "u1", "10.0.0.1");
    edge_rl_success(rl, "u1", t);
    assert_int_equal(edge_rl_begin(rl, "x", "10.0.0.1", t), EDGE_RL_GO);
    edge_rl_end(rl, "x", "10.0.0.1");
    for (int i = 2; i < 20; i++) {
        snprintf(user, sizeof user, "u%d", i);
        edge_rl_end(rl, user, "10.0.0.1");
    }
    assert_int_equal(edge_rl_in_flight(rl, "10.0.0.1"), 0);
    assert_int_equal(edge_rl_in_flight(rl, "u5"), 0);
    /* Per user too: five of alice's at once, from five addresses. */
    char addr[32];
    for (int i = 0; i < 5; i++) {
        snprintf(addr, sizeof addr, "10.1.0.%d", i);
        assert_int_equal(edge_rl_begin(rl, "alice", addr, t), EDGE_RL_GO);
    }
    assert_int_equal(edge_rl_begin(rl, "alice", "10.1.0.9", t), EDGE_RL_BUSY);
    /* A resume names no user: only its address counts. */
    assert_int_equal(edge_rl_begin(rl, NULL, "10.1.0.9", t), EDGE_RL_GO);
    edge_rl_end(rl, NULL, "10.1.0.9");
    assert_int_equal(edge_rl_in_flight(rl, "10.1.0.9"), 0);
    /* Failures older than the window no longer count. */
    for (int i = 0; i < 5; i++) {
        snprintf(addr, sizeof addr, "10.1.0.%d", i);
        edge_rl_end(rl, "alice", addr);
    }
    for (int i = 0; i < 4; i++)
        edge_rl_failure(rl, "bob", "10.2.0.1", t);
    assert_int_equal(edge_rl_begin(rl, "bob", "10.2.0.1", t), EDGE_RL_GO);
    assert_int_equal(edge_rl_begin(rl, "bob", "10.2.0.2", t), EDGE_RL_BUSY);
    assert_int_equal(edge_rl_begin(rl, "bob", "10.2.0.2", t + 61 * S), EDGE_RL_GO);
    edge_rl_end(rl, "bob", "10.2.0.1");
    edge_rl_end(rl, "bob", "10.2.0.2");
    /* A lockout is LOCKED, not BUSY. */
    edge_rl_failure(rl, "bob", "10.2.0.1", t + 62 * S);
    for (int i = 0; i < 4; i++)
        edge_rl_failure(rl, "bob", "10.2.0.1", t + 62 * S);
    assert_int_equal(edge_rl_begin(rl, "bob", "10.2.0.3", t + 63 * S), EDGE_RL_LOCKED);
    edge_rl_destroy(&rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_and_lockout), cmocka_unit_test(test_window_slides),
        cmocka_unit_test(test_per_address),        cmocka_unit_test(test_success_forgets_user_only),
        cmocka_unit_test(test_expiry_and_cap),     cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_checks_in_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
