"""Rendering of probe metrics, built for scrapes that stay cheap as the targets grow.

A scheduled series (one target and module, or one MX host of it) renders its sample lines once,
when its probe completes, into one byte string per metric family (`SeriesState.fragments`),
without the `name{` its first line starts with: every series' fragment of a family starts so,
and the scrape writes it back as the separator of the family's join (`_line_head`). A scrape
then writes, for each family, its HELP/TYPE header once followed by that join of every series'
fragment: no per-sample work happens on the scrape path. The sample lines are the same
in the Prometheus text format 0.0.4 and in OpenMetrics 1.0 (counters' samples end in `_total`
in both, `_created` is not exposed); only the family headers and the `# EOF` trailer differ.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, chain, repeat, zip_longest
from operator import attrgetter

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.utils import floatToGoString

from smtp_exporter.metrics.blackbox import BLACKBOX_FAMILIES, blackbox_samples
from smtp_exporter.metrics.families import (
    ATTEMPT_FAILURES_TOTAL,
    ATTEMPTS,
    DELIVERY_HISTOGRAM,
    DURATION,
    DURATION_HISTOGRAM,
    ENHANCED_STATUS,
    EVERY_RESULT_FAMILIES,
    EXTENSION,
    FAILURES_TOTAL,
    FALLBACK,
    IP_PROTOCOL,
    LAST_RUN,
    MAX_SIZE,
    PHASE_DURATION,
    PHASE_DURATION_HISTOGRAM,
    PIPELINED,
    PROBES_TOTAL,
    REPLY_CODE,
    RESULT_FAMILIES,
    STATE_FAMILIES,
    SUCCESS,
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
SCRAPE_CHUNK_BYTES = 256 * 1024
RECENT_DURATIONS = 32  # probe durations kept per series, for a sparkline
# A scheduled series' families: this exporter's, then blackbox_exporter's names, whose fragments
# stay empty (and whose headers are not written) unless `metrics.blackbox_names` is on.
SERIES_FAMILIES = (*OWN_SERIES_FAMILIES, *BLACKBOX_FAMILIES)

# Every family a scheduled series renders, in exposition order: the probe's, then posture's.
_ALL_FAMILIES: tuple[Family, ...] = (*SERIES_FAMILIES, *POSTURE_FAMILIES)
# The order of a series' fragments: first the families nearly every series has lines for, then
# the rest in exposition order. A series' tuple ends at its last family with lines, so this
# order leaves few empty places in it, each 8 bytes a series (docs/architecture.md).
_EVERY_SERIES: tuple[Family, ...] = (
    SUCCESS,
    DURATION,
    LAST_RUN,
    PHASE_DURATION,
    REPLY_CODE,
    ENHANCED_STATUS,
    EXTENSION,
    MAX_SIZE,
    IP_PROTOCOL,
    ATTEMPTS,
    FALLBACK,
    PIPELINED,
    PROBES_TOTAL,
    DURATION_HISTOGRAM,
)
_STORED_FAMILIES = (*_EVERY_SERIES, *(family for family in _ALL_FAMILIES if family not in _EVERY_SERIES))
_FAMILY_INDEX = {family: index for index, family in enumerate(_STORED_FAMILIES)}


def _line_head(family: Family) -> str:
    """What the first line of every series' fragment of `family` starts with: its sample name
    and the brace of its labels (a series always has labels: target and module). A fragment is
    kept without it, and the scrape writes it back, once per family rather than in every
    series' fragment (docs/architecture.md)."""
    return f"{family.name}_bucket{{" if family.kind is Kind.HISTOGRAM else f"{family.name}{{"


