"""`smtp-exporter probe`: one probe from a shell, the way operators use swaks or check_smtp.

Exit status: 0 the probe succeeded, 1 it failed, 2 usage or config error.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from smtp_exporter.commandline import ArgumentParser, run
from smtp_exporter.config.durations import parse_duration
from smtp_exporter.config.loader import MAX_TIMEOUT, ConfigError
from smtp_exporter.presentation import format_text, probe_json
from smtp_exporter.probe import Prober
from smtp_exporter.snapshot import load_snapshot
from smtp_exporter.targets import TargetError, parse_target


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="smtp-exporter probe", description="Run one SMTP probe and print what it measured."
    )
    parser.add_argument(
        "--config.file", dest="config_file", help="config file with the modules (default: built-ins)"
    )
    parser.add_argument(
        "--module", default="smtp_handshake", help="module to probe with (default: smtp_handshake)"
    )
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument("--timeout", help="probe deadline, e.g. 10s (default: the module's timeout)")
    parser.add_argument("target", help="host, host:port, [ipv6]:port, IP, or a mail domain for MX modules")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        snapshot = load_snapshot(args.config_file)
    except ConfigError as exc:
        print(f"smtp-exporter probe: {exc}", file=sys.stderr)
        return 2
    module = snapshot.modules.get(args.module)
    if module is None:
        known = ", ".join(sorted(snapshot.modules))
        print(f"smtp-exporter probe: unknown module {args.module!r} (known: {known})", file=sys.stderr)
        return 2
    if args.timeout is not None:
        try:
            timeout = parse_duration(args.timeout)
        except ValueError as exc:
            print(f"smtp-exporter probe: --timeout: {exc}", file=sys.stderr)
            return 2
        if not 0 < timeout <= MAX_TIMEOUT:
            print(
                f"smtp-exporter probe: --timeout: must be more than 0s and at most {MAX_TIMEOUT:g}s",
                file=sys.stderr,
            )
            return 2
        module = replace(module, config=replace(module.config, timeout=timeout))
    try:
        target = parse_target(args.target, module.config.port)
    except TargetError as exc:
        print(f"smtp-exporter probe: {exc}", file=sys.stderr)
        return 2
    result = run(Prober().probe(target, module, args.target))
    if args.output == "json":
        print(json.dumps(probe_json(result), indent=2))
    else:
        print(format_text(result))
    return 0 if result.success else 1
