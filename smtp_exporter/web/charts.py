"""The status page's two small charts, as inline SVG: a probe's phases as one bar, and a
series' recent durations as a sparkline.

Inline SVG, styled by class from the page's one stylesheet: no script, no external asset and
no `style` attribute, so the page works offline and under a CSP that allows only its own
stylesheet's hash. Each chart carries its facts as text too (`aria-label`, `<title>`), for
screen readers and as a tooltip.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from smtp_exporter.model import ProbeResult

BAR_WIDTH = 120
BAR_HEIGHT = 12
MIN_SEGMENT = 2  # px: a 0.2 ms phase beside a 5 s timeout must still be seen
SPARK_WIDTH = 80
SPARK_HEIGHT = 20


def duration_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def phase_segments(result: ProbeResult) -> list[tuple[str, float, bool]]:
    """(phase, seconds, failed) in order. A probe's phases are the ones that completed: the
    phase it failed in is added with the time left over (a timeout in the banner is the
    banner's 5 s, not nothing after the connect's 1 ms)."""
    segments = [(p.phase.value, p.duration_seconds, False) for p in result.phases]
    failure = result.failure
    if failure is not None:
        for index, (name, seconds, _) in enumerate(segments):
            if name == failure.phase.value:
                segments[index] = (name, seconds, True)
                break
        else:
            spent = sum(seconds for _, seconds, _ in segments)
            segments.append((failure.phase.value, max(0.0, result.duration_seconds - spent), True))
    return segments


def _widths(durations: Sequence[float], width: float) -> list[float]:
    """Pixel widths proportional to `durations`, none under MIN_SEGMENT, summing to `width`."""
    total = sum(durations)
    spare = width - MIN_SEGMENT * len(durations)
    if spare <= 0 or total <= 0:
        return [width / len(durations)] * len(durations)
    return [MIN_SEGMENT + spare * d / total for d in durations]


def phase_bar(result: ProbeResult) -> str:
    """The phases as one bar (alternating shades, the failed one red), then where it failed."""
    segments = phase_segments(result)
    if not segments:
        return ""
    facts = [
        f"{name} {'failed after ' if failed else ''}{duration_text(seconds)}"
        for name, seconds, failed in segments
    ]
    rects = []
    x = 0.0
    for index, ((_, _, failed), fact, width) in enumerate(
        zip(segments, facts, _widths([s for _, s, _ in segments], BAR_WIDTH), strict=True)
    ):
        shade = "failed" if failed else f"p{index % 2}"
        rects.append(
            f'<rect class="{shade}" x="{x:.1f}" y="0" width="{width:.1f}" height="{BAR_HEIGHT}">'
            f"<title>{escape(fact)}</title></rect>"
        )
        x += width
    label = escape(", ".join(facts))
    svg = (
        f'<svg class="bar" role="img" aria-label="{label}" width="{BAR_WIDTH}" height="{BAR_HEIGHT}" '
        f'viewBox="0 0 {BAR_WIDTH} {BAR_HEIGHT}">{"".join(rects)}</svg>'
    )
    where = next(((name, i) for i, (name, _, bad) in enumerate(segments) if bad), None)
    if where is None:
        return svg
    name, index = where
    at = sum(seconds for _, seconds, _ in segments[:index])
    return f'{svg}<span class="where">&#10007; {escape(name)} at {escape(duration_text(at))}</span>'


def sparkline(durations: Sequence[float]) -> str:
    """The recent durations (oldest first) as a line scaled to the slowest, the latest a dot."""
    if not durations:
        return ""
    top = max(durations) or 1.0
    step = SPARK_WIDTH / max(1, len(durations) - 1)
    points = [
        (i * step if len(durations) > 1 else SPARK_WIDTH / 2, SPARK_HEIGHT - 2 - (SPARK_HEIGHT - 4) * d / top)
        for i, d in enumerate(durations)
    ]
    label = escape(
        f"durations of the last {len(durations)} probes: {duration_text(min(durations))} to "
        f"{duration_text(top)}, latest {duration_text(durations[-1])}"
    )
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    last_x, last_y = points[-1]
    return (
        f'<svg class="spark" role="img" aria-label="{label}" width="{SPARK_WIDTH}" height="{SPARK_HEIGHT}" '
        f'viewBox="0 0 {SPARK_WIDTH} {SPARK_HEIGHT}"><title>{label}</title>'
        f'<polyline points="{line}"/><circle cx="{last_x:.1f}" cy="{last_y:.1f}" r="2"/></svg>'
    )
