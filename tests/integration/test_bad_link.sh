#!/usr/bin/env bash
# Issue 4, bad input on the data plane: a device that breaks the stream
# rules (overruns its window, uses the edge's stream ids, sends datagrams on
# a TCP stream) is closed with SessionClosed{PROTOCOL}; frames for streams
# that do not exist are dropped; garbage, malformed frames and opens for
# closed sessions on the forwarder's data link are refused and logged. A
# device that never reads its tunnel while it resets stream after stream
# (each reset gives its credit back at the forwarder) does not make the
# edge queue without end: past the cap its streams are reset; nor does a
# peer that floods Pings and never reads. Every service keeps serving
# everyone else.
. "$(dirname "$0")/lib.sh"
lab_start
RAW="python3 $ROOT/tests/integration/tools/rawdevice.py"
ECHO_PORT=$(free_port); SINK_PORT=$(free_port)
echo_server "$ECHO_PORT"
bg python3 "$PEER" sink "$SINK_PORT"
wait_until 5000 listening "$SINK_PORT" || fail "sink did not start"
ZERO_PORT=$(free_port)   # sends zeros to whoever connects
bg socat -u OPEN:/dev/zero TCP-LISTEN:"$ZERO_PORT",bind=127.0.0.1,reuseaddr,fork
wait_until 5000 listening "$ZERO_PORT" || fail "the zero source did not start"
client_start alice alice --expose tcp:7003=127.0.0.1:$ECHO_PORT
wait_until 10000 test -s "$LAB/alice.json" || fail "alice did not log on: $(cat "$LAB/alice.out")"
ip=$(json_field "$LAB/alice.json" ip)
alice_ok() { [[ $(echo still-here | timeout 3 ncat "$ip" 7003) == still-here ]]; }
wait_until 3000 alice_ok || fail "alice's port is not reachable"

