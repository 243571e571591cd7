"""MTA-STS (RFC 8461): the mail domain's record and policy as a sending MTA would find them, which
of its MX hosts the policy covers, and whether the MX the probe connected to would pass.

- Section 3.1: the TXT record at `_mta-sts.<domain>` (parsed in posture/sts_policy.py).
- Section 3.3: the policy from `https://mta-sts.<domain>/.well-known/mta-sts.txt`
  (posture/policy_fetch.py). It is fetched even when the record is missing or invalid, so that
  both are known; a sender would not fetch it then.
- Section 4.1: each MX host of the domain, covered by an `mx` pattern or not.
- Section 4.2: the certificate the MX presented to the probe: a path to the system's CA store (or
  `posture.ca_file`) and the MX host name among its names (posture/pkix.py). MX hosts the probe
  did not connect to are not judged: their certificates were not seen.
- Section 3.1 again: "the id field ... MUST be changed" when the policy changes, or senders keep
  the one they cached until it expires. The body first seen under the current id is remembered
  (the previous report's details) and a different body under the same id is reported, until the
  id changes (or the body goes back).
"""

from __future__ import annotations

import asyncio
import hashlib

from smtp_exporter.metrics.families import bound
from smtp_exporter.metrics.posture import (
    DNSSEC_SECURE,
    MTA_STS_CERT_VALID,
    MTA_STS_CHANGED,
    MTA_STS_FETCH_SUCCESS,
    MTA_STS_MAX_AGE,
    MTA_STS_MODE,
    MTA_STS_MX_COVERED,
    MTA_STS_RECORD_VALID,
)
from smtp_exporter.model import CheckReport, FailureReason, PostureSample
from smtp_exporter.posture import pkix
from smtp_exporter.posture.check import Check, CheckInput, sample
from smtp_exporter.posture.dns import Lookup, Security, txt_texts
from smtp_exporter.posture.policy_fetch import Fetched, fetch_policy
from smtp_exporter.posture.sts_policy import (
    Mode,
    Policy,
    PolicyError,
    Record,
    covering,
    parse_policy,
    parse_records,
)

MAX_HOSTS = 10  # MX hosts reported, as mx_hygiene's
MAX_FETCH_SECONDS = 60.0
FETCH_SHARE = 0.8  # of the module's timeout: the check must report before the runner gives up


async def run(given: CheckInput) -> CheckReport:
    domain = given.domain
    trust = given.trust
    assert trust is not None, "mta_sts runs with the module's compiled trust"
    timeout = min(MAX_FETCH_SECONDS, given.module.timeout * FETCH_SHARE)
    txt, mx, fetched = await asyncio.gather(
        given.dns.lookup(f"_mta-sts.{domain}", "TXT"),
        given.dns.lookup(domain, "MX"),
        fetch_policy(domain, given.dns, trust.context, timeout),
    )
    reasons: list[str] = []
    samples: list[PostureSample] = []
    record = _record(given, txt, reasons)
    policy = _policy(fetched, reasons)
    samples.append(sample(MTA_STS_RECORD_VALID, "", 1 if record else 0))
    samples.append(sample(DNSSEC_SECURE, 'record="mta_sts"', 1 if txt.security is Security.SECURE else 0))
    samples.append(sample(MTA_STS_FETCH_SUCCESS, "", 1 if policy else 0))
    samples += [
        sample(MTA_STS_MODE, f'mode="{mode.value}"', 1 if policy is not None and policy.mode is mode else 0)
        for mode in Mode
    ]
    if policy is not None:
        samples.append(sample(MTA_STS_MAX_AGE, "", policy.max_age))
    ident = record.id if record else None
    hosts = _mx_hosts(mx, reasons)
    coverage = _coverage(hosts, policy, ident, samples, reasons)
    certificate = _certificate(given, trust, samples, reasons)
    digest = hashlib.sha256(fetched.body).hexdigest() if fetched.body is not None else None
    changed, baseline = _changed(given, ident, digest, reasons)
    samples.append(sample(MTA_STS_CHANGED, "", 1 if changed else 0))
    details: tuple[tuple[str, object], ...] = (
        ("record_security", txt.security.value),
        ("record_id", ident),
        ("policy_url", fetched.url),
        ("policy_fetched", fetched.body is not None),
        ("policy_status", fetched.status),
        ("policy", _policy_json(policy)),
        ("policy_sha256", digest),
        ("id_policy_sha256", baseline),  # the body first seen under record_id
        ("policy_changed_without_id_change", changed),
        ("mx", coverage),
        ("certificate", certificate),
    )
    return CheckReport("mta_sts", given.now, tuple(samples), tuple(reasons), details)


