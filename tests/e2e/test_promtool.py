"""`promtool check config` on the Prometheus config the end-to-end stack runs with and on every
scrape config shipped in the documentation. (The rule files themselves are checked and unit
tested by tests/deploy/test_alerts.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import Stack
from tests.e2e.stack import REPO, docs_yaml_blocks, shipped_alerts
from tests.helpers import require_binary

_DOC_FILES = sorted([*(REPO / "docs").glob("*.md"), *REPO.glob("*.md")])
_DEPLOY_FILES = sorted(p for p in (REPO / "deploy").rglob("*.y*ml") if "scrape_configs:" in p.read_text())


def _documented_scrape_configs() -> list[tuple[str, str]]:
    """(where, YAML) of every ```yaml block of the README and docs/ holding a `scrape_configs`,
    and of every YAML file under deploy/ that is a Prometheus config."""
    found = []
    for i, (path, block) in enumerate(docs_yaml_blocks("scrape_configs:", _DOC_FILES)):
        found.append((f"{path.relative_to(REPO)}#{i}", block))
    found += [(str(path.relative_to(REPO)), path.read_text()) for path in _DEPLOY_FILES]
    return found


_SCRAPE_CONFIGS = _documented_scrape_configs()


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_docs_ship_both_scrape_configs() -> None:
    """The scheduled and the multi-target config of README.md are among those checked."""
    configs = [yaml.safe_load(text) for where, text in _SCRAPE_CONFIGS if "README.md" in where]
    paths = {job.get("metrics_path", "/metrics") for config in configs for job in config["scrape_configs"]}
    assert paths == {"/metrics", "/probe"}


@pytest.mark.parametrize(("where", "text"), _SCRAPE_CONFIGS, ids=[where for where, _ in _SCRAPE_CONFIGS])
def test_shipped_scrape_config_passes_promtool(where: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    result = _check_config(path)
    assert result.returncode == 0, f"{where}:\n{result.stdout}{result.stderr}"
    assert "SUCCESS" in result.stdout + result.stderr


def test_e2e_prometheus_config_passes_promtool(stack: Stack) -> None:
    """The config the stack runs, rule file included (check config checks rule_files too)."""
    result = _check_config(stack.work / "prometheus.yml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS: 1 rule files found" in output, output
    assert f"SUCCESS: {len(shipped_alerts())} rules found" in output, output


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    """The check above can fail: a relabel rule with an invalid action is refused."""
    path = tmp_path / "prometheus.yml"
    path.write_text(
        yaml.safe_dump(
            {"scrape_configs": [{"job_name": "x", "relabel_configs": [{"action": "nonsense"}]}]},
        )
    )
    assert _check_config(path).returncode != 0
