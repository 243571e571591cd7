"""Mail-security posture (issue 14), end to end: a real Prometheus scrapes a real exporter whose
posture checks (mx_hygiene, mta_sts, tls_rpt, fcrdns, dnsbl) look at mail domains served by a real
DNSSEC world (nsd + validating unbound, tests/servers/dnssec.py: PTR records, blocklist zones),
MTA-STS policies over real HTTPS on port 443 (tests/servers/https_server.py, trusted through
posture.ca_file) and aiosmtpd STARTTLS on 127.0.0.1 and on 127.0.0.3 (a relay whose PTR does not
confirm and whose outbound address is listed); beside them a server whose intermediate
certificate expires before its leaf. The dashboard's "Mail
security posture" row returns data for every query built on a check that runs, in scheduled and
multi-target (/probe) mode, and the posture alerts fire for the broken domains only.

Its own stack, as test_fallback.py's, with the shipped rules' `for:` scaled as in conftest.py.

Not covered here yet: the panels and alerts built on DANE and DNSSEC series
(tests/deploy/contract.py PLANNED): no check serves them on this branch. Their queries are run
and must be empty; once a check lands and its names move to METRICS, the same test requires
their data and this stack has to enable the check (the DNSSEC lab already serves the zones).
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtp_exporter.config.posture import CHECKS, NOT_IMPLEMENTED
from tests.deploy.contract import METRICS, PLANNED, metric_names
from tests.e2e.conftest import FOR_SCALE, SCALED_THRESHOLDS, SCHEDULED_JOB, SCRAPE_INTERVAL
from tests.e2e.stack import (
    POSTURE_PANEL_IDS,
    RULES,
    Exporter,
    PanelQuery,
    Prometheus,
    grafana_value,
    interpolate,
    panel_queries,
    rules_with_short_for,
    variables,
    wait_until,
)
from tests.helpers import require_binary
from tests.probe.test_tls_chain import _hierarchy
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dnssec import DnssecLab
from tests.servers.https_server import HttpsServer, Page
from tests.servers.tls import TestCA

PROBE_JOB = "smtp-probe-posture"
MODULE = "mx_posture"
RELAY_MODULE = "mx_reputation"
RELAY = "relay.example.test"  # its MX mx-relay.example.test on 127.0.0.3
RELAY_HOST = "127.0.0.3"
OUTBOUND = "192.0.2.99"  # dnsbl.addresses: listed in dnsbl.test, an error answer in public.test
CHAIN_MODULE = "starttls_chain"
MX = "mx.example.test"  # the aiosmtpd server's name (its certificate's)
ALIAS = "mx-alias.example.test"  # the same server under a name its certificate lacks
BUILTINS = {"__range": "5m", "__range_s": "300", "__rate_interval": "4s", "__interval": "1s"}
RANGE_SECONDS = 10.0
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
DAY = datetime.timedelta(days=1)
# The checks this stack enables: every one that exists on this branch.
ENABLED = ("mx_hygiene", "mta_sts", "tls_rpt", "fcrdns", "dnsbl")
ZONES = ("dnsbl.test", "unhealthy.test", "public.test")

# Mail domains under example.test (signed): name -> (MX host, policy body or None for a 404).
DOMAINS: dict[str, tuple[str, bytes | None]] = {
    "good": (MX, b"version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 604800\n"),
    "uncovered": (MX, b"version: STSv1\nmode: enforce\nmx: other.example.test\nmax_age: 604800\n"),
    # The same fault in testing mode: reported, but senders deliver, so no alert.
    "testing": (MX, b"version: STSv1\nmode: testing\nmx: other.example.test\nmax_age: 604800\n"),
    # Covered by the wildcard, but the MX's certificate is for mx.example.test only.
    "certbad": (ALIAS, b"version: STSv1\nmode: enforce\nmx: *.example.test\nmax_age: 604800\n"),
    "unreachable": (MX, None),
    "changed": (MX, b"version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 604800\n"),
}
CHANGED_BODY = b"version: STSv1\nmode: enforce\nmx: mx.example.test\nmx: *.example.test\nmax_age: 86400\n"
PROBED = ("good", "uncovered")  # also through /probe


def domain(name: str) -> str:
    return f"{name}.example.test"


@dataclass(frozen=True, slots=True)
class PostureStack:
    prometheus: Prometheus
    exporter: Exporter
    https: HttpsServer
    chain_target: str


def _records(lab: DnssecLab, https: HttpsServer) -> None:
    lab.add(MX, "A", "127.0.0.1")
    lab.add(ALIAS, "A", "127.0.0.1")
    for name, (mx, _) in DOMAINS.items():
        lab.add(domain(name), "MX", f"10 {mx}.")
        lab.txt(f"_mta-sts.{domain(name)}", "v=STSv1; id=20261101")
        lab.add(f"mta-sts.{domain(name)}", "A", https.host)
        lab.txt(f"_smtp._tls.{domain(name)}", f"v=TLSRPTv1; rua=mailto:tlsrpt@{domain(name)}")
    # FCrDNS: 127.0.0.1 confirms (mx.example.test, also the banner name); 127.0.0.3 does not
    # (its PTR name has no address).
    lab.ptr("127.0.0.1", MX)
    lab.add(RELAY, "MX", "10 mx-relay.example.test.")
    lab.add("mx-relay.example.test", "A", RELAY_HOST)
    lab.ptr(RELAY_HOST, "gone.example.test")
    # DNSBL zones (unsigned, as most are): healthy, listing OUTBOUND with code 4; failing the
    # RFC 5782 self-test (127.0.0.2 not listed); answering OUTBOUND with Spamhaus' "public
    # resolver" error code.
    reversed_outbound = ".".join(reversed(OUTBOUND.split(".")))
    lab.zone("dnsbl.test.", signed=False)
    lab.add("2.0.0.127.dnsbl.test", "A", "127.0.0.2")
    lab.add(f"{reversed_outbound}.dnsbl.test", "A", "127.0.0.4")
    lab.txt(f"{reversed_outbound}.dnsbl.test", f"listed: https://dnsbl.test/{OUTBOUND}")
    lab.zone("unhealthy.test.", signed=False).add("5.0.0.127.unhealthy.test", "A", "127.0.0.2")
    lab.zone("public.test.", signed=False).add("2.0.0.127.public.test", "A", "127.0.0.2")
    lab.add(f"{reversed_outbound}.public.test", "A", "127.255.255.254")
    lab.reload()


def _exporter_config(
    lab: DnssecLab, ca: TestCA, port: int, relay_port: int, chain_root: str, chain_port: int
) -> dict[str, Any]:
    posture = {
        "interval": "1s",
        "ca_file": ca.ca_file,
        **{name: True for name in ENABLED if name != "dnsbl"},
        "dnsbl": {"zones": ["dnsbl.test"]},
    }

    def mx_module(port: int, posture: dict[str, Any]) -> dict[str, Any]:
        return {
            "mx": True,
            "ip_protocol": "ip4",
            "port": port,
            "starttls": "required",
            "timeout": "900ms",
            "ehlo": "probe.example.test",
            "tls_config": {"ca_file": ca.ca_file},
            "dns": {"nameservers": [lab.resolver.nameserver], "timeout": "500ms"},
            "posture": posture,
        }

    relay_posture = {
        "interval": "1s",
        "fcrdns": True,
        "dnsbl": {"zones": list(ZONES), "addresses": [OUTBOUND]},
    }
    return {
        "modules": {
            MODULE: mx_module(port, posture),
            RELAY_MODULE: mx_module(relay_port, relay_posture),
            CHAIN_MODULE: {
                "starttls": "required",
                "timeout": "900ms",
                "tls_config": {"ca_file": chain_root, "server_name": "localhost"},
            },
        },
        "targets": [
            *({"target": domain(name), "module": MODULE, "interval": "1s"} for name in DOMAINS),
            {"target": RELAY, "module": RELAY_MODULE, "interval": "1s"},
            {"target": f"127.0.0.1:{chain_port}", "module": CHAIN_MODULE, "interval": "1s"},
        ],
        "http_probe": {"allowed_targets": ["*.example.test"]},
    }


def _prometheus_config(exporter: str, rule_file: Path) -> dict[str, Any]:
    # README.md's multi-target relabelling, for the posture module.
    probe_job = {
        "job_name": PROBE_JOB,
        "metrics_path": "/probe",
        "params": {"module": [MODULE]},
        "scrape_interval": SCRAPE_INTERVAL,
        "scrape_timeout": SCRAPE_INTERVAL,
        "static_configs": [{"targets": [domain(name) for name in PROBED]}],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {"source_labels": ["__param_target"], "target_label": "target"},
            {"source_labels": ["__param_module"], "target_label": "module"},
            {"target_label": "__address__", "replacement": exporter},
        ],
    }
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "rule_files": [str(rule_file)],
        "scrape_configs": [
            {"job_name": SCHEDULED_JOB, "static_configs": [{"targets": [exporter]}]},
            probe_job,
        ],
    }


@pytest.fixture(scope="module")
def posture_stack(
    tmp_path_factory: pytest.TempPathFactory, tls_ca: TestCA, dnssec_lab: DnssecLab
) -> Iterator[PostureStack]:
    prometheus_binary = require_binary("prometheus")
    work: Path = tmp_path_factory.mktemp("e2e-posture")
    with contextlib.ExitStack() as stack:
        https = HttpsServer(tls_ca.issue(*(f"mta-sts.{domain(name)}" for name in DOMAINS))).start()
        stack.callback(https.stop)
        for name, (_, body) in DOMAINS.items():
            if body is not None:
                https.pages[f"mta-sts.{domain(name)}"] = Page(body=body)
        _records(dnssec_lab, https)
        server = AiosmtpdServer(starttls=tls_ca.issue(MX), hostname=MX).start()
        stack.callback(server.stop)
        relay = AiosmtpdServer(
            starttls=tls_ca.issue("mx-relay.example.test"), host=RELAY_HOST, hostname="mx-relay.example.test"
        ).start()
        stack.callback(relay.stop)
        chain_root, chain = _hierarchy(work, NOW + 7 * DAY)  # the intermediate: 7 days, the leaf: 60
        chain_server = AiosmtpdServer(starttls=chain).start()
        stack.callback(chain_server.stop)

        config = work / "smtp-exporter.yml"
        config.write_text(
            yaml.safe_dump(
                _exporter_config(dnssec_lab, tls_ca, server.port, relay.port, chain_root, chain_server.port)
            )
        )
        exporter = Exporter(config, work / "exporter.log")
        stack.callback(exporter.stop)
        rule_file = work / "rules.yml"
        rule_file.write_text(
            yaml.safe_dump(rules_with_short_for(FOR_SCALE, SCALED_THRESHOLDS), sort_keys=False)
        )
        prometheus_config = work / "prometheus.yml"
        prometheus_config.write_text(yaml.safe_dump(_prometheus_config(exporter.address, rule_file)))
        prometheus = Prometheus(prometheus_binary, prometheus_config, work / "tsdb", work / "prometheus.log")
        stack.callback(prometheus.stop)

        def fetched() -> int:
            return len(
                prometheus.query(f'smtp_mta_sts_policy_fetch_success{{target="{domain("changed")}"}} == 1')
            )

        wait_until(
            lambda: fetched() == 1 and len(prometheus.query(f'smtp_mx_records{{job="{PROBE_JOB}"}}')) == 2,
            "the posture series of both jobs in Prometheus",
            check=prometheus.check_running,
        )
        # The policy is edited, its TXT record's id is not: from now on the check reports it.
        https.pages[f"mta-sts.{domain('changed')}"] = Page(body=CHANGED_BODY)
        yield PostureStack(prometheus, exporter, https, chain_server.target)


# -- the dashboard row -----------------------------------------------------------------------


def _posture_queries() -> list[PanelQuery]:
    queries = [q for q in panel_queries() if q.panel_id in POSTURE_PANEL_IDS]
    assert queries
    return queries


def _planned(query: PanelQuery) -> bool:
    """Built on series that no check of this branch serves yet (PLANNED): DANE, DNSSEC."""
    names = metric_names(query.expr)
    assert names <= METRICS | PLANNED, query
    return bool(names & PLANNED)


def _run(
    stack: PostureStack, query: PanelQuery, selected: dict[str, list[str] | None]
) -> list[dict[str, Any]]:
    defined = variables()
    values = {name: grafana_value(defined[name], chosen) for name, chosen in selected.items()}
    expr = interpolate(query.expr, {**BUILTINS, **values})
    if query.instant:
        return stack.prometheus.query(expr)
    return stack.prometheus.query_range(expr, RANGE_SECONDS)


def test_this_stack_enables_every_posture_check_that_exists() -> None:
    """Fails when a check lands (leaves NOT_IMPLEMENTED) until this stack enables it."""
    assert set(ENABLED) == set(CHECKS) - set(NOT_IMPLEMENTED)


@pytest.mark.parametrize(
    ("job", "target"),
    [(SCHEDULED_JOB, None), (SCHEDULED_JOB, domain("uncovered")), (PROBE_JOB, None)],
    ids=["scheduled-all", "scheduled-one-domain", "probe-all"],
)
def test_every_posture_row_query_returns_data(
    posture_stack: PostureStack, job: str, target: str | None
) -> None:
    selected: dict[str, list[str] | None] = {
        "job": [job],
        "target": None if target is None else [target],
        "module": None,
    }
    empty, unexpected = [], []
    for query in _posture_queries():
        result = _run(posture_stack, query, selected)
        if _planned(query):
            if result:
                unexpected.append(f"{query.panel} {query.ref_id}: {result}")
        elif not result:
            empty.append(f"{query.panel} {query.ref_id}: {query.expr}")
        elif target is not None:
            assert {r["metric"].get("target") for r in result} == {target}, (query.panel, result)
    assert not empty, "posture queries without data:\n" + "\n".join(empty)
    assert not unexpected, "data for PLANNED series: move them to METRICS:\n" + "\n".join(unexpected)


def test_the_pending_panels_are_the_dane_ones() -> None:
    """What this e2e does not cover yet, named: the panels (and refIds) on PLANNED series."""
    pending = {(q.panel_id, q.ref_id) for q in _posture_queries() if _planned(q)}
    assert pending == {
        (201, "A"),
        (201, "B"),
        (201, "C"),
        (201, "D"),
        (202, "A"),
    }


def test_the_row_shows_coverage_mode_and_chain_expiry(posture_stack: PostureStack) -> None:
    """The values behind the cells, not only that there are some."""
    selected: dict[str, list[str] | None] = {"job": [SCHEDULED_JOB], "target": None, "module": None}
    by_ref = {(q.panel_id, q.ref_id): q for q in _posture_queries()}

    def cells(key: tuple[int, str], *labels: str) -> dict[tuple[str, ...], float]:
        return {
            tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
            for r in _run(posture_stack, by_ref[key], selected)
        }

    covered = cells((204, "A"), "target", "mx_host")
    assert covered[(domain("good"), MX)] == 1
    assert covered[(domain("uncovered"), MX)] == 0
    assert covered[(domain("certbad"), ALIAS)] == 1
    certificate = cells((204, "B"), "target", "mx_host")
    assert certificate[(domain("good"), MX)] == 1 and certificate[(domain("certbad"), ALIAS)] == 0
    modes = cells((203, "C"), "target", "mode")
    assert modes[(domain("good"), "enforce")] == 1 and modes[(domain("testing"), "testing")] == 1
    assert not [key for key in modes if key[0] == domain("unreachable")]  # no policy, no mode
    assert cells((203, "B"), "target")[(domain("unreachable"),)] == 0
    assert cells((203, "F"), "target")[(domain("good"),)] == 1
    chain = cells((207, "A"), "target")
    assert 6 * 86400 < chain[(posture_stack.chain_target,)] <= 7 * 86400
    assert chain[(domain("good"),)] > 14 * 86400  # the leaf alone, issued by the test CA
    dnsbl = cells((205, "A"), "target", "zone", "address", "state")
    assert {key for key in dnsbl if key[0] == RELAY} == {
        (RELAY, "dnsbl.test", OUTBOUND, "listed"),
        (RELAY, "dnsbl.test", RELAY_HOST, "not_listed"),
        (RELAY, "unhealthy.test", OUTBOUND, "zone_unhealthy"),
        (RELAY, "unhealthy.test", RELAY_HOST, "zone_unhealthy"),
        (RELAY, "public.test", OUTBOUND, "error"),
        (RELAY, "public.test", RELAY_HOST, "not_listed"),
    }
    assert (domain("good"), "dnsbl.test", "127.0.0.1", "not_listed") in dnsbl
    codes = cells((205, "B"), "target", "zone", "address")
    assert codes[(RELAY, "dnsbl.test", OUTBOUND)] == 4 and codes[(RELAY, "public.test", OUTBOUND)] == 254
    fcrdns = cells((206, "A"), "target")
    assert fcrdns[(domain("good"),)] == 1 and fcrdns[(RELAY,)] == 0
    banner = cells((206, "B"), "target")
    assert banner[(domain("good"),)] == 1 and banner[(RELAY,)] == 0


# -- the alerts ------------------------------------------------------------------------------

POSTURE_ALERTS = {
    rule["alert"]
    for group in yaml.safe_load(RULES.read_text())["groups"]
    if group["name"] == "smtp-posture"
    for rule in group["rules"]
}


# (alert, job, target, what about: the mx_host, zone, address and state labels it has, joined)
Key = tuple[str, str, str, str]
_DETAIL = ("mx_host", "zone", "address", "state")


def _expected(stack: PostureStack) -> set[Key]:
    """The alerts of the posture group that must fire, and nothing else of that group."""
    return {
        ("SMTPMTASTSMXNotCovered", SCHEDULED_JOB, domain("uncovered"), MX),
        ("SMTPMTASTSMXNotCovered", PROBE_JOB, domain("uncovered"), MX),
        ("SMTPMTASTSCertInvalid", SCHEDULED_JOB, domain("certbad"), ALIAS),
        ("SMTPMTASTSPolicyUnreachable", SCHEDULED_JOB, domain("unreachable"), ""),
        ("SMTPMTASTSPolicyChangedWithoutIdChange", SCHEDULED_JOB, domain("changed"), ""),
        ("SMTPCertificateChainExpiringSoon", SCHEDULED_JOB, stack.chain_target, ""),
        ("SMTPFCrDNSMismatch", SCHEDULED_JOB, RELAY, ""),
        ("SMTPDNSBLListed", SCHEDULED_JOB, RELAY, f"dnsbl.test {OUTBOUND}"),
        ("SMTPDNSBLZoneUnhealthy", SCHEDULED_JOB, RELAY, "unhealthy.test zone_unhealthy"),
        ("SMTPDNSBLZoneUnhealthy", SCHEDULED_JOB, RELAY, "public.test error"),
    }


def _posture_alerts(stack: PostureStack, state: str) -> dict[Key, dict[str, Any]]:
    found = {}
    for alert in stack.prometheus.alerts():
        labels = alert["labels"]
        if alert["state"] == state and labels["alertname"] in POSTURE_ALERTS:
            detail = " ".join(labels[name] for name in _DETAIL if labels.get(name))
            key = (labels["alertname"], labels["job"], labels["target"], detail)
            assert key not in found, alert
            found[key] = alert
    return found


def test_the_posture_alerts_fire_for_the_broken_domains_only(posture_stack: PostureStack) -> None:
    assert {key[0] for key in _expected(posture_stack)} <= POSTURE_ALERTS
    expected = _expected(posture_stack)
    wait_until(
        lambda: set(_posture_alerts(posture_stack, "firing")) == expected,
        lambda: f"firing {sorted(_posture_alerts(posture_stack, 'firing'))}, expected {sorted(expected)}",
        timeout=90,
        check=posture_stack.prometheus.check_running,
    )
    assert not _posture_alerts(posture_stack, "pending")
    firing = _posture_alerts(posture_stack, "firing")
    uncovered = firing[("SMTPMTASTSMXNotCovered", SCHEDULED_JOB, domain("uncovered"), MX)]
    assert uncovered["labels"]["severity"] == "critical" and uncovered["labels"]["module"] == MODULE
    assert uncovered["annotations"]["summary"] == (
        f"MX {MX} of {domain('uncovered')} is not covered by its MTA-STS policy (enforce)"
    )
    certificate = firing[("SMTPMTASTSCertInvalid", SCHEDULED_JOB, domain("certbad"), ALIAS)]
    assert certificate["labels"]["severity"] == "critical"
    unreachable = firing[("SMTPMTASTSPolicyUnreachable", SCHEDULED_JOB, domain("unreachable"), "")]
    assert (
        f"https://mta-sts.{domain('unreachable')}/.well-known/mta-sts.txt"
        in (unreachable["annotations"]["description"])
    )
    listed = firing[("SMTPDNSBLListed", SCHEDULED_JOB, RELAY, f"dnsbl.test {OUTBOUND}")]
    assert listed["annotations"]["summary"] == f"{OUTBOUND} is listed in dnsbl.test"
    assert "(answer 127.0.0.4)" in listed["annotations"]["description"]
    public = firing[("SMTPDNSBLZoneUnhealthy", SCHEDULED_JOB, RELAY, "public.test error")]
    assert "answers with error codes" in public["annotations"]["description"]
    unhealthy = firing[("SMTPDNSBLZoneUnhealthy", SCHEDULED_JOB, RELAY, "unhealthy.test zone_unhealthy")]
    assert "fails its self-test" in unhealthy["annotations"]["description"]
    chain = firing[("SMTPCertificateChainExpiringSoon", SCHEDULED_JOB, posture_stack.chain_target, "")]
    assert 6 * 86400 < float(chain["value"]) <= 7 * 86400
    assert "expires in 6d " in chain["annotations"]["description"]
    for rule in posture_stack.prometheus.rules():
        assert rule["health"] == "ok", rule
