#!/usr/bin/env bash
# bench/reconnect_storm.sh: an edge with N sessions dies; how long until
# every device is back (resumed, same session and address) on another edge.
#
#   bench/reconnect_storm.sh [--sessions N] [--concurrency C] [--budget SECONDS]
#
# A lab of its own with 2 edges; N users hashed at ln=1 (default 10,000) log
# on through edge1 with reachback-loadgen and are held; edge1 is SIGKILLed;
# the loadgen resumes every dropped session on edge2 (Resume with its
# token, C in flight at once, like devices retrying). Reported: the time
# from the kill until edge2 carries all N (its /status), the loadgen's view
# (first drop to last resume, resumes/s, per-session drop -> LogonOk p50 and
# p99), failures, and the CPU each process used during the storm. Peer in
# the same run: the same sessions' first logons (full logon: TLS, scrypt
# ln=1, Redis, lease) through the same loadgen, at the same concurrency.
# Target (issue 3): all 10,000 back in under 10 s.
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

N=10000
CONC=200
BUDGET=600
while (( $# )); do
    case $1 in
        --sessions) N=$2; shift 2 ;;
        --concurrency) CONC=$2; shift 2 ;;
        --budget) BUDGET=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
bench_watchdog "$BUDGET"
bench_ensure_built reachback-edge reachback-broker reachback-ipalloc reachback-dns \
    reachback-forwarder reachback-ctl reachback-client reachback-loadgen

say "starting a lab with 2 edges in $LAB"
lab_start --edges 2 --set edge.max_connections=$(( N + 1000 ))
read -ra EDGES <<<"$EDGE_ADDRS"
openssl rand -hex 12 > "$WORK/password"
add_users bench "$N" 1 "$WORK/password"
# Both edges read the users file at start.
for e in edge1 edge2; do
    "$ROOT/scripts/lab" kill --dir "$LAB" "$e"
    "$ROOT/scripts/lab" revive --dir "$LAB" "$e" >"$WORK/lab-revive.log" 2>&1 \
        || { cat "$WORK/lab-revive.log" >&2; die "$e did not come back"; }
done

edge2_sessions() { curl -sf --max-time 2 "$EDGE2_STATUS_URL/status" | sed -n 's/.*"sessions":\([0-9]*\).*/\1/p'; }

say "logging $N sessions on through edge1"
"$BIN/reachback-loadgen" --server "${EDGES[0]}" --resume-server "${EDGES[1]}" --ca "$CA" \
    --users-prefix bench --count "$N" --concurrency "$CONC" --password-file "$WORK/password" \
    --hold 3600 --duration 1200 --logoff-timeout 120000 --timeout 60000 \
    --ready-file "$WORK/ready" --resumed-file "$WORK/resumed" >"$WORK/loadgen.out" 2>&1 &
LG=$!
bench_track "$LG"
T_LOGON0=$(date +%s%3N)
wait_file "$WORK/ready" 300 "$LG" || die "sessions did not all come up: $(tail -n 3 "$WORK/loadgen.out")"
LOGON_S=$(awk -v ms=$(( $(date +%s%3N) - T_LOGON0 )) 'BEGIN { printf "%.2f", ms / 1000 }')
UP=$(json_num "$WORK/ready" up)
say "$UP sessions up in ${LOGON_S}s; killing edge1"
sleep 2

declare -A t0
PROCS="edge2 broker ipalloc dns redis"
for p in $PROCS; do t0[$p]=$(cpu_ticks "$(pid_of "$p")"); done
LG_T0=$(cpu_ticks "$LG")
T_KILL=$(date +%s%3N)
"$ROOT/scripts/lab" kill --dir "$LAB" edge1
BACK_S=-
while :; do
    n=$(edge2_sessions)
    if [[ ${n:-0} -ge $UP ]]; then
        BACK_S=$(awk -v ms=$(( $(date +%s%3N) - T_KILL )) 'BEGIN { printf "%.2f", ms / 1000 }'); break
    fi
    if [[ -s $WORK/resumed ]] && (( $(json_num "$WORK/resumed" failed) > 0 )); then
        sleep 1; break   # some will never come back; the table says how many
    fi
    (( $(date +%s%3N) - T_KILL < 120000 )) || { say "edge2 carries ${n:-?} of $UP after 120 s"; break; }
    sleep 0.05
done
wait_file "$WORK/resumed" 60 "$LG" || say "the loadgen did not settle the resumes"
declare -A cpu
for p in $PROCS; do
    cpu[$p]=$(awk -v t="$(( $(cpu_ticks "$(pid_of "$p")") - ${t0[$p]} ))" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t / hz }')
done
LG_CPU=$(awk -v t="$(( $(cpu_ticks "$LG") - LG_T0 ))" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t / hz }')
ON_EDGE2=$(edge2_sessions)

kill -TERM "$LG"
wait_pid "$LG" 150
S=$WORK/loadgen.out
RESUMED=$(json_num "$S" resumed)
FAILED_BY=$(json_obj "$S" resume_failed_by)

echo "## Reconnect storm: $UP sessions on edge1, edge1 SIGKILLed, all resume on edge2"
echo
echo "$(machine); $(date -u +%FT%TZ)"
echo
echo "| what | sessions | time | rate | p50 ms | p99 ms | failed | CPU s during the storm |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
echo "| **storm: kill -> edge2 carries all (edge2 /status)** | $UP | **${BACK_S} s** | $(awk -v n="$UP" -v s="$BACK_S" 'BEGIN { if (s > 0) printf "%.0f/s", n / s; else print "-" }') | - | - | $(( UP - ${ON_EDGE2:-0} )) not on edge2 | edge2 ${cpu[edge2]}, broker ${cpu[broker]}, redis ${cpu[redis]}, ipalloc ${cpu[ipalloc]}, dns ${cpu[dns]}, loadgen $LG_CPU |"
echo "| storm, loadgen's view: first drop -> last resume | $(json_num "$S" resume_dropped) dropped, ${RESUMED:-0} resumed | $(json_num "$S" resume_elapsed_s) s | $(json_num "$S" resumes_per_s)/s | $(json_num "$S" resume_p50_ms) | $(json_num "$S" resume_p99_ms) | ${FAILED_BY:-{\}} | - |"
echo "| peer: the same sessions' first logons (TLS + scrypt ln=1 + lease), same loadgen | $(json_num "$S" ok) | $(json_num "$S" elapsed_s) s | $(json_num "$S" logons_per_s)/s | $(json_num "$S" logon_p50_ms) | $(json_num "$S" logon_p99_ms) | $(json_num "$S" failed) | - |"
echo
echo "Resumes are paced at --concurrency $CONC in flight (devices retrying with backoff); a resume is"
echo "TCP + TLS 1.3 + Hello + Resume -> LogonOk (broker: token check, session moved to edge2, SESSION_UP)."
echo "Latency per session runs from the moment the loadgen saw its connection drop. Target: all back in < 10 s."
