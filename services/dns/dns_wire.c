/* dns_wire: the DNS message codec. See dns_wire.h for the contract. */
#include "dns_wire.h"

#include <assert.h>
#include <string.h>

#include "rb_cursor.h"

/* RFC 1035 4.1.4: a pointer is 11 in the top two bits; 01 and 10 are the
 * obsolete extended label types, which we refuse. */
#define DNS_PTR_MASK 0xC0u
/* Pointers must strictly decrease, so a name can take at most this many
 * jumps before it runs out of packet; the cap makes the bound explicit. */
#define DNS_MAX_JUMPS 127

static inline uint8_t s_lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

static bool s_label_eq(const uint8_t *a, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s_lower(a[i]) != s_lower(b[i])) return false;
    return true;
}

int dns_wire_read_name(const uint8_t *pkt, size_t len, size_t *pos, uint8_t out[DNS_NAME_MAX])
{
    rb_cursor_t c;
    rb_cur_init(&c, pkt, len);
    if (*pos > len) return -1;
    c.pos = *pos;
    /* Every pointer must land before the lowest offset read so far: that
     * makes loops impossible, not merely detected. */
    size_t lowest = *pos, after = 0, olen = 0;
    int jumps = 0;
    for (;;) {
        uint8_t b = rb_cur_u8(&c);
        if (c.err) return -1;
        if ((b & DNS_PTR_MASK) == DNS_PTR_MASK) {
            size_t target = (size_t)(b & 0x3Fu) << 8 | rb_cur_u8(&c);
            if (c.err) return -1;
            if (jumps == 0) after = c.pos;
            if (target >= lowest || target < DNS_HEADER_LEN || ++jumps > DNS_MAX_JUMPS) return -1;
            lowest = target;
            c.pos = target;
            continue;
        }
        if (b & DNS_PTR_MASK) return -1;
        if (b == 0) {
            if (olen + 1 > DNS_NAME_MAX) return -1;
            out[olen++] = 0;
            break;
        }
        /* b <= 63 here; the label plus the root byte must still fit. */
        const uint8_t *lab = rb_cur_bytes(&c, b);
        if (lab == NULL || olen + 1 + b + 1 > DNS_NAME_MAX) return -1;
        out[olen] = b;
        memcpy(out + olen + 1, lab, b);
        olen += 1 + (size_t)b;
    }
    *pos = jumps ? after : c.pos;
    return (int)olen;
}

/* Fills qlower, nlabels and label_off from qname. */
static void s_index_name(dns_query_t *q)
{
    size_t p = 0;
    q->nlabels = 0;
    while (q->qname[p] != 0) {
        q->label_off[q->nlabels++] = (uint8_t)p;
        uint8_t n = q->qname[p];
        q->qlower[p] = n;
        for (size_t i = 1; i <= n; i++) q->qlower[p + i] = s_lower(q->qname[p + i]);
        p += 1 + (size_t)n;
    }
    q->qlower[p] = 0;
}

static int s_question(const uint8_t *pkt, size_t len, rb_cursor_t *c, dns_query_t *q)
{
    size_t pos = c->pos;
    int n = dns_wire_read_name(pkt, len, &pos, q->qname);
    if (n < 0) return -1;
    c->pos = pos;
    q->qname_len = (uint16_t)n;
    q->qtype = rb_cur_u16(c);
    q->qclass = rb_cur_u16(c);
    if (c->err) return -1;
    s_index_name(q);
    return 0;
}

/* The one additional record a query may carry: OPT (RFC 6891 6.1.2). Any
 * other record is skipped; we do not sign or verify anything. */
static int s_additional(const uint8_t *pkt, size_t len, rb_cursor_t *c, dns_query_t *q)
{
    uint8_t name[DNS_NAME_MAX];
    size_t pos = c->pos;
    int n = dns_wire_read_name(pkt, len, &pos, name);
    if (n < 0) return -1;
    c->pos = pos;
    uint16_t type = rb_cur_u16(c);
    size_t klass_off = c->pos;
    uint16_t klass = rb_cur_u16(c);
    uint32_t ttl = rb_cur_u32(c);
    uint16_t rdlen = rb_cur_u16(c);
    const uint8_t *rdata = rb_cur_bytes(c, rdlen);
    if (rdata == NULL) return -1;
    if (type != DNS_TYPE_OPT) return 0;
    if (n != 1) return -1;   /* OPT is owned by the root */
    /* Options are {code, length, data}; they must tile the rdata. */
    rb_cursor_t o;
    rb_cur_init(&o, rdata, rdlen);
    while (rb_cur_left(&o) > 0) {
        (void)rb_cur_u16(&o);
        uint16_t olen = rb_cur_u16(&o);
        if (rb_cur_bytes(&o, olen) == NULL) return -1;
    }
    q->edns = true;
    q->edns_size = klass < DNS_UDP_PLAIN ? DNS_UDP_PLAIN : klass;
    q->edns_size_off = (uint16_t)klass_off;
    q->edns_version = (uint8_t)(ttl >> 16);
    return 0;
}

