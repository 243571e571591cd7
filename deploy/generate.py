"""Write deploy/base/prometheusrule.yaml from alerts/smtp-exporter.rules.yml.

The rule file is the one source of truth; the PrometheusRule embeds its groups unchanged.
Run `python3 deploy/generate.py` after editing the rules (`--check` exits 1 when the
PrometheusRule is out of date, which tests/deploy also checks).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "smtp-exporter.rules.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from alerts/smtp-exporter.rules.yml by `python3 deploy/generate.py`: edit the rule
# file, not this one. The `release` label is what kube-prometheus-stack's Prometheus selects
# PrometheusRules by (set it to your Helm release name; docs/deploy.md).
"""


class _Dumper(yaml.SafeDumper):
    """Block scalars for multi-line strings, so expressions stay readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def render() -> str:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "smtp-exporter",
            "labels": {"app.kubernetes.io/name": "smtp-exporter", "release": "kube-prometheus-stack"},
        },
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:] == ["--check"]:
        if not PROMETHEUS_RULE.exists() or PROMETHEUS_RULE.read_text() != text:
            print(f"{PROMETHEUS_RULE.relative_to(ROOT)} is out of date: run python3 deploy/generate.py")
            return 1
        return 0
    PROMETHEUS_RULE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
