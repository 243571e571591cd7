"""The moving parts of the end-to-end tests: the exporter and a real Prometheus as
subprocesses, Prometheus' HTTP API, and the shipped artefacts (rules, dashboard, docs, Probe)
rendered the way Prometheus, Grafana and prometheus-operator would use them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "grafana" / "smtp-exporter.json"
RULES = REPO / "alerts" / "smtp-exporter.rules.yml"
PROBE = REPO / "deploy" / "overlays" / "multi-target" / "probe.yaml"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
START_TIMEOUT = 30.0


class ProcessError(AssertionError):
    pass


class Process:
    """A subprocess in a process group of its own, its output in a log file."""

    def __init__(
        self, name: str, argv: list[str], log: Path, *, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_output(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first match of `pattern` in the output, waiting for it while the process runs."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.output())
            if match:
                return match
            if self.process.poll() is not None:
                raise ProcessError(f"{self.name} exited {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise ProcessError(f"{self.name}: no {pattern!r} within {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise ProcessError(f"{self.name} exited {self.process.returncode}:\n{self.output()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; only this process (its pid), never by name."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


def http(method: str, url: str, *, data: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Exporter(Process):
    """`python -m smtp_exporter --config.file F` on 127.0.0.1, a port the kernel chose."""

    def __init__(self, config: Path, log: Path) -> None:
        super().__init__(
            "smtp-exporter",
            [
                sys.executable,
                "-m",
                "smtp_exporter",
                "--config.file",
                str(config),
                "--web.listen-address",
                "127.0.0.1:0",
            ],
            log,
            env={"PYTHONPATH": str(REPO)},
        )
        match = self.wait_output(r"exporter started.*listen\W+127\.0\.0\.1:(\d+)")
        self.address = f"127.0.0.1:{match.group(1)}"

    def reload(self) -> tuple[int, str]:
        status, body = http("POST", f"http://{self.address}/-/reload")
        return status, body.decode()


class Prometheus(Process):
    """A real Prometheus on 127.0.0.1:0 (the port is read from its "Listening on" log line)."""

    def __init__(self, binary: str, config: Path, storage: Path, log: Path) -> None:
        super().__init__(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={storage}",
                "--web.listen-address=127.0.0.1:0",
                "--web.enable-lifecycle",
                "--log.level=info",
            ],
            log,
        )
        match = self.wait_output(r'msg="Listening on" address=127\.0\.0\.1:(\d+)')
        self.url = f"http://127.0.0.1:{match.group(1)}"
        wait_until(
            lambda: http("GET", f"{self.url}/-/ready")[0] == 200, "Prometheus ready", check=self.check_running
        )

    def api(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http("GET", f"{self.url}/api/v1/{path}?{query}")
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"/api/v1/{path} {params}: HTTP {status}: {answer}")
        if answer.get("warnings"):
            raise AssertionError(f"/api/v1/{path} {params}: warnings {answer['warnings']}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at the current time: the vector (or a scalar as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, seconds: float, step: str = "1s") -> list[dict[str, Any]]:
        end = time.time()
        data = self.api("query_range", query=expr, start=f"{end - seconds:.3f}", end=f"{end:.3f}", step=step)
        result: list[dict[str, Any]] = data["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = self.api(f"label/{label}/values", **{"match[]": match})
        return values

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active


def wait_until(
    predicate: Callable[[], object],
    what: str | Callable[[], str],
    *,
    timeout: float = 60.0,
    check: Callable[[], None] | None = None,
) -> None:
    """Poll `predicate` every 0.2 s until it is true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what() if callable(what) else what}"
            )
        time.sleep(0.2)


# -- the rules, as the test loads them ----------------------------------------------------------


def rules_with_short_for(scale: float, thresholds: Mapping[str, str]) -> dict[str, Any]:
    """The shipped rule file with every `for:` multiplied by `scale`, and the duration
    thresholds named in `thresholds` too; nothing else changes.

    The labels and annotations are the shipped ones, byte for byte, and so are the expressions
    but for `thresholds`: only the durations an alert must hold before firing shrink, in
    proportion to the probe interval (the thresholds assume the default 60 s interval, the test
    probes every second). `thresholds` maps an alert's name to the comparison in its expression
    whose number is a duration in seconds that a test cannot wait for in real time (a delivery
    slower than 5 minutes), e.g. `{"SMTPDeliverySlow": "> 300"}`: that number is multiplied by
    `scale` as well ("> 5"). The comparison must occur exactly once in the expression, so a
    change of the shipped rule fails here instead of loading it unscaled.
    """
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    unused = set(thresholds)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{max(1, round(parse_duration(rule['for']) * scale))}s"
            if rule.get("alert") in thresholds:
                rule["expr"] = scaled_threshold(rule["expr"], thresholds[rule["alert"]], scale)
                unused.discard(rule["alert"])
    assert not unused, f"no such alert in {RULES}: {sorted(unused)}"
    return rules


