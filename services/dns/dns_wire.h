/* dns_wire: the DNS message codec (RFC 1035, EDNS0 from RFC 6891).
 *
 * The reader parses one query through a bounded cursor and says how to
 * answer it; every length comes from the packet and is checked first. The
 * writer builds a response into a caller's buffer with a hard size limit,
 * compressing names against what it already wrote (the question first), and
 * falls back to a truncated (TC) answer when the records do not fit.
 * Neither allocates: the server calls them for every packet. */
#ifndef DNS_WIRE_H
#define DNS_WIRE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DNS_HEADER_LEN 12
#define DNS_NAME_MAX 255           /* wire length, root byte included */
#define DNS_LABEL_MAX 63
#define DNS_LABELS_MAX 128         /* a 255-byte name has at most 127 labels */
#define DNS_UDP_PLAIN 512          /* the limit without EDNS */
#define DNS_EDNS_PAYLOAD 1232      /* our UDP cap (the DNS flag day 2020 value) */
#define DNS_TCP_MAX 65535

enum {
    DNS_RCODE_NOERROR = 0,
    DNS_RCODE_FORMERR = 1,
    DNS_RCODE_SERVFAIL = 2,
    DNS_RCODE_NXDOMAIN = 3,
    DNS_RCODE_NOTIMP = 4,
    DNS_RCODE_REFUSED = 5,
    DNS_RCODE_BADVERS = 16,        /* extended: only expressible with OPT */
};

enum {
    DNS_TYPE_A = 1,
    DNS_TYPE_NS = 2,
    DNS_TYPE_SOA = 6,
    DNS_TYPE_PTR = 12,
    DNS_TYPE_TXT = 16,
    DNS_TYPE_AAAA = 28,
    DNS_TYPE_OPT = 41,
    DNS_TYPE_IXFR = 251,
    DNS_TYPE_AXFR = 252,
    DNS_TYPE_ANY = 255,
};

#define DNS_CLASS_IN 1

/* Header flag bits (second 16-bit word). */
#define DNS_FLAG_QR 0x8000u
#define DNS_FLAG_AA 0x0400u
#define DNS_FLAG_TC 0x0200u
#define DNS_FLAG_RD 0x0100u
#define DNS_FLAG_RA 0x0080u
#define DNS_FLAG_CD 0x0010u
#define DNS_OPCODE(flags) (((flags) >> 11) & 0xfu)

/* A parsed query. The name is kept uncompressed in wire form twice: as sent
 * (the answer echoes its case) and lower-cased (for lookups). */
typedef struct {
    uint16_t id;
    uint16_t flags;
    bool has_question;             /* the question parsed (echo it in errors) */
    uint8_t qname[DNS_NAME_MAX];
    uint8_t qlower[DNS_NAME_MAX];
    uint16_t qname_len;            /* wire length, root byte included */
    uint8_t nlabels;               /* root not counted */
    uint8_t label_off[DNS_LABELS_MAX];
    uint16_t qtype;
    uint16_t qclass;
    bool edns;                     /* an OPT record was present */
    uint16_t edns_size;            /* the client's UDP payload size */
    uint16_t edns_size_off;        /* where the packet holds it (OPT's class) */
    uint8_t edns_version;
} dns_query_t;

/* Parses a query of len bytes. Returns the rcode to answer with
 * (DNS_RCODE_NOERROR when the query is good, FORMERR, NOTIMP or BADVERS), or
 * -1 when the packet must be dropped silently: shorter than a header, or a
 * response (QR=1). Fields parsed before an error stay set, so an error
 * answer can echo the id and, when has_question, the question. */
int dns_wire_parse_query(const uint8_t *pkt, size_t len, dns_query_t *q);

/* Reads the question of a response from an upstream server (for matching it
 * to the query we sent). Same checks on the name. 0 or -1. */
int dns_wire_parse_response_question(const uint8_t *pkt, size_t len, dns_query_t *q);

/* Reads a (possibly compressed) name at *pos in pkt into out (wire form, as
 * written), advancing *pos past the name as it appears at that position.
 * Pointers must point backwards and stay inside pkt; at most 127 jumps;
 * labels <= 63; total <= 255. Returns the wire length or -1. */
int dns_wire_read_name(const uint8_t *pkt, size_t len, size_t *pos, uint8_t out[DNS_NAME_MAX]);

/* Converts "alice.vpn.lab" or "alice.vpn.lab." to wire form, lower-cased.
 * Rejects empty labels, labels over 63 bytes, names over 255 bytes, and
 * bytes outside [A-Za-z0-9_-] (we only ever serve host names).
 * Returns the wire length or -1. "" and "." are the root (length 1). */
int dns_wire_name_from_text(const char *text, uint8_t out[DNS_NAME_MAX]);
/* Writes a wire name as text without the trailing dot ("." for the root).
 * out needs 254 bytes at least; returns out. */
