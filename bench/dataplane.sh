#!/usr/bin/env bash
# bench/dataplane.sh: the data plane (streams through edge and forwarder)
# against its peers, measured in the same run.
#
#   bench/dataplane.sh [--time S] [--conns N] [--streams N] [--sessions N]
#                      [--modes "ipc tcp"] [--budget SECONDS]
#                      [--latency-only] [--turns N]
#
# 1. Bulk TCP, one stream, iperf3 for --time seconds (default 5), both data
#    directions: through a server-initiated connection (an internal iperf3
#    client to alice's exposed port $ip:5201, her device's iperf3 server
#    behind it) and through the device's --forward (the device's iperf3
#    client to its forward port, an internal iperf3 server behind it).
#    Peers: ssh -R and ssh -L (aes128-gcm, -N) to a private sshd, an stunnel
#    TLS 1.3 pair, and raw loopback (the ceiling).
# 2. Connect + first byte echoed, --conns sequential connections (default
#    1000) from a Python client with TCP_NODELAY to an echo server, then three
#    write-write-read exchanges on each connection (where Nagle would stall):
#    p50/p99/max in microseconds; direct, through alice's exposed port and
#    her --forward, ssh -R / -L (-N: OpenSSH leaves Nagle on) and ssh -R with
#    a pty session (-tt: OpenSSH sets TCP_NODELAY).
# 3. --streams parallel streams (default 100) on one session (iperf3 -P),
#    and one stream on each of --sessions sessions (default 100 devices
#    logged on as 100 users, each exposing a port to one local sink; a
#    Python source/sink moves the bytes): aggregate, min/max per stream and
#    Jain's fairness index. Peers: raw loopback and ssh -R with the same load.
# 4. The targets again, taking turns so that machine drift hits both alike:
#    the stunnel pair and reachback's exposed port (server -> device), then
#    the stunnel pair and the --forward (device -> server), 3 runs each
#    (medians); ssh -R -tt and the exposed port's connect + first byte,
#    --turns runs (default 2) of a share of --conns each (pooled), measured
#    as soon as the lab is up, before any bulk run. Short turns flatter
#    reachback: ssh's first connections after a pause are slower (600
#    connections in turns of 50: ssh -R -tt 525 us against 380 alone, ours
#    470; in turns of 300: 387 and 392).
# --latency-only: only the connect + first byte rows (2 and the latency half
# of 4), to look at that target alone on a quiet machine.
# The reachback rows run once per data link mode (--modes, default all
# three): inproc (RB_LAB_DATA_LINK=inproc: edge and forwarder in one
# reachback-gateway process, the link between two threads), ipc (the lab's
# default edge-forwarder link, a Unix socket, no CURVE) and tcp
# (RB_LAB_DATA_LINK=tcp: loopback TCP with CURVE).
# shellcheck disable=SC2153  # "port VAR" assigns VAR through printf -v
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

T=5
NCONN=1000
NSTREAMS=100
NSESS=100
MODES="inproc ipc tcp"
BUDGET=600
LATONLY=0
LAT_ROUNDS=2
while (( $# )); do
    case $1 in
        --time) T=$2; shift 2 ;;
        --conns) NCONN=$2; shift 2 ;;
        --streams) NSTREAMS=$2; shift 2 ;;
        --sessions) NSESS=$2; shift 2 ;;
        --modes) MODES=$2; shift 2 ;;
        --budget) BUDGET=$2; shift 2 ;;
        --latency-only) LATONLY=1; shift ;;
        --turns) LAT_ROUNDS=$2; shift 2 ;;
        -h|--help) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
bench_watchdog "$BUDGET"
bench_ensure_built reachback-edge reachback-broker reachback-ipalloc reachback-dns \
    reachback-forwarder reachback-ctl reachback-client
for tool in iperf3 stunnel ssh ssh-keygen openssl python3 curl; do
    command -v $tool >/dev/null || die "$tool is not installed"
