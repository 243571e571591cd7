"""What a series keeps of its probes, and the shared result history."""

from __future__ import annotations

import dataclasses
from array import array

from smtp_exporter.history import ResultHistory
from smtp_exporter.metrics import Buckets, SeriesState
from smtp_exporter.metrics.exposition import RECENT_DURATIONS
from smtp_exporter.model import (
    CheckReport,
    DeliveryInfo,
    Failure,
    FailureReason,
    PackedPhases,
    Phase,
    PhaseResult,
    ProbeResult,
    Transcript,
)
from smtp_exporter.presentation import series_transcript_text

LABELS = (("target", "mx.test:25"), ("module", "m"))


def _result(
    *, success: bool, start: float = 1000.0, duration: float = 0.01, target: str = "mx.test:25"
) -> ProbeResult:
    failure = None if success else Failure(Phase.RCPT, FailureReason.REPLY_PERMANENT, "550 no such user")
    return ProbeResult(
        target=target,
        module="m",
        success=success,
        start_timestamp=start,
        duration_seconds=duration,
        phases=(PhaseResult(Phase.CONNECT, 0.001), PhaseResult(Phase.RCPT, 0.002, 250 if success else 550)),
        failure=failure,
        transcript=Transcript(
            [(start + 0.001, "S", "220 mx.test ESMTP"), (start + 0.002, "C", b"QUIT\r\n")], start
        ),
    )


def _state() -> SeriesState:
    return SeriesState(LABELS, buckets=Buckets((0.01, 1.0)), phase_histograms=False)


def test_a_series_keeps_its_latest_failure_while_successes_follow() -> None:
    state = _state()
    assert state.latest is None and state.latest_failure is None
    failed = _result(success=False, start=1.0)
    state.observe(failed)
    assert state.latest is failed and state.latest_failure is failed
    assert failed.failure is not None and failed.failure.reason is FailureReason.REPLY_PERMANENT
    assert failed.failure.phase is Phase.RCPT and not state.latest.success
    state.observe(_result(success=True, start=2.0))
    assert state.latest is not None and state.latest.success and state.latest.start_timestamp == 2.0
    assert state.latest_failure is failed  # kept, with its transcript
    assert len(state.latest_failure.transcript) == 2
    assert len(state.latest.transcript) == 0  # a success keeps its transcript only in the history
    assert state.latest.failure is None


def test_a_series_keeps_the_durations_of_its_last_probes_oldest_first() -> None:
    state = _state()
    assert list(state.recent_durations()) == []
    for n in range(3):
        state.observe(_result(success=True, duration=n / 1000))
    # Kept in single precision: compared as such.
    assert state.recent_durations() == array("f", [0.0, 0.001, 0.002])
    for n in range(3, RECENT_DURATIONS + 10):
        state.observe(_result(success=True, duration=n / 1000))
    assert state.recent_durations() == array("f", [n / 1000 for n in range(10, RECENT_DURATIONS + 10)])


def test_the_history_keeps_the_newest_results_and_resizes() -> None:
    history = ResultHistory(3)
    results = [_result(success=n % 2 == 0, start=float(n)) for n in range(5)]
    for result in results:
        history.add(result, scheduled=True)
    assert [entry.result for entry in history] == results[:1:-1]  # newest first, the last 3
    assert [entry.id for entry in history] == [5, 4, 3]
    assert history.get(2) is None and history.get(6) is None
    entry = history.get(4)
    assert entry is not None and entry.result is results[3]
    history.resize(2)
    assert [entry.id for entry in history] == [5, 4] and history.limit == 2
    history.resize(10)
    history.add(results[0], scheduled=False)
    assert [entry.id for entry in history] == [6, 5, 4]
    assert history.get(6) is not None and not history.get(6).scheduled  # type: ignore[union-attr]


