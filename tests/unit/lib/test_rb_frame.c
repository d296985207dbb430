/* Tests for rb_frame: the tunnel's frame parser and builders. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "rb_frame.h"

static void s_hdr(uint8_t *dst, uint8_t type, uint8_t flags, uint16_t reserved, uint32_t sid,
                  uint32_t len)
{
    rb_frame_header(dst, type, flags, sid, len);
    dst[2] = (uint8_t)(reserved >> 8);
    dst[3] = (uint8_t)reserved;
}

static void test_header_layout(void **state)
{
    (void)state;
    uint8_t h[RB_FRAME_HEADER];
    rb_frame_header(h, RB_FRAME_DATA, RB_FRAME_FIN, 0x01020304u, 0x0a0b0c0du);
    const uint8_t want[] = {2, 1, 0, 0, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d};
    assert_memory_equal(h, want, sizeof want);
}

static void test_data_roundtrip(void **state)
{
    (void)state;
    uint8_t buf[RB_FRAME_HEADER + 5];
    rb_frame_header(buf, RB_FRAME_DATA, RB_FRAME_FIN, 7, 5);
    memcpy(buf + RB_FRAME_HEADER, "hello", 5);
    rb_frame_t f;
    const char *why = NULL;
    assert_int_equal(rb_frame_parse(buf, sizeof buf, &f, &why), (long)sizeof buf);
    assert_int_equal(f.type, RB_FRAME_DATA);
    assert_int_equal(f.flags, RB_FRAME_FIN);
    assert_int_equal(f.stream_id, 7);
    assert_int_equal(f.len, 5);
    assert_ptr_equal(f.payload, buf + RB_FRAME_HEADER);
    assert_null(why);
}

static void test_incomplete_needs_more(void **state)
{
    (void)state;
    uint8_t buf[RB_FRAME_HEADER + 10];
    rb_frame_header(buf, RB_FRAME_DATAGRAM, 0, 3, 10);
    memset(buf + RB_FRAME_HEADER, 'x', 10);
    rb_frame_t f;
    const char *why = NULL;
    for (size_t n = 0; n < sizeof buf; n++)
        assert_int_equal(rb_frame_parse(buf, n, &f, &why), 0);
    assert_int_equal(rb_frame_parse(buf, sizeof buf, &f, &why), (long)sizeof buf);
    assert_int_equal(f.type, RB_FRAME_DATAGRAM);
}

static void test_back_to_back(void **state)
{
    (void)state;
    uint8_t buf[2 * RB_FRAME_HEADER + 3 + 1];
    rb_frame_header(buf, RB_FRAME_DATA, 0, 1, 3);
    memcpy(buf + RB_FRAME_HEADER, "abc", 3);
    rb_frame_header(buf + RB_FRAME_HEADER + 3, RB_FRAME_DATA, RB_FRAME_RST, 2, 1);
    buf[sizeof buf - 1] = 'z';
    rb_frame_t f;
    const char *why = NULL;
    long n = rb_frame_parse(buf, sizeof buf, &f, &why);
    assert_int_equal(n, RB_FRAME_HEADER + 3);
    assert_int_equal(f.stream_id, 1);
    long m = rb_frame_parse(buf + n, sizeof buf - (size_t)n, &f, &why);
    assert_int_equal(m, RB_FRAME_HEADER + 1);
    assert_int_equal(f.stream_id, 2);
    assert_int_equal(f.flags, RB_FRAME_RST);
    assert_int_equal(f.payload[0], 'z');
}

static void s_expect_bad(const uint8_t *buf, size_t len)
{
    rb_frame_t f;
    const char *why = NULL;
    assert_int_equal(rb_frame_parse(buf, len, &f, &why), -1);
    assert_non_null(why);
}

static void test_malformed_headers(void **state)
{
    (void)state;
    uint8_t h[RB_FRAME_HEADER];
    s_hdr(h, 0, 0, 0, 1, 1); /* unknown type */
    s_expect_bad(h, sizeof h);
    s_hdr(h, 5, 0, 0, 1, 1); /* the first unassigned type */
    s_expect_bad(h, sizeof h);
    s_hdr(h, 0xff, 0, 0, 1, 1);
    s_expect_bad(h, sizeof h);
    s_hdr(h, RB_FRAME_DATA, 0, 0x0100, 1, 1); /* reserved */
    s_expect_bad(h, sizeof h);
    s_hdr(h, RB_FRAME_DATA, 0, 0x0001, 1, 1);
    s_expect_bad(h, sizeof h);
    s_hdr(h, RB_FRAME_CONTROL, 0, 0, 5, 4); /* control on a stream */
    s_expect_bad(h, sizeof h);
    s_hdr(h, RB_FRAME_CONTROL, 0, 0, 0, 0); /* empty control */
    s_expect_bad(h, sizeof h);
    s_hdr(h, RB_FRAME_CONTROL, RB_FRAME_FIN, 0, 0, 4); /* flags on control */
    s_expect_bad(h, sizeof h);
    s_hdr(h, RB_FRAME_DATA, 0, 0, 0, 4); /* data on stream 0 */
    s_expect_bad(h, sizeof h);
    s_hdr(h, RB_FRAME_DATAGRAM, 0, 0, 0, 4);
    s_expect_bad(h, sizeof h);
    s_hdr(h, RB_FRAME_DATA, 0x04, 0, 1, 4); /* unknown flag */
    s_expect_bad(h, sizeof h);
    s_hdr(h, RB_FRAME_DATAGRAM, RB_FRAME_FIN, 0, 1, 4); /* flags on datagram */
    s_expect_bad(h, sizeof h);
}

