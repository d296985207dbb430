#!/usr/bin/env bash
# Issue 3, point 9: a concurrency and fault invariant checker. A lab of 3
# edges and 2 brokers; for RB_CHAOS_SECONDS (default 30) a driver starts
# reachback-client processes for 5 users (--transfer yes, every edge in a
# random order, so they race logons and transfers and resume on another
# edge) and logs them off (SIGINT) or drops them (SIGKILL); a chaos loop
# SIGKILLs and revives an edge, a broker, ipalloc and dns in turn, and
# Redis once (appendonly, fsync always). A sampler reads Redis (one Lua
# script: live sessions, leases, user keys), every edge's /status and DNS
# every ~100 ms and fails on:
#   - two live sessions for one user, or one address in two live sessions;
#   - a live session whose address is leased to nobody or to another user,
#     edges carrying more sessions than Redis holds (3 s: a killed broker's
#     lost event waits for the edges' next refresh), or a DNS answer (A or
#     PTR) disagreeing with Redis, any of them for more than 1 s; a lease
#     still held by the ended predecessor (same user) of a transferred
#     session for more than 20 s (the reconcile's bound);
#   - a session lost without a reason (a device that logged on and ended
#     with anything but logoff, transfer, replacement, or a refused resume
#     after a newer logon of its user);
#   - sessions, leases or names left after everyone logged off and dropped
#     devices' sessions expired.
. "$(dirname "$0")/lib.sh"
SECONDS_TOTAL=${RB_CHAOS_SECONDS:-30}
USERS=(u1 u2 u3 u4 u5)
TIMEOUT_S=5
export RB_LAB_HASH_COST=8 RB_LAB_REDIS_FSYNC=always
lab_start --edges 3 --brokers 2 --users "$(IFS=,; echo "${USERS[*]}")" \
    --set broker.session_timeout=$TIMEOUT_S --set edge.refresh_s=1
read -ra EDGES <<<"$EDGE_ADDRS"
W=$LAB/chaos
mkdir -p "$W"
: >"$W/started"; : >"$W/exits"; : >"$W/ops"; : >"$W/kills"; : >"$W/violations"; : >"$W/samples"

is_client() {   # is_client PID NAME: PID is still that reachback-client
    # (no pipe into grep -q: with pipefail, tr's SIGPIPE would read as "no")
    proc_running "$1" && [[ $(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) == *"--device $2 "* ]]
}

# ---- driver: devices come, go, drop -------------------------------------
run_client() {   # run_client NAME USER: one device, its exit recorded
    local name=$1 user=$2 s args=()
    for s in $(printf '%s\n' "${EDGES[@]}" | shuf); do args+=(--server "$s"); done
    local pwvar="USER_${user^^}_PASSWORD_FILE"
    "$BIN/reachback-client" connect "${args[@]}" --ca "$CA" --user "$user" --password-file "${!pwvar}" \
        --device "$name" --transfer yes </dev/null >"$W/$name.out" 2>&1 &
    local pid=$! rc=0
    echo "$pid" >"$W/$name.pid"
    echo "$name $user $pid $(now_ms)" >>"$W/started"
    wait "$pid" || rc=$?
    echo "$name $rc $(now_ms)" >>"$W/exits"
}

driver() {
    local n=0 name pid
    while [[ ! -e $W/stop ]]; do
        n=$((n + 1))
        run_client "d$n" "${USERS[RANDOM % ${#USERS[@]}]}" &
        # Now and then log a running device off or drop it.
        if (( RANDOM % 2 )); then
            name=$(awk '{ print $1 }' "$W/started" | shuf -n 1)
            pid=$(cat "$W/$name.pid" 2>/dev/null || true)
            if [[ -n $pid ]] && grep -q "logged on" "$W/$name.out" 2>/dev/null && is_client "$pid" "$name"; then
                if (( RANDOM % 2 )); then
                    echo "$name INT $(now_ms)" >>"$W/ops"; kill -INT "$pid" 2>/dev/null || true
                else
                    echo "$name KILL $(now_ms)" >>"$W/ops"; kill -KILL "$pid" 2>/dev/null || true
                fi
            fi
        fi
        sleep "0.$(( 15 + RANDOM % 25 ))"
    done
    # Devices still connected keep running; the end phase logs them off.
}

