"""Shared pieces of the deployment-artifact tests: paths, tools, rendered overlays.

The linters and validators are real binaries (requirements-ci.txt installs them). A missing
one skips its tests, or fails them when SMTP_EXPORTER_REQUIRE_ALL=1 (as in CI).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = {
    "base": DEPLOY / "base",
    "sharded": DEPLOY / "overlays" / "sharded",
    "multi-target": DEPLOY / "overlays" / "multi-target",
}
RULES = ROOT / "alerts" / "smtp-exporter.rules.yml"
DASHBOARD = ROOT / "grafana" / "smtp-exporter.json"
CRD_GROUP = "monitoring.coreos.com/v1"


def require_tool(name: str) -> str:
    """The path of tool `name` on PATH; skip (or fail under SMTP_EXPORTER_REQUIRE_ALL=1) without it."""
    if name == "promtool":
        from tests.helpers import require_binary

        return require_binary(name)
    found = shutil.which(name)
    if found is not None:
        return found
    skip_or_fail(f"{name!r} not found on PATH (pip install -r requirements-ci.txt)")


def run(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool; on an unexpected exit status, fail with its output."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def checkov_passes(path: Path, framework: str) -> None:
    """Assert that checkov finds no failed check in one file."""
    checkov = require_tool("checkov")
    result = run(
        checkov,
        "-f",
        str(path),
        "--framework",
        framework,
        "--compact",
        "--quiet",
        "--skip-download",
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Failed checks: 0" in result.stdout


_rendered: dict[str, str] = {}


def render(overlay: str) -> str:
    """`kubectl kustomize` of one overlay (cached: every test sees the same rendering)."""
    if overlay not in _rendered:
        kubectl = require_tool("kubectl")
        _rendered[overlay] = run(kubectl, "kustomize", str(OVERLAYS[overlay])).stdout
    return _rendered[overlay]


def documents(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render(overlay)) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
