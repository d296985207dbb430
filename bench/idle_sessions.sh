#!/usr/bin/env bash
# bench/idle_sessions.sh: memory per idle session on one edge, against the
# peers measured in the same run.
#
#   bench/idle_sessions.sh [--sessions N] [--stunnel-conns N] [--ssh-sessions N]
#                          [--budget SECONDS]
#
# reachback: N logged-on sessions (default 10,000; users hashed at ln=1),
# held idle by reachback-loadgen; the edge's VmRSS before and with them open,
# divided by N. The broker's, Redis's and the loadgen's growth are shown for
# context. Peers: stunnel (TLS 1.3, one thread per connection) holding
# --stunnel-conns idle TLS connections (default 5,000: it needs two
# descriptors each); sshd with --ssh-sessions `ssh -N` sessions (default 20):
# the sum of its per-session processes' RSS (and PSS, which does not count
# shared pages more than once) divided by the sessions.
# Target (DESIGN §6): under 64 KiB per edge session.
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

N=10000
N_STUNNEL=5000
N_SSH=20
BUDGET=900
while (( $# )); do
    case $1 in
        --sessions) N=$2; shift 2 ;;
        --stunnel-conns) N_STUNNEL=$2; shift 2 ;;
        --ssh-sessions) N_SSH=$2; shift 2 ;;
        --budget) BUDGET=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
bench_watchdog "$BUDGET"
bench_ensure_built reachback-edge reachback-broker reachback-ipalloc reachback-dns \
    reachback-forwarder reachback-ctl reachback-client reachback-loadgen
ROWS=()
kib() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { if (n > 0) printf "%.1f", (b - a) / n; else print "-" }'; }
settle() { sleep 2; }   # let allocator and kernel counters catch up

# ---- reachback -------------------------------------------------------------
say "starting a lab in $LAB"
lab_start --set edge.max_connections=$(( N + 1000 ))
openssl rand -hex 12 > "$WORK/password"
add_users bench "$N" 1 "$WORK/password"
lab_restart_edge
settle
declare -A before after
for p in edge broker ipalloc dns redis; do before[$p]=$(rss_kib "$(pid_of "$p")"); done

say "opening $N sessions"
"$BIN/reachback-loadgen" --server "$EDGE_ADDR" --ca "$CA" --users-prefix bench --count "$N" \
    --concurrency 200 --password-file "$WORK/password" --hold 3600 --duration 1200 \
    --logoff-timeout 60000 --ready-file "$WORK/ready" >"$WORK/loadgen.out" 2>&1 &
LG=$!
bench_track "$LG"
wait_file "$WORK/ready" 600 "$LG" || die "sessions did not all come up: $(tail -n 3 "$WORK/loadgen.out")"
UP=$(json_num "$WORK/ready" up)
settle
for p in edge broker ipalloc dns redis; do after[$p]=$(rss_kib "$(pid_of "$p")"); done
LG_RSS=$(rss_kib "$LG")
say "$UP sessions up; edge RSS ${before[edge]} -> ${after[edge]} KiB"

ROWS+=("| **reachback-edge** | $UP sessions | ${before[edge]} | ${after[edge]} | **$(per "${before[edge]}" "${after[edge]}" "$UP")** | one process, TLS 1.3 + tunnel session, logged on |")
for p in broker redis ipalloc dns; do
    ROWS+=("| reachback $p (context) | $UP sessions | ${before[$p]} | ${after[$p]} | $(per "${before[$p]}" "${after[$p]}" "$UP") | session state |")
done
ROWS+=("| reachback-loadgen (client side) | $UP sessions | - | $LG_RSS | $(per 0 "$LG_RSS" "$UP") | whole process / sessions |")

kill -TERM "$LG"
wait_pid "$LG" 90
say "logged off: $(json_num "$WORK/loadgen.out" logged_off) of $UP"
settle
EDGE_AFTER_LOGOFF=$(rss_kib "$(pid_of edge)")
"$ROOT/scripts/lab" stop --dir "$LAB" >/dev/null 2>&1 || true

# ---- stunnel ---------------------------------------------------------------
if command -v stunnel >/dev/null; then
    say "stunnel with $N_STUNNEL connections"
    port SPORT; port SINK
    # The sink behind stunnel: a redis-server keeps idle connections cheaply.
    redis-server --port "$SINK" --bind 127.0.0.1 --save '' --appendonly no \
        --maxclients $(( N_STUNNEL + 100 )) --daemonize no --logfile "$WORK/sink.log" \
        </dev/null >/dev/null 2>&1 &
    bench_track $!
    cat > "$WORK/stunnel.conf" <<CONF
