#!/usr/bin/env bash
# Issue 4, topology: three network namespaces made by this test. "gw" runs
# every service; "home" holds alice's device (with a real sshd on its own
# loopback); "int" is the internal network, whose resolver is reachback-dns.
# int and home cannot reach each other except through the gateway: plain
# `ssh alice.vpn.lab` in int reaches the sshd in home, and alice's --forward
# reaches a server in int, which sees alice's intranet address, and so does
# her SOCKS with a name only the gateway resolves. The pool is
# routed to the gateway and made local there with an AnyIP route
# (docs/operations.md). Every namespace and veth is removed at the end.
. "$(dirname "$0")/lib.sh"
if (( EUID != 0 )) || ! ip netns add "rbp$$" 2>/dev/null; then
    # CI runs as root on a machine that has them: there, a skip would hide
    # that the topology test never ran.
    [[ -z ${CI:-} ]] || fail "CI: needs root and network namespaces (EUID $EUID)"
    echo "SKIP: needs root and network namespaces"
    exit 77
fi
ip netns del "rbp$$"

NS=rb$$; GW=${NS}gw; INT=${NS}in; HOME_NS=${NS}hm
A=$(( 100 + RANDOM % 150 ))
CLEANUP_HOOKS+=("ip netns del $GW 2>/dev/null; ip netns del $INT 2>/dev/null; ip netns del $HOME_NS 2>/dev/null; rm -rf /etc/netns/$INT /etc/netns/$GW")
for n in "$GW" "$INT" "$HOME_NS"; do ip netns add "$n"; ip -n "$n" link set lo up; done
# gw <-> int (10.A.1.0/24) and gw <-> home (10.A.2.0/24): veth pairs made
# in gw and moved, so the host's namespace never holds them.
ip -n "$GW" link add "${NS}gi" type veth peer name "${NS}ig" netns "$INT"
ip -n "$GW" link add "${NS}gh" type veth peer name "${NS}hg" netns "$HOME_NS"
ip -n "$GW" addr add "10.$A.1.1/24" dev "${NS}gi"; ip -n "$GW" link set "${NS}gi" up
ip -n "$GW" addr add "10.$A.2.1/24" dev "${NS}gh"; ip -n "$GW" link set "${NS}gh" up
ip -n "$INT" addr add "10.$A.1.2/24" dev "${NS}ig"; ip -n "$INT" link set "${NS}ig" up
ip -n "$HOME_NS" addr add "10.$A.2.2/24" dev "${NS}hg"; ip -n "$HOME_NS" link set "${NS}hg" up
POOL="10.$A.100.0/24"
ip -n "$GW" route add local "$POOL" dev lo          # AnyIP: the whole pool is local on gw
ip -n "$INT" route add "$POOL" via "10.$A.1.1"     # the internal network routes the pool to gw
mkdir -p "/etc/netns/$INT"
printf 'nameserver 10.%s.1.1\noptions timeout:1 attempts:1\n' "$A" > "/etc/netns/$INT/resolv.conf"
links=$(ip -o link show)
[[ $links != *"${NS}"* ]] || fail "a veth of this test is in the host's namespace: $(grep "${NS}" <<<"$links")"
ok "namespaces gw, int, home; veths (none in the host's namespace); pool $POOL AnyIP-local on gw and routed from int"

# The home network and the internal one cannot see each other.
command -v ping >/dev/null || fail "ping is missing (scripts/install-deps installs iputils-ping)"
ip netns exec "$GW" ping -c1 -W1 "10.$A.1.2" >/dev/null || fail "gw cannot ping int (the check below would prove nothing)"
! ip netns exec "$INT" ping -c1 -W1 "10.$A.2.2" >/dev/null 2>&1 || fail "int reaches home directly"
! ip netns exec "$HOME_NS" ping -c1 -W1 "10.$A.1.2" >/dev/null 2>&1 || fail "home reaches int directly"
ok "int and home cannot reach each other directly"