# --- devices breaking the stream rules ---
# closed_for WHAT WANT MODE [ARGS]: bob's raw device in MODE is closed with
# SessionClosed{PROTOCOL, WANT}.
closed_for() {
    local what=$1 want=$2 out; shift 2
    out=$($RAW "$EDGE_ADDR" "$CA" bob "$USER_BOB_PASSWORD_FILE" "$@") || true
    [[ $out == "closed PROTOCOL: $want" ]] || fail "$what: $out"
    ok "$what: $out"
}
closed_for "a device sending past its window" "stream window overrun" overrun 127.0.0.1 "$SINK_PORT"
closed_for "a device granting credit for bytes it was never sent" "WINDOW grants more than the stream's window" overgrant 127.0.0.1 "$SINK_PORT"
closed_for "a device sending DATA with no bytes and no flags" "empty DATA frame" empty-data 127.0.0.1 "$SINK_PORT"
closed_for "a device sending its FIN twice" "DATA after FIN" fin-twice 127.0.0.1 "$SINK_PORT"
# Closed for a protocol error, a device that does not read keeps its
# connection while the edge flushes and lingers (2 s and more), but not its
# session: the forwarder lets it go at once. (It breaks the protocol 0.3 s
# after its session is attached.)
attached() { metric "$FORWARDER_STATUS_URL" reachback_forwarder_attached_sessions; }
bg $RAW "$EDGE_ADDR" "$CA" bob "$USER_BOB_PASSWORD_FILE" empty-data-quiet 127.0.0.1 "$SINK_PORT"
quiet_pid=$BG_PID
bob_attached() { [[ $(attached) == 2 ]]; }
wait_until 3000 bob_attached || fail "bob's session was not attached next to alice's ($(attached))"
t0=$(now_ms)
bob_gone() { [[ $(attached) == 1 ]]; }
wait_until 1200 bob_gone || fail "bob's session is still attached $(( $(now_ms) - t0 )) ms after his protocol error"
ok "a device closed for a protocol error that reads nothing is detached at once ($(( $(now_ms) - t0 )) ms)"
wait "$quiet_pid" || true
closed_for "a device opening an edge-side stream id" "a device's stream id must be odd" even-id
closed_for "a device sending a datagram on a TCP stream" "DATAGRAM on a TCP stream" data-flow 127.0.0.1 "$ECHO_PORT"
closed_for "a device sending stream bytes on its own UDP flow" "DATA on a UDP flow" flow-data 127.0.0.1 "$ECHO_PORT"
out=$($RAW "$EDGE_ADDR" "$CA" bob "$USER_BOB_PASSWORD_FILE" bad-proto) || fail "unknown proto: $out"
[[ $out == "refused 6: unknown protocol, alive" ]] || fail "unknown proto: $out"
ok "a device opening a stream of an unknown protocol: $out"
EDGE_PID=$(cat "$LAB/run/edge1.pid")
echo 5 >"/proc/$EDGE_PID/clear_refs"   # peak RSS from now on
hwm0=$(awk '/^VmHWM/ { print $2 }' "/proc/$EDGE_PID/status")   # peak RSS
out=$($RAW "$EDGE_ADDR" "$CA" bob "$USER_BOB_PASSWORD_FILE" churn 127.0.0.1 "$ZERO_PORT") || fail "churn: $out"
hwm1=$(awk '/^VmHWM/ { print $2 }' "/proc/$EDGE_PID/status")
resets=$(metric "$EDGE_STATUS_URL" reachback_edge_backlog_resets_total)
[[ ${resets%.*} -ge 1 ]] || fail "a device resetting 40 streams it never read: no backlog reset ($out)"
# (Under ASan a reallocated queue's old and new blocks both count: the
# reset count above is the check there.)
[[ -n ${ASAN_OPTIONS:-} ]] || (( hwm1 - hwm0 < 48 * 1024 )) || fail "the edge's peak grew by $(( hwm1 - hwm0 )) KiB for a device that does not read"
ok "a device that never reads and resets stream after stream: $out, $resets stream(s) reset at the edge's backlog cap, edge peak +$(( hwm1 - hwm0 )) KiB"
out=$($RAW "$EDGE_ADDR" "$CA" bob "$USER_BOB_PASSWORD_FILE" stray) || fail "stray frames: $out"
ok "frames for streams that do not exist are dropped; the tunnel lives ($out)"
# A peer that never logs on, sends Pings as fast as it can and reads none of
# the Pongs: the edge stops answering past a small backlog.
echo 5 >"/proc/$EDGE_PID/clear_refs"
hwm0=$(awk '/^VmHWM/ { print $2 }' "/proc/$EDGE_PID/status")
out=$($RAW "$EDGE_ADDR" "$CA" bob "$USER_BOB_PASSWORD_FILE" ping-flood) || fail "ping flood: $out"
hwm1=$(awk '/^VmHWM/ { print $2 }' "/proc/$EDGE_PID/status")
[[ $out == flooded* ]] || fail "ping flood: $out"
[[ -n ${ASAN_OPTIONS:-} ]] || (( hwm1 - hwm0 < 16 * 1024 )) || fail "the edge's peak grew by $(( hwm1 - hwm0 )) KiB for a peer that pings and never reads ($out)"
ok "a peer that floods Pings before logging on and reads nothing: $out, edge peak +$(( hwm1 - hwm0 )) KiB"
# A device that asks and never reads the answers: StreamOpens the edge
# refuses at once. Its queue is bounded; past that it is closed.
echo 5 >"/proc/$EDGE_PID/clear_refs"
hwm0=$(awk '/^VmHWM/ { print $2 }' "/proc/$EDGE_PID/status")
out=$($RAW "$EDGE_ADDR" "$CA" bob "$USER_BOB_PASSWORD_FILE" open-flood) || fail "open flood: $out"
hwm1=$(awk '/^VmHWM/ { print $2 }' "/proc/$EDGE_PID/status")
[[ $out == "closed PROTOCOL: the device sends but does not read"* ]] || fail "open flood: $out"
[[ -n ${ASAN_OPTIONS:-} ]] || (( hwm1 - hwm0 < 64 * 1024 )) || fail "the edge's peak grew by $(( hwm1 - hwm0 )) KiB for a device that asks and never reads ($out)"
ok "a device that opens streams the edge refuses and never reads the answers: $out, edge peak +$(( hwm1 - hwm0 )) KiB"
alice_ok || fail "alice's streams broke after bob's misbehaviour"
overruns=$(metric "$EDGE_STATUS_URL" reachback_edge_window_overruns_total)
[[ ${overruns%.*} -ge 1 ]] || fail "window overrun not counted ($overruns)"
ok "alice unaffected; the edge counted $overruns window overrun(s)"

