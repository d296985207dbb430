#!/usr/bin/env bash
# bench/transfer_latency.sh: from a device's "yes" to a transfer offer until
# the old device's tunnel is closed and the new session is ready.
#
#   bench/transfer_latency.sh [--transfers N] [--budget SECONDS]
#
# A lab of its own with 2 edges. alice holds a session on one edge; a second
# reachback-client (--transfer ask, at a pseudo-terminal held by script(1))
# connects to the other edge, gets the offer and answers "y". Measured per
# transfer, from the moment "y" is typed: ready (the new client wrote its
# status file, i.e. LogonOk arrived), old closed (the old client exited,
# told "session transferred"), and done (both). The devices alternate edges,
# N times (default 40). Times are taken by polling every ~2 ms from bash, so
# they carry a few ms of measurement noise. In the same run, for scale: a
# plain logon of bob on the same edge, from the connect to the status file
# (TLS handshake + scrypt at the lab's cost + lease).
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

N=40
BUDGET=300
while (( $# )); do
    case $1 in
        --transfers) N=$2; shift 2 ;;
        --budget) BUDGET=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
bench_watchdog "$BUDGET"
bench_ensure_built reachback-edge reachback-broker reachback-ipalloc reachback-dns \
    reachback-forwarder reachback-ctl reachback-client
command -v script >/dev/null || die "script(1) is needed (util-linux)"
trap '' PIPE   # a device that died under its terminal: a write error, not our end
say "starting a lab with 2 edges in $LAB"
lab_start --edges 2
read -ra EDGES <<<"$EDGE_ADDRS"
now_ms() { date +%s%3N; }
alive() { kill -0 "$1" 2>/dev/null; }

# device NAME EDGE: a plain client in the background; pid in DEV_PID.
device() {
    "$BIN/reachback-client" connect --server "$2" --ca "$CA" --user "${3:-alice}" \
        --password-file "${4:-$USER_ALICE_PASSWORD_FILE}" --device "$1" --status-file "$WORK/$1.json" \
        </dev/null >"$WORK/$1.out" 2>&1 &
    DEV_PID=$!
    bench_track "$DEV_PID"
}

device d0 "${EDGES[0]}"
OLD_PID=$DEV_PID OLD=d0
for _ in $(seq 200); do [[ -s $WORK/d0.json ]] && break; sleep 0.05; done
[[ -s $WORK/d0.json ]] || die "alice did not log on: $(cat "$WORK/d0.out")"

: >"$WORK/ready.ms"; : >"$WORK/closed.ms"; : >"$WORK/done.ms"
fails=0
for ((i = 1; i <= N; i++)); do
    name=d$i edge=${EDGES[i % 2]}
    rm -f "$WORK/$name.in"; mkfifo "$WORK/$name.in"
    printf -v cmd '%q ' "$BIN/reachback-client" connect --server "$edge" --ca "$CA" --user alice \
        --password-file "$USER_ALICE_PASSWORD_FILE" --device "$name" --status-file "$WORK/$name.json" \
        --transfer ask
    script -qfc "$cmd" /dev/null <"$WORK/$name.in" >"$WORK/$name.out" 2>&1 &
    NEW_PID=$!
    bench_track "$NEW_PID"
    exec {fd}>"$WORK/$name.in"
    deadline=$(( $(now_ms) + 10000 ))
    until grep -qi "transfer" "$WORK/$name.out" 2>/dev/null && grep -q "\[" "$WORK/$name.out"; do
        (( $(now_ms) < deadline )) || break
        sleep 0.01
    done
    sleep 0.1   # the whole prompt is out
    alive "$NEW_PID" || die "transfer $i: the new device exited before the offer: $(tr -d '\r' <"$WORK/$name.out" | tail -n 2)"
    t0=$(now_ms)
    echo y >&"$fd" || true
    t_ready="" t_closed=""
    while [[ -z $t_ready || -z $t_closed ]]; do
        t=$(now_ms)
        [[ -z $t_ready && -s $WORK/$name.json ]] && t_ready=$t
        [[ -z $t_closed ]] && ! alive "$OLD_PID" && t_closed=$t
        (( t - t0 < 5000 )) || break
        sleep 0.002
    done
    exec {fd}>&-
    if [[ -z $t_ready || -z $t_closed ]]; then
        fails=$((fails + 1))
        say "transfer $i did not complete: ready=${t_ready:-no} closed=${t_closed:-no}: $(tail -n 2 "$WORK/$name.out" | tr -d '\r')"
        alive "$NEW_PID" || { die "the new device exited: $(cat "$WORK/$name.out")"; }
    else
        echo $(( t_ready - t0 )) >>"$WORK/ready.ms"
        echo $(( t_closed - t0 )) >>"$WORK/closed.ms"
        echo $(( (t_ready > t_closed ? t_ready : t_closed) - t0 )) >>"$WORK/done.ms"
    fi
    wait "$OLD_PID" 2>/dev/null || true
    OLD_PID=$NEW_PID OLD=$name
done

# For scale: plain logons of bob on edge1 (connect -> status file), then logoff.
: >"$WORK/logon.ms"
for ((i = 1; i <= 10; i++)); do
    rm -f "$WORK/bob.json"
    t0=$(now_ms)
    device "bob$i" "${EDGES[0]}" bob "$USER_BOB_PASSWORD_FILE"
    until [[ -s $WORK/bob$i.json ]]; do (( $(now_ms) - t0 < 10000 )) || break; sleep 0.002; done
    [[ -s $WORK/bob$i.json ]] && echo $(( $(now_ms) - t0 )) >>"$WORK/logon.ms"
    kill -INT "$DEV_PID"; wait "$DEV_PID" 2>/dev/null || true
done

pct() {   # pct FILE P
    sort -n "$1" | awk -v p="$2" '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit } i = int((NR - 1) * p / 100) + 1; print v[i] }'
}
echo "## Transfer latency: \"y\" typed -> old device closed and new session ready"
echo
echo "$(machine); $(date -u +%FT%TZ)"
echo
echo "| what | n | p50 ms | p99 ms | max ms |"
echo "| --- | --- | --- | --- | --- |"
echo "| **done: both (the figure)** | $(wc -l <"$WORK/done.ms") | **$(pct "$WORK/done.ms" 50)** | **$(pct "$WORK/done.ms" 99)** | $(pct "$WORK/done.ms" 100) |"
echo "| new session ready (LogonOk, status file) | $(wc -l <"$WORK/ready.ms") | $(pct "$WORK/ready.ms" 50) | $(pct "$WORK/ready.ms" 99) | $(pct "$WORK/ready.ms" 100) |"
echo "| old device closed (exited, 'session transferred') | $(wc -l <"$WORK/closed.ms") | $(pct "$WORK/closed.ms" 50) | $(pct "$WORK/closed.ms" 99) | $(pct "$WORK/closed.ms" 100) |"
echo "| for scale: a plain logon of another user (process start -> status file, scrypt ln=${RB_LAB_HASH_COST:-10}) | $(wc -l <"$WORK/logon.ms") | $(pct "$WORK/logon.ms" 50) | $(pct "$WORK/logon.ms" 99) | $(pct "$WORK/logon.ms" 100) |"
echo
echo "Devices alternate between the two edges, so the old device is on the other edge each time"
echo "(the close travels broker -> event stream -> edge). Failed transfers: $fails of $N."
echo "Polling from bash every ~2 ms: a few ms of noise in every figure."