# ---- chaos: services die and come back ---------------------------------
chaos() {
    local victims=(edge1 broker1 ipalloc dns edge2 broker2 edge3) i=0 v t0
    local redis_at=$(( SECONDS_TOTAL / 2 )) redis_done=0 start; start=$(date +%s)
    sleep 2
    while [[ ! -e $W/stop ]]; do
        if (( ! redis_done && $(date +%s) - start >= redis_at )); then v=redis; redis_done=1
        else v=${victims[i % ${#victims[@]}]}; i=$((i + 1)); fi
        t0=$(now_ms)
        "$ROOT/scripts/lab" kill --dir "$LAB" "$v" >>"$W/chaos.log" 2>&1 || { echo "$v kill failed" >>"$W/violations"; }
        sleep "0.$(( 3 + RANDOM % 7 ))"
        "$ROOT/scripts/lab" revive --dir "$LAB" "$v" >>"$W/chaos.log" 2>&1 \
            || echo "$v did not come back: $(tail -n 1 "$W/chaos.log")" >>"$W/violations"
        echo "$v $t0 $(now_ms)" >>"$W/kills"
        sleep "1.$(( RANDOM % 10 ))"
    done
}

# ---- sampler -------------------------------------------------------------
# One atomic read of the broker's state: S sid user ip edge, L ip session.
LUA="
local out = {}
for _, sid in ipairs(redis.call('SMEMBERS', 'rb:sessions:live')) do
  local f = redis.call('HMGET', 'rb:session:' .. sid, 'state', 'user', 'ip', 'edge')
  if f[1] == 'live' then
    out[#out + 1] = 'S ' .. sid .. ' ' .. (f[2] or '-') .. ' ' .. ((f[3] ~= nil and f[3] ~= '') and f[3] or '-') .. ' ' .. (f[4] or '-')
  end
end
for _, ip in ipairs(redis.call('SMEMBERS', 'rb:ip:leased')) do
  out[#out + 1] = 'L ' .. ip .. ' ' .. (redis.call('HGET', 'rb:ip:lease:' .. ip, 'session') or '-')
    .. ' ' .. (redis.call('HGET', 'rb:ip:lease:' .. ip, 'user') or '-')
end
return out"

sampler() {
    declare -A first=()
    local samples=0 skipped=0 state dns edges now key limit
    local status_urls=()
    for i in $(seq ${#EDGES[@]}); do v="EDGE${i}_STATUS_URL"; status_urls+=("${!v}/status"); done
    while [[ ! -e $W/stop_sampler ]]; do
        now=$(now_ms)
        if ! state=$(redis-cli -s "$REDIS_SOCKET" EVAL "$LUA" 0 2>/dev/null) || [[ $state == *ERR* || $state == *LOADING* ]]; then
            skipped=$((skipped + 1)); sleep 0.1; continue
        fi
        local q=() ip
        for u in "${USERS[@]}"; do q+=("$u.$DNS_SUFFIX" A); done
        for ip in $(awk '$1 == "S" && $4 != "-" { print $4 }' <<<"$state"); do q+=(-x "$ip"); done
        # DNS and the edges are asked at once: either may be the one just
        # killed, and waiting for both in turn thinned the samples.
        dig @"$DNS_ADDR" -p "$DNS_PORT" +noall +answer +comments +time=1 +tries=1 "${q[@]}" \
            >"$W/dig.out" 2>&1 &
        local dig_pid=$!
        edges=$(curl -s --max-time 0.5 "${status_urls[@]}" 2>/dev/null | grep -o '"sessions":[0-9]*' | awk -F: '{ s += $2 } END { print s + 0 }')
        wait "$dig_pid" || true
        dns=$(cat "$W/dig.out")
        samples=$((samples + 1))
        # Immediate violations, and "key" lines for disagreements that may
        # last up to 1 s.
        local out
        out=$(awk -v dnsout="$dns" -v edges="${edges:-0}" -v suffix="$DNS_SUFFIX" -v users="${USERS[*]}" '
            $1 == "S" { n++; user[$2] = $3; ip[$2] = $4; byuser[$3]++; if ($4 != "-") { byip[$4]++; ipsid[$4] = $2; uip[$3] = $4 } }
            $1 == "L" { lease[$2] = $3; leaseuser[$2] = $4 }
            END {
                for (u in byuser) if (byuser[u] > 1) print "NOW two live sessions for " u
                for (a in byip) if (byip[a] > 1) print "NOW address " a " in " byip[a] " live sessions"
                for (s in ip) {
                    if (ip[s] == "-" || lease[ip[s]] == s) continue
                    # Held by an ended session of the same user: a transfer whose
                    # lease take-over is still on its way (or, after a broker or
                    # ipalloc died, waits for the reconcile): the address is
                    # still leased once, to the right user. Anything else is wrong.
                    if (leaseuser[ip[s]] == user[s])
                        print "KEY leaselag:" s " session " s " (" user[s] ") has " ip[s] " but its lease is still held by its predecessor " lease[ip[s]]
                    else
                        print "KEY lease:" s " session " s " (" user[s] ") has " ip[s] " but its lease is held by " (lease[ip[s]] == "" ? "nobody" : lease[ip[s]] " of " leaseuser[ip[s]])
                }
                if (edges + 0 > n) print "KEY edges edges carry " edges " sessions, Redis holds " n
                if (dnsout ~ /timed out|no servers|connection refused|communications error/) exit
                split(dnsout, lines, "\n")
                for (i in lines) {
                    split(lines[i], f, /[ \t]+/)
                    if (f[4] == "A") { nm = f[1]; sub("\\." suffix "\\.$", "", nm); ans[nm] = ans[nm] (ans[nm] == "" ? "" : ",") f[5] }
                    if (f[4] == "PTR") ptr[f[1]] = f[5]
                }
                nu = split(users, us, " ")
                for (i = 1; i <= nu; i++) {
                    u = us[i]; want = (u in uip) ? uip[u] : ""
                    if (ans[u] != want) print "KEY dnsA:" u " A " u "." suffix " answers \"" ans[u] "\", Redis says \"" want "\""
                }
                for (a in uip) {
                    split(uip[a], o, "."); rev = o[4] "." o[3] "." o[2] "." o[1] ".in-addr.arpa."
                    if (ptr[rev] != a "." suffix ".") print "KEY dnsPTR:" a " PTR " uip[a] " answers \"" ptr[rev] "\", Redis says " a "." suffix "."
                }
            }' <<<"$state")
        local seen=" "
        while IFS= read -r line; do
            [[ -z $line ]] && continue
            if [[ $line == NOW\ * ]]; then
                echo "$(date +%T.%3N) ${line#NOW }" >>"$W/violations"
            else
                key=${line#KEY }; key=${key%% *}
                seen+="$key "
                [[ -n ${first[$key]:-} ]] || first[$key]=$now
                # A lagging take-over is repaired by the brokers' reconcile
                # (every 5 s, for leases unchanged for 10 s). An edge that
                # lost the event ending a session (its broker was killed)
                # learns from a refresh (edge.refresh_s=1 here, and one sent
                # to the dead broker times out after 1 s): up to 3 s;
                # test_transfer_race holds the 1 s of the normal case. Every
                # other disagreement may last 1 s.
                limit=1000
                [[ $key == leaselag:* ]] && limit=20000
                [[ $key == edges ]] && limit=3000
                if [[ ${first[$key]} != done* ]] && (( now - first[$key] > limit )); then
                    echo "$(date +%T.%3N) for $(( now - first[$key] )) ms: ${line#KEY * }" >>"$W/violations"
                    first[$key]="done$now"
                fi
            fi
        done <<<"$out"
        for key in "${!first[@]}"; do [[ $seen == *" $key "* ]] || unset "first[$key]"; done
        echo "$samples $skipped" >"$W/samples"
        sleep 0.02   # a sample itself takes 100-400 ms: that paces the loop
    done
}

driver & DRIVER=$!
chaos & CHAOS=$!
sampler & SAMPLER=$!
CHILDREN+=("$DRIVER" "$CHAOS" "$SAMPLER")
echo "chaos: running for ${SECONDS_TOTAL}s"
sleep "$SECONDS_TOTAL"
touch "$W/stop"
wait "$CHAOS" || true
wait "$DRIVER" || true
# Every service is back (the chaos loop revives what it killed).
if ! "$ROOT/scripts/lab" status --dir "$LAB" >"$W/status.out"; then
    echo "a service is not back after the chaos: $(awk '$3 == "no" { print $1 }' "$W/status.out" | paste -sd, -)" >>"$W/violations"
    # Crashed ones (no pid) are started again so that the end can be checked.
    for s in $(awk 'NR > 1 && $2 == "-" { print $1 }' "$W/status.out"); do
        grep -h -m1 -E "double free|corruption|Sanitizer|fatal" "$LAB/logs/$s.log" 2>/dev/null \
            | sed "s/^/$s crashed: /" >>"$W/violations" || true
        "$ROOT/scripts/lab" revive --dir "$LAB" "$s" >>"$W/chaos.log" 2>&1 || true
    done
fi

# Everyone still connected logs off.
while read -r name user pid t; do
    is_client "$pid" "$name" && { echo "$name INT $(now_ms) end" >>"$W/ops"; kill -INT "$pid"; }
done <"$W/started"
deadline=$(( $(now_ms) + 15000 ))
while (( $(wc -l <"$W/exits") < $(wc -l <"$W/started") )); do
    (( $(now_ms) < deadline )) || fail "devices still running 15 s after the end: $(( $(wc -l <"$W/started") - $(wc -l <"$W/exits") ))"
    sleep 0.2
done
# Dropped devices' sessions expire; then nothing may be left.
# (plus the reconcile's period and grace for leases whose release was lost)
deadline=$(( $(now_ms) + (TIMEOUT_S + 25) * 1000 ))
until [[ $(rcli SCARD rb:sessions:live) == 0 && $(rcli SCARD rb:ip:leased) == 0 ]]; do
    if (( $(now_ms) > deadline )); then
        echo "left after everyone logged off: $(rcli SCARD rb:sessions:live) live sessions, leases: $(rcli SMEMBERS rb:ip:leased | tr '\n' ' ')" >>"$W/violations"
        break
    fi
    sleep 0.2
done
sleep 1.5   # the sampler sees the end state
touch "$W/stop_sampler"
wait "$SAMPLER" || true
for u in "${USERS[@]}"; do
    [[ $(dig_status "$u.$DNS_SUFFIX" A) == NXDOMAIN ]] || echo "name $u.$DNS_SUFFIX left: $(dig_short "$u.$DNS_SUFFIX" A)" >>"$W/violations"
    [[ -z $(rcli GET "rb:user:$u") ]] || echo "rb:user:$u left" >>"$W/violations"
done

# Every device that logged on must have ended for a reason.
declare -A signalled=() logon_ms=() user_of=() code=()
while read -r name op t _; do signalled[$name]=$op; done <"$W/ops"
while read -r name user pid t; do user_of[$name]=$user; done <"$W/started"
while read -r name rc t; do code[$name]=$rc; done <"$W/exits"
declare -A hist=()
logged=0 failed_logons=0
for name in "${!user_of[@]}"; do
    rc=${code[$name]}; hist[$rc]=$(( ${hist[$rc]:-0} + 1 ))
    if ! grep -q "logged on" "$W/$name.out"; then
        failed_logons=$((failed_logons + 1))
        case $rc in
            # refused, unreachable or cut off during a fault, killed early, or
            # told that another logon of the user was in flight (7: two
            # devices of one user racing; the other one got the session)
            0|3|5|6|7|8|11|12|137) ;;
            *) echo "$name (${user_of[$name]}) never logged on and ended with $rc: $(tail -n 1 "$W/$name.out")" >>"$W/violations" ;;
        esac
        continue
    fi
    logged=$((logged + 1))
    case ${signalled[$name]:-}:$rc in
        KILL:137|INT:0|*:11|*:12) ;;
        *:16)
            # Refused resume: fine when a newer device of the user logged on.
            t_me=$(grep "^$name " "$W/started" | awk '{ print $4 }')
            newer=
            for o in $(awk -v u="${user_of[$name]}" -v t="$t_me" '$2 == u && $4 > t { print $1 }' "$W/started"); do
                grep -q "logged on" "$W/$o.out" && { newer=$o; break; }
            done
            [[ -n $newer ]] || echo "$name (${user_of[$name]}) lost its session: resume refused with no newer logon" >>"$W/violations" ;;
        *) echo "$name (${user_of[$name]}) lost its session: exit $rc after ${signalled[$name]:-no signal}: $(grep -v '^{' "$W/$name.out" | tail -n 1)" >>"$W/violations" ;;
    esac
done

read -r samples skipped <"$W/samples"
echo "chaos summary (${SECONDS_TOTAL}s):"
echo "  devices started: $(wc -l <"$W/started"), logged on: $logged, logons refused or failed: $failed_logons"
echo "  logoffs (SIGINT): $(grep -c ' INT ' "$W/ops" || true), drops (SIGKILL): $(grep -c ' KILL ' "$W/ops" || true)"
echo "  exit codes: $(for k in "${!hist[@]}"; do echo "$k x${hist[$k]}"; done | sort -n | paste -sd, -)"
echo "  kills: $(awk '{ print $1 }' "$W/kills" | sort | uniq -c | awk '{ print $2 " x" $1 }' | paste -sd, -)"
echo "  samples: $samples (skipped while Redis was down: $skipped)"
resumes=0
for i in $(seq ${#EDGES[@]}); do
    v="EDGE${i}_STATUS_URL"
    r=$(curl -sf "${!v}/metrics" | awk '/^reachback_edge_resumes_total/ { s += $2 } END { print s + 0 }')
    resumes=$((resumes + ${r:-0}))
done
echo "  resumes counted by the edges (since their last restart): $resumes"
# At least two samples a second: the 1 s rule is then judged to within
# about half a second (a sample takes ~100-300 ms, more under ASan).
(( samples >= SECONDS_TOTAL * 2 )) || echo "too few samples: $samples" >>"$W/violations"
if [[ -s $W/violations ]]; then
    echo "violations:"; head -n 40 "$W/violations" | sed "s/^/  /"
    fail "$(wc -l <"$W/violations") invariant violations"
fi
ok "no invariant violated"
