/* forwarder_resolve: name lookups on worker threads, answered through the
 * loop, and the caps on one owner's lookups (a user asking for names whose
 * servers never answer must not hold every worker). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    /* alice may have RESOLVE_PER_OWNER lookups at once; bob is not held
     * back by her. */
    for (uint64_t t = 0; t < RESOLVE_PER_OWNER; t++)
        assert_int_equal(resolve_start(r, "127.0.0.1", t, "alice"), 0);
    assert_int_equal(resolve_start(r, "127.0.0.1", 50, "alice"), -1);
    assert_int_equal(resolve_pending(r, "alice"), RESOLVE_PER_OWNER);
    assert_int_equal(resolve_start(r, "localhost", 40, "bob"), 0);
    assert_int_equal(resolve_pending(r, "bob"), 1);
    /* Answers end them: the owner may ask again. */
    assert_true(s_wait(loop, &seen, RESOLVE_PER_OWNER + 1));
    assert_int_equal(seen.answers, RESOLVE_PER_OWNER + 1);
    assert_int_equal(seen.failures, 0);
    assert_int_equal(resolve_pending(r, "alice"), 0);
    assert_int_equal(resolve_pending(r, "bob"), 0);
    assert_int_equal(seen.tokens, (1ull << 40) | ((1ull << RESOLVE_PER_OWNER) - 1));
    assert_int_equal(resolve_start(r, "127.0.0.1", 41, "alice"), 0);
    assert_true(s_wait(loop, &seen, RESOLVE_PER_OWNER + 2));
    assert_int_equal(seen.last_ip, 0x7f000001);
    resolve_destroy(&r);
    assert_null(r);
    rb_loop_destroy(&loop);
}

/* A lookup the test holds: names ending ".hold" wait until released, as
 * a name whose servers do not answer holds its worker; others are
 * addresses, answered at once. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int held, most_held;
    int releases; /* held lookups that may end, one each */
    bool release; /* all may end */
} hold = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int s_holding_lookup(const char *host, uint32_t *ip)
{
    size_t len = strlen(host);
    if (len > 5 && strcmp(host + len - 5, ".hold") == 0) {
        pthread_mutex_lock(&hold.mu);
        if (++hold.held > hold.most_held) hold.most_held = hold.held;
        while (!hold.release && hold.releases == 0)
            pthread_cond_wait(&hold.cv, &hold.mu);
        if (!hold.release) hold.releases--;
        hold.held--;
        pthread_mutex_unlock(&hold.mu);
        return EAI_AGAIN;
    }
    struct in_addr a;
    if (inet_pton(AF_INET, host, &a) != 1) return EAI_NONAME;
    *ip = ntohl(a.s_addr);
    return 0;
}

static int s_held(void)
{
    pthread_mutex_lock(&hold.mu);
    int n = hold.held;
    pthread_mutex_unlock(&hold.mu);
    return n;
}

static void s_hold_release(int n, bool all)
{
    pthread_mutex_lock(&hold.mu);
    hold.releases += n;
    hold.release = all;
    pthread_cond_broadcast(&hold.cv);
    pthread_mutex_unlock(&hold.mu);
}

/* Waits (up to 2 s) until n lookups are held. */
static int s_wait_held(int n)
{
    for (int i = 0; i < 200 && s_held() != n; i++)
        usleep(10 * 1000);
    return s_held();
}

/* A resolver with the holding lookup; teardown lets every held lookup end
 * (also after a failed assertion) before it destroys the resolver. */
typedef struct {
    rb_loop_t *loop;
    resolve_t *r;
    seen_t seen;
} held_fixture_t;

static int s_held_setup(void **state)
{
    held_fixture_t *f = calloc(1, sizeof *f);
    if (!f || !(f->loop = rb_loop_new())) return -1;
    f->r = resolve_new_with(f->loop, s_on_answer, &f->seen, s_holding_lookup);
    if (!f->r) return -1;
    pthread_mutex_lock(&hold.mu);
    hold.most_held = hold.releases = 0;
    hold.release = false;
    pthread_mutex_unlock(&hold.mu);
    *state = f;
    return 0;
}

static int s_held_teardown(void **state)
{
    held_fixture_t *f = *state;
    s_hold_release(0, true);
    resolve_destroy(&f->r);
    rb_loop_destroy(&f->loop);
    free(f);
    return 0;
}

