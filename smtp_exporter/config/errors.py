"""`ConfigError`: what every config file (the main config, the web config) fails with."""

from __future__ import annotations


class ConfigError(Exception):
    """A config that cannot be used; `str()` is one line: `FILE:LINE: KEY.PATH: message`."""

    def __init__(self, file: str, message: str, *, line: int | None = None, path: str = "") -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.path = path
        self.message = message

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return _one_line(": ".join(part for part in (where, self.path, self.message) if part))


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
