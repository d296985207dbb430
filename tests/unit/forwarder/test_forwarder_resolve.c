/* forwarder_resolve: name lookups on worker threads, answered through the
 * loop, and the cap on one owner's lookups at once (a session asking for
 * names whose servers never answer must not hold every worker). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <netdb.h>
#include <stdbool.h>
#include <string.h>

#include "../redis_fixture.h" /* rbt_wait */
#include "forwarder_resolve.h"
#include "rb_loop.h"

typedef struct {
    int answers, failures;
    uint32_t last_ip;
    uint64_t tokens; /* bit t set when token t was answered */
    int want;        /* s_wait's goal */
} seen_t;

static void s_on_answer(void *arg, uint64_t token, int err, uint32_t ip)
{
    seen_t *s = arg;
    s->answers++;
    if (err) s->failures++;
    s->last_ip = ip;
    s->tokens |= 1ull << token;
}

static bool s_answered(void *arg) { return ((seen_t *)arg)->answers >= ((seen_t *)arg)->want; }

/* Runs the loop until want answers came, or 5 s passed. */
static bool s_wait(rb_loop_t *loop, seen_t *seen, int want)
{
    seen->want = want;
    return rbt_wait(loop, s_answered, seen, 5000);
}

static void test_per_owner_cap(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    seen_t seen = {0};
    resolve_t *r = resolve_new(loop, s_on_answer, &seen);
    assert_non_null(r);
    /* Owner 1 may have RESOLVE_PER_OWNER lookups at once; another owner
     * is not held back by it. */
    for (uint64_t t = 0; t < RESOLVE_PER_OWNER; t++)
        assert_int_equal(resolve_start(r, "127.0.0.1", t, 1), 0);
    assert_int_equal(resolve_start(r, "127.0.0.1", 10, 1), -1);
    assert_int_equal(resolve_pending(r, 1), RESOLVE_PER_OWNER);
    assert_int_equal(resolve_start(r, "localhost", 20, 2), 0);
    assert_int_equal(resolve_pending(r, 2), 1);
    /* Answers end them: the owner may ask again. */
    assert_true(s_wait(loop, &seen, RESOLVE_PER_OWNER + 1));
    assert_int_equal(seen.answers, RESOLVE_PER_OWNER + 1);
    assert_int_equal(seen.failures, 0);
    assert_int_equal(resolve_pending(r, 1), 0);
    assert_int_equal(resolve_pending(r, 2), 0);
    assert_int_equal(seen.tokens, (1ull << 20) | ((1ull << RESOLVE_PER_OWNER) - 1));
    assert_int_equal(resolve_start(r, "127.0.0.1", 30, 1), 0);
    assert_true(s_wait(loop, &seen, RESOLVE_PER_OWNER + 2));
    assert_int_equal(seen.last_ip, 0x7f000001);
    resolve_destroy(&r);
    assert_null(r);
    rb_loop_destroy(&loop);
}

static void test_unknown_name_fails(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    seen_t seen = {0};
    resolve_t *r = resolve_new(loop, s_on_answer, &seen);
    /* A label over 63 bytes cannot be put in a query: it fails without
     * asking any name server (none may answer here). */
    char bad[80];
    memset(bad, 'x', 64);
    strcpy(bad + 64, ".invalid");
    assert_int_equal(resolve_start(r, bad, 3, 7), 0);
    assert_true(s_wait(loop, &seen, 1));
    assert_int_equal(seen.failures, 1);
    assert_int_equal(resolve_pending(r, 7), 0);
    char host[300];
    memset(host, 'a', sizeof host - 1);
    host[sizeof host - 1] = '\0';
    assert_int_equal(resolve_start(r, host, 4, 7), -1); /* over 255 bytes */
    resolve_destroy(&r);
    rb_loop_destroy(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_per_owner_cap),
        cmocka_unit_test(test_unknown_name_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