static void test_stuck_names_hold_few_workers(void **state)
{
    held_fixture_t *f = *state;
    resolve_t *r = f->r;
    rb_loop_t *loop = f->loop;
    seen_t *seen = &f->seen;
    /* mallory asks for more names that never answer than there are
     * workers: only RESOLVE_RUNNING_PER_OWNER of them take one. */
    for (uint64_t t = 0; t < RESOLVE_WORKERS + 2; t++)
        assert_int_equal(resolve_start(r, "stuck.hold", t, "mallory"), 0);
    s_wait_held(RESOLVE_RUNNING_PER_OWNER);
    usleep(100 * 1000); /* time for a wrongly started third to show */
    assert_int_equal(s_held(), RESOLVE_RUNNING_PER_OWNER);
    /* alice's lookup, queued behind all of mallory's, is answered while
     * his are stuck. */
    assert_int_equal(resolve_start(r, "10.1.2.3", 60, "alice"), 0);
    assert_true(s_wait(loop, seen, 1));
    assert_int_equal(seen->tokens, 1ull << 60);
    assert_int_equal(seen->last_ip, 0x0a010203);
    assert_int_equal(resolve_pending(r, "mallory"), RESOLVE_WORKERS + 2);
    /* As his stuck lookups end, the rest of his run, two at a time. */
    s_hold_release(0, true);
    assert_true(s_wait(loop, seen, RESOLVE_WORKERS + 3));
    assert_int_equal(seen->failures, RESOLVE_WORKERS + 2);
    assert_int_equal(resolve_pending(r, "mallory"), 0);
    assert_int_equal(hold.most_held, RESOLVE_RUNNING_PER_OWNER);
}

static void test_a_freed_worker_serves_the_waiting_first(void **state)
{
    held_fixture_t *f = *state;
    resolve_t *r = f->r;
    rb_loop_t *loop = f->loop;
    seen_t *seen = &f->seen;
    /* Enough users with stuck names to hold every worker, each with one
     * more queued. */
    const int users = RESOLVE_WORKERS / RESOLVE_RUNNING_PER_OWNER;
    uint64_t t = 0;
    for (int u = 0; u < users; u++) {
        char owner[16];
        snprintf(owner, sizeof owner, "stuck%d", u);
        for (int i = 0; i <= RESOLVE_RUNNING_PER_OWNER; i++)
            assert_int_equal(resolve_start(r, "dead.hold", t++, owner), 0);
    }
    assert_int_equal(s_wait_held(RESOLVE_WORKERS), RESOLVE_WORKERS);
    /* alice asks, behind every queued stuck lookup. When one stuck lookup
     * ends, the freed worker is hers, not its user's next. */
    assert_int_equal(resolve_start(r, "10.9.8.7", 60, "alice"), 0);
    s_hold_release(1, false);
    assert_true(s_wait(loop, seen, 2));
    assert_true(seen->tokens & (1ull << 60));
    assert_int_equal(seen->failures, 1); /* the stuck one that ended */
    s_hold_release(0, true);
    assert_true(s_wait(loop, seen, (int)t + 1));
}

static void test_cancelled_lookup_is_never_run(void **state)
{
    held_fixture_t *f = *state;
    resolve_t *r = f->r;
    rb_loop_t *loop = f->loop;
    seen_t *seen = &f->seen;
    /* Two stuck lookups run; the third waits. Its stream ends: dropped,
     * it no longer counts, and it is never looked up or answered. */
    for (uint64_t t = 0; t < RESOLVE_RUNNING_PER_OWNER + 1; t++)
        assert_int_equal(resolve_start(r, "dead.hold", t, "carol"), 0);
    assert_int_equal(s_wait_held(RESOLVE_RUNNING_PER_OWNER), RESOLVE_RUNNING_PER_OWNER);
    assert_true(resolve_cancel(r, RESOLVE_RUNNING_PER_OWNER));
    assert_false(resolve_cancel(r, RESOLVE_RUNNING_PER_OWNER)); /* once */
    assert_false(resolve_cancel(r, 0));                         /* running: it answers */
    assert_int_equal(resolve_pending(r, "carol"), RESOLVE_RUNNING_PER_OWNER);
    s_hold_release(0, true);
    assert_true(s_wait(loop, seen, RESOLVE_RUNNING_PER_OWNER));
    seen->want = RESOLVE_RUNNING_PER_OWNER + 1;
    assert_false(rbt_wait(loop, s_answered, seen, 300)); /* no third answer */
    assert_int_equal(seen->answers, RESOLVE_RUNNING_PER_OWNER);
    assert_int_equal(seen->tokens, (1ull << RESOLVE_RUNNING_PER_OWNER) - 1);
    assert_int_equal(resolve_pending(r, "carol"), 0);
    assert_int_equal(hold.most_held, RESOLVE_RUNNING_PER_OWNER);
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
    assert_int_equal(resolve_start(r, bad, 3, "carol"), 0);
    assert_true(s_wait(loop, &seen, 1));
    assert_int_equal(seen.failures, 1);
    assert_int_equal(resolve_pending(r, "carol"), 0);
    char host[300];
    memset(host, 'a', sizeof host - 1);
    host[sizeof host - 1] = '\0';
    assert_int_equal(resolve_start(r, host, 4, "carol"), -1); /* over 255 bytes */
    resolve_destroy(&r);
    rb_loop_destroy(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_per_owner_cap),
        cmocka_unit_test_setup_teardown(test_stuck_names_hold_few_workers, s_held_setup,
                                        s_held_teardown),
        cmocka_unit_test_setup_teardown(test_a_freed_worker_serves_the_waiting_first, s_held_setup,
                                        s_held_teardown),
        cmocka_unit_test_setup_teardown(test_cancelled_lookup_is_never_run, s_held_setup,
                                        s_held_teardown),
        cmocka_unit_test(test_unknown_name_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
