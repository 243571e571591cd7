"""The web config: exporter-toolkit format, checked against promtool, TLS handshakes, basic auth."""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme

from smtp_exporter.config.loader import ConfigError
from smtp_exporter.config.web import (
    ClientAuthType,
    WebConfig,
    build_server_ssl_context,
    check_basic_auth,
    load_web_config,
    load_web_config_text,
)
from tests.helpers import require_binary

TESTDATA = Path(__file__).parent / "testdata" / "web"
FILES = TESTDATA.parent / "files"
DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"
DOCS_HASH_PASSWORD = "changeme"  # the password of the hash in the docs example

EXPECTED: dict[str, tuple[int, str, str]] = {
    "bcrypt_hash_invalid": (
        2,
        "basic_auth_users.prometheus",
        "not a bcrypt hash (expected $2y$<cost>$ and 53 characters; generate one with "
        "htpasswd -nBC 10 \"\" | tr -d ':\\n')",
    ),
    "cert_file_missing": (
        2,
        "tls_server_config.cert_file",
        f'cannot read "{FILES}/nope.pem": No such file or directory',
    ),
    "cipher_suite_unknown": (4, "tls_server_config.cipher_suites[1]", 'unknown cipher suite "RC4"'),
    "client_auth_type_invalid": (
        4,
        "tls_server_config.client_auth_type",
        'invalid value "Always": must be one of NoClientCert, RequestClientCert, RequireAnyClientCert, '
        "VerifyClientCertIfGiven, RequireAndVerifyClientCert",
    ),
    "client_ca_without_policy": (
        4,
        "tls_server_config.client_ca_file",
        "client CAs are configured without a client_auth_type that verifies them "
        "(VerifyClientCertIfGiven or RequireAndVerifyClientCert)",
    ),
    "duplicate_user": (3, "basic_auth_users.prometheus", 'duplicate key "prometheus" (first at line 2)'),
    "header_not_allowed": (
        3,
        "http_server_config.headers",
        'header "Server" can not be configured (allowed: Strict-Transport-Security, X-Content-Type-Options, '
        "X-Frame-Options, X-XSS-Protection, Content-Security-Policy)",
    ),
    "header_value_invalid": (
        3,
        "http_server_config.headers.X-Frame-Options",
        'invalid value "allow": must be one of deny, sameorigin',
    ),
    "key_does_not_parse": (
        2,
        "tls_server_config.cert_file",
        "cannot load certificate and key: not valid PEM data",
    ),
    "min_version_above_max": (4, "tls_server_config.min_version", "TLS13 is above max_version TLS12"),
    "min_version_invalid": (
        4,
        "tls_server_config.min_version",
        'invalid value "SSL3": must be one of TLS10, TLS11, TLS12, TLS13',
    ),
    "missing_key_file": (2, "tls_server_config", 'missing required key "key_file"'),
    "require_any_client_cert": (
        4,
        "tls_server_config.client_auth_type",
        "RequireAnyClientCert is not supported (Python's ssl verifies every client certificate it asks for): "
        "use RequireAndVerifyClientCert with client_ca_file",
    ),
    "unknown_key": (4, "tls_server_config", 'unknown key "curve_preferences"'),
    "unknown_top_level_key": (1, "", 'unknown key "basic_auth_user" (did you mean "basic_auth_users"?)'),
    "username_with_colon": (
        2,
        "basic_auth_users",
        'invalid username "prom:etheus": no colon or control characters',
    ),
    "verify_without_client_ca": (
        4,
        "tls_server_config.client_auth_type",
        "RequireAndVerifyClientCert needs client_ca_file",
    ),
}
# Invalid for the exporter-toolkit too: promtool must refuse them (we are never more lenient).
ALSO_INVALID_FOR_PROMTOOL = [
    "bcrypt_hash_invalid",
    "cert_file_missing",
    "cipher_suite_unknown",
    "duplicate_user",
    "header_not_allowed",
    "header_value_invalid",
    "key_does_not_parse",
    "min_version_invalid",
    "missing_key_file",
    "unknown_top_level_key",
]


def test_every_web_testdata_file_has_an_expectation() -> None:
    assert {path.name.removesuffix(".bad.yml") for path in TESTDATA.glob("*.bad.yml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_web_config(name: str) -> None:
    path = str(TESTDATA / f"{name}.bad.yml")
    line, key_path, message = EXPECTED[name]
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert str(caught.value) == (
        f"{path}:{line}: {key_path}: {message}" if key_path else f"{path}:{line}: {message}"
    )


@pytest.mark.parametrize("name", ALSO_INVALID_FOR_PROMTOOL)
def test_promtool_refuses_them_too(name: str) -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "web-config", str(TESTDATA / f"{name}.bad.yml")], capture_output=True, timeout=60
    )
    assert result.returncode != 0


def docs_example() -> str:
    text = DOCS.read_text()
    match = re.search(
        r"<!-- web-config-example[^>]*-->\n```yaml\n(.*?)```\n<!-- end web-config-example -->", text, re.S
    )
    assert match, "the web config example is missing from docs/configuration.md"
    return match.group(1)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    """The files the docs example names, and a client certificate from the client CA."""
    server_ca = trustme.CA()
    client_ca = trustme.CA()
    server = server_ca.issue_cert("localhost", "127.0.0.1")
    server.private_key_pem.write_to_path(str(tmp_path / "exporter.key"))
    (tmp_path / "exporter.crt").write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.crt"))
    (tmp_path / "web.yml").write_text(docs_example())
    return {
        "dir": tmp_path,
        "server_ca": server_ca,
        "client_ca": client_ca,
        "client": client_ca.issue_cert("prometheus"),
    }


