"""The DNSSEC lab answers as a real validating resolver does: AD on secure data and secure
denial, AD=0 for an unsigned zone, SERVFAIL with an extended DNS error for bogus data, and a
resolver without the trust anchor that never sets AD."""

from __future__ import annotations

import os
from collections.abc import Callable

import dns.flags
import dns.message
import dns.rcode
import pytest

from tests.servers.dnssec import DnssecLab, ede_codes

EDE_DNSSEC_BOGUS = 6
EDE_SIGNATURE_EXPIRED = 7


def ad(message: dns.message.Message) -> bool:
    return bool(message.flags & dns.flags.AD)


def rcode(message: dns.message.Message) -> str:
    return dns.rcode.to_text(message.rcode())


def answers(message: dns.message.Message) -> list[str]:
    """The answer records' data, signatures left out."""
    return sorted(rd.to_text() for rrset in message.answer if rrset.rdtype != 46 for rd in rrset)


@pytest.fixture(scope="module")
def lab(dnssec_lab: DnssecLab) -> DnssecLab:
    dnssec_lab.add("example.test", "MX", "10 mx")  # relative to the zone, as in a zone file
    dnssec_lab.add("mx.example.test", "A", "127.0.0.1")
    dnssec_lab.add("mx.example.test", "AAAA", "::1")
    dnssec_lab.add("alias.example.test", "CNAME", "mx.example.test.")
    dnssec_lab.tlsa("_25._tcp.mx.example.test", 3, 1, 1, bytes(range(32)))
    dnssec_lab.txt("_mta-sts.example.test", "v=STSv1; id=20260101", 'a "quoted" part')
    dnssec_lab.add("bad.example.test", "A", "127.0.0.9")
    dnssec_lab.corrupt("bad.example.test", "A")
    dnssec_lab.add("mx.insecure.test", "A", "127.0.0.2")
    dnssec_lab.ptr("127.0.0.1", "mx.example.test")
    dnssec_lab.ptr("::1", "mx.example.test")
    dnssec_lab.reload()
    return dnssec_lab


@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        ("example.test", "MX", ["10 mx.example.test."]),
        ("mx.example.test", "A", ["127.0.0.1"]),
        ("mx.example.test", "AAAA", ["::1"]),
        ("alias.example.test", "A", ["127.0.0.1", "mx.example.test."]),
        ("_25._tcp.mx.example.test", "TLSA", ["3 1 1 " + bytes(range(32)).hex()]),
        ("_mta-sts.example.test", "TXT", ['"v=STSv1; id=20260101" "a \\"quoted\\" part"']),
        ("1.0.0.127.in-addr.arpa", "PTR", ["mx.example.test."]),
        ("1." + "0." * 31 + "ip6.arpa", "PTR", ["mx.example.test."]),
    ],
)
def test_signed_data_is_secure(lab: DnssecLab, name: str, rdtype: str, expected: list[str]) -> None:
    answer = lab.resolver.query(name, rdtype)
    assert (rcode(answer), ad(answer), answers(answer)) == ("NOERROR", True, expected)


@pytest.mark.parametrize(
    ("name", "rdtype"), [(".", "DNSKEY"), ("example.test", "DNSKEY"), ("example.test", "DS")]
)
def test_keys_of_the_chain_of_trust_are_secure(lab: DnssecLab, name: str, rdtype: str) -> None:
    answer = lab.resolver.query(name, rdtype)
    assert (rcode(answer), ad(answer), len(answers(answer))) == ("NOERROR", True, 1)


def test_unsigned_zone_is_insecure_not_bogus(lab: DnssecLab) -> None:
    answer = lab.resolver.query("mx.insecure.test", "A")
    assert (rcode(answer), ad(answer), answers(answer)) == ("NOERROR", False, ["127.0.0.2"])


@pytest.mark.parametrize(
    ("name", "rdtype", "code"),
    [("nothing.example.test", "A", "NXDOMAIN"), ("mx.example.test", "TLSA", "NOERROR")],
)
def test_denial_in_a_signed_zone_is_secure(lab: DnssecLab, name: str, rdtype: str, code: str) -> None:
    answer = lab.resolver.query(name, rdtype)
    assert (rcode(answer), ad(answer), answers(answer)) == (code, True, [])


def test_denial_in_an_unsigned_zone_is_insecure(lab: DnssecLab) -> None:
    answer = lab.resolver.query("nothing.insecure.test", "A")
    assert (rcode(answer), ad(answer)) == ("NXDOMAIN", False)


def test_corrupted_signature_is_bogus_with_extended_error(lab: DnssecLab) -> None:
    answer = lab.resolver.query("bad.example.test", "A")
    assert (rcode(answer), ad(answer), answers(answer)) == ("SERVFAIL", False, [])
    assert ede_codes(answer) == [EDE_DNSSEC_BOGUS]
    # Only that RRset is bogus: its neighbours in the zone still validate.
    assert ad(lab.resolver.query("mx.example.test", "A"))


