"""The status page (`/`) and the history page: served HTML (filter, sort, links, CSP) and the page
in a real headless Chromium (summary counts, filter form, sorting links, auto-refresh keeping
the filter, the stylesheet applied under the page's CSP, the phone layout) with screenshots.

Set SMTP_EXPORTER_SCREENSHOTS to a directory to keep the screenshots there (docs/: the README shows
them; regenerate them there when the page changes).
"""

from __future__ import annotations

import os
import re
import struct
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from tests.browser import Chromium, Page
from tests.probe.test_failover import silent_host
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dns_server import DnsServer
from tests.servers.scripted import ScriptedServer, silence
from tests.servers.smtp_sink import SmtpSink
from tests.servers.tls import TestCA
from tests.service.conftest import Running, running_exporter
from tests.service.test_blackbox_names import Chain

ROWS = "Array.from(document.querySelectorAll('#targets tbody tr'))"


class Lab:
    """The exporter and its targets: up, two kinds of down, a TLS failure, and one pending."""

    def __init__(
        self, running: Running, sink: SmtpSink, failing: AiosmtpdServer, tls: AiosmtpdServer
    ) -> None:
        self.running = running
        self.sink = sink
        self.failing = failing
        self.tls = tls


@asynccontextmanager
async def _lab(
    write_config: Callable[[str], Path],
    sink: SmtpSink,
    failing: AiosmtpdServer,
    tls: AiosmtpdServer,
    silent: ScriptedServer,
    tls_ca: TestCA,
) -> AsyncIterator[Lab]:
    ca = tls_ca.ca_file
    config = write_config(
        f"""
scheduler: {{shutdown_grace_period: 0s}}
http_probe: {{allowed_targets: ['{sink.target}']}}
modules:
  envelope: {{transaction: envelope, timeout: 900ms, ehlo: probe.test, mail_from: p@test, rcpt_to: [a@test]}}
  tls: {{starttls: required, timeout: 900ms, tls_config: {{ca_file: {ca}, server_name: mail.test}}}}
  wrong_name: {{starttls: required, timeout: 900ms, tls_config: {{ca_file: {ca}, server_name: other.test}}}}
  slow: {{timeout: 50s}}
targets:
  - {{target: '{sink.target}', module: envelope, interval: 1s, labels: {{site: fra}}}}
  - {{target: '{failing.target}', module: envelope, interval: 1s, labels: {{site: ams}}}}
  - {{target: '127.0.0.1:1', module: envelope, interval: 1s, labels: {{site: ams}}}}
  - {{target: '{tls.target}', module: tls, interval: 1s, labels: {{site: fra}}}}
  - {{target: '{tls.target}', module: wrong_name, interval: 1s, labels: {{site: fra}}}}
  - {{target: '{silent.target}', module: slow, interval: 1h}}
"""
    )
    async with running_exporter(config) as running:
        for target, module in (
            (sink.target, "envelope"),
            (failing.target, "envelope"),
            ("127.0.0.1:1", "envelope"),
            (tls.target, "tls"),
            (tls.target, "wrong_name"),
        ):
            await running.wait_metric("smtp_probe_success", target=target, module=module)
        yield Lab(running, sink, failing, tls)


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr class="series [^"]*".*?</tr>', page, re.S)


def _name(row: str) -> str:
    match = re.search(r'<th scope="row">([^<]*)', row)
    assert match, row
    return match.group(1)


