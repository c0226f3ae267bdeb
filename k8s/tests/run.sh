#!/usr/bin/env bash
# Validates everything under k8s/ (plus Dockerfile and .dockerignore) with real tools, installing
# what is missing: promtool from Debian's `prometheus` package, and jsonschema, PyYAML and
# kubernetes-validate from PyPI into k8s/tests/.venv.
#
#   k8s/tests/run.sh
#
# (a) values-<region>.yaml over values.yaml against values.schema.json (jsonschema), and every
#     deliberately bad document in bad-values/ rejected;
# (b) the chart rendered per region and per variant (variants/: plain container instead of native
#     sidecar; every optional part on) without helm (render.py), every manifest validated against
#     the Kubernetes OpenAPI schemas of 1.30 (the chart's minimum) and of the newest release
#     kubernetes-validate ships (kubernetes-validate --strict), structural checks, the shutdown
#     arithmetic (and bad-grace/ rejected), the ConfigMap's homeport.toml parsed (tomllib),
#     compared with config/<region>.toml, checked against the schema's coverage and fed to
#     homeport itself; the fleet's connection budget (bad-budget/ refused at render time with
#     the arithmetic in the message);
# (c) promtool check rules / test rules;
# (d) the PrometheusRule equals the plain rule file;
# (e) the dashboard's structure and PromQL, and every metric name against k8s/metric-names.txt;
#     plus the ServiceMonitor, the ApplicationSet and the Dockerfile.
# Ends with "N passed, M failed" and exits 1 on any failure.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
k8s="$(dirname "$here")"
out="$here/.rendered"
venv="$here/.venv"
# Kubernetes versions whose schemas the manifests are validated against: the chart's minimum (1.30,
# for native sidecars and the preStop sleep action) and the newest kubernetes-validate ships
# (found below; kubernetes-validate 1.37.0 ships schemas from 1.25 to 1.37).
min_kube_version="1.30.0"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v promtool >/dev/null 2>&1; then
    echo "run.sh: installing promtool (Debian package prometheus)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! cmp -s "$here/requirements.txt" "$venv/.requirements" 2>/dev/null; then
    echo "run.sh: installing Python packages into $venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$venv/.requirements"
fi
py="$venv/bin/python"
export PATH="$venv/bin:$PATH"
newest_kube_version="$("$py" -c '
import os, re, kubernetes_validate
d = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
found = (re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)-local-strict", n) for n in os.listdir(d))
print(".".join(map(str, max(tuple(map(int, m.groups())) for m in found if m))))
')"

passed=0 failed=0 skipped=0
# check NAME COMMAND...: run one check, print its output indented, count the result.
check() {
    local name="$1" log rc=0
    shift
    log="$("$@" 2>&1)" || rc=$?
    if [ "$rc" = 0 ]; then
        passed=$((passed + 1)); echo "ok    $name"
    elif [ "$rc" = 77 ]; then
        skipped=$((skipped + 1)); echo "skip  $name"
    else
        failed=$((failed + 1)); echo "FAIL  $name"
    fi
    [ -z "$log" ] || printf '%s\n' "$log" | sed 's/^/        /'
}
checks() { "$py" "$here/checks.py" "$@"; }

mapfile -t regions < <(cd "$k8s/chart" && ls values-*.yaml | sed 's/^values-//; s/\.yaml$//')
[ "${#regions[@]}" -gt 0 ] || { echo "no k8s/chart/values-<region>.yaml"; exit 1; }
rm -rf "$out"

echo "== (a) values against values.schema.json"
check "schema is a valid JSON schema" checks schema
for region in "${regions[@]}"; do
    check "values-$region.yaml valid" checks values "$region"
done
for bad in "$here"/bad-values/*.yaml; do
    check "bad values $(basename "$bad") rejected" checks bad-values "$bad"
done

echo "== (b) chart rendered per region and variant, Kubernetes schemas, shutdown arithmetic, config"
mapfile -t variants < <(cd "$here/variants" && ls *.yaml | sed 's/\.yaml$//')
for target in "${regions[@]}" "${variants[@]}"; do
    check "render $target" checks render "$target" "$out"
    for v in "$min_kube_version" "$newest_kube_version"; do
        check "kubernetes-validate --strict $target (Kubernetes $v)" \
            kubernetes-validate --strict --kubernetes-version "$v" "$out/$target.yaml"
    done
    check "manifests $target: sidecar, listeners, security, probes, PDB, secrets" checks manifests "$target" "$out"
    check "shutdown arithmetic $target: grace, preStop, shutdown_grace" checks grace "$target" "$out"
    check "homeport check accepts the $target config" checks homeport-accepts "$target" "$out"
done
for region in "${regions[@]}"; do
    check "configmap $region: homeport.toml" checks configmap "$region" "$out"
done
check "values.schema.json covers every key the chart renders (variant full)" \
    checks schema-covers-config full "$out"
for bad in "$here"/bad-grace/*.yaml; do
    check "shutdown arithmetic $(basename "$bad") rejected" checks grace-rejected "$bad"
done
for bad in "$here"/bad-budget/*.yaml; do
    check "fleet budget $(basename "$bad") refused at render time" checks budget-rejected "$bad"
done
check "resources sized from the README benchmark" checks resources-vs-benchmark
check "memory limit holds the docs/http.md memory model" checks memory-model
check "servicemonitor selects the metrics Service" checks servicemonitor "$out"
check "applicationset" checks applicationset

echo "== (c) promtool"
check "promtool check rules" promtool check rules "$k8s/monitoring/rules/homeport.rules.yml"
check "promtool test rules" promtool test rules "$k8s/monitoring/tests/homeport.rules.test.yml"
check "alerts: severities, annotations, runbooks" checks alerts

echo "== (d) PrometheusRule"
check "PrometheusRule groups equal the plain rule file" checks prometheusrule-sync
check "promtool check rules on the PrometheusRule groups" checks prometheusrule-promtool

echo "== (e) dashboard and metric names"
check "dashboard structure" checks dashboard
check "dashboard PromQL parses (promtool)" checks dashboard-promql
check "metric names in rules and dashboard" checks metric-names

echo "== image and files"
check "Dockerfile and .dockerignore" checks dockerfile
check "YAML files parse" checks yaml-files

summary="$passed passed, $failed failed"
[ "$skipped" = 0 ] || summary="$summary, $skipped skipped"
echo "$summary"
[ "$failed" = 0 ]
