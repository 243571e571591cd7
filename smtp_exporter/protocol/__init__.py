"""SMTP as pure code over bytes: no sockets, no clock, no asyncio.

The probe engine (probe/connection.py) feeds what the server sent into a `ClientSession` and
writes what it answers; everything here is testable without a network.
"""

from smtp_exporter.protocol.commands import (
    CommandError,
    auth_cram_md5_response,
    auth_login_step,
    auth_plain_initial,
    encode_command,
    validate_argument,
)
from smtp_exporter.protocol.ehlo import EhloResponse, parse_ehlo
from smtp_exporter.protocol.message import build_message
from smtp_exporter.protocol.reply import (
    MalformedReplyError,
    NotAReplyError,
    ProtocolError,
    Reply,
    ReplyCode,
    ReplyParser,
)
from smtp_exporter.protocol.session import ClientSession, Outcome, Status

__all__ = [
    "ClientSession",
    "CommandError",
    "EhloResponse",
    "MalformedReplyError",
    "NotAReplyError",
    "Outcome",
    "ProtocolError",
    "Reply",
    "ReplyCode",
    "ReplyParser",
    "Status",
    "auth_cram_md5_response",
    "auth_login_step",
    "auth_plain_initial",
    "build_message",
    "encode_command",
    "parse_ehlo",
    "validate_argument",
]
