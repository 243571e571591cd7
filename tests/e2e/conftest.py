"""One real stack for every end-to-end test (package scope, started once, stopped at the end):

    SMTP servers on 127.0.0.1 (smtp-sink and aiosmtpd, healthy and faulty)
      <- smtp-exporter (subprocess, scheduled targets every second, and /probe)
      <- Prometheus (subprocess, scrape and evaluation interval 1 s, the shipped alert rules)

Prometheus scrapes three jobs: `smtp-exporter` (the exporter's /metrics, plus an address where
nothing listens, so that SMTPExporterDown has something to fire for), `smtp-probe` (the
/probe job that prometheus-operator generates from deploy/overlays/multi-target/probe.yaml)
and `smtp-probe-static` (the multi-target scrape config of README.md).

The rules are the shipped file with every `for:` divided by 60 (minutes become seconds):
the targets are probed every second instead of every minute, so "5 failed probes in a row"
stays "5 failed probes in a row". Labels and annotations are unchanged, and so are the
expressions, except the duration thresholds in SCALED_THRESHOLDS, divided by 60 as well
(rules_with_short_for in stack.py): every e2e stack loads the rules this way.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.stack import (
    Exporter,
    Prometheus,
    documented_probe_scrape_config,
    probe_resource_scrape_config,
    rules_with_short_for,
    shipped_probe,
    wait_until,
)
from tests.helpers import require_binary
from tests.servers.aiosmtpd_server import AiosmtpdServer, Fault
from tests.servers.smtp_sink import SmtpSink
from tests.servers.tls import TestCA

FOR_SCALE = 1 / 60  # `for: 5m` -> 5s: probes every 1 s instead of the default 60 s
# Alert -> the comparison in its expression with a duration in seconds no test can wait for,
# scaled by FOR_SCALE like `for:`: a p90 delivery time above 5 minutes becomes one above 5 s.
SCALED_THRESHOLDS = {"SMTPDeliverySlow": "> 300"}
SCRAPE_INTERVAL = "1s"
SCHEDULED_JOB = "smtp-exporter"  # the job name the shipped ServiceMonitor produces
PROBE_JOB = "smtp-probe"  # the Probe's jobName
STATIC_PROBE_JOB = "smtp-probe-static"  # README.md's job, renamed so both can run at once
# The /metrics job of a multi-target-only install: an exporter without scheduled targets.
PROBE_ONLY_EXPORTER_JOB = "smtp-exporter-probe-only"
SLOW_DELAY = 6  # seconds smtp-sink waits before answering RCPT: above SMTPProbeSlowPhase's 5 s


class ChangingServer(AiosmtpdServer):
    """An aiosmtpd server whose behaviour changes from one connection to the next:
    `change(server, n)` runs before connection n (from 0) is served."""

    def __init__(self, change: Callable[[AiosmtpdServer, int], None], **options: Any) -> None:
        super().__init__(**options)
        self._change = change
        self._connection_count = 0

    def _protocol(self) -> Any:
        self._change(self, self._connection_count)
        self._connection_count += 1
        return super()._protocol()


def _flap(server: AiosmtpdServer, n: int) -> None:
    """Every third probe is refused at RCPT: failing a third of the time, but never down."""
    server.faults = {"rcpt": Fault("rcpt", 554, "5.7.1", "Client host rejected")} if n % 3 == 2 else {}


def _stop_offering_starttls(server: AiosmtpdServer) -> None:
    """From the next connection on, the server no longer offers STARTTLS (as when an admin
    switches TLS off after a failed certificate renewal). AiosmtpdServer has no option for
    this: each connection's aiosmtpd SMTP instance is built from these keyword arguments."""
    server._smtp_kwargs["tls_context"] = None


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    target: str
    module: str
    interval: str = "1s"


@dataclass(frozen=True, slots=True)
class Stack:
    prometheus: Prometheus
    exporter: Exporter
    config_file: Path
    config_text: str
    scheduled: dict[str, Target]  # by name
    probed: dict[str, str]  # name -> target, probed by the two multi-target jobs
    static_probed: dict[str, str]  # name -> target, probed by README.md's job only
    dead_exporter: str  # an address in the smtp-exporter job where nothing listens
    probe_only_exporter: Exporter  # no scheduled targets; its /metrics is PROBE_ONLY_EXPORTER_JOB
    starttls_lost: AiosmtpdServer  # offers STARTTLS until Prometheus has seen it used
    work: Path

    def target(self, name: str) -> str:
        return self.scheduled[name].target if name in self.scheduled else self.probed[name]