cat > "$LAB.policy" <<POL
allow 10.$A.1.0/24  *  *  any
allow 127.0.0.0/8   *  *  any
POL
mkdir -p "$LAB"
# A name only the gateway knows (its hosts file, as an intranet resolver
# would answer): devices' SOCKS names are resolved there, not at home.
mkdir -p "/etc/netns/$GW"
{ cat /etc/hosts; echo "10.$A.1.2 whoami.corp.test"; } > "/etc/netns/$GW/hosts"
ip netns exec "$GW" "$ROOT/scripts/lab" start --dir "$LAB" \
    --set "ipalloc.pool=$POOL" --set "ipalloc.exclude=10.$A.100.1" --set "dns.pool=$POOL" \
    --set "dns.listen=10.$A.1.1:53" --set "dns.ns_address=10.$A.1.1" \
    --set "edge.listen=10.$A.2.1:8443" --set "forwarder.policy_file=$LAB.policy" \
    --user-groups bob=guests --set ipalloc.no_address_groups=guests
CLEANUP_HOOKS+=("rm -f $LAB.policy")
set -a; . "$LAB/lab.env"; set +a
ok "the lab runs in gw (edge on 10.$A.2.1:8443, DNS on 10.$A.1.1:53)"

# alice's device in home: a real sshd on home's loopback, exposed as port 22.
sshd_setup 22
bg ip netns exec "$HOME_NS" /usr/sbin/sshd -D -e -f "$LAB/ssh/sshd_config" 2>"$LAB/sshd.out"
wait_until 5000 bash -c "ip netns exec $HOME_NS ss -Hltn 'sport = :22' | grep -q ." \
    || fail "sshd did not start in home: $(cat "$LAB/sshd.out")"

# An internal server in int that says who connected.
WHO=7777
bg ip netns exec "$INT" python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('10.$A.1.2', $WHO)); s.listen(8)
while True:
    c, a = s.accept(); c.sendall((a[0] + '\n').encode()); c.close()"
wait_until 5000 bash -c "ip netns exec $INT ss -Hltn 'sport = :$WHO' | grep -q ." || fail "whoami did not start"

bg ip netns exec "$HOME_NS" "$BIN/reachback-client" connect --server "10.$A.2.1:8443" \
    --server-name 127.0.0.1 --ca "$CA" --user alice --password-file "$USER_ALICE_PASSWORD_FILE" \
    --status-file "$LAB/alice.json" --expose tcp:22 --forward "127.0.0.1:9000:10.$A.1.2:$WHO" \
    --forward "127.0.0.1:9001:127.0.0.1:${FORWARDER_STATUS_URL##*:}" --socks 127.0.0.1:9010 \
    </dev/null >"$LAB/alice.out" 2>&1
wait_until 10000 test -s "$LAB/alice.json" || fail "alice did not log on from home: $(cat "$LAB/alice.out")"
ip=$(json_field "$LAB/alice.json" ip)
[[ $ip == 10.$A.100.* ]] || fail "alice got $ip, not an address of $POOL"
ok "alice logged on from home through the edge: $ip"

# Plain ssh by name in int: its resolver is reachback-dns.
got=$(ip netns exec "$INT" getent hosts alice.vpn.lab | awk '{print $1}')
[[ $got == "$ip" ]] || fail "int's resolver says '$got' for alice.vpn.lab"
out=$(timeout 20 ip netns exec "$INT" ssh -n -F /dev/null -i "$LAB/ssh/user_key" -o BatchMode=yes \
    -o ConnectTimeout=5 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o LogLevel=ERROR "$(id -un)@alice.vpn.lab" 'echo "$SSH_CONNECTION"') \
    || fail "ssh alice.vpn.lab from int failed"
read -r _ _ sshd_addr sshd_port <<<"$out"
[[ $sshd_addr == 127.0.0.1 && $sshd_port == 22 ]] || fail "ssh reached '$out'"
ok "in int, plain 'ssh alice.vpn.lab' reached the sshd on home's loopback ($out)"

# alice's --forward reaches int's server, which sees her intranet address.
got=$(ip netns exec "$HOME_NS" timeout 5 ncat 127.0.0.1 9000 </dev/null) || fail "--forward from home failed"
[[ $got == "$ip" ]] || fail "the server in int saw '$got', want $ip"
ok "alice's --forward from home reached 10.$A.1.2:$WHO in int, which saw $got"