def _record(given: CheckInput, txt: Lookup, reasons: list[str]) -> Record | None:
    name = f"_mta-sts.{given.domain}"
    if not txt.answered:
        reasons.append(f"MTA-STS record lookup failed: {txt.describe()}")
        return None
    try:
        record = parse_records(txt_texts(txt))
    except PolicyError as exc:
        reasons.append(f"no valid MTA-STS record at {name}: {exc}")
        return None
    reasons.append(f"MTA-STS record at {name}: id {record.id}")
    return record


def _policy(fetched: Fetched, reasons: list[str]) -> Policy | None:
    if fetched.body is None:
        reasons.append(f"MTA-STS policy fetch from {fetched.url} failed: {fetched.error}")
        return None
    try:
        policy = parse_policy(fetched.body)
    except PolicyError as exc:
        reasons.append(f"MTA-STS policy at {fetched.url} is not valid: {exc}")
        return None
    patterns = ", ".join(policy.mx) or "no mx"
    reasons.append(f"MTA-STS policy: mode {policy.mode.value}, max_age {policy.max_age}, mx {patterns}")
    return policy


def _mx_hosts(mx: Lookup, reasons: list[str]) -> list[str]:
    if not mx.answered:
        reasons.append(f"MX lookup failed: {mx.describe()}: coverage unknown")
        return []
    records = sorted(
        (int(r.preference), r.exchange.to_text(omit_final_dot=True).lower())  # type: ignore[attr-defined]
        for r in mx.records
    )
    hosts = [name for name in dict.fromkeys(name for _, name in records) if name not in ("", ".")]
    if not hosts:
        reasons.append(f"{mx.name} has no MX host: nothing for the policy to cover")
    return hosts[:MAX_HOSTS]


def _coverage(
    hosts: list[str],
    policy: Policy | None,
    ident: str | None,
    samples: list[PostureSample],
    reasons: list[str],
) -> list[dict[str, object]]:
    which = f"policy id {ident}" if ident else "the policy"
    out: list[dict[str, object]] = []
    for host in hosts:
        pattern = covering(policy, host) if policy is not None else None
        samples.append(sample(MTA_STS_MX_COVERED, f'mx_host="{bound(host)}"', 1 if pattern else 0))
        if policy is None:
            reasons.append(f"MX {host} not covered: no valid policy")
        elif pattern is None:
            reasons.append(f"MX {host} not covered by {which} (mode {policy.mode.value})")
        else:
            reasons.append(f"MX {host} covered by {which} (pattern {pattern})")
        out.append({"host": host, "covered": pattern is not None, "pattern": pattern})
    return out


def _certificate(
    given: CheckInput, trust: pkix.Trust, samples: list[PostureSample], reasons: list[str]
) -> dict[str, object] | None:
    """The certificate check of the MX the probe connected to (section 4.2)."""
    result = given.result
    if result.mx is None or result.address is None:
        return None
    host = result.mx.host
    tls = result.tls
    if tls is not None and tls.chain:
        error = pkix.verify_chain(trust, tls.chain, host)
    elif result.failure is not None and result.failure.reason is FailureReason.STARTTLS_NOT_OFFERED:
        error = "it offers no STARTTLS"
    else:
        reasons.append(f"MX {host}: the probe got no certificate, so its validity is unknown")
        return None
    samples.append(sample(MTA_STS_CERT_VALID, f'mx_host="{bound(host)}"', 0 if error else 1))
    if error:
        reasons.append(f"MX {host} certificate not valid for MTA-STS: {error}")
    else:
        reasons.append(f"MX {host} certificate valid for MTA-STS (PKIX against {trust.source}, name matches)")
    return {"host": host, "valid": error is None, "error": error}


def _changed(
    given: CheckInput, ident: str | None, digest: str | None, reasons: list[str]
) -> tuple[bool, str | None]:
    """Whether the body changed under the same id, and the body digest kept for that id."""
    previous = dict(given.previous.details) if given.previous is not None else {}
    kept_id = previous.get("record_id")
    kept = previous.get("id_policy_sha256") if kept_id == ident else None
    if ident is None:
        return False, None
    if digest is None:  # not fetched this time: what was known stays
        return bool(previous.get("policy_changed_without_id_change")) and kept is not None, (
            kept if isinstance(kept, str) else None
        )
    baseline = kept if isinstance(kept, str) else digest
    if baseline != digest:
        reasons.append(
            f"MTA-STS policy body changed while the record id stayed {ident}: "
            "senders keep the policy they cached until its max_age runs out (RFC 8461 section 3.1)"
        )
        return True, baseline
    return False, baseline


def _policy_json(policy: Policy | None) -> dict[str, object] | None:
    if policy is None:
        return None
    return {"mode": policy.mode.value, "max_age": policy.max_age, "mx": list(policy.mx)}


CHECK = Check("mta_sts", run)
