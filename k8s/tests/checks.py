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

from render import load_values, render

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


def check_render(region, outdir):
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rendered, notes = render(CHART, region_values(region), RELEASE, NAMESPACE)
    text = "".join(f"---\n# Source: {src}\n{body.strip()}\n" for src, body in rendered.items() if body.strip())
    expect("{{" not in text and "{{" not in notes, "unrendered template action left in the output")
    docs = [d for d in yaml.safe_load_all(text) if d]
    for d in docs:
        expect(d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"),
               f"manifest without apiVersion/kind/metadata.name: {d}")
    expect(notes.strip(), "NOTES.txt rendered empty")
    (outdir / f"{region}.yaml").write_text(text)
    (outdir / f"{region}.NOTES.txt").write_text(notes)
    print(f"rendered {len(docs)} manifests for {region} into {outdir / (region + '.yaml')}: "
          + ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs))


def check_manifests(region, outdir):
    values = region_values(region)
    docs = rendered_docs(outdir, region)
    kinds = sorted(d["kind"] for d in docs)
    expect("Secret" not in kinds, "the chart must reference Secrets, never render them")
    cm, deploy, svc = by_kind(docs, "ConfigMap"), by_kind(docs, "Deployment"), by_kind(docs, "Service")
    pod = deploy["spec"]["template"]
    containers = pod["spec"]["containers"]
    expect(containers[:-1] == values["app"]["containers"], "the app containers are not rendered verbatim")
    hp = containers[-1]
    expect(hp["name"] == "homeport", "homeport is not the last container")
    image = values["homeport"]["image"]
    expect(hp["image"] == f"{image['repository']}:{image['tag']}", f"image {hp['image']}")
    expect(hp["args"] == ["serve", "--config", CONFIG_PATH], f"args {hp['args']}")

    port = values["homeport"]["httpPort"]
    expect({"name": "metrics", "containerPort": port, "protocol": "TCP"} in hp["ports"], "no `metrics` port")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        expect(hp[probe]["httpGet"] == {"path": path, "port": "metrics"}, f"{probe} is not GET {path}")

    sc = hp["securityContext"]
    expect(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, "not non-root")
    expect(sc.get("readOnlyRootFilesystem") is True, "root filesystem is writable")
    expect(sc.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
    expect(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities not dropped")
    expect(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "no RuntimeDefault seccomp")

    res = hp["resources"]
    expect(mebibytes(res["requests"]["memory"]) <= mebibytes(res["limits"]["memory"]), "memory request > limit")
    expect(millicores(res["requests"]["cpu"]) <= millicores(res["limits"]["cpu"]), "cpu request > limit")

    pause = hp["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    drain = seconds(values["config"]["shutdown_grace"])
    expect(grace > pause + drain, f"terminationGracePeriodSeconds {grace} <= preStop {pause}s + shutdown_grace {drain}s")

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
    expect({"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"} in svc["spec"]["ports"],
           "metrics Service has no `metrics` port")
    if values["networkPolicy"]["enabled"]:
        np = by_kind(docs, "NetworkPolicy")
        expect(np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items(), "NetworkPolicy selects no pods")
        expect(any({"port": "metrics", "protocol": "TCP"} in rule.get("ports", []) for rule in np["spec"]["ingress"]),
               "NetworkPolicy does not admit the metrics port")
    else:
        expect("NetworkPolicy" not in kinds, "NetworkPolicy rendered while disabled")
    print(f"{region}: {', '.join(kinds)}; app containers verbatim; homeport non-root, read-only root, "
          f"no capabilities, RuntimeDefault seccomp; probes /healthz /readyz on `metrics` ({port}); "
          f"grace {grace}s > preStop {pause}s + shutdown_grace {drain:g}s; password from Secret "
          f"{ref['secretName']}")


def expected_config(region, values):
    """config/<region>.toml as the chart must render it: same keys and values, except what the
    chart sets for Kubernetes (listen on the pod IP, the password from the mounted Secret)."""
    path = REPO / "config" / f"{region}.toml"
    if not path.exists():
        return None
    cfg = tomllib.loads(path.read_text())
    cfg.setdefault("shutdown_grace", "20s")
    cfg["http"]["listen"] = f"0.0.0.0:{values['homeport']['httpPort']}"
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
          f"except http.listen = {cfg['http']['listen']!r} and postgres.password_file")


def homeport_binary():
    """$HOMEPORT_BIN, else the newer of this checkout's release and debug builds, else PATH."""
    if os.environ.get("HOMEPORT_BIN"):
        return os.environ["HOMEPORT_BIN"]
    built = [p for p in (REPO / "target/release/homeport", REPO / "target/debug/homeport")
             if p.is_file() and os.access(p, os.X_OK)]
    if built:
        return str(max(built, key=lambda p: p.stat().st_mtime))
    return shutil.which("homeport")


def check_homeport_accepts(region, outdir):
    """Feed the rendered config to homeport's own parser (`homeport check`). Every server address
    is pointed at 127.0.0.1:1, so the probes fail at once: exit 1 is "config fine, servers
    unreachable"; exit 2 with "config error" is a config homeport refuses."""
    binary = homeport_binary()
    if not binary:
        print("no homeport binary (target/release, target/debug, PATH or $HOMEPORT_BIN): skipped")
        sys.exit(SKIP)
    text = by_kind(rendered_docs(outdir, region), "ConfigMap")["data"]["homeport.toml"]
    with tempfile.TemporaryDirectory() as tmp:
        password = Path(tmp) / "password"
        password.write_text("not-a-real-password\n")
        text = re.sub(r"(postgresql|redis)://[^/\"]+", r"\1://127.0.0.1:1", text)
        text = text.replace('"/etc/homeport-secrets/postgres/password"', json.dumps(str(password)))
        config = Path(tmp) / "homeport.toml"
        config.write_text(text)
        proc = subprocess.run([binary, "check", "--config", str(config)], capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, HOMEPORT_LOG="error"))
    output = (proc.stdout + proc.stderr).strip()
    expect(proc.returncode in (0, 1) and "config error" not in output,
           f"homeport check exited {proc.returncode}:\n{output}")
    print(f"{region}: {binary} check accepted the rendered config ({output.splitlines()[0]}; exit "
          f"{proc.returncode} because the servers, redirected to 127.0.0.1:1, are unreachable)")


# --- Prometheus rules, ServiceMonitor, dashboard ---------------------------------------------------

REQUIRED_ALERTS = {
    "HomeportReplicationLagHigh": ("warning", "1m", "> 5"),
    "HomeportReplicationLagCritical": ("page", "1m", "> 30"),
    "HomeportEndpointDown": (None, "1m", "== 0"),
    "HomeportRYWFallbackRatioHigh": (None, "10m", "> 0.05"),
    "HomeportErrorRatioHigh": (None, "5m", "> 0.05"),
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
    print(f"{len(alerts)} alerts with severity, summary, description and a runbook_url whose anchor exists "
          f"in k8s/README.md: {', '.join(alerts)}")


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
    appset = yaml.safe_load((K8S / "argocd" / "applicationset.yaml").read_text())
    expect(appset["apiVersion"] == "argoproj.io/v1alpha1" and appset["kind"] == "ApplicationSet", "not an ApplicationSet")
    spec = appset["spec"]
    elements = [e for g in spec["generators"] for e in g.get("list", {}).get("elements", [])]
    names = sorted(e["region"] for e in elements)
    expect(names == regions(), f"generator regions {names} != values files {regions()}")
    for e in elements:
        expect(e.get("server") and e.get("namespace"), f"element {e} lacks server or namespace")
    tmpl = spec["template"]["spec"]
    sources = tmpl.get("sources") or [tmpl["source"]]
    chart = [s for s in sources if "helm" in s]
    expect(len(chart) == 1, "expected one Helm source")
    expect((REPO / chart[0]["path"]).resolve() == CHART, f"chart path {chart[0]['path']} is not k8s/chart")
    for e in elements:
        for vf in chart[0]["helm"]["valueFiles"]:
            f = CHART / vf.replace("{{ .region }}", e["region"])
            expect(f.exists(), f"value file {f} for {e['region']} does not exist")
    for s in sources:
        expect((REPO / s["path"]).is_dir(), f"source path {s['path']} does not exist")
        include = s.get("directory", {}).get("include", "")
        for name in re.findall(r"[\w.-]+\.ya?ml", include):
            expect((REPO / s["path"] / name).exists(), f"{s['path']}/{name} does not exist")
    sync = tmpl["syncPolicy"]
    expect(sync["automated"].get("prune") is True and sync["automated"].get("selfHeal") is True, "no prune/selfHeal")
    expect("CreateNamespace=true" in sync.get("syncOptions", []), "no CreateNamespace=true")
    print(f"ApplicationSet: list generator regions {names} match values-*.yaml; chart and monitoring "
          f"sources exist; automated prune+selfHeal, CreateNamespace=true")


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


def known_metric(name, names):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name in names or (base in names and not base.endswith("_total"))


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
    """The memory request covers the sidecar's peak RSS in the README's benchmark table; the limit
    leaves at least 4x headroom."""
    readme = (REPO / "README.md").read_text()
    bench = readme.split("## Benchmarks", 1)[1].split("\n## ", 1)[0] if "## Benchmarks" in readme else ""
    peaks = [float(x) for x in re.findall(r"\|\s*([0-9.]+) MiB\s*\|\s*$", bench, re.M)]
    if not peaks:
        print("no peak RSS figures (\"| N MiB |\" rows) in the README's Benchmarks table: skipped")
        sys.exit(SKIP)
    peak = max(peaks)
    for region in regions():
        res = region_values(region)["homeport"]["resources"]
        request, limit = mebibytes(res["requests"]["memory"]), mebibytes(res["limits"]["memory"])
        expect(request >= peak, f"{region}: memory request {request:g} MiB < benchmark peak RSS {peak:g} MiB")
        expect(limit >= 4 * peak, f"{region}: memory limit {limit:g} MiB < 4 x benchmark peak RSS {peak:g} MiB")
    print(f"benchmark peak RSS {peak:g} MiB (README): memory request {request:g} MiB, limit {limit:g} MiB")


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
    expect(re.search(r"(?m)^EXPOSE 7400 7401$", text), "EXPOSE 7400 7401 missing")
    ignore = (REPO / ".dockerignore").read_text().split()
    expect({"target/", ".git"} <= set(ignore), ".dockerignore lacks target/ or .git")
    print(f"Dockerfile: stages {' -> '.join(stages)}; non-root; ENTRYPOINT/CMD serve {CONFIG_PATH}; "
          f"EXPOSE 7400 7401; .dockerignore has target/ and .git")


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