# --- garbage on the forwarder's data link ---
link=$(awk '$1 == "data_endpoint" { print $3 }' "$LAB/conf/forwarder.conf")
pub=-; key=new
if [[ $link == tcp://* ]]; then pub=$LAB/keys/forwarder.pub; key=$LAB/keys/edge.key; fi
ZPOKE=$BIN/rb-zpoke
# An Open (LinkControl.open) for session "gone" to 127.0.0.1:1, link id 1:
open_hex=$(pb 'o=i(1,1)+f(2,b"gone")+i(3,1)+f(4,b"127.0.0.1")+i(5,1)
print(f(5,o).hex())')
"$ZPOKE" "$link" "$pub" "$key" 3000 $(hello) $(hexframe 1 0 0 "$open_hex") | grep -q "^reply" \
    || fail "an Open for a closed session got no answer"
ok "an Open for a session the forwarder does not have is answered (OpenResult), not dropped silently"
"$ZPOKE" "$link" "$pub" "$key" 0 deadbeef >/dev/null || true                         # not a header
"$ZPOKE" "$link" "$pub" "$key" 0 "$(printf '02000000000000050000000a')" 0011 >/dev/null || true   # length differs
"$ZPOKE" "$link" "$pub" "$key" 0 "$(printf '0400000000000005%08x' 4)" 00000000 >/dev/null || true  # zero window
"$ZPOKE" "$link" "$pub" "$key" 0 $(hexframe 1 0 0 ffffffff) >/dev/null || true       # bad protobuf
"$ZPOKE" "$link" "$pub" "$key" 0 $(hexframe 9 0 1 00) >/dev/null || true             # unknown type
"$ZPOKE" "$link" "$pub" "$key" 0 $(hello) $(hexframe 2 0 12345 6869) >/dev/null || true # DATA, no stream
wait_until 3000 bash -c "(( \$(grep -c 'bad_link_message' '$LAB/logs/forwarder.log') >= 4 ))" \
    || fail "the forwarder logged $(grep -c bad_link_message "$LAB/logs/forwarder.log") bad link messages"
errs=$(metric "$FORWARDER_STATUS_URL" reachback_forwarder_link_errors_total)
[[ ${errs%.*} -ge 4 ]] || fail "link errors counted: $errs"
alice_ok || fail "alice's streams broke after garbage on the data link"
ok "garbage on the data link: $errs errors logged and counted; alice's streams still work"

# --- session ids that collide in a hash ---
# Two sessions, from two edges, whose ids have the same 64-bit FNV-1a hash
# (a pair found by a birthday search): the forwarder once kept sessions in a
# table keyed by that hash alone, so the second Attach pushed the first out
# of it; when the first's edge fell silent and was freed, the orphaned
# attachment still listened and used the freed edge on the next datagram.
attach_hex() {   # attach_hex SESSION IP UDP_PORT: LinkControl{attach}
    pb '
import sys
sid, ip, port = sys.argv[1].encode(), sys.argv[2].encode(), int(sys.argv[3])
a=f(1,sid)+f(2,b"hashuser")+f(3,ip)+f(5,i(1,2)+i(2,port))
print(f(3,a).hex())' "$@"
}
x=${POOL#127.}; x=${x%%.*}
IP_A=127.$x.254.5 IP_B=127.$x.254.6 UPORT=$(free_port)
attached() { metric "$FORWARDER_STATUS_URL" reachback_forwarder_attached_sessions; }
attached_is() { [[ $(attached) == "$1" ]]; }
before=$(attached); before=${before%.*}
"$ZPOKE" "$link" "$pub" "$key" 0 $(hello) $(hexframe 1 0 0 "$(attach_hex shlkjdaaphmgmcagk "$IP_A" "$UPORT")") >/dev/null
"$ZPOKE" "$link" "$pub" "$key" 0 $(hello) $(hexframe 1 0 0 "$(attach_hex smgcjjihomfkdopfj "$IP_B" "$UPORT")") >/dev/null
wait_until 3000 attached_is $(( before + 2 )) \
    || fail "two sessions with colliding id hashes: attached went from $before to $(attached), not +2"
# Their edges (the two pokes) are gone: after 5 s of silence both go.
wait_until 12000 attached_is "$before" \
    || fail "the silent edges' sessions were not all detached: $(attached) attached, $before before"
for ip_ in "$IP_A" "$IP_B"; do echo hello | timeout 3 socat -T 1 - UDP4:"$ip_":"$UPORT" >/dev/null 2>&1 || true; done
sleep 0.5
kill -0 "$(cat "$LAB/run/forwarder.pid")" 2>/dev/null || fail "the forwarder died: $(tail -n 5 "$LAB/logs/forwarder.log")"
alice_ok || fail "alice's streams broke after the colliding sessions"
ok "two session ids with one hash are two attachments; both go with their silent edges; datagrams after find nothing"

# --- an Attach before the peer's Hello ---
# Until a peer's Hello is accepted it has not shown its link version: its
# Attach is dropped (counted, logged once), and the same Attach after a
# Hello on the same connection is taken.
IP_NH=127.$x.254.9
errs0=$(metric "$FORWARDER_STATUS_URL" reachback_forwarder_link_errors_total)
nohello0=$(metric "$FORWARDER_STATUS_URL" reachback_forwarder_link_before_hello_total)
"$ZPOKE" "$link" "$pub" "$key" 0 $(hexframe 1 0 0 "$(attach_hex snohello "$IP_NH" "$UPORT")") >/dev/null
nohello_rose() { local n; n=$(metric "$FORWARDER_STATUS_URL" reachback_forwarder_link_before_hello_total); (( ${n%.*} > ${nohello0%.*} )); }
wait_until 3000 nohello_rose || fail "an Attach before Hello was not counted as dropped"
grep -q link_before_hello "$LAB/logs/forwarder.log" || fail "an Attach before Hello was not logged as dropped"
sleep 0.3
attached_is "$before" || fail "an Attach before Hello was taken: $(attached) attached, $before before"
[[ -z $(ss -Huln "src $IP_NH:$UPORT") ]] || fail "an Attach before Hello opened $IP_NH:$UPORT"
errs1=$(metric "$FORWARDER_STATUS_URL" reachback_forwarder_link_errors_total)
(( ${errs1%.*} == ${errs0%.*} )) || fail "a message before Hello counted as a link error ($errs0 -> $errs1)"
"$ZPOKE" "$link" "$pub" "$key" 0 $(hello) $(hexframe 1 0 0 "$(attach_hex snohello "$IP_NH" "$UPORT")") >/dev/null
wait_until 3000 attached_is $(( before + 1 )) || fail "the Attach after a Hello was not taken: $(attached)"
wait_until 12000 attached_is "$before" || fail "the poked session did not go with its silent edge: $(attached)"
ok "an Attach before the peer's Hello is dropped and counted; after a Hello it is taken"

# --- a known peer that says Hello again with another version ---
# (an edge restarted with another link version under the same name): what
# its old self attached goes at once, not after a silence its Hellos would
# keep away. One connection: Hello, Attach, then 2 s later (rb-zpoke
# waits that long for an answer to the Attach) a Hello of version 1; the
# connection ends 2 s after that, so a drop for silence would come 9 s
# after the Attach.
IP_V=127.$x.254.10
msg_hello=$(hello)   # expanded here: a background command expands its words late
msg_attach=$(hexframe 1 0 0 "$(attach_hex sversion "$IP_V" "$UPORT")")
msg_v1=$(hello_frames 1)
"$ZPOKE" "$link" "$pub" "$key" 2000 $msg_hello $msg_attach , $msg_v1 >/dev/null &
poke=$!
wait_until 3000 attached_is $(( before + 1 )) || fail "the Attach after a good Hello was not taken: $(attached)"
wait_until 5000 attached_is "$before" \
    || fail "a refused second Hello left its peer's session attached until the silence: $(attached)"
wait "$poke" || true
grep -q "said Hello again and was refused" "$LAB/logs/forwarder.log" \
    || fail "the refused second Hello was not logged"
ok "a known peer's Hello of another version is refused and what it attached goes at once"

# --- a session attached again with another address ---
# Its lease was lost and granted anew (say Redis lost its data), so the
# edge attaches the same session with a new address: the forwarder must
# move its listeners there, not keep serving the old address.
IP_OLD=127.$x.254.7 IP_NEW=127.$x.254.8
udp_bound() { [[ -n $(ss -Huln "src $1:$UPORT") ]]; }
udp_unbound() { ! udp_bound "$1"; }
"$ZPOKE" "$link" "$pub" "$key" 0 $(hello) $(hexframe 1 0 0 "$(attach_hex smoved "$IP_OLD" "$UPORT")") >/dev/null
wait_until 3000 udp_bound "$IP_OLD" || fail "no UDP listener on $IP_OLD:$UPORT after the first Attach"
"$ZPOKE" "$link" "$pub" "$key" 0 $(hello) $(hexframe 1 0 0 "$(attach_hex smoved "$IP_NEW" "$UPORT")") >/dev/null
wait_until 3000 udp_bound "$IP_NEW" || fail "no UDP listener on $IP_NEW:$UPORT after the Attach with the new address"
wait_until 3000 udp_unbound "$IP_OLD" || fail "the old address $IP_OLD:$UPORT still listens after the session moved"
attached_is $(( before + 1 )) || fail "one session attached twice counts $(attached), $before before"
wait_until 12000 attached_is "$before" || fail "the moved session's silent edge did not take it along: $(attached)"
udp_unbound "$IP_NEW" || fail "$IP_NEW:$UPORT still listens after its session went"
ok "a session attached again with a new address listens there, and no longer on the old one"

# --- an edge that sends a stream more than its window ---
# A poke attaches a session, opens a device-side stream to a server whose
# one backlog slot is taken (the connect waits: the forwarder holds what
# comes, and hands no credit back), and sends 2 MiB + 64 KiB on it: past
# the window, the stream is reset, counted and logged; the forwarder and
# alice go on. (To a server that accepts, the kernel's buffers would take
# megabytes and the forwarder would grant them back in time.)
IP_OVER=127.$x.254.11 STUCK_PORT=$(free_port)
bg python3 -c "
import socket, time
s = socket.socket(); s.bind(('127.0.0.1', $STUCK_PORT)); s.listen(0)
c = socket.create_connection(('127.0.0.1', $STUCK_PORT))
open('$LAB/stuck.ready', 'w').close(); time.sleep(60)"
wait_until 5000 test -e "$LAB/stuck.ready" || fail "the server that never accepts did not fill its backlog"
open_out_hex=$(pb 'import sys
o=i(1,1)+f(2,b"soverrun")+i(3,1)+f(4,b"127.0.0.1")+i(5,int(sys.argv[1]))
print(f(5,o).hex())' "$STUCK_PORT")
data_msgs=()
for _ in $(seq 33); do data_msgs+=($(hexframe 2 0 1 zeros:65536) ,); done
unset 'data_msgs[-1]'
overruns0=$(metric "$FORWARDER_STATUS_URL" reachback_forwarder_window_overruns_total)
overrun_logs() { grep -c '"event":"window_overrun".*stream 1 sent' "$LAB/logs/forwarder.log" || true; }
logged0=$(overrun_logs)
overruns_rose() { local n; n=$(metric "$FORWARDER_STATUS_URL" reachback_forwarder_window_overruns_total); (( ${n%.*} == ${overruns0%.*} + 1 )); }
"$ZPOKE" "$link" "$pub" "$key" 0 $(hello) $(hexframe 1 0 0 "$(attach_hex soverrun "$IP_OVER" "$UPORT")") , \
    $(hexframe 1 0 0 "$open_out_hex") , "${data_msgs[@]}" >/dev/null
wait_until 3000 overruns_rose \
    || fail "a stream sent past its window: window_overruns_total $overruns0 -> $(metric "$FORWARDER_STATUS_URL" reachback_forwarder_window_overruns_total)"
(( $(overrun_logs) == logged0 + 1 )) || fail "the overrun was not logged"
overrun_audited() { audit_lines | grep "port\":$STUCK_PORT," | grep -q '"verdict":"failed".*"reason":"window overrun"'; }
wait_until 3000 overrun_audited || fail "the overrun stream was not audited: $(audit_lines | tail -1)"
kill -0 "$(cat "$LAB/run/forwarder.pid")" 2>/dev/null || fail "the forwarder died: $(tail -n 5 "$LAB/logs/forwarder.log")"
alice_ok || fail "alice's streams broke after the overrun"
wait_until 12000 attached_is "$before" || fail "the overrun session's silent edge did not take it along: $(attached)"
ok "an edge sending a stream past its window: that stream reset, counted, logged and audited; alice unaffected"