static void test_oversized_refused_from_header(void **state)
{
    (void)state;
    uint8_t h[RB_FRAME_HEADER];
    rb_frame_t f;
    const char *why = NULL;
    /* Only the header is there: the size alone condemns the frame. */
    rb_frame_header(h, RB_FRAME_DATA, 0, 1, RB_FRAME_MAX_DATA + 1);
    assert_int_equal(rb_frame_parse(h, sizeof h, &f, &why), -1);
    rb_frame_header(h, RB_FRAME_DATA, 0, 1, UINT32_MAX);
    assert_int_equal(rb_frame_parse(h, sizeof h, &f, &why), -1);
    rb_frame_header(h, RB_FRAME_CONTROL, 0, 0, RB_FRAME_MAX_CONTROL + 1);
    assert_int_equal(rb_frame_parse(h, sizeof h, &f, &why), -1);
    /* At the limit it waits for the payload. */
    rb_frame_header(h, RB_FRAME_DATA, 0, 1, RB_FRAME_MAX_DATA);
    assert_int_equal(rb_frame_parse(h, sizeof h, &f, &why), 0);
    rb_frame_header(h, RB_FRAME_CONTROL, 0, 0, RB_FRAME_MAX_CONTROL);
    assert_int_equal(rb_frame_parse(h, sizeof h, &f, &why), 0);
}

static void test_max_data_frame(void **state)
{
    (void)state;
    static uint8_t buf[RB_FRAME_HEADER + RB_FRAME_MAX_DATA];
    rb_frame_header(buf, RB_FRAME_DATA, 0, 9, RB_FRAME_MAX_DATA);
    rb_frame_t f;
    assert_int_equal(rb_frame_parse(buf, sizeof buf, &f, NULL), (long)sizeof buf);
}