_HEAD_LENGTHS = tuple(len(_line_head(family)) for family in _STORED_FAMILIES)
# The families every series has lines of: those of every result, its probe count and histogram.
_IN_EVERY_SERIES = frozenset((*EVERY_RESULT_FAMILIES, PROBES_TOTAL, DURATION_HISTOGRAM))
# Per family in exposition order: the place of its fragment in a series' tuple, its head, and
# whether every series' fragment of it has lines (then the scrape need not look for empty ones).
_EXPOSITION = tuple(
    (family, _FAMILY_INDEX[family], _line_head(family).encode(), family in _IN_EVERY_SERIES)
    for family in _ALL_FAMILIES
)
_PROBES_TOTAL_INDEX = _FAMILY_INDEX[PROBES_TOTAL]
_FAILURES_TOTAL_INDEX = _FAMILY_INDEX[FAILURES_TOTAL]
_ATTEMPT_FAILURES_TOTAL_INDEX = _FAMILY_INDEX[ATTEMPT_FAILURES_TOTAL]
_DURATION_HISTOGRAM_INDEX = _FAMILY_INDEX[DURATION_HISTOGRAM]
_PHASE_DURATION_HISTOGRAM_INDEX = _FAMILY_INDEX[PHASE_DURATION_HISTOGRAM]
_DELIVERY_HISTOGRAM_INDEX = _FAMILY_INDEX[DELIVERY_HISTOGRAM]
_STATE_POSITIONS = tuple(_FAMILY_INDEX[family] for family in STATE_FAMILIES)


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

    For /metrics: its rendered lines (`fragments`), with the counters and histograms they are
    rendered from. For the pages and logs: its latest probe's result (whose outcome, success or
    failure phase and reason, and times, is the target's state), its latest failed result (kept while successes follow, since that is what an operator looks
    for), and the durations of its last RECENT_DURATIONS probes. The latest failure keeps its
    transcript; a successful result is kept without one: its transcript lives only in the
    shared result history, which keeps the newest `metrics.history_limit` of them.

    `labels` are the series' own labels: target, module, mx_host in mx_mode each, ip_protocol
    ("4" or "6") under ip_protocol both, then the target's static labels. `observe` folds in a
    probe result and re-renders the fragments; `blackbox_names` adds blackbox_exporter's names.
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
        "fragments",
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
        self.fragments: tuple[bytes, ...] = ()

    def reconfigure(
        self,
        *,
        buckets: Buckets,
        phase_histograms: bool,
        blackbox_names: bool = False,
        delivery_buckets: Buckets = _NO_BUCKETS,
    ) -> None:
        """Apply the metrics settings of a new config; histograms restart only if they changed."""
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
            self.fragments = self._render(self.latest, self.latest)

    def observe(self, result: ProbeResult) -> ProbeResult:
        """Fold in `result`; returns the result as kept (`latest`)."""
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
        kept = result.kept() if result.success else result
        self.latest = kept
        if not result.success:
            self.latest_failure = result
        self.fragments = self._render(result, previous)
        return kept

    def recent_durations(self) -> array[float]:
        """The durations of the last probes (RECENT_DURATIONS at most), oldest first."""
        durations = self._durations
        if self.probes <= RECENT_DURATIONS:
            return durations[: self.probes]
        split = self.probes % RECENT_DURATIONS
        return durations[split:] + durations[:split]

    def _render(self, result: ProbeResult, previous: ProbeResult | None) -> tuple[bytes, ...]:
        # The hot path of every scheduled probe: lines are built inline, without helper calls.
        prefix = self._prefix  # never empty: a series has at least target and module
        index = _FAMILY_INDEX
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
        columns[_PROBES_TOTAL_INDEX] = [f"{PROBES_TOTAL.name}{{{prefix}}} {self.probes}\n"]
        if self._failures:
            columns[_FAILURES_TOTAL_INDEX] = [
                f'{FAILURES_TOTAL.name}{{{prefix},phase="{phase}",reason="{reason}"}} {count}\n'
                for (phase, reason), count in self._failures.items()
            ]
        if self._attempt_failures:
            columns[_ATTEMPT_FAILURES_TOTAL_INDEX] = [
                f'{ATTEMPT_FAILURES_TOTAL.name}{{{prefix},reason="{reason}"}} {count}\n'
                for reason, count in self._attempt_failures.items()
            ]
        columns[_DURATION_HISTOGRAM_INDEX] = self._histogram.render(DURATION_HISTOGRAM.name, prefix)
        if self._delivery_histogram is not None:
            columns[_DELIVERY_HISTOGRAM_INDEX] = self._delivery_histogram.render(
                DELIVERY_HISTOGRAM.name, prefix
            )
        if self._phase_histograms:
            phase_lines: list[str] = []
            for phase, histogram in self._phase_histograms.items():
                phase_lines += histogram.render(PHASE_DURATION_HISTOGRAM.name, f'{prefix},phase="{phase}"')
            columns[_PHASE_DURATION_HISTOGRAM_INDEX] = phase_lines
        # Up to the last family with lines: the blackbox and posture families (and often the
        # last few of this exporter's) are empty, and each empty place would cost 8 bytes a series.
        fragments = [b""] * (max(columns) + 1)
        for position, lines in columns.items():
            lines[0] = lines[0][_HEAD_LENGTHS[position] :]  # the scrape writes it (_line_head)
            fragments[position] = "".join(lines).encode()
        if unchanged:
            before = self.fragments
            fragments += [b""] * (len(before) - len(fragments))
            for position in _STATE_POSITIONS:
                if position < len(before):
                    fragments[position] = before[position]
        else:
            # Equal state fragments share one object: without their family's name, a healthy
            # series' success, attempts and pipelined lines are each `target=...} 1\n`. Kept
            # while the state is, this costs nothing at the probes that follow.
            shared: dict[bytes, bytes] = {}
            for position in _STATE_POSITIONS:
                if position < len(fragments) and fragments[position]:
                    fragments[position] = shared.setdefault(fragments[position], fragments[position])
        return tuple(fragments)


