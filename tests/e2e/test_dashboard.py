"""Every query of the shipped Grafana dashboard, its template variables substituted as Grafana
substitutes them, returns data from a real Prometheus scraping a real exporter."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.conftest import PROBE_JOB, PROBE_ONLY_EXPORTER_JOB, SCHEDULED_JOB, STATIC_PROBE_JOB, Stack
from tests.e2e.stack import (
    POSTURE_PANEL_IDS,
    PanelQuery,
    grafana_value,
    interpolate,
    panel_queries,
    variables,
)

# Grafana's built-in variables for a dashboard showing the last 5 minutes of a 1 s scrape
# interval: $__rate_interval is max(4 x scrape interval, $__interval + scrape interval).
BUILTINS = {"__range": "5m", "__range_s": "300", "__rate_interval": "4s", "__interval": "1s"}
RANGE_SECONDS = 30.0  # range queries cover the last 30 s (the stack has been up at least this long)

# Built on counters and histograms across probes, or on the exporter's own metrics: empty in
# multi-target mode, as docs/deploy.md says (the exporter's own metrics come from its /metrics job).
SCHEDULED_ONLY = re.compile(
    r"smtp_probes_total|smtp_probe_failures_total|_distribution_seconds|smtp_exporter_"
)
EXPORTER_OWN = re.compile(r"smtp_exporter_")
# The Delivery row's series exist only for modules with `delivery`: shown with data by the own
# stack of test_delivery.py (a real Postfix and Dovecot), not this one.
DELIVERY_ONLY = re.compile(r"smtp_delivery_")


def _run(stack: Stack, query: PanelQuery, values: dict[str, str]) -> list[dict[str, Any]]:
    expr = interpolate(query.expr, {**BUILTINS, **values})
    if query.instant:
        return stack.prometheus.query(expr)
    return stack.prometheus.query_range(expr, RANGE_SECONDS)


def _selections(selected: dict[str, list[str] | None]) -> dict[str, str]:
    """What Grafana substitutes for each variable, given the values selected (None: All)."""
    defined = variables()
    return {name: grafana_value(defined[name], values) for name, values in selected.items()}


def _repeat_values(stack: Stack, query: PanelQuery, selected: dict[str, list[str] | None]) -> list[str]:
    assert query.repeat is not None
    chosen = selected[query.repeat]
    if chosen is not None:
        return chosen
    return _variable_values(stack, query.repeat, selected)


def _variable_values(stack: Stack, name: str, selected: dict[str, list[str] | None]) -> list[str]:
    """Evaluate the variable's `label_values(selector, label)` query as Grafana does."""
    defined = variables()
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", defined[name]["definition"])
    assert match, defined[name]["definition"]
    selector = interpolate(match.group(1), {n: grafana_value(defined[n], v) for n, v in selected.items()})
    return stack.prometheus.label_values(match.group(2), selector)


def _check_every_query(
    stack: Stack, selected: dict[str, list[str] | None], *, allow_empty: re.Pattern[str] | None = None
) -> int:
    """Run every query; return how many returned data. Fails listing each empty query."""
    empty = []
    answered = 0
    for query in panel_queries():
        if query.panel_id in POSTURE_PANEL_IDS:
            continue  # tests/e2e/test_posture.py: a stack with posture checks, DNS and HTTPS
        base = _selections(selected)
        runs = [base]
        if query.repeat is not None:  # one copy of the panel per value (All: every value found)
            defined = variables()[query.repeat]
            runs = [
                {**base, query.repeat: grafana_value(defined, [v])}
                for v in _repeat_values(stack, query, selected)
            ]
            assert runs, f"{query.panel}: no value to repeat over"
        for values in runs:
            if _run(stack, query, values):
                answered += 1
            elif DELIVERY_ONLY.search(query.expr):
                continue
            elif allow_empty is None or not allow_empty.search(query.expr):
                empty.append(
                    f"{query.panel} {query.ref_id}: {interpolate(query.expr, {**BUILTINS, **values})}"
                )
    assert not empty, "queries without data:\n" + "\n".join(empty)
    return answered


def test_there_are_queries_and_a_repeated_panel() -> None:
    queries = panel_queries()
    assert len(queries) >= 20
    assert any(q.repeat == "target" for q in queries)
    assert any(q.instant for q in queries) and any(not q.instant for q in queries)


