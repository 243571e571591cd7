"""mta_sts and tls_rpt against real servers on loopback: the records from the loopback DNS server,
the policies over real HTTPS on port 443 (tests/servers/https_server.py, a trustme CA given as
posture.ca_file), the MX certificates from a real STARTTLS conversation with aiosmtpd.

The data cases call `run_posture` with a result of no conversation (nothing to judge of the MX
certificates); the certificate cases go through the prober."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from smtp_exporter.config.schema import DNSConfig, ModuleConfig, PostureConfig
from smtp_exporter.model import CheckReport, ProbeResult
from smtp_exporter.posture import pkix
from smtp_exporter.posture.dns import PostureDNS
from smtp_exporter.posture.runner import PostureMemory, run_posture
from tests.probe.common import module
from tests.servers.dns_server import DnsServer
from tests.servers.https_server import HttpsServer, Page
from tests.servers.tls import TestCA

ID = "20261101"
GOOD_POLICY = (
    b"version: STSv1\r\nmode: enforce\r\nmx: mx1.good.test\r\nmx: *.backup.good.test\r\nmax_age: 604800\r\n"
)
POLICY_HOSTS = (
    "good",
    "wild",
    "evil",
    "redirect",
    "missing",
    "short",
    "big",
    "chunked",
    "changed",
    "iplit",
    "testing",
    "twotxt",
)


def _policy(mode: str, *mx: str, max_age: int = 86400) -> bytes:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "\n".join(lines).encode() + b"\n"


@pytest.fixture
def https(tls_ca: TestCA) -> Iterator[HttpsServer]:
    cert = tls_ca.issue(*(f"mta-sts.{name}.test" for name in POLICY_HOSTS))
    with HttpsServer(cert) as server:
        server.pages.update(
            {
                "mta-sts.good.test": Page(body=GOOD_POLICY),
                "mta-sts.wild.test": Page(body=_policy("enforce", "*.wild.test")),
                "mta-sts.evil.test": Page(body=_policy("enforce", "mx.good.test")),
                "mta-sts.redirect.test": Page(
                    301, location="https://mta-sts.good.test/.well-known/mta-sts.txt"
                ),
                "mta-sts.short.test": Page(body=GOOD_POLICY, declared_length=len(GOOD_POLICY) + 100),
                "mta-sts.big.test": Page(body=GOOD_POLICY + b"x_pad: " + b"y" * 70 * 1024 + b"\n"),
                "mta-sts.chunked.test": Page(
                    body=GOOD_POLICY + b"x_pad: " + b"y" * 70 * 1024 + b"\n", chunked=True
                ),
                "mta-sts.changed.test": Page(body=_policy("testing", "mx1.good.test")),
                "mta-sts.iplit.test": Page(body=_policy("enforce", "192.0.2.25")),
                "mta-sts.testing.test": Page(body=_policy("testing", "mx1.good.test", max_age=31557601)),
                "mta-sts.twotxt.test": Page(body=GOOD_POLICY),
            }
        )
        yield server


@pytest.fixture
def wrong_name(tls_ca: TestCA) -> Iterator[HttpsServer]:
    with HttpsServer(tls_ca.issue("mta-sts.other.test")) as server:
        server.pages["mta-sts.wrongcert.test"] = Page(body=GOOD_POLICY)
        yield server


def _records(
    https: HttpsServer, wrong_name: HttpsServer, record_id: str = ID
) -> dict[str, dict[str, object]]:
    records: dict[str, dict[str, object]] = {
        f"mta-sts.{name}.test": {"A": https.host} for name in POLICY_HOSTS
    }
    records["mta-sts.wrongcert.test"] = {"A": wrong_name.host}
    for name in (*POLICY_HOSTS, "wrongcert", "nopolicy"):
        if name != "twotxt":
            records[f"_mta-sts.{name}.test"] = {"TXT": [f'"v=STSv1; id={record_id}"', '"v=spf1 -all"']}
    records["_mta-sts.twotxt.test"] = {"TXT": ['"v=STSv1; id=1"', '"v=STSv1; id=2"']}
    records["_mta-sts.badid.test"] = {"TXT": f'"v=STSv1; id={"a" * 33}"'}
    records["_mta-sts.spaced.test"] = {"TXT": '"v=STSv1 ; id=1"'}
    records["_mta-sts.split.test"] = {"TXT": '"v=STSv1; " "id=" "2026"'}
    for name in POLICY_HOSTS:
        records.setdefault(f"{name}.test", {})["MX"] = "10 mx1.good.test."
    records["good.test"] = {"MX": ["10 mx1.good.test.", "20 a.backup.good.test.", "30 mx.other.test."]}
    records["wild.test"] = {"MX": ["10 x.wild.test.", "20 deep.a.wild.test.", "30 wild.test."]}
    records["evil.test"] = {"MX": ["10 mx.good.test.evil.test.", "20 mx.good.test.", "30 xmx.good.test."]}
    records["nopolicy.test"] = {"MX": "10 mx1.good.test."}
    records["wrongcert.test"] = {"MX": "10 mx1.good.test."}
    # TLS-RPT
    records["_smtp._tls.good.test"] = {
        "TXT": ['"v=TLSRPTv1; rua=mailto:tlsrpt@good.test,https://report.good.test/v1"', '"v=spf1 -all"']
    }
    records["_smtp._tls.ftp.test"] = {"TXT": '"v=TLSRPTv1; rua=ftp://report.ftp.test/"'}
    records["_smtp._tls.two.test"] = {
        "TXT": ['"v=TLSRPTv1; rua=mailto:a@two.test"', '"v=TLSRPTv1; rua=mailto:b@two.test"']
    }
    records["_smtp._tls.norua.test"] = {"TXT": '"v=TLSRPTv1; ext=1"'}
    records["_smtp._tls.noat.test"] = {"TXT": '"v=TLSRPTv1; rua=mailto:nobody"'}
    return records


@pytest.fixture
def dns(dns_server: Callable[..., DnsServer], https: HttpsServer, wrong_name: HttpsServer) -> DnsServer:
    return dns_server(_records(https, wrong_name), servfail=["_mta-sts.broken.test"])


def _module(
    server: DnsServer, ca: TestCA | None, *, interval: float = 300.0, **changes: object
) -> ModuleConfig:
    return module(
        mx=True,
        dns=DNSConfig(nameservers=(server.nameserver,), timeout=1.0),
        posture=PostureConfig(
            interval=interval, mta_sts=True, tls_rpt=True, ca_file=ca.ca_file if ca is not None else None
        ),
        **changes,
    )


def _nothing(domain: str) -> ProbeResult:
    return ProbeResult(domain, "m", False, 0.0, 0.0, (), None)


async def _check(
    server: DnsServer, ca: TestCA | None, domain: str, memory: PostureMemory | None = None, **changes: object
) -> tuple[CheckReport, CheckReport]:
    settings = _module(server, ca, **changes)
    assert settings.posture is not None
    trust = pkix.trust(settings.posture.ca_file)
    mta_sts, tls_rpt = await run_posture(
        _nothing(domain), domain, settings, PostureDNS(settings.dns), memory, trust=trust
    )
    assert (mta_sts.check, tls_rpt.check) == ("mta_sts", "tls_rpt")
    return mta_sts, tls_rpt


def _values(report: CheckReport) -> dict[str, float]:
    return {f"{name}{{{labels}}}" if labels else name: value for name, labels, value in report.samples}


def _modes(values: dict[str, float]) -> dict[str, float]:
    return {
        mode: values[f'smtp_mta_sts_policy_mode{{mode="{mode}"}}'] for mode in ("enforce", "testing", "none")
    }


async def test_a_valid_enforce_policy(dns: DnsServer, tls_ca: TestCA, https: HttpsServer) -> None:
    report, _ = await _check(dns, tls_ca, "good.test")
    values = _values(report)
    assert values["smtp_mta_sts_record_valid"] == 1  # the v=spf1 record beside it is discarded
    assert values["smtp_mta_sts_policy_fetch_success"] == 1
    assert _modes(values) == {"enforce": 1, "testing": 0, "none": 0}
    assert values["smtp_mta_sts_policy_max_age_seconds"] == 604800
    assert values['smtp_mta_sts_mx_covered{mx_host="mx1.good.test"}'] == 1
    assert values['smtp_mta_sts_mx_covered{mx_host="a.backup.good.test"}'] == 1
    assert values['smtp_mta_sts_mx_covered{mx_host="mx.other.test"}'] == 0
    assert values["smtp_mta_sts_policy_changed_without_id_change"] == 0
    assert not any(name.startswith("smtp_mta_sts_cert_valid") for name in values)  # no conversation
    assert report.reasons == (
        f"MTA-STS record at _mta-sts.good.test: id {ID}",
        "MTA-STS policy: mode enforce, max_age 604800, mx mx1.good.test, *.backup.good.test",
        f"MX mx1.good.test covered by policy id {ID} (pattern mx1.good.test)",
        f"MX a.backup.good.test covered by policy id {ID} (pattern *.backup.good.test)",
        f"MX mx.other.test not covered by policy id {ID} (mode enforce)",
    )
    details = dict(report.details)
    assert details["policy"] == {
        "mode": "enforce",
        "max_age": 604800,
        "mx": ["mx1.good.test", "*.backup.good.test"],
    }
    assert details["policy_url"] == "https://mta-sts.good.test/.well-known/mta-sts.txt"
    assert details["record_security"] == "insecure"
    assert https.requests == [("mta-sts.good.test", "/.well-known/mta-sts.txt")]


async def test_wildcards_stand_for_exactly_one_leftmost_label(dns: DnsServer, tls_ca: TestCA) -> None:
    report, _ = await _check(dns, tls_ca, "wild.test")
    values = _values(report)
    assert values['smtp_mta_sts_mx_covered{mx_host="x.wild.test"}'] == 1
    assert values['smtp_mta_sts_mx_covered{mx_host="deep.a.wild.test"}'] == 0  # two labels
    assert values['smtp_mta_sts_mx_covered{mx_host="wild.test"}'] == 0  # no label
    assert f"MX deep.a.wild.test not covered by policy id {ID} (mode enforce)" in report.reasons


async def test_matching_is_anchored(dns: DnsServer, tls_ca: TestCA) -> None:
    report, _ = await _check(dns, tls_ca, "evil.test")
    values = _values(report)
    assert values['smtp_mta_sts_mx_covered{mx_host="mx.good.test.evil.test"}'] == 0
    assert values['smtp_mta_sts_mx_covered{mx_host="xmx.good.test"}'] == 0
    assert values['smtp_mta_sts_mx_covered{mx_host="mx.good.test"}'] == 1
    assert f"MX mx.good.test.evil.test not covered by policy id {ID} (mode enforce)" in report.reasons


@pytest.mark.parametrize(
    ("domain", "reason"),
    [
        (
            "redirect.test",
            "MTA-STS policy fetch from https://mta-sts.redirect.test/.well-known/mta-sts.txt failed: HTTP 301"
            " redirect to https://mta-sts.good.test/.well-known/mta-sts.txt: not followed (RFC 8461 section"
            " 3.3), no policy",
        ),
        (
            "missing.test",
            "MTA-STS policy fetch from https://mta-sts.missing.test/.well-known/mta-sts.txt failed:"
            " HTTP 404, not 200: no policy",
        ),
        (
            "short.test",
            "MTA-STS policy fetch from https://mta-sts.short.test/.well-known/mta-sts.txt failed: policy body"
            " broken off: ",
        ),
        (
            "big.test",
            "MTA-STS policy fetch from https://mta-sts.big.test/.well-known/mta-sts.txt failed: policy of"
            f" {len(GOOD_POLICY) + 7 + 70 * 1024 + 1} bytes is over the 64 KiB limit",
        ),
        (
            "chunked.test",
            "MTA-STS policy fetch from https://mta-sts.chunked.test/.well-known/mta-sts.txt failed: policy is"
            " over the 64 KiB limit",
        ),
        (
            "wrongcert.test",
            "MTA-STS policy fetch from https://mta-sts.wrongcert.test/.well-known/mta-sts.txt failed:"
            " certificate of mta-sts.wrongcert.test is not valid: Hostname mismatch, certificate is not"
            " valid for 'mta-sts.wrongcert.test'.",
        ),
        (
            "nopolicy.test",
            "MTA-STS policy fetch from https://mta-sts.nopolicy.test/.well-known/mta-sts.txt failed:"
            " mta-sts.nopolicy.test does not exist",
        ),
        (
            "iplit.test",
            "MTA-STS policy at https://mta-sts.iplit.test/.well-known/mta-sts.txt is not valid: policy line 3:"
            " mx '192.0.2.25' is an IP literal, not a host name",
        ),
        (
            "testing.test",
            "MTA-STS policy at https://mta-sts.testing.test/.well-known/mta-sts.txt is not valid: policy"
            " max_age '31557601' is not 0 to 31557600 seconds",
        ),
    ],
)
async def test_no_usable_policy(
    dns: DnsServer, tls_ca: TestCA, https: HttpsServer, domain: str, reason: str
) -> None:
    report, _ = await _check(dns, tls_ca, domain)
    values = _values(report)
    assert values["smtp_mta_sts_record_valid"] == 1
    assert values["smtp_mta_sts_policy_fetch_success"] == 0
    assert _modes(values) == {"enforce": 0, "testing": 0, "none": 0}
    assert "smtp_mta_sts_policy_max_age_seconds" not in values
    assert values['smtp_mta_sts_mx_covered{mx_host="mx1.good.test"}'] == 0
    assert "MX mx1.good.test not covered: no valid policy" in report.reasons
    assert any(text.startswith(reason) for text in report.reasons), report.reasons
    # A redirect is not followed: the only request is the policy host's own.
    assert ("mta-sts.good.test", "/.well-known/mta-sts.txt") not in https.requests


async def test_the_system_store_does_not_trust_the_test_ca(dns: DnsServer) -> None:
    report, _ = await _check(dns, None, "good.test")
    assert _values(report)["smtp_mta_sts_policy_fetch_success"] == 0
    assert (
        "MTA-STS policy fetch from https://mta-sts.good.test/.well-known/mta-sts.txt failed: certificate of"
        " mta-sts.good.test is not valid: unable to get local issuer certificate"
    ) in report.reasons


@pytest.mark.parametrize(
    ("domain", "reason"),
    [
        (
            "twotxt.test",
            "no valid MTA-STS record at _mta-sts.twotxt.test: 2 TXT records start v=STSv1; (exactly one is"
            " allowed, RFC 8461 section 3.1)",
        ),
        (
            "badid.test",
            f"no valid MTA-STS record at _mta-sts.badid.test: record id '{'a' * 33}' is not 1 to 32 letters and"
            " digits",
        ),
        ("spaced.test", "no valid MTA-STS record at _mta-sts.spaced.test: no TXT record starting v=STSv1;"),
        ("gone.test", "no valid MTA-STS record at _mta-sts.gone.test: no TXT record starting v=STSv1;"),
        ("broken.test", "MTA-STS record lookup failed: _mta-sts.broken.test TXT: bogus (SERVFAIL)"),
    ],
)
async def test_invalid_records(dns: DnsServer, tls_ca: TestCA, domain: str, reason: str) -> None:
    report, _ = await _check(dns, tls_ca, domain)
    values = _values(report)
    assert values["smtp_mta_sts_record_valid"] == 0
    assert reason in report.reasons


async def test_a_record_split_into_strings_is_joined(dns: DnsServer, tls_ca: TestCA) -> None:
    report, _ = await _check(dns, tls_ca, "split.test")
    assert _values(report)["smtp_mta_sts_record_valid"] == 1
    assert dict(report.details)["record_id"] == "2026"


async def test_a_policy_changed_under_the_same_id_is_reported(
    dns_server: Callable[..., DnsServer],
    dns: DnsServer,
    tls_ca: TestCA,
    https: HttpsServer,
    wrong_name: HttpsServer,
) -> None:
    memory = PostureMemory()
    first, _ = await _check(dns, tls_ca, "changed.test", memory, interval=0.001)
    assert _values(first)["smtp_mta_sts_policy_changed_without_id_change"] == 0
    https.pages["mta-sts.changed.test"] = Page(body=_policy("enforce", "mx1.good.test"))
    second, _ = await _check(dns, tls_ca, "changed.test", memory, interval=0.001)
    assert _values(second)["smtp_mta_sts_policy_changed_without_id_change"] == 1
    assert (
        f"MTA-STS policy body changed while the record id stayed {ID}: senders keep the policy they cached"
        " until its max_age runs out (RFC 8461 section 3.1)"
    ) in second.reasons
    # Still the changed body under the same id: still reported (senders still hold the first).
    third, _ = await _check(dns, tls_ca, "changed.test", memory, interval=0.001)
    assert _values(third)["smtp_mta_sts_policy_changed_without_id_change"] == 1
    # A new id: the change is announced, nothing to report.
    renamed = dns_server(_records(https, wrong_name, record_id="20261102"))
    fourth, _ = await _check(renamed, tls_ca, "changed.test", memory, interval=0.001)
    assert _values(fourth)["smtp_mta_sts_policy_changed_without_id_change"] == 0
    assert dict(fourth.details)["record_id"] == "20261102"
    # Without memory (/probe, the CLI) there is nothing to compare with.
    alone, _ = await _check(dns, tls_ca, "changed.test")
    assert _values(alone)["smtp_mta_sts_policy_changed_without_id_change"] == 0


async def test_tls_rpt(dns: DnsServer, tls_ca: TestCA) -> None:
    _, good = await _check(dns, tls_ca, "good.test")
    # The loopback DNS server does not validate: the record is not known to be secure.
    assert good.samples == (
        ("smtp_tls_rpt_record_valid", "", 1),
        ("smtp_dnssec_secure", 'record="tls_rpt"', 0),
    )
    assert good.reasons == (
        "TLS-RPT record at _smtp._tls.good.test: reports go to mailto:tlsrpt@good.test, https://report.good.test/v1",
    )
    assert dict(good.details)["rua"] == ["mailto:tlsrpt@good.test", "https://report.good.test/v1"]
    for domain, why in (
        ("ftp.test", "rua 'ftp://report.ftp.test/' is neither mailto: nor https:"),
        ("two.test", "2 TXT records start v=TLSRPTv1; (exactly one is allowed, RFC 8460 section 3)"),
        ("norua.test", "record has no rua= (where reports go)"),
        ("noat.test", "rua 'mailto:nobody' is not a mailto: address"),
        ("wild.test", "no TXT record starting v=TLSRPTv1;"),
    ):
        _, bad = await _check(dns, tls_ca, domain)
        assert bad.samples[0] == ("smtp_tls_rpt_record_valid", "", 0), domain
        assert bad.reasons == (f"no valid TLS-RPT record at _smtp._tls.{domain}: {why}",)
