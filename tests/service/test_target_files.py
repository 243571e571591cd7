"""target_files in a running exporter: scheduled, watched, a broken file refused on its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.servers.smtp_sink import SmtpSink
from tests.service.conftest import Running, running_exporter, sample_labels, sample_value, wait_for

CONFIG = """\
modules:
  quick: {timeout: 900ms, ehlo: probe.test}
defaults: {module: quick, interval: 1s}
target_files: [targets/*.yml]
"""

GAUGE = "smtp_exporter_target_file_last_load_successful"


def _group(*targets: str, labels: str = "") -> str:
    return f"- targets: [{', '.join(repr(target) for target in targets)}]\n  labels: {{{labels}}}\n"


async def _probes(running: Running, target: str) -> float:
    return sample_value(await running.metrics(), "smtp_probes_total", target=target) or 0.0


async def test_ten_thousand_targets_across_a_hundred_files_load_and_scrape(tmp_path: Path) -> None:
    (tmp_path / "targets").mkdir()
    for file in range(100):
        # Loopback addresses on a closed port: the few probes due during the test fail at once.
        hosts = ", ".join(f"127.2.{file}.{host}:1" for host in range(100))
        (tmp_path / "targets" / f"t{file:03}.yml").write_text(
            f"- targets: [{hosts}]\n  labels: {{shelf: s{file % 7}, __interval__: 1h}}\n"
        )
    config = tmp_path / "smtp.yml"
    config.write_text(CONFIG)
    async with running_exporter(config, watch_interval=3600) as running:
        assert running.exporter.stats.targets == 10_000
        text = await running.metrics()
        assert sample_value(text, "smtp_exporter_targets") == 10_000
        files = {labels["file"] for labels in sample_labels(text, GAUGE)}
        assert files == {str(tmp_path / "targets" / f"t{file:03}.yml") for file in range(100)}
        assert all(sample_value(text, GAUGE, file=name) == 1 for name in files)
        assert sample_value(text, "smtp_exporter_config_last_reload_successful") == 1
        # A probe's series carry the group's labels, and no __interval__.
        # (at 10,000 targets an hour, about three probes a second start)
        text = await running.wait_metric("smtp_probe_success", "a probe result")
        labels = sample_labels(text, "smtp_probe_success")[0]
        assert labels["target"].startswith("127.2.") and labels["shelf"].startswith("s")
        assert set(labels) == {"target", "module", "shelf"}


async def test_files_change_break_and_appear_while_the_others_keep_running(
    tmp_path: Path, smtp_sink_factory: Callable[..., SmtpSink]
) -> None:
    one, two, three, four = (smtp_sink_factory() for _ in range(4))
    targets = tmp_path / "targets"
    targets.mkdir()
    a, b, c = targets / "a.yml", targets / "b.yml", targets / "c.yml"
    a.write_text(_group(one.target, labels="file: a"))
    b.write_text(_group(two.target, labels="file: b"))
    config = tmp_path / "smtp.yml"
    config.write_text(CONFIG)
    async with running_exporter(config) as running:
        await running.wait_metric("smtp_probe_success", target=one.target, file="a")
        await running.wait_metric("smtp_probe_success", target=two.target, file="b")
        kept = await _probes(running, two.target)

        # a.yml changes: its new target starts, its old one goes; b.yml's keeps its counters.
        a.write_text(_group(three.target, labels="file: a"))
        await running.wait_metric("smtp_probe_success", target=three.target)
        text = await running.metrics()
        assert sample_value(text, "smtp_probe_success", target=one.target) is None
        assert (sample_value(text, "smtp_probes_total", target=two.target) or 0) >= kept

        # b.yml breaks while a.yml changes: a.yml loads, b.yml's previous target keeps running.
        b.write_text("- targets: [" + two.target + "\n")
        a.write_text(_group(three.target, one.target, labels="file: a"))
        await running.wait_metric("smtp_probe_success", target=one.target)

        async def b_refused() -> bool:
            return sample_value(await running.metrics(), GAUGE, file=str(b)) == 0

        await wait_for(b_refused, "b.yml reported broken")
        text = await running.metrics()
        assert sample_value(text, GAUGE, file=str(a)) == 1
        assert sample_value(text, "smtp_exporter_config_last_reload_successful") == 0
        before = await _probes(running, two.target)
        await wait_for(
            lambda: _probes_after(running, two.target, before), "b.yml's previous target probed again"
        )
        async with running.session.post(running.url + "/-/reload") as response:
            assert response.status == 500
            assert f"{b}:2: invalid YAML" in await response.text()

        # A file the glob finds later is loaded; b.yml still broken, still running as it was.
        c.write_text(_group(four.target, labels="file: c"))
        await running.wait_metric("smtp_probe_success", target=four.target, file="c")
        text = await running.metrics()
        assert sample_value(text, GAUGE, file=str(c)) == 1
        assert sample_value(text, GAUGE, file=str(b)) == 0

        # b.yml repaired: everything loaded, the reload gauge back to 1.
        b.write_text(_group(two.target, labels="file: b"))

        async def all_loaded() -> bool:
            text = await running.metrics()
            return sample_value(text, "smtp_exporter_config_last_reload_successful") == 1

        await wait_for(all_loaded, "every file loaded")
        text = await running.metrics()
        assert {sample_value(text, GAUGE, file=str(name)) for name in (a, b, c)} == {1}
        assert running.exporter.stats.targets == 4

        # A removed file's targets and gauge go.
        c.unlink()
        await wait_for(lambda: running.exporter.stats.targets == 3, "c.yml's target removed")
        assert sample_value(await running.metrics(), GAUGE, file=str(c)) is None


async def _probes_after(running: Running, target: str, before: float) -> bool:
    return await _probes(running, target) > before
