"""Rendering of probe metrics, built for scrapes that stay cheap as the targets grow.

A scheduled series (one target and module, or one MX host of it) renders its sample lines once,
when its probe completes, into one byte string per metric family (`Lines`), without the `name{`
its first line starts with: every series' fragment of a family starts so, and the scrape writes
it back as the separator of the family's join (`_line_head`). The store (metrics/store.py) keeps
the fragments; a scrape writes, for each family, its HELP/TYPE header once followed by that join
of every series' fragment: no per-sample work happens on the scrape path. The sample lines are
the same in the Prometheus text format 0.0.4 and in OpenMetrics 1.0 (counters' samples end in
`_total` in both, `_created` is not exposed); only the family headers and the `# EOF` trailer
differ.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import accumulate, chain, repeat
from typing import NamedTuple

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.utils import floatToGoString

from smtp_exporter.metrics.blackbox import BLACKBOX_FAMILIES, blackbox_samples
from smtp_exporter.metrics.families import (
    ATTEMPT_FAILURES_TOTAL,
    DELIVERY_HISTOGRAM,
    DURATION_HISTOGRAM,
    EVERY_RESULT_FAMILIES,
    FAILURES_TOTAL,
    PHASE_DURATION_HISTOGRAM,
    PROBES_TOTAL,
    RESULT_FAMILIES,
    STATE_FAMILIES,
    Family,
    Kind,
    Labels,
    Sample,
    attempt_failures,
    escape_label_value,
    measured_samples,
    result_samples,
    same_state,
)
from smtp_exporter.metrics.families import SERIES_FAMILIES as OWN_SERIES_FAMILIES
from smtp_exporter.metrics.posture import POSTURE_FAMILIES, posture_samples
from smtp_exporter.model import ProbeResult

TEXT_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_go_float: Callable[[float], str] = floatToGoString  # the client library's float spelling (le="1.0")
OPENMETRICS_EOF = b"# EOF\n"
RECENT_DURATIONS = 32  # probe durations kept per series, for a sparkline
# A scheduled series' families: this exporter's, then blackbox_exporter's names, whose fragments
# stay empty (and whose headers are not written) unless `metrics.blackbox_names` is on.
SERIES_FAMILIES = (*OWN_SERIES_FAMILIES, *BLACKBOX_FAMILIES)

# Every family a scheduled series renders, in exposition order: the probe's, then posture's.
# A family's place here is its column in the store (metrics/store.py).
EXPOSED_FAMILIES: tuple[Family, ...] = (*SERIES_FAMILIES, *POSTURE_FAMILIES)
_POSITION = {family: position for position, family in enumerate(EXPOSED_FAMILIES)}


def _line_head(family: Family) -> str:
    """What the first line of every series' fragment of `family` starts with: its sample name
    and the brace of its labels (a series always has labels: target and module). A fragment is
    kept without it, and the scrape writes it back, once per family rather than in every
    series' fragment (docs/architecture.md)."""
    return f"{family.name}_bucket{{" if family.kind is Kind.HISTOGRAM else f"{family.name}{{"


# Per family in exposition order: its line head, and whether every series has lines of it (those
# of every result, its probe count and histogram: then the scrape need not look for empty ones).
LINE_HEADS = tuple(_line_head(family).encode() for family in EXPOSED_FAMILIES)
_HEAD_LENGTHS = tuple(map(len, LINE_HEADS))
_IN_EVERY_SERIES = frozenset((*EVERY_RESULT_FAMILIES, PROBES_TOTAL, DURATION_HISTOGRAM))
IN_EVERY_SERIES = tuple(family in _IN_EVERY_SERIES for family in EXPOSED_FAMILIES)
STATE_POSITIONS = frozenset(_POSITION[family] for family in STATE_FAMILIES)
_PROBES_TOTAL_POSITION = _POSITION[PROBES_TOTAL]
_FAILURES_TOTAL_POSITION = _POSITION[FAILURES_TOTAL]
_ATTEMPT_FAILURES_TOTAL_POSITION = _POSITION[ATTEMPT_FAILURES_TOTAL]
_DURATION_HISTOGRAM_POSITION = _POSITION[DURATION_HISTOGRAM]
_PHASE_DURATION_HISTOGRAM_POSITION = _POSITION[PHASE_DURATION_HISTOGRAM]
_DELIVERY_HISTOGRAM_POSITION = _POSITION[DELIVERY_HISTOGRAM]


class Lines(NamedTuple):
    """A series' lines as one probe rendered them: per family with lines (by its place in
    EXPOSED_FAMILIES), its fragment: the lines without the line head of the first.

    `state_kept`: the probe found the state the previous one did (`same_state`), so the lines of
    STATE_FAMILIES were not rendered again and are not here: the previous ones stay. Any other
    family not here has no lines."""

    fragments: dict[int, bytes]
    state_kept: bool


