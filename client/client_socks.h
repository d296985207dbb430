/* client_socks: the server side of SOCKS5 (RFC 1928) for reachback-client
 * --socks, as a pure parser without I/O: the client's greeting (only
 * method 00, no authentication, is accepted) and its CONNECT request (BIND
 * and UDP ASSOCIATE are refused). The bytes come from any local program,
 * so every read is bounded and malformed input is an error with the SOCKS
 * reply to send before closing, never a crash.
 *
 * Usage: socks_init, then call socks_feed with all the bytes received and
 * not yet consumed; drop *used bytes after each call; send s->reply after
 * SOCKS_REPLY_METHOD and SOCKS_ERROR; call again at once after
 * SOCKS_REPLY_METHOD (the request may already be there), after
 * SOCKS_NEED_MORE once more bytes have arrived. Once the connection is
 * up (or failed), answer the request with socks_reply. */
#ifndef CLIENT_SOCKS_H
#define CLIENT_SOCKS_H
#include <stddef.h>
#include <stdint.h>

/* The longest greeting (2 + 255 methods) or request (4 + 1 + 255 + 2):
 * socks_feed never answers SOCKS_NEED_MORE when given this many bytes, so
 * a buffer of this size is enough. */
#define SOCKS_MAX_MSG 262

/* Incremental parser of a SOCKS5 client's greeting and CONNECT request. */
typedef enum { SOCKS_NEED_MORE, SOCKS_REPLY_METHOD, SOCKS_REQUEST, SOCKS_ERROR } socks_step_t;

typedef struct {
    int state; /* internal */
    /* After SOCKS_REQUEST: "1.2.3.4" (also for an IPv4-mapped IPv6
     * address; other IPv6 is refused with 8) or a name (1..255 bytes, none
     * of them NUL, a control byte, DEL or a space); always NUL-terminated
     * ("" before). */
    char host[256];
    uint16_t port; /* after SOCKS_REQUEST; never 0 */
    /* What to send after SOCKS_REPLY_METHOD (2 bytes) or SOCKS_ERROR (2 or
     * 10 bytes, or 0 when nothing sensible can be sent). */
    uint8_t reply[16];
    size_t reply_len;
    const char *why; /* after SOCKS_ERROR: a static reason for the log */
} socks_t;

/* SOCKS reply codes (RFC 1928 section 6). */
enum {
    SOCKS_OK = 0,
    SOCKS_GENERAL_FAILURE = 1,
    SOCKS_NOT_ALLOWED = 2,
    SOCKS_NET_UNREACHABLE = 3,
    SOCKS_HOST_UNREACHABLE = 4,
    SOCKS_REFUSED = 5,
    SOCKS_TTL_EXPIRED = 6,
    SOCKS_CMD_UNSUPPORTED = 7,
    SOCKS_ATYP_UNSUPPORTED = 8
};

void socks_init(socks_t *s);

/* Feeds buf[0..len), the bytes received and not yet consumed (buf may be
 * NULL when len is 0); *used is set to the bytes consumed. Returns:
 *  SOCKS_NEED_MORE: not enough bytes yet; *used is 0.
 *  SOCKS_REPLY_METHOD: the greeting was read; send s->reply: 05 00 when
 *    "no authentication" was offered, else 05 FF, and then the next call
 *    returns SOCKS_ERROR (with nothing more to send).
 *  SOCKS_REQUEST: a CONNECT request was read; s->host and s->port are set.
 *    Bytes after it (if any) are early application data the caller keeps.
 *  SOCKS_ERROR: malformed or unsupported; *used is 0; send s->reply (if
 *    any) and close; s->why says why. Replies: none for a greeting whose
 *    version is not 5 (not a SOCKS5 client), 05 FF for a greeting with no
 *    methods; in the request, a full reply with 07 for a command other
 *    than CONNECT, 08 for an unknown address type, and 01 (general
 *    failure) for anything else malformed: version not 5, RSV not 0, a
 *    bad domain name, or port 0 (nothing can be reached there, and RFC
 *    1928 has no better code for it).
 * The outcome depends on the bytes only, not on how they were split; an
 * error may come before the whole message has arrived. Once SOCKS_REQUEST or
 * SOCKS_ERROR has been returned, every further call returns SOCKS_ERROR
 * with nothing to send. */
socks_step_t socks_feed(socks_t *s, const uint8_t *buf, size_t len, size_t *used);

/* Writes a SOCKS5 reply (VER 5, REP code, RSV 0, ATYP 1, the bound IPv4
 * address and port, 0.0.0.0:0 when unknown) into out[10]; returns 10. */
size_t socks_reply(uint8_t out[10], uint8_t code, uint32_t bound_ip_host_order,
                   uint16_t bound_port);

#endif
