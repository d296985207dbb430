/* client_socks: see client_socks.h. Each call parses the unconsumed bytes
 * from their start through an rb_cursor; a message is consumed only when
 * it is complete, so the caller's buffer is the only state besides
 * s->state. */
#include "client_socks.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>

#include "rb_cursor.h"

#define SOCKS_VERSION 5
#define SOCKS_METHOD_NONE 0x00 /* no authentication required */
#define SOCKS_METHOD_NO_ACCEPTABLE 0xFF
#define SOCKS_CMD_CONNECT 1
#define SOCKS_CMD_BIND 2
#define SOCKS_CMD_UDP_ASSOCIATE 3
#define SOCKS_ATYP_IPV4 1
#define SOCKS_ATYP_DOMAIN 3
#define SOCKS_ATYP_IPV6 4

enum {
    S_GREETING = 0, /* waiting for VER NMETHODS METHODS */
    S_REQUEST,      /* method 00 chosen; waiting for the request */
    S_NO_METHOD,    /* 05 FF handed out; the next call fails */
    S_DONE,         /* request read or error returned */
};

void socks_init(socks_t *s)
{
    memset(s, 0, sizeof *s);
    s->state = S_GREETING;
}

size_t socks_reply(uint8_t out[10], uint8_t code, uint32_t bound_ip_host_order, uint16_t bound_port)
{
    out[0] = SOCKS_VERSION;
    out[1] = code;
    out[2] = 0;
    out[3] = SOCKS_ATYP_IPV4;
    out[4] = (uint8_t)(bound_ip_host_order >> 24);
    out[5] = (uint8_t)(bound_ip_host_order >> 16);
    out[6] = (uint8_t)(bound_ip_host_order >> 8);
    out[7] = (uint8_t)bound_ip_host_order;
    out[8] = (uint8_t)(bound_port >> 8);
    out[9] = (uint8_t)bound_port;
    return 10;
}

/* Ends the dialogue: reply_len bytes of reply (already in s->reply) to
 * send, and why for the log. */
static socks_step_t s_fail(socks_t *s, size_t reply_len, const char *why)
{
    s->state = S_DONE;
    s->reply_len = reply_len;
    s->why = why;
    return SOCKS_ERROR;
}

/* A request error: a full reply with code. */
static socks_step_t s_refuse(socks_t *s, uint8_t code, const char *why)
{
    return s_fail(s, socks_reply(s->reply, code, 0, 0), why);
}

/* RFC 1928 section 3: VER NMETHODS METHODS[NMETHODS]. */
static socks_step_t s_greeting(socks_t *s, rb_cursor_t *c, size_t *used)
{
    uint8_t ver = rb_cur_u8(c);
    if (c->err) return SOCKS_NEED_MORE;
    /* Not SOCKS5 (a SOCKS4 or HTTP client, say): any answer would be
     * misread, so none is sent. */
    if (ver != SOCKS_VERSION) return s_fail(s, 0, "greeting version is not 5");
    uint8_t n = rb_cur_u8(c);
    if (c->err) return SOCKS_NEED_MORE;
    if (n == 0) {
        s->reply[0] = SOCKS_VERSION;
        s->reply[1] = SOCKS_METHOD_NO_ACCEPTABLE;
        return s_fail(s, 2, "greeting offers no methods");
    }
    const uint8_t *methods = rb_cur_bytes(c, n);
    if (methods == NULL) return SOCKS_NEED_MORE;
    s->reply[0] = SOCKS_VERSION;
    s->reply[1] =
        memchr(methods, SOCKS_METHOD_NONE, n) ? SOCKS_METHOD_NONE : SOCKS_METHOD_NO_ACCEPTABLE;
    s->reply_len = 2;
    /* Section 3: after FF the client must close; we close too. */
    s->state = s->reply[1] == SOCKS_METHOD_NONE ? S_REQUEST : S_NO_METHOD;
    *used = c->pos;
    return SOCKS_REPLY_METHOD;
}

/* A domain name as a host: 1..255 bytes, no NUL, control byte, DEL or
 * space, so that it is a C string, safe to log and cannot smuggle a
 * second token into whatever is built from it. Anything else (a bad
 * label, an unknown name) is for the resolver to refuse. */
static bool s_name_ok(const uint8_t *name, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (name[i] <= 0x20 || name[i] == 0x7F) return false;
    return true;
}

