#!/usr/bin/env python3
"""Checks the Kubernetes manifests in deploy/ against the services they run.

    deploy_check.py DEPLOY_DIR BIN_DIR SECRETS_LOG WORK_DIR

SECRETS_LOG holds one line per `kubectl` call that deploy/README.md's
secret commands made (a stand-in kubectl recorded them). For every
container of ours it checks that the binary exists; that its --config file
is a key of a ConfigMap mounted where the command looks; that every
RB_<SERVICE>_<KEY> variable names a config key the service has; that every
Secret it mounts or reads is one the README creates, with the keys asked
for; that every absolute path in its config lies under one of its mounts,
and a path under a Secret's mount is a file the README puts in that
Secret; and that the service accepts the config (--check-config, with the
ConfigMap's files written under WORK_DIR). Services must select a workload
and name ports its containers have. Prints one line per check passed;
exits 1 listing every problem found."""
import os
import re
import shlex
import subprocess
import sys

import yaml

deploy_dir, bin_dir, secrets_log, work = sys.argv[1:5]
problems = []
passed = []
SERVICES = {"broker", "ipalloc", "dns", "forwarder", "edge"}
checked = set()


def problem(msg):
    problems.append(msg)


def load_docs():
    kust = yaml.safe_load(open(os.path.join(deploy_dir, "kustomization.yaml")))
    docs = []
    for res in kust.get("resources", []):
        path = os.path.join(deploy_dir, res)
        if not os.path.exists(path):
            problem(f"kustomization lists {res}, which does not exist")
            continue
        for d in yaml.safe_load_all(open(path)):
            if d is None:
                continue
            for field in ("apiVersion", "kind"):
                if field not in d:
                    problem(f"{res}: a document without {field}")
            if not (d.get("metadata") or {}).get("name"):
                problem(f"{res}: a {d.get('kind')} without metadata.name")
            d["_file"] = res
            docs.append(d)
    listed = set(kust.get("resources", [])) | {"kustomization.yaml"}
    for f in os.listdir(deploy_dir):
        if f.endswith(".yaml") and f not in listed:
            problem(f"{f} is in deploy/ but not in kustomization.yaml")
    return docs


def recorded_secrets():
    """Secret name -> set of keys, from the recorded kubectl calls."""
    secrets = {}
    for line in open(secrets_log):
        args = shlex.split(line)
        if "create" not in args or "secret" not in args:
            continue
        i = args.index("secret")
        kind, name = args[i + 1], args[i + 2]
        keys = secrets.setdefault(name, set())
        if kind == "tls":
            keys |= {"tls.crt", "tls.key"}
        for a in args[i + 3:]:
            m = re.match(r"--from-(file|literal)=(.*)", a)
            if not m:
                continue
            val = m.group(2)
            if m.group(1) == "literal" or "=" in val:
                keys.add(val.split("=", 1)[0])
            else:
                keys.add(os.path.basename(val))
    return secrets


def config_keys(binary):
    out = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"^  ([a-z_0-9]+) ", out, re.M))


