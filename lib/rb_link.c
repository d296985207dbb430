/* rb_link: see rb_link.h. */
#include "rb_link.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "rb_loop.h"

void rb_link_setup(void *sock)
{
    int zero = 0;
    zmq_setsockopt(sock, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(sock, ZMQ_RCVHWM, &zero, sizeof zero);
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
}

int rb_link_send(void *sock, const void *rid, size_t rid_len, uint8_t type, uint8_t flags,
                 uint32_t id, const void *data, size_t len)
{
    uint8_t hdr[RB_FRAME_HEADER];
    rb_frame_header(hdr, type, flags, id, (uint32_t)len);
    rb_loop_zsock_used(sock);
    if (rid && zmq_send(sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) return -1;
    if (zmq_send(sock, hdr, sizeof hdr, (len ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0) return -1;
    if (len && zmq_send(sock, data, len, ZMQ_DONTWAIT) < 0) return -1;
    return 0;
}

int rb_link_send_control(void *sock, const void *rid, size_t rid_len, const Rb__Fwd__LinkControl *m)
{
    size_t n = rb__fwd__link_control__get_packed_size(m);
    if (n == 0 || n > RB_FRAME_MAX_CONTROL) {
        errno = EMSGSIZE;
        return -1;
    }
    uint8_t buf[RB_FRAME_MAX_CONTROL];
    rb__fwd__link_control__pack(m, buf);
    return rb_link_send(sock, rid, rid_len, RB_FRAME_CONTROL, 0, 0, buf, n);
}

void rb_link_relayed(Rb__Fwd__LinkControl *c, Rb__Fwd__Relayed *m, uint32_t *ids, uint32_t *bytes,
                     size_t n)
{
    rb__fwd__link_control__init(c);
    rb__fwd__relayed__init(m);
    m->n_link_ids = m->n_bytes = n;
    m->link_ids = ids;
    m->bytes = bytes;
    c->msg_case = RB__FWD__LINK_CONTROL__MSG_RELAYED;
    c->relayed = m;
}

void rb_link_msg_close(rb_link_msg_t *m)
{
    for (int i = 0; i < m->nparts; i++)
        zmq_msg_close(&m->part[i]);
    m->nparts = 0;
}

/* Reads the rest of a message that is too long, so the next starts clean. */
static void s_drain(void *sock)
{
    int more = 1;
    size_t len = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &len) == 0 && more) {
        zmq_msg_t x;
        zmq_msg_init(&x);
        int rc = zmq_msg_recv(&x, sock, ZMQ_DONTWAIT);
        zmq_msg_close(&x);
        if (rc < 0) break;
    }
}

/* The sender's routing id, kept as soon as its part arrives so that every
 * later refusal can name it. Empty or over RB_LINK_RID_MAX: rid_len 0. */
static void s_take_rid(rb_link_msg_t *m)
{
    size_t n = zmq_msg_size(&m->part[0]);
    if (n == 0 || n > RB_LINK_RID_MAX) return;
    memcpy(m->rid, zmq_msg_data(&m->part[0]), n);
    m->rid_len = n;
    bool printable = true;
    for (size_t k = 0; k < n; k++)
        if (m->rid[k] < 0x21 || m->rid[k] > 0x7e) printable = false;
    if (printable) {
        memcpy(m->rid_text, m->rid, n);
        m->rid_text[n] = '\0';
    } else {
        for (size_t k = 0; k < n; k++)
            snprintf(m->rid_text + 2 * k, 3, "%02x", m->rid[k]);
        m->rid_text[2 * n] = '\0';
    }
}

int rb_link_recv(void *sock, bool router, rb_link_msg_t *m, rb_frame_t *f, const char **why)
{
    m->nparts = 0;
    m->rid_len = 0;
    m->rid_text[0] = '\0';
    for (;;) {
        if (m->nparts == 3) {
            s_drain(sock);
            *why = "too many message parts";
            return -1;
        }
        zmq_msg_init(&m->part[m->nparts]);
        if (zmq_msg_recv(&m->part[m->nparts], sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m->part[m->nparts]);
            if (m->nparts == 0) {
                if (errno == EAGAIN) rb_loop_zsock_drained(sock);
                return 0;
            }
            *why = "message cut short";
            return -1;
        }
        m->nparts++;
        if (router && m->nparts == 1) s_take_rid(m);
        if (!zmq_msg_more(&m->part[m->nparts - 1])) break;
    }
    int i = 0;
    if (router) {
        if (m->rid_len == 0) {
            *why = "routing id empty or longer than RB_LINK_RID_MAX";
            return -1;
        }
        i = 1;
    }
    int left = m->nparts - i;
    if (left < 1 || left > 2) {
        *why = "not a header and a payload";
        return -1;
    }
    if (zmq_msg_size(&m->part[i]) != RB_FRAME_HEADER) {
        *why = "header is not 12 bytes";
        return -1;
    }
    if (rb_frame_parse_header(zmq_msg_data(&m->part[i]), f, why) < 0) return -1;
    size_t plen = left == 2 ? zmq_msg_size(&m->part[i + 1]) : 0;
    if (plen != f->len) {
        *why = "payload length differs from the header's";
        return -1;
    }
    f->payload = plen ? zmq_msg_data(&m->part[i + 1]) : NULL;
    if (f->type == RB_FRAME_WINDOW && rb_frame_window(f) == 0) {
        *why = "window increment of zero";
        return -1;
    }
    return 1;
}

Rb__Fwd__LinkControl *rb_link_control(const rb_frame_t *f)
{
    if (f->type != RB_FRAME_CONTROL || f->len == 0 || f->len > RB_FRAME_MAX_CONTROL) return NULL;
    Rb__Fwd__LinkControl *m = rb__fwd__link_control__unpack(NULL, f->len, f->payload);
    if (!m) return NULL;
    if (m->msg_case == RB__FWD__LINK_CONTROL__MSG__NOT_SET) {
        rb__fwd__link_control__free_unpacked(m, NULL);
        return NULL;
    }
    return m;
}