/* RFC 1928 section 4: VER CMD RSV ATYP DST.ADDR DST.PORT. */
static socks_step_t s_request(socks_t *s, rb_cursor_t *c, size_t *used)
{
    uint8_t ver = rb_cur_u8(c);
    if (c->err) return SOCKS_NEED_MORE;
    if (ver != SOCKS_VERSION) return s_refuse(s, SOCKS_GENERAL_FAILURE, "request version is not 5");
    uint8_t cmd = rb_cur_u8(c);
    if (c->err) return SOCKS_NEED_MORE;
    if (cmd == SOCKS_CMD_BIND) return s_refuse(s, SOCKS_CMD_UNSUPPORTED, "BIND is not supported");
    if (cmd == SOCKS_CMD_UDP_ASSOCIATE)
        return s_refuse(s, SOCKS_CMD_UNSUPPORTED, "UDP ASSOCIATE is not supported");
    if (cmd != SOCKS_CMD_CONNECT) return s_refuse(s, SOCKS_CMD_UNSUPPORTED, "unknown command");
    uint8_t rsv = rb_cur_u8(c);
    if (c->err) return SOCKS_NEED_MORE;
    if (rsv != 0) return s_refuse(s, SOCKS_GENERAL_FAILURE, "request RSV is not 0");
    uint8_t atyp = rb_cur_u8(c);
    if (c->err) return SOCKS_NEED_MORE;

    /* The address goes to a scratch buffer: s->host changes only when the
     * whole request is good. */
    char host[sizeof s->host];
    if (atyp == SOCKS_ATYP_IPV4) {
        const uint8_t *a = rb_cur_bytes(c, 4);
        if (a == NULL) return SOCKS_NEED_MORE;
        struct in_addr in;
        memcpy(&in, a, sizeof in);
        if (!inet_ntop(AF_INET, &in, host, sizeof host))
            return s_refuse(s, SOCKS_GENERAL_FAILURE, "cannot format IPv4 address");
    } else if (atyp == SOCKS_ATYP_IPV6) {
        /* The intranet behind the gateway is IPv4: say so now (reply 8)
         * rather than after a round trip through it. An IPv4-mapped
         * address is the IPv4 address it carries. */
        const uint8_t *a = rb_cur_bytes(c, 16);
        if (a == NULL) return SOCKS_NEED_MORE;
        struct in6_addr in6;
        memcpy(&in6, a, sizeof in6);
        if (!IN6_IS_ADDR_V4MAPPED(&in6))
            return s_refuse(s, SOCKS_ATYP_UNSUPPORTED,
                            "IPv6 addresses are not supported (the gateway's intranet is IPv4)");
        struct in_addr in;
        memcpy(&in, a + 12, sizeof in);
        if (!inet_ntop(AF_INET, &in, host, sizeof host))
            return s_refuse(s, SOCKS_GENERAL_FAILURE, "cannot format IPv4 address");
    } else if (atyp == SOCKS_ATYP_DOMAIN) {
        uint8_t n = rb_cur_u8(c);
        if (c->err) return SOCKS_NEED_MORE;
        if (n == 0) return s_refuse(s, SOCKS_GENERAL_FAILURE, "empty domain name");
        const uint8_t *name = rb_cur_bytes(c, n);
        if (name == NULL) return SOCKS_NEED_MORE;
        if (!s_name_ok(name, n))
            return s_refuse(s, SOCKS_GENERAL_FAILURE,
                            "domain name has a NUL, control byte or space");
        memcpy(host, name, n); /* n <= 255 < sizeof host */
        host[n] = '\0';
    } else {
        return s_refuse(s, SOCKS_ATYP_UNSUPPORTED, "unknown address type");
    }
    uint16_t port = rb_cur_u16(c);
    if (c->err) return SOCKS_NEED_MORE;
    if (port == 0) return s_refuse(s, SOCKS_GENERAL_FAILURE, "port 0");

    memcpy(s->host, host, strlen(host) + 1);
    s->port = port;
    s->reply_len = 0;
    s->why = NULL;
    s->state = S_DONE;
    *used = c->pos;
    return SOCKS_REQUEST;
}

socks_step_t socks_feed(socks_t *s, const uint8_t *buf, size_t len, size_t *used)
{
    *used = 0;
    rb_cursor_t c;
    rb_cur_init(&c, buf, len);
    switch (s->state) {
    case S_GREETING:
        return s_greeting(s, &c, used);
    case S_REQUEST:
        return s_request(s, &c, used);
    case S_NO_METHOD:
        return s_fail(s, 0, "no acceptable authentication method (00 not offered)");
    default:
        return s_fail(s, 0, s->why ? s->why : "SOCKS dialogue already over");
    }
}
