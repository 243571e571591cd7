"""The metric families of the posture checks (smtp_exporter/posture/), and their samples.

A check's report names each sample's family by its metric name (the report lives in `model`,
below this package); `posture_samples` maps them back. A new check adds its families here, to
`POSTURE_FAMILIES`, and documents them in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator

from smtp_exporter.metrics.families import Family, Kind, Sample
from smtp_exporter.model import ProbeResult

POSTURE_LAST_RUN = Family(
    "smtp_posture_last_run_timestamp_seconds",
    Kind.GAUGE,
    "Unix time at which each posture check last ran for this series (its results are kept in between).",
)
# mx_hygiene
MX_RECORDS = Family("smtp_mx_records", Kind.GAUGE, "MX records of the mail domain (a null MX counts as one).")
MX_PROBLEM = Family(
    "smtp_mx_problem", Kind.GAUGE, "Whether the mail domain's MX records have each problem (1) or not (0)."
)

POSTURE_FAMILIES: tuple[Family, ...] = (POSTURE_LAST_RUN, MX_RECORDS, MX_PROBLEM)
_BY_NAME = {family.name: family for family in POSTURE_FAMILIES}


def posture_samples(result: ProbeResult) -> Iterator[Sample]:
    """The samples of the result's posture reports: each check's last run, then its own."""
    for report in result.posture:
        yield POSTURE_LAST_RUN, f'check="{report.check}"', report.ran_at
        for name, labels, value in report.samples:
            yield _BY_NAME[name], labels, value