def scaled_threshold(expr: str, comparison: str, scale: float) -> str:
    """`expr` with `comparison` ("> 300": an operator and a number of seconds) scaled."""
    parsed = re.fullmatch(r"(==|!=|>=|<=|>|<) (\d+(?:\.\d+)?)", comparison)
    assert parsed, f"not an operator and a number: {comparison!r}"
    operator, seconds = parsed.groups()
    # The whole number only: "> 300" is not in "> 3000".
    scaled, count = re.subn(
        rf"{re.escape(comparison)}(?![\d.])", f"{operator} {float(seconds) * scale:g}", expr
    )
    assert count == 1, f"{comparison!r} not exactly once in {expr!r}"
    return scaled


def parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def shipped_alerts() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


# -- the dashboard, as Grafana would query it ---------------------------------------------------


# The "Mail security posture" row (issue 14): its queries need posture checks, DNS and HTTPS
# servers the shared stack does not run; tests/e2e/test_posture.py runs them on its own stack.
POSTURE_PANEL_IDS = range(200, 300)


@dataclass(frozen=True, slots=True)
class PanelQuery:
    panel: str
    panel_id: int
    ref_id: str
    expr: str
    instant: bool  # an instant query (tables, stats, bar gauges) rather than a range query
    repeat: str | None  # the variable the panel is repeated for, if any


def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, recursively (rows keep their panels inside when collapsed)."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def panel_queries() -> list[PanelQuery]:
    return [
        PanelQuery(
            panel=f"{panel['title']} (id {panel['id']})",
            panel_id=panel["id"],
            ref_id=target["refId"],
            expr=target["expr"],
            instant=bool(target.get("instant")) and not target.get("range"),
            repeat=panel.get("repeat"),
        )
        for panel in panels(dashboard())
        for target in panel.get("targets", [])
    ]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def grafana_regex_escape(value: str) -> str:
    """Grafana's prometheusSpecialRegexEscape: regex metacharacters escaped with a backslash
    that is itself escaped for the PromQL string literal."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def grafana_value(variable: dict[str, Any], selected: list[str] | None) -> str:
    """What Grafana puts in a PromQL query for a multi-value/All variable: `selected=None`
    means All (the variable's allValue), one value is escaped, several become `(a|b)`."""
    assert variable["multi"] or variable["includeAll"]
    if selected is None:
        all_value: str = variable["allValue"]
        return all_value
    escaped = [grafana_regex_escape(value) for value in selected]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interpolate(expr: str, values: Mapping[str, str]) -> str:
    """Replace `$name` and `${name}` (longest names first), then check none is left."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    leftover = re.findall(r"\$\{?\w+", expr)
    assert not leftover, f"variables left in {expr!r}: {leftover}"
    return expr


# -- scrape configs ---------------------------------------------------------------------------


def docs_yaml_blocks(containing: str, files: list[Path] = DOCS) -> list[tuple[Path, str]]:
    """The ```yaml blocks of Markdown `files` (docs/*.md) that contain `containing`."""
    blocks = []
    for path in files:
        for block in re.findall(r"^```ya?ml\n(.*?)^```", path.read_text(), flags=re.M | re.S):
            if containing in block:
                blocks.append((path, block))
    return blocks


def documented_probe_scrape_config() -> dict[str, Any]:
    """The multi-target scrape config of README.md, as documented."""
    configs: list[dict[str, Any]] = [
        job
        for path, block in docs_yaml_blocks("scrape_configs:")
        if path.name == "README.md"
        for job in yaml.safe_load(block)["scrape_configs"]
        if job.get("metrics_path") == "/probe"
    ]
    assert len(configs) == 1, configs
    return configs[0]


def probe_resource_scrape_config(probe: dict[str, Any], *, namespace: str) -> dict[str, Any]:
    """The scrape config prometheus-operator generates for a `Probe` with static targets.

    As in the operator's own golden tests (pkg/prometheus/promcfg_test.go): params.module,
    the namespace label, then the prober relabelings (target parameter, instance, address of
    the prober), then the Probe's own relabelingConfigs.
    """
    spec = probe["spec"]
    static = spec["targets"]["staticConfig"]
    prober = spec["prober"]
    relabelings: list[dict[str, Any]] = [
        {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
        {"target_label": "job", "replacement": spec["jobName"]},
        {"source_labels": ["__address__"], "target_label": "__param_target"},
        {"source_labels": ["__param_target"], "target_label": "instance"},
        {"target_label": "__address__", "replacement": prober["url"]},
    ]
    for relabeling in static.get("relabelingConfigs", []):
        relabelings.append({_snake(key): value for key, value in relabeling.items()})
    return {
        "job_name": f"probe/{namespace}/{probe['metadata']['name']}",
        "honor_timestamps": True,
        "scrape_interval": spec["interval"],
        "scrape_timeout": spec["scrapeTimeout"],
        "metrics_path": prober.get("path", "/probe"),
        "scheme": prober.get("scheme", "http"),
        "params": {"module": [spec["module"]]},
        "static_configs": [
            {
                "targets": list(static["static"]),
                "labels": {**static.get("labels", {}), "namespace": namespace},
            }
        ],
        "relabel_configs": relabelings,
    }


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def shipped_probe() -> dict[str, Any]:
    probe: dict[str, Any] = yaml.safe_load(PROBE.read_text())
    return probe