static void test_control_roundtrip(void **state)
{
    (void)state;
    Rb__Tunnel__Hello hello = RB__TUNNEL__HELLO__INIT;
    hello.version = RB_TUNNEL_VERSION;
    hello.software = "test 1.0";
    Rb__Tunnel__TunnelControl msg = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    msg.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO;
    msg.hello = &hello;

    rb_buf_t out = RB_BUF_INIT;
    assert_int_equal(rb_frame_append_control(&out, &msg), 0);
    /* A second one appended after it. */
    Rb__Tunnel__Ping ping = RB__TUNNEL__PING__INIT;
    ping.nonce = 42;
    Rb__Tunnel__TunnelControl msg2 = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    msg2.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_PING;
    msg2.ping = &ping;
    assert_int_equal(rb_frame_append_control(&out, &msg2), 0);

    rb_frame_t f;
    const char *why = NULL;
    const uint8_t *p = (const uint8_t *)out.data;
    long n = rb_frame_parse(p, out.len, &f, &why);
    assert_true(n > 0);
    assert_int_equal(f.type, RB_FRAME_CONTROL);
    assert_int_equal(f.stream_id, 0);
    Rb__Tunnel__TunnelControl *m = rb_frame_control(&f);
    assert_non_null(m);
    assert_int_equal(m->msg_case, RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO);
    assert_int_equal(m->hello->version, RB_TUNNEL_VERSION);
    assert_string_equal(m->hello->software, "test 1.0");
    rb__tunnel__tunnel_control__free_unpacked(m, NULL);

    long n2 = rb_frame_parse(p + n, out.len - (size_t)n, &f, &why);
    assert_int_equal((size_t)(n + n2), out.len);
    m = rb_frame_control(&f);
    assert_non_null(m);
    assert_int_equal(m->msg_case, RB__TUNNEL__TUNNEL_CONTROL__MSG_PING);
    assert_int_equal(m->ping->nonce, 42);
    rb__tunnel__tunnel_control__free_unpacked(m, NULL);
    rb_buf_free(&out);
}

static void test_append_control_limits(void **state)
{
    (void)state;
    rb_buf_t out = RB_BUF_INIT;
    /* No message set packs to nothing: the peer would refuse it. */
    Rb__Tunnel__TunnelControl empty = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    assert_int_equal(rb_frame_append_control(&out, &empty), -1);
    assert_int_equal(out.len, 0);

    static char big[RB_FRAME_MAX_CONTROL + 1];
    memset(big, 'a', sizeof big - 1);
    Rb__Tunnel__Hello hello = RB__TUNNEL__HELLO__INIT;
    hello.software = big;
    Rb__Tunnel__TunnelControl msg = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    msg.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO;
    msg.hello = &hello;
    assert_int_equal(rb_frame_append_control(&out, &msg), -1);
    assert_int_equal(out.len, 0);
    rb_buf_free(&out);
}

static void test_control_malformed(void **state)
{
    (void)state;
    rb_frame_t f = {.type = RB_FRAME_CONTROL, .stream_id = 0};
    /* Field 1 (hello), length-delimited, claims 100 bytes but has 2. */
    const uint8_t trunc[] = {0x0a, 100, 0x08, 0x01};
    f.payload = trunc;
    f.len = sizeof trunc;
    assert_null(rb_frame_control(&f));
    /* A valid protobuf with only an unknown field: no message set. */
    const uint8_t unknown[] = {0x78, 0x01}; /* field 15, varint 1 */
    f.payload = unknown;
    f.len = sizeof unknown;
    assert_null(rb_frame_control(&f));
    /* A valid ping unpacks, but not from a DATA frame. */
    const uint8_t ping[] = {0x3a, 0x02, 0x08, 0x05};
    f.payload = ping;
    f.len = sizeof ping;
    Rb__Tunnel__TunnelControl *m = rb_frame_control(&f);
    assert_non_null(m);
    rb__tunnel__tunnel_control__free_unpacked(m, NULL);
    f.type = RB_FRAME_DATA;
    assert_null(rb_frame_control(&f));
}

/* WINDOW frames: a u32 increment, non-zero, on a stream, no flags. */
static void s_window(uint8_t *buf, uint8_t flags, uint32_t sid, uint32_t len, uint32_t inc)
{
    rb_frame_header(buf, RB_FRAME_WINDOW, flags, sid, len);
    buf[RB_FRAME_HEADER] = (uint8_t)(inc >> 24);
    buf[RB_FRAME_HEADER + 1] = (uint8_t)(inc >> 16);
    buf[RB_FRAME_HEADER + 2] = (uint8_t)(inc >> 8);
    buf[RB_FRAME_HEADER + 3] = (uint8_t)inc;
}

