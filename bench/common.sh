# shellcheck shell=bash disable=SC2016
# Shared by the bench/*.sh scripts (sourced, not run): a work dir, a lab,
# benchmark users, process bookkeeping by PID, and a watchdog so that every
# script ends within its time budget. Everything listens on 127.0.0.1 only.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export RB_BIN_DIR=${RB_BIN_DIR:-$ROOT/build/bin}
BIN=$RB_BIN_DIR
WORK=$(mktemp -d /tmp/rb-bench-XXXXXX)
LAB=$WORK/lab
BENCH_PIDS=()
BENCH_NAME=$(basename "$0" .sh)

say() { echo "[$BENCH_NAME] $*" >&2; }
die() { echo "[$BENCH_NAME] error: $*" >&2; exit 1; }

# Stops what this script started, by PID: TERM, a short wait, then KILL.
bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${BENCH_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 30); do
        local alive=0
        for pid in "${BENCH_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.1
    done
    for pid in "${BENCH_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [[ -f "$LAB/lab.claims" ]]; then
        "$ROOT/scripts/lab" stop --dir "$LAB" >/dev/null 2>&1 || true
    fi
    [[ -f "$WORK/watchdog.log" ]] && cat "$WORK/watchdog.log" >&2
    if (( rc != 0 )); then
        say "failed (exit $rc); last log lines:"
        for f in "$LAB"/logs/*.log "$WORK"/*.log "$WORK"/*.out; do
            [[ -f $f ]] || continue
            echo "== $f" >&2
            tail -n 8 "$f" >&2
        done
    fi
    if [[ -n "${BENCH_KEEP:-}" ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# bench_track PID: stop it at exit.
bench_track() { BENCH_PIDS+=("$1"); }

# bench_watchdog SECONDS: the whole script ends (cleanly, through the EXIT
# trap) after that long, whatever hangs. The watchdog's own sleep dies with
# it, and it holds none of the script's output open.
bench_watchdog() {
    local me=$$ secs=$1
    (
        trap 'kill "$sp" 2>/dev/null; exit 0' TERM
        sleep "$secs" & sp=$!
        wait "$sp"
        echo "[$BENCH_NAME] watchdog: ${secs}s budget exhausted" >"$WORK/watchdog.log"
        kill -TERM "$me"
    ) </dev/null >/dev/null 2>&1 &
    bench_track $!
}

# Builds what the scripts need when RB_BIN_DIR does not hold it yet
# (RelWithDebInfo: these are measurements).
bench_ensure_built() {
    local missing=0 b
    for b in "$@"; do [[ -x "$BIN/$b" ]] || missing=1; done
    (( missing )) || return 0
    [[ "$BIN" == "$ROOT/build/bin" ]] || die "missing binaries in RB_BIN_DIR=$BIN (need: $*)"
    say "building into $ROOT/build (RelWithDebInfo)"
    cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$ROOT/build" -j"$(nproc)" >/dev/null
    for b in "$@"; do [[ -x "$BIN/$b" ]] || die "$b was not built"; done
}

# lab_start [--set svc.key=value ...]: a lab in $LAB; its lab.env is sourced.
# Tried three times: a port of the block scripts/lab claimed can still be
# taken by another program before a service binds it (seen when the blocks
# overlapped the ephemeral range); a new block works.
lab_start() {
    local try
    for try in 1 2 3; do
        if RB_LAB_HASH_COST=${RB_LAB_HASH_COST:-10} "$ROOT/scripts/lab" start --dir "$LAB" "$@"             >"$WORK/lab-start.log" 2>&1; then
            set -a
            # shellcheck disable=SC1091
            . "$LAB/lab.env"
            set +a
            return 0
        fi
        say "lab start failed (try $try): $(tail -n 1 "$WORK/lab-start.log")"
        [[ -f "$LAB/lab.claims" ]] && "$ROOT/scripts/lab" stop --dir "$LAB" >/dev/null 2>&1
    done
    cat "$WORK/lab-start.log" >&2
    die "lab did not start"
}

# The edge reads the users file once at start.
lab_restart_edge() {
    "$ROOT/scripts/lab" kill --dir "$LAB" edge
    "$ROOT/scripts/lab" revive --dir "$LAB" edge >"$WORK/lab-revive.log" 2>&1 \
        || { cat "$WORK/lab-revive.log" >&2; die "edge did not come back"; }
}

# add_users PREFIX COUNT COST PASSWORD_FILE: appends PREFIX0..PREFIX<COUNT-1>
# to the lab's users file. One hash is made and reused for every name: the
# verification cost per logon is the same, and making thousands of hashes
# would take longer than the benchmark.
add_users() {
    local prefix=$1 count=$2 cost=$3 pwfile=$4
    local line hash
    line=$("$BIN/reachback-ctl" passwd --cost "$cost" --password-file "$pwfile" "${prefix}0")
    hash=${line#*:}
    [[ $hash == '$scrypt$'* ]] || die "reachback-ctl passwd printed '$line'"
    awk -v p="$prefix" -v n="$count" -v h="$hash" 'BEGIN { for (i = 0; i < n; i++) print p i ":" h }' \
        >> "$LAB/users"
}

pid_of() { cat "$LAB/run/$1.pid"; }   # pid_of SERVICE (redis too)

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
pss_kib() { awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
# cpu_ticks PID: user + system clock ticks so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)

# json_num FILE KEY: a number field of the last JSON line holding KEY.
json_num() {
    grep "\"$2\":" "$1" | tail -n 1 | sed -n "s/.*\"$2\":\\(-\\{0,1\\}[0-9.]*\\).*/\\1/p"
}
# json_obj FILE KEY: an object field ({...}, no nesting) of the last such line.
json_obj() {
    grep "\"$2\":" "$1" | tail -n 1 | sed -n "s/.*\"$2\":\\({[^}]*}\\).*/\\1/p"
}