int dns_wire_parse_query(const uint8_t *pkt, size_t len, dns_query_t *q)
{
    rb_cursor_t c;
    rb_cur_init(&c, pkt, len);
    q->has_question = false;
    q->edns = false;
    q->edns_size = 0;
    q->edns_size_off = 0;
    q->edns_version = 0;
    q->qname_len = 0;
    q->nlabels = 0;
    q->id = rb_cur_u16(&c);
    q->flags = rb_cur_u16(&c);
    uint16_t qd = rb_cur_u16(&c), an = rb_cur_u16(&c), ns = rb_cur_u16(&c),
             ar = rb_cur_u16(&c);
    if (c.err || (q->flags & DNS_FLAG_QR)) return -1;
    if (qd != 1) return DNS_RCODE_FORMERR;
    if (s_question(pkt, len, &c, q) < 0) return DNS_RCODE_FORMERR;
    q->has_question = true;
    if (DNS_OPCODE(q->flags) != 0) return DNS_RCODE_NOTIMP;
    if (an != 0 || ns != 0 || ar > 1) return DNS_RCODE_FORMERR;
    if (ar == 1 && s_additional(pkt, len, &c, q) < 0) return DNS_RCODE_FORMERR;
    if (rb_cur_left(&c) != 0) return DNS_RCODE_FORMERR;   /* trailing bytes */
    if (q->edns && q->edns_version != 0) return DNS_RCODE_BADVERS;
    return DNS_RCODE_NOERROR;
}

int dns_wire_parse_response_question(const uint8_t *pkt, size_t len, dns_query_t *q)
{
    rb_cursor_t c;
    rb_cur_init(&c, pkt, len);
    q->id = rb_cur_u16(&c);
    q->flags = rb_cur_u16(&c);
    uint16_t qd = rb_cur_u16(&c);
    (void)rb_cur_bytes(&c, 6);
    if (c.err || !(q->flags & DNS_FLAG_QR) || qd != 1) return -1;
    if (s_question(pkt, len, &c, q) < 0) return -1;
    q->has_question = true;
    return 0;
}

static int s_text_to_wire(const char *text, uint8_t out[DNS_NAME_MAX], bool lower)
{
    size_t olen = 0;
    const char *p = text;
    if (p[0] == '.' && p[1] == '\0') p++;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n == 0 || n > DNS_LABEL_MAX || olen + 1 + n + 1 > DNS_NAME_MAX) return -1;
        out[olen] = (uint8_t)n;
        for (size_t i = 0; i < n; i++) {
            uint8_t ch = (uint8_t)p[i];
            bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                      (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
            if (!ok) return -1;
            out[olen + 1 + i] = lower ? s_lower(ch) : ch;
        }
        olen += 1 + n;
        p += n;
        if (*p == '.') p++;
    }
    out[olen++] = 0;
    return (int)olen;
}

int dns_wire_name_from_text(const char *text, uint8_t out[DNS_NAME_MAX])
{
    return s_text_to_wire(text, out, true);
}

char *dns_wire_name_to_text(const uint8_t *name, char *out, size_t outlen)
{
    size_t o = 0, p = 0;
    if (outlen == 0) return out;
    while (name[p] != 0) {
        uint8_t n = name[p];
        if (o > 0 && o + 1 < outlen) out[o++] = '.';
        for (size_t i = 1; i <= n && o + 1 < outlen; i++) {
            uint8_t ch = name[p + i];
            out[o++] = (ch > 0x20 && ch < 0x7f) ? (char)ch : '?';
        }
        p += 1 + (size_t)n;
    }
    if (o == 0 && outlen > 1) out[o++] = '.';
    out[o] = '\0';
    return out;
}

bool dns_wire_name_equal(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    return alen == blen && s_label_eq(a, b, alen);
}

size_t dns_wire_max_response(const dns_query_t *q, bool tcp)
{
    if (tcp) return DNS_TCP_MAX;
    if (!q->edns) return DNS_UDP_PLAIN;
    return q->edns_size > DNS_EDNS_PAYLOAD ? DNS_EDNS_PAYLOAD : q->edns_size;
}

/* ---- writer ---- */