def check_container(wl, c, volumes, configmaps, secrets):
    where = f"{wl['_file']} {wl['kind']}/{wl['metadata']['name']} container {c['name']}"
    cmd = c.get("command") or []
    prog = os.path.basename(cmd[0]) if cmd else ""
    if not prog.startswith("reachback-"):
        if c.get("image", "").startswith("reachback"):
            problem(f"{where}: runs our image without a reachback-* command; not checked")
        return
    binary = os.path.join(bin_dir, prog)
    if not os.access(binary, os.X_OK):
        problem(f"{where}: runs {cmd[0]}, which the build does not make")
        return
    service = prog[len("reachback-"):]
    keys = config_keys(binary)
    mounts = {m["mountPath"].rstrip("/"): volumes.get(m["name"]) for m in c.get("volumeMounts", [])}
    for m in c.get("volumeMounts", []):
        if m["name"] not in volumes:
            problem(f"{where}: mounts volume {m['name']}, which the pod does not have")

    def secret_keys(name, key=None):
        if name not in secrets:
            problem(f"{where}: uses Secret {name}, which deploy/README.md does not create")
            return set()
        if key is not None and key not in secrets[name]:
            problem(f"{where}: reads key {key} of Secret {name}, which the README does not put there")
        return secrets[name]

    env = dict(os.environ)   # without the caller's RB_<SERVICE>_*: the test unsets them
    prefix = f"RB_{service.upper()}_"
    for e in c.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            secret_keys(ref["name"], ref["key"])
        if e["name"].startswith("RB_"):
            if not e["name"].startswith(prefix) or e["name"][len(prefix):].lower() not in keys:
                problem(f"{where}: {e['name']} is not a config key of reachback-{service}")
            env[e["name"]] = e.get("value", "from-the-cluster")
    for v in volumes.values():
        if "secret" in v:
            secret_keys(v["secret"]["secretName"])

    if "--config" not in cmd:
        problem(f"{where}: no --config")
        return
    conf_path = cmd[cmd.index("--config") + 1]
    conf_dir, conf_name = os.path.split(conf_path)
    vol = mounts.get(conf_dir)
    if not vol or "configMap" not in vol:
        problem(f"{where}: {conf_path} is not in a mounted ConfigMap")
        return
    cm = configmaps.get(vol["configMap"]["name"])
    if cm is None or conf_name not in cm.get("data", {}):
        problem(f"{where}: ConfigMap {vol['configMap']['name']} has no {conf_name}")
        return
    # The ConfigMaps' files under WORK_DIR, at their mount paths.
    root = os.path.join(work, wl["metadata"]["name"], c["name"])
    for mpath, v in mounts.items():
        if v and "configMap" in v:
            d = root + mpath
            os.makedirs(d, exist_ok=True)
            for k, text in configmaps[v["configMap"]["name"]].get("data", {}).items():
                with open(os.path.join(d, k), "w") as f:
                    f.write(text)
    text = cm["data"][conf_name]
    for line in text.splitlines():
        if "=" not in line or line.lstrip().startswith("#"):
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        for path in re.findall(r"(?:^|[ ,])(/[^ ,]+)", value):
            under = [m for m in mounts if path.startswith(m + "/")]
            if not under:
                problem(f"{where}: {key} = {path}, outside every mount")
                continue
            mount = max(under, key=len)   # the innermost mount holds the file
            v, name = mounts[mount], os.path.relpath(path, mount)
            if v and "secret" in v:
                if name not in secret_keys(v["secret"]["secretName"]):
                    problem(f"{where}: {key} = {path}, but the README puts no {name} "
                            f"in Secret {v['secret']['secretName']}")
            elif v and "configMap" in v:
                if name not in configmaps.get(v["configMap"]["name"], {}).get("data", {}):
                    problem(f"{where}: {key} = {path}, but ConfigMap "
                            f"{v['configMap']['name']} has no {name}")
    for mpath, v in mounts.items():
        if v and "configMap" in v:
            text = text.replace(mpath + "/", root + mpath + "/")
    local_conf = os.path.join(root, conf_name + ".checked")
    with open(local_conf, "w") as f:
        f.write(text)
    r = subprocess.run([binary, "--config", local_conf, "--check-config"], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        problem(f"{where}: reachback-{service} rejects {conf_name}: {r.stderr.strip()}")
        return
    checked.add(service)
    passed.append(f"{wl['metadata']['name']}: {conf_name} accepted by reachback-{service}, "
                  f"{len(c.get('env', []))} env, mounts and secrets consistent")


def main():
    docs = load_docs()
    secrets = recorded_secrets()
    configmaps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    workloads = [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet")]
    for wl in workloads:
        pod = wl["spec"]["template"]
        labels = pod["metadata"].get("labels", {})
        sel = wl["spec"]["selector"].get("matchLabels", {})
        if any(labels.get(k) != v for k, v in sel.items()):
            problem(f"{wl['_file']}: {wl['metadata']['name']}'s selector does not match its pods")
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for t in wl["spec"].get("volumeClaimTemplates", []):
            volumes[t["metadata"]["name"]] = {"pvc": True}
        for c in pod["spec"]["containers"]:
            ports = {p.get("name") for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problem(f"{wl['_file']}: {c['name']} {probe} uses port {port}, not declared")
            check_container(wl, c, volumes, configmaps, secrets)
    for svc in (d for d in docs if d.get("kind") == "Service"):
        sel = svc["spec"].get("selector", {})
        targets = [w for w in workloads
                   if all(w["spec"]["template"]["metadata"].get("labels", {}).get(k) == v
                          for k, v in sel.items())]
        if not targets:
            problem(f"{svc['_file']}: Service {svc['metadata']['name']} selects no workload")
            continue
        names = {p.get("name") for w in targets
                 for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort")
            if isinstance(tp, str) and tp not in names:
                problem(f"{svc['_file']}: Service {svc['metadata']['name']} targets port {tp}, "
                        "which no selected container declares")
    if checked != SERVICES:
        problem(f"services checked: {sorted(checked)}; every one of {sorted(SERVICES)} must be")
    passed.append(f"{len(docs)} documents, {len(workloads)} workloads, "
                  f"{sum(d.get('kind') == 'Service' for d in docs)} Services: "
                  "selectors, probe and target ports consistent")
    for p in passed:
        print("ok:", p)
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


sys.exit(main())
