"""`smtp-exporter probe`: one probe from a shell, the way operators use swaks or check_smtp.

Exit status: 0 the probe succeeded, 1 it failed, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from smtp_exporter.config.durations import parse_duration
from smtp_exporter.config.loader import MAX_TIMEOUT, ConfigError
from smtp_exporter.model import ProbeResult
from smtp_exporter.probe import Prober
from smtp_exporter.snapshot import load_snapshot
from smtp_exporter.targets import TargetError, parse_target


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"smtp-exporter probe: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="smtp-exporter probe", description="Run one SMTP probe and print what it measured.")
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
    result = _run(Prober().probe(target, module, args.target))
    if args.output == "json":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_text(result))
    return 0 if result.success else 1


def _run(coroutine: Coroutine[Any, Any, ProbeResult]) -> ProbeResult:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    result: ProbeResult = uvloop.run(coroutine)
    return result


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}ms"


def _date(timestamp: float | None) -> str:
    if timestamp is None:
        return "unknown"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_text(result: ProbeResult) -> str:
    """The human form: transcript, phase table, TLS summary and one result line."""
    out = ["Transcript:"]
    out += [
        f"  {line.offset_seconds * 1000:9.2f}ms {line.direction} {line.text}" for line in result.transcript
    ]
    out += ["", "Phases:", f"  {'phase':<10} {'duration':>10}  {'code':>4}  {'status':<8} reply"]
    for p in result.phases:
        code = "" if p.reply_code is None else str(p.reply_code)
        out.append(
            f"  {p.phase.value:<10} {_ms(p.duration_seconds):>10}  {code:>4}  {p.enhanced_status or '':<8} {p.reply or ''}"
        )
    if result.tls is not None:
        tls = result.tls
        verified = "verified" if tls.verified else f"NOT verified ({tls.verify_error or 'verification off'})"
        out += [
            "",
            f"TLS: {tls.version} {tls.cipher}, certificate {verified}",
            f"  subject {tls.subject}, issuer {tls.issuer}",
            f"  valid {_date(tls.cert_not_before_timestamp)} to {_date(tls.cert_not_after_timestamp)}",
            f"  names {', '.join(tls.sans) or '-'}; sha256 {tls.fingerprint_sha256}",
        ]
    where = ""
    if result.address is not None:
        where = f" via {result.address.ip} port {result.address.port}"
    if result.mx is not None:
        where += f" (MX {result.mx.host} preference {result.mx.preference})"
    out.append("")
    if result.failure is None:
        out.append(f"SUCCESS {result.target} module={result.module} in {_ms(result.duration_seconds)}{where}")
    else:
        f = result.failure
        out.append(
            f"FAILURE {result.target} module={result.module} in {_ms(result.duration_seconds)}{where}: "
            f"phase={f.phase.value} reason={f.reason.value}: {f.message}"
        )
    return "\n".join(out)
