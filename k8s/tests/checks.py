#!/usr/bin/env python3
"""The checks k8s/tests/run.sh runs, one per call: checks.py NAME [ARGS...].

Exit 0: passed; 77: skipped; anything else: failed. Each check prints what it looked at.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from render import RenderFail, load_values, render

K8S = Path(__file__).resolve().parent.parent
REPO = K8S.parent
CHART = K8S / "chart"
MONITORING = K8S / "monitoring"
RULES = MONITORING / "rules" / "homeport.rules.yml"
DASHBOARD = K8S / "grafana" / "homeport-dashboard.json"
RELEASE, NAMESPACE = "shop", "shop"
CONFIG_PATH = "/etc/homeport/homeport.toml"
SKIP = 77


class Failed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise Failed(message)


def regions():
    return sorted(p.stem[len("values-"):] for p in CHART.glob("values-*.yaml"))


def region_values(region, *extra):
    return load_values(CHART, [CHART / f"values-{region}.yaml", *extra])


def seconds(duration):
    """Seconds in a duration such as "20s", "1m30s", "500ms"."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"([0-9]+)(ms|s|m|h|d)", duration)
    expect(parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)


def mebibytes(quantity):
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi)?", str(quantity))
    expect(m, f"cannot read memory quantity {quantity!r}")
    return float(m.group(1)) * {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, None: 1 / 2**20}[m.group(2)]


def millicores(quantity):
    q = str(quantity)
    return float(q[:-1]) if q.endswith("m") else float(q) * 1000


# --- values and schema --------------------------------------------------------------------------