def test_a_kept_success_reads_its_phases_as_the_probe_made_them() -> None:
    phases = (
        PhaseResult(Phase.CONNECT, 0.000456127),
        PhaseResult(Phase.BANNER, 1e-9, 220, "mx.test ESMTP"),
        PhaseResult(Phase.RCPT, 0.1 + 0.2, 599, "2.1.5 Ok"),
        PhaseResult(Phase.QUIT, 12.5, 221, None),
    )
    full = dataclasses.replace(_result(success=True), phases=phases)
    kept, _ = _state().observe(full)
    assert isinstance(kept.phases, PackedPhases)
    assert tuple(kept.phases) == phases and kept.phases == phases and len(kept.phases) == 4
    assert kept.phases[0].reply_code is None and kept.phases[-1] == phases[-1]
    assert kept.phases[1:3] == phases[1:3]
    assert kept.phase(Phase.RCPT) == phases[2] and kept.phase(Phase.EHLO) is None
    assert kept.phases[2].enhanced_status == "2.1.5" and kept.phases[2].duration_seconds == 0.1 + 0.2
    assert hash(kept.phases) == hash(phases)
    failed = _result(success=False)
    assert _state().observe(failed)[0].phases is failed.phases  # a failure is kept whole


def test_a_kept_delivery_success_keeps_every_field_and_its_imap_phases() -> None:
    # The delivery check's IMAP phases follow the SMTP ones, with a reply text and no code.
    phases = (
        PhaseResult(Phase.MESSAGE, 0.003, 250, "2.0.0 Ok: queued"),
        PhaseResult(Phase.QUIT, 0.001, 221, "2.0.0 Bye"),
        PhaseResult(Phase.IMAP_LOGIN, 0.002, None, "a1 OK 2.1.0 logged in"),
        PhaseResult(Phase.DELIVERY, 0.5, None, "UID 7"),
        PhaseResult(Phase.IMAP_LOGOUT, 0.001, None, "a5 OK done"),
    )
    full = dataclasses.replace(
        _result(success=True),
        phases=phases,
        posture=(CheckReport("mx_hygiene", 999.0, (), ("ok",)),),
        delivery=DeliveryInfo("<id@test>", "tok", 0.5, hops=2),
        pipelined=True,
        fallback=True,
    )
    kept, _ = _state().observe(full)
    assert kept.phases == phases and [p.phase for p in kept.phases][-1] is Phase.IMAP_LOGOUT
    assert kept.phases[2].enhanced_status is None and kept.phases[0].enhanced_status == "2.0.0"
    for field in dataclasses.fields(ProbeResult):
        if field.name not in ("phases", "transcript"):
            assert getattr(kept, field.name) == getattr(full, field.name), field.name
    assert len(kept.transcript) == 0


def test_a_history_of_zero_keeps_nothing() -> None:
    history = ResultHistory(0)
    history.add(_result(success=True), scheduled=True)
    assert len(history) == 0 and list(history) == [] and history.get(1) is None


def test_the_history_keeps_a_series_result_once_and_its_transcript_beside_it() -> None:
    history = ResultHistory(10)
    state = _state()
    full = _result(success=True, start=5.0)
    kept, _ = state.observe(full)
    assert kept is state.latest and len(kept.transcript) == 0
    history.add(kept, scheduled=True, transcript=full.transcript, mx_host="mx1.test")
    history.add(dataclasses.replace(full), scheduled=False)  # a /probe of the same target
    entry = history.find(kept)
    assert entry is not None and entry.result is kept and entry.mx_host == "mx1.test"
    assert entry.full_result().transcript is full.transcript
    assert [line.text for line in entry.full_result().transcript] == ["220 mx.test ESMTP", "QUIT"]
    assert history.find(dataclasses.replace(kept)) is None  # the very object, not an equal one
    probe = history.get(2)
    assert probe is not None and probe.full_result() is probe.result  # kept whole


def test_a_transcript_that_aged_out_says_so_and_keeps_the_phase_table() -> None:
    state = _state()
    state.observe(_result(success=False, start=1.0))
    state.observe(_result(success=True, start=2.0))
    assert state.latest is not None
    text = series_transcript_text(state.latest, None, state.latest_failure, 1000)
    head, _, failure = text.partition("The latest failed probe:")
    assert "no longer kept" in head and "metrics.history_limit" in head and "1000" in head
    assert "Phases:" in head and "rcpt" in head and "SUCCESS mx.test:25" in head
    assert "220 mx.test ESMTP" in failure and "FAILURE mx.test:25" in failure  # its transcript is kept