static inline void s_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void s_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Does the (trusted, already written) name at off equal suffix? */
static bool s_match_at(const uint8_t *buf, size_t off, const uint8_t *suffix)
{
    size_t i = 0;
    for (int guard = 0; guard < DNS_LABELS_MAX * 2; guard++) {
        uint8_t b = buf[off];
        if ((b & DNS_PTR_MASK) == DNS_PTR_MASK) {
            off = (size_t)(b & 0x3Fu) << 8 | buf[off + 1];
            continue;
        }
        if (b != suffix[i]) return false;
        if (b == 0) return true;
        if (!s_label_eq(buf + off + 1, suffix + i + 1, b)) return false;
        off += 1 + (size_t)b;
        i += 1 + (size_t)b;
    }
    return false;
}

/* Finds the longest suffix of name already in the message. Sets *lit to the
 * number of leading bytes to write literally and returns the offset to
 * point at, or 0 when the whole name (root included) is literal. */
static size_t s_compress(const dns_writer_t *w, const uint8_t *name, size_t nlen, size_t *lit)
{
    for (size_t i = 0; i + 1 < nlen; i += 1 + (size_t)name[i]) {
        for (unsigned k = 0; k < w->nnames; k++) {
            if (w->buf[w->names[k]] == name[i] && s_match_at(w->buf, w->names[k], name + i)) {
                *lit = i;
                return w->names[k];
            }
        }
    }
    *lit = nlen;
    return 0;
}

static size_t s_name_size(const dns_writer_t *w, const uint8_t *name, size_t nlen)
{
    size_t lit;
    return s_compress(w, name, nlen, &lit) ? lit + 2 : lit;
}

/* Writes name at w->len (room already checked) and remembers its labels. */
static void s_put_name(dns_writer_t *w, const uint8_t *name, size_t nlen)
{
    size_t lit;
    size_t ptr = s_compress(w, name, nlen, &lit);
    size_t start = w->len;
    memcpy(w->buf + w->len, name, lit);
    w->len += lit;
    for (size_t i = 0; i < lit && name[i] != 0; i += 1 + (size_t)name[i]) {
        if (start + i < 0x3FFF && w->nnames < DNS_WRITER_NAMES)
            w->names[w->nnames++] = (uint16_t)(start + i);
    }
    if (ptr) {
        s_put16(w->buf + w->len, (uint16_t)(0xC000u | ptr));
        w->len += 2;
    }
}

static bool s_room(dns_writer_t *w, size_t n)
{
    if (w->failed) return false;
    if (w->len + n > w->max - w->reserve) {
        w->failed = true;
        return false;
    }
    return true;
}

int dns_writer_begin(dns_writer_t *w, uint8_t *buf, size_t max, const dns_query_t *q,
                     unsigned rcode, bool aa)
{
    memset(w, 0, sizeof *w);
    w->buf = buf;
    w->max = max > DNS_TCP_MAX ? DNS_TCP_MAX : max;
    w->edns = q->edns;
    w->reserve = q->edns ? 11 : 0;
    w->rcode = (uint8_t)rcode;
    w->flags = (uint16_t)(DNS_FLAG_QR | (q->flags & (0x7800u | DNS_FLAG_RD | DNS_FLAG_CD)) |
                          (aa ? DNS_FLAG_AA : 0));
    size_t need = DNS_HEADER_LEN + w->reserve + (q->has_question ? q->qname_len + 4u : 0u);
    if (need > w->max) return -1;
    s_put16(buf, q->id);
    memset(buf + 2, 0, DNS_HEADER_LEN - 2);
    w->len = DNS_HEADER_LEN;
    if (q->has_question) {
        s_put16(buf + 4, 1);
        memcpy(buf + w->len, q->qname, q->qname_len);
        for (unsigned i = 0; i < q->nlabels && w->nnames < DNS_WRITER_NAMES; i++)
            w->names[w->nnames++] = (uint16_t)(DNS_HEADER_LEN + q->label_off[i]);
        w->len += q->qname_len;
        s_put16(buf + w->len, q->qtype);
        s_put16(buf + w->len + 2, q->qclass);
        w->len += 4;
    }
    w->qend = w->len;
    return 0;
}

/* Owner name, type, class IN, TTL; returns the offset of RDLENGTH, or 0
 * when rdmax more bytes of rdata would not fit. */