static void test_window_valid(void **state)
{
    (void)state;
    uint8_t buf[RB_FRAME_HEADER + 4];
    rb_frame_t f;
    const char *why = NULL;
    s_window(buf, 0, 5, 4, 0x00010203u);
    assert_int_equal(rb_frame_parse(buf, sizeof buf, &f, &why), (long)sizeof buf);
    assert_null(why);
    assert_int_equal(f.type, RB_FRAME_WINDOW);
    assert_int_equal(f.flags, 0);
    assert_int_equal(f.stream_id, 5);
    assert_int_equal(f.len, 4);
    assert_int_equal(rb_frame_window(&f), 0x00010203u);
    /* The extremes of the increment. */
    s_window(buf, 0, UINT32_MAX, 4, UINT32_MAX);
    assert_int_equal(rb_frame_parse(buf, sizeof buf, &f, &why), (long)sizeof buf);
    assert_int_equal(rb_frame_window(&f), UINT32_MAX);
    assert_int_equal(f.stream_id, UINT32_MAX);
    s_window(buf, 0, 1, 4, 1);
    assert_int_equal(rb_frame_parse(buf, sizeof buf, &f, &why), (long)sizeof buf);
    assert_int_equal(rb_frame_window(&f), 1);
    /* The header alone, or part of the increment: wait for the rest. */
    for (size_t n = 0; n < sizeof buf; n++)
        assert_int_equal(rb_frame_parse(buf, n, &f, &why), 0);
    /* rb_frame_window is 0 for anything that is not a 4-byte payload. */
    rb_frame_t g = {.type = RB_FRAME_WINDOW, .stream_id = 1, .len = 3, .payload = buf};
    assert_int_equal(rb_frame_window(&g), 0);
    g.len = 4;
    g.payload = NULL;
    assert_int_equal(rb_frame_window(&g), 0);
}

static void test_window_malformed(void **state)
{
    (void)state;
    uint8_t buf[RB_FRAME_HEADER + 8];
    rb_frame_t f;
    const char *why;

    /* A zero increment would grant nothing: malformed, not a no-op. */
    s_window(buf, 0, 5, 4, 0);
    why = NULL;
    assert_int_equal(rb_frame_parse(buf, RB_FRAME_HEADER + 4, &f, &why), -1);
    assert_non_null(why);
    assert_non_null(strstr(why, "zero"));

    /* Wrong lengths, judged from the header before the payload is there. */
    const uint32_t lens[] = {0, 1, 3, 5, 8, RB_FRAME_MAX_DATA, UINT32_MAX};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        s_window(buf, 0, 5, lens[i], 1);
        why = NULL;
        assert_int_equal(rb_frame_parse(buf, RB_FRAME_HEADER, &f, &why), -1);
        assert_non_null(why);
        assert_int_equal(rb_frame_parse(buf, sizeof buf, &f, &why), -1);
    }

    /* Any flag, FIN and RST included. */
    const uint8_t flags[] = {RB_FRAME_FIN, RB_FRAME_RST, 0x04, 0x80, 0xff};
    for (size_t i = 0; i < sizeof flags; i++) {
        s_window(buf, flags[i], 5, 4, 100);
        why = NULL;
        assert_int_equal(rb_frame_parse(buf, RB_FRAME_HEADER + 4, &f, &why), -1);
        assert_non_null(why);
    }

    /* Stream 0 is the control channel: no window there. */
    s_window(buf, 0, 0, 4, 100);
    why = NULL;
    assert_int_equal(rb_frame_parse(buf, RB_FRAME_HEADER + 4, &f, &why), -1);
    assert_non_null(why);

    /* Reserved bits. */
    s_window(buf, 0, 5, 4, 100);
    buf[3] = 1;
    why = NULL;
    assert_int_equal(rb_frame_parse(buf, RB_FRAME_HEADER + 4, &f, &why), -1);
    assert_non_null(why);
}

/* rb_frame_parse_header judges 12 bytes alone, as the data link does with
 * a header part whose payload travels in another message part. */
