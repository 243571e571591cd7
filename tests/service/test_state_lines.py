"""A series renders its state lines (reply codes, EHLO keywords, TLS facts, ...) again only when
the state changed (`same_state`): whatever results it observed, its lines are those a series that
saw only its latest result would show."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families as parse_text

from smtp_exporter.config.schema import StartTLS
from smtp_exporter.metrics import Buckets, MetricsStore, SeriesState
from smtp_exporter.metrics.families import EVERY_RESULT_FAMILIES, RESULT_FAMILIES, result_samples, same_state
from smtp_exporter.model import (
    AddressInfo,
    Attempt,
    AttemptOutcome,
    DeliveryInfo,
    Failure,
    FailureReason,
    MXInfo,
    Phase,
    PhaseResult,
    ProbeResult,
    ServerInfo,
    TLSInfo,
)
from smtp_exporter.probe import Prober
from tests.helpers import series_text
from tests.probe.common import compiled, describe, module, trusting
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.tls import TestCA

_RESULT_NAMES = tuple(f"{family.name}{{" for family in RESULT_FAMILIES)

# Few values per field, so that consecutive results often agree on some fields and not others.
_durations = st.sampled_from((0.001, 0.0125, 0.5))
_phases = st.lists(
    st.builds(
        PhaseResult,
        st.sampled_from((Phase.CONNECT, Phase.BANNER, Phase.EHLO, Phase.RCPT, Phase.QUIT)),
        _durations,
        st.sampled_from((None, 220, 250, 550)),
        st.sampled_from((None, "ok", "2.1.0 ok", "5.1.1 unknown")),
    ),
    max_size=5,
).map(tuple)
_tls = st.none() | st.builds(
    TLSInfo,
    st.sampled_from(("TLSv1.2", "TLSv1.3")),
    st.sampled_from(("TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES256-GCM-SHA384")),
    st.booleans(),
    st.sampled_from((None, "expired")),
    st.sampled_from((None, 1.6e9)),
    st.sampled_from((None, 1.9e9, 2.0e9)),
    st.sampled_from((None, "CN=mx.test")),
    st.sampled_from((None, "CN=CA")),
    st.just(()),
    st.sampled_from((None, "ab" * 32, "cd" * 32)),
    chain_not_after_timestamp=st.sampled_from((None, 1.8e9)),
    chain=st.sampled_from(((), (b"der",))),  # kept only until posture ran: not a state
)
_extensions = st.lists(
    st.sampled_from((("PIPELINING", ()), ("SIZE", ("1000",)), ("SIZE", ("2000",)), ("8BITMIME", ()))),
    max_size=3,
).map(tuple)
_attempts = st.lists(
    st.builds(
        Attempt,
        st.none(),
        st.just("127.0.0.1"),
        st.just(4),
        st.sampled_from(tuple(AttemptOutcome)),
        st.none(),
        st.none(),
        _durations,
    ),
    max_size=2,
).map(tuple)
_delivery = st.none() | st.builds(
    DeliveryInfo,
    st.just("<id@probe.test>"),
    st.just("token"),
    st.sampled_from((None, 0.25)),
    hops=st.sampled_from((None, 2)),
    authentication_results=st.sampled_from(((), (("dkim", "pass"),))),
)


@st.composite
def _results(draw: st.DrawFn) -> ProbeResult:
    failure = draw(
        st.none()
        | st.builds(
            Failure,
            st.sampled_from((Phase.BANNER, Phase.RCPT)),
            st.sampled_from((FailureReason.REPLY_PERMANENT, FailureReason.TIMEOUT)),
            st.sampled_from(("550 no", "no reply")),
        )
    )
    return ProbeResult(
        target="mx.test",
        module="m",
        success=failure is None,
        start_timestamp=draw(st.sampled_from((1.7e9, 1.7e9 + 60))),
        duration_seconds=draw(_durations),
        phases=draw(_phases),
        failure=failure,
        tls=draw(_tls),
        server=ServerInfo("mx.test ESMTP", "mx.test", draw(_extensions)),
        address=draw(
            st.none() | st.builds(AddressInfo, st.just("::1"), st.just(25), st.sampled_from((4, 6)))
        ),
        mx=draw(
            st.none()
            | st.builds(MXInfo, st.sampled_from(("mx1.test", "mx2.test")), st.sampled_from((10, 20)))
        ),
        attempts=draw(_attempts),
        fallback=draw(st.booleans()),
        delivery=draw(_delivery),
        pipelined=draw(st.booleans()),
    )


def _series() -> SeriesState:
    return SeriesState(
        (("target", "mx.test"), ("module", "m")), buckets=Buckets((0.01, 0.1)), phase_histograms=True
    )


def _result_lines(*results: ProbeResult) -> list[str]:
    """A series' lines, after `results`, of the families that describe its latest result (no
    counters and histograms, which a series adds up over its probes)."""
    return [line for line in series_text(_series(), *results).splitlines() if line.startswith(_RESULT_NAMES)]


_TLS_FIELDS = tuple(field.name for field in dataclasses.fields(TLSInfo))


@st.composite
def _histories(draw: st.DrawFn) -> list[ProbeResult]:
    """Results as a series sees them: each the one before with one field (or one TLS fact, or
    none) taken from another, so that most of a state stays and a part of it may change."""
    history = [draw(_results())]
    for _ in range(draw(st.integers(1, 3))):
        result, other = history[-1], draw(_results())
        name = draw(st.sampled_from(_VARIED) | st.sampled_from(_TLS_FIELDS))
        if name in _VARIED:
            result = dataclasses.replace(result, **{name: getattr(other, name)})
        elif result.tls is not None and other.tls is not None:
            tls = dataclasses.replace(result.tls, **{name: getattr(other.tls, name)})
            result = dataclasses.replace(result, tls=tls)
        history.append(dataclasses.replace(result, success=result.failure is None))
    return history


_VARIED = (
    "failure",
    "phases",
    "tls",
    "server",
    "address",
    "mx",
    "attempts",
    "fallback",
    "delivery",
    "pipelined",
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_histories())
def test_a_series_shows_its_latest_result_whatever_came_before(results: list[ProbeResult]) -> None:
    assert _result_lines(*results) == _result_lines(results[-1])


@settings(max_examples=200, deadline=None)
@given(_results())
def test_every_result_has_a_sample_of_each_family_the_scrape_counts_on(result: ProbeResult) -> None:
    # The scrape does not look for empty fragments in these families (metrics/exposition.py).
    assert {family for family, _, _ in result_samples(result)} >= set(EVERY_RESULT_FAMILIES)


def _labelled(index: int) -> SeriesState:
    labels = (("target", f"mx{index}.test"), ("module", "m"))
    return SeriesState(labels, buckets=Buckets((0.1,)), phase_histograms=True)


# What a store is asked: record a result for one of three series, or (None) remove that series.
_STORE_STEPS = st.lists(st.tuples(st.integers(0, 2), st.none() | _results()), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_STORE_STEPS)
def test_a_scrape_shows_each_series_in_the_store_as_it_alone_shows(
    steps: list[tuple[int, ProbeResult | None]],
) -> None:
    # The store keeps series' lines in columns by family, and a series that goes leaves its place
    # to the last: whatever was recorded and removed, the scrape has exactly the lines of the
    # series in the store, each as a series of its own that saw the same results shows them.
    store = MetricsStore()
    series = [_labelled(index) for index in range(3)]
    seen: list[list[ProbeResult]] = [[], [], []]
    present = [False, False, False]
    for index, result in steps:
        if result is None:
            store.remove(series[index])
            present[index] = False
        else:
            store.record(series[index], result)
            seen[index].append(result)
            present[index] = True
    expected: list[str] = []
    for index in range(3):
        if present[index]:
            alone = series_text(_labelled(index), *seen[index])
            expected += [line for line in alone.splitlines() if not line.startswith("#")]
    scraped = b"".join(store.render(openmetrics=False)).decode()
    lines = [line for line in scraped.splitlines() if not line.startswith("#")]
    assert sorted(lines) == sorted(expected) and len(store) == sum(present)
    # Read by Prometheus' own parser, every sample belongs to one of the series (a head written
    # without its line, or twice, would merge two lines into one and fail here).
    samples = [sample for family in parse_text(scraped) for sample in family.samples]
    assert len(samples) == len(lines)
    assert all(
        sample.labels["module"] == "m" and sample.labels["target"].startswith("mx") for sample in samples
    )


def test_a_scrape_shows_the_store_as_it_was_when_it_began() -> None:
    # Probes complete while a scrape is written (and a gzip scrape is made in another thread):
    # the scrape is of the lines as they were at its start.
    store = MetricsStore()
    first, second = _labelled(0), _labelled(1)
    result = ProbeResult(
        "mx.test", "m", True, 1.7e9, 0.01, (PhaseResult(Phase.BANNER, 0.001, 220, "ok"),), None
    )
    store.record(first, result)
    store.record(second, result)
    before = b"".join(store.render(openmetrics=False))
    chunks = store.render(openmetrics=False)
    store.record(
        first,
        dataclasses.replace(
            result, success=False, failure=Failure(Phase.BANNER, FailureReason.TIMEOUT, "slow")
        ),
    )
    store.remove(second)
    assert b"".join(chunks) == before != b"".join(store.render(openmetrics=False))


def test_a_series_keeps_equal_state_lines_once() -> None:
    # Without their families' names, success, attempts and pipelined of a healthy series are one
    # line, `target=...} 1`: rendered as one object, and not again while the state stays.
    result = ProbeResult(
        "mx.test", "m", True, 1.7e9, 0.01, (PhaseResult(Phase.BANNER, 0.001, 220, "ok"),), None,
        server=ServerInfo("mx.test", "mx.test", ()),
        attempts=(Attempt(None, "::1", 6, AttemptOutcome.CONNECTED, None, None, 0.001),), pipelined=True,
    )  # fmt: skip
    one = b'target="mx.test",module="m"} 1\n'
    series = _series()
    _, lines = series.observe(result)
    ones = [fragment for fragment in lines.fragments.values() if fragment == one]
    # Success, attempts and pipelined as one object; the count of probes (1) is a line of its own.
    assert len(ones) == 4 and len({id(fragment) for fragment in ones}) == 2
    for _ in range(2):  # the same state: not rendered again, the store keeps those lines
        _, later = series.observe(result)
        assert later.state_kept and one not in later.fragments.values()


def test_each_state_change_is_rendered() -> None:
    """One fact changed at a time, from a state the series has shown: its lines follow."""
    phases = (PhaseResult(Phase.BANNER, 0.001, 220, "ok"), PhaseResult(Phase.RCPT, 0.002, 250, "2.1.5 ok"))
    tls = TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", True, None, 1.6e9, 1.9e9, "CN=a", "CN=CA", (), "ab")
    base = ProbeResult(
        "mx.test", "m", True, 1.7e9, 0.01, phases, None, tls=tls,
        server=ServerInfo("mx.test", "mx.test", (("SIZE", ("1000",)),)),
        address=AddressInfo("::1", 25, 6), mx=MXInfo("mx1.test", 10),
    )  # fmt: skip
    refused = (phases[0], PhaseResult(Phase.RCPT, 0.002, 550, "5.1.1 unknown"))
    failed = dataclasses.replace(
        base, success=False, phases=refused, failure=Failure(Phase.RCPT, FailureReason.REPLY_PERMANENT, "550")
    )
    pairs = {
        "success": (base, failed),
        "failure reason": (failed, dataclasses.replace(failed, failure=Failure(Phase.RCPT, FailureReason.REPLY_TEMPORARY, "451"))),
        "reply": (base, dataclasses.replace(base, phases=refused)),
        "enhanced status only": (base, dataclasses.replace(base, phases=(phases[0], PhaseResult(Phase.RCPT, 0.002, 250, "2.1.0 ok")))),
        "tls": (base, dataclasses.replace(base, tls=None)),
        "extensions": (base, dataclasses.replace(base, server=ServerInfo("mx.test", "mx.test", (("SIZE", ("2000",)),)))),
        "address family": (base, dataclasses.replace(base, address=AddressInfo("127.0.0.1", 25, 4))),
        "mx": (base, dataclasses.replace(base, mx=MXInfo("mx2.test", 20))),
        "attempts": (base, dataclasses.replace(base, attempts=(Attempt(None, "::1", 6, AttemptOutcome.CONNECTED, None, None, 0.001),))),
        "fallback": (base, dataclasses.replace(base, fallback=True)),
        "pipelined": (base, dataclasses.replace(base, pipelined=True)),
    }  # fmt: skip
    tls_changes = {
        "version": "TLSv1.2",
        "cipher": "ECDHE-RSA-AES256-GCM-SHA384",
        "verified": False,
        "cert_not_before_timestamp": 1.5e9,
        "cert_not_after_timestamp": 2.0e9,
        "chain_not_after_timestamp": 1.8e9,
        "subject": "CN=b",
        "issuer": "CN=other CA",
        "fingerprint_sha256": "cd",
    }
    for name, value in tls_changes.items():
        pairs[f"tls {name}"] = (
            base,
            dataclasses.replace(base, tls=dataclasses.replace(tls, **{name: value})),
        )
    for name, (before, after) in pairs.items():
        assert not same_state(after, before), name
        assert _result_lines(before, after) == _result_lines(after) != _result_lines(before), name


async def test_probes_of_an_unchanged_server_have_the_same_state(
    starttls_server: AiosmtpdServer, tls_ca: TestCA
) -> None:
    """Real probes through STARTTLS, each compared with the previous one as a series keeps it:
    the same state, so that a scheduled series renders only what it measured."""
    settings_ = module(
        "smtp_full", port=starttls_server.port, starttls=StartTLS.REQUIRED, tls_config=trusting(tls_ca)
    )
    target, compiled_module, text = compiled(starttls_server.target, "m", settings_)
    prober = Prober()
    first = await prober.probe(target, compiled_module, text)
    second = await prober.probe(target, compiled_module, text)
    assert first.success and second.success, describe(second)
    assert second.tls is not None and second.server.extensions
    assert same_state(second, first.kept())