async def test_the_page_filters_sorts_and_links_on_the_server(
    write_config: Callable[[str], Path],
    smtp_sink: SmtpSink,
    fault_server: Callable[..., AiosmtpdServer],
    starttls_server: AiosmtpdServer,
    scripted_server: Callable[..., Awaitable[ScriptedServer]],
    tls_ca: TestCA,
) -> None:
    failing = fault_server("mail", 451, "4.3.0", "Try later")
    silent = await scripted_server(silence())
    async with _lab(write_config, smtp_sink, failing, starttls_server, silent, tls_ca) as lab:
        running = lab.running
        async with running.session.get(running.url + "/") as response:
            assert response.status == 200
            csp = response.headers["Content-Security-Policy"]
            page = await response.text()
        assert "default-src 'none'" in csp and "style-src 'sha256-" in csp and "script" not in csp
        assert "<script" not in page and "style=" not in page
        rows = _rows(page)
        assert len(rows) == 6
        # Failing first (by name), then pending, then healthy.
        words = [re.search(r'data-state="(\w+)"', row).group(1) for row in rows]  # type: ignore[union-attr]
        assert words == ["down", "down", "down", "pending", "up", "up"]
        summary = page.partition('id="summary"')[2].partition("</p>")[0]
        assert '<span data-count="series">6</span>' in summary and "of 6 targets" in summary
        assert '<span data-count="down">3</span>' in summary and '<span data-count="up">2</span>' in summary
        assert '<span data-count="pending">1</span>' in summary
        assert "<strong>envelope</strong>: 2 down, 0 pending, 1 up" in page

        by_name = {_name(row) + "/" + re.search(r'data-module="(\w+)"', row).group(1): row for row in rows}  # type: ignore[union-attr]
        healthy = by_name[f"{smtp_sink.target}/envelope"]
        assert "site=fra" in healthy and 'class="badge up"' in healthy and "every 1s" in healthy
        assert "<title>rcpt " in healthy and "probe now" in healthy  # the only allowed target
        assert "/transcript?target=" in healthy and "/history?target=" in healthy
        broken = by_name[f"{failing.target}/envelope"]
        assert "mail / reply_temporary: " in broken and "451 4.3.0 Try later" in broken
        assert "mail failed after" in broken and "&#10007; mail at" in broken and "probe now" not in broken
        refused = by_name["127.0.0.1:1/envelope"]
        assert "connect / connect_refused" in refused and "connect failed after" in refused
        verified = by_name[f"{starttls_server.target}/tls"]
        assert re.search(r"TLSv1\.[23], expires in \d+ d, verified", verified), verified
        unverified = by_name[f"{starttls_server.target}/wrong_name"]
        assert "tls_cert_invalid" in unverified and "not verified</span>" in unverified
        pending = by_name[f"{silent.target}/slow"]
        assert 'class="badge pending"' in pending and "transcript" not in pending

        # The filter, state and sort come from the query string, and every link keeps them.
        status, page = await running.get("/?q=site%3Dams&state=down&sort=-target&refresh=30")
        assert status == 200
        names = [_name(row) for row in _rows(page)]
        assert names == sorted([failing.target, "127.0.0.1:1"], reverse=True)
        assert '<meta http-equiv="refresh" content="30">' in page
        assert 'value="site=ams"' in page and '<option value="down" selected>' in page
        assert 'aria-sort="descending"' in page
        assert 'href="/?q=site%3Dams&amp;state=down&amp;sort=target&amp;refresh=30"' in page  # reverses
        status, page = await running.get("/?q=tls_cert_invalid")
        assert [_name(row) for row in _rows(page)] == [starttls_server.target]
        status, page = await running.get("/?sort=duration")
        durations = [float(d) for d in re.findall(r'data-duration="([^"]+)"', page)]
        assert len(durations) == 5 and durations == sorted(durations)
        assert _name(_rows(page)[-1]) == silent.target  # no duration: last either way
        # Unknown values are the defaults, not errors.
        status, page = await running.get("/?state=sideways&sort=nope&refresh=1")
        assert status == 200 and len(_rows(page)) == 6 and "http-equiv" not in page

        # A row's history: its own results, newest first, with the durations' sparkline.
        query = urllib.parse.urlencode({"target": failing.target, "module": "envelope"})
        async with running.session.get(f"{running.url}/history?{query}") as response:
            assert response.status == 200 and "Content-Security-Policy" in response.headers
            history = await response.text()
        recent = re.findall(r'<tr class="recent".*?</tr>', history, re.S)
        assert recent and all(failing.target in row and "reply_temporary" in row for row in recent)
        assert 'svg class="spark"' in history and "/transcript?id=" in history


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