def wants_openmetrics(accept: str | None) -> bool:
    """Whether an Accept header asks for OpenMetrics (as Prometheus does when it prefers it)."""
    if not accept:
        return False
    return any(part.split(";", 1)[0].strip() == "application/openmetrics-text" for part in accept.split(","))


def label_text(labels: Labels) -> str:
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)


def format_value(value: float) -> str:
    """A sample value: integers as such, floats in their shortest exact form (`repr`)."""
    if value.__class__ is int:
        return str(value)
    if value - value == 0:  # finite (inf - inf and nan - nan are nan)
        return repr(value)
    return _go_float(value)


@dataclass(frozen=True, slots=True)
class Buckets:
    """A histogram layout: its upper bounds (+Inf implied) and their `le` label texts, made once
    per config and shared by every series' histograms."""

    bounds: tuple[float, ...]
    # Each bucket line's text after the series' labels, `le="0.005"} `, the last for +Inf.
    le_texts: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        les = (*map(_go_float, self.bounds), "+Inf")
        object.__setattr__(self, "le_texts", tuple(f'le="{le}"}} ' for le in les))


_NO_BUCKETS = Buckets(())


class Histogram:
    """A classic cumulative histogram with fixed buckets."""

    __slots__ = ("_counts", "buckets", "count", "sum")

    def __init__(self, buckets: Buckets) -> None:
        self.buckets = buckets
        # Per bucket, not cumulative; last is +Inf. Machine integers: in a list, every count
        # above 256 would be an int object of its own, per bucket and series.
        self._counts = array("Q", (0,)) * (len(buckets.bounds) + 1)  # exact size
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self.buckets.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def render(self, name: str, prefix: str) -> list[str]:
        head = f"{name}_bucket{{{prefix}," if prefix else f"{name}_bucket{{"
        # The bucket lines are joined in C (zip, map, accumulate): every probe renders its
        # series' histograms again, and a Python loop over the buckets was ~4% of a probe's
        # bytecodes (docs/architecture.md). The last running count, +Inf's, is `count`.
        cumulative = map(str, accumulate(self._counts))
        lines = list(map("".join, zip(repeat(head), self.buckets.le_texts, cumulative, repeat("\n"))))
        braces = f"{{{prefix}}}" if prefix else ""
        lines.append(f"{name}_count{braces} {self.count}\n")
        lines.append(f"{name}_sum{braces} {format_value(self.sum)}\n")
        return lines