static size_t s_rr_head(dns_writer_t *w, dns_section_t sec, const uint8_t *name, size_t nlen,
                        uint16_t type, uint32_t ttl, size_t rdmax)
{
    /* Sections are written in order; a record for an earlier section after
     * a later one has started is our own bug. */
    for (int s = sec + 1; s < 3; s++) assert(w->count[s] == 0);
    if (!s_room(w, s_name_size(w, name, nlen) + 10 + rdmax)) return 0;
    s_put_name(w, name, nlen);
    s_put16(w->buf + w->len, type);
    s_put16(w->buf + w->len + 2, DNS_CLASS_IN);
    s_put32(w->buf + w->len + 4, ttl);
    size_t rdlen_at = w->len + 8;
    w->len += 10;
    w->count[sec]++;
    return rdlen_at;
}

static void s_rr_end(dns_writer_t *w, size_t rdlen_at)
{
    s_put16(w->buf + rdlen_at, (uint16_t)(w->len - rdlen_at - 2));
}

int dns_writer_a(dns_writer_t *w, dns_section_t sec, const uint8_t *name, size_t name_len,
                 uint32_t ttl, uint32_t ip)
{
    size_t at = s_rr_head(w, sec, name, name_len, DNS_TYPE_A, ttl, 4);
    if (!at) return -1;
    s_put32(w->buf + w->len, ip);
    w->len += 4;
    s_rr_end(w, at);
    return 0;
}

/* NS and PTR: one name as rdata. The room check counts the rdata name
 * uncompressed, which can only over-estimate. */
static int s_name_rr(dns_writer_t *w, dns_section_t sec, const uint8_t *name, size_t name_len,
                     uint16_t type, uint32_t ttl, const uint8_t *target, size_t target_len)
{
    size_t at = s_rr_head(w, sec, name, name_len, type, ttl, target_len);
    if (!at) return -1;
    s_put_name(w, target, target_len);
    s_rr_end(w, at);
    return 0;
}

int dns_writer_ns(dns_writer_t *w, dns_section_t sec, const uint8_t *name, size_t name_len,
                  uint32_t ttl, const uint8_t *host, size_t host_len)
{
    return s_name_rr(w, sec, name, name_len, DNS_TYPE_NS, ttl, host, host_len);
}

int dns_writer_ptr(dns_writer_t *w, dns_section_t sec, const uint8_t *name, size_t name_len,
                   uint32_t ttl, const uint8_t *target, size_t target_len)
{
    return s_name_rr(w, sec, name, name_len, DNS_TYPE_PTR, ttl, target, target_len);
}

int dns_writer_soa(dns_writer_t *w, dns_section_t sec, const uint8_t *apex, size_t apex_len,
                   uint32_t ttl, const uint8_t *mname, size_t mname_len, const uint8_t *rname,
                   size_t rname_len, const dns_soa_t *soa)
{
    size_t at = s_rr_head(w, sec, apex, apex_len, DNS_TYPE_SOA, ttl, mname_len + rname_len + 20);
    if (!at) return -1;
    s_put_name(w, mname, mname_len);
    s_put_name(w, rname, rname_len);
    uint8_t *p = w->buf + w->len;
    s_put32(p, soa->serial);
    s_put32(p + 4, soa->refresh);
    s_put32(p + 8, soa->retry);
    s_put32(p + 12, soa->expire);
    s_put32(p + 16, soa->minimum);
    w->len += 20;
    s_rr_end(w, at);
    return 0;
}

size_t dns_writer_finish(dns_writer_t *w)
{
    uint16_t flags = (uint16_t)(w->flags | (w->rcode & 0xFu));
    if (w->failed) {
        flags |= DNS_FLAG_TC;
        w->len = w->qend;
        memset(w->count, 0, sizeof w->count);
    }
    s_put16(w->buf + 2, flags);
    s_put16(w->buf + 6, w->count[DNS_SEC_ANSWER]);
    s_put16(w->buf + 8, w->count[DNS_SEC_AUTHORITY]);
    uint16_t ar = w->count[DNS_SEC_ADDITIONAL];
    if (w->edns) {
        /* OPT: root owner, our payload size, extended rcode bits, version 0
         * (RFC 6891 6.1.3). Room was reserved at begin. */
        uint8_t *p = w->buf + w->len;
        p[0] = 0;
        s_put16(p + 1, DNS_TYPE_OPT);
        s_put16(p + 3, DNS_EDNS_PAYLOAD);
        s_put32(p + 5, (uint32_t)(w->rcode >> 4) << 24);
        s_put16(p + 9, 0);
        w->len += 11;
        ar++;
    }
    s_put16(w->buf + 10, ar);
    return w->len;
}

