#!/usr/bin/env bash
# What an operator sees first: --help, --version, --check-config (a bad
# config names file, line and key), environment overrides, and two labs side
# by side.
. "$(dirname "$0")/lib.sh"
# (--help is read whole before grep: with pipefail, grep -q quitting at the
# first match could fail the pipeline through the writer's SIGPIPE.)
for s in broker ipalloc dns forwarder edge; do
    help=$("$BIN/reachback-$s" --help)
    grep -q -- "--check-config" <<<"$help" || fail "$s --help"
    grep -q "RB_${s^^}_" <<<"$help" || fail "$s --help lists no environment overrides"
    "$BIN/reachback-$s" --version | grep -qE "^reachback-$s [0-9]+\.[0-9]+" || fail "$s --version"
    printf '# test\nlog_level = info\nno_such_key = 1\n' > "$LAB/bad.conf"
    rc=0; out=$("$BIN/reachback-$s" --check-config --config "$LAB/bad.conf" 2>&1) || rc=$?
    [[ $rc == 1 && $out == *"$LAB/bad.conf:3: key 'no_such_key'"* ]] || fail "$s bad key: rc=$rc '$out'"
    rc=0; "$BIN/reachback-$s" --bogus >/dev/null 2>&1 || rc=$?
    [[ $rc == 2 ]] || fail "$s unknown flag: exit $rc, want 2"
done
ok "help, version, config errors for every service"
# reachback-gateway takes two configs and names which one is wrong.
help=$("$BIN/reachback-gateway" --help)
grep -q -- "--edge-config FILE" <<<"$help" && grep -q -- "--forwarder-config FILE" <<<"$help" \
    || fail "gateway --help"
"$BIN/reachback-gateway" --version | grep -qE "^reachback-gateway [0-9]+\.[0-9]+" || fail "gateway --version"
rc=0; "$BIN/reachback-gateway" --edge-config "$LAB/bad.conf" >/dev/null 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "gateway without --forwarder-config: exit $rc, want 2"
printf 'data_endpoint = inproc://x\n' > "$LAB/gw-fwd.conf"
rc=0; out=$("$BIN/reachback-gateway" --check-config --edge-config "$LAB/bad.conf" \
    --forwarder-config "$LAB/gw-fwd.conf" 2>&1) || rc=$?
[[ $rc == 1 && $out == "reachback-edge: config error: $LAB/bad.conf:3: key 'no_such_key'"* ]] \
    || fail "gateway with a bad edge config: rc=$rc '$out'"
ok "reachback-gateway: help, version, usage and a bad edge config named"
grep -qi "exit codes" <<<"$("$BIN/reachback-client" --help)" || fail "client --help lists no exit codes"
grep -q passwd <<<"$("$BIN/reachback-ctl" --help)" || fail "ctl --help"
ok "client and ctl help"

lab_start --set dns.ttl=7
[[ $(awk '$1 == "ttl" { print $3 }' "$LAB/conf/dns.conf") == 7 ]] || fail "--set did not reach dns.conf"
"$BIN/reachback-dns" --check-config --config "$LAB/conf/dns.conf" | grep -q "^ttl = 7$" || fail "check-config does not show ttl 7"
RB_DNS_TTL=9 "$BIN/reachback-dns" --check-config --config "$LAB/conf/dns.conf" | grep -q "^ttl = 9$" \
    || fail "RB_DNS_TTL does not override the file"
"$BIN/reachback-broker" --check-config --config "$LAB/conf/broker.conf" | grep -q "admin_token = (set)" \
    || fail "check-config must not print the admin token"
ok "--set, env override, secrets hidden"
"$ROOT/scripts/lab" status --dir "$LAB" >/dev/null || fail "lab status reports a problem"

# A second lab in another directory, at the same time.
LAB2=$(mktemp -d /tmp/rb-itest2-XXXXXX)
"$ROOT/scripts/lab" start --dir "$LAB2" || { rm -rf "$LAB2"; fail "second lab did not start"; }
env2=$(cat "$LAB2/lab.env")
"$ROOT/scripts/lab" stop --dir "$LAB2"
rm -rf "$LAB2"
[[ $env2 != *"EDGE_ADDR=$EDGE_ADDR"* && $env2 != *"POOL=$POOL"* ]] || fail "second lab clashed with the first"
"$ROOT/scripts/lab" status --dir "$LAB" >/dev/null || fail "first lab hurt by the second"
ok "two labs side by side"
# Every service ends by itself on SIGTERM, and soon: lab stop's KILL after
# 5 s must never be what ends one (a forwarder once hung in zmq_ctx_term on
# its ZAP socket, unnoticed, and LeakSanitizer never saw it exit).
for f in "$LAB"/run/*.pid; do
    [[ -L $f ]] && continue
    s=$(basename "$f" .pid)
    [[ $s == redis ]] && continue
    pid=$(cat "$f")
    kill -TERM "$pid"
    wait_until 3000 bash -c "! kill -0 $pid 2>/dev/null || grep -q '^State:.*Z' /proc/$pid/status" \
        || fail "$s (pid $pid) still runs 3 s after SIGTERM: $(tail -2 "$LAB/logs/$s.log")"
done
ok "every service exits by itself within 3 s of SIGTERM"
pids=$(cat "$LAB"/run/*.pid)
"$ROOT/scripts/lab" stop --dir "$LAB"
for p in $pids; do ! proc_running "$p" || fail "process $p survived lab stop"; done
ok "lab stop leaves no process behind"