def test_resolver_without_trust_anchor_never_sets_ad(lab: DnssecLab) -> None:
    plain = lab.start_resolver(trust_anchor=False)
    assert plain.port not in (lab.resolver.port, lab.nsd_port)
    for name, rdtype in [(".", "DNSKEY"), ("mx.example.test", "A"), ("nothing.example.test", "A")]:
        answer = plain.query(name, rdtype)
        assert not ad(answer), (name, rdtype)
        assert rcode(answer) == ("NXDOMAIN" if name.startswith("nothing") else "NOERROR")
    # It does not check signatures at all, so the corrupted one passes: the data is really there.
    assert answers(plain.query("bad.example.test", "A")) == ["127.0.0.9"]


def test_reload_serves_changed_records_past_the_caches(lab: DnssecLab) -> None:
    assert rcode(lab.resolver.query("moving.example.test", "A")) == "NXDOMAIN"  # now cached
    lab.add("moving.example.test", "A", "127.0.0.5").reload()
    assert answers(lab.resolver.query("moving.example.test", "A")) == ["127.0.0.5"]
    lab.remove("moving.example.test", "A").add("moving.example.test", "A", "127.0.0.6").reload()
    answer = lab.resolver.query("moving.example.test", "A")
    assert (ad(answer), answers(answer)) == (True, ["127.0.0.6"])
    lab.corrupt("moving.example.test", "A").reload()  # the cached secure answer goes too
    assert rcode(lab.resolver.query("moving.example.test", "A")) == "SERVFAIL"


def test_zone_added_after_start_serves_dnsbl_answers(lab: DnssecLab) -> None:
    zen = lab.zone("zen.test.", signed=False)
    zen.add("2.0.0.127.zen.test", "A", "127.0.0.2").add("2.0.0.127.zen.test", "TXT", '"listed: test"')
    zen.add("7.100.51.198.zen.test", "A", "127.255.255.254")
    lab.reload()
    assert answers(lab.resolver.query("2.0.0.127.zen.test", "A")) == ["127.0.0.2"]
    assert answers(lab.resolver.query("2.0.0.127.zen.test", "TXT")) == ['"listed: test"']
    assert answers(lab.resolver.query("7.100.51.198.zen.test", "A")) == ["127.255.255.254"]
    assert rcode(lab.resolver.query("1.0.0.127.zen.test", "A")) == "NXDOMAIN"
    # The zones served before still answer, through the restarted nsd.
    assert ad(lab.resolver.query("mx.example.test", "A"))


def test_nsec3_zone_denies_securely(dnssec_lab_factory: Callable[[], DnssecLab]) -> None:
    lab = dnssec_lab_factory()
    lab.zone("hashed.test.", nsec3=True).add("mx.hashed.test", "A", "127.0.0.3")
    lab.start()
    assert ad(lab.resolver.query("mx.hashed.test", "A"))
    answer = lab.resolver.query("nothing.hashed.test", "A", tcp=True)
    assert (rcode(answer), ad(answer)) == ("NXDOMAIN", True)
    assert any(rrset.rdtype == 50 for rrset in answer.authority)  # NSEC3 records prove it


def test_expired_signatures_are_bogus_with_their_own_code(
    dnssec_lab_factory: Callable[[], DnssecLab],
) -> None:
    lab = dnssec_lab_factory()
    lab.zone("stale.test.", expired=True).add("mx.stale.test", "A", "127.0.0.4")
    lab.start()
    answer = lab.resolver.query("mx.stale.test", "A")
    assert (rcode(answer), ede_codes(answer)) == ("SERVFAIL", [EDE_SIGNATURE_EXPIRED])


def test_bad_input_fails_in_the_test_not_in_nsd(dnssec_lab_factory: Callable[[], DnssecLab]) -> None:
    lab = dnssec_lab_factory()
    with pytest.raises(dns.exception.SyntaxError):
        lab.add("mx.example.test", "A", "not-an-address")
    with pytest.raises(ValueError, match="not inside zone"):
        lab.zone("example.test.").add("mx.other.test", "A", "127.0.0.1")
    lab.corrupt("mx.insecure.test", "A")
    with pytest.raises(ValueError, match="not signed"):
        lab.start()


def test_stop_ends_the_daemons_and_removes_the_files(dnssec_lab_factory: Callable[[], DnssecLab]) -> None:
    lab = dnssec_lab_factory().start()
    pids = [int((lab.dir / name).read_text()) for name in ("nsd.pid", "unbound0.pid")]
    lab.stop()
    assert not lab.dir.exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
