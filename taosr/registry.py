"""One registry idiom for every named choice (losses, advantage estimators, examiner modes,
engines, data views, schedulers, synthetic query types).

A :class:`Registry` maps names to objects. Registering a name twice is a programming error
(``ValueError``). Looking a name up, and checking the options given with it, is a user error
(:class:`~taosr.errors.ConfigError`) that names the config key, so a bad choice is refused once,
when the object that holds it is built, never late and never silently replaced by a default.

An entry may declare the options it takes (``options=("lam", "clamp")``); :meth:`Registry.check`
then refuses any other option, so a misspelt option is an error instead of being ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from taosr.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    options: frozenset[str] | None  # the option names it takes; None: undeclared (not checked)


class Registry(Generic[T]):
    """Named choices of one kind. ``key`` is the config key users set (for error messages)."""

    def __init__(self, kind: str, key: str):
        self.kind, self.key = kind, key
        self._entries: dict[str, Entry[T]] = {}

    # ------------------------------------------------------------------ registration
    def register(self, name: str, obj: T | None = None, *, options: Iterable[str] | None = None):
        """``reg.register("x", fn)`` or as a decorator ``@reg.register("x", options=(...))``."""
        def add(o: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, o, frozenset(options) if options is not None else None)
            return o

        return add(obj) if obj is not None else add

    # ------------------------------------------------------------------ lookup
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str, key: str | None = None) -> Entry[T]:
        if name not in self._entries:
            raise ConfigError(f"{key or self.key}: {name!r} is unknown; expected one of {', '.join(self._entries)}")
        return self._entries[name]

    def get(self, name: str, key: str | None = None) -> T:
        return self.entry(name, key).obj

    def options(self, name: str) -> frozenset[str]:
        opts = self.entry(name).options
        return opts if opts is not None else frozenset()

    def check(self, name: str, given: Iterable[str] = (), key: str | None = None,
              option_key: str | None = None) -> T:
        """Validate ``name`` and the option names ``given`` with it; return the registered object.

        ``option_key`` is the config prefix of the options (e.g. ``model.step_advantage``)."""
        e = self.entry(name, key)
        if e.options is None:
            return e.obj
        allowed = e.options
        unknown = [o for o in given if o not in allowed]
        if unknown:
            where = option_key or (key or self.key).rsplit(".", 1)[0]
            takes = ", ".join(sorted(allowed)) or "no options"
            raise ConfigError(f"{where}.{unknown[0]}: not an option of {self.kind} {name!r} (it takes {takes})")
        return e.obj

    def build(self, name: str, options: dict[str, Any] | None = None, key: str | None = None,
              option_key: str | None = None) -> Any:
        """Check, then call the registered factory with ``options``."""
        factory: Callable[..., Any] = self.check(name, (options or {}).keys(), key, option_key)  # type: ignore[assignment]
        return factory(**(options or {}))