class SeriesState:
    """What is kept of one scheduled series (one target and module, or one MX host of it).

    For /metrics: the counters and histograms its lines are rendered from (the lines themselves
    are kept in the store, metrics/store.py). For the pages and logs: its latest probe's result
    (whose outcome, success or failure phase and reason, and times, is the target's state), its
    latest failed result (kept while successes follow, since that is what an operator looks
    for), and the durations of its last RECENT_DURATIONS probes. The latest failure keeps its
    transcript; a successful result is kept without one: its transcript lives only in the
    shared result history, which keeps the newest `metrics.history_limit` of them.

    `labels` are the series' own labels: target, module, mx_host in mx_mode each, ip_protocol
    ("4" or "6") under ip_protocol both, then the target's static labels. `observe` folds in a
    probe result and renders the series' lines; `blackbox_names` adds blackbox_exporter's names.
    """

    __slots__ = (
        "_attempt_failures",
        "_blackbox_names",
        "_delivery_buckets",
        "_delivery_histogram",
        "_durations",
        "_failures",
        "_histogram",
        "_phase_histograms",
        "_prefix",
        "ip_protocol",
        "latest",
        "latest_failure",
        "mx_host",
        "probes",
    )

    def __init__(
        self,
        labels: Labels,
        *,
        buckets: Buckets,
        phase_histograms: bool,
        blackbox_names: bool = False,
        delivery_buckets: Buckets = _NO_BUCKETS,
    ) -> None:
        self._blackbox_names = blackbox_names
        self._delivery_buckets = delivery_buckets
        # Made at the first result of a module with `delivery`: other series have none.
        self._delivery_histogram: Histogram | None = None
        self.mx_host: str | None = next((value for name, value in labels if name == "mx_host"), None)
        family = next((value for name, value in labels if name == "ip_protocol"), None)
        self.ip_protocol: int | None = None if family is None else int(family)  # ip_protocol both
        self._prefix = label_text(labels)
        self.probes = 0
        # Made at the first failure: most series never fail, and an empty dict costs 64 bytes.
        self._failures: dict[tuple[str, str], int] | None = None
        self._attempt_failures: dict[str, int] | None = None
        self._histogram = Histogram(buckets)
        self._phase_histograms: dict[str, Histogram] | None = {} if phase_histograms else None
        self.latest: ProbeResult | None = None
        self.latest_failure: ProbeResult | None = None
        # A ring written at index (probes - 1) % RECENT_DURATIONS, of machine floats, not float
        # objects; single precision (7 digits) is more than a sparkline can show, and half the size.
        self._durations = array("f", (0.0,)) * RECENT_DURATIONS

    def reconfigure(
        self,
        *,
        buckets: Buckets,
        phase_histograms: bool,
        blackbox_names: bool = False,
        delivery_buckets: Buckets = _NO_BUCKETS,
    ) -> Lines | None:
        """Apply the metrics settings of a new config; histograms restart only if they changed.
        Returns the series' lines rendered again, if the settings change them."""
        changed = blackbox_names != self._blackbox_names
        self._blackbox_names = blackbox_names
        if delivery_buckets.bounds != self._delivery_buckets.bounds:
            self._delivery_buckets = delivery_buckets
            if self._delivery_histogram is not None:
                self._delivery_histogram = Histogram(delivery_buckets)
                changed = True
        if buckets.bounds != self._histogram.buckets.bounds:
            self._histogram = Histogram(buckets)
            if self._phase_histograms:
                self._phase_histograms = {}
            changed = True
        if phase_histograms != (self._phase_histograms is not None):
            self._phase_histograms = {} if phase_histograms else None
            changed = True
        if changed and self.latest is not None:
            return self._render(self.latest, self.latest)
        return None

    def observe(self, result: ProbeResult) -> tuple[ProbeResult, Lines]:
        """Fold in `result`; returns it as kept (`latest`), and the series' lines rendered from it."""
        previous = self.latest
        self._durations[self.probes % RECENT_DURATIONS] = result.duration_seconds
        self.probes += 1
        if result.failure is not None:
            key = (result.failure.phase.value, result.failure.reason.value)
            failures = self._failures
            if failures is None:
                failures = self._failures = {}
            failures[key] = failures.get(key, 0) + 1
        for reason in attempt_failures(result):
            counts = self._attempt_failures
            if counts is None:
                counts = self._attempt_failures = {}
            counts[reason] = counts.get(reason, 0) + 1
        self._histogram.observe(result.duration_seconds)
        delivery = result.delivery
        if delivery is not None:
            if self._delivery_histogram is None:
                self._delivery_histogram = Histogram(self._delivery_buckets)
            if delivery.duration_seconds is not None:
                self._delivery_histogram.observe(delivery.duration_seconds)
        if self._phase_histograms is not None:
            buckets = self._histogram.buckets
            for phase in result.phases:
                histogram = self._phase_histograms.get(phase.phase)
                if histogram is None:
                    histogram = self._phase_histograms[phase.phase] = Histogram(buckets)
                histogram.observe(phase.duration_seconds)
        kept = self.latest = result.kept() if result.success else result
        if not result.success:
            self.latest_failure = result
        return kept, self._render(result, previous)

    def lines(self) -> Lines:
        """The series' lines rendered whole from its latest result (there must be one)."""
        assert self.latest is not None, "a series without a result has no lines"
        return self._render(self.latest, None)

    def recent_durations(self) -> array[float]:
        """The durations of the last probes (RECENT_DURATIONS at most), oldest first."""
        durations = self._durations
        if self.probes <= RECENT_DURATIONS:
            return durations[: self.probes]
        split = self.probes % RECENT_DURATIONS
        return durations[split:] + durations[:split]

    def _render(self, result: ProbeResult, previous: ProbeResult | None) -> Lines:
        # The hot path of every scheduled probe: lines are built inline, without helper calls.
        prefix = self._prefix  # never empty: a series has at least target and module
        index = _POSITION
        columns: dict[int, list[str]] = {}
        # A target's state (its reply codes, EHLO keywords, TLS facts, ...) is nearly always
        # what its previous probe found: then those lines, about half of a healthy series', are
        # the ones the previous render made (docs/architecture.md).
        unchanged = previous is not None and same_state(result, previous)
        if unchanged:
            samples: Iterable[Sample] = measured_samples(result)
        else:
            samples = result_samples(result, mx_host_label=self.mx_host is not None)
        if self._blackbox_names:
            samples = chain(samples, blackbox_samples(result))
        if result.posture:
            samples = chain(samples, posture_samples(result, self.mx_host))
        for family, extra, value in samples:
            text = str(value) if value.__class__ is int else format_value(value)
            if extra:
                line = f"{family.name}{{{prefix},{extra}}} {text}\n"
            else:
                line = f"{family.name}{{{prefix}}} {text}\n"
            lines = columns.get(index[family])
            if lines is None:
                columns[index[family]] = [line]
            else:
                lines.append(line)
        columns[_PROBES_TOTAL_POSITION] = [f"{PROBES_TOTAL.name}{{{prefix}}} {self.probes}\n"]
        if self._failures:
            columns[_FAILURES_TOTAL_POSITION] = [
                f'{FAILURES_TOTAL.name}{{{prefix},phase="{phase}",reason="{reason}"}} {count}\n'
                for (phase, reason), count in self._failures.items()
            ]
        if self._attempt_failures:
            columns[_ATTEMPT_FAILURES_TOTAL_POSITION] = [
                f'{ATTEMPT_FAILURES_TOTAL.name}{{{prefix},reason="{reason}"}} {count}\n'
                for reason, count in self._attempt_failures.items()
            ]
        columns[_DURATION_HISTOGRAM_POSITION] = self._histogram.render(DURATION_HISTOGRAM.name, prefix)
        if self._delivery_histogram is not None:
            columns[_DELIVERY_HISTOGRAM_POSITION] = self._delivery_histogram.render(
                DELIVERY_HISTOGRAM.name, prefix
            )
        if self._phase_histograms:
            phase_lines: list[str] = []
            for phase, histogram in self._phase_histograms.items():
                phase_lines += histogram.render(PHASE_DURATION_HISTOGRAM.name, f'{prefix},phase="{phase}"')
            columns[_PHASE_DURATION_HISTOGRAM_POSITION] = phase_lines
        fragments: dict[int, bytes] = {}
        for position, lines in columns.items():
            lines[0] = lines[0][_HEAD_LENGTHS[position] :]  # the scrape writes it (_line_head)
            fragments[position] = "".join(lines).encode()
        if not unchanged:
            # Equal state fragments share one object: without their family's name, a healthy
            # series' success, attempts and pipelined lines are each `target=...} 1\n`. Kept
            # while the state is, this costs nothing at the probes that follow.
            shared: dict[bytes, bytes] = {}
            for position in STATE_POSITIONS:
                fragment = fragments.get(position)
                if fragment is not None:
                    fragments[position] = shared.setdefault(fragment, fragment)
        return Lines(fragments, state_kept=unchanged)


