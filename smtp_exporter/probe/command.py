"""`smtp-exporter probe`: one probe from a shell, the way operators use swaks or check_smtp.

Exit status: 0 the probe succeeded, 1 it failed, 2 usage or config error. With `--output
nagios`, the Nagios plugin API's instead (`smtp_exporter.nagios`): 0 OK, 1 WARNING, 2 CRITICAL,
3 UNKNOWN for a usage or config error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace

from smtp_exporter.commandline import ArgumentParser, run
from smtp_exporter.config.durations import parse_duration
from smtp_exporter.config.loader import MAX_TIMEOUT, ConfigError
from smtp_exporter.nagios import NagiosState, NagiosThresholds, nagios_report
from smtp_exporter.presentation import format_text, probe_json
from smtp_exporter.probe import Prober
from smtp_exporter.snapshot import load_snapshot
from smtp_exporter.targets import TargetError, parse_target

_THRESHOLDS = {
    "warning": "WARNING when the probe takes longer, e.g. 2s (nagios output; perfdata item time)",
    "critical": "CRITICAL when the probe takes longer, e.g. 5s (nagios output; perfdata item time)",
    "cert_warning": "WARNING when the certificate expires sooner, e.g. 21d (nagios output)",
    "cert_critical": "CRITICAL when the certificate expires sooner, e.g. 7d (nagios output)",
}


def _parser(usage_status: int) -> ArgumentParser:
    parser = ArgumentParser(
        prog="smtp-exporter probe",
        description="Run one SMTP probe and print what it measured.",
        usage_status=usage_status,
    )
    parser.add_argument(
        "--config.file", dest="config_file", help="config file with the modules (default: built-ins)"
    )
    parser.add_argument(
        "--module", default="smtp_handshake", help="module to probe with (default: smtp_handshake)"
    )
    parser.add_argument("--output", choices=("text", "json", "nagios"), default="text")
    parser.add_argument("--timeout", help="probe deadline, e.g. 10s (default: the module's timeout)")
    for name, text in _THRESHOLDS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="DURATION", help=text)
    parser.add_argument("target", help="host, host:port, [ipv6]:port, IP, or a mail domain for MX modules")
    return parser


def _nagios_requested(argv: list[str]) -> bool:
    """Whether the command line asks for nagios output: then even a usage error in the rest of
    it must exit UNKNOWN (3), which a monitoring system does not read as CRITICAL (2)."""
    return "--output=nagios" in argv or any(
        a == "--output" and b == "nagios" for a, b in itertools.pairwise(argv)
    )


class _UsageError(Exception):
    """A usage or config error: one line on stderr and the usage exit status."""


def _thresholds(args: argparse.Namespace) -> NagiosThresholds:
    values: dict[str, float] = {}
    for name in _THRESHOLDS:
        text = getattr(args, name)
        if text is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        if args.output != "nagios":
            raise _UsageError(f"{flag} needs --output nagios")
        try:
            values[name] = parse_duration(text)
        except ValueError as exc:
            raise _UsageError(f"{flag}: {exc}") from None
    return NagiosThresholds(**values)


def main(argv: list[str]) -> int:
    usage_status = NagiosState.UNKNOWN.value if _nagios_requested(argv) else 2
    args = _parser(usage_status).parse_args(argv)
    try:
        return _probe(args)
    except _UsageError as exc:
        print(f"smtp-exporter probe: {exc}", file=sys.stderr)
        return usage_status


def _probe(args: argparse.Namespace) -> int:
    thresholds = _thresholds(args)
    try:
        snapshot = load_snapshot(args.config_file)
    except ConfigError as exc:
        raise _UsageError(str(exc)) from None
    name: str = args.module
    module = snapshot.modules.get(name)
    if module is None:
        known = ", ".join(sorted(snapshot.modules))
        raise _UsageError(f"unknown module {name!r} (known: {known})")
    timeout_text = args.timeout
    if timeout_text is not None:
        try:
            timeout = parse_duration(timeout_text)
        except ValueError as exc:
            raise _UsageError(f"--timeout: {exc}") from None
        if not 0 < timeout <= MAX_TIMEOUT:
            raise _UsageError(f"--timeout: must be more than 0s and at most {MAX_TIMEOUT:g}s")
        module = replace(module, config=replace(module.config, timeout=timeout))
    target_text: str = args.target
    try:
        target = parse_target(target_text, module.config.port)
    except TargetError as exc:
        raise _UsageError(str(exc)) from None
    result = run(Prober().probe(target, module, target_text))
    output = args.output
    if output == "nagios":
        state, line = nagios_report(result, thresholds, time.time())
        print(line)
        return state.value
    if output == "json":
        print(json.dumps(probe_json(result), indent=2))
    else:
        print(format_text(result))
    return 0 if result.success else 1
