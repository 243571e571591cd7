"""XOAUTH2 and OAUTHBEARER (RFC 7628) in the session, in memory: the exact bytes sent, the
server's error challenge answered as each mechanism requires, and the token never shown."""

from __future__ import annotations

import base64
import json

import pytest

from smtp_exporter.config.schema import AuthConfig, AuthMechanism, Secret
from smtp_exporter.model import FailureReason, Phase
from smtp_exporter.protocol.auth import REDACTED
from tests.protocol.test_session import Peer, failure, module, names

TOKEN = "ya29.a0AfH6SMB-token_value~with+all/b64token=="
OAUTH_USER = "probe@example.org"
EHLO_OAUTH = b"250-mail.test\r\n250-AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER\r\n250 8BITMIME\r\n"
# Google's XOAUTH2 error challenge, and RFC 7628 3.2.2's for OAUTHBEARER.
XOAUTH2_ERROR = {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
BEARER_ERROR = {
    "status": "invalid_token",
    "scope": "example_scope",
    "openid-configuration": "https://x.test/",
}


def oauth(mechanism: AuthMechanism, username: str = OAUTH_USER) -> AuthConfig:
    return AuthConfig(mechanism=mechanism, username=username, token_file="/run/secrets/token")


def oauth_peer(mechanism: AuthMechanism, replies: dict[str, object], username: str = OAUTH_USER) -> Peer:
    peer = Peer(module(auth=oauth(mechanism, username)), {"EHLO": EHLO_OAUTH, **replies})
    peer.session.token = Secret(TOKEN)
    return peer


def challenge(document: dict[str, str]) -> bytes:
    return b"334 " + base64.b64encode(json.dumps(document).encode()) + b"\r\n"


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


INITIAL = {
    AuthMechanism.XOAUTH2: b64(f"user={OAUTH_USER}\x01auth=Bearer {TOKEN}\x01\x01"),
    AuthMechanism.OAUTHBEARER: b64(f"n,a={OAUTH_USER},\x01auth=Bearer {TOKEN}\x01\x01"),
}


def assert_token_hidden(peer: Peer, text: str) -> None:
    for form in (TOKEN, INITIAL[AuthMechanism.XOAUTH2].decode(), INITIAL[AuthMechanism.OAUTHBEARER].decode()):
        assert form not in text


@pytest.mark.parametrize("mechanism", [AuthMechanism.XOAUTH2, AuthMechanism.OAUTHBEARER])
def test_success_sends_the_initial_response(mechanism: AuthMechanism) -> None:
    peer = oauth_peer(mechanism, {"AUTH": b"235 2.7.0 Accepted\r\n"})
    outcome = peer.run()
    assert outcome.failure is None, outcome.failure
    assert names(outcome) == ["connect", "banner", "ehlo", "auth", "quit"]
    assert peer.sent[1] == b"AUTH " + mechanism.value.encode() + b" " + INITIAL[mechanism] + b"\r\n"
    shown = [what for _, direction, what in outcome.events if direction == "C"]
    assert f"AUTH {mechanism.value} {REDACTED}" in shown
    assert_token_hidden(peer, repr(outcome))


def test_oauthbearer_escapes_the_authzid() -> None:
    """RFC 5801 saslname: "," and "=" in the username would end the GS2 header early."""
    peer = oauth_peer(AuthMechanism.OAUTHBEARER, {"AUTH": b"235 2.7.0 ok\r\n"}, username="a=b,c@example.org")
    assert peer.run().failure is None
    sent = base64.b64decode(peer.sent[1].split()[-1])
    assert sent == f"n,a=a=3Db=2Cc@example.org,\x01auth=Bearer {TOKEN}\x01\x01".encode()


@pytest.mark.parametrize(
    ("mechanism", "document", "answer", "shown"),
    [
        (AuthMechanism.OAUTHBEARER, BEARER_ERROR, b"AQ==\r\n", "AQ=="),  # RFC 7628 3.2.3: a single %x01
        (AuthMechanism.XOAUTH2, XOAUTH2_ERROR, b"\r\n", "<empty line>"),  # Google: an empty response
    ],
    ids=["oauthbearer", "xoauth2"],
)
def test_error_challenge_is_answered_then_535_fails(
    mechanism: AuthMechanism, document: dict[str, str], answer: bytes, shown: str
) -> None:
    replies = {"AUTH": challenge(document), "AUTH-STEP": b"535 5.7.8 Username and Password not accepted\r\n"}
    peer = oauth_peer(mechanism, replies)
    outcome = peer.run()
    assert failure(outcome) == (Phase.AUTH, FailureReason.AUTH_FAILED)
    assert peer.sent[1:] == [
        b"AUTH " + mechanism.value.encode() + b" " + INITIAL[mechanism] + b"\r\n",
        answer,
        b"QUIT\r\n",
    ]
    compact = json.dumps(document, separators=(",", ":"))
    assert outcome.failure is not None
    assert outcome.failure.message == (
        f"unexpected reply to auth: 535 5.7.8 Username and Password not accepted (error challenge: {compact})"
    )
    assert f'"status":"{document["status"]}"' in outcome.failure.message
    client = [what for _, direction, what in outcome.events if direction == "C"]
    assert client[-2:] == [shown, "QUIT"]
    # The phase ends with the 535, not with the challenge.
    assert outcome.phases[-1].reply_code == 535
    assert_token_hidden(peer, repr(outcome))


def test_a_second_challenge_is_cancelled() -> None:
    """After the %x01 the server must fail the exchange; asking again gets "*" (RFC 4954 4)."""
    replies = {
        "AUTH": challenge(BEARER_ERROR),
        "AUTH-STEP": challenge(BEARER_ERROR),
        "*": b"501 5.7.0 ok\r\n",
    }
    peer = oauth_peer(AuthMechanism.OAUTHBEARER, replies)
    outcome = peer.run()
    assert failure(outcome) == (Phase.AUTH, FailureReason.AUTH_FAILED)
    assert peer.sent[2:] == [b"AQ==\r\n", b"*\r\n", b"QUIT\r\n"]
    assert outcome.failure is not None and "invalid_token" in outcome.failure.message


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (b"not base64!", "not base64 JSON: not base64!"),
        (base64.b64encode(b"\xff\xfe"), "not base64 JSON: //4="),
        (base64.b64encode(b"{not json"), "not base64 JSON: e25vdCBqc29u"),
        (base64.b64encode(b'{"status":"' + TOKEN.encode() + b'"}'), f'{{"status":"{REDACTED}"}}'),
        (base64.b64encode(json.dumps({"status": "x" * 400}).encode()), '{"status":"' + "x" * 289 + "..."),
    ],
    ids=["not-base64", "not-utf8", "not-json", "quotes-the-token", "long"],
)
def test_odd_error_challenges_still_end_as_auth_failed(text: bytes, shown: str) -> None:
    replies = {"AUTH": b"334 " + text + b"\r\n", "AUTH-STEP": b"535 5.7.8 no\r\n"}
    peer = oauth_peer(AuthMechanism.OAUTHBEARER, replies)
    outcome = peer.run()
    assert failure(outcome) == (Phase.AUTH, FailureReason.AUTH_FAILED)
    assert outcome.failure is not None
    assert outcome.failure.message == f"unexpected reply to auth: 535 5.7.8 no (error challenge: {shown})"
    assert_token_hidden(peer, repr(outcome))