class MetricsStore:
    """The scheduled series, in a stable order, and the scrape-time concatenation of their blocks.

    A series is its own key (by identity): no key object is kept per series. A series is added
    once it rendered its first result, so every series here has the lines of `_IN_EVERY_SERIES`."""

    def __init__(self) -> None:
        self._series: dict[SeriesState, None] = {}

    def __len__(self) -> int:
        return len(self._series)

    def add(self, state: SeriesState) -> None:
        self._series[state] = None

    def remove(self, state: SeriesState) -> None:
        self._series.pop(state, None)

    def render(self, *, openmetrics: bool) -> Iterator[bytes]:
        """The chunks of every family's block (without any `# EOF`), from the fragments as they
        are at this call: join them or write them out.

        A family's block is joined in pieces of about SCRAPE_CHUNK_BYTES, each only when it is
        taken, so a writer that drops every piece once written keeps few of them alive. Joined
        whole and all at once, the body (tens of megabytes at 10,000 targets) lands in the heap
        among the series' fragments, and that memory stays resident after the scrape.
        """
        columns = list(zip_longest(*map(_fragments, self._series), fillvalue=b""))
        return _pieces(columns, openmetrics)


_fragments = attrgetter("fragments")


_NOTHING = (b"",)


def _pieces(columns: list[tuple[bytes, ...]], openmetrics: bool) -> Iterator[bytes]:
    """`columns` in the fragments' order (`_STORED_FAMILIES`), written in exposition order, each
    fragment after its family's line head."""
    for family, position, head, in_every_series in _EXPOSITION:
        if position >= len(columns):
            continue
        # Taken out of the list, so that its fragments are let go of right after their pieces
        # are written, while still in the CPU's cache, not all at once at the end of the scrape.
        column, columns[position] = columns[position], ()
        if not in_every_series:
            # Its empty fragments dropped: the head goes before each fragment with lines. Not
            # looked for in a family every series has lines of: filtering every family was 8% of
            # a scrape's CPU at 10,000 targets (docs/architecture.md).
            column = tuple(filter(None, column))
            if not column:
                continue
        sample = column[:: len(column) // 16 + 1]
        step = SCRAPE_CHUNK_BYTES // (sum(map(len, sample)) // len(sample) + 1) + 1
        header = family.openmetrics_header if openmetrics else family.text_header
        yield header
        for start in range(0, len(column), step):
            # The head before each fragment: joined with it, after an empty first.
            yield head.join(_NOTHING + column[start : start + step])


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
    "MetricsStore",
    "SeriesState",
    "render_probe_result",
    "wants_openmetrics",
]