done
[[ -x /usr/sbin/sshd ]] || die "/usr/sbin/sshd is not installed"
(( $(id -u) == 0 )) || die "run as root (a private sshd logs root on with a key)"
(( NSTREAMS <= 128 )) || die "--streams: iperf3 takes at most 128"
[[ $LAT_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--turns: a positive number"
(( LATONLY )) && NSESS=0
ROWS=()
row() { local a out="|"; for a in "$@"; do out+=" $a |"; done; ROWS+=("$out"); }

# ---- helpers (Python 3, standard library only) ------------------------------
# echo.py PORT: an echo server, one thread, selectors (TCP_NODELAY on every
# connection; asyncio costs about twice as much per connection).
cat >"$WORK/echo.py" <<'PY'
import selectors, socket, sys
sel = selectors.DefaultSelector()
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", int(sys.argv[1])))
ls.listen(1024)
ls.setblocking(False)
sel.register(ls, selectors.EVENT_READ)
def drop(s):
    sel.unregister(s)
    s.close()
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is ls:
            try:
                c, _ = ls.accept()
            except OSError:
                continue
            c.setblocking(False)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(c, selectors.EVENT_READ)
            continue
        try:
            d = s.recv(65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            d = b""
        if not d:
            drop(s)
            continue
        try:
            s.sendall(d)   # small messages: the socket buffer takes them
        except OSError:
            drop(s)
PY
# connlat.py HOST PORT N SECONDS [SAMPLES]: N sequential connections (fewer
# if SECONDS run out). Each: connect, 1 byte, its echo (= "first"); then 3
# exchanges of two 16-byte writes and a read of both echoes (= "exch"). One
# JSON line; with SAMPLES, every time is appended there too ("first US",
# "exch US", "fail 1"), for pool.py.
cat >"$WORK/connlat.py" <<'PY'
import json, socket, sys, time
host, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
samples = open(sys.argv[5], "a") if len(sys.argv) > 5 else None
first, exch, fails, wrong, errs = [], [], 0, 0, {}
clock = time.perf_counter_ns
end = time.monotonic() + secs
def recv_exact(s, k):
    b = b""
    while len(b) < k:
        d = s.recv(k - len(b))
        if not d:
            raise ConnectionError("EOF")
        b += d
    return b
for i in range(n):
    if time.monotonic() > end:
        break
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(2.0)
    try:
        t0 = clock()
        s.connect((host, port))
        s.sendall(b"x")
        got = recv_exact(s, 1)
        first.append((clock() - t0) / 1000)
        if got != b"x":
            wrong += 1
        for k in range(3):
            a, b = bytes([65 + k]) * 16, bytes([97 + k]) * 16
            t1 = clock()
            s.sendall(a)
            s.sendall(b)
            got = recv_exact(s, 32)
            exch.append((clock() - t1) / 1000)
            if got != a + b:
                wrong += 1
    except Exception as e:
        fails += 1
        errs[type(e).__name__] = errs.get(type(e).__name__, 0) + 1
    finally:
        s.close()
if samples:
    samples.writelines(["first %.1f\n" % v for v in first] + ["exch %.1f\n" % v for v in exch] +
                       ["fail 1\n"] * fails)
    samples.close()
def pct(v, q):
    if not v:
        return None
    v = sorted(v)
    return round(v[min(len(v) - 1, int(q * len(v)))])
print(json.dumps({"ok": len(first), "failed": fails, "errors": errs, "wrong": wrong,
                  "first_p50": pct(first, .5), "first_p99": pct(first, .99),
                  "first_max": round(max(first)) if first else None,
                  "exch_p50": pct(exch, .5), "exch_p99": pct(exch, .99),
                  "exch_max": round(max(exch)) if exch else None,
                  "stalls_30ms": sum(1 for v in first + exch if v >= 30000)}))
PY
# pool.py SAMPLES: connlat.py's JSON line for all the samples in SAMPLES
# (several runs pooled).
cat >"$WORK/pool.py" <<'PY'
import json, sys
first, exch, fails = [], [], 0
for line in open(sys.argv[1]):
    k, v = line.split()
    if k == "first":
        first.append(float(v))
    elif k == "exch":
        exch.append(float(v))
    else:
        fails += 1
def pct(v, q):
    if not v:
        return None
    v = sorted(v)
    return round(v[min(len(v) - 1, int(q * len(v)))])
print(json.dumps({"ok": len(first), "failed": fails, "errors": {}, "wrong": 0,
                  "first_p50": pct(first, .5), "first_p99": pct(first, .99),
                  "first_max": round(max(first)) if first else None,
                  "exch_p50": pct(exch, .5), "exch_p99": pct(exch, .99),
                  "exch_max": round(max(exch)) if exch else None,
                  "stalls_30ms": sum(1 for v in first + exch if v >= 30000)}))
PY
# bulk.py SINK_PORT SECONDS HOST:PORT...: one TCP stream to each target,
# each sending as fast as it can; a sink on 127.0.0.1:SINK_PORT (where the
# targets lead) counts what arrives per stream (a 4-byte stream number opens
# each). One thread, one selectors loop for both ends, so the tool serves
# every stream in turn. After all streams arrived (or 15 s) and 1 s of
# warm-up, SECONDS are measured. One JSON line: aggregate, per-stream
# min/max Mbit/s, Jain's index, streams that moved nothing in the window.
cat >"$WORK/bulk.py" <<'PY'
import errno, json, selectors, socket, struct, sys, time
sink_port, secs, targets = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
n = len(targets)
counts, seen, errors = [0] * n, [False] * n, {}
def err(k):
    errors[k] = errors.get(k, 0) + 1
sel = selectors.DefaultSelector()
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", sink_port))
ls.listen(1024)
ls.setblocking(False)
sel.register(ls, selectors.EVENT_READ, ["listen"])
chunk = memoryview(b"\x5a" * 131072)
mv = memoryview(bytearray(262144))
for i, t in enumerate(targets):
    host, port = t.rsplit(":", 1)
    s = socket.socket()
    s.setblocking(False)
    rc = s.connect_ex((host, int(port)))
    if rc not in (0, errno.EINPROGRESS):
        err("connect " + errno.errorcode.get(rc, str(rc)))
        s.close()
        continue
    sel.register(s, selectors.EVENT_WRITE, ["source", i, struct.pack("!I", i), False])
def close(s, why):
    err(why)
    sel.unregister(s)
    s.close()
def step(timeout):
    for key, _ in sel.select(timeout):
        s, d = key.fileobj, key.data
        if d[0] == "listen":
            while True:
                try:
                    c, _ = ls.accept()
                except OSError:
                    break
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ, ["sink", None, b""])
        elif d[0] == "source":
            if not d[3]:
                e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if e:
                    close(s, "connect " + errno.errorcode.get(e, str(e)))
                    continue
                d[3] = True
            try:
                if d[2]:
                    d[2] = d[2][s.send(d[2]):]
                else:
                    s.send(chunk)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                close(s, "send " + type(e).__name__)
        else:
            try:
                k = s.recv_into(mv)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                close(s, "sink " + type(e).__name__)
                continue
            if k == 0:
                close(s, "sink EOF")
                continue
            if d[1] is None:
                d[2] += bytes(mv[:k])
                if len(d[2]) < 4:
                    continue
                d[1] = struct.unpack("!I", d[2][:4])[0]
                seen[d[1]] = True
                counts[d[1]] += len(d[2]) - 4
            else:
                counts[d[1]] += k
def run_until(t):
    while time.monotonic() < t:
        step(0.05)
t = time.monotonic() + 15
while sum(seen) < n and time.monotonic() < t:
    step(0.05)
run_until(time.monotonic() + 1.0)
c0, t0 = list(counts), time.monotonic()
run_until(t0 + secs)
c1, t1 = list(counts), time.monotonic()
rates = [(b - a) * 8 / (t1 - t0) / 1e6 for a, b in zip(c0, c1)]
s1, s2 = sum(rates), sum(r * r for r in rates)
print(json.dumps({"streams": n, "arrived": sum(seen), "agg_gbps": round(s1 / 1000, 3),
                  "min_mbps": round(min(rates), 1), "max_mbps": round(max(rates), 1),
                  "jain": round(s1 * s1 / (n * s2), 3) if s2 > 0 else 0,
                  "stalled": sum(1 for r in rates if r == 0), "errors": errors}))
PY
# iperf.py FILE: "Gbit/s retransmits streams min_Mbit/s max_Mbit/s jain" of
# an iperf3 -J result (receiver side), or "error: ..." on one line.
cat >"$WORK/iperf.py" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as e:
    print("error: no JSON from iperf3 (%s)" % type(e).__name__); sys.exit()
if j.get("error"):
    print("error: " + j["error"]); sys.exit()
e = j["end"]
r = [s["receiver"]["bits_per_second"] / 1e6 for s in e["streams"]]
s1, s2 = sum(r), sum(x * x for x in r)
print("%.2f %s %d %.0f %.0f %.3f" % (e["sum_received"]["bits_per_second"] / 1e9,
      e.get("sum_sent", {}).get("retransmits", "-"), len(r), min(r), max(r),
      s1 * s1 / (len(r) * s2) if s2 else 0))
PY

# ---- measuring ------------------------------------------------------------
# CPU: cpu_mark PIDS... before, cpu_report after: "name NN%" of one core each.
CPU_NAMES=() CPU_PIDS=() CPU_T0=() CPU_W0=0
cpu_mark() {   # cpu_mark name=PID[,PID...] ...
    CPU_NAMES=() CPU_PIDS=() CPU_T0=()
    local a p sum ps
    for a in "$@"; do
        CPU_NAMES+=("${a%%=*}"); CPU_PIDS+=("${a#*=}")
        sum=0; IFS=, read -ra ps <<<"${a#*=}"
        for p in "${ps[@]}"; do sum=$(( sum + $(cpu_ticks "$p") )); done
        CPU_T0+=("$sum")
    done
    CPU_W0=$(date +%s%N)
}
cpu_report() {
    local w1 i p sum out="" ps
    w1=$(date +%s%N)
    for i in "${!CPU_NAMES[@]}"; do
        sum=0; IFS=, read -ra ps <<<"${CPU_PIDS[i]}"
        for p in "${ps[@]}"; do sum=$(( sum + $(cpu_ticks "$p") )); done
        out+="${out:+ }${CPU_NAMES[i]} $(awk -v d=$(( sum - CPU_T0[i] )) -v h="$CLK_TCK" -v w=$(( w1 - CPU_W0 )) \
            'BEGIN { printf "%.0f%%", 100 * d / h / (w / 1e9) }')"
    done
    echo "${out:--}"
}

# iperf LABEL HOST PORT [iperf3 args]: one run; IPERF holds iperf.py's line.
iperf() {
    local label=$1 host=$2 port=$3; shift 3
    local f="$WORK/iperf-$(( ${#ROWS[@]} ))-$RANDOM.json"
    sleep 0.3   # the iperf3 server is ready for its next test
    timeout -k 2 $(( T + 20 )) iperf3 -c "$host" -p "$port" -t "$T" -J --connect-timeout 3000 "$@" \
        >"$f" 2>"$f.err" </dev/null || true
    IPERF=$(python3 "$WORK/iperf.py" "$f")
    say "$label: $IPERF"
}
median() { printf '%s\n' "$@" | sort -g | awk 'NF { v[++n] = $1 } END { if (n) print v[int((n + 1) / 2)]; else print "-" }'; }
# alt_vs_stunnel HOST PORT [iperf3 args]: ALT_ROUNDS runs of the stunnel pair
# (client -> server) and of this target, taking turns; ALT_ST and ALT_RB hold
# the median Gbit/s of each (rates drift over minutes on a shared VM; taking
# turns puts both under the same drift).
ALT_ROUNDS=3
alt_vs_stunnel() {
    local host=$1 port=$2 r st_rates=() rb_rates=()
    shift 2
    for ((r = 0; r < ALT_ROUNDS; r++)); do
        iperf "alternating: stunnel c->s" 127.0.0.1 "$ST_C"
        [[ $IPERF == error* ]] || st_rates+=("${IPERF%% *}")
        iperf "alternating: $host:$port $*" "$host" "$port" "$@"
        [[ $IPERF == error* ]] || rb_rates+=("${IPERF%% *}")
    done
    ALT_ST=$(median "${st_rates[@]}") ALT_RB=$(median "${rb_rates[@]}")
}
alt_row() {   # alt_row THROUGH DIRECTION: the row for alt_vs_stunnel's result
    local ratio
    ratio=$(awk -v a="$ALT_RB" -v b="$ALT_ST" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f×", a / b; else print "-" }')
    row "bulk, 1 stream, taking turns with the stunnel pair ($ALT_ROUNDS runs each, medians)" "$1" "$2" \
        "**$ALT_RB Gbit/s**" "$ratio of the stunnel pair's $ALT_ST Gbit/s (client → server) in the same minutes" "-"
}
gbps() { if [[ $1 == error* ]]; then echo "failed"; else echo "**${1%% *} Gbit/s**"; fi; }
field() { if [[ $1 == error* ]]; then echo "-"; else cut -d' ' -f"$2" <<<"$1"; fi; }
ratio() {   # ratio IPERF_LINE PEER_LINE: "0.45×"
    [[ $1 == error* || $2 == error* || -z $2 ]] && { echo "-"; return; }
    awk -v a="${1%% *}" -v b="${2%% *}" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "-" }'
}
fair() {   # fair IPERF_LINE: per-stream range and Jain's index
    [[ $1 == error* ]] && { echo "${1:0:120}"; return; }
    echo "$(field "$1" 3) streams, per stream $(field "$1" 4)-$(field "$1" 5) Mbit/s, Jain $(field "$1" 6), retransmits $(field "$1" 2)"
}

# lat LABEL HOST PORT [N] [SECONDS]: LAT holds connlat.py's JSON.
lat() {
    local label=$1 host=$2 port=$3 n=${4:-$NCONN} secs=${5:-30}
    LAT=$(timeout -k 2 $(( secs + 20 )) python3 "$WORK/connlat.py" "$host" "$port" "$n" "$secs" \
        2>>"$WORK/connlat.err" | tail -n 1 || true)
    [[ -n $LAT ]] || LAT="connlat.py failed: $(tail -n 1 "$WORK/connlat.err")"
    say "$label: $LAT"
}
# lat_pair HOST_A PORT_A HOST_B PORT_B: ROUNDS alternating runs of NCONN /
# ROUNDS connections, A then B, pooled: LAT_A and LAT_B hold pool.py's JSON.
# The machine's state drifts over minutes (steal time, where the scheduler
# puts each process); alternating puts both under the same drift.
lat_pair() {
    local fa="$WORK/lat-a-$RANDOM" fb="$WORK/lat-b-$RANDOM" r n=$(( (NCONN + LAT_ROUNDS - 1) / LAT_ROUNDS ))
    for ((r = 0; r < LAT_ROUNDS; r++)); do
        timeout -k 2 50 python3 "$WORK/connlat.py" "$1" "$2" "$n" 30 "$fa" >/dev/null 2>>"$WORK/connlat.err" || true
        timeout -k 2 50 python3 "$WORK/connlat.py" "$3" "$4" "$n" 30 "$fb" >/dev/null 2>>"$WORK/connlat.err" || true
    done
    LAT_A=$(python3 "$WORK/pool.py" "$fa" 2>>"$WORK/connlat.err" || echo "pool.py failed")
    LAT_B=$(python3 "$WORK/pool.py" "$fb" 2>>"$WORK/connlat.err" || echo "pool.py failed")
}
jf() { sed -n "s/.*\"$2\": \\([^,}]*\\).*/\\1/p" <<<"$1"; }   # jf JSON KEY
lat_cols() {   # the result and detail cells of a latency row
    local j=$1
    if [[ -z $(jf "$j" first_p50) || $(jf "$j" first_p50) == null ]]; then
        echo "failed | ${j:0:150}"; return
    fi
    local extra=""
    [[ $(jf "$j" failed) == 0 ]] || extra+=", **$(jf "$j" failed) failed** $(sed -n 's/.*"errors": \({[^}]*}\).*/\1/p' <<<"$j")"
    [[ $(jf "$j" wrong) == 0 ]] || extra+=", **$(jf "$j" wrong) wrong echoes**"
    echo "p50 **$(jf "$j" first_p50) µs**, p99 **$(jf "$j" first_p99) µs** (max $(jf "$j" first_max)) | $(jf "$j" ok) connections$extra; then write-write-read: p50 $(jf "$j" exch_p50), p99 $(jf "$j" exch_p99), max $(jf "$j" exch_max) µs; waits ≥ 30 ms: $(jf "$j" stalls_30ms)"
}

# bulk HOST:PORT...: bulk.py with the sink on P_SINK; BULK holds its JSON.
bulk() {
    BULK=$(timeout -k 2 $(( T + 40 )) python3 "$WORK/bulk.py" "$P_SINK" "$T" "$@" \
        2>>"$WORK/bulk.err" | tail -n 1 || true)
    [[ -n $BULK ]] || BULK="bulk.py failed: $(tail -n 1 "$WORK/bulk.err")"
}

listening() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }
wait_listen() {   # wait_listen PORT PID WHAT
    for _ in $(seq 100); do listening "$1" && return 0; kill -0 "$2" 2>/dev/null || break; sleep 0.1; done
    die "$3 is not listening on 127.0.0.1:$1"
}
descendants() {
    local kids k
    kids=$(ps -o pid= --ppid "$1" 2>/dev/null || true)
    for k in $kids; do echo "$k"; descendants "$k"; done
}
csv() { local IFS=,; echo "$*"; }

# ---- peers' servers: iperf3 at the device and in the intranet, echo ---------
port P_DEV; port P_INT; port P_ECHO
iperf3 -s -B 127.0.0.1 -p "$P_DEV" </dev/null >"$WORK/iperf-dev.log" 2>&1 &
bench_track $!; wait_listen "$P_DEV" $! "iperf3 (device side)"
iperf3 -s -B 127.0.0.1 -p "$P_INT" </dev/null >"$WORK/iperf-int.log" 2>&1 &
bench_track $!; wait_listen "$P_INT" $! "iperf3 (intranet side)"
python3 "$WORK/echo.py" "$P_ECHO" </dev/null >"$WORK/echo.log" 2>&1 &
bench_track $!; wait_listen "$P_ECHO" $! "the echo server"

# ---- sshd and the ssh tunnels -------------------------------------------------
S=$WORK/ssh
mkdir -p "$S" && chmod 700 "$S"
ssh-keygen -q -t ed25519 -N '' -f "$S/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$S/user_key"
cp "$S/user_key.pub" "$S/authorized_keys"
port SSH_PORT
cat >"$S/sshd_config" <<CONF
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
AllowTcpForwarding yes
Ciphers aes128-gcm@openssh.com
CONF
[[ -d /run/sshd ]] || { mkdir -p /run/sshd && chmod 755 /run/sshd; }
/usr/sbin/sshd -D -e -f "$S/sshd_config" </dev/null >"$WORK/sshd.log" 2>&1 &
SSHD=$!
bench_track "$SSHD"
wait_listen "$SSH_PORT" "$SSHD" sshd
SSH_OPTS=(-F /dev/null -i "$S/user_key" -o IdentitiesOnly=yes -o BatchMode=yes
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
    -o ControlMaster=no -o ExitOnForwardFailure=yes -o ServerAliveInterval=0
    -c aes128-gcm@openssh.com -p "$SSH_PORT")
port R_IPERF; port R_ECHO; port L_IPERF; port L_ECHO; port R_ECHO_TT
# ssh -N: -R = a server-initiated connection (sshd's side listens, the
# device's ssh connects to its local service), -L = the device's forward.
ssh -N "${SSH_OPTS[@]}" -R "127.0.0.1:$R_IPERF:127.0.0.1:$P_DEV" -R "127.0.0.1:$R_ECHO:127.0.0.1:$P_ECHO" \
    -L "127.0.0.1:$L_IPERF:127.0.0.1:$P_INT" -L "127.0.0.1:$L_ECHO:127.0.0.1:$P_ECHO" \
    root@127.0.0.1 </dev/null >"$WORK/ssh-n.log" 2>&1 &
SSH_N=$!
bench_track "$SSH_N"
# With a pty session (-tt), OpenSSH marks the connection interactive and sets
# TCP_NODELAY on it (with -N it does not).
ssh -tt "${SSH_OPTS[@]}" -R "127.0.0.1:$R_ECHO_TT:127.0.0.1:$P_ECHO" root@127.0.0.1 'sleep 3600' \
    </dev/null >"$WORK/ssh-tt.log" 2>&1 &
SSH_TT=$!
bench_track "$SSH_TT"
for p in "$R_IPERF" "$R_ECHO" "$L_IPERF" "$L_ECHO"; do wait_listen "$p" "$SSH_N" "ssh -N's forward"; done
wait_listen "$R_ECHO_TT" "$SSH_TT" "ssh -tt's forward"
ssh_cpu() {   # SSH_CPU: cpu_mark's arguments for an ssh client and sshd's sessions
    SSH_CPU=("ssh=$1" "sshd=$(descendants "$SSHD" | paste -sd, -)")
}

# ---- stunnel pair: client stunnel -> server stunnel -> intranet iperf3 ------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=localhost" \
    -keyout "$WORK/st.key" -out "$WORK/st.pem" 2>/dev/null
port ST_S; port ST_C
cat >"$WORK/stunnel-s.conf" <<CONF
foreground = yes
pid =
output = $WORK/stunnel-s.log
sslVersionMin = TLSv1.3
ciphersuites = TLS_AES_256_GCM_SHA384
[server]
accept = 127.0.0.1:$ST_S
connect = 127.0.0.1:$P_INT
cert = $WORK/st.pem
key = $WORK/st.key
CONF
cat >"$WORK/stunnel-c.conf" <<CONF
foreground = yes
pid =
output = $WORK/stunnel-c.log
sslVersionMin = TLSv1.3
ciphersuites = TLS_AES_256_GCM_SHA384
[client]
client = yes
accept = 127.0.0.1:$ST_C
connect = 127.0.0.1:$ST_S
CONF
stunnel "$WORK/stunnel-s.conf" </dev/null >/dev/null 2>&1 &
STS=$!; bench_track "$STS"; wait_listen "$ST_S" "$STS" "stunnel (server)"
stunnel "$WORK/stunnel-c.conf" </dev/null >/dev/null 2>&1 &
STC=$!; bench_track "$STC"; wait_listen "$ST_C" "$STC" "stunnel (client)"

read -r WAKE_X0 WAKE_S0 < <(wakeup_rtt)
say "wake-up round trip: across CPUs ${WAKE_X0} us, on one CPU ${WAKE_S0} us"

# ---- peers: bulk ----------------------------------------------------------------
if (( ! LATONLY )); then
say "peers: bulk TCP, ${T}s per run"
iperf "direct" 127.0.0.1 "$P_DEV"
DIRECT=$IPERF
row "bulk, 1 stream" "raw loopback (ceiling)" "-" "$(gbps "$IPERF")" "retransmits $(field "$IPERF" 2)" "-"
ssh_cpu "$SSH_N"; cpu_mark "${SSH_CPU[@]}"
iperf "ssh -R s->d" 127.0.0.1 "$R_IPERF"
SSHR_SD=$IPERF
row "bulk, 1 stream" "ssh -R (-N, aes128-gcm)" "server → device" "$(gbps "$IPERF")" "$(ratio "$IPERF" "$DIRECT") of loopback" "$(cpu_report)"
ssh_cpu "$SSH_N"; cpu_mark "${SSH_CPU[@]}"
iperf "ssh -R d->s" 127.0.0.1 "$R_IPERF" -R
SSHR_DS=$IPERF
row "bulk, 1 stream" "ssh -R (-N, aes128-gcm)" "device → server" "$(gbps "$IPERF")" "$(ratio "$IPERF" "$DIRECT") of loopback" "$(cpu_report)"
ssh_cpu "$SSH_N"; cpu_mark "${SSH_CPU[@]}"
iperf "ssh -L d->s" 127.0.0.1 "$L_IPERF"
SSHL_DS=$IPERF
row "bulk, 1 stream" "ssh -L (-N, aes128-gcm)" "device → server" "$(gbps "$IPERF")" "$(ratio "$IPERF" "$DIRECT") of loopback" "$(cpu_report)"
ssh_cpu "$SSH_N"; cpu_mark "${SSH_CPU[@]}"
iperf "ssh -L s->d" 127.0.0.1 "$L_IPERF" -R
SSHL_SD=$IPERF
row "bulk, 1 stream" "ssh -L (-N, aes128-gcm)" "server → device" "$(gbps "$IPERF")" "$(ratio "$IPERF" "$DIRECT") of loopback" "$(cpu_report)"
cpu_mark "stunnel-c=$STC" "stunnel-s=$STS"
iperf "stunnel c->s" 127.0.0.1 "$ST_C"
ST_CS=$IPERF
row "bulk, 1 stream" "stunnel pair (TLS 1.3, AES-256-GCM)" "client → server" "$(gbps "$IPERF")" "$(ratio "$IPERF" "$DIRECT") of loopback" "$(cpu_report)"
cpu_mark "stunnel-c=$STC" "stunnel-s=$STS"
iperf "stunnel s->c" 127.0.0.1 "$ST_C" -R
ST_SC=$IPERF
row "bulk, 1 stream" "stunnel pair (TLS 1.3, AES-256-GCM)" "server → client" "$(gbps "$IPERF")" "$(ratio "$IPERF" "$DIRECT") of loopback" "$(cpu_report)"
fi

# ---- peers: latency ---------------------------------------------------------------
say "peers: connect + first byte, $NCONN connections"
lat "direct" 127.0.0.1 "$P_ECHO"
row "connect + first byte" "direct to the echo server" "-" "$(lat_cols "$LAT")" "-"
ssh_cpu "$SSH_TT"; cpu_mark "${SSH_CPU[@]}"
lat "ssh -R -tt" 127.0.0.1 "$R_ECHO_TT"
row "connect + first byte" "ssh -R with a pty session (-tt: TCP_NODELAY)" "server-initiated" "$(lat_cols "$LAT")" "$(cpu_report)"
# Nagle stalls cost ~40 ms each: fewer connections, bounded in time.
lat "ssh -R -N" 127.0.0.1 "$R_ECHO" 100 15
row "connect + first byte" "ssh -R (-N: Nagle left on)" "server-initiated" "$(lat_cols "$LAT")" "-"
lat "ssh -L -N" 127.0.0.1 "$L_ECHO" 100 15
row "connect + first byte" "ssh -L (-N: Nagle left on)" "device-initiated" "$(lat_cols "$LAT")" "-"

# ---- peers: many streams ------------------------------------------------------------
if (( ! LATONLY )); then
say "peers: $NSTREAMS streams"
iperf "direct -P" 127.0.0.1 "$P_DEV" -P "$NSTREAMS"
row "$NSTREAMS streams (iperf3 -P)" "raw loopback" "-" "$(gbps "$IPERF")" "$(fair "$IPERF")" "-"
ssh_cpu "$SSH_N"; cpu_mark "${SSH_CPU[@]}"
iperf "ssh -R -P" 127.0.0.1 "$R_IPERF" -P "$NSTREAMS"
SSHR_P=$IPERF
row "$NSTREAMS streams (iperf3 -P)" "ssh -R (-N), one connection" "server → device" "$(gbps "$IPERF")" "$(fair "$IPERF")" "$(cpu_report)"
port P_SINK
say "peers: $NSESS streams from the Python source to the sink"
targets=()
for ((i = 0; i < NSESS; i++)); do targets+=("127.0.0.1:$P_SINK"); done
bulk "${targets[@]}"
say "direct bulk.py: $BULK"
fi
bulk_cols() {
    local j=$1
    [[ -n $(jf "$j" agg_gbps) ]] || { echo "failed | ${j:0:150}"; return; }
    local extra=""
    [[ $(jf "$j" arrived) == "$(jf "$j" streams)" ]] || extra+=", **only $(jf "$j" arrived) arrived**"
    [[ $(jf "$j" stalled) == 0 ]] || extra+=", **$(jf "$j" stalled) stalled**"
    [[ $(sed -n 's/.*"errors": \({[^}]*}\).*/\1/p' <<<"$j") == "{}" ]] || extra+=", errors $(sed -n 's/.*"errors": \({[^}]*}\).*/\1/p' <<<"$j")"
    echo "**$(jf "$j" agg_gbps) Gbit/s** | $(jf "$j" streams) streams, per stream $(jf "$j" min_mbps)-$(jf "$j" max_mbps) Mbit/s, Jain $(jf "$j" jain)$extra"
}
(( LATONLY )) || row "$NSESS streams, Python source/sink" "raw loopback (the tool's ceiling)" "-" "$(bulk_cols "$BULK")" "-"

# ---- reachback, per data link mode ---------------------------------------------------
streams_at() { curl -sf --max-time 2 "$1/status" | sed -n 's/.*"streams":\([0-9]*\).*/\1/p'; }
leak_check() {   # after a run: LEAK notes streams still open at forwarder and edge
    sleep 1
    local f e
    f=$(streams_at "$FORWARDER_STATUS_URL"); e=$(streams_at "$EDGE_STATUS_URL")
    LEAK=""
    if [[ $f != "$FWD_STREAMS" || $e != "$EDGE_STREAMS" ]]; then
        LEAK="; **streams open after the run: forwarder $f, edge $e** (before: $FWD_STREAMS, $EDGE_STREAMS)"
    fi
    FWD_STREAMS=$f EDGE_STREAMS=$e
}
USERS="alice"
for ((i = 1; i <= NSESS; i++)); do USERS+=",u$i"; done
MODE_NOTES=()
for mode in $MODES; do
    case $mode in
        inproc) mlabel="inproc:// (reachback-gateway)" ;;
        ipc) mlabel="ipc:// (no CURVE)" ;;
        tcp) mlabel="tcp:// + CURVE" ;;
        *) die "--modes: inproc, ipc or tcp, not '$mode'" ;;
    esac
    say "reachback, data link $mode: starting a lab with alice and $NSESS users"
    export RB_LAB_DATA_LINK=$mode
    lab_start --users "$USERS"
    unset RB_LAB_DATA_LINK
    ep=$(awk '$1 == "data_endpoint" { print $3 }' "$LAB/conf/forwarder.conf")
    [[ $ep == "$mode"://* ]] || die "the lab's data link is '$ep', wanted $mode"
    case $mode in
        tcp) MODE_NOTES+=("tcp = data_endpoint $ep with CURVE") ;;
        ipc) MODE_NOTES+=("ipc = data_endpoint $ep, no CURVE") ;;
        inproc) MODE_NOTES+=("inproc = data_endpoint $ep: edge and forwarder are one reachback-gateway process") ;;
    esac
    [[ -n ${EDGE_TLS:-} ]] || EDGE_TLS=$(openssl s_client -connect "$EDGE_ADDR" -CAfile "$CA" </dev/null 2>/dev/null \
        | sed -n 's/.*New, \(TLSv[0-9.]*\), Cipher is \(.*\)/\1 \2/p' | head -n 1 || true)
    EDGE=$(pid_of edge); FWD=$(pid_of forwarder)
    "$BIN/reachback-client" connect --server "$EDGE_ADDR" --ca "$CA" --user alice \
        --password-file "$USER_ALICE_PASSWORD_FILE" --device bench \
        --expose "tcp:5201=127.0.0.1:$P_DEV" --expose "tcp:5202=127.0.0.1:$P_ECHO" \
        --forward "127.0.0.1:0:127.0.0.1:$P_INT" --forward "127.0.0.1:0:127.0.0.1:$P_ECHO" \
        --status-file "$WORK/alice.json" </dev/null >"$WORK/alice-$mode.log" 2>&1 &
    ALICE=$!
    bench_track "$ALICE"
    wait_file "$WORK/alice.json" 20 "$ALICE" || die "alice did not log on: $(tail -n 3 "$WORK/alice-$mode.log")"
    IP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ip"])' "$WORK/alice.json")
    read -r F_IPERF F_ECHO < <(python3 -c 'import json,sys; print(*json.load(open(sys.argv[1]))["listen_ports"])' "$WORK/alice.json")
    for _ in $(seq 50); do
        curl -sf --max-time 1 "$FORWARDER_STATUS_URL/status" | grep -q '"attached_sessions":1' && break
        sleep 0.1
    done
    FWD_STREAMS=0 EDGE_STREAMS=0
    say "alice is $IP; forwards on $F_IPERF (iperf3) and $F_ECHO (echo)"
    if [[ $EDGE == "$FWD" ]]; then TUN=("gateway=$EDGE" "client=$ALICE")
    else TUN=("edge=$EDGE" "fwd=$FWD" "client=$ALICE"); fi
    rb="reachback, $mlabel"
    # Latency first, on a quiet machine: after the bulk runs below, ssh -R's
    # latency rose by 100-350 us in some runs and ours less, which flattered
    # the ratio.
    lat_pair 127.0.0.1 "$R_ECHO_TT" "$IP" 5202
    leak_check
    say "$mode: ssh -R -tt, interleaved: $LAT_A"
    say "$mode exposed echo, interleaved with ssh -R -tt: $LAT_B"
    p_ssh=$(jf "$LAT_A" first_p50) p_rb=$(jf "$LAT_B" first_p50)
    vs=$(awk -v a="$p_rb" -v b="$p_ssh" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f× of", a / b; else print "vs" }')
    row "connect + first byte" "ssh -R -tt, alternating with the row below ($LAT_ROUNDS rounds each)" "server-initiated" "$(lat_cols "$LAT_A")" "-"
    row "connect + first byte" "$rb: exposed port, alternating with ssh -R -tt" "server-initiated" "$(lat_cols "$LAT_B"); p50 $vs ssh -R -tt's$LEAK" "-"
    cpu_mark "${TUN[@]}"
    lat "$mode forward echo" 127.0.0.1 "$F_ECHO"
    c=$(cpu_report)
    leak_check
    row "connect + first byte" "$rb: --forward" "device-initiated" "$(lat_cols "$LAT")$LEAK" "$c"
    if (( LATONLY )); then
        kill -TERM "$ALICE" 2>/dev/null || true
        wait_pid "$ALICE" 10
        rm -f "$WORK/alice.json"
        "$ROOT/scripts/lab" stop --dir "$LAB" >/dev/null 2>&1 || true
        continue
    fi


    cpu_mark "${TUN[@]}"
    iperf "$mode exposed s->d" "$IP" 5201
    r=$IPERF; c=$(cpu_report)
    leak_check
    row "bulk, 1 stream" "$rb: exposed port (server-initiated)" "server → device" "$(gbps "$r")" "$(ratio "$r" "$SSHR_SD") of ssh -R, $(ratio "$r" "$ST_CS") of stunnel$LEAK" "$c"
    cpu_mark "${TUN[@]}"
    iperf "$mode exposed d->s" "$IP" 5201 -R
    r=$IPERF; c=$(cpu_report)
    leak_check
    row "bulk, 1 stream" "$rb: exposed port (server-initiated)" "device → server" "$(gbps "$r")" "$(ratio "$r" "$SSHR_DS") of ssh -R, $(ratio "$r" "$ST_SC") of stunnel$LEAK" "$c"
    cpu_mark "${TUN[@]}"
    iperf "$mode forward d->s" 127.0.0.1 "$F_IPERF"
    r=$IPERF; c=$(cpu_report)
    leak_check
    row "bulk, 1 stream" "$rb: --forward (device-initiated)" "device → server" "$(gbps "$r")" "$(ratio "$r" "$SSHL_DS") of ssh -L, $(ratio "$r" "$ST_CS") of stunnel$LEAK" "$c"
    cpu_mark "${TUN[@]}"
    iperf "$mode forward s->d" 127.0.0.1 "$F_IPERF" -R
    r=$IPERF; c=$(cpu_report)
    leak_check
    row "bulk, 1 stream" "$rb: --forward (device-initiated)" "server → device" "$(gbps "$r")" "$(ratio "$r" "$SSHL_SD") of ssh -L, $(ratio "$r" "$ST_SC") of stunnel$LEAK" "$c"

    alt_vs_stunnel "$IP" 5201
    alt_row "$rb: exposed port (server-initiated)" "server → device"
    alt_vs_stunnel 127.0.0.1 "$F_IPERF"
    alt_row "$rb: --forward (device-initiated)" "device → server"
    leak_check


    cpu_mark "${TUN[@]}"
    iperf "$mode exposed -P" "$IP" 5201 -P "$NSTREAMS"
    r=$IPERF; c=$(cpu_report)
    leak_check
    row "$NSTREAMS streams (iperf3 -P)" "$rb: one session's exposed port" "server → device" "$(gbps "$r")" "$(fair "$r"); $(ratio "$r" "$SSHR_P") of ssh -R$LEAK" "$c"

    # NSESS devices, one per user, each exposing 5201 to the one sink.
    say "$mode: logging on $NSESS devices"
    DEVS=()
    for ((i = 1; i <= NSESS; i++)); do
        pwv="USER_U${i}_PASSWORD_FILE"
        "$BIN/reachback-client" connect --server "$EDGE_ADDR" --ca "$CA" --user "u$i" \
            --password-file "${!pwv}" --device "d$i" --expose "tcp:5201=127.0.0.1:$P_SINK" \
            --status-file "$WORK/u$i.json" </dev/null >"$WORK/u$i-$mode.log" 2>&1 &
        DEVS+=($!)
        bench_track $!
    done
    deadline=$(( $(date +%s) + 60 ))
    while :; do
        up=0
        for ((i = 1; i <= NSESS; i++)); do [[ -s $WORK/u$i.json ]] && up=$((up + 1)); done
        (( up == NSESS || $(date +%s) >= deadline )) && break
        sleep 0.2
    done
    for _ in $(seq 100); do
        curl -sf --max-time 1 "$FORWARDER_STATUS_URL/status" | grep -q "\"attached_sessions\":$(( NSESS + 1 ))" && break
        sleep 0.1
    done
    say "$mode: $up of $NSESS devices logged on"
    targets=()
    for ((i = 1; i <= NSESS; i++)); do
        [[ -s $WORK/u$i.json ]] || continue
        targets+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ip"])' "$WORK/u$i.json"):5201")
    done
    cpu_mark "${TUN[@]:0:${#TUN[@]}-1}" "clients=$(csv "${DEVS[@]}")"
    bulk "${targets[@]}"
    c=$(cpu_report)
    leak_check
    say "$mode bulk.py over $up sessions: $BULK"
    row "$NSESS streams, Python source/sink" "$rb: $up sessions (one stream each, exposed port)" "server → device" "$(bulk_cols "$BULK")$LEAK" "$c"

    for p in "${DEVS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    kill -TERM "$ALICE" 2>/dev/null || true
    for p in "${DEVS[@]}" "$ALICE"; do wait_pid "$p" 10; done
    rm -f "$WORK"/u*.json "$WORK/alice.json"
    "$ROOT/scripts/lab" stop --dir "$LAB" >/dev/null 2>&1 || true
