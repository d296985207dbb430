#!/usr/bin/env python3
"""A device that speaks the tunnel protocol by hand (docs/protocol.md), to
break it on purpose. Logs on over TLS, then misbehaves in one way and
prints what the edge did. Standard library only; protobuf is encoded by
hand (varints and length-delimited fields are all the tunnel uses).

  rawdevice.py HOST:PORT CA USER PASSWORD_FILE MODE [TARGET_HOST TARGET_PORT]

Modes:
  overrun        opens a stream to TARGET and sends more than its window
                 without waiting for credit: the edge must close with
                 SessionClosed{PROTOCOL}
  even-id        opens a stream with an even id (the edge's ids): PROTOCOL
  overgrant      opens a stream to TARGET and grants credit for bytes it was
                 never sent (WINDOW 4096 at once): PROTOCOL
  empty-data     opens a stream to TARGET and sends a DATA frame with no
                 bytes and no flags: PROTOCOL
  fin-twice      opens a stream to TARGET and sends its FIN twice: PROTOCOL
  empty-data-quiet
                 as empty-data after 0.3 s, then reads nothing for 4 s
                 (the edge must let the session go at once, not when it
                 has flushed)
  churn          opens 40 streams to TARGET (a server that sends at once),
                 one after the other, resetting each after 50 ms, never
                 reading the tunnel; then reads it and pings: "alive N" (N:
                 streams the edge reset) or how it ended
  stray          DATA, WINDOW and DATAGRAM on streams never opened, and a
                 StreamResult for one: ignored; a Ping is still answered
  data-flow      DATAGRAM on a TCP stream: PROTOCOL
  flow-data      opens a UDP flow to TARGET, then sends DATA on it: PROTOCOL
  bad-proto      opens a stream with an unknown proto (7): the edge answers
                 StreamResult FAILED and the tunnel lives ("refused ...",
                 then "alive" after a Ping)
  ping-flood     before any logon, sends Pings as fast as the edge takes
                 them for 3 s, reading nothing, then holds the connection
                 1 s more: "flooded N" (N Pings sent)
  open-flood     sends 1,200,000 StreamOpens of an unknown proto (each
                 answered at once with a StreamResult, about 43 MB in all)
                 reading nothing, then reads what came: the edge must close
                 with PROTOCOL before it has queued them all ("closed
                 PROTOCOL: ..., after N answers"; "alive after N answers"
                 when it did not)
Prints one line: "closed PROTOCOL: <message>", "alive", or what went wrong.
"""
import socket
import ssl
import struct
import sys
import time

CONTROL, DATA, DATAGRAM, WINDOW = 1, 2, 3, 4


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def field_bytes(num, b):
    if isinstance(b, str):
        b = b.encode()
    return varint(num << 3 | 2) + varint(len(b)) + b


def control(num, body):
    return frame(CONTROL, 0, 0, field_bytes(num, body))


def frame(ftype, flags, sid, payload):
    return struct.pack(">BBHII", ftype, flags, 0, sid, len(payload)) + payload


def read_varint(buf, i):
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def fields(buf):
    """(number, wire type, value) of each field of a message."""
    i, out = 0, []
    while i < len(buf):
        tag, i = read_varint(buf, i)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 2:
            n, i = read_varint(buf, i)
            v = buf[i:i + n]
            i += n
        else:
            raise ValueError("wire type %d" % wt)
        out.append((num, wt, v))
    return out


