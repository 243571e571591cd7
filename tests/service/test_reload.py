"""Reload: POST /-/reload, a bad config, and the config file changing on disk (Kubernetes style)."""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from smtp_exporter.scheduler import MAX_START_GRID, Scheduler, start_grid
from tests.servers.smtp_sink import SmtpSink
from tests.service.conftest import Running, running_exporter, sample_labels, sample_value, wait_for

MODULES = """
modules:
  quick: {timeout: 900ms, ehlo: probe.test}
"""


def _targets(*entries: str) -> str:
    return MODULES + "targets:\n" + "".join(f"  - {entry}\n" for entry in entries)


async def test_reload_keeps_unchanged_targets_and_applies_changes(
    write_config: Callable[[str], Path], smtp_sink_factory: Callable[..., SmtpSink]
) -> None:
    kept, removed, added = smtp_sink_factory(), smtp_sink_factory(), smtp_sink_factory()
    path = write_config(
        _targets(
            f"{{target: '{kept.target}', module: quick, interval: 1s, labels: {{team: a}}}}",
            f"{{target: '{removed.target}', module: quick, interval: 1s}}",
        )
    )
    async with running_exporter(path, watch_interval=3600) as running:
        keep = {"target": kept.target, "module": "quick", "team": "a"}
        await running.wait_metric("smtp_probe_success", **keep)

        async def probes_of_kept() -> float:
            value = sample_value(await running.metrics(), "smtp_probes_total", **keep)
            return value or 0.0

        await wait_for(lambda: running.exporter.stats.targets == 2, "two targets")
        await running.wait_metric("smtp_probe_success", target=removed.target)
        before = await probes_of_kept()

        # A bad config: 500 with the one-line error, the running config stays.
        path.write_text(MODULES + "targets:\n  - {target: 'x:1', module: missing}\n")
        async with running.session.post(running.url + "/-/reload") as response:
            assert response.status == 500
            error = await response.text()
        assert str(path) in error and "missing" in error and "\n" not in error.rstrip("\n")
        text = await running.metrics()
        assert sample_value(text, "smtp_exporter_config_last_reload_successful") == 0
        assert sample_value(text, "smtp_probe_success", target=removed.target) is not None

        # A good config: the kept target continues, the removed one's series go, the new one starts.
        path.write_text(
            _targets(
                f"{{target: '{kept.target}', module: quick, interval: 1s, labels: {{team: a}}}}",
                f"{{target: '{added.target}', module: quick, interval: 1s}}",
            )
        )
        async with running.session.post(running.url + "/-/reload") as response:
            assert response.status == 200, await response.text()
        text = await running.metrics()
        assert sample_value(text, "smtp_exporter_config_last_reload_successful") == 1
        assert sample_value(text, "smtp_probe_success", target=removed.target) is None
        assert sample_value(text, "smtp_probes_total", target=removed.target) is None
        assert (sample_value(text, "smtp_probes_total", **keep) or 0) >= before  # not reset
        await running.wait_metric("smtp_probe_success", target=added.target)
        after = await probes_of_kept()
        assert after >= before


