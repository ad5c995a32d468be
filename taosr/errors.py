"""User-facing errors: one line that names what is wrong and where."""
from __future__ import annotations

from typing import Callable


class TaosrError(Exception):
    """Base class; the CLI prints ``str(err)`` on one line and exits non-zero."""


class DataError(TaosrError):
    """A bad row, file or field. ``where`` is ``file:line`` (or ``file:row N``)."""

    def __init__(self, where: str, field: str | None, message: str):
        self.where, self.field, self.message = where, field, message
        field_part = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{field_part} {message}")


class ConfigError(TaosrError):
    pass


class Interrupted(TaosrError):
    """A command stopped by Ctrl-C or SIGTERM (``code`` 130 or 143) after saving what it could; the
    CLI prints the message and exits with ``code``."""

    def __init__(self, message: str, code: int = 130):
        super().__init__(message)
        self.code = code


def find_cause(err: BaseException | None, match: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception in ``err``'s chain (itself, then its ``__cause__`` or ``__context__``) that
    ``match`` accepts, or None: what a wrapper re-raised (jsonargparse, torch's zip writer) is found
    behind it."""
    seen = set()
    while err is not None and id(err) not in seen:
        if match(err):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
