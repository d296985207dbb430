/* edge_ended: notes of sessions that ended before they attached. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "edge_ended.h"

static void test_note_then_take_once(void **state)
{
    edge_ended_t *e = edge_ended_new(8, 10000);
    assert_non_null(e);
    char why[32];
    assert_int_equal(edge_ended_take(e, "s1", why), -1);
    edge_ended_note(e, "s1", "replaced");
    edge_ended_note(e, "s2", "kicked");
    assert_int_equal(edge_ended_take(e, "s1", why), 0);
    assert_string_equal(why, "replaced");
    assert_int_equal(edge_ended_take(e, "s1", why), -1);   /* taken */
    assert_int_equal(edge_ended_take(e, "s2", why), 0);
    assert_string_equal(why, "kicked");
    edge_ended_destroy(&e);
    assert_null(e);
    edge_ended_destroy(NULL);
}

static void test_oldest_note_makes_room(void **state)
{
    edge_ended_t *e = edge_ended_new(4, 10000);
    char id[16], why[32];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "s%d", i);
        edge_ended_note(e, id, "expired");
    }
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "s%d", i);
        assert_int_equal(edge_ended_take(e, id, why), -1);
    }
    for (int i = 6; i < 10; i++) {
        snprintf(id, sizeof id, "s%d", i);
        assert_int_equal(edge_ended_take(e, id, why), 0);
    }
    /* The same id noted twice: one take answers, the older note is harmless. */
    edge_ended_note(e, "x", "replaced");
    edge_ended_note(e, "x", "transferred");
    assert_int_equal(edge_ended_take(e, "x", why), 0);
    assert_string_equal(why, "transferred");
    for (int i = 0; i < 8; i++) edge_ended_note(e, "y", "kicked");
    assert_int_equal(edge_ended_take(e, "y", why), 0);
    edge_ended_destroy(&e);
}

static void test_notes_expire_and_bad_input_is_ignored(void **state)
{
    edge_ended_t *e = edge_ended_new(4, 50);
    char why[32], longid[300];
    edge_ended_note(e, "old", "expired");
    usleep(80 * 1000);
    assert_int_equal(edge_ended_take(e, "old", why), -1);
    memset(longid, 'a', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    edge_ended_note(e, longid, "expired");
    assert_int_equal(edge_ended_take(e, longid, why), -1);
    edge_ended_note(e, "s", "a reason far too long to be kept in a note");
    assert_int_equal(edge_ended_take(e, "s", why), -1);
    edge_ended_note(e, NULL, "x");
    edge_ended_destroy(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_note_then_take_once),
        cmocka_unit_test(test_oldest_note_makes_room),
        cmocka_unit_test(test_notes_expire_and_bad_input_is_ignored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
