#!/usr/bin/env bash
# Validates everything under k8s/ (plus Dockerfile and .dockerignore) with real tools, installing
# what is missing: promtool from Debian's `prometheus` package, and jsonschema, PyYAML and
# kubernetes-validate from PyPI into k8s/tests/.venv.
#
#   k8s/tests/run.sh
#
# (a) values-<region>.yaml over values.yaml against values.schema.json (jsonschema), and every
#     deliberately bad document in bad-values/ rejected;
# (b) the chart rendered per region without helm (render.py), every manifest validated against the
#     Kubernetes OpenAPI schemas (kubernetes-validate --strict), structural checks, the ConfigMap's
#     homeport.toml parsed (tomllib), compared with config/<region>.toml and fed to homeport itself;
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
# Kubernetes version whose schemas the manifests are validated against (the chart needs >= 1.30
# for the preStop sleep action; kubernetes-validate 1.37 ships schemas from 1.25 to 1.37).
kube_version="1.30.0"

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

echo "== (b) chart rendered per region, Kubernetes schemas, config"
for region in "${regions[@]}"; do
    check "render $region" checks render "$region" "$out"
    check "kubernetes-validate --strict $region (Kubernetes $kube_version)" \
        kubernetes-validate --strict --kubernetes-version "$kube_version" "$out/$region.yaml"
    check "manifests $region: sidecar, security, probes, drain, secrets" checks manifests "$region" "$out"
    check "configmap $region: homeport.toml" checks configmap "$region" "$out"
    check "homeport check accepts the $region config" checks homeport-accepts "$region" "$out"
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
