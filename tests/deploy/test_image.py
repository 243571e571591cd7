"""The container image: hadolint and checkov accept the Dockerfile, its dependencies are
pinned, and its install steps, run in a fresh virtual environment from the build context
.dockerignore leaves, give an exporter that starts and serves (no container engine here)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import ROOT, checkov_passes, require_tool, run

DOCKERFILE = ROOT / "Dockerfile"
BASE_IMAGE = re.compile(r"^python:3\.\d+\.\d+-slim-[a-z]+$")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    result = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _instructions():
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, rest))
    return stages


def _dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = os.path.normpath(raw[1:] if negate else raw)
        if any(regex(pattern).fullmatch(c) for c in candidates):
            included = negate
    return included


def _build_context(destination: Path) -> Path:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = run("git", "ls-files", "--cached", "--others", "--exclude-standard").stdout.split()
    for name in tracked:
        if (ROOT / name).is_file() and _dockerignore_allows(name, patterns):
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def test_hadolint() -> None:
    hadolint = require_tool("hadolint")
    run(hadolint, "--failure-threshold", "info", str(DOCKERFILE))


def test_checkov_finds_no_failed_dockerfile_check() -> None:
    checkov_passes(DOCKERFILE, "dockerfile")


def test_dockerfile_shape() -> None:
    stages = _stages()
    assert len(stages) == 2, "a build stage and a final stage"
    bases = [rest.split()[0] for stage in stages for keyword, rest in stage if keyword == "FROM"]
    assert len(set(bases)) == 1 and BASE_IMAGE.match(bases[0]), bases
    final = stages[-1]
    keywords = [keyword for keyword, _ in final]
    assert "RUN" not in keywords, "nothing is installed or built in the final stage"
    (user,) = [rest for keyword, rest in final if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0)
    (entrypoint,) = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["smtp-exporter"]
    assert ("EXPOSE", "9725") in final
    assert any(keyword == "COPY" and rest.startswith("--from=build ") for keyword, rest in final)
    runs = " && ".join(rest for keyword, rest in stages[0] if keyword == "RUN")
    installs = [cmd.strip() for cmd in runs.split("&&") if "pip install" in cmd]
    assert installs and all("--no-cache-dir" in cmd for cmd in installs)
    assert any('-c constraints.txt ".[uvloop]"' in cmd for cmd in installs)


def _runtime_closure() -> dict[str, str]:
    """Every distribution `smtp-exporter[uvloop]` needs at run time, with its installed version."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.S | re.M)
    assert block
    todo = [Requirement(r).name for r in re.findall(r'"([^"]+)"', block.group(1))] + ["uvloop"]
    seen: dict[str, str] = {}
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        name = canonicalize_name(dist.metadata["Name"])
        if name in seen:
            continue
        seen[name] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def test_constraints_pin_every_runtime_dependency() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    assert set(_runtime_closure()) <= set(pins), sorted(set(_runtime_closure()) - set(pins))


def test_image_install_steps_in_a_fresh_venv_give_a_working_exporter(tmp_path: Path) -> None:
    """Run the build stage's ENV and RUN lines (with /opt/smtp-exporter moved into tmp_path)
    in the build context .dockerignore leaves, then start the installed exporter."""
    context = _build_context(tmp_path / "context")
    build = _stages()[0]
    for keyword, rest in build:
        if keyword == "COPY":
            for source in rest.split()[:-1]:
                assert (context / source).exists(), f"COPY {source}: left out of the build context"
    prefix = tmp_path / "opt" / "smtp-exporter"
    env = {**os.environ}
    for keyword, rest in build:
        if keyword == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                env[name] = value.replace("$PATH", os.environ["PATH"]).replace(
                    "/opt/smtp-exporter", str(prefix)
                )
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{prefix / 'bin'}:{os.environ['PATH']}"
    for keyword, rest in build:
        if keyword == "RUN":
            command = rest.replace("/opt/smtp-exporter", str(prefix)).replace(
                "python -m venv", f"{sys.executable} -m venv"
            )
            result = subprocess.run(
                ["sh", "-c", command], cwd=context, env=env, capture_output=True, text=True, timeout=900
            )
            assert result.returncode == 0, f"RUN {rest}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    python = prefix / "bin" / "python"
    check = subprocess.run([str(python), "-m", "pip", "check"], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    subprocess.run([str(python), "-c", "import uvloop"], env=env, check=True)

    config = tmp_path / "config.yml"
    config.write_text("targets: []\n")
    process = subprocess.Popen(
        [
            str(prefix / "bin" / "smtp-exporter"),
            f"--config.file={config}",
            "--web.listen-address=127.0.0.1:0",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        port = None
        seen = []
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(r"listen\W+127\.0\.0\.1:(\d+)", line)
            if "exporter started" in line and match:
                port = int(match.group(1))
        assert port, "".join(seen)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert b"smtp_exporter_build_info{" in response.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("path", ["constraints.txt", "requirements-ci.txt"])
def test_requirement_files_pin_exact_versions(path: str) -> None:
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.]*", line), line
