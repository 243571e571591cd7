"""target_files: Prometheus file_sd files of targets, loaded beside the config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtp_exporter.cli import main
from smtp_exporter.config.loader import ConfigError, load
from smtp_exporter.snapshot import compile_snapshot

MAIN = """\
modules:
  quick: {timeout: 1s}
  by_mx: {mx: true, timeout: 1s}
defaults: {module: quick, interval: 30s}
targets:
  - target: 127.0.0.1:2525
target_files: [targets/*.yml, "domains/*.json"]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "targets").mkdir()
    (tmp_path / "domains").mkdir()
    path = tmp_path / "smtp.yml"
    path.write_text(MAIN)
    return path


def _entries(
    path: Path, previous: dict[str, str] | None = None
) -> list[tuple[str, str, float, dict[str, str]]]:
    loaded = load(str(path), previous)
    return [
        (entry.target, entry.module, entry.interval, dict(entry.labels))
        for entry, _ in loaded.target_files.entries
    ]


def test_groups_take_the_defaults_labels_and_the_reserved_overrides(config: Path) -> None:
    targets = config.parent / "targets"
    (targets / "a.yml").write_text(
        "- targets: [127.0.0.2:25, '127.0.0.3']\n"
        "  labels: {team: mail, __interval__: 2m}\n"
        "- targets: [example.org]\n"
        "  labels: {__module__: by_mx}\n"
    )
    # JSON as tools write it, indented with tabs.
    (config.parent / "domains" / "b.json").write_text(
        '[\n\t{\n\t\t"targets": ["127.0.0.4:587"],\n\t\t"labels": {"site": "ber", "__module__": "quick"}\n\t}\n]\n'
    )
    assert _entries(config) == [
        ("127.0.0.2:25", "quick", 120.0, {"team": "mail"}),
        ("127.0.0.3", "quick", 120.0, {"team": "mail"}),
        ("example.org", "by_mx", 30.0, {}),
        ("127.0.0.4:587", "quick", 30.0, {"site": "ber"}),
    ]
    loaded = load(str(config))
    files = [str(targets / "a.yml"), str(config.parent / "domains" / "b.json")]
    assert loaded.target_files.loaded == ((files[0], True), (files[1], True))
    assert loaded.target_files.errors == ()
    snapshot = compile_snapshot(loaded)
    # The config file's target first, then the files'; __module__ never becomes a label.
    assert [compiled.config.target for compiled in snapshot.targets] == [
        "127.0.0.1:2525",
        "127.0.0.2:25",
        "127.0.0.3",
        "example.org",
        "127.0.0.4:587",
    ]
    assert snapshot.targets[3].module is snapshot.modules["by_mx"]
    assert loaded.config.targets[0].target == "127.0.0.1:2525"  # the config's own only
    assert loaded.config.target_files == ("targets/*.yml", "domains/*.json")


def test_ten_thousand_targets_across_a_hundred_files(config: Path) -> None:
    for file in range(100):
        groups = "".join(
            f"- targets: [{', '.join(f'127.1.{file}.{host}:25' for host in range(group * 20, group * 20 + 20))}]\n"
            f"  labels: {{file: f{file}, group: g{group}}}\n"
            for group in range(5)
        )
        (config.parent / "targets" / f"t{file:03}.yml").write_text(groups)
    snapshot = compile_snapshot(load(str(config)))
    assert len(snapshot.targets) == 10_001
    assert len(snapshot.target_files.loaded) == 100
    assert all(ok for _, ok in snapshot.target_files.loaded)
    assert snapshot.targets[-1].config.target == "127.1.99.99:25"
    assert dict(snapshot.targets[-1].config.labels) == {"file": "f99", "group": "g4"}


def test_a_broken_file_keeps_its_previous_contents_and_the_others_load(config: Path) -> None:
    targets = config.parent / "targets"
    (targets / "a.yml").write_text("- targets: [127.0.0.2:25]\n")
    (targets / "b.yml").write_text("- targets: [127.0.0.3:25]\n")
    first = load(str(config))
    assert first.target_files.errors == ()

    (targets / "a.yml").write_text("- targets: [127.0.0.2:25, 127.0.0.5:25]\n")
    (targets / "b.yml").write_text("- targets: [127.0.0.3:25]\n  labels: {team: [x]}\n")
    second = load(str(config), first.target_files.texts)
    assert [str(error) for error in second.target_files.errors] == [
        f"{targets / 'b.yml'}:2: [0].labels.team: must be a string, not a list"
    ]
    assert second.target_files.loaded == ((str(targets / "a.yml"), True), (str(targets / "b.yml"), False))
    assert [entry.target for entry, _ in second.target_files.entries] == [
        "127.0.0.2:25",
        "127.0.0.5:25",
        "127.0.0.3:25",  # b.yml as it was
    ]
    # Still broken at the next load: still the contents it had when it last loaded.
    third = load(str(config), second.target_files.texts)
    assert [entry.target for entry, _ in third.target_files.entries][-1] == "127.0.0.3:25"

    # Without previous contents (at start), a broken file contributes nothing.
    alone = load(str(config))
    assert [entry.target for entry, _ in alone.target_files.entries] == ["127.0.0.2:25", "127.0.0.5:25"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("- targets: [a\n", ":2: invalid YAML: "),
        ("{targets: [x]}\n", ":1: must be a list of groups ({targets: [...], labels: {...}}), not a mapping"),
        ("- {labels: {a: b}}\n", ':1: [0]: missing required key "targets"'),
        ("- {targets: [x], label: {}}\n", ':1: [0]: unknown key "label" (did you mean "labels"?)'),
        ("- targets: ['bad host!']\n", ":1: [0].targets[0]: invalid host name in target 'bad host!'"),
        (
            "- targets: [x]\n  labels: {__module__: nope}\n",
            ':2: [0].labels.__module__: unknown module "nope"',
        ),
        (
            "- targets: [x]\n  labels: {__interval__: 10x}\n",
            ':2: [0].labels.__interval__: invalid duration "10x"',
        ),
        ("- targets: [x]\n  labels: {__meta_x: y}\n", ':2: [0].labels: invalid label name "__meta_x"'),
        ("- targets: [x]\n  labels: {target: y}\n", ':2: [0].labels: label "target" clashes'),
        (
            "- targets: [x, x]\n",
            ':1: [0].targets[1]: duplicate target "x" with module "quick" (also at line 1)',
        ),
        ("- targets: [x]\n  labels: {__interval__: 1s}\n", ":1: [0].targets[0]: the timeout 1s"),
    ],
)
def test_errors_name_the_file_line_and_key(config: Path, text: str, error: str) -> None:
    name = config.parent / "targets" / "a.yml"
    name.write_text(text)
    errors = load(str(config)).target_files.errors
    assert len(errors) == 1
    assert str(errors[0]).startswith(f"{name}{error}"), str(errors[0])


def test_duplicates_across_files_and_with_the_config_name_both_places(config: Path) -> None:
    targets = config.parent / "targets"
    (targets / "a.yml").write_text("- targets: [127.0.0.2:25]\n")
    (targets / "b.yml").write_text("- targets: [127.0.0.9:25]\n- targets: ['127.0.0.2:25']\n")
    (config.parent / "domains" / "c.json").write_text('[{"targets": ["127.0.0.1:2525"]}]')
    files = load(str(config)).target_files
    assert [str(error) for error in files.errors] == [
        f'{targets / "b.yml"}:2: duplicate target "127.0.0.2:25" with module "quick" (also at {targets / "a.yml"}:1)',
        f'{config.parent / "domains" / "c.json"}:1: duplicate target "127.0.0.1:2525" with module "quick" '
        f"(also at {config}:6)",
    ]
    assert [entry.target for entry, _ in files.entries] == ["127.0.0.2:25"]  # a.yml, the first
    assert [ok for _, ok in files.loaded] == [True, False, False]


def test_a_broken_files_kept_contents_keep_their_targets_against_a_newcomer(config: Path) -> None:
    targets = config.parent / "targets"
    (targets / "b.yml").write_text("- targets: [127.0.0.3:25]\n")
    first = load(str(config))
    (targets / "b.yml").write_text("- targets: [127.0.0.3:25\n")  # broken
    (targets / "a.yml").write_text("- targets: [127.0.0.3:25]\n")  # sorted before b.yml, a newcomer
    files = load(str(config), first.target_files.texts).target_files
    assert [entry.target for entry, _ in files.entries] == ["127.0.0.3:25"]
    assert files.loaded == ((str(targets / "a.yml"), False), (str(targets / "b.yml"), False))
    assert f"(also at {targets / 'b.yml'}:1)" in str(files.errors[-1])


def test_errors_of_the_config_file_and_of_target_files_are_reported_together(config: Path) -> None:
    config.write_text(MAIN + "scheduler: {max_concurrency: 0}\n")
    (config.parent / "targets" / "a.yml").write_text("- targets: ['bad host!']\n")
    with pytest.raises(ConfigError) as caught:
        load(str(config))
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"{config}:8: scheduler.max_concurrency: must be between 1")
    assert lines[1].startswith(f"{config.parent / 'targets' / 'a.yml'}:1: [0].targets[0]: invalid host")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("[targets/*.txt]", ':7: target_files[0]: "targets/*.txt" must end in .yml, .yaml or .json'),
        ("{a: b}", ":7: target_files: must be a list, not a mapping"),
    ],
)
def test_bad_patterns(config: Path, value: str, error: str) -> None:
    config.write_text(MAIN.replace('[targets/*.yml, "domains/*.json"]', value))
    with pytest.raises(ConfigError) as caught:
        load(str(config))
    assert str(caught.value) == f"{config}{error}"


def test_a_single_pattern_and_an_empty_or_missing_file(config: Path) -> None:
    config.write_text(MAIN.replace('[targets/*.yml, "domains/*.json"]', "targets/only.yml"))
    assert load(str(config)).target_files.loaded == ()  # no such file yet: nothing, no error
    (config.parent / "targets" / "only.yml").write_text("")
    assert load(str(config)).target_files.loaded == ((str(config.parent / "targets" / "only.yml"), True),)


def test_reads_are_bounded(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("smtp_exporter.config.loader.MAX_CONFIG_BYTES", 1 << 20)
    targets = config.parent / "targets"
    (targets / "a.yml").write_text("- targets: [127.0.0.2:25]\n" + "#" * (700 << 10) + "\n")
    (targets / "b.yml").write_text("- targets: [127.0.0.3:25]\n" + "#" * (700 << 10) + "\n")
    errors = load(str(config)).target_files.errors
    assert [str(error) for error in errors] == [
        f"{targets / 'b.yml'}: the target files together are larger than 1 MiB: shard them"
    ]
    (targets / "a.yml").write_text("[" * 100 + "]" * 100)
    (targets / "b.yml").unlink()
    assert str(load(str(config)).target_files.errors[0]) == (
        f"{targets / 'a.yml'}:1: invalid YAML: nested more than 64 levels deep"
    )


def test_the_target_budget_counts_the_config_and_every_file(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("smtp_exporter.config.loader.MAX_TARGETS", 3)  # the config's one and two more
    targets = config.parent / "targets"
    (targets / "a.yml").write_text("- targets: [127.0.0.2:25]\n")
    (targets / "b.yml").write_text("- targets: [127.0.0.3:25, 127.0.0.4:25]\n")
    files = load(str(config)).target_files
    assert [entry.target for entry, _ in files.entries] == ["127.0.0.2:25"]
    assert str(files.errors[0]).startswith(f"{targets / 'b.yml'}: too many targets with the other files")


def test_config_check_fails_on_a_broken_target_file(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (config.parent / "targets" / "a.yml").write_text("- targets: ['bad host!']\n")
    assert main(["--config.check", "--config.file", str(config)]) == 2
    assert "a.yml:1: [0].targets[0]: invalid host name" in capsys.readouterr().err
    (config.parent / "targets" / "a.yml").write_text("- targets: [127.0.0.2]\n")
    assert main(["--config.check", "--config.file", str(config)]) == 0