# alice's SOCKS with a name home cannot resolve: the gateway resolves it.
! ip netns exec "$HOME_NS" getent hosts whoami.corp.test >/dev/null || fail "home resolves whoami.corp.test itself"
got=$(ip netns exec "$HOME_NS" timeout 5 ncat --proxy-type socks5 --proxy 127.0.0.1:9010 \
      --proxy-dns remote whoami.corp.test "$WHO" </dev/null) || fail "SOCKS to whoami.corp.test from home failed"
[[ $got == "$ip" ]] || fail "through SOCKS the server in int saw '$got', want $ip"
ok "alice's SOCKS from home reached whoami.corp.test (a name only the gateway resolves), seen as $got"

# A source the policy does not name is refused: int's 10.A.1.2 is allowed,
# so try from gw's own 10.A.100.1 (not in the policy).
refused_within 1500 ip netns exec "$GW" timeout 3 ncat -s "10.$A.100.1" "$ip" 22 </dev/null \
    >"$LAB/n-denied" 2>&1 || fail "a source outside the policy, $ELAPSED_MS ms: $(cat "$LAB/n-denied")"
grep -qi "reset\|refused" "$LAB/n-denied" || fail "a source outside the policy: $(cat "$LAB/n-denied")"
ok "a source outside the policy is refused in $ELAPSED_MS ms ($(tail -1 "$LAB/n-denied"))"

# The gateway's own loopback (here the forwarder's status port) is not part
# of the intranet: a device's forward to it is refused.
rc=0; out=$(printf 'GET /status HTTP/1.0\r\n\r\n' | ip netns exec "$HOME_NS" timeout 5 ncat 127.0.0.1 9001 2>&1) || rc=$?
[[ $out != *forwarder_id* ]] || fail "alice reached the gateway's loopback: $out"
wait_until 3000 grep -q '"reason":"loopback target"' "$LAB/logs/forwarder.log" || fail "no audit line for the loopback attempt"
ok "a device's connection to the gateway's loopback is refused (and audited)"

# bob has no intranet address (no_address_groups): his device's connections
# leave from the gateway's own address, which names no user (on this AnyIP
# pool the kernel may even pick the address connected to). The policy is
# applied to him as user bob before the connect.
bg ip netns exec "$HOME_NS" "$BIN/reachback-client" connect --server "10.$A.2.1:8443" \
    --server-name 127.0.0.1 --ca "$CA" --user bob --password-file "$USER_BOB_PASSWORD_FILE" \
    --status-file "$LAB/bob.json" --forward "127.0.0.1:9002:alice.vpn.lab:22" \
    </dev/null >"$LAB/bob.out" 2>&1
wait_until 10000 test -s "$LAB/bob.json" || fail "bob did not log on from home: $(cat "$LAB/bob.out")"
[[ -z $(json_field "$LAB/bob.json" ip) ]] || fail "bob got an address: $(cat "$LAB/bob.json")"
set_policy() {   # set_policy RULES...: one rule a line, then SIGHUP
    printf '%s\n' "$@" > "$LAB.policy"
    reload_policy
}
bob_to_alice() { ip netns exec "$HOME_NS" timeout 5 ncat 127.0.0.1 9002 </dev/null 2>&1 || true; }
set_policy "allow * * * any"
[[ $(bob_to_alice) == SSH-2.0-* ]] || fail "bob does not reach alice's sshd under 'allow * * * any'"
set_policy "deny user:bob user:alice * any" "allow * * * any"
out=$(bob_to_alice)
[[ $out != *SSH-2.0* ]] || fail "bob, without an address, reached alice past 'deny user:bob user:alice'"
wait_until 3000 bash -c "grep '\"event\":\"audit\"' '$LAB/logs/forwarder.log' | grep '\"src_user\":\"bob\"' | grep -q 'denied by policy (to alice) (rule at line 1)'" \
    || fail "no audit line for bob's denied stream: $(audit_lines | tail -2)"
ok "bob (no address) reaches alice under 'allow *', and 'deny user:bob user:alice' stops him"