async def test_reload_when_the_file_changes_and_on_a_kubernetes_symlink_swap(
    tmp_path: Path, smtp_sink_factory: Callable[..., SmtpSink]
) -> None:
    first, second, third = smtp_sink_factory(), smtp_sink_factory(), smtp_sink_factory()
    # The layout of a Kubernetes ConfigMap volume: config.yml -> ..data/config.yml,
    # ..data -> ..<timestamp>/ ; an update writes a new directory and swaps ..data atomically.
    volume = tmp_path / "volume"
    volume.mkdir()

    def publish(version: str, text: str) -> None:
        directory = volume / f"..{version}"
        directory.mkdir()
        (directory / "config.yml").write_text(text)
        link = volume / "..data_tmp"
        link.symlink_to(directory.name)
        os.replace(link, volume / "..data")

    publish("v1", _targets(f"{{target: '{first.target}', module: quick, interval: 1s}}"))
    (volume / "config.yml").symlink_to("..data/config.yml")
    path = volume / "config.yml"
    async with running_exporter(path, watch_interval=0.2) as running:
        await running.wait_metric("smtp_probe_success", target=first.target)
        before = sample_value(await running.metrics(), "smtp_probes_total", target=first.target) or 0

        publish(
            "v2",
            _targets(
                f"{{target: '{first.target}', module: quick, interval: 1s}}",
                f"{{target: '{second.target}', module: quick, interval: 1s}}",
            ),
        )
        text = await running.wait_metric(
            "smtp_probe_success", "reload after a symlink swap", target=second.target
        )
        assert (sample_value(text, "smtp_probes_total", target=first.target) or 0) >= before

        # An in-place edit of the file behind the link is noticed too.
        (volume / "..v2" / "config.yml").write_text(
            _targets(f"{{target: '{third.target}', module: quick, interval: 1s}}")
        )
        await running.wait_metric("smtp_probe_success", "reload after an in-place edit", target=third.target)
        await wait_for(lambda: running.exporter.stats.targets == 1, "the old targets removed")
        text = await running.metrics()
        assert sample_value(text, "smtp_probe_success", target=first.target) is None

        # A broken update keeps the running config and says so.
        publish("v3", "targets: [")
        await wait_for(
            lambda: not running.exporter.stats.config_reload_successful, "the failed reload to be reported"
        )
        text = await running.metrics()
        assert sample_value(text, "smtp_exporter_config_last_reload_successful") == 0
        assert sample_value(text, "smtp_probe_success", target=third.target) is not None


def _assert_each_job_due_once(scheduler: Scheduler, grid: float) -> None:
    """Every job waits at exactly one step of a grid of step `grid`, and every step has its timer
    at that step's time: so the scheduler runs on that grid."""
    due: Counter[object] = Counter()
    for step, jobs in scheduler._due.items():
        assert scheduler._timers[step].when() == pytest.approx(step * grid)
        due.update(job.key for job in jobs if not job.removed and round(job.next_at / grid) == step)
    assert due == Counter(dict.fromkeys(scheduler._jobs, 1))


async def test_a_reload_that_changes_the_probe_rate_moves_every_target_to_the_new_grid(
    write_config: Callable[[str], Path], smtp_sink: SmtpSink
) -> None:
    # One server, so 150 more targets are 150 more modules (a target and module pair is unique).
    bulk_modules = "".join(f"  bulk{n}: {{timeout: 900ms, ehlo: probe.test}}\n" for n in range(150))
    kept = f"{{target: '{smtp_sink.target}', module: quick, interval: 1s}}"
    bulk = [f"{{target: '{smtp_sink.target}', module: bulk{n}, interval: 1s}}" for n in range(150)]

    def targets(*entries: str) -> str:
        return MODULES + bulk_modules + "targets:\n" + "".join(f"  - {entry}\n" for entry in entries)

    path = write_config(targets(kept))
    async with running_exporter(path, watch_interval=3600) as running:
        scheduler = running.exporter.scheduler
        keep = {"target": smtp_sink.target, "module": "quick"}
        await running.wait_metric("smtp_probe_success", **keep)
        _assert_each_job_due_once(scheduler, MAX_START_GRID)  # one probe a second

        for entries in ([kept, *bulk], [kept]):
            before = await _probes(running, keep)
            path.write_text(targets(*entries))
            async with running.session.post(running.url + "/-/reload") as response:
                assert response.status == 200, await response.text()
            grid = start_grid(len(entries))  # each target once a second
            _assert_each_job_due_once(scheduler, grid)
            # Nothing lost in the move: every target is probed, the kept one keeps its counters.
            bulk_count = len(entries) - 1
            await wait_for(
                functools.partial(_bulk_series_are, running, bulk_count), f"{bulk_count} bulk targets"
            )
            await wait_for(functools.partial(_probed_after, running, keep, before), "the kept target again")
            _assert_each_job_due_once(scheduler, grid)


async def _probes(running: Running, labels: dict[str, str]) -> float:
    return sample_value(await running.metrics(), "smtp_probes_total", **labels) or 0.0


async def _probed_after(running: Running, labels: dict[str, str], count: float) -> bool:
    return await _probes(running, labels) > count


async def _bulk_series_are(running: Running, count: int) -> bool:
    series = sample_labels(await running.metrics(), "smtp_probes_total")
    return sum(1 for labels in series if labels["module"].startswith("bulk")) == count
