# Shared by the integration tests: a fresh lab per test in a temp dir, torn
# down (and its logs shown on failure) when the test exits.
set -euo pipefail
ROOT=${RB_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export RB_BIN_DIR=${RB_BIN_DIR:-$ROOT/build/bin}
BIN=$RB_BIN_DIR
LAB=$(mktemp -d /tmp/rb-itest-XXXXXX)
CHILDREN=()
CLEANUP_HOOKS=()
TEST_NAME=$(basename "$0" .sh)
CHECKS=0
# Marks every process the test starts, however far down (a server's forked
# child keeps it after its parent is gone): stray_writers looks for it.
export RB_ITEST_LAB=$LAB

fail() {
    echo "FAIL [$TEST_NAME]: $*" >&2
    exit 1
}
ok() {
    CHECKS=$((CHECKS + 1))
    echo "ok: $*"
}

cleanup() {
    local rc=$?
    (( rc == 0 )) || echo "$TEST_NAME: exit status $rc (line ${BASH_LINENO[0]:-?})" >&2
    for pid in "${CHILDREN[@]}"; do kill "$pid" 2>/dev/null || true; done
    # A child that outlives SIGTERM by 10 s is named and killed: the test
    # fails saying which, instead of hanging until ctest's timeout.
    local deadline=$(( $(now_ms) + 10000 ))
    for pid in "${CHILDREN[@]}"; do
        while proc_running "$pid" && (( $(now_ms) < deadline )); do sleep 0.1; done
        if proc_running "$pid"; then
            echo "FAIL [$TEST_NAME]: pid $pid ($(tr '\0' ' ' </proc/$pid/cmdline 2>/dev/null | cut -c1-120)) still running 10 s after SIGTERM" >&2
            kill -KILL "$pid" 2>/dev/null || true
            rc=1
        fi
        wait "$pid" 2>/dev/null || true
    done
    # A service that crashed, or a sanitizer report anywhere, fails the test
    # even when every check passed.
    local f
    for f in "$LAB"/run/*.pid; do
        # edge.pid and broker.pid are links to the first instance's file.
        [[ -f $f && ! -L $f ]] || continue
        local pid; pid=$(cat "$f")
        if ! proc_running "$pid"; then
            echo "FAIL [$TEST_NAME]: $(basename "$f" .pid) (pid $pid) died during the test" >&2
            rc=1
        fi
    done
    # Stopping first lets LeakSanitizer speak at each service's exit.
    [[ -f "$LAB/lab.claims" ]] && "$ROOT/scripts/lab" stop --dir "$LAB" >/dev/null 2>&1
    # What a test set up outside the lab (network namespaces, veths).
    for f in "${CLEANUP_HOOKS[@]}"; do eval "$f" || true; done
    stray_writers || rc=1
    local reports report_re="ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:"
    reports=$(grep -l -E "$report_re" "$LAB"/logs/*.log "$LAB"/*.out 2>/dev/null || true)
    if [[ -n $reports ]]; then
        # The report itself, not the last lines (ASan ends with its legend).
        for f in $reports; do
            echo "== sanitizer report in $f" >&2
            grep -m1 -A60 -E "$report_re" "$f" >&2
        done
        echo "FAIL [$TEST_NAME]: sanitizer report in the files above" >&2
        rc=1
    fi
    if (( rc != 0 )); then
        echo "---- lab logs (last lines) ----" >&2
        for f in "$LAB"/logs/*.log "$LAB"/*.out; do
            [[ -f $f && ! -L $f ]] || continue
            echo "== $f" >&2
            tail -n 15 "$f" >&2
        done
    fi
    if [[ -n ${RB_KEEP_LAB:-} ]]; then echo "$TEST_NAME: lab kept in $LAB" >&2; else rm -rf "$LAB"; fi
    (( rc == 0 )) && echo "$TEST_NAME: $CHECKS checks passed"
    exit $rc
}
trap cleanup EXIT

# stray_writers: a process the test started indirectly (a server's forked
# child) that still holds this test's output pipe keeps ctest waiting until
# its timeout, long after the test ended. Such processes get 10 s, then are
# named and killed. Only processes carrying this test's RB_ITEST_LAB count:
# a shell or wrapper that runs the test shares the pipe too.
stray_writers() {
    local out; out=$(readlink /proc/$$/fd/1) || return 0
    [[ $out == pipe:* ]] || return 0
    local pat=${out//[/\\[}; pat=${pat//]/\\]}
    local deadline=$(( $(now_ms) + 10000 )) f pid holders
    while :; do
        holders=()
        for f in $(find /proc/[0-9]*/fd -maxdepth 1 \( -name 1 -o -name 2 \) -lname "$pat" 2>/dev/null); do
            pid=${f#/proc/}; pid=${pid%%/*}
            (( pid != $$ )) && proc_running "$pid" \
                && tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "RB_ITEST_LAB=$LAB" \
                && holders+=("$pid")
        done
        (( ${#holders[@]} )) || return 0
        (( $(now_ms) < deadline )) || break
        sleep 0.1
    done
    for pid in $(printf '%s\n' "${holders[@]}" | sort -u); do
        echo "FAIL [$TEST_NAME]: pid $pid ($(tr '\0' ' ' </proc/$pid/cmdline 2>/dev/null | cut -c1-120)) still holds the test's output" >&2
        kill -KILL "$pid" 2>/dev/null || true
    done
    return 1
}

lab_start() {
    "$ROOT/scripts/lab" start --dir "$LAB" "$@"
    set -a
    . "$LAB/lab.env"
    set +a
}

now_ms() { date +%s%3N; }

# reload_policy: SIGHUP to the lab's forwarder; returns once it has loaded
# its policy file anew (a count of loads, since the lab's start logged one
# whose rule count a new file may share).
policy_loads() { grep -c '"event":"policy_loaded"' "$LAB/logs/forwarder.log" || true; }
policy_loads_above() { (( $(policy_loads) > $1 )); }
reload_policy() {
    local n; n=$(policy_loads)
    kill -HUP "$(cat "$LAB/run/forwarder.pid")"
    wait_until 3000 policy_loads_above "$n" \
        || fail "policy not reloaded: $(grep policy "$LAB/logs/forwarder.log" | tail -2)"
}

# refused_within MS CMD...: CMD fails, and within MS: a refusal, not a hang
# that a timeout cut short. ELAPSED_MS says how long it took.
refused_within() {
    local ms=$1 t0 rc=0; shift
    t0=$(now_ms)
    "$@" || rc=$?
    ELAPSED_MS=$(( $(now_ms) - t0 ))
    (( rc != 0 && ELAPSED_MS < ms ))
}

# proc_running PID: alive and not a zombie waiting to be reaped.
proc_running() {
    local st
    st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) && [[ -n $st && $st != Z ]]
}

# wait_until MS CMD...: runs CMD every 50 ms until it succeeds; fails after MS.
wait_until() {
    local ms=$1; shift
    local deadline=$(( $(now_ms) + ms ))
    until "$@" >/dev/null 2>&1; do
        (( $(now_ms) < deadline )) || return 1
        sleep 0.05
    done
}

# client_start NAME USER [extra args]: a device in the background on the
# lab's first edge; its pid in CLIENT_PID_<NAME>, status file $LAB/NAME.json,
# output $LAB/NAME.out.
client_start() {
    local name=$1 user=$2; shift 2
    client_start_at "$name" "$user" "$EDGE_ADDR" "$@"
}

# client_start_at NAME USER "EDGE [EDGE...]" [extra args]: as client_start,
# with a --server for each edge of the list, in order.
client_start_at() {
    local name=$1 user=$2 servers=$3; shift 3
    local args; mapfile -t args < <(client_args "$name" "$user" "$servers")
    "$BIN/reachback-client" "${args[@]}" "$@" </dev/null >"$LAB/$name.out" 2>&1 &
    local pid=$!
    CHILDREN+=("$pid")
    printf -v "CLIENT_PID_$name" '%s' "$pid"
}

client_args() {   # client_args NAME USER SERVERS: the connect arguments, one a line
    local name=$1 user=$2 s
    local pwvar="USER_${user^^}_PASSWORD_FILE"
    printf '%s\n' connect
    for s in $3; do printf '%s\n' --server "$s"; done
    printf '%s\n' --ca "$CA" --user "$user" --password-file "${!pwvar}" --device "$name" \
        --status-file "$LAB/$name.json"
}

# pty_client_start NAME USER "EDGES" [extra args]: a device whose standard
# input and output are a real terminal (script(1) holds the pseudo-terminal);
# pty_send NAME TEXT types a line into it. CLIENT_PID_<NAME> is script's pid
# (script -e exits with the client's status); output in $LAB/NAME.out.
pty_client_start() {
    local name=$1 user=$2 servers=$3; shift 3
    local args cmd; mapfile -t args < <(client_args "$name" "$user" "$servers")
    printf -v cmd '%q ' "$BIN/reachback-client" "${args[@]}" "$@"
    rm -f "$LAB/$name.in"; mkfifo "$LAB/$name.in"
    script -qefc "$cmd" /dev/null <"$LAB/$name.in" >"$LAB/$name.out" 2>&1 &
    local pid=$! fd
    CHILDREN+=("$pid")
    printf -v "CLIENT_PID_$name" '%s' "$pid"
    exec {fd}>"$LAB/$name.in"
    printf -v "PTY_FD_$name" '%s' "$fd"
}

pty_send() {   # pty_send NAME TEXT
    local v="PTY_FD_$1"
    printf '%s\n' "$2" >&"${!v}"
}

# wait_exit NAME MS: waits up to MS for client NAME to exit; its exit status
# in EXIT_RC. Fails (returns 1) when it is still running.
wait_exit() {
    local v="CLIENT_PID_$1"
    local pid=${!v}
    wait_until "$2" bash -c "! kill -0 $pid 2>/dev/null || [[ \$(awk '{print \$3}' /proc/$pid/stat 2>/dev/null) == Z ]]" \
        || return 1
    EXIT_RC=0
    wait "$pid" || EXIT_RC=$?
}

# client_running NAME
client_running() { local v="CLIENT_PID_$1"; proc_running "${!v}"; }

rcli() { redis-cli -s "$REDIS_SOCKET" "$@"; }

# edge_addr K: the K-th edge's tunnel address (1-based) from EDGE_ADDRS.
edge_addr() { local a; read -ra a <<<"$EDGE_ADDRS"; echo "${a[$1 - 1]}"; }

json_field() {   # json_field FILE KEY: a string field of a flat JSON object
    sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p" "$1"
}

listen_port() {   # listen_port FILE N: a client status file's N-th local port (forwards, then SOCKS; from 0)
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["listen_ports"][int(sys.argv[2])])' "$1" "$2"
}

dig_short() {   # dig_short ARGS...: dig against the lab's DNS service
    dig @"$DNS_ADDR" -p "$DNS_PORT" +time=1 +tries=1 +short "$@"
}

dig_status() {   # dig_status ARGS...: the rcode of the answer
    dig @"$DNS_ADDR" -p "$DNS_PORT" +time=1 +tries=1 "$@" | sed -n 's/.*status: \([A-Z]*\),.*/\1/p'
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@"; }

metric() {   # metric URL NAME_WITH_LABELS: the value of one series
    curl -sf --max-time 2 "$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'
}

# ---- data plane helpers ----
PEER="$ROOT/tests/integration/tools/peer.py"

# free_port: a TCP port nothing listens on now (the kernel's choice).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bg CMD...: runs CMD in the background, killed when the test ends; its pid
# in BG_PID.
bg() {
    "$@" &
    BG_PID=$!
    CHILDREN+=("$BG_PID")
}

# listening PORT: a TCP socket listens on PORT (asked of the kernel, so a
# one-shot server does not spend its single accept on the check).
listening() { ss -Hltn "sport = :$1" | grep -q .; }

# echo_server PORT: a TCP echo on 127.0.0.1:PORT that answers after a
# half-close. Each connection's cat owns the socket itself: socat's own PIPE
# echo deadlocks when its peer stops reading (it blocks writing 8 KiB into a
# pipe only it drains), and such a child outlives the test holding ctest's
# output pipe open.
echo_server() {
    bg socat TCP-LISTEN:"$1",bind=127.0.0.1,reuseaddr,fork,nodelay EXEC:/bin/cat,nofork \
        >>"$LAB/echo-$1.out" 2>&1
    wait_until 5000 listening "$1" || fail "echo server on $1 did not start"
}

# udp_echo PORT: a UDP echo on 127.0.0.1:PORT.
udp_echo() {
    bg socat -T 5 UDP4-RECVFROM:"$1",bind=127.0.0.1,reuseaddr,fork EXEC:/bin/cat \
        >>"$LAB/udp-echo-$1.out" 2>&1
}

# audit_lines: the forwarder's audit records so far.
audit_lines() { grep '"event":"audit"' "$LAB/logs/forwarder.log" || true; }

# sshd_setup PORT: a private sshd config in $LAB/ssh (host key, a user key
# in authorized_keys, 127.0.0.1:PORT, keys only); start it with
# /usr/sbin/sshd -D -e -f "$LAB/ssh/sshd_config"; log in with
# -i "$LAB/ssh/user_key".
sshd_setup() {
    mkdir -p "$LAB/ssh" /run/sshd && chmod 700 "$LAB/ssh"
    ssh-keygen -q -t ed25519 -N '' -f "$LAB/ssh/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$LAB/ssh/user_key"
    cp "$LAB/ssh/user_key.pub" "$LAB/ssh/authorized_keys"
    cat > "$LAB/ssh/sshd_config" <<CONF
Port $1
ListenAddress 127.0.0.1
HostKey $LAB/ssh/host_key
AuthorizedKeysFile $LAB/ssh/authorized_keys
PidFile $LAB/ssh/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
CONF
}

# ---- messages for the edge-forwarder data link, sent with rb-zpoke ----
hexframe() {   # hexframe TYPE FLAGS ID HEXPAYLOAD|zeros:N: header and payload frames
    local n=$(( ${#4} / 2 ))
    [[ $4 == zeros:* ]] && n=${4#zeros:}
    printf '%02x%02x0000%08x%08x' "$1" "$2" "$3" "$n"
    [[ -n $4 ]] && printf ' %s' "$4"
}
# pb PYTHON: runs PYTHON with protobuf field encoders: f(num, bytes) for a
# length-delimited field, i(num, int) for a varint one.
PB_FIELDS='
def v(n):
    o=b""
    while True:
        b=n&0x7f; n>>=7
        if n: o+=bytes([b|0x80])
        else: return o+bytes([b])
def f(num,b): return v(num<<3|2)+v(len(b))+b
def i(num,x): return v(num<<3)+v(x)
'
pb() { python3 -c "$PB_FIELDS$1" "${@:2}"; }
# hello: a Hello (LinkControl.hello) and the "," that ends its message, as
# an edge says it first on the link (this link version, a fresh instance).
LINK_VERSION=$(awk '$2 == "RB_LINK_VERSION" { print $3 }' "$ROOT/lib/rb_frame.h")
hello_frames() {   # hello_frames [VERSION]: the Hello alone
    hexframe 1 0 0 "$(pb 'import random, sys
print(f(1, i(1, int(sys.argv[1])) + f(2, b"poke") + i(3, random.getrandbits(62) + 1)).hex())' "${1:-$LINK_VERSION}")"
}
hello() { hello_frames; echo " ,"; }