char *dns_wire_name_to_text(const uint8_t *name, char *out, size_t outlen);
/* Case-insensitive equality of two uncompressed wire names. */
bool dns_wire_name_equal(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);

/* The largest response a client accepts: 512 without EDNS, its EDNS size
 * clamped to [512, DNS_EDNS_PAYLOAD] on UDP, 65535 on TCP. */
size_t dns_wire_max_response(const dns_query_t *q, bool tcp);

#define DNS_WRITER_NAMES 32

typedef enum { DNS_SEC_ANSWER = 0, DNS_SEC_AUTHORITY = 1, DNS_SEC_ADDITIONAL = 2 } dns_section_t;

/* Builds one response. buf must hold max bytes. */
typedef struct {
    uint8_t *buf;
    size_t max;
    size_t len;
    size_t qend;                   /* end of the question: the TC fallback */
    size_t reserve;                /* kept free for the OPT record */
    uint16_t count[3];             /* per dns_section_t */
    uint16_t flags;
    uint8_t rcode;                 /* may be extended (BADVERS) */
    bool edns;
    bool failed;                   /* a record did not fit: answer is TC */
    uint8_t nnames;
    uint16_t names[DNS_WRITER_NAMES]; /* offsets of labels written, for compression */
} dns_writer_t;

/* Starts a response to q: header with q's id, QR, opcode, RD and CD
 * copied, AA when aa, the rcode (extended rcodes need q->edns), and the
 * question when q->has_question. Reserves room for an OPT record when the
 * query had one. Returns 0, or -1 when even that does not fit in max (then
 * nothing sensible can be sent). */
int dns_writer_begin(dns_writer_t *w, uint8_t *buf, size_t max, const dns_query_t *q,
                     unsigned rcode, bool aa);
/* Adds a record. Records must be added section by section, in order. A
 * record that does not fit marks the response truncated: every record is
 * dropped and TC set at dns_writer_finish (RFC 2181 section 9: the client
 * retries over TCP). Returns 0, or -1 once truncated. */
int dns_writer_a(dns_writer_t *w, dns_section_t sec, const uint8_t *name, size_t name_len,
                 uint32_t ttl, uint32_t ip);
int dns_writer_ns(dns_writer_t *w, dns_section_t sec, const uint8_t *name, size_t name_len,
                  uint32_t ttl, const uint8_t *host, size_t host_len);
int dns_writer_ptr(dns_writer_t *w, dns_section_t sec, const uint8_t *name, size_t name_len,
                   uint32_t ttl, const uint8_t *target, size_t target_len);

typedef struct {
    uint32_t serial, refresh, retry, expire, minimum;
} dns_soa_t;

int dns_writer_soa(dns_writer_t *w, dns_section_t sec, const uint8_t *apex, size_t apex_len,
                   uint32_t ttl, const uint8_t *mname, size_t mname_len, const uint8_t *rname,
                   size_t rname_len, const dns_soa_t *soa);
/* Writes the counts, the OPT record when the query had EDNS, and TC when a
 * record did not fit. Returns the message length. */
size_t dns_writer_finish(dns_writer_t *w);

/* Rewrites a relayed response that is larger than max into a truncated one
 * (header with TC and zero counts, plus the question) in place. Returns the
 * new length, or 0 when the response has no parsable question. */
size_t dns_wire_truncate(uint8_t *pkt, size_t len, size_t max);

/* Appends an OPT record advertising payload to a query of len bytes that has
 * none (ARCOUNT 0), in a buffer of cap bytes. Returns the new length or 0. */
size_t dns_wire_add_opt(uint8_t *pkt, size_t len, size_t cap, uint16_t payload);

/* Removes the OPT record of a relayed response in place, and any record
 * after it (for a client whose query had none: RFC 6891 6.1.1 forbids
 * sending it one). Returns the new length, or 0 when the response does not
 * parse or its rcode needs the OPT (extended rcode, e.g. BADVERS). */
size_t dns_wire_strip_opt(uint8_t *pkt, size_t len);

/* Builds a query for name (text, case kept) and qtype, with RD set and an
 * OPT record advertising edns_size unless it is 0. Returns the length, or 0
 * when the name is bad or cap too small. (Clients, tests and benchmarks.) */
size_t dns_wire_build_query(uint8_t *buf, size_t cap, uint16_t id, const char *name,
                            uint16_t qtype, uint16_t edns_size);

/* One resource record as read from a message. */
typedef struct {
    uint8_t name[DNS_NAME_MAX];
    uint16_t name_len;
    uint16_t type, klass;
    uint32_t ttl;
    uint16_t rdlen;
    size_t rdata;               /* offset of the rdata in the message */
} dns_rr_t;

/* Reads the record at *pos and moves past it. 0 or -1. */
int dns_wire_read_rr(const uint8_t *pkt, size_t len, size_t *pos, dns_rr_t *rr);

const char *dns_rcode_name(unsigned rcode);

#endif
