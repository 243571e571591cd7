"""DANE (RFC 7672) through the prober, against the real DNSSEC lab (nsd serving signed zones, a
validating unbound) and aiosmtpd STARTTLS presenting a real root/intermediate/leaf chain; every
TLSA record is computed here from those certificates (tests/posture/dane_world.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from smtp_exporter.config.schema import DNSConfig, PostureConfig, StartTLS, TLSConfig
from smtp_exporter.metrics import Buckets, SeriesState
from smtp_exporter.metrics.exposition import render_probe_result
from smtp_exporter.model import CheckReport, ProbeResult
from smtp_exporter.posture import pkix
from smtp_exporter.posture.dane import STATES, warn_unless_validating
from smtp_exporter.posture.dns import PostureDNS
from smtp_exporter.posture.runner import run_posture
from smtp_exporter.presentation import format_text, probe_json
from smtp_exporter.probe import Prober
from tests.helpers import series_text
from tests.posture.dane_world import DAY, NOW, Chain, Hierarchy, association, other_key_spki_sha256
from tests.posture.test_mta_sts import _values
from tests.probe.common import compiled, describe, module
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dns_server import DnsServer
from tests.servers.dnssec import DnssecLab

Tlsa = tuple[int, int, int, bytes]
ZONE = "example.test"
COMBINATIONS = [(usage, selector, mtype) for usage in (3, 2) for selector in (0, 1) for mtype in (0, 1, 2)]
STALE = other_key_spki_sha256()
NEXT_KEY = other_key_spki_sha256()


def _combo(usage: int, selector: int, mtype: int) -> str:
    return f"c{usage}{selector}{mtype}"


# case -> (server, the TLSA records from its chain); each case is the mail domain <case>.example.test
# with one MX, mx.<case>.example.test, whose TLSA records sit at _<port>._tcp.mx.<case>.example.test.
CASES: dict[str, tuple[str, Callable[[Chain], list[Tlsa]]]] = {
    **{
        _combo(u, s, m): (
            "good",
            lambda c, u=u, s=s, m=m: [(u, s, m, association(c.leaf if u == 3 else c.root, s, m))],
        )
        for u, s, m in COMBINATIONS
    },
    "ta-mid": ("good", lambda c: [(2, 1, 1, association(c.intermediate, 1, 1))]),
    "stale": ("good", lambda c: [(3, 1, 1, association(c.leaf, 1, 1)), (3, 1, 1, STALE)]),
    "only-stale": ("good", lambda c: [(3, 1, 1, STALE)]),
    # A SHA-256 of 31 bytes (a digest cut short in the zone): present, unreadable, unusable.
    "short-digest": ("good", lambda c: [(3, 1, 1, STALE[:31])]),
    "short-beside-good": ("good", lambda c: [(3, 1, 1, STALE[:31]), (3, 1, 1, association(c.leaf, 1, 1))]),
    "pkix-only": (
        "good",
        lambda c: [(0, 0, 1, association(c.root, 0, 1)), (1, 1, 1, association(c.leaf, 1, 1))],
    ),
    "roll-ee-ta": (
        "good",
        lambda c: [(3, 1, 1, association(c.leaf, 1, 1)), (2, 0, 1, association(c.root, 0, 1))],
    ),
    "roll-ee-next": ("good", lambda c: [(3, 1, 1, association(c.leaf, 1, 1)), (3, 1, 1, NEXT_KEY)]),
    "ta-ta": (
        "good",
        lambda c: [(2, 0, 1, association(c.root, 0, 1)), (2, 1, 1, association(c.intermediate, 1, 1))],
    ),
    "ee-pkix": (
        "good",
        lambda c: [(3, 1, 1, association(c.leaf, 1, 1)), (1, 1, 1, association(c.leaf, 1, 1))],
    ),
    "notlsa": ("good", lambda c: []),
    "nodata": ("good", lambda c: []),
    "bogus": ("good", lambda c: [(3, 1, 1, association(c.leaf, 1, 1))]),
    "expired-ta": ("expired", lambda c: [(2, 0, 1, association(c.root, 0, 1))]),
    "expired-ee": ("expired", lambda c: [(3, 1, 1, association(c.leaf, 1, 1))]),
    "ta-carried": ("noroot", lambda c: [(2, 0, 0, association(c.root, 0, 0))]),
    "ta-absent": ("noroot", lambda c: [(2, 0, 1, association(c.root, 0, 1))]),
    "nostarttls": ("plain", lambda c: [(3, 1, 1, association(c.leaf, 1, 1))]),
    "wrongname-ta": ("wrong", lambda c: [(2, 0, 1, association(c.root, 0, 1))]),
    "wrongname-ee": ("wrong", lambda c: [(3, 1, 1, association(c.leaf, 1, 1))]),
}


@dataclass(frozen=True, slots=True)
class World:
    lab: DnssecLab
    servers: dict[str, AiosmtpdServer]
    chains: dict[str, Chain]


def _mx(case: str) -> str:
    return f"mx.{case}.{ZONE}"


@pytest.fixture(scope="module")
def world(dnssec_lab: DnssecLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = dnssec_lab
    hierarchy = Hierarchy(tmp_path_factory.mktemp("dane"))
    good_names = tuple(_mx(case) for case, (server, _) in CASES.items() if server == "good")
    chains = {
        "good": hierarchy.chain(*good_names, "real.cname.example.test", "alias.cname.example.test"),
        "expired": hierarchy.chain(
            _mx("expired-ta"), _mx("expired-ee"), intermediate_not_after=NOW - 2 * DAY
        ),
        "wrong": hierarchy.chain("mail.elsewhere.test"),
        "noroot": hierarchy.chain(_mx("ta-carried"), _mx("ta-absent"), send_root=False),
    }
    servers = {name: AiosmtpdServer(starttls=chain.server).start() for name, chain in chains.items()}
    servers["plain"] = AiosmtpdServer().start()  # no STARTTLS at all
    chains["plain"] = chains["good"]
    try:
        for case, (server, make) in CASES.items():
            mx = _mx(case)
            lab.add(f"{case}.{ZONE}", "MX", f"10 {mx}.")
            lab.add(mx, "A", "127.0.0.1")
            owner = f"_{servers[server].port}._tcp.{mx}"
            for usage, selector, mtype, data in make(chains[server]):
                # The short digests are the point of their cases: not checked on the way in.
                lab.tlsa(owner, usage, selector, mtype, data, checked=not case.startswith("short"))
            if case == "nodata":
                lab.txt(owner, "a name that exists without TLSA records")
        lab.corrupt(f"_{servers['good'].port}._tcp.{_mx('bogus')}", "TLSA")
        good = chains["good"]
        port = servers["good"].port
        # An insecure MX RRset, and a secure one naming a host in an unsigned zone.
        lab.add("unsigned.insecure.test", "MX", "10 mx.unsigned.insecure.test.")
        lab.add("mx.unsigned.insecure.test", "A", "127.0.0.1")
        lab.tlsa(f"_{port}._tcp.mx.unsigned.insecure.test", 3, 1, 1, association(good.leaf, 1, 1))
        lab.add(f"tounsigned.{ZONE}", "MX", "10 mx.unsigned.insecure.test.")
        # CNAMEs (RFC 7671 section 7): the expanded name's TLSA first, then the original's.
        lab.add(f"cname.{ZONE}", "MX", "10 alias.cname.example.test.")
        lab.add("alias.cname.example.test", "CNAME", "real.cname.example.test.")
        lab.add("real.cname.example.test", "A", "127.0.0.1")
        lab.tlsa(f"_{port}._tcp.real.cname.example.test", 3, 1, 1, association(good.leaf, 1, 1))
        lab.add(f"cname-orig.{ZONE}", "MX", "10 alias2.cname.example.test.")
        lab.add("alias2.cname.example.test", "CNAME", "real2.cname.example.test.")
        lab.add("real2.cname.example.test", "A", "127.0.0.1")
        lab.tlsa(f"_{port}._tcp.alias2.cname.example.test", 3, 0, 1, association(good.leaf, 0, 1))
        # The records of MTA-STS and TLS-RPT, signed and not, for their smtp_dnssec_secure.
        for domain in (f"c311.{ZONE}", "unsigned.insecure.test"):
            lab.txt(f"_mta-sts.{domain}", "v=STSv1; id=1")
            lab.txt(f"_smtp._tls.{domain}", "v=TLSRPTv1; rua=mailto:tlsrpt@example.test")
        # Two MX hosts for mx_mode each.
        lab.add(f"two.{ZONE}", "MX", f"10 {_mx('c311')}.")
        lab.add(f"two.{ZONE}", "MX", f"20 {_mx('only-stale')}.")
        lab.reload()
        yield World(lab, servers, chains)
    finally:
        for server in servers.values():
            server.stop()


async def _probe(
    world: World,
    target: str,
    server: str = "good",
    *,
    nameserver: str | None = None,
    mx: bool = True,
    each: bool = False,
) -> list[ProbeResult]:
    settings = module(
        mx=mx,
        port=world.servers[server].port,
        starttls=StartTLS.REQUIRED,
        # The probe does not verify: DANE judges what was presented, whatever the probe thinks.
        tls_config=TLSConfig(insecure_skip_verify=True),
        dns=DNSConfig(nameservers=(nameserver or world.lab.resolver.nameserver,), timeout=2.0),
        posture=PostureConfig(dane=True),
    )
    parsed, compiled_module, text = compiled(target, "m", settings)
    if each:
        return await Prober().probe_each_mx(parsed, compiled_module, text)
    return [await Prober().probe(parsed, compiled_module, text)]


async def _dane(world: World, case: str) -> CheckReport:
    (result,) = await _probe(world, f"{case}.{ZONE}", CASES[case][0])
    assert result.success, describe(result)
    (report,) = result.posture
    assert report.check == "dane"
    return report


def _state(report: CheckReport, mx: str | None) -> str:
    prefix = f'mx_host="{mx}",' if mx else ""
    values = _values(report)
    states = {s: values[f'smtp_dane_state{{{prefix}state="{s}"}}'] for s in STATES}
    assert sorted(states.values()) == [0] * (len(STATES) - 1) + [1], states  # one series per state
    return next(s for s, v in states.items() if v == 1)


def _matches(report: CheckReport, mx: str) -> list[tuple[str, float]]:
    """(usage selector matching_type, match) per record, in index order."""
    out = []
    for name, labels, value in report.samples:
        if name == "smtp_dane_tlsa_record_match":
            fields = dict(part.split("=", 1) for part in labels.split(","))
            assert fields["mx_host"] == f'"{mx}"'
            out.append(
                (
                    int(fields["index"].strip('"')),
                    " ".join(fields[k].strip('"') for k in ("usage", "selector", "matching_type")),
                    value,
                )
            )
    assert [index for index, _, _ in out] == list(range(len(out)))
    return [(text, value) for _, text, value in out]


@pytest.mark.parametrize(("usage", "selector", "mtype"), COMBINATIONS)
async def test_each_usage_selector_and_matching_type(
    world: World, usage: int, selector: int, mtype: int
) -> None:
    case = _combo(usage, selector, mtype)
    mx = _mx(case)
    report = await _dane(world, case)
    assert _state(report, mx) == "valid", report.reasons
    values = _values(report)
    assert values["smtp_posture_resolver_validating"] == 1
    assert values['smtp_dnssec_secure{record="mx"}'] == 1
    assert values[f'smtp_dnssec_secure{{mx_host="{mx}",record="address"}}'] == 1
    assert values[f'smtp_dnssec_secure{{mx_host="{mx}",record="tlsa"}}'] == 1
    assert values[f'smtp_dane_tlsa_records{{mx_host="{mx}"}}'] == 1
    assert values[f'smtp_dane_rollover_ready{{mx_host="{mx}"}}'] == 0
    assert _matches(report, mx) == [(f"{usage} {selector} {mtype}", 1)]
    what = "certificate" if selector == 0 else "SPKI"
    if usage == 3:
        expected = f"TLSA 3 {selector} {mtype} matches the leaf's {what}"
    else:
        expected = (
            f"TLSA 2 {selector} {mtype} matches the certificate at depth 2 (CN=dane test root), "
            f"and the leaf's path to it is valid for {mx}"
        )
    assert expected in report.reasons
    details = dict(report.details)
    assert details["tlsa_name"] == f"_{world.servers['good'].port}._tcp.{mx}"
    assert details["tlsa_base"] == mx


async def test_a_trust_anchor_may_be_the_intermediate(world: World) -> None:
    report = await _dane(world, "ta-mid")
    assert _state(report, _mx("ta-mid")) == "valid"
    assert any(
        r.startswith("TLSA 2 1 1 matches the certificate at depth 1 (CN=dane test intermediate)")
        for r in report.reasons
    )


async def test_a_stale_record_beside_a_good_one(world: World) -> None:
    mx = _mx("stale")
    report = await _dane(world, "stale")
    assert _state(report, mx) == "valid"
    assert sorted(_matches(report, mx)) == [("3 1 1", 0), ("3 1 1", 1)]
    assert "TLSA 3 1 1 matches the leaf's SPKI" in report.reasons
    assert "TLSA 3 1 1 does not match the leaf's SPKI" in report.reasons
    records = dict(report.details)["records"]
    assert sorted(r["match"] for r in records) == ["matches", "no_match"]  # type: ignore[attr-defined]


async def test_only_a_stale_record_is_invalid(world: World) -> None:
    mx = _mx("only-stale")
    report = await _dane(world, "only-stale")
    assert _state(report, mx) == "invalid"
    assert _matches(report, mx) == [("3 1 1", 0)]
    assert (
        f"DANE invalid: no usable TLSA record at _{world.servers['good'].port}._tcp.{mx} matches the presented chain: "
        "DANE senders defer mail"
    ) in report.reasons


async def test_pkix_usages_alone_are_unusable(world: World) -> None:
    mx = _mx("pkix-only")
    report = await _dane(world, "pkix-only")
    assert _state(report, mx) == "unusable"
    assert _matches(report, mx) == [("0 0 1", 0), ("1 1 1", 0)]
    assert (
        "TLSA 1 1 1 is unusable: usage 1 (PKIX-EE) is not for SMTP (RFC 7672 section 3.1.3)" in report.reasons
    )
    assert _values(report)[f'smtp_dane_tlsa_records{{mx_host="{mx}"}}'] == 2


async def test_a_digest_of_the_wrong_length_is_an_unusable_record_not_a_failed_lookup(world: World) -> None:
    mx = _mx("short-digest")
    report = await _dane(world, "short-digest")
    assert _state(report, mx) == "unusable"
    values = _values(report)
    assert values[f'smtp_dane_tlsa_records{{mx_host="{mx}"}}'] == 1
    assert values[f'smtp_dnssec_secure{{mx_host="{mx}",record="tlsa"}}'] == 1
    assert _matches(report, mx) == []  # nothing read, so nothing to match
    name = f"_{world.servers['good'].port}._tcp.{mx}"
    assert (
        f"1 TLSA record(s) at {name} cannot be read "
        "(certificate association data length inconsistent with matching type): "
        "unusable, as a sender skips them (RFC 7672 section 2.2)"
    ) in report.reasons
    details = dict(report.details)
    assert details["unreadable_records"] == [
        "certificate association data length inconsistent with matching type"
    ]


async def test_a_digest_of_the_wrong_length_beside_a_good_record_leaves_dane_valid(world: World) -> None:
    mx = _mx("short-beside-good")
    report = await _dane(world, "short-beside-good")
    assert _state(report, mx) == "valid"
    assert _matches(report, mx) == [("3 1 1", 1)]
    assert _values(report)[f'smtp_dane_tlsa_records{{mx_host="{mx}"}}'] == 2
    assert _values(report)[f'smtp_dane_rollover_ready{{mx_host="{mx}"}}'] == 0  # one usable record


@pytest.mark.parametrize(
    ("case", "ready"),
    [("roll-ee-ta", 1), ("roll-ee-next", 1), ("stale", 1), ("ta-ta", 0), ("ee-pkix", 0), ("c311", 0)],
)
async def test_rollover_readiness(world: World, case: str, ready: int) -> None:
    mx = _mx(case)
    report = await _dane(world, case)
    assert _values(report)[f'smtp_dane_rollover_ready{{mx_host="{mx}"}}'] == ready
    assert _state(report, mx) == "valid"
    assert dict(report.details)["rollover_ready"] is bool(ready)


@pytest.mark.parametrize("case", ["notlsa", "nodata"])
async def test_secure_denial_is_no_tlsa(world: World, case: str) -> None:
    mx = _mx(case)
    report = await _dane(world, case)
    assert _state(report, mx) == "no_tlsa"
    values = _values(report)
    assert values[f'smtp_dnssec_secure{{mx_host="{mx}",record="tlsa"}}'] == 1
    assert values[f'smtp_dane_tlsa_records{{mx_host="{mx}"}}'] == 0
    assert (
        f"no TLSA records at _{world.servers['good'].port}._tcp.{mx} (secure denial): the MX has not opted in to DANE"
        in report.reasons
    )


async def test_a_corrupted_tlsa_signature_is_a_lookup_failure(world: World) -> None:
    mx = _mx("bogus")
    report = await _dane(world, "bogus")
    assert _state(report, mx) == "lookup_failed"
    values = _values(report)
    assert values[f'smtp_dnssec_secure{{mx_host="{mx}",record="tlsa"}}'] == 0
    assert not any(name.startswith("smtp_dane_tlsa_records") for name in values)
    assert any("bogus (SERVFAIL, EDE 6" in r and "a DANE sender defers" in r for r in report.reasons), (
        report.reasons
    )


async def test_an_insecure_mx_rrset_means_dane_does_not_apply(world: World) -> None:
    (result,) = await _probe(world, "unsigned.insecure.test")
    (report,) = result.posture
    assert _state(report, "mx.unsigned.insecure.test") == "insecure"
    values = _values(report)
    assert values['smtp_dnssec_secure{record="mx"}'] == 0
    assert not any('record="tlsa"' in name for name in values)  # its TLSA record is not even asked
    assert report.reasons == (
        "the MX RRset of unsigned.insecure.test is not signed (insecure): DANE does not apply (RFC 7672 section 2.2.1)",
    )


async def test_an_mx_host_in_an_unsigned_zone_is_insecure(world: World) -> None:
    (result,) = await _probe(world, f"tounsigned.{ZONE}")
    (report,) = result.posture
    mx = "mx.unsigned.insecure.test"
    assert _state(report, mx) == "insecure"
    values = _values(report)
    assert values['smtp_dnssec_secure{record="mx"}'] == 1
    assert values[f'smtp_dnssec_secure{{mx_host="{mx}",record="address"}}'] == 0


@pytest.mark.parametrize("case", ["expired-ta", "wrongname-ta"])
async def test_a_trust_anchor_path_checks_dates_and_names(world: World, case: str) -> None:
    mx = _mx(case)
    report = await _dane(world, case)
    assert _state(report, mx) == "invalid"
    why = (
        "no path to it (or a certificate on it is expired or not yet valid)"
        if case == "expired-ta"
        else f"the certificate is not for {mx}"
    )
    assert (
        f"TLSA 2 0 1 matches the certificate at depth 2 (CN=dane test root), but the leaf's path to it is not valid: {why}"
    ) in report.reasons


async def test_a_2_0_0_record_carries_an_anchor_the_server_did_not_send(world: World) -> None:
    mx = _mx("ta-carried")
    report = await _dane(world, "ta-carried")
    assert _state(report, mx) == "valid", report.reasons
    assert (
        "TLSA 2 0 0 matches the certificate it carries (2 0 0, not presented) (CN=dane test root), "
        f"and the leaf's path to it is valid for {mx}"
    ) in report.reasons
    # A digest cannot stand in for the certificate: the server must send it (RFC 7671 section 5.2.2).
    report = await _dane(world, "ta-absent")
    assert _state(report, _mx("ta-absent")) == "invalid"
    assert "TLSA 2 0 1 matches no certificate of the presented chain" in report.reasons


async def test_no_starttls_beside_tlsa_records_is_invalid(world: World) -> None:
    (result,) = await _probe(world, f"nostarttls.{ZONE}", "plain")
    assert result.failure is not None and result.failure.reason.value == "starttls_not_offered"
    (report,) = result.posture
    mx = _mx("nostarttls")
    assert _state(report, mx) == "invalid"
    assert _matches(report, mx) == [("3 1 1", 0)]
    assert (
        f"TLSA records at _{world.servers['plain'].port}._tcp.{mx} are published but the server offers no "
        "STARTTLS, which DANE makes mandatory (RFC 7672 section 2.2): DANE senders defer mail"
    ) in report.reasons


@pytest.mark.parametrize("case", ["expired-ee", "wrongname-ee"])
async def test_an_end_entity_record_checks_neither_dates_nor_names(world: World, case: str) -> None:
    report = await _dane(world, case)
    assert _state(report, _mx(case)) == "valid"


async def test_a_secure_cname_expansion_is_the_base_domain_first(world: World) -> None:
    (result,) = await _probe(world, f"cname.{ZONE}")
    (report,) = result.posture
    assert _state(report, "alias.cname.example.test") == "valid", report.reasons
    details = dict(report.details)
    assert details["tlsa_base"] == "real.cname.example.test"
    port = world.servers["good"].port
    assert (
        "the probe sent SNI alias.cname.example.test; DANE senders send the TLSA base domain "
        "real.cname.example.test: the chain judged is the one presented to the probe"
    ) in report.reasons
    # Nothing at the expanded name: the original name's records are used.
    (result,) = await _probe(world, f"cname-orig.{ZONE}")
    (report,) = result.posture
    assert _state(report, "alias2.cname.example.test") == "valid", report.reasons
    assert dict(report.details)["tlsa_base"] == "alias2.cname.example.test"
    assert (
        f"no secure TLSA records at _{port}._tcp.real2.cname.example.test (the CNAME-expanded name): trying alias2.cname.example.test"
        in report.reasons
    )


async def test_without_mx_the_target_host_is_judged(world: World) -> None:
    (result,) = await _probe(world, _mx("c311"), mx=False)
    assert result.success, describe(result)
    (report,) = result.posture
    assert _state(report, None) == "valid"
    values = _values(report)
    assert 'smtp_dnssec_secure{record="mx"}' not in values
    assert values['smtp_dnssec_secure{record="tlsa"}'] == 1
    assert values["smtp_dane_tlsa_records"] == 1


async def test_a_resolver_that_does_not_validate(world: World) -> None:
    plain = world.lab.start_resolver(trust_anchor=False)
    (result,) = await _probe(world, f"c311.{ZONE}", nameserver=plain.nameserver)
    assert result.success, describe(result)  # posture never changes success
    (report,) = result.posture
    assert _state(report, _mx("c311")) == "resolver_not_validating"
    values = _values(report)
    assert values["smtp_posture_resolver_validating"] == 0
    assert values['smtp_dnssec_secure{record="mx"}'] == 0
    assert report.reasons == (
        "the resolver does not validate DNSSEC: no AD bit on the root's DNSKEY: DANE cannot be judged",
    )
    assert not any(name.startswith("smtp_dane_tlsa_record") for name in values)


async def test_a_plain_dns_server_is_not_a_validating_resolver(
    world: World, dns_server: Callable[..., DnsServer]
) -> None:
    server = dns_server({"plain.test": {"MX": "10 mx.plain.test."}, "mx.plain.test": {"A": "127.0.0.1"}})
    (result,) = await _probe(world, "plain.test", nameserver=server.nameserver)
    (report,) = result.posture
    assert _state(report, "mx.plain.test") == "resolver_not_validating"
    assert _values(report)["smtp_posture_resolver_validating"] == 0
    assert report.reasons[0].startswith("the resolver"), report.reasons


async def test_the_start_up_check_warns_of_a_resolver_that_does_not_validate(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    plain = world.lab.start_resolver(trust_anchor=False)
    clients = [
        ("validating", PostureDNS(DNSConfig(nameservers=(world.lab.resolver.nameserver,), timeout=2.0))),
        ("plain", PostureDNS(DNSConfig(nameservers=(plain.nameserver,), timeout=2.0))),
    ]
    with caplog.at_level(logging.WARNING, logger="smtp_exporter.posture"):
        await warn_unless_validating(clients)
    warned = [
        record for record in caplog.records if record.getMessage() == "DANE needs a validating resolver"
    ]
    assert [record.fields["module"] for record in warned] == ["plain"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("domain", "secure"), [(f"c311.{ZONE}", 1), ("unsigned.insecure.test", 0)])
async def test_mta_sts_and_tls_rpt_records_report_their_dnssec_state(
    world: World, domain: str, secure: int
) -> None:
    settings = module(
        mx=True,
        dns=DNSConfig(nameservers=(world.lab.resolver.nameserver,), timeout=2.0),
        posture=PostureConfig(mta_sts=True, tls_rpt=True),
    )
    nothing = ProbeResult(domain, "m", False, 0.0, 0.0, (), None)
    reports = await run_posture(
        nothing, domain, settings, PostureDNS(settings.dns), None, trust=pkix.trust(None)
    )
    values = {name: value for report in reports for name, value in _values(report).items()}
    assert values["smtp_mta_sts_record_valid"] == 1 and values["smtp_tls_rpt_record_valid"] == 1
    assert values['smtp_dnssec_secure{record="mta_sts"}'] == secure
    assert values['smtp_dnssec_secure{record="tls_rpt"}'] == secure


async def test_output_forms(world: World) -> None:
    mx = _mx("stale")
    (result,) = await _probe(world, f"stale.{ZONE}")
    body = render_probe_result(result, openmetrics=False).decode()
    for line in (
        "# TYPE smtp_posture_resolver_validating gauge\nsmtp_posture_resolver_validating 1\n",
        'smtp_dnssec_secure{record="mx"} 1\n',
        f'smtp_dnssec_secure{{mx_host="{mx}",record="tlsa"}} 1\n',
        f'smtp_dane_state{{mx_host="{mx}",state="valid"}} 1\n',
        f'smtp_dane_state{{mx_host="{mx}",state="lookup_failed"}} 0\n',
        f'smtp_dane_tlsa_records{{mx_host="{mx}"}} 2\n',
        f'smtp_dane_rollover_ready{{mx_host="{mx}"}} 1\n',
        'smtp_posture_last_run_timestamp_seconds{check="dane"} ',
        "smtp_probe_success 1\n",
    ):
        assert line in body, line
    assert body.count("smtp_dane_tlsa_record_match{") == 2
    document = json.loads(json.dumps(probe_json(result)))
    section = document["posture"]["dane"]
    assert section["state"] == "valid"
    assert section["dnssec"] == {"mx": "secure", "address": "secure", "tlsa": "secure"}
    assert {r["match"] for r in section["records"]} == {"matches", "no_match"}
    assert "    TLSA 3 1 1 matches the leaf's SPKI\n" in format_text(result)

    # mx_mode each: each MX's series carries mx_host itself and its own MX's judgement only.
    results = await _probe(world, f"two.{ZONE}", each=True)
    rendered = {}
    for each in results:
        assert each.mx is not None
        labels = (("target", f"two.{ZONE}"), ("module", "m"), ("mx_host", each.mx.host))
        state = SeriesState(labels, buckets=Buckets((1.0,)), phase_histograms=False)
        rendered[each.mx.host] = series_text(state, each)
    own = f'target="two.{ZONE}",module="m",mx_host="{_mx("only-stale")}"'
    assert f'smtp_dane_state{{{own},state="invalid"}} 1\n' in rendered[_mx("only-stale")]
    assert (
        f'smtp_dane_state{{{own.replace(_mx("only-stale"), _mx("c311"))},state="valid"}} 1\n'
        in rendered[_mx("c311")]
    )
    assert f'mx_host="{_mx("c311")}"' not in rendered[_mx("only-stale")]
