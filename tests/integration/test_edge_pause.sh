#!/usr/bin/env bash
# Issue 4: an edge paused (SIGSTOP here; a frozen VM alike) for longer than
# a forwarder waits for it (5 s of silence) has its sessions dropped by that
# forwarder; when it runs again it must attach them again, or every
# connection to its devices' exposed ports would be refused until they log
# on again. Here libzmq's heartbeat breaks the link during the pause and the
# edge notices the silence itself; when it does not (its queued input read
# before its timer), the forwarder's HelloAck with a new instance tells it
# (forwarder_plane.c, s_on_hello), which this test does not reach.
. "$(dirname "$0")/lib.sh"
lab_start
ECHO_PORT=$(free_port)
echo_server "$ECHO_PORT"
client_start alice alice --expose tcp:7000=127.0.0.1:$ECHO_PORT
wait_until 10000 test -s "$LAB/alice.json" || fail "alice did not log on: $(cat "$LAB/alice.out")"
ip=$(json_field "$LAB/alice.json" ip)
echoes() { [[ $(echo "$1" | timeout 2 ncat "$ip" 7000 2>/dev/null) == "$1" ]]; }
wait_until 5000 echoes before || fail "alice's exposed port does not echo"

EDGE_PID=$(cat "$LAB/run/edge1.pid")
silent() { grep -c '"event":"edge_silent"' "$LAB/logs/forwarder.log" || true; }
silent_before=$(silent)
dropped() { (( $(silent) > silent_before )); }
kill -STOP "$EDGE_PID"
if ! wait_until 10000 dropped; then
    kill -CONT "$EDGE_PID"
    fail "the forwarder did not drop the paused edge"
fi
kill -CONT "$EDGE_PID"
ok "the edge was paused until the forwarder dropped its sessions"
wait_until 5000 echoes after \
    || fail "after the pause alice's exposed port does not echo: her session was not attached again"
ok "after the pause the edge attached alice's session again: her exposed port echoes"
