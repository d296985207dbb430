#!/bin/sh
# Makes the docker-compose lab's secrets and configs in /lab (a shared
# volume): CURVE keys per service, a CA and edge certificate, demo users with
# random passwords, an admin token, one config file per service. Runs once;
# does nothing when /lab/conf exists. The directory may be given as the
# first argument (the tests check what it writes outside a container).
set -eu
L=${1:-/lab}
[ -d "$L/conf" ] && exit 0
mkdir -p "$L/keys" "$L/tls" "$L/conf" "$L/secrets"
for s in broker ipalloc dns forwarder edge; do reachback-ctl keygen "$L/keys" "$s"; done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=reachback lab CA" -keyout "$L/tls/ca.key" -out "$L/tls/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=edge" \
    -keyout "$L/tls/edge.key" -out "$L/tls/edge.csr" 2>/dev/null
printf 'subjectAltName=DNS:edge,DNS:localhost,IP:127.0.0.1\n' > "$L/tls/ext.cnf"
openssl x509 -req -in "$L/tls/edge.csr" -CA "$L/tls/ca.pem" -CAkey "$L/tls/ca.key" \
    -CAcreateserial -days 3650 -extfile "$L/tls/ext.cnf" -out "$L/tls/edge.pem" 2>/dev/null
: > "$L/users"
for u in alice bob carol; do
    openssl rand -hex 12 > "$L/secrets/$u.password"
    reachback-ctl passwd --password-file "$L/secrets/$u.password" "$u" >> "$L/users"
done
TOKEN=$(openssl rand -hex 24)
echo "$TOKEN" > "$L/secrets/admin_token"
K=$L/keys
COMMON="log_level = info
status_listen = 0.0.0.0:9100"
cat > "$L/conf/broker.conf" <<C
$COMMON
broker_id = broker1
listen_edge = tcp://0.0.0.0:7001
listen_events = tcp://0.0.0.0:7002
listen_snapshot = tcp://0.0.0.0:7003
ipalloc_endpoint = tcp://ipalloc:7010
ipalloc_public_key = $K/ipalloc.pub
dns_suffix = vpn.lab
redis_host = redis
curve_secret_key = $K/broker.key
curve_allowed_keys = $K/edge.pub,$K/dns.pub,$K/forwarder.pub
admin_token = $TOKEN
C
cat > "$L/conf/ipalloc.conf" <<C
$COMMON
ipalloc_id = ipalloc1
listen = tcp://0.0.0.0:7010
pool = 10.77.0.0/16
redis_host = redis
curve_secret_key = $K/ipalloc.key
curve_allowed_keys = $K/broker.pub
C
cat > "$L/conf/dns.conf" <<C
$COMMON
dns_id = dns1
listen = 0.0.0.0:5353
suffix = vpn.lab
pool = 10.77.0.0/16
events_endpoints = tcp://broker:7002
snapshot_endpoints = tcp://broker:7003
broker_public_key = $K/broker.pub
curve_secret_key = $K/dns.key
C
cat > "$L/conf/forwarder.conf" <<C
$COMMON
forwarder_id = forwarder1
events_endpoints = tcp://broker:7002
snapshot_endpoints = tcp://broker:7003
broker_public_key = $K/broker.pub
curve_secret_key = $K/forwarder.key
curve_allowed_keys = $K/edge.pub
data_endpoint = tcp://0.0.0.0:7450
policy_file = $L/conf/policy.conf
C
# The compose network's private ranges may reach every exposed port.
cat > "$L/conf/policy.conf" <<C
allow 10.0.0.0/8      * * any
allow 172.16.0.0/12   * * any
allow 192.168.0.0/16  * * any
C
cat > "$L/conf/edge.conf" <<C
$COMMON
edge_id = edge1
listen = 0.0.0.0:8443
tls_cert = $L/tls/edge.pem
tls_key = $L/tls/edge.key
users_file = $L/users
broker_endpoint = tcp://broker:7001
broker_public_key = $K/broker.pub
curve_secret_key = $K/edge.key
forwarder_endpoints = tcp://forwarder:7450
forwarder_public_key = $K/forwarder.pub
C
chmod -R go-rwx "$L/keys" "$L/secrets" "$L/tls"
echo "lab-init: secrets and configs written to $L"