def _exporter_config(ca_file: str, targets: list[Target]) -> str:
    tls = {"ca_file": ca_file}
    config = {
        "defaults": {"module": "smtp_handshake", "interval": "1s"},
        "modules": {
            # The built-ins, trusting the test CA and with a timeout under the 1 s interval.
            "smtp_handshake": {"timeout": "900ms", "tls_config": tls},
            "smtp_full": {"transaction": "message", "timeout": "900ms", "tls_config": tls},
            "starttls_full": {
                "transaction": "message",
                "starttls": "required",
                "timeout": "900ms",
                "tls_config": tls,
            },
            "starttls_required": {"starttls": "required", "timeout": "900ms", "tls_config": tls},
            # One command at a time: smtp-sink's -W delay answers the rest of a pipelined batch
            # while it waits (RSET before the delayed RCPT, which then gets 503), a broken batch
            # the probe rightly fails; the slow RCPT is what this target is for.
            "slow_envelope": {"transaction": "envelope", "timeout": "7s", "pipelining": "never"},
        },
        "targets": [{"target": t.target, "module": t.module, "interval": t.interval} for t in targets],
        "http_probe": {"allowed_targets": ["127.0.0.1"]},
    }
    return yaml.safe_dump(config, sort_keys=False)


def _prometheus_config(
    *,
    exporter: str,
    dead_exporter: str,
    probe_only_exporter: str,
    rule_file: Path,
    probed: list[str],
    static_probed: list[str],
) -> dict[str, Any]:
    # The Probe exactly as shipped, with the addresses and the interval of this test.
    probe = shipped_probe()
    probe["spec"].update(interval=SCRAPE_INTERVAL, scrapeTimeout=SCRAPE_INTERVAL)
    probe["spec"]["prober"]["url"] = exporter
    probe["spec"]["targets"]["staticConfig"]["static"] = probed
    probe_job = probe_resource_scrape_config(probe, namespace="monitoring")

    # README.md's job: its targets, exporter address, interval and name substituted.
    static_job = documented_probe_scrape_config()
    assert static_job["relabel_configs"][-1]["target_label"] == "__address__"
    static_job["relabel_configs"][-1]["replacement"] = exporter
    static_job["static_configs"] = [{"targets": static_probed}]
    static_job.update(
        job_name=STATIC_PROBE_JOB, scrape_interval=SCRAPE_INTERVAL, scrape_timeout=SCRAPE_INTERVAL
    )

    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "rule_files": [str(rule_file)],
        "scrape_configs": [
            {"job_name": SCHEDULED_JOB, "static_configs": [{"targets": [exporter, dead_exporter]}]},
            {"job_name": PROBE_ONLY_EXPORTER_JOB, "static_configs": [{"targets": [probe_only_exporter]}]},
            probe_job,
            static_job,
        ],
    }


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, tls_ca: TestCA) -> Iterator[Stack]:
    prometheus_binary = require_binary("prometheus")
    require_binary("smtp-sink")
    work = tmp_path_factory.mktemp("e2e")
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    stoppable: list[Any] = []

    def server(**options: Any) -> str:
        started = AiosmtpdServer(**options).start()
        stoppable.append(started)
        return started.target

    def changing(change: Callable[[AiosmtpdServer, int], None], **options: Any) -> str:
        started = ChangingServer(change, **options).start()
        stoppable.append(started)
        return started.target

    starttls_lost = AiosmtpdServer(starttls=tls_ca.server_cert).start()
    stoppable.append(starttls_lost)

    def sink(**options: Any) -> str:
        started = SmtpSink(**options).start()
        stoppable.append(started)
        return started.target

    # A port bound but never listening: connections to it are refused while the test runs.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_exporter = f"127.0.0.1:{dead.getsockname()[1]}"
    try:
        healthy = sink()
        starttls = server(starttls=tls_ca.server_cert)
        expiring = server(starttls=tls_ca.issue(not_before=now - 80 * day, not_after=now + 7 * day))
        banner_refused = server(faults=[Fault("banner", 554, "5.3.2", "No SMTP service here")])
        targets = [
            Target("healthy", healthy, "smtp_full"),
            Target("tempfail", server(faults=[Fault("rcpt", 451, "4.3.0", "Try again later")]), "smtp_full"),
            Target("rejected", server(faults=[Fault("rcpt", 550, "5.1.1", "No such user")]), "smtp_full"),
            Target("flapping", changing(_flap), "smtp_full"),
            Target("starttls", starttls, "starttls_full"),
            Target("expiring", expiring, "starttls_required"),
            Target(
                "expiring_critical",
                server(starttls=tls_ca.issue(not_before=now - 88 * day, not_after=now + 2 * day)),
                "starttls_required",
            ),
            Target("wrong_host", server(starttls=tls_ca.wrong_host()), "starttls_required"),
            Target("starttls_lost", starttls_lost.target, "smtp_handshake"),
            Target("plaintext", server(), "starttls_required"),
            Target("slow", sink(command_delays={"RCPT": SLOW_DELAY}), "slow_envelope", interval="8s"),
        ]
        probed = {
            "healthy": healthy,
            "starttls": starttls,
            "expiring": expiring,
            "banner_refused": banner_refused,
        }
        static_probed = {"healthy": healthy, "starttls": starttls, "banner_refused": banner_refused}

        config_file = work / "smtp-exporter.yml"
        config_text = _exporter_config(tls_ca.ca_file, targets)
        config_file.write_text(config_text)
        exporter = Exporter(config_file, work / "exporter.log")
        stoppable.append(exporter)
        probe_only_config = work / "probe-only.yml"
        probe_only_config.write_text("targets: []\n")
        probe_only_exporter = Exporter(probe_only_config, work / "probe-only-exporter.log")
        stoppable.append(probe_only_exporter)

        rule_file = work / "rules.yml"
        rule_file.write_text(
            yaml.safe_dump(rules_with_short_for(FOR_SCALE, SCALED_THRESHOLDS), sort_keys=False)
        )
        prometheus_config = work / "prometheus.yml"
        prometheus_config.write_text(
            yaml.safe_dump(
                _prometheus_config(
                    exporter=exporter.address,
                    dead_exporter=dead_exporter,
                    probe_only_exporter=probe_only_exporter.address,
                    rule_file=rule_file,
                    probed=list(probed.values()),
                    static_probed=list(static_probed.values()),
                ),
                sort_keys=False,
            )
        )
        prometheus = Prometheus(prometheus_binary, prometheus_config, work / "tsdb", work / "prometheus.log")
        stoppable.append(prometheus)

        result = Stack(
            prometheus=prometheus,
            exporter=exporter,
            config_file=config_file,
            config_text=config_text,
            scheduled={t.name: t for t in targets},
            probed=probed,
            static_probed=static_probed,
            dead_exporter=dead_exporter,
            probe_only_exporter=probe_only_exporter,
            starttls_lost=starttls_lost,
            work=work,
        )
        _wait_for_data(result)
        yield result
    finally:
        for item in reversed(stoppable):
            item.stop()
        dead.close()