class Tunnel:
    def __init__(self, hostport, ca):
        host, port = hostport.rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        raw = socket.create_connection((host, int(port)), timeout=20)
        self.s = ctx.wrap_socket(raw, server_hostname=host)
        self.buf = b""

    def send(self, b):
        self.s.sendall(b)

    def frame(self):
        """The next frame, or None at EOF."""
        while True:
            if len(self.buf) >= 12:
                t, fl, _, sid, n = struct.unpack(">BBHII", self.buf[:12])
                if len(self.buf) >= 12 + n:
                    p = self.buf[12:12 + n]
                    self.buf = self.buf[12 + n:]
                    return t, fl, sid, p
            try:
                b = self.s.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                return None
            if not b:
                return None
            self.buf += b

    def control(self):
        """The next control message as (field number, body), skipping
        stream frames; None at EOF."""
        while True:
            f = self.frame()
            if f is None:
                return None
            if f[0] == CONTROL:
                num, _, body = fields(f[3])[0]
                return num, body


def closed_line(body):
    reason, msg = 0, b""
    for num, _, v in fields(body):
        if num == 1:
            reason = v
        if num == 2:
            msg = v
    names = {2: "PROTOCOL"}
    return "closed %s: %s" % (names.get(reason, str(reason)), msg.decode(errors="replace"))