def test_docs_example_passes_promtool(pki: dict[str, object]) -> None:
    promtool = require_binary("promtool")
    path = Path(str(pki["dir"])) / "web.yml"
    result = subprocess.run(
        [promtool, "check", "web-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_docs_example_loads(pki: dict[str, object]) -> None:
    directory = Path(str(pki["dir"]))
    web = load_web_config(str(directory / "web.yml"))
    assert web.tls is not None
    assert web.tls.cert_file == str(directory / "exporter.crt")
    assert web.tls.client_auth_type is ClientAuthType.REQUIRE_AND_VERIFY_CLIENT_CERT
    assert web.headers == (
        ("X-Content-Type-Options", "nosniff"),
        ("Strict-Transport-Security", "max-age=31536000"),
    )
    assert list(web.basic_auth_users) == ["prometheus"]
    assert web.auth_required
    assert check_basic_auth(web, "prometheus", DOCS_HASH_PASSWORD)


async def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> str:
    """Serve one TLS connection on loopback; returns what the server read, or raises the client's error."""
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read(100)
            if not received.done():
                received.set_result(data)
            writer.write(b"ok")
            await writer.drain()
        except (ssl.SSLError, ConnectionError) as exc:
            if not received.done():
                received.set_exception(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
            writer.write(b"hello")
            await writer.drain()
            answer = await reader.read(100)
            writer.close()
            if not answer:
                raise ConnectionResetError("the server closed the connection")
            return (await received).decode()
    finally:
        server.close()
        await server.wait_closed()


async def test_client_certificate_required(pki: dict[str, object]) -> None:
    directory = Path(str(pki["dir"]))
    web = load_web_config(str(directory / "web.yml"))
    server_context = build_server_ssl_context(web)
    assert server_context is not None
    assert server_context.verify_mode == ssl.CERT_REQUIRED
    assert server_context.minimum_version == ssl.TLSVersion.TLSv1_2

    client = ssl.create_default_context()
    pki["server_ca"].configure_trust(client)  # type: ignore[attr-defined]
    pki["client"].configure_cert(client)  # type: ignore[attr-defined]
    assert await handshake(server_context, client) == "hello"

    anonymous = ssl.create_default_context()
    pki["server_ca"].configure_trust(anonymous)  # type: ignore[attr-defined]
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(server_context, anonymous)

    stranger = ssl.create_default_context()
    pki["server_ca"].configure_trust(stranger)  # type: ignore[attr-defined]
    trustme.CA().issue_cert("prometheus").configure_cert(stranger)  # signed by another CA
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(server_context, stranger)


async def test_tls13_only_refuses_tls12_clients(pki: dict[str, object]) -> None:
    directory = Path(str(pki["dir"]))
    (directory / "tls13.yml").write_text(
        "tls_server_config:\n  cert_file: exporter.crt\n  key_file: exporter.key\n  min_version: TLS13\n"
    )
    server_context = build_server_ssl_context(load_web_config(str(directory / "tls13.yml")))
    assert server_context is not None
    assert server_context.verify_mode == ssl.CERT_NONE
    client = ssl.create_default_context()
    pki["server_ca"].configure_trust(client)  # type: ignore[attr-defined]
    assert await handshake(server_context, client) == "hello"
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(server_context, client)


def test_no_tls_config_means_plain_http() -> None:
    assert build_server_ssl_context(WebConfig()) is None
    assert build_server_ssl_context(load_web_config_text("tls_server_config: {}\n", source="w.yml")) is None
    assert load_web_config_text("", source="w.yml") == WebConfig(source="w.yml")


def test_basic_auth() -> None:
    import bcrypt

    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    web = load_web_config_text(f"basic_auth_users:\n  alice: '{hashed}'\n", source="w.yml")
    assert not check_basic_auth(web, "alice", "wrong")
    assert not check_basic_auth(web, "bob", "s3cret")  # unknown user
    assert not check_basic_auth(web, "", "")
    assert ("alice", hashlib.sha256(b"wrong").digest()) not in web._auth_cache
    assert check_basic_auth(web, "alice", "s3cret")
    assert ("alice", hashlib.sha256(b"s3cret").digest()) in web._auth_cache  # the next scrape skips bcrypt
    assert check_basic_auth(web, "alice", "s3cret")
    assert not check_basic_auth(web, "alice", "s3cret" + "x" * 100)
    assert not check_basic_auth(web, "ALICE", "s3cret")


def test_basic_auth_long_passwords_match_like_bcrypt() -> None:
    import bcrypt

    password = "p" * 80  # bcrypt uses the first 72 bytes, as htpasswd and Go do
    hashed = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(4)).decode()
    web = WebConfig(basic_auth_users={"u": hashed})
    assert check_basic_auth(web, "u", password)


def test_unknown_user_runs_bcrypt_with_the_users_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    import bcrypt

    import smtp_exporter.config.web as web_module

    costs: list[bytes] = []
    real = bcrypt.checkpw

    def recording(password: bytes, hashed: bytes) -> bool:
        costs.append(hashed[:7])
        return bool(real(password, hashed))

    monkeypatch.setattr(web_module.bcrypt, "checkpw", recording)
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(5)).decode()
    web = WebConfig(basic_auth_users={"alice": hashed})
    assert not check_basic_auth(web, "mallory", "pw")
    assert costs == [b"$2b$05$"]  # the decoy costs what a real check costs