def _wait_for_data(stack: Stack) -> None:
    """Every scrape target seen, every scheduled target's first result (the slow one's too)
    and a few probes of the others in Prometheus; then `starttls_lost` stops offering STARTTLS."""
    prometheus = stack.prometheus

    def checks() -> None:
        prometheus.check_running()
        stack.exporter.check_running()
        stack.probe_only_exporter.check_running()

    # Every scrape succeeds (a failed probe is still a successful /probe scrape), except the
    # one of the address where no exporter listens.
    expected_health = {
        (SCHEDULED_JOB, stack.exporter.address): "up",
        (SCHEDULED_JOB, stack.dead_exporter): "down",
        (PROBE_ONLY_EXPORTER_JOB, stack.probe_only_exporter.address): "up",
    }
    for job, targets in ((PROBE_JOB, stack.probed), (STATIC_PROBE_JOB, stack.static_probed)):
        expected_health.update({(job, target): "up" for target in targets.values()})

    def health() -> dict[tuple[str, str], str]:
        return {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in prometheus.targets()}

    wait_until(
        lambda: health() == expected_health,
        lambda: f"scrape health {health()}, expected {expected_health}",
        check=checks,
    )

    def count(expr: str) -> int:
        result = prometheus.query(expr)
        return int(float(result[0]["value"][1])) if result else 0

    expected = {
        f'count(smtp_probe_success{{job="{SCHEDULED_JOB}"}})': len(stack.scheduled),
        f'count(smtp_probe_success{{job="{PROBE_JOB}"}})': len(stack.probed),
        f'count(smtp_probe_success{{job="{STATIC_PROBE_JOB}"}})': len(stack.static_probed),
        f'count(smtp_probes_total{{job="{SCHEDULED_JOB}", module!="slow_envelope"}} >= 5)': len(
            stack.scheduled
        )
        - 1,
        f'count(smtp_probe_reply_code{{phase="starttls", target="{stack.starttls_lost.target}"}})': 1,
    }
    wait_until(
        lambda: all(count(expr) == n for expr, n in expected.items()),
        lambda: "; ".join(f"{expr} = {count(expr)}, expected {n}" for expr, n in expected.items()),
        check=checks,
    )
    _stop_offering_starttls(stack.starttls_lost)
