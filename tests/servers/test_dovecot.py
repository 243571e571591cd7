"""Self-tests of the private Dovecot: aioimaplib logs in over implicit TLS, a plain client sees
STARTTLS and upgrades, LMTP delivers into the Maildir, IDLE is announced only when asked for."""

from __future__ import annotations

import smtplib
import socket

import aioimaplib

from tests.servers.dovecot import Dovecot
from tests.servers.tls import TestCA


async def _imaps_capabilities(dovecot: Dovecot, ca: TestCA, password: str) -> tuple[str, set[str]]:
    client = aioimaplib.IMAP4_SSL(
        dovecot.host, dovecot.imaps_port, ssl_context=ca.client_context(), timeout=5
    )
    await client.wait_hello_from_server()
    response = await client.login(dovecot.username, password)
    capabilities = set(client.protocol.capabilities)
    if response.result == "OK":
        assert (await client.logout()).result == "OK"
    return response.result, capabilities


async def test_aioimaplib_logs_in_over_implicit_tls_and_finds_a_message_delivered_by_lmtp(
    tls_ca: TestCA,
) -> None:
    with Dovecot(tls_ca.server_cert) as dovecot:
        with smtplib.LMTP(dovecot.lmtp_socket) as lmtp:
            lmtp.sendmail("sender@example.net", [dovecot.username], b"Subject: first\r\n\r\nbody\r\n")
        assert len(dovecot.messages()) == 1

        client = aioimaplib.IMAP4_SSL(
            dovecot.host, dovecot.imaps_port, ssl_context=tls_ca.client_context(), timeout=5
        )
        await client.wait_hello_from_server()
        assert (await client.login(dovecot.username, dovecot.password)).result == "OK"
        assert "IDLE" in client.protocol.capabilities
        select = await client.select("INBOX")
        assert select.result == "OK"
        assert aioimaplib.extract_exists(select) == 1
        search = await client.search("HEADER", "Subject", "first")
        assert search.result == "OK" and search.lines[0].split() == [b"1"]
        assert (await client.logout()).result == "OK"


async def test_a_wrong_password_is_refused(tls_ca: TestCA) -> None:
    with Dovecot(tls_ca.server_cert) as dovecot:
        result, _ = await _imaps_capabilities(dovecot, tls_ca, "not the password")
        assert result == "NO"


async def test_idle_and_uidplus_can_be_turned_off(tls_ca: TestCA) -> None:
    with Dovecot(tls_ca.server_cert, idle=False, uidplus=False) as dovecot:
        result, capabilities = await _imaps_capabilities(dovecot, tls_ca, dovecot.password)
        assert result == "OK"
        assert "IDLE" not in capabilities and "UIDPLUS" not in capabilities
        assert "IMAP4rev1" in capabilities


def test_port_143_offers_starttls_and_upgrades(tls_ca: TestCA) -> None:
    with (
        Dovecot(tls_ca.server_cert) as dovecot,
        socket.create_connection((dovecot.host, dovecot.imap_port), timeout=5) as raw,
    ):
        file = raw.makefile("rwb")
        greeting = file.readline()
        assert greeting.startswith(b"* OK") and b"STARTTLS" in greeting
        file.write(b"a1 STARTTLS\r\n")
        file.flush()
        assert file.readline().startswith(b"a1 OK")
        with tls_ca.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.sendall(b"a2 CAPABILITY\r\n")
            reply = tls.recv(4096)
            assert b"AUTH=PLAIN" in reply and b"STARTTLS" not in reply


def test_the_instance_leaves_nothing_behind(tls_ca: TestCA) -> None:
    dovecot = Dovecot(tls_ca.server_cert).start()
    directory, port = dovecot.directory, dovecot.imaps_port
    dovecot.stop()
    assert not directory.exists()
    with socket.socket() as probe:
        assert probe.connect_ex((dovecot.host, port)) != 0