async def _screenshot(page: Page, directory: Path, name: str, width: int) -> None:
    png = await page.screenshot()
    (directory / name).write_bytes(png)
    keep = os.environ.get("SMTP_EXPORTER_SCREENSHOTS")
    if keep:
        (Path(keep) / name).write_bytes(png)
    assert _png_size(png)[0] == width


async def test_the_page_in_headless_chromium(
    write_config: Callable[[str], Path],
    smtp_sink: SmtpSink,
    fault_server: Callable[..., AiosmtpdServer],
    starttls_server: AiosmtpdServer,
    scripted_server: Callable[..., Awaitable[ScriptedServer]],
    tls_ca: TestCA,
    tmp_path: Path,
) -> None:
    failing = fault_server("mail", 451, "4.3.0", "Try later")
    silent = await scripted_server(silence())
    async with (
        _lab(write_config, smtp_sink, failing, starttls_server, silent, tls_ca) as lab,
        Chromium.start(tmp_path / "profile") as browser,
    ):
        url = lab.running.url
        page = await browser.new_page(width=1280, height=800)
        await page.navigate(url + "/")
        assert await page.evaluate("document.scripts.length") == 0
        # The summary's counts are the rows'.
        counts = await page.evaluate(
            "Object.fromEntries(Array.from(document.querySelectorAll('#summary [data-count]'))"
            ".map(e => [e.dataset.count, Number(e.textContent)]))"
        )
        states = await page.evaluate(f"{ROWS}.map(r => r.dataset.state)")
        assert counts["series"] == len(states) == 6
        assert {word: counts[word] for word in ("up", "down", "pending")} == {
            word: states.count(word) for word in ("up", "down", "pending")
        }
        # The stylesheet applies under the page's CSP: badges are coloured, rows are not.
        colours = await page.evaluate(
            "[getComputedStyle(document.querySelector('.badge.down')).backgroundColor,"
            " getComputedStyle(document.querySelector('tr.down')).backgroundColor,"
            " getComputedStyle(document.querySelector('tr.down td')).fontWeight]"
        )
        assert colours == ["rgb(251, 224, 224)", "rgba(0, 0, 0, 0)", "400"], colours
        assert not [line for line in page.console if "Content Security Policy" in line], page.console
        # A row of the table fits 1280 px without scrolling sideways, the phase bar on one line.
        await _screenshot(page, tmp_path, "status-page-1280.png", 1280)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 1280
        bar_heights = await page.evaluate(
            "Array.from(document.querySelectorAll('svg.bar')).map(s => s.getBoundingClientRect().height)"
        )
        assert bar_heights and set(bar_heights) == {12}

        # The filter is a plain form: submitting it loads the filtered page from the server.
        await page.evaluate(
            "document.querySelector('input[name=q]').value = 'site=ams';"
            "document.querySelector('select[name=refresh]').value = '10';"
        )
        loads = page.loads
        await page.evaluate("document.querySelector('form button').click()")
        await page.wait_loads(loads + 1)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(await page.evaluate("location.href")).query)
        assert query == {"q": ["site=ams"], "refresh": ["10"]}
        names = await page.evaluate(f"{ROWS}.map(r => r.querySelector('th').firstChild.textContent)")
        assert sorted(names) == sorted([failing.target, "127.0.0.1:1"])
        # Sorting: a column header's link, keeping the filter.
        loads = page.loads
        await page.evaluate(
            "Array.from(document.querySelectorAll('thead a')).find(a => a.textContent == 'Duration').click()"
        )
        await page.wait_loads(loads + 1)
        durations = await page.evaluate(f"{ROWS}.map(r => Number(r.dataset.duration))")
        assert len(durations) == 2 and durations == sorted(durations)
        href = await page.evaluate("location.href")
        # The auto-refresh reloads this very URL: the filter and sort are still there after it.
        loads = page.loads
        await page.wait_loads(loads + 1, timeout=40)
        assert await page.evaluate("location.href") == href
        assert await page.evaluate(f"{ROWS}.length") == 2
        assert await page.evaluate("document.querySelector('input[name=q]').value") == "site=ams"

        # A phone: rows become labelled cards, nothing wider than the screen.
        phone = await browser.new_page(width=390, height=844, mobile=True)
        await phone.navigate(url + "/")
        await _screenshot(phone, tmp_path, "status-page-phone.png", 390)
        assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
        label = await phone.evaluate(
            "getComputedStyle(document.querySelector('tbody td'), '::before').content"
        )
        assert label == '"Module: "', label