static void test_parse_header(void **state)
{
    (void)state;
    uint8_t h[RB_FRAME_HEADER];
    rb_frame_t f;
    const char *why = NULL;

    rb_frame_header(h, RB_FRAME_DATA, RB_FRAME_FIN | RB_FRAME_RST, 0x01020304u, 1000);
    memset(&f, 0xaa, sizeof f);
    assert_int_equal(rb_frame_parse_header(h, &f, &why), 0);
    assert_null(why);
    assert_int_equal(f.type, RB_FRAME_DATA);
    assert_int_equal(f.flags, RB_FRAME_FIN | RB_FRAME_RST);
    assert_int_equal(f.stream_id, 0x01020304u);
    assert_int_equal(f.len, 1000);
    assert_null(f.payload);

    rb_frame_header(h, RB_FRAME_CONTROL, 0, 0, RB_FRAME_MAX_CONTROL);
    assert_int_equal(rb_frame_parse_header(h, &f, &why), 0);
    assert_int_equal(f.type, RB_FRAME_CONTROL);
    assert_int_equal(f.len, RB_FRAME_MAX_CONTROL);
    rb_frame_header(h, RB_FRAME_DATAGRAM, 0, 9, 0);
    assert_int_equal(rb_frame_parse_header(h, &f, &why), 0);
    assert_int_equal(f.len, 0);
    /* A WINDOW header is fine on its own: the increment is the caller's to
     * check once it has the payload. */
    rb_frame_header(h, RB_FRAME_WINDOW, 0, 3, 4);
    assert_int_equal(rb_frame_parse_header(h, &f, &why), 0);
    assert_int_equal(f.type, RB_FRAME_WINDOW);
    assert_null(f.payload);
    assert_int_equal(rb_frame_window(&f), 0); /* no payload yet */

    /* Refusals leave *out alone and say why; why may be NULL. */
    struct {
        uint8_t type, flags;
        uint16_t reserved;
        uint32_t sid, len;
    } bad[] = {
        {0, 0, 0, 1, 1},
        {5, 0, 0, 1, 1},
        {RB_FRAME_DATA, 0, 0x8000, 1, 1},
        {RB_FRAME_DATA, 0, 0, 0, 1},
        {RB_FRAME_DATA, 0x04, 0, 1, 1},
        {RB_FRAME_DATA, 0, 0, 1, RB_FRAME_MAX_DATA + 1},
        {RB_FRAME_DATAGRAM, RB_FRAME_FIN, 0, 1, 1},
        {RB_FRAME_CONTROL, 0, 0, 1, 1},
        {RB_FRAME_CONTROL, 0, 0, 0, 0},
        {RB_FRAME_CONTROL, 0, 0, 0, RB_FRAME_MAX_CONTROL + 1},
        {RB_FRAME_WINDOW, 0, 0, 1, 2},
        {RB_FRAME_WINDOW, RB_FRAME_FIN, 0, 1, 4},
        {RB_FRAME_WINDOW, 0, 0, 0, 4},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_hdr(h, bad[i].type, bad[i].flags, bad[i].reserved, bad[i].sid, bad[i].len);
        memset(&f, 0x5a, sizeof f);
        rb_frame_t before;
        memcpy(&before, &f, sizeof f);
        why = NULL;
        if (rb_frame_parse_header(h, &f, &why) != -1) fail_msg("bad header %zu accepted", i);
        assert_non_null(why);
        assert_memory_equal(&f, &before, sizeof f);
        assert_int_equal(rb_frame_parse_header(h, &f, NULL), -1);
        /* The stream parser agrees. */
        assert_int_equal(rb_frame_parse(h, sizeof h, &f, NULL), -1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_layout),
        cmocka_unit_test(test_data_roundtrip),
        cmocka_unit_test(test_incomplete_needs_more),
        cmocka_unit_test(test_back_to_back),
        cmocka_unit_test(test_malformed_headers),
        cmocka_unit_test(test_oversized_refused_from_header),
        cmocka_unit_test(test_max_data_frame),
        cmocka_unit_test(test_control_roundtrip),
        cmocka_unit_test(test_append_control_limits),
        cmocka_unit_test(test_control_malformed),
        cmocka_unit_test(test_window_valid),
        cmocka_unit_test(test_window_malformed),
        cmocka_unit_test(test_parse_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
