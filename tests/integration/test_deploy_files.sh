#!/usr/bin/env bash
# The deployment files run the services we build, so they must keep up with
# them: the Kubernetes manifests (deploy/) and the docker-compose lab are
# checked here without a cluster or a Docker engine (this project's machines
# have neither). Every config file they hand a service is accepted by that
# service's --check-config; env variables, mounts, Secrets (as
# deploy/README.md creates them, recorded by a stand-in kubectl), probes and
# Services agree with each other; docker-compose validates its file.
. "$(dirname "$0")/lib.sh"
TOOLS=$ROOT/tests/integration/tools
# The services' own variables from the caller's shell would change what
# --check-config sees below.
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^RB_(BROKER|IPALLOC|DNS|FORWARDER|EDGE)_' || true)
# Debian's python3, which has python3-yaml (scripts/install-deps); a python3
# earlier on PATH (pyenv, a venv) may lack it.
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3

# deploy/README.md's secret commands, run as written with a kubectl that
# only records what it was asked.
mkdir -p "$LAB/fakebin" "$LAB/secrets-work"
cat >"$LAB/fakebin/kubectl" <<'K'
#!/usr/bin/env bash
printf '%q ' "$@" >>"$KUBECTL_LOG"; echo >>"$KUBECTL_LOG"
K
chmod +x "$LAB/fakebin/kubectl"
awk '/^Create the secrets first/ { want = 1; next }
     want && /^    / { print substr($0, 5); started = 1; next }
     want && started && /^[^ ]/ { exit }' "$ROOT/deploy/README.md" >"$LAB/secrets.sh"
[[ -s $LAB/secrets.sh ]] || fail "no secret commands found in deploy/README.md"
(cd "$LAB/secrets-work" && TMPDIR="$LAB/secrets-work" PATH="$LAB/fakebin:$BIN:$PATH" KUBECTL_LOG="$LAB/kubectl.log" \
    bash -euo pipefail "$LAB/secrets.sh") >"$LAB/secrets.out" 2>&1 \
    || fail "deploy/README.md's secret commands failed: $(tail -5 "$LAB/secrets.out")"
n=$(grep -c "create secret" "$LAB/kubectl.log" || true)
(( n >= 8 )) || fail "deploy/README.md created $n secrets: $(cat "$LAB/kubectl.log")"
ok "deploy/README.md's secret commands run and create $n Secrets"

"$PY" "$TOOLS/deploy_check.py" "$ROOT/deploy" "$BIN" "$LAB/kubectl.log" "$LAB/k8s" >"$LAB/k8s.out" 2>&1 \
    || fail "deploy/ manifests: $(grep -v '^ok:' "$LAB/k8s.out")"
while read -r line; do ok "deploy/ ${line#ok: }"; done < <(grep '^ok:' "$LAB/k8s.out")
if command -v kubectl >/dev/null && kubectl kustomize "$ROOT/deploy" >"$LAB/kustomized.yaml" 2>"$LAB/kustomize.err"; then
    ok "kubectl kustomize deploy/ builds $(grep -c '^kind:' "$LAB/kustomized.yaml") objects"
elif command -v kubectl >/dev/null; then
    fail "kubectl kustomize deploy/: $(cat "$LAB/kustomize.err")"
fi

# docker-compose: the file is valid, and what the init container writes is
# accepted by each service the compose file starts with it.
command -v docker-compose >/dev/null || fail "docker-compose is missing (scripts/install-deps installs it)"
docker-compose -f "$ROOT/docker-compose.yml" --project-directory "$ROOT" config -q 2>"$LAB/compose.err" \
    || fail "docker-compose.yml: $(cat "$LAB/compose.err")"
ok "docker-compose validates docker-compose.yml"
CL=$LAB/compose-lab
PATH="$BIN:$PATH" sh "$ROOT/docker/lab-init.sh" "$CL" >"$LAB/init.out" 2>&1 || fail "lab-init.sh: $(cat "$LAB/init.out")"
n=0
while IFS=$'\t' read -r svc cmd; do
    eval "args=($cmd)"
    args=("${args[@]//\/lab\//$CL/}")
    for a in "${args[@]}"; do
        [[ $a != "$CL"/* || -e $a ]] || fail "compose service $svc names $a, which lab-init.sh does not write"
    done
    [[ -x $BIN/${args[0]} ]] || fail "compose service $svc runs ${args[0]}, which the build does not make"
    if [[ " ${args[*]} " == *" --config "* ]]; then
        "$BIN/${args[0]}" "${args[@]:1}" --check-config >"$LAB/check-$svc.out" 2>&1 \
            || fail "compose service $svc: $(tail -3 "$LAB/check-$svc.out")"
        n=$((n + 1))
    fi
done < <("$PY" - "$ROOT/docker-compose.yml" <<'PY'
import shlex, sys, yaml
for name, s in yaml.safe_load(open(sys.argv[1]))["services"].items():
    cmd = s.get("command") or []
    if cmd and cmd[0].startswith("reachback-") and cmd[0] != "reachback-lab-init":
        print(name + "\t" + " ".join(shlex.quote(a) for a in cmd))
PY
)
(( n == 5 )) || fail "expected the five services' configs in docker-compose.yml, checked $n"
ok "docker-compose lab: lab-init.sh's configs accepted by all $n services, the demo device's files exist"