def main():
    hostport, ca, user, pwfile, mode = sys.argv[1:6]
    target = sys.argv[6:8]
    password = open(pwfile).readline().strip()
    t = Tunnel(hostport, ca)
    t.send(control(1, field_varint(1, 2) + field_bytes(2, "rawdevice")))   # Hello v2
    m = t.control()
    if not m or m[0] != 2:
        print("no HelloAck: %r" % (m,))
        return 1
    if mode == "ping-flood":
        batch = control(7, field_varint(1, 7)) * 4096
        sent, end = 0, time.monotonic() + 3
        t.s.settimeout(1)
        while time.monotonic() < end:
            try:
                t.send(batch)
            except (socket.timeout, OSError):
                break   # the edge stopped reading: fine, that bounds it too
            sent += 4096
        time.sleep(1)
        print("flooded %d" % sent)
        return 0
    t.send(control(3, field_bytes(1, user) + field_bytes(2, password) + field_bytes(3, "raw")))
    m = t.control()
    if m and m[0] == 11:   # an earlier run's session: take it over
        offer_id = [v for num, _, v in fields(m[1]) if num == 1][0]
        t.send(control(12, field_bytes(1, offer_id) + field_varint(2, 1)))
        m = t.control()
    if not m or m[0] != 4:
        print("no LogonOk: %r" % (m,))
        return 1

    if mode == "overrun":
        host, port = target
        t.send(control(14, field_varint(1, 1) + field_varint(2, 1) + field_bytes(3, host)
                       + field_varint(4, int(port))))
        # Never reading the edge's WINDOW frames: once the target's socket
        # buffers are full no credit comes back, and 64 MiB is far past
        # any window.
        chunk = b"z" * 65536
        try:
            for _ in range(64 * 1024 * 1024 // len(chunk)):
                t.send(frame(DATA, 0, 1, chunk))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
    elif mode == "even-id":
        t.send(control(14, field_varint(1, 2) + field_varint(2, 1) + field_bytes(3, "127.0.0.1")
                       + field_varint(4, 9)))
    elif mode in ("overgrant", "empty-data", "empty-data-quiet", "fin-twice"):
        host, port = target
        t.send(control(14, field_varint(1, 9) + field_varint(2, 1) + field_bytes(3, host)
                       + field_varint(4, int(port))))
        if mode == "overgrant":
            t.send(frame(WINDOW, 0, 9, struct.pack(">I", 4096)))
        elif mode == "empty-data":
            t.send(frame(DATA, 0, 9, b""))
        elif mode == "fin-twice":
            t.send(frame(DATA, 1, 9, b""))
            t.send(frame(DATA, 1, 9, b""))
        else:
            time.sleep(0.3)   # attached a moment first, for the test to see
            t.send(frame(DATA, 0, 9, b""))
            time.sleep(4)
    elif mode == "data-flow":
        host, port = target
        t.send(control(14, field_varint(1, 3) + field_varint(2, 1) + field_bytes(3, host)
                       + field_varint(4, int(port))))
        t.send(frame(DATAGRAM, 0, 3, b"not a flow"))
    elif mode == "flow-data":
        host, port = target
        t.send(control(14, field_varint(1, 5) + field_varint(2, 2) + field_bytes(3, host)
                       + field_varint(4, int(port))))
        t.send(frame(DATA, 0, 5, b"not a stream"))
    elif mode == "bad-proto":
        t.send(control(14, field_varint(1, 7) + field_varint(2, 7) + field_bytes(3, "127.0.0.1")
                       + field_varint(4, 9)))
        m = t.control()
        if not m or m[0] != 15:
            print("no StreamResult: %r" % (m,))
            return 1
        r = {num: v for num, _, v in fields(m[1])}
        t.send(control(7, field_varint(1, 43)))   # Ping
        while True:
            p = t.control()
            if p is None or p[0] == 9:
                print("closed after the StreamResult")
                return 1
            if p[0] == 8:
                break
        print("refused %d: %s, alive" % (r.get(2, 0), r.get(3, b"").decode(errors="replace")))
        return 0
    elif mode == "churn":
        host, port = target
        for k in range(40):
            sid = 2 * k + 1
            t.send(control(14, field_varint(1, sid) + field_varint(2, 1) + field_bytes(3, host)
                           + field_varint(4, int(port))))
            time.sleep(0.05)
            t.send(frame(DATA, 2, sid, b""))
        t.send(control(7, field_varint(1, 44)))   # Ping
        resets = 0
        while True:
            f = t.frame()
            if f is None:
                print("closed without a word")
                return 1
            if f[0] == DATA and f[1] & 2:
                resets += 1
            if f[0] == CONTROL:
                num, _, body = fields(f[3])[0]
                if num == 9:
                    print(closed_line(body))
                    return 1
                if num == 8:
                    print("alive %d" % resets)
                    return 0
    elif mode == "open-flood":
        opens = 1200000
        batch = control(14, field_varint(1, 7) + field_varint(2, 7) + field_bytes(3, "127.0.0.1")
                        + field_varint(4, 9)) * 4000
        try:
            for _ in range(opens // 4000):
                t.send(batch)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        data = bytearray(t.buf)
        t.s.settimeout(5)
        while True:
            try:
                b = t.s.recv(1 << 20)
            except (socket.timeout, ConnectionResetError, ssl.SSLError, OSError):
                break
            if not b:
                break
            data += b
        i, answers, closed = 0, 0, None
        while i + 12 <= len(data):
            ft, _, _, _, n = struct.unpack_from(">BBHII", data, i)
            body = bytes(data[i + 12:i + 12 + n])
            i += 12 + n
            if ft == CONTROL:
                num, _, v = fields(body)[0]
                if num == 15:
                    answers += 1
                elif num == 9:
                    closed = v
        if closed is None:
            print("alive after %d answers" % answers)
            return 1
        print("%s, after %d answers" % (closed_line(closed), answers))
        return 0
    elif mode == "stray":
        t.send(frame(DATA, 0, 99, b"nobody"))
        t.send(frame(DATA, 2, 101, b""))
        t.send(frame(WINDOW, 0, 77, struct.pack(">I", 4096)))
        t.send(frame(DATAGRAM, 0, 55, b"lost"))
        t.send(control(15, field_varint(1, 1234) + field_varint(2, 0)))
        t.send(control(7, field_varint(1, 42)))   # Ping
        while True:
            m = t.control()
            if m is None:
                print("closed without a word")
                return 1
            if m[0] == 9:
                print(closed_line(m[1]))
                return 1
            if m[0] == 8:
                print("alive")
                return 0
    else:
        print("unknown mode")
        return 2

    while True:
        m = t.control()
        if m is None:
            print("closed without SessionClosed")
            return 1
        if m[0] == 9:
            print(closed_line(m[1]))
            return 0


if __name__ == "__main__":
    sys.exit(main())