foreground = yes
pid =
output = $WORK/stunnel.log
sslVersionMin = TLSv1.3
[bench]
accept = 127.0.0.1:$SPORT
connect = 127.0.0.1:$SINK
cert = $LAB/tls/edge.pem
key = $LAB/tls/edge.key
CONF
    ( ulimit -n "$(ulimit -Hn)"; exec stunnel "$WORK/stunnel.conf" ) </dev/null >/dev/null 2>&1 &
    ST=$!
    bench_track "$ST"
    for _ in $(seq 50); do ss -Htln "sport = :$SPORT" | grep -q . && break; sleep 0.1; done
    settle
    st0=$(rss_kib "$ST")
    "$BIN/reachback-loadgen" --server "127.0.0.1:$SPORT" --ca "$CA" --count "$N_STUNNEL" \
        --concurrency 100 --tls-only --hold 3600 --duration 600 --logoff-timeout 30000 \
        --ready-file "$WORK/ready-st" >"$WORK/loadgen-st.out" 2>&1 &
    LGS=$!
    bench_track "$LGS"
    if wait_file "$WORK/ready-st" 300 "$LGS"; then
        settle
        st1=$(rss_kib "$ST")
        stup=$(json_num "$WORK/ready-st" up)
        ROWS+=("| stunnel $(stunnel -version 2>&1 | sed -n 's/^stunnel \([0-9.]*\).*/\1/p' | head -n 1) | $stup TLS connections | $st0 | $st1 | **$(per "$st0" "$st1" "$stup")** | one thread per connection, plus a backend connection each |")
        ROWS+=("| reachback-loadgen, TLS only (client side) | $stup connections | - | $(rss_kib "$LGS") | $(per 0 "$(rss_kib "$LGS")" "$stup") | whole process / connections |")
    else
        ROWS+=("| stunnel | failed | - | - | - | $(tail -n 1 "$WORK/loadgen-st.out") |")
    fi
    kill -TERM "$LGS" 2>/dev/null || true
    wait_pid "$LGS" 40
    kill -TERM "$ST" 2>/dev/null || true
    wait_pid "$ST" 10
else
    ROWS+=("| stunnel | not installed | - | - | - | - |")
fi

# ---- sshd ------------------------------------------------------------------
# descendants PID: every process below PID.
descendants() {
    local kids k
    kids=$(ps -o pid= --ppid "$1" 2>/dev/null || true)
    for k in $kids; do echo "$k"; descendants "$k"; done
}
if [[ -x /usr/sbin/sshd ]] && command -v ssh >/dev/null && (( $(id -u) == 0 )); then
    say "sshd with $N_SSH sessions"
    S=$WORK/ssh
    mkdir -p "$S" && chmod 700 "$S"
    ssh-keygen -q -t ed25519 -N '' -f "$S/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$S/user_key"
    cp "$S/user_key.pub" "$S/authorized_keys"
    port SSH_PORT
    cat > "$S/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $S/host_key
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 10
CONF
    # sshd refuses to start without its privilege separation directory.
    [[ -d /run/sshd ]] || { mkdir -p /run/sshd && chmod 755 /run/sshd; }
    /usr/sbin/sshd -D -e -f "$S/sshd_config" </dev/null >"$WORK/sshd.log" 2>&1 &
    SSHD=$!
    bench_track "$SSHD"
    for _ in $(seq 50); do ss -Htln "sport = :$SSH_PORT" | grep -q . && break; sleep 0.1; done
    for ((i = 0; i < N_SSH; i++)); do
        ssh -N -F /dev/null -i "$S/user_key" -o IdentitiesOnly=yes -o BatchMode=yes \
            -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
            -p "$SSH_PORT" root@127.0.0.1 </dev/null >>"$WORK/ssh-clients.log" 2>&1 &
        bench_track $!
        sleep 0.05
    done
    # A session is one process per connection ("sshd: root" for a root
    # login; a monitor and a post-auth child for other users).
    for _ in $(seq 150); do
        n=$(descendants "$SSHD" | wc -l)
        (( n >= N_SSH )) && break
        sleep 0.1
    done
    settle
    rss=0; pss=0; procs=0
    for p in $(descendants "$SSHD"); do
        rss=$(( rss + $(rss_kib "$p") )); pss=$(( pss + $(pss_kib "$p") )); procs=$((procs + 1))
    done
    ROWS+=("| sshd ($(ssh -V 2>&1 | cut -d, -f1)) | $N_SSH sessions ($procs processes) | $(rss_kib "$SSHD") (listener) | $rss (sum) | **$(per 0 "$rss" "$N_SSH")** (PSS $(per 0 "$pss" "$N_SSH")) | sum over the per-session processes / sessions |")
else
    ROWS+=("| sshd | not run (needs root and /usr/sbin/sshd) | - | - | - | - |")
fi

echo
echo "### Idle sessions: memory per session ($(date -u +%Y-%m-%dT%H:%MZ); $(machine))"
echo
echo "| process | load | RSS before KiB | RSS with load KiB | KiB per session | note |"
echo "| --- | --- | ---: | ---: | ---: | --- |"
printf '%s\n' "${ROWS[@]}"
echo
echo "Target: under 64 KiB per edge session (DESIGN §6). Edge RSS after everyone logged off: ${EDGE_AFTER_LOGOFF} KiB."
echo "Peers were measured in this same run on this machine; RSS is VmRSS from /proc."
