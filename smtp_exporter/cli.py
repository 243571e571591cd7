"""`smtp-exporter`: the exporter's command line (Prometheus exporter conventions).

    smtp-exporter [--config.file PATH] [--web.listen-address HOST:PORT ...] [--web.config.file PATH]
                  [--log.level debug|info|warn|error] [--log.format logfmt|json]
                  [--config.check] [--version] [--shard.count N] [--shard.index I]
    smtp-exporter probe [...]    one probe from a shell (see `smtp-exporter probe --help`)

Exit status: 0 after a clean stop (SIGTERM, SIGINT) or a valid `--config.check`; 2 for usage
and config errors (one line on stderr per error, no traceback: every independent error of the
config file, of its target files and of the web config is listed; a broken target file fails
`--config.check`, while the server starts without it); 1 when the server cannot start.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import platform
import signal
import sys

from smtp_exporter import __version__
from smtp_exporter.commandline import ArgumentParser, run
from smtp_exporter.config.loader import ConfigError
from smtp_exporter.config.web import WebConfig, load_web_config
from smtp_exporter.service import (
    DEFAULT_LISTEN_ADDRESS,
    Exporter,
    ServiceOptions,
    ShardOverride,
    load,
    parse_listen_address,
)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn", logging.ERROR: "error"}
_RESERVED = ("ts", "level", "logger", "msg")


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """The record as ordered key/values: ts, level, logger, msg, then the caller's `fields`."""
    out: dict[str, object] = {
        "ts": _timestamp(record),
        "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        for key, value in extra.items():
            out[f"field_{key}" if key in _RESERVED else key] = value
    if record.exc_info:
        out["exception"] = logging.Formatter().formatException(record.exc_info)
    return out


def _logfmt_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and all(c.isprintable() and c not in ' "=\\' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    """`ts=... level=info logger=... msg="..." key=value`, one line per record (as go-kit/slog)."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record).items())


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and errors only
    logging.getLogger("smtp_exporter").setLevel(_LEVELS[level])


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="smtp-exporter",
        description="Prometheus exporter that health-checks mail servers with a real SMTP conversation. "
        "Run `smtp-exporter probe --help` for the one-shot probe command.",
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        help="config file (default: an embedded config probing localhost:25 every 30s)",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_addresses",
        metavar="HOST:PORT",
        action="append",
        help=f"address to serve on; repeat for several (default: {DEFAULT_LISTEN_ADDRESS})",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="exporter-toolkit web config: TLS and basic auth",
    )
    parser.add_argument("--log.level", dest="log_level", choices=tuple(_LEVELS), default="info")
    parser.add_argument("--log.format", dest="log_format", choices=("logfmt", "json"), default="logfmt")
    parser.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the config (and web config) and exit: 0 valid, 2 invalid",
    )
    parser.add_argument(
        "--shard.count", dest="shard_count", type=int, metavar="N", help="overrides shard.count"
    )
    parser.add_argument(
        "--shard.index", dest="shard_index", type=int, metavar="I", help="overrides shard.index"
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def _error(message: str) -> int:
    print(f"smtp-exporter: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "probe":
        from smtp_exporter.probe.command import main as probe_main

        return probe_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.version:
        print(f"smtp-exporter {__version__} (python {platform.python_version()})")
        return 0
    listen = tuple(args.listen_addresses or (DEFAULT_LISTEN_ADDRESS,))
    for address in listen:
        try:
            parse_listen_address(address)
        except ValueError as exc:
            return _error(f"--web.listen-address: {exc}")
    # Both files are checked, so that one run reports the errors of each.
    errors: list[ConfigError] = []
    web_config = WebConfig()
    if args.web_config_file:
        try:
            web_config = load_web_config(args.web_config_file)
        except ConfigError as exc:
            errors.append(exc)
    options = ServiceOptions(
        config_file=args.config_file,
        listen_addresses=listen,
        web_config=web_config,
        web_config_file=args.web_config_file,
        shard=ShardOverride(count=args.shard_count, index=args.shard_index),
    )
    try:
        config = load(options)
    except ConfigError as exc:
        errors.insert(0, exc)
    else:
        if args.config_check:  # a broken target file: served without it, but not "OK"
            errors[:0] = config.target_files.errors
    if errors:
        for line in "\n".join(str(error) for error in errors).splitlines():
            _error(line)
        return 2
    if args.config_check:
        print("config OK")
        return 0
    setup_logging(args.log_level, args.log_format)
    return run(_serve(Exporter(config, options)))


async def _serve(exporter: Exporter) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, exporter.request_reload)
    log = logging.getLogger("smtp_exporter")
    try:
        await exporter.start()
    except OSError as exc:
        log.error("cannot start the HTTP server", extra={"fields": {"error": str(exc)}})
        await exporter.stop()
        return 1
    await stop.wait()
    await exporter.stop()
    log.info("stopped")
    return 0
