"""Mail-security posture (issue 14), end to end: a real Prometheus scrapes a real exporter whose
posture checks (every one: dane, mx_hygiene, mta_sts, tls_rpt, fcrdns, dnsbl) look at mail domains
served by a real DNSSEC world (nsd + validating unbound, tests/servers/dnssec.py: signed MX, A and
TLSA records computed from the STARTTLS server's real certificate, one TLSA RRset whose signature
is corrupted, PTR records, blocklist zones),
MTA-STS policies over real HTTPS on port 443 (tests/servers/https_server.py, trusted through
posture.ca_file) and aiosmtpd STARTTLS on 127.0.0.1 and on 127.0.0.3 (a relay whose PTR does not
confirm and whose outbound address is listed); beside them a server whose intermediate
certificate expires before its leaf. The dashboard's "Mail
security posture" row returns data for every query built on a check that runs, in scheduled and
multi-target (/probe) mode, and the posture alerts fire for the broken domains only.

Its own stack, as test_fallback.py's, with the shipped rules' `for:` scaled by POSTURE_FOR_SCALE.
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

from smtp_exporter.config.posture import CHECKS
from tests.deploy.contract import METRICS, metric_names
from tests.e2e.conftest import SCALED_THRESHOLDS, SCHEDULED_JOB, SCRAPE_INTERVAL
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
from tests.posture.dane_world import association, other_key_spki_sha256
from tests.probe.test_tls_chain import _hierarchy
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dnssec import DnssecLab
from tests.servers.https_server import HttpsServer, Page
from tests.servers.tls import TestCA

PROBE_JOB = "smtp-probe-posture"
MODULE = "mx_posture"
RELAY_MODULE = "mx_reputation"
DANE_MODULE = "mx_dane"  # dane only, on the same server and port as MODULE
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
# The checks this stack enables: every one there is.
ENABLED = ("dane", "mx_hygiene", "mta_sts", "tls_rpt", "fcrdns", "dnsbl")
# The posture checks run every second, not every 5 minutes: a `for:` of 1 h (the info alert
# SMTPDANERolloverNotReady) waits 15 s, 30 m 8 s, 5 m 1 s; the whole suite's budget is tight.
POSTURE_FOR_SCALE = 1 / 240
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
# MX mx.example.test (every DOMAINS entry but certbad) publishes a TLSA RRset ready for a
# rollover: 3 1 1 of the key in use beside 3 1 1 of the next one, so DANE is valid and quiet.
# The DANE domains (module DANE_MODULE, MX mx.<domain>): whether their single TLSA 3 1 1 record
# is for the key the server presents; dane-bogus' TLSA RRset has a corrupted signature.
DANE_DOMAINS = {
    "dane-single": True,  # valid, but one record: not ready for a rollover
    "dane-invalid": False,  # a stale record only: no usable record matches
    "dane-bogus": True,  # would match, but the answer is bogus: senders defer (lookup_failed)
}
BOGUS = "dane-bogus"
NEXT_KEY = other_key_spki_sha256()
STALE_KEY = other_key_spki_sha256()


def domain(name: str) -> str:
    return f"{name}.example.test"


def dane_mx(name: str) -> str:
    return f"mx.{domain(name)}"


@dataclass(frozen=True, slots=True)
class PostureStack:
    prometheus: Prometheus
    exporter: Exporter
    https: HttpsServer
    chain_target: str


def _records(lab: DnssecLab, https: HttpsServer, server: AiosmtpdServer, leaf_spki_sha256: bytes) -> None:
    lab.add(MX, "A", "127.0.0.1")
    # DANE (RFC 7672): TLSA at _<port>._tcp.<MX host>, the port as probed.
    lab.tlsa(f"_{server.port}._tcp.{MX}", 3, 1, 1, leaf_spki_sha256)
    lab.tlsa(f"_{server.port}._tcp.{MX}", 3, 1, 1, NEXT_KEY)
    for name, current in DANE_DOMAINS.items():
        lab.add(domain(name), "MX", f"10 {dane_mx(name)}.")
        lab.add(dane_mx(name), "A", "127.0.0.1")
        owner = f"_{server.port}._tcp.{dane_mx(name)}"
        lab.tlsa(owner, 3, 1, 1, leaf_spki_sha256 if current else STALE_KEY)
        if name == BOGUS:
            lab.corrupt(owner, "TLSA")
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
            DANE_MODULE: mx_module(port, {"interval": "1s", "dane": True}),
            CHAIN_MODULE: {
                "starttls": "required",
                "timeout": "900ms",
                "tls_config": {"ca_file": chain_root, "server_name": "localhost"},
            },
        },
        "targets": [
            *({"target": domain(name), "module": MODULE, "interval": "1s"} for name in DOMAINS),
            {"target": RELAY, "module": RELAY_MODULE, "interval": "1s"},
            *({"target": domain(name), "module": DANE_MODULE, "interval": "1s"} for name in DANE_DOMAINS),
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
        # One certificate for every MX name on this server, so the probe's own verification
        # passes for the DANE domains' MX hosts too (usage 3 ignores names anyway).
        certificate = tls_ca.issue(MX, *(dane_mx(name) for name in DANE_DOMAINS))
        server = AiosmtpdServer(starttls=certificate, hostname=MX).start()
        stack.callback(server.stop)
        _records(dnssec_lab, https, server, association(certificate.certificate, 1, 1))
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
            yaml.safe_dump(rules_with_short_for(POSTURE_FOR_SCALE, SCALED_THRESHOLDS), sort_keys=False)
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
            lambda: (
                fetched() == 1
                and len(prometheus.query(f'smtp_mx_records{{job="{PROBE_JOB}"}}')) == 2
                and len(prometheus.query(f'smtp_dane_state{{module="{DANE_MODULE}"}} == 1'))
                == len(DANE_DOMAINS)
            ),
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


def _contract(query: PanelQuery) -> None:
    names = metric_names(query.expr)
    assert names and names <= METRICS, query


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
    """Fails when a check is added until this stack enables it (and the row's test covers it)."""
    assert set(ENABLED) == set(CHECKS)


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
    empty = []
    for query in _posture_queries():
        _contract(query)
        result = _run(posture_stack, query, selected)
        if not result:
            empty.append(f"{query.panel} {query.ref_id}: {query.expr}")
        elif target is not None:
            assert {r["metric"].get("target") for r in result} == {target}, (query.panel, result)
    assert not empty, "posture queries without data:\n" + "\n".join(empty)


def test_the_row_shows_dane_coverage_mode_and_chain_expiry(posture_stack: PostureStack) -> None:
    """The values behind the cells, not only that there are some."""
    selected: dict[str, list[str] | None] = {"job": [SCHEDULED_JOB], "target": None, "module": None}
    by_ref = {(q.panel_id, q.ref_id): q for q in _posture_queries()}

    def cells(key: tuple[int, str], *labels: str) -> dict[tuple[str, ...], float]:
        return {
            tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
            for r in _run(posture_stack, by_ref[key], selected)
        }

    dane = cells((201, "A"), "target", "mx_host", "state")
    assert {key for key in dane if key[0] in {domain(n) for n in (*DANE_DOMAINS, "good", "certbad")}} == {
        (domain("good"), MX, "valid"),
        (domain("certbad"), ALIAS, "no_tlsa"),
        (domain("dane-single"), dane_mx("dane-single"), "valid"),
        (domain("dane-invalid"), dane_mx("dane-invalid"), "invalid"),
        (domain(BOGUS), dane_mx(BOGUS), "lookup_failed"),
    }
    records = cells((201, "B"), "target", "mx_host")
    assert (
        records[(domain("good"), MX)] == 2 and records[(domain("dane-single"), dane_mx("dane-single"))] == 1
    )
    rollover = cells((201, "C"), "target", "mx_host")
    assert (
        rollover[(domain("good"), MX)] == 1 and rollover[(domain("dane-single"), dane_mx("dane-single"))] == 0
    )
    assert set(cells((201, "D"), "target").values()) == {1}  # the lab's unbound validates
    matches = cells((202, "A"), "target", "mx_host", "index", "usage", "selector", "matching_type")
    matched = {key[2]: value for key, value in matches.items() if key[0] == domain("good")}
    assert sorted(matched.values()) == [0, 1]  # the key in use matches, the next one does not yet
    assert matches[(domain("dane-single"), dane_mx("dane-single"), "0", "3", "1", "1")] == 1
    assert matches[(domain("dane-invalid"), dane_mx("dane-invalid"), "0", "3", "1", "1")] == 0
    assert not [key for key in matches if key[0] == domain(BOGUS)]  # bogus: no records to judge
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
        ("SMTPDANERolloverNotReady", SCHEDULED_JOB, domain("dane-single"), dane_mx("dane-single")),
        ("SMTPDANEInvalid", SCHEDULED_JOB, domain("dane-invalid"), f"{dane_mx('dane-invalid')} invalid"),
        ("SMTPDANELookupFailed", SCHEDULED_JOB, domain(BOGUS), f"{dane_mx(BOGUS)} lookup_failed"),
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
    invalid = firing[
        ("SMTPDANEInvalid", SCHEDULED_JOB, domain("dane-invalid"), f"{dane_mx('dane-invalid')} invalid")
    ]
    assert invalid["labels"]["severity"] == "critical" and invalid["labels"]["module"] == DANE_MODULE
    assert invalid["annotations"]["summary"] == (
        f"DANE fails for {domain('dane-invalid')} MX {dane_mx('dane-invalid')}: no TLSA record matches"
    )
    bogus = firing[("SMTPDANELookupFailed", SCHEDULED_JOB, domain(BOGUS), f"{dane_mx(BOGUS)} lookup_failed")]
    assert bogus["labels"]["severity"] == "critical"
    single = firing[
        ("SMTPDANERolloverNotReady", SCHEDULED_JOB, domain("dane-single"), dane_mx("dane-single"))
    ]
    assert single["labels"]["severity"] == "info"
    for rule in posture_stack.prometheus.rules():
        assert rule["health"] == "ok", rule