def test_template_variables_find_every_job_target_and_module(stack: Stack) -> None:
    everything: dict[str, list[str] | None] = {"job": None, "target": None, "module": None}
    assert set(_variable_values(stack, "job", everything)) == {
        SCHEDULED_JOB,
        PROBE_JOB,
        STATIC_PROBE_JOB,
        PROBE_ONLY_EXPORTER_JOB,
    }
    scheduled: dict[str, list[str] | None] = {"job": [SCHEDULED_JOB], "target": None, "module": None}
    assert set(_variable_values(stack, "target", scheduled)) == {t.target for t in stack.scheduled.values()}
    assert set(_variable_values(stack, "module", scheduled)) == {t.module for t in stack.scheduled.values()}
    # Multi-target mode: the Probe's relabelings make `target` and `module` labels too.
    probe: dict[str, list[str] | None] = {"job": [PROBE_JOB], "target": None, "module": None}
    assert set(_variable_values(stack, "target", probe)) == set(stack.probed.values())
    assert _variable_values(stack, "module", probe) == ["smtp_handshake"]
    # README.md's plain scrape config relabels the same way.
    static: dict[str, list[str] | None] = {"job": [STATIC_PROBE_JOB], "target": None, "module": None}
    assert set(_variable_values(stack, "target", static)) == set(stack.static_probed.values())
    assert _variable_values(stack, "module", static) == ["smtp_handshake"]


def test_every_query_returns_data_with_all_selected(stack: Stack) -> None:
    _check_every_query(stack, {"job": None, "target": None, "module": None})


def test_every_query_returns_data_with_values_selected(stack: Stack) -> None:
    """Several targets and modules picked by hand: Grafana escapes each value for a regex
    (127\\.0\\.0\\.1:...) and joins them with `|`."""
    chosen = [stack.scheduled[n] for n in ("healthy", "tempfail", "starttls")]
    _check_every_query(
        stack,
        {
            "job": [SCHEDULED_JOB],
            "target": [t.target for t in chosen],
            "module": sorted({t.module for t in chosen}),
        },
    )


@pytest.mark.parametrize("job", [PROBE_JOB, STATIC_PROBE_JOB])
def test_multi_target_queries_return_data(stack: Stack, job: str) -> None:
    """The panels built on the latest probe work in multi-target mode; only those on
    counters, histograms and the exporter's own metrics are empty (docs/deploy.md)."""
    answered = _check_every_query(
        stack, {"job": [job], "target": None, "module": None}, allow_empty=SCHEDULED_ONLY
    )
    assert answered >= len(
        [
            q
            for q in panel_queries()
            if not SCHEDULED_ONLY.search(q.expr)
            and not DELIVERY_ONLY.search(q.expr)
            and q.panel_id not in POSTURE_PANEL_IDS
        ]
    )


def test_overview_table_shows_each_target_and_its_failure(stack: Stack) -> None:
    """The overview table's rows: every scheduled target, and the failing ones with the
    phase and reason of their failure."""
    values = _selections({"job": [SCHEDULED_JOB], "target": None, "module": None})
    queries = {q.ref_id: q for q in panel_queries() if q.panel.startswith("Targets (")}
    status = _run(stack, queries["A"], values)
    assert {r["metric"]["target"] for r in status} == {t.target for t in stack.scheduled.values()}
    failures = {
        (r["metric"]["target"], r["metric"]["phase"], r["metric"]["reason"])
        for r in _run(stack, queries["B"], values)
    }
    assert (stack.target("tempfail"), "rcpt", "reply_temporary") in failures
    assert (stack.target("rejected"), "rcpt", "reply_permanent") in failures
    assert (stack.target("plaintext"), "starttls", "starttls_not_offered") in failures
    assert not any(target == stack.target("healthy") for target, _, _ in failures)
    tls = {r["metric"]["target"] for r in _run(stack, queries["D"], values)}
    assert stack.target("starttls") in tls and stack.target("healthy") not in tls


def test_a_multi_target_only_exporters_job_shows_its_health(stack: Stack) -> None:
    """The job scraping the /metrics of an exporter without scheduled targets is listed by the
    job variable (above), and picking it fills the exporter health row."""
    # The premise: that job has no probe results, so only the exporter's own metrics can list it.
    assert not stack.prometheus.query(f'smtp_probe_success{{job="{PROBE_ONLY_EXPORTER_JOB}"}}')
    selected: dict[str, list[str] | None] = {"job": [PROBE_ONLY_EXPORTER_JOB], "target": None, "module": None}
    health = [q for q in panel_queries() if EXPORTER_OWN.search(q.expr)]
    assert health
    empty = [f"{q.panel} {q.ref_id}" for q in health if not _run(stack, q, _selections(selected))]
    assert not empty, f"exporter health queries without data for {PROBE_ONLY_EXPORTER_JOB}: {empty}"