async def test_a_row_names_the_mx_host_and_address_used_and_the_fallback(
    write_config: Callable[[str], Path],
    smtp_server: AiosmtpdServer,
    dns_server: Callable[..., DnsServer],
) -> None:
    dns = dns_server(
        {
            "fallback.test": {"MX": ["10 mx-silent.example.test.", "20 mx-working.example.test."]},
            "primary.test": {"MX": ["10 mx-working.example.test."]},
            "mx-silent.example.test": {"A": "127.0.0.2"},
            "mx-working.example.test": {"A": "127.0.0.1"},
        }
    )
    config = write_config(
        f"""
modules:
  mx_check: {{mx: true, ip_protocol: ip4, port: {smtp_server.port}, timeout: 900ms, connect_timeout: 300ms,
             ehlo: probe.test, dns: {{nameservers: ['{dns.nameserver}'], timeout: 300ms}}}}
targets:
  - {{target: fallback.test, module: mx_check, interval: 1s}}
  - {{target: primary.test, module: mx_check, interval: 1s}}
"""
    )
    with silent_host("127.0.0.2", smtp_server.port):
        async with running_exporter(config) as running:
            for target in ("fallback.test", "primary.test"):
                await running.wait_metric("smtp_probe_success", target=target)
            status, page = await running.get("/?q=example.test")
    assert status == 200
    rows = {_name(row): row for row in _rows(page)}
    assert set(rows) == {"fallback.test", "primary.test"}
    address = f"127.0.0.1:{smtp_server.port}"
    fell_back = rows["fallback.test"]
    assert "mx-working.example.test <span class=muted>(pref 20)</span>" in fell_back and address in fell_back
    assert '<span class="badge warn">fallback</span> 127.0.0.2 failed (timeout)' in fell_back
    direct = rows["primary.test"]
    assert "mx-working.example.test <span class=muted>(pref 10)</span>" in direct and address in direct
    assert "fallback" not in direct


async def test_tls_days_count_to_the_earliest_expiry_in_the_chain(
    tmp_path: Path,
    write_config: Callable[[str], Path],
    smtp_server_factory: Callable[..., AiosmtpdServer],
) -> None:
    """An intermediate that expires in 20 days under a leaf valid for 60 breaks delivery in 20:
    the row counts to the chain's earliest expiry, as the issue's 'days until the earliest chain
    expiry' asks, and sorting by TLS uses the same figure."""
    chain = Chain(tmp_path, expired_extra=False)
    server = smtp_server_factory(starttls=chain.server_cert)
    config = write_config(
        f"""
modules:
  tls: {{starttls: required, timeout: 900ms, tls_config: {{ca_file: {chain.ca_file}, server_name: mail.test}}}}
targets:
  - {{target: '{server.target}', module: tls, interval: 1s}}
"""
    )
    async with running_exporter(config) as running:
        await running.wait_metric("smtp_probe_success", target=server.target, module="tls")
        status, page = await running.get("/")
    assert status == 200
    (row,) = _rows(page)
    assert re.search(r"TLSv1\.[23], expires in (19|20) d, verified", row), row
