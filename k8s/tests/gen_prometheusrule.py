#!/usr/bin/env python3
"""Print k8s/monitoring/prometheus-rules.yaml: the plain rule file's groups in a PrometheusRule.

  k8s/tests/.venv/bin/python k8s/tests/gen_prometheusrule.py > k8s/monitoring/prometheus-rules.yaml

k8s/tests/run.sh checks that the committed file holds exactly the plain file's groups.
"""
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
HEADER = """\
# GENERATED from rules/homeport.rules.yml by k8s/tests/gen_prometheusrule.py: edit that file and
# regenerate. The Prometheus Operator loads it when its ruleSelector matches these labels
# (kube-prometheus-stack selects `release: <its release name>` by default; adjust to yours).
"""


class Dumper(yaml.SafeDumper):
    pass


def str_presenter(dumper, data):
    # Multi-line expressions stay readable as block scalars.
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


Dumper.add_representer(str, str_presenter)


def prometheus_rule(groups):
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "homeport",
            "labels": {"app.kubernetes.io/name": "homeport", "release": "kube-prometheus-stack"},
            "annotations": {
                # After the Deployment and Service (wave 0); tolerate a missing CRD at dry run.
                "argocd.argoproj.io/sync-wave": "1",
                "argocd.argoproj.io/sync-options": "SkipDryRunOnMissingResource=true",
            },
        },
        "spec": {"groups": groups},
    }


def main():
    groups = yaml.safe_load((MONITORING / "rules" / "homeport.rules.yml").read_text())["groups"]
    body = yaml.dump(prometheus_rule(groups), Dumper=Dumper, sort_keys=False, width=1 << 30)
    print(HEADER + body, end="")


if __name__ == "__main__":
    main()
