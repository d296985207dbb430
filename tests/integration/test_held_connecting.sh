#!/usr/bin/env bash
# Issue 4, flow control towards the internal network: what a device sends
# behind its StreamOpen while the forwarder is still connecting counts
# against the session's max_held_per_session_kib (2 MiB here). Past it the
# stream holding the most is ended, and one whose open is still unanswered
# gets its answer (FAILED, and why), not a bare reset: a result comes before
# any other frame of a stream the device opened.
. "$(dirname "$0")/lib.sh"
lab_start --set forwarder.max_held_per_session_kib=2048
STUCK_PORT=$(free_port)
# A server that never accepts: past its one queued connection, the kernel
# drops SYNs and connects wait (connect_timeout_ms is 10 s).
bg python3 -c "
import socket, time
s = socket.socket(); s.bind(('127.0.0.1', $STUCK_PORT)); s.listen(0); time.sleep(120)"
wait_until 5000 listening "$STUCK_PORT" || fail "the server that never accepts did not start"
client_start alice alice -v --forward "127.0.0.1:0:127.0.0.1:$STUCK_PORT"
wait_until 10000 test -s "$LAB/alice.json" || fail "alice did not log on: $(cat "$LAB/alice.out")"
FWD_LOCAL=$(listen_port "$LAB/alice.json" 0)
failed() { metric "$FORWARDER_STATUS_URL" 'reachback_forwarder_outbound_total{result="failed"}'; }
failed0=$(failed)

# 40 local clients send 64 KiB each (what the device sends before the
# answer): 2.5 MiB held at the forwarder for connects that do not finish.
bg python3 -c "
import socket, time
socks = []
for i in range(40):
    s = socket.create_connection(('127.0.0.1', $FWD_LOCAL))
    s.sendall(b'x' * 65536)
    socks.append(s)
time.sleep(30)"
wait_until 10000 grep -q '"event":"session_held_full"' "$LAB/logs/forwarder.log" \
    || fail "the session's held bytes were not capped: $(curl -s "$FORWARDER_STATUS_URL/status")"
wait_until 3000 grep -q "stream_refused.*the session's internal peers are not reading" "$LAB/alice.out" \
    || fail "the device was not told why its stream ended: $(grep -c stream "$LAB/alice.out") stream lines in its log"
(( $(failed) > failed0 )) || fail "reachback_forwarder_outbound_total{result=\"failed\"} did not rise ($failed0 -> $(failed))"
line=$(audit_lines | grep "not reading" | head -1)
grep -q '"kind":"outbound".*"verdict":"failed"' <<<"$line" || fail "audit: $line"
ok "40 connects that never finish, 64 KiB each behind them: past 2 MiB the fullest was answered FAILED (\"the session's internal peers are not reading\"), counted and audited as failed"