size_t dns_wire_truncate(uint8_t *pkt, size_t len, size_t max)
{
    dns_query_t q;
    if (dns_wire_parse_response_question(pkt, len, &q) < 0) return 0;
    size_t qend = DNS_HEADER_LEN + q.qname_len + 4u;
    if (qend > max) return 0;
    s_put16(pkt + 2, (uint16_t)(q.flags | DNS_FLAG_TC));
    memset(pkt + 6, 0, 6);
    return qend;
}

size_t dns_wire_add_opt(uint8_t *pkt, size_t len, size_t cap, uint16_t payload)
{
    if (len < DNS_HEADER_LEN || len + 11 > cap || pkt[10] != 0 || pkt[11] != 0) return 0;
    uint8_t *p = pkt + len;
    p[0] = 0;
    s_put16(p + 1, DNS_TYPE_OPT);
    s_put16(p + 3, payload);
    s_put32(p + 5, 0);
    s_put16(p + 9, 0);
    s_put16(pkt + 10, 1);
    return len + 11;
}

size_t dns_wire_strip_opt(uint8_t *pkt, size_t len)
{
    if (len < DNS_HEADER_LEN) return 0;
    unsigned qd = (unsigned)pkt[4] << 8 | pkt[5];
    unsigned rrs = ((unsigned)pkt[6] << 8 | pkt[7]) + ((unsigned)pkt[8] << 8 | pkt[9]);
    unsigned ar = (unsigned)pkt[10] << 8 | pkt[11];
    size_t pos = DNS_HEADER_LEN;
    uint8_t name[DNS_NAME_MAX];
    for (unsigned i = 0; i < qd; i++) {
        if (dns_wire_read_name(pkt, len, &pos, name) < 0 || pos + 4 > len) return 0;
        pos += 4;
    }
    dns_rr_t rr;
    for (unsigned i = 0; i < rrs; i++)
        if (dns_wire_read_rr(pkt, len, &pos, &rr) < 0) return 0;
    /* The message ends at the OPT: what follows it (nothing, from any
     * server we know; TSIG would) could point into it by compression. */
    for (unsigned i = 0; i < ar; i++) {
        size_t at = pos;
        if (dns_wire_read_rr(pkt, len, &pos, &rr) < 0) return 0;
        if (rr.type != DNS_TYPE_OPT) continue;
        if (rr.ttl >> 24) return 0; /* an extended rcode: not expressible without OPT */
        s_put16(pkt + 10, (uint16_t)i);
        return at;
    }
    return len;
}

size_t dns_wire_build_query(uint8_t *buf, size_t cap, uint16_t id, const char *name,
                            uint16_t qtype, uint16_t edns_size)
{
    uint8_t wire[DNS_NAME_MAX];
    int n = s_text_to_wire(name, wire, false);
    if (n < 0 || DNS_HEADER_LEN + (size_t)n + 4 > cap) return 0;
    memset(buf, 0, DNS_HEADER_LEN);
    s_put16(buf, id);
    s_put16(buf + 2, DNS_FLAG_RD);
    s_put16(buf + 4, 1);
    memcpy(buf + DNS_HEADER_LEN, wire, (size_t)n);
    size_t len = DNS_HEADER_LEN + (size_t)n;
    s_put16(buf + len, qtype);
    s_put16(buf + len + 2, DNS_CLASS_IN);
    len += 4;
    if (edns_size) len = dns_wire_add_opt(buf, len, cap, edns_size);
    return len;
}

int dns_wire_read_rr(const uint8_t *pkt, size_t len, size_t *pos, dns_rr_t *rr)
{
    size_t p = *pos;
    int n = dns_wire_read_name(pkt, len, &p, rr->name);
    if (n < 0) return -1;
    rr->name_len = (uint16_t)n;
    rb_cursor_t c;
    rb_cur_init(&c, pkt, len);
    c.pos = p;
    rr->type = rb_cur_u16(&c);
    rr->klass = rb_cur_u16(&c);
    rr->ttl = rb_cur_u32(&c);
    rr->rdlen = rb_cur_u16(&c);
    rr->rdata = c.pos;
    if (rb_cur_bytes(&c, rr->rdlen) == NULL) return -1;
    *pos = c.pos;
    return 0;
}

const char *dns_rcode_name(unsigned rcode)
{
    switch (rcode) {
    case DNS_RCODE_NOERROR: return "NOERROR";
    case DNS_RCODE_FORMERR: return "FORMERR";
    case DNS_RCODE_SERVFAIL: return "SERVFAIL";
    case DNS_RCODE_NXDOMAIN: return "NXDOMAIN";
    case DNS_RCODE_NOTIMP: return "NOTIMP";
    case DNS_RCODE_REFUSED: return "REFUSED";
    case DNS_RCODE_BADVERS: return "BADVERS";
    default: return "OTHER";
    }
}
