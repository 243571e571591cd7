"""Fuzzing the config and web config loaders beyond tests/config/test_fuzz.py: raw bytes in
files (any encoding), YAML alias bombs, deep nesting and huge documents. Always a Config
(or WebConfig) or one ConfigError line naming the file; never another exception, never
unbounded memory or time."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_exporter.config.errors import ConfigErrors
from smtp_exporter.config.loader import ConfigError, load_config, load_config_text
from smtp_exporter.config.schema import Config
from smtp_exporter.config.web import WebConfig, load_web_config, load_web_config_text

REPO = Path(__file__).resolve().parents[2]

FUZZ = settings(
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    deadline=None,
)


def check_error(exc: ConfigError, source: str) -> None:
    # One line per independent error (`ConfigErrors`), each naming the file.
    for error in exc.errors if isinstance(exc, ConfigErrors) else (exc,):
        message = str(error)
        assert message.startswith(source)
        assert "\n" not in message and "\r" not in message
        assert len(message) < 4096
        assert "Traceback" not in message
    assert "\r" not in str(exc)


snippets = st.sampled_from(
    [
        b"modules:\n",
        b"targets:\n",
        b"  - target: ",
        b"mx1.example.org",
        b"\n",
        b"  smtp:\n",
        b"    timeout: ",
        b"10s",
        b"\xff",
        b"\xfe\xff",
        b"\xef\xbb\xbf",
        b"\x00",
        b"\t",
        b"&a ",
        b"*a",
        b"<<: *a\n",
        b"!!binary ",
        b"!!python/object/apply:os.system ['true']\n",
        b"'",
        b'"\\x00"',
        b"%YAML 1.1\n",
        b"---\n",
        b"...\n",
        b"? ",
        b": ",
        b"[",
        b"{",
        b"\xc3\xa9",
        b"\xed\xa0\x80",
        b"\x1b[2J",
        b"\r",
        "\u2028".encode(),
    ]
)
raw_documents = st.one_of(st.binary(max_size=300), st.lists(snippets, max_size=40).map(b"".join))


@FUZZ
@given(data=raw_documents)
def test_config_file_of_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.yml"
    path.write_bytes(data)
    try:
        config = load_config(str(path))
    except ConfigError as exc:
        check_error(exc, str(path))
    else:
        assert isinstance(config, Config)


@FUZZ
@given(data=raw_documents)
def test_web_config_file_of_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "web.yml"
    path.write_bytes(data)
    try:
        web = load_web_config(str(path))
    except ConfigError as exc:
        check_error(exc, str(path))
    else:
        assert isinstance(web, WebConfig)


def billion_laughs(levels: int, width: int) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\ntargets: *a{levels - 1}\n"


BOMBS = {
    "billion_laughs_targets": billion_laughs(10, 10),
    "billion_laughs_modules": billion_laughs(9, 10).replace("targets:", "modules: {m: {rcpt_to: *a8}}\nx:"),
    "labels_bomb": "x: &x {a: 1, b: 2, c: 3}\n"
    + "targets:\n"
    + "".join(f"  - {{target: h{i}.example.org, labels: *x}}\n" for i in range(3)),
    "deep_nesting_flow": "modules: " + "[" * 5_000 + "]" * 5_000 + "\n",
    "deep_nesting_block": "".join("  " * i + f"k{i}:\n" for i in range(3_000)),
    "long_scalar": "modules:\n  m:\n    ehlo: " + "a" * 5_000_000 + "\n",
    "many_keys": "modules:\n" + "".join(f"  m{i}: {{port: 25}}\n" for i in range(20_000)),
    "merge_chain": "a: &a {port: 25}\n"
    + "".join(f"b{i}: &b{i} {{<<: *{'a' if i == 0 else f'b{i - 1}'}}}\n" for i in range(200))
    + "modules: {m: *b199}\n",
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_yaml_bombs_are_refused_or_loaded_within_bounds(name: str) -> None:
    tracemalloc.start()
    started = time.monotonic()
    try:
        try:
            load_config_text(BOMBS[name], source="bomb.yml")
        except ConfigError as exc:
            check_error(exc, "bomb.yml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started
    # Generous bounds: a bomb must not expand; it is refused or read as written.
    assert peak < 400 << 20, f"peak {peak >> 20} MiB"
    assert elapsed < 60


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_yaml_bombs_in_the_web_config(name: str) -> None:
    try:
        load_web_config_text(BOMBS[name], source="web.yml")
    except ConfigError as exc:
        check_error(exc, "web.yml")


DEEP = 40_000  # nested flow collections: a 80 KB file


@pytest.mark.parametrize("flag", ["--config.file", "--web.config.file"])
def test_deeply_nested_config_is_a_config_error_not_a_crash(tmp_path: Path, flag: str) -> None:
    path = tmp_path / "deep.yml"
    path.write_text(
        ("modules: " if flag == "--config.file" else "tls_server_config: ") + "[" * DEEP + "]" * DEEP + "\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "smtp_exporter", flag, str(path), "--config.check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-500:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"smtp-exporter: {path}:"), done.stderr[-500:]
