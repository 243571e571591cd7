"""`ConfigError`: what every config file (the main config, the web config) fails with;
`ConfigErrors`: several independent ones found in one pass, one line each."""

from __future__ import annotations

from collections.abc import Sequence

# At most this many errors are listed; a file with more (a generated one, thousands of bad
# targets alike) ends with a line counting the rest.
MAX_LISTED_ERRORS = 100


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


class ConfigErrors(ConfigError):
    """Independent errors (in different modules, targets, sections or files), in the order
    given; `str()` is one line per error, at most MAX_LISTED_ERRORS of them and then a count.
    The attributes are the first error's."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.file, first.message, line=first.line, path=first.path)
        self.errors = tuple(errors)

    def __str__(self) -> str:
        lines = [str(error) for error in self.errors[:MAX_LISTED_ERRORS]]
        if len(self.errors) > MAX_LISTED_ERRORS:
            rest = len(self.errors) - MAX_LISTED_ERRORS
            lines.append(f"{self.errors[-1].file}: {rest} more error{'s' if rest > 1 else ''} not listed")
        return "\n".join(lines)


def raise_errors(errors: Sequence[ConfigError]) -> None:
    """Raise the one error as itself, several as `ConfigErrors`, or nothing."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