done

# ---- the table ---------------------------------------------------------------------
MODES_TEXT=""
for m in "${MODE_NOTES[@]}"; do MODES_TEXT+="${MODES_TEXT:+; }$m"; done
read -r WAKE_X1 WAKE_S1 < <(wakeup_rtt)
echo
echo "### Data plane: bulk TCP, connect + first byte, many streams ($(date -u +%Y-%m-%dT%H:%MZ); $(machine))"
echo
echo "| measurement | through | direction | result | detail | CPU, % of one core |"
echo "| --- | --- | --- | ---: | --- | --- |"
printf '%s\n' "${ROWS[@]}"
echo
echo "Bulk: iperf3 $(iperf3 --version | head -n 1 | cut -d' ' -f2), one TCP stream, ${T} s, receiver's rate; \"server → device\""
echo "is data from the intranet side to the device side (iperf3 -R reverses the sender, not the connection)."
echo "Server-initiated = an internal client connects to alice's intranet address (exposed port),"
echo "peer ssh -R; device-initiated = the device connects to its --forward port, peer ssh -L."
echo "Latency: $NCONN sequential connections (100 in the ssh -N rows: each stall costs ~40 ms; the
alternating rows pool $LAT_ROUNDS runs of 1/$LAT_ROUNDS each, measured before the lab's bulk runs, ssh and reachback taking turns), Python"
echo "client with TCP_NODELAY, a one-thread Python echo server (TCP_NODELAY); \"first\" is connect + 1 byte + its echo; then 3"
echo "exchanges per connection of two 16-byte writes and one read, where a Nagle stall (~40 ms) shows."
echo "Data link modes (edge-forwarder): $MODES_TEXT; edge TLS: ${EDGE_TLS:-?}. ssh: $(ssh -V 2>&1 | cut -d, -f1);"
echo "stunnel $(stunnel -version 2>&1 | sed -n 's/^stunnel \([0-9.]*\).*/\1/p' | head -n 1). CPU: user + system time of the"
echo "tunnel's processes over the run (the load generators, iperf3 and Python, share the cores too)."
echo "Peers were measured in this same run on this machine; the run took $SECONDS s. Targets (DESIGN §6):"
echo "bulk at least the stunnel pair's rate, aiming for ssh -R's; connect + first byte p50 below ssh -R's"
echo "(the -tt row: ssh with TCP_NODELAY), and no Nagle-style stall (p99, and no waits ≥ 30 ms)."
echo "Wake-ups: a one-byte round trip between two processes (Python, pinned) took p50 ${WAKE_X0} µs across"
echo "the CPUs at the start and ${WAKE_X1} µs at the end (on one CPU: ${WAKE_S0} and ${WAKE_S1} µs). Every hop of a"
echo "relay chain that wakes a thread on the other, idle CPU pays the first; reachback's connect + first"
echo "byte crosses 12 threads with edge and forwarder in two processes (4 of them ZeroMQ's I/O threads),"
echo "8 through reachback-gateway (inproc://), where ssh -R crosses 8, so its ipc and tcp latency rows"
echo "move more than ssh's when that cost moves, and on a shared VM it moves from hour to hour."