def render_probe_result(result: ProbeResult, *, openmetrics: bool) -> bytes:
    """The body of a `/probe` response: the result's families without target labels.

    Every request renders afresh and keeps nothing (the blackbox_exporter model), with
    blackbox_exporter's names first (`probe_success`, ...) so its users' rules keep working.
    """
    headers = _OPENMETRICS_HEADERS if openmetrics else _TEXT_HEADERS
    columns: dict[Family, list[str]] = {}
    for family, labels, value in chain(
        blackbox_samples(result), result_samples(result), posture_samples(result)
    ):
        text = str(value) if value.__class__ is int else format_value(value)
        line = f"{family.name}{{{labels}}} {text}\n" if labels else f"{family.name} {text}\n"
        lines = columns.get(family)
        if lines is None:
            columns[family] = [headers[family], line]
        else:
            lines.append(line)
    parts: list[str] = []
    for family in _PROBE_FAMILIES:
        lines = columns.get(family)
        if lines is not None:
            parts += lines
    counts: dict[str, int] = {}
    for reason in attempt_failures(result):
        counts[reason] = counts.get(reason, 0) + 1
    if counts:
        parts.append(headers[ATTEMPT_FAILURES_TOTAL])
        parts += [f'{ATTEMPT_FAILURES_TOTAL.name}{{reason="{r}"}} {n}\n' for r, n in counts.items()]
    if openmetrics:
        parts.append("# EOF\n")
    return "".join(parts).encode()


_PROBE_FAMILIES = (*BLACKBOX_FAMILIES, *RESULT_FAMILIES, *POSTURE_FAMILIES)
# Family headers as text, for renderers that build a whole body as one string.
_TEXT_HEADERS = {family: family.text_header.decode() for family in (*_PROBE_FAMILIES, ATTEMPT_FAILURES_TOTAL)}
_OPENMETRICS_HEADERS = {
    family: family.openmetrics_header.decode() for family in (*_PROBE_FAMILIES, ATTEMPT_FAILURES_TOTAL)
}


__all__ = [
    "OPENMETRICS_CONTENT_TYPE",
    "OPENMETRICS_EOF",
    "TEXT_CONTENT_TYPE",
    "Buckets",
    "Histogram",
    "Lines",
    "SeriesState",
    "render_probe_result",
    "wants_openmetrics",
]
