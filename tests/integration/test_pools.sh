#!/usr/bin/env bash
# Issue 3, point 7: a static reservation gives alice her address and nobody
# else ever gets it; members of a group with a pool get addresses from it;
# members of a no-address group get a session without address or name; an
# exhausted pool is a clear logon error (exit 6), or with spillover a
# session without an address, and the client says which it got.
. "$(dirname "$0")/lib.sh"
export RB_LAB_HASH_COST=10
users=alice,bob,carol,dave,erin,frank,gina,hank
# Default pool 127.X.0.0/29 without .1: .2-.6, of which .2 is alice's.
lab_start --users "$users" --user-groups bob=staff --user-groups carol=guests \
    --set 'ipalloc.pool=127.{X}.0.0/29' --set 'ipalloc.static=alice=127.{X}.0.2' \
    --set 'ipalloc.group_pools=staff=127.{X}.5.0/24' --set ipalloc.no_address_groups=guests
X=${POOL#127.}; X=${X%%.*}

# logon NAME USER: logs on in the background and waits for the status file.
logon() {
    client_start "$1" "$2"
    wait_until 10000 test -s "$LAB/$1.json" || fail "$2 did not log on: $(cat "$LAB/$1.out")"
}

# Four users fill the rest of the default pool; alice's address is not theirs.
for u in dave erin frank gina; do logon "$u" "$u"; done
got=$(for u in dave erin frank gina; do json_field "$LAB/$u.json" ip; done | sort -t. -k4 -n | tr '\n' ' ')
[[ $got == "127.$X.0.3 127.$X.0.4 127.$X.0.5 127.$X.0.6 " ]] || fail "dave..gina got '$got', want .3 to .6"
ok "the other users got .3-.6: the reserved .2 is not handed out"

# The pool is full now: a clear error.
rc=0
"$BIN/reachback-client" connect --server "$EDGE_ADDR" --ca "$CA" --user hank \
    --password-file "$USER_HANK_PASSWORD_FILE" </dev/null >"$LAB/hank.out" 2>&1 || rc=$?
[[ $rc == 6 ]] || fail "hank on a full pool: exit $rc, want 6 ($(cat "$LAB/hank.out"))"
grep -qiE "address|pool" "$LAB/hank.out" || fail "hank's client does not say the pool is full: $(cat "$LAB/hank.out")"
ok "full pool: exit 6, '$(tail -n 1 "$LAB/hank.out")'"

# alice's reservation is still hers, full pool or not.
logon a1 alice
[[ $(json_field "$LAB/a1.json" ip) == "127.$X.0.2" ]] || fail "alice got $(json_field "$LAB/a1.json" ip), not her static 127.$X.0.2"
wait_until 1000 bash -c "[[ \$(dig @$DNS_ADDR -p $DNS_PORT +short +time=1 +tries=1 alice.$DNS_SUFFIX A) == 127.$X.0.2 ]]" \
    || fail "DNS: alice -> '$(dig_short "alice.$DNS_SUFFIX" A)'"
ok "alice has her static 127.$X.0.2"

# bob is staff: an address from the staff pool.
logon b1 bob
ip_b=$(json_field "$LAB/b1.json" ip)
[[ $ip_b == "127.$X.5."* ]] || fail "bob (staff) got $ip_b, not an address of 127.$X.5.0/24"
ok "bob (staff) got $ip_b from the group pool"

# carol is a guest: a session, no address, no name; the client says so.
logon c1 carol
[[ -z $(json_field "$LAB/c1.json" ip) ]] || fail "carol (guests) got address $(json_field "$LAB/c1.json" ip)"
grep -qiE "no (intranet )?address|without (an )?(intranet )?address" "$LAB/c1.out" \
    || fail "carol's client does not say it has no address: $(cat "$LAB/c1.out")"
[[ $(dig_status "carol.$DNS_SUFFIX" A) == NXDOMAIN ]] || fail "carol has a DNS name: $(dig_short "carol.$DNS_SUFFIX" A)"
ok "carol (guests): session without address: '$(grep -iE "address" "$LAB/c1.out" | tail -n 1)'"

# Spillover: a pool of two addresses; the third user gets a session
# without one, and says so.
for d in a1 b1 c1 dave erin frank gina; do kill -INT "$(eval echo "\$CLIENT_PID_$d")"; done
for d in a1 b1 c1 dave erin frank gina; do wait_exit "$d" 5000 || fail "$d did not log off"; done
"$ROOT/scripts/lab" stop --dir "$LAB" >/dev/null 2>&1
lab_start --set 'ipalloc.pool=127.{X}.0.0/29' --set ipalloc.spillover=yes \
    --set 'ipalloc.exclude=127.{X}.0.1,127.{X}.0.2,127.{X}.0.3,127.{X}.0.4'
X=${POOL#127.}; X=${X%%.*}
logon s1 alice
logon s2 bob
logon s3 carol
for d in s1 s2; do
    [[ $(json_field "$LAB/$d.json" ip) == "127.$X.0."[56] ]] || fail "$d got '$(json_field "$LAB/$d.json" ip)', want .5 or .6"
done
[[ -z $(json_field "$LAB/s3.json" ip) ]] || fail "the third user got $(json_field "$LAB/s3.json" ip) from a full pool"
grep -qiE "no (intranet )?address|without (an )?(intranet )?address" "$LAB/s3.out" \
    || fail "the third client does not say it has no address: $(cat "$LAB/s3.out")"
grep -q "ip $(json_field "$LAB/s1.json" ip)" "$LAB/s1.out" || fail "the first client does not print its address"
[[ $(dig_status "carol.$DNS_SUFFIX" A) == NXDOMAIN ]] || fail "carol (no address) has a DNS name"
[[ $(rcli SCARD rb:sessions:live) == 3 ]] || fail "Redis holds $(rcli SCARD rb:sessions:live) sessions, want 3"
ok "spillover: the third user has a session without an address: '$(grep -iE "address" "$LAB/s3.out" | tail -n 1)'"

# Logging off frees the addresses; the address-less session leaves nothing.
for d in s1 s2 s3; do kill -INT "$(eval echo "\$CLIENT_PID_$d")"; done
for d in s1 s2 s3; do wait_exit "$d" 5000 && [[ $EXIT_RC == 0 ]] || fail "$d did not log off cleanly"; done
[[ $(rcli SCARD rb:ip:leased) == 0 ]] || fail "leases left: $(rcli SMEMBERS rb:ip:leased)"
ok "all logged off: no lease left"
