#!/usr/bin/env python3
"""TCP peers with exact behaviour for the data-plane integration tests
(standard library only). Each mode prints one result line and exits 0 when
the peer behaved as the mode expects, 1 otherwise.

  peer.py whoami PORT                 server: answers each connection with the
                                      client's address and closes
  peer.py halfclose-server PORT FILE  server: sends "greeting\\n", shuts its
                                      write side, reads to EOF, writes what it
                                      read to FILE
  peer.py halfclose-client HOST PORT  client: reads "greeting\\n" and EOF, then
                                      sends "after-eof\\n" and shuts down
  peer.py reset-server PORT           server: reads a line, then resets (RST)
  peer.py expect-reset HOST PORT      client: sends a line, expects a reset
  peer.py end-server PORT FILE        server: echoes one connection; writes how
                                      it ended ("eof" or "reset") to FILE
  peer.py reset-client HOST PORT      client: sends a line, reads its echo,
                                      then resets (RST)
  peer.py sink PORT                   server: accepts and never reads
  peer.py source HOST PORT BYTES SECS client: sends up to BYTES for at most
                                      SECS; prints the bytes the socket took
  peer.py pinger HOST PORT COUNT GAP  client: one connection, COUNT echoed
                                      lines GAP seconds apart
  peer.py rate HOST PORT SECS         client: echoes 16 KiB blocks for SECS,
                                      prints bytes/s
  peer.py udp-blast HOST PORT SIZE SECS [SRCPORT]
                                      UDP: sends SIZE-byte datagrams from one
                                      socket (bound to SRCPORT) as fast as it
                                      can for SECS; prints the datagrams sent
"""
import socket
import struct
import sys
import time


def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(port)))
    s.listen(16)
    return s


def read_all(c):
    data = b""
    while True:
        b = c.recv(65536)
        if not b:
            return data
        data += b


def whoami(port):
    s = listen(port)
    while True:
        c, addr = s.accept()
        c.sendall(("%s\n" % addr[0]).encode())
        c.close()


def halfclose_server(port, path):
    s = listen(port)
    c, _ = s.accept()
    c.sendall(b"greeting\n")
    c.shutdown(socket.SHUT_WR)
    data = read_all(c)
    with open(path, "wb") as f:
        f.write(data)
    print("server read %r" % data)
    return 0


def halfclose_client(host, port):
    c = socket.create_connection((host, int(port)), timeout=5)
    got = read_all(c)
    if got != b"greeting\n":
        print("want greeting and EOF, got %r" % got)
        return 1
    c.sendall(b"after-eof\n")
    c.shutdown(socket.SHUT_WR)
    rest = read_all(c)
    print("greeting, EOF, sent after EOF; then %r" % rest)
    return 0 if rest == b"" else 1


def reset_server(port):
    s = listen(port)
    c, _ = s.accept()
    c.recv(100)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    print("reset sent")
    return 0


def expect_reset(host, port):
    c = socket.create_connection((host, int(port)), timeout=5)
    c.sendall(b"hello\n")
    try:
        data = read_all(c)
    except ConnectionResetError:
        print("reset")
        return 0
    print("no reset: read %r then EOF" % data)
    return 1


def end_server(port, path):
    s = listen(port)
    c, _ = s.accept()
    try:
        while True:
            b = c.recv(65536)
            if not b:
                how = "eof"
                break
            c.sendall(b)
    except ConnectionResetError:
        how = "reset"
    with open(path, "w") as f:
        f.write(how + "\n")
    print(how)
    return 0


def reset_client(host, port):
    c = socket.create_connection((host, int(port)), timeout=5)
    c.sendall(b"hello\n")
    got = b""
    while len(got) < 6:
        b = c.recv(100)
        if not b:
            print("EOF after %r, before the echo" % got)
            return 1
        got += b
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    print("echoed, reset sent")
    return 0


def sink(port):
    s = listen(port)
    conns = []
    while True:
        c, _ = s.accept()
        conns.append(c)


def source(host, port, nbytes, secs):
    c = socket.create_connection((host, int(port)), timeout=float(secs))
    c.setblocking(False)
    block = b"x" * 65536
    sent, deadline = 0, time.time() + float(secs)
    while sent < int(nbytes) and time.time() < deadline:
        try:
            sent += c.send(block[: min(len(block), int(nbytes) - sent)])
        except BlockingIOError:
            time.sleep(0.01)
    print(sent)
    return 0


def pinger(host, port, count, gap):
    c = socket.create_connection((host, int(port)), timeout=5)
    for i in range(int(count)):
        line = ("ping %d\n" % i).encode()
        c.sendall(line)
        got = b""
        while len(got) < len(line):
            b = c.recv(100)
            if not b:
                print("closed after %d pings" % i)
                return 1
            got += b
        if got != line:
            print("ping %d: got %r" % (i, got))
            return 1
        time.sleep(float(gap))
    print("%s pings echoed on one connection" % count)
    return 0


def rate(host, port, secs):
    c = socket.create_connection((host, int(port)), timeout=5)
    block = b"y" * 16384
    total, deadline = 0, time.time() + float(secs)
    start = time.time()
    while time.time() < deadline:
        c.sendall(block)
        got = 0
        while got < len(block):
            b = c.recv(65536)
            if not b:
                print(0)
                return 1
            got += len(b)
        total += got
    print(int(total / (time.time() - start)))
    return 0


def udp_blast(host, port, size, secs, srcport="0"):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind(("127.0.0.1", int(srcport)))
    u.connect((host, int(port)))
    u.setblocking(False)
    d = b"u" * int(size)
    sent, deadline = 0, time.time() + float(secs)
    while time.time() < deadline:
        for _ in range(64):
            try:
                u.send(d)
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
    print(sent)
    return 0


MODES = {
    "whoami": whoami, "halfclose-server": halfclose_server,
    "halfclose-client": halfclose_client, "reset-server": reset_server,
    "expect-reset": expect_reset, "end-server": end_server, "reset-client": reset_client,
    "sink": sink, "source": source,
    "pinger": pinger, "rate": rate, "udp-blast": udp_blast,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in MODES:
        sys.stderr.write(__doc__)
        sys.exit(2)
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(MODES[sys.argv[1]](*sys.argv[2:]) or 0)