# wait_file FILE SECONDS PID: until FILE exists; fails when PID exits first.
wait_file() {
    local f=$1 secs=$2 pid=$3
    local deadline=$(( $(date +%s) + secs ))
    until [[ -s $f ]]; do
        kill -0 "$pid" 2>/dev/null || return 1
        (( $(date +%s) < deadline )) || return 1
        sleep 0.2
    done
}

# wait_pid PID SECONDS: waits for a child to exit; KILLs it after SECONDS.
wait_pid() {
    local pid=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# broker_sessions: the broker's session count from /status (empty if absent).
broker_sessions() {
    curl -sf --max-time 2 "$BROKER_STATUS_URL/status" | sed -n 's/.*"sessions":\([0-9]*\).*/\1/p'
}

# wait_no_sessions SECONDS: until the broker holds no session.
wait_no_sessions() {
    local deadline=$(( $(date +%s) + $1 )) n
    while :; do
        n=$(broker_sessions)
        [[ -z $n || $n == 0 ]] && return 0
        (( $(date +%s) < deadline )) || { say "broker still holds $n sessions"; return 1; }
        sleep 0.2
    done
}

# port VAR: a port for a listener of ours, above the ephemeral range (where
# neither outgoing connections nor scripts/lab, which stays below it, take
# ports), used by no socket now and not handed out before in this run.
EPH_HI=$(awk '{ print $2 }' /proc/sys/net/ipv4/ip_local_port_range)
PORTS_GIVEN=" "
port() {
    local p lo=$(( EPH_HI + 1 ))
    (( 65535 - lo >= 500 )) || lo=20000   # no room above: below the lab's blocks' top
    for _ in $(seq 500); do
        p=$(( lo + RANDOM % (65535 - lo) ))
        [[ $PORTS_GIVEN == *" $p "* ]] && continue
        ss -Htuan "sport = :$p" 2>/dev/null | grep -q . && continue
        PORTS_GIVEN+="$p "
        printf -v "$1" '%s' "$p"
        return 0
    done
    die "no free port"
}

# Taken when a script starts, before it loads the machine itself (stunnel's
# thread per connection alone drives the load average up later).
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# wakeup_rtt: "ACROSS SAME", the p50 round trip (µs) of one byte between two
# processes pinned to different CPUs and to one CPU, with a pause between
# trips so the CPUs go idle. On a VM, waking an idle vCPU can cost ten
# times a switch on one CPU and moves a lot from hour to hour; every hop of
# a relay chain that lands on the other CPU pays it. "- -" on one core.
wakeup_rtt() {
    (( $(nproc) >= 2 )) || { echo "- -"; return; }
    python3 - <<'PY'
import os, socket, time
def rtt(a, b, n=1500):
    s1, s2 = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {b})
        s1.close()
        while (d := s2.recv(1)) not in (b"", b"q"):
            s2.send(d)
        os._exit(0)
    os.sched_setaffinity(0, {a})
    s2.close()
    t = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        s1.send(b"x")
        s1.recv(1)
        t.append(time.perf_counter_ns() - t0)
        time.sleep(0.0002)
    s1.send(b"q")
    os.waitpid(pid, 0)
    os.sched_setaffinity(0, range(os.cpu_count()))
    return sorted(t)[n // 2] / 1000
print("%.0f %.0f" % (rtt(0, 1), rtt(0, 0)))
PY
}

machine() {
    local model
    model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
    echo "$(nproc) cores ($model), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r), load average $LOAD_BEFORE before the run"
}