def values_validator():
    schema = json.loads((CHART / "values.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def schema_errors(values):
    errors = sorted(values_validator().iter_errors(values), key=lambda e: list(e.absolute_path))
    return ["/".join(map(str, e.absolute_path)) + ": " + e.message for e in errors]


def check_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    print(f"values.schema.json is a valid {cls.__name__.replace('Validator', '')} JSON schema")


def check_values(region):
    errors = schema_errors(region_values(region))
    expect(not errors, "values.yaml + values-%s.yaml violate the schema:\n  %s" % (region, "\n  ".join(errors)))
    print(f"values.yaml + values-{region}.yaml: valid against values.schema.json")


def check_bad_values(path):
    path = Path(path)
    errors = schema_errors(region_values(regions()[0], path))
    expect(errors, f"{path.name} was accepted by the schema but must be rejected")
    why = path.read_text().splitlines()[0].lstrip("# ")
    print(f"{path.name} ({why}) rejected: {errors[0]}")


# --- rendering and Kubernetes manifests ----------------------------------------------------------

def rendered_docs(outdir, region):
    return [d for d in yaml.safe_load_all((Path(outdir) / f"{region}.yaml").read_text()) if d]


def by_kind(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    expect(len(found) == 1, f"expected one {kind}, found {len(found)}")
    return found[0]


VARIANTS = Path(__file__).resolve().parent / "variants"


def variants():
    return sorted(p.stem for p in VARIANTS.glob("*.yaml"))


def target_values(target):
    """A region's values, or a variant's: tests/variants/<name>.yaml over the first region's."""
    if target in regions():
        return region_values(target)
    path = VARIANTS / f"{target}.yaml"
    expect(path.exists(), f"{target} is neither a region nor a variant in {VARIANTS}")
    return region_values(regions()[0], path)


def check_render(target, outdir):
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    values = target_values(target)
    errors = schema_errors(values)
    expect(not errors, f"{target}: values violate the schema:\n  " + "\n  ".join(errors))
    rendered, notes = render(CHART, values, RELEASE, NAMESPACE)
    text = "".join(f"---\n# Source: {src}\n{body.strip()}\n" for src, body in rendered.items() if body.strip())
    expect("{{" not in text and "{{" not in notes, "unrendered template action left in the output")
    docs = [d for d in yaml.safe_load_all(text) if d]
    for d in docs:
        expect(d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"),
               f"manifest without apiVersion/kind/metadata.name: {d}")
    expect(notes.strip(), "NOTES.txt rendered empty")
    (outdir / f"{target}.yaml").write_text(text)
    (outdir / f"{target}.NOTES.txt").write_text(notes)
    print(f"rendered {len(docs)} manifests for {target} into {outdir / (target + '.yaml')}: "
          + ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs))


def homeport_container(pod, values):
    """(homeport's container, the app's containers, the app's init containers) of a pod spec,
    checking where homeport sits: first init container with restartPolicy Always (native
    sidecar) or last container."""
    spec = pod["spec"]
    containers, inits = spec["containers"], spec.get("initContainers", [])
    if values["homeport"]["nativeSidecar"]:
        expect(inits and inits[0]["name"] == "homeport", "native sidecar: homeport is not the first init container")
        hp = inits[0]
        expect(hp.get("restartPolicy") == "Always", "native sidecar without restartPolicy: Always")
        expect(all(c["name"] != "homeport" for c in containers), "homeport is also a regular container")
        return hp, containers, inits[1:]
    expect(containers[-1]["name"] == "homeport", "homeport is not the last container")
    hp = containers[-1]
    expect("restartPolicy" not in hp, "a plain container cannot have a restartPolicy")
    return hp, containers[:-1], inits


def grace_budget(values):
    """The shutdown arithmetic (k8s/README.md): (grace, app drain, shutdown_grace, needed)."""
    grace = values["homeport"]["terminationGracePeriodSeconds"]
    drain = values["homeport"]["appDrainSeconds"]
    own = seconds(values["config"]["shutdown_grace"])
    return grace, drain, own, drain + own + SIGNAL_MARGIN


# Seconds for the kubelet to deliver SIGTERM and for homeport to exit after its drain.
SIGNAL_MARGIN = 5


def check_grace(target, outdir):
    """terminationGracePeriodSeconds, the preStop hook and shutdown_grace agree."""
    values = target_values(target)
    pod = by_kind(rendered_docs(outdir, target), "Deployment")["spec"]["template"]
    hp, _, _ = homeport_container(pod, values)
    grace, drain, own, needed = grace_budget(values)
    expect(pod["spec"]["terminationGracePeriodSeconds"] == grace, "rendered grace differs from the values")
    expect(grace >= needed, f"terminationGracePeriodSeconds {grace} < appDrainSeconds {drain} + shutdown_grace "
                            f"{own:g} + {SIGNAL_MARGIN}: the kubelet would kill homeport mid-drain")
    if values["homeport"]["nativeSidecar"]:
        # Kubernetes stops a native sidecar only after the app containers exited: a preStop pause
        # would only eat into the grace period.
        expect("lifecycle" not in hp, "native sidecar with a preStop hook")
        how = "native sidecar: SIGTERM after the app exits, no preStop"
    else:
        pause = hp["lifecycle"]["preStop"]["sleep"]["seconds"]
        expect(pause == drain, f"preStop sleeps {pause}s, appDrainSeconds is {drain}s: homeport would stop "
                               "before the app has drained")
        how = f"plain container: preStop sleeps {pause}s"
    print(f"{target}: grace {grace}s >= app drain {drain}s + shutdown_grace {own:g}s + {SIGNAL_MARGIN}s = "
          f"{needed:g}s; {how}")


def check_grace_rejected(path):
    """A values file whose shutdown arithmetic does not add up must fail check_grace."""
    path = Path(path)
    values = region_values(regions()[0], path)
    expect(not schema_errors(values), f"{path.name} must be schema-valid: only the arithmetic is wrong")
    grace, drain, own, needed = grace_budget(values)
    expect(grace < needed, f"{path.name} adds up ({grace} >= {needed:g}) but is meant not to")
    why = path.read_text().splitlines()[0].lstrip("# ")
    print(f"{path.name} ({why}): grace {grace}s < {drain} + {own:g} + {SIGNAL_MARGIN} = {needed:g}s, rejected")


def check_budget_rejected(path):
    """A fleet that could ask a database for more than its max_connections must not render, and
    the message must carry the arithmetic (templates/fleet-budget.yaml)."""
    path = Path(path)
    values = region_values(regions()[0], path)
    expect(not schema_errors(values), f"{path.name} must be schema-valid: only the budget is wrong")
    try:
        render(CHART, values, RELEASE, NAMESPACE)
    except RenderFail as e:
        message = str(e)
    else:
        raise Failed(f"{path.name} rendered although its fleet is over budget")
    expected = re.search(r"= (\d+) > PostgreSQL", path.read_text().splitlines()[0])
    expect(expected and f"= {expected.group(1)} > max_connections" in message,
           f"the message does not carry the arithmetic of {path.name}: {message}")
    print(f"{path.name} refused: {message}")


def check_manifests(target, outdir):
    values = target_values(target)
    docs = rendered_docs(outdir, target)
    kinds = sorted(d["kind"] for d in docs)
    expect("Secret" not in kinds, "the chart must reference Secrets, never render them")
    cm, deploy, svc = by_kind(docs, "ConfigMap"), by_kind(docs, "Deployment"), by_kind(docs, "Service")
    pod = deploy["spec"]["template"]
    hp, app_containers, app_inits = homeport_container(pod, values)
    expect(app_containers == values["app"]["containers"], "the app containers are not rendered verbatim")
    expect(app_inits == values["app"].get("initContainers", []), "the app init containers are not rendered verbatim")
    image = values["homeport"]["image"]
    want = f"{image['repository']}:{image['tag']}" + (f"@{image['digest']}" if image.get("digest") else "")
    expect(hp["image"] == want, f"image {hp['image']}, expected {want}")
    expect(hp["args"] == ["serve", "--config", CONFIG_PATH], f"args {hp['args']}")

    # Only the ops listener is a container port; data and wire listen on loopback.
    ops = values["homeport"]["opsPort"]
    expect(hp["ports"] == [{"name": "ops", "containerPort": ops, "protocol": "TCP"}], f"ports {hp['ports']}")
    toml = tomllib.loads(cm["data"]["homeport.toml"])
    expect(toml["http"]["listen"] == f"127.0.0.1:{values['homeport']['httpPort']}", "data listener not on loopback")
    expect(toml["ops"]["listen"] == f"{values['homeport']['opsBindAddress']}:{ops}", "ops listener not on the pod IP")
    expect("allow_trusted_header_on_network" not in toml["http"], "the chart must not need the network override")
    if "pg" in toml:
        expect(toml["pg"]["listen"] == f"127.0.0.1:{values['homeport']['pgPort']}", "wire endpoint not on loopback")
    probes = [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]
    if values["homeport"]["nativeSidecar"]:
        probes.append(("startupProbe", "/healthz"))
    else:
        expect("startupProbe" not in hp, "startupProbe on a plain container would delay nothing")
    for probe, path in probes:
        expect(hp[probe]["httpGet"] == {"path": path, "port": "ops"}, f"{probe} is not GET {path} on `ops`")

    sc = hp["securityContext"]
    expect(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, "not non-root")
    expect(sc.get("readOnlyRootFilesystem") is True, "root filesystem is writable")
    expect(sc.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
    expect(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities not dropped")
    expect(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "no RuntimeDefault seccomp")

    res = hp["resources"]
    expect(mebibytes(res["requests"]["memory"]) <= mebibytes(res["limits"]["memory"]), "memory request > limit")
    expect(millicores(res["requests"]["cpu"]) <= millicores(res["limits"]["cpu"]), "cpu request > limit")

    # The config comes from the rendered ConfigMap; the password file from a mounted Secret.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in hp["volumeMounts"]}
    config_dir, config_file = CONFIG_PATH.rsplit("/", 1)
    expect(volumes[mounts[config_dir]]["configMap"]["name"] == cm["metadata"]["name"], "config not from the ConfigMap")
    expect(config_file in cm["data"], f"ConfigMap has no {config_file}")
    toml = tomllib.loads(cm["data"][config_file])
    pw_dir, pw_file = toml["postgres"]["password_file"].rsplit("/", 1)
    secret = volumes[mounts[pw_dir]]["secret"]
    ref = values["secrets"]["postgresPassword"]
    expect(secret["secretName"] == ref["secretName"] and secret["items"] == [{"key": ref["key"], "path": pw_file}],
           "postgres.password_file does not point at the mounted Secret")
    expect(not re.search(r"(?m)^\s*password\s*=", cm["data"][config_file]), "a password is inlined in the config")
    expect(all("value" not in e or not re.search("(?i)password|secret", e["name"]) for e in hp.get("env", [])),
           "a secret is inlined in the environment")

    pod_labels = pod["metadata"]["labels"]
    expect(deploy["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "selector does not match pods")
    expect(svc["spec"]["selector"].items() <= pod_labels.items(), "metrics Service does not select the pods")
    expect(svc["spec"]["ports"] == [{"name": "metrics", "port": ops, "targetPort": "ops", "protocol": "TCP"}],
           "the metrics Service must expose the ops port only, as `metrics`")
    if values["networkPolicy"]["enabled"]:
        np = by_kind(docs, "NetworkPolicy")
        expect(np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items(), "NetworkPolicy selects no pods")
        expect(any({"port": "ops", "protocol": "TCP"} in rule.get("ports", []) for rule in np["spec"]["ingress"]),
               "NetworkPolicy does not admit the ops port")
    else:
        expect("NetworkPolicy" not in kinds, "NetworkPolicy rendered while disabled")
    pdb_note = "no PodDisruptionBudget"
    if values["app"]["podDisruptionBudget"]["enabled"]:
        pdb = by_kind(docs, "PodDisruptionBudget")
        expect(pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "PDB selects no pods")
        expect(pdb["spec"]["maxUnavailable"] == values["app"]["podDisruptionBudget"]["maxUnavailable"], "PDB budget")
        pdb_note = f"PDB maxUnavailable {pdb['spec']['maxUnavailable']}"
    else:
        expect("PodDisruptionBudget" not in kinds, "PodDisruptionBudget rendered while disabled")
    spread = values["app"].get("topologySpreadConstraints") or []
    expect(pod["spec"].get("topologySpreadConstraints", []) == spread, "topologySpreadConstraints not verbatim")
    mode = "native sidecar (init container, restartPolicy Always)" if values["homeport"]["nativeSidecar"] else "plain container"
    print(f"{target}: {', '.join(kinds)}; homeport as {mode}, image {hp['image']}; app containers verbatim; "
          f"non-root, read-only root, no capabilities, RuntimeDefault seccomp; data API 127.0.0.1:"
          f"{values['homeport']['httpPort']}, only `ops` ({ops}) on the pod IP with the probes; {pdb_note}; "
          f"password from Secret {ref['secretName']}")


def expected_config(region, values):
    """config/<region>.toml as the chart must render it: same keys and values, except what the
    chart sets for Kubernetes (the ops listener on the pod IP, the password from the mounted
    Secret)."""
    path = REPO / "config" / f"{region}.toml"
    if not path.exists():
        return None
    cfg = tomllib.loads(path.read_text())
    cfg.setdefault("shutdown_grace", "20s")
    cfg["http"]["listen"] = f"127.0.0.1:{values['homeport']['httpPort']}"
    cfg["ops"]["listen"] = f"{values['homeport']['opsBindAddress']}:{values['homeport']['opsPort']}"
    cfg["postgres"].pop("password_env", None)
    cfg["postgres"]["password_file"] = "/etc/homeport-secrets/postgres/password"
    for shard in cfg["shards"].values():
        if isinstance(shard["primary"], str):
            shard["primary"] = [shard["primary"]]
    return cfg


def key_paths(table, prefix=""):
    paths = set()
    for key, value in table.items():
        paths.add(prefix + key)
        if isinstance(value, dict) and prefix + key != "shards":
            paths |= key_paths(value, prefix + key + ".")
    return paths


def diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
    return [] if a == b else [f"{path}: rendered {a!r}, expected {b!r}"]


def check_configmap(region, outdir):
    values = region_values(region)
    cm = by_kind(rendered_docs(outdir, region), "ConfigMap")
    cfg = tomllib.loads(cm["data"]["homeport.toml"])
    expect(cfg["region"] == region, f"region = {cfg['region']!r}, expected {region!r}")
    expected = expected_config(region, values)
    if expected is None:  # a region without an example file: compare the keys with config/eu.toml
        optional = {"jwt", "redis.password_file"} | {"jwt." + k for k in cfg.get("jwt", {})}
        unknown = key_paths(cfg) - key_paths(expected_config("eu", values)) - optional
        expect(not unknown, f"keys not in config/eu.toml: {sorted(unknown)}")
        print(f"{region}: homeport.toml parses (tomllib), region = {region!r}, keys as in config/eu.toml")
        return
    problems = diff(cfg, expected)
    expect(not problems, "rendered homeport.toml differs from config/%s.toml:\n  %s" % (region, "\n  ".join(problems)))
    print(f"{region}: homeport.toml parses (tomllib), region = {region!r}, and equals config/{region}.toml "
          f"except ops.listen = {cfg['ops']['listen']!r} and postgres.password_file")


def homeport_binary():
    """$HOMEPORT_BIN, else the newer of this checkout's release and debug builds, else PATH."""
    if os.environ.get("HOMEPORT_BIN"):
        return os.environ["HOMEPORT_BIN"]
    built = [p for p in (REPO / "target/release/homeport", REPO / "target/debug/homeport")
             if p.is_file() and os.access(p, os.X_OK)]
    if built:
        return str(max(built, key=lambda p: p.stat().st_mtime))
    return shutil.which("homeport")


def fake_secret_files(text, tmp):
    """Replace every mounted-secret path in a rendered config with a file in `tmp` holding
    something of the right shape: a self-signed certificate and its key for *.crt / *.key (made
    with openssl), a 48-character string otherwise."""
    tmp = Path(tmp)
    pem = tmp / "cert.crt", tmp / "cert.key"
    paths = sorted(set(re.findall(r'"(/etc/homeport-secrets/[^"]+)"', text)))
    if any(p.endswith((".crt", ".key")) for p in paths):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=localhost", "-keyout", str(pem[1]), "-out", str(pem[0])],
                       check=True, capture_output=True)
    for i, path in enumerate(paths):
        local = tmp / f"secret-{i}"
        if path.endswith(".crt"):
            local.write_bytes(pem[0].read_bytes())
        elif path.endswith(".key"):
            local.write_bytes(pem[1].read_bytes())
        else:
            local.write_text("not-a-real-secret-" + "x" * 30 + "\n")
        text = text.replace(json.dumps(path), json.dumps(str(local)))
    return text, len(paths)


def check_homeport_accepts(target, outdir):
    """Feed the rendered config to homeport's own parser (`homeport check`). Every server address
    is pointed at 127.0.0.1:1, so the probes fail at once: exit 1 is "config fine, servers
    unreachable"; exit 2 with "config error" is a config homeport refuses."""
    binary = homeport_binary()
    if not binary:
        print("no homeport binary (target/release, target/debug, PATH or $HOMEPORT_BIN): skipped")
        sys.exit(SKIP)
    text = by_kind(rendered_docs(outdir, target), "ConfigMap")["data"]["homeport.toml"]
    with tempfile.TemporaryDirectory() as tmp:
        text = re.sub(r"(postgresql|redis)://[^/\"]+", r"\1://127.0.0.1:1", text)
        text, secrets = fake_secret_files(text, tmp)
        config = Path(tmp) / "homeport.toml"
        config.write_text(text)
        proc = subprocess.run([binary, "check", "--config", str(config)], capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, HOMEPORT_LOG="error"))
    output = (proc.stdout + proc.stderr).strip()
    expect(proc.returncode in (0, 1) and "config error" not in output,
           f"homeport check exited {proc.returncode}:\n{output}")
    print(f"{target}: {binary} check accepted the rendered config ({output.splitlines()[0]}; exit "
          f"{proc.returncode} because the servers, redirected to 127.0.0.1:1, are unreachable; "
          f"{secrets} mounted secret files stood in by local ones)")


# Keys of homeport.toml the chart sets itself (from ports and mounted Secrets), not from `config`.
CHART_SET = {"http.listen", "ops", "ops.listen", "pg.listen", "postgres.password_file", "postgres.sslrootcert",
             "redis.password_file", "pg.users.password_file", "pg.tls_cert_file", "pg.tls_key_file",
             "consistency", "consistency.key_file", "consistency.previous_key_file"}
# Schema properties under `config` that steer rendering instead of becoming a key.
CHART_SWITCHES = {"pg.enabled"}


def toml_paths(table, prefix=""):
    """Key paths of a TOML document; shard names, directory endpoints, regions and countries
    collapse to their table (their own schema describes them), arrays of tables to their item
    keys."""
    paths = set()
    for key, value in table.items():
        path = prefix + key
        paths.add(path)
        if path in ("shards", "directory.primary", "directory.replicas", "regions", "placement.countries"):
            continue
        if isinstance(value, dict):
            paths |= toml_paths(value, path + ".")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for v in value:
                paths |= toml_paths(v, path + ".")
    return paths


def schema_paths(node, prefix=""):
    paths = set()
    for key, sub in node.get("properties", {}).items():
        path = prefix + key
        paths.add(path)
        if path not in ("shards", "directory.primary", "directory.replicas", "regions", "placement.countries"):
            paths |= schema_paths(sub, path + ".")
    return paths


def check_schema_covers_config(target, outdir):
    """Every key of the rendered homeport.toml is either set by the chart or described by
    values.schema.json under `config` (so the schema checks it before Helm renders it), and every
    `config` property of the schema reaches the rendered file. Run on a variant that switches
    every optional part on."""
    cm = by_kind(rendered_docs(outdir, target), "ConfigMap")
    rendered = toml_paths(tomllib.loads(cm["data"]["homeport.toml"])) - {"region"}
    schema = json.loads((CHART / "values.schema.json").read_text())
    described = schema_paths(schema["properties"]["config"]) - {"region"}
    # pg.users is a list of names in the values and an array of tables ([[pg.users]] name = ...).
    described |= {"pg.users.name"}
    unchecked = rendered - described - CHART_SET
    expect(not unchecked, f"rendered keys the schema does not describe: {sorted(unchecked)}")
    unused = described - rendered - CHART_SWITCHES - {"jwt"} - {p for p in described if p.startswith("jwt.")} \
        - {"pg.users"}
    jwt_rendered = {p for p in rendered if p.startswith("jwt.")}
    expect(not unused, f"schema properties that never reach homeport.toml: {sorted(unused)}")
    for must in ("pg.listen", "pg.auth", "pg.pool_size", "pg.tls_cert_file", "pg.tls_required",
                 "postgres.sslmode", "postgres.sslrootcert", "ops.listen"):
        expect(must in rendered, f"{target} does not render {must}")
    print(f"{target}: {len(rendered)} rendered keys, each described by values.schema.json "
          f"({len(rendered - CHART_SET)}) or set by the chart ({len(rendered & CHART_SET)}); every schema "
          f"property reaches the file; [pg] listen/auth/pool_size/TLS, postgres.sslmode/sslrootcert and "
          f"{len(jwt_rendered)} [jwt] keys included")


# --- Prometheus rules, ServiceMonitor, dashboard ---------------------------------------------------

REQUIRED_ALERTS = {
    "HomeportReplicationLagHigh": ("warning", "1m", "> 5"),
    "HomeportReplicationLagCritical": ("page", "1m", "> 30"),
    "HomeportReplicationLagUnknown": ("warning", "1m", "homeport_probe_age_seconds"),
    "HomeportEndpointDown": ("warning", "1m", "== 0"),
    "HomeportPrimaryDown": ("page", "1m", 'homeport_endpoint_up{role="primary"}) == 0'),
    "HomeportRYWFallbackRatioHigh": (None, "10m", "> 0.05"),
    "HomeportErrorRatioHigh": (None, "5m", "> 0.05"),
    "HomeportTargetDown": ("warning", "5m", "up{"),
    "HomeportMetricsAbsent": ("page", "5m", "absent(up{"),
}


def plain_rules():
    return yaml.safe_load(RULES.read_text())["groups"]


def all_alerts():
    return [r for g in plain_rules() for r in g["rules"] if "alert" in r]


def check_prometheusrule_sync():
    cr = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    expect(cr["apiVersion"] == "monitoring.coreos.com/v1" and cr["kind"] == "PrometheusRule", "not a PrometheusRule")
    expect(cr["metadata"].get("name"), "PrometheusRule has no name")
    expect(cr["spec"]["groups"] == plain_rules(),
           "prometheus-rules.yaml differs from rules/homeport.rules.yml; regenerate it with "
           "k8s/tests/gen_prometheusrule.py")
    print(f"PrometheusRule spec.groups == rules/homeport.rules.yml ({len(cr['spec']['groups'])} groups)")


def check_prometheusrule_promtool():
    """promtool reads plain rule files: write the CR's groups to one and check it."""
    cr = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump({"groups": cr["spec"]["groups"]}, f)
        f.flush()
        proc = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    print((proc.stdout + proc.stderr).strip())
    expect(proc.returncode == 0, "promtool rejects the PrometheusRule's groups")


def check_alerts():
    readme = (K8S / "README.md").read_text()
    alerts = {r["alert"]: r for r in all_alerts()}
    missing = set(REQUIRED_ALERTS) - set(alerts)
    expect(not missing, f"missing alerts: {sorted(missing)}")
    for name, (severity, duration, comparison) in REQUIRED_ALERTS.items():
        rule = alerts[name]
        expect(rule.get("for") == duration, f"{name}: for {rule.get('for')}, expected {duration}")
        expect(comparison in " ".join(rule["expr"].split()), f"{name}: expr lacks `{comparison}`")
        if severity:
            expect(rule["labels"]["severity"] == severity, f"{name}: severity {rule['labels']['severity']}")
    for name, rule in alerts.items():
        expect(rule["labels"].get("severity") in ("warning", "page"), f"{name}: severity must be warning or page")
        ann = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            expect(ann.get(key), f"{name}: no {key} annotation")
        anchor = ann["runbook_url"].split("#", 1)[1]
        expect(anchor == "runbook-" + name.lower(), f"{name}: runbook anchor {anchor}")
        expect(ann["runbook_url"].split("#")[0].endswith("/k8s/README.md"), f"{name}: runbook_url not k8s/README.md")
        expect(f'<a id="{anchor}"></a>' in readme and f"### {name}" in readme, f"{name}: no runbook section {anchor} in k8s/README.md")
        commands = first_three_commands(readme, anchor)
        expect(len(commands) == 3, f"{name}: the runbook's \"First three commands\" block has {len(commands)} "
                                   f"commands, expected 3: {commands}")
    print(f"{len(alerts)} alerts with severity, summary, description, a runbook_url whose anchor exists in "
          f"k8s/README.md, and a runbook that starts with three commands: {', '.join(alerts)}")


def first_three_commands(readme, anchor):
    """The commands of the first ```sh block after "**First three commands.**" in a runbook section
    (a command may continue over lines ending in a backslash; comments do not count)."""
    section = readme.split(f'<a id="{anchor}"></a>', 1)[1].split('<a id="', 1)[0]
    expect("**First three commands.**" in section, f"runbook {anchor} has no **First three commands.**")
    block = section.split("**First three commands.**", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands, current = [], ""
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def check_servicemonitor(outdir):
    sm = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    expect(sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor", "not a ServiceMonitor")
    endpoints = sm["spec"]["endpoints"]
    expect(any(e["port"] == "metrics" and e.get("path") == "/metrics" for e in endpoints), "no metrics endpoint")
    expect(all(e.get("honorLabels") is True for e in endpoints), "honorLabels must keep homeport's `endpoint` label")
    selector = sm["spec"]["selector"]["matchLabels"]
    for region in regions():
        svc = by_kind(rendered_docs(outdir, region), "Service")
        expect(selector.items() <= svc["metadata"]["labels"].items(), f"ServiceMonitor does not select the {region} Service")
        expect(any(p["name"] == "metrics" for p in svc["spec"]["ports"]), f"{region} Service has no metrics port")
    print(f"ServiceMonitor selects {selector} = the rendered metrics Service of {', '.join(regions())}; "
          f"scrapes port `metrics` path /metrics")


def check_applicationset():
    """A cluster generator selecting clusters by label, the region and values file from the
    cluster's label, a pinned revision, automated sync with prune and self-heal. For every
    values-<region>.yaml, the template is applied to a cluster labelled with that region and the
    files it names must exist."""
    appset = yaml.safe_load((K8S / "argocd" / "applicationset.yaml").read_text())
    expect(appset["apiVersion"] == "argoproj.io/v1alpha1" and appset["kind"] == "ApplicationSet", "not an ApplicationSet")
    spec = appset["spec"]
    expect(spec.get("goTemplate") is True, "goTemplate must be on (the templates use index)")
    expect(len(spec["generators"]) == 1 and "clusters" in spec["generators"][0], "expected one cluster generator")
    selector = spec["generators"][0]["clusters"].get("selector", {})
    keys = {e["key"]: e["operator"] for e in selector.get("matchExpressions", [])} | \
           {k: "In" for k in selector.get("matchLabels", {})}
    expect(keys.get("homeport.io/region") in ("Exists", "In"), "the generator does not select by homeport.io/region")
    tmpl = spec["template"]
    sources = tmpl["spec"].get("sources") or [tmpl["spec"]["source"]]
    for src in sources:
        rev = str(src.get("targetRevision", ""))
        expect(re.fullmatch(r"v?\d+\.\d+\.\d+|[0-9a-f]{40}", rev),
               f"targetRevision {rev!r} is not pinned (a release tag or a commit, never a branch)")
    chart = [s for s in sources if "helm" in s]
    expect(len(chart) == 1, "expected one Helm source")
    expect((REPO / chart[0]["path"]).resolve() == CHART, f"chart path {chart[0]['path']} is not k8s/chart")

    def instantiate(text, region):
        labels = {"homeport.io/region": region}
        def one(m):
            expr = m.group(1).strip()
            idx = re.fullmatch(r'index \.metadata\.labels "([^"]+)"', expr)
            if idx:
                return labels[idx.group(1)]
            expect(expr == ".server", f"unsupported template expression {expr!r}")
            return f"https://k8s.{region}.example.com"
        return re.sub(r"\{\{(.*?)\}\}", one, text)

    for region in regions():
        app = yaml.safe_load(instantiate(yaml.safe_dump(tmpl), region))
        expect(app["metadata"]["name"] == f"shop-{region}", f"application name {app['metadata']['name']}")
        expect(app["metadata"]["labels"]["homeport.io/region"] == region, "application lacks the region label")
        helm = [s for s in app["spec"]["sources"] if "helm" in s][0]["helm"]
        for vf in helm["valueFiles"]:
            expect((CHART / vf).exists(), f"{region}: value file {vf} does not exist")
        expect(f"values-{region}.yaml" in helm["valueFiles"], f"{region}: its values file is not used")
        expect(app["spec"]["destination"]["namespace"], "no destination namespace")
        expect(app["spec"]["destination"]["server"] == f"https://k8s.{region}.example.com", "server not the cluster's")
    for s in sources:
        expect((REPO / s["path"]).is_dir(), f"source path {s['path']} does not exist")
        include = s.get("directory", {}).get("include", "")
        for name in re.findall(r"[\w.-]+\.ya?ml", include):
            expect((REPO / s["path"] / name).exists(), f"{s['path']}/{name} does not exist")
    sync = tmpl["spec"]["syncPolicy"]
    expect(sync["automated"].get("prune") is True and sync["automated"].get("selfHeal") is True, "no prune/selfHeal")
    expect("CreateNamespace=true" in sync.get("syncOptions", []), "no CreateNamespace=true")
    revs = sorted({str(s["targetRevision"]) for s in sources})
    print(f"ApplicationSet: cluster generator selecting {sorted(keys)}; for clusters labelled "
          f"{', '.join(regions())} the template names existing values files; pinned revision {', '.join(revs)}; "
          f"automated prune+selfHeal, CreateNamespace=true")


def metric_names_file():
    names = (K8S / "metric-names.txt").read_text().split()
    expect(names == sorted(set(names)), "metric-names.txt must be sorted and unique")
    expect(all(re.fullmatch(r"homeport_[a-z0-9_]+", n) for n in names), "bad metric name in metric-names.txt")
    return set(names)


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                "unless", "offset", "inf", "nan"}


def metrics_in(expr):
    """Metric names an expression selects: identifiers that are not functions, keywords, labels."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    found = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", e):
        if m.group() not in PROMQL_WORDS and not e[m.end():].lstrip().startswith("("):
            found.add(m.group())
    return found


# Series Prometheus makes itself for every scrape target.
PROMETHEUS_SERIES = {"up"}


def known_metric(name, names):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name in names or name in PROMETHEUS_SERIES or (base in names and not base.endswith("_total"))


def dashboard_exprs():
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def check_metric_names():
    names = metric_names_file()
    exprs = [(f"alert {r['alert']}", r["expr"]) for r in all_alerts()] + \
            [(f"panel {title!r}", e) for title, e in dashboard_exprs()]
    used = set()
    for where, expr in exprs:
        found = metrics_in(expr)
        expect(found, f"{where}: no metric found in {expr!r}")
        unknown = {n for n in found if not known_metric(n, names)}
        expect(not unknown, f"{where}: {sorted(unknown)} not in k8s/metric-names.txt")
        used |= {re.sub(r"_(bucket|sum|count)$", "", n) if n not in names else n for n in found}
    print(f"{len(exprs)} expressions (rules and dashboard) use only names from metric-names.txt; "
          f"used {len(used)} of {len(names)}" + (f", unused: {', '.join(sorted(names - used))}" if names - used else ""))


def check_dashboard():
    dash = json.loads(DASHBOARD.read_text())
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        expect(key in dash, f"dashboard has no {key}")
    ids = [p["id"] for p in dash["panels"]]
    expect(len(ids) == len(set(ids)), "duplicate panel ids")
    for p in dash["panels"]:
        expect(p.get("title") and p.get("type") and p.get("gridPos"), f"panel {p.get('id')} lacks title/type/gridPos")
        if p["type"] == "row":
            continue
        expect(p.get("targets"), f"panel {p['title']!r} has no targets")
        for t in p["targets"]:
            expect(t.get("expr") and t.get("refId"), f"panel {p['title']!r}: target without expr/refId")
        expect(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, f"panel {p['title']!r} is wider than the grid")
    lag = [p for p in dash["panels"] if "homeport_replication_lag_seconds" in json.dumps(p.get("targets"))]
    expect(lag, "no replication lag panel")
    steps = {s["value"] for s in lag[0]["fieldConfig"]["defaults"]["thresholds"]["steps"]}
    expect({5, 30} <= steps, f"lag panel thresholds {steps} lack 5 s and 30 s")
    text = json.dumps(dash)
    for needle in ("homeport_requests_total", "histogram_quantile(0.99", "homeport_ryw_wait_seconds_bucket",
                   "homeport_ryw_fallbacks_total", "homeport_idempotency_total", "homeport_endpoint_up"):
        expect(needle in text, f"dashboard lacks {needle}")
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    print(f"dashboard {dash['uid']!r}: valid JSON, {len(panels)} panels all with targets, lag thresholds 5 s "
          f"and 30 s, request rate, p50/p95/p99, RYW waits and fallbacks, idempotency, endpoint health")


def check_dashboard_promql():
    """promtool parses every dashboard query (Grafana variables replaced by concrete values)."""
    rules = []
    for i, (title, expr) in enumerate(dashboard_exprs()):
        expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        f.flush()
        proc = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    print(f"promtool parsed {len(rules)} dashboard queries: " + (proc.stdout + proc.stderr).strip().splitlines()[-1].strip())
    expect(proc.returncode == 0, (proc.stdout + proc.stderr).strip())


def check_resources_vs_benchmark():
    """The memory request covers the sidecar's peak RSS in the benchmark tables of
    docs/benchmarks.md; the limit leaves at least 4x headroom."""
    bench = (REPO / "docs" / "benchmarks.md").read_text()
    peaks = [float(x) for x in re.findall(r"\|\s*([0-9.]+) MiB\s*\|\s*$", bench, re.M)]
    if not peaks:
        print("no peak RSS figures (\"| N MiB |\" rows) in docs/benchmarks.md: skipped")
        sys.exit(SKIP)
    peak = max(peaks)
    for region in regions():
        res = region_values(region)["homeport"]["resources"]
        request, limit = mebibytes(res["requests"]["memory"]), mebibytes(res["limits"]["memory"])
        expect(request >= peak, f"{region}: memory request {request:g} MiB < benchmark peak RSS {peak:g} MiB")
        expect(limit >= 4 * peak, f"{region}: memory limit {limit:g} MiB < 4 x benchmark peak RSS {peak:g} MiB")
    print(f"benchmark peak RSS {peak:g} MiB (docs/benchmarks.md): memory request {request:g} MiB, limit {limit:g} MiB")


def byte_size(value):
    """A homeport size setting ("64MiB" or an integer of bytes) in bytes."""
    m = re.fullmatch(r"([0-9]+)\s*(B|KiB|KB|kB|MiB|MB|GiB|GB)?", str(value).strip())
    expect(m, f"cannot read size {value!r}")
    unit = {"B": 1, "KiB": 2**10, "KB": 2**10, "kB": 2**10, "MiB": 2**20, "MB": 2**20, "GiB": 2**30, "GB": 2**30}
    return int(m.group(1)) * unit.get(m.group(2) or "B", 1)


def check_memory_model():
    """The memory limit holds the worst case that docs/http.md derives from the memory model, and
    that worst case counts the chart's http.result_budget twice (a collected result is copied once
    into its response)."""
    doc = (REPO / "docs" / "http.md").read_text()
    m = re.search(r"worst case with the chart's values: \*\*([0-9.]+) MiB\*\*", doc, re.I)
    expect(m, "docs/http.md states no \"worst case with the chart's values: **N MiB**\"")
    worst = float(m.group(1))
    for region in regions():
        values = region_values(region)
        budget = byte_size(values["config"]["http"]["result_budget"]) / 2**20
        limit = mebibytes(values["homeport"]["resources"]["limits"]["memory"])
        expect(worst >= 2 * budget, f"{region}: docs/http.md worst case {worst:g} MiB < 2 x result_budget {budget:g} MiB")
        expect(limit >= worst, f"{region}: memory limit {limit:g} MiB < docs/http.md worst case {worst:g} MiB")
    print(f"docs/http.md worst case {worst:g} MiB (result_budget {budget:g} MiB): memory limit {limit:g} MiB")


# --- container image and plain YAML -------------------------------------------------------------------

def check_dockerfile():
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"(?im)^FROM\s+(\S+)", text)
    expect(len(stages) >= 2, "not a multi-stage build")
    expect(stages[0].startswith("rust:"), f"builder {stages[0]}")
    expect("cargo build --release --locked" in text, "no `cargo build --release --locked`")
    final = text[text.rfind("\nFROM"):]
    expect(stages[-1].endswith(":nonroot") or re.search(r"(?m)^USER\s+(?!0\b|root\b)\S+", final), "runtime runs as root")
    expect(re.search(r'(?m)^ENTRYPOINT \["homeport"\]$', text), "ENTRYPOINT is not [\"homeport\"]")
    expect(re.search(r'(?m)^CMD \["serve", "--config", "%s"\]$' % re.escape(CONFIG_PATH), text),
           "CMD does not serve the config path the chart mounts")
    expect(re.search(r"(?m)^EXPOSE 7400 7401 7402$", text), "EXPOSE 7400 7401 7402 missing")
    ignore = (REPO / ".dockerignore").read_text().split()
    expect({"target/", ".git"} <= set(ignore), ".dockerignore lacks target/ or .git")
    print(f"Dockerfile: stages {' -> '.join(stages)}; non-root; ENTRYPOINT/CMD serve {CONFIG_PATH}; "
          f"EXPOSE 7400 7401 7402; .dockerignore has target/ and .git")


def check_yaml_files():
    files = [p for p in sorted(K8S.rglob("*.y*ml"))
             if "templates" not in p.parts and ".venv" not in p.parts and ".rendered" not in p.parts]
    for p in files:
        list(yaml.safe_load_all(p.read_text()))
    print(f"{len(files)} YAML files outside chart/templates parse")


CHECKS = {name[len("check_"):].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("check_")}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in CHECKS:
        sys.exit(f"usage: checks.py {{{'|'.join(CHECKS)}}} [args]")
    try:
        CHECKS[sys.argv[1]](*sys.argv[2:])
    except Failed as e:
        print(f"FAILED: {e}")
        sys.exit(1)
