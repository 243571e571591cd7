"""Reading a secret from a file or the environment, and checking an OAuth bearer token.

The config loader (config/files.py) reads passwords this way once, at load. The probe engine
(probe/engine.py) reads an OAuth token this way at every probe, since an external agent
rewrites it (the exporter never fetches tokens itself). One implementation, so that both
accept and refuse the same content. No message shows the secret.
"""

from __future__ import annotations

import os
import re

from smtp_exporter.config.durations import quote_value
from smtp_exporter.config.schema import AuthConfig, Secret

MAX_SECRET_BYTES = 64 * 1024  # bounds what a wrong path (a log file, a device) makes us read

# RFC 6750 2.1 b64token, which RFC 7628 (OAUTHBEARER) and XOAUTH2 carry after "Bearer ": anything
# else (a space, a control character such as the %x01 separator) would break the message.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class SecretError(Exception):
    """Why a secret cannot be read (its message names the file, never the content)."""


def read_secret_file(name: str) -> Secret:
    """The content of a secret file, one trailing newline stripped."""
    try:
        with open(name, "rb") as file:
            data = file.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretError(f"cannot read {quote_value(name)}: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"{quote_value(name)} is larger than {MAX_SECRET_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{quote_value(name)} is not valid UTF-8") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise SecretError(f"{quote_value(name)} is empty")
    return Secret(text)


def read_secret_env(name: str) -> Secret:
    """The value of the environment variable `name`; the error message does not repeat the name
    (it may be a secret put in the wrong key): "is not set" or "is empty"."""
    secret = os.environ.get(name)
    if secret is None:
        raise SecretError("is not set")
    if not secret:
        raise SecretError("is empty")
    return Secret(secret)


def bearer_token(auth: AuthConfig) -> Secret:
    """The OAuth bearer token of `auth` as its token_file or token_env holds it now."""
    if auth.token_file is not None:
        token = read_secret_file(auth.token_file)
        source = f"the token file {quote_value(auth.token_file)}"
    else:
        assert auth.token_env is not None, "the config loader requires token_file or token_env"
        try:
            token = read_secret_env(auth.token_env)
        except SecretError as exc:
            raise SecretError(f"the environment variable token_env names {exc}") from None
        source = "the environment variable token_env names"
    if not _B64TOKEN.fullmatch(token.reveal()):
        raise SecretError(
            f"{source} does not hold a bearer token (RFC 6750 b64token: letters, digits, -._~+/ and = at the end)"
        )
    return token