def test_a_server_quoting_the_token_is_redacted() -> None:
    replies = {"AUTH": f"535 5.7.8 token {TOKEN} expired\r\n".encode()}
    peer = oauth_peer(AuthMechanism.XOAUTH2, replies)
    outcome = peer.run()
    assert failure(outcome) == (Phase.AUTH, FailureReason.AUTH_FAILED)
    assert outcome.phases[-1].reply == f"5.7.8 token {REDACTED} expired"
    assert_token_hidden(peer, repr(outcome))


@pytest.mark.parametrize(
    ("ehlo", "message"),
    [
        (b"250-mail.test\r\n250 8BITMIME\r\n", "the server offers no AUTH mechanism"),
        (
            b"250-mail.test\r\n250-AUTH PLAIN LOGIN OAUTHBEARER\r\n250 8BITMIME\r\n",
            "the server does not offer AUTH XOAUTH2 (offers: PLAIN LOGIN OAUTHBEARER)",
        ),
    ],
    ids=["no-auth", "other-mechanisms"],
)
def test_no_token_goes_to_a_server_not_offering_the_mechanism(ehlo: bytes, message: str) -> None:
    peer = oauth_peer(AuthMechanism.XOAUTH2, {"EHLO": ehlo})
    outcome = peer.run()
    assert failure(outcome) == (Phase.AUTH, FailureReason.AUTH_FAILED)
    assert outcome.failure is not None and outcome.failure.message == message
    assert peer.sent[1:] == [b"QUIT\r\n"]
