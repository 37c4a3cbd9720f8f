"""Named registries and the option checks of config groups chosen by a ``name``.

:class:`Registry` keeps the entries of one kind (datasets, teacher-target rules) by name,
in registration order. :func:`check_name`, :func:`check_option_names` and
:func:`check_option_keys` raise the :class:`~fedkd.errors.ConfigError` messages shared by
config groups such as ``dataset``, ``aggregation``, ``distill``, ``model`` and ``augment``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from fedkd.errors import ConfigError


class Named(Protocol):
    """A registry entry: anything with a ``name``."""

    @property
    def name(self) -> str: ...


EntryT = TypeVar("EntryT", bound=Named)


class Registry(Generic[EntryT]):
    """Entries of one kind by name, in registration order.

    Parameters
    ----------
    kind : str
        What an entry is, for messages (``"dataset"``, ``"target rule"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, EntryT] = {}
        #: Live read-only view of the registry, name -> entry, in registration order.
        self.view: Mapping[str, EntryT] = MappingProxyType(self._entries)

    def register(self, entry: EntryT) -> EntryT:
        """Add ``entry`` and return it; ValueError if its name is already registered."""
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> EntryT:
        """Remove and return the entry ``name``; KeyError if none is registered."""
        if name not in self._entries:
            raise KeyError(f"no {self.kind} {name!r} is registered")
        return self._entries.pop(name)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def get(self, key: str, name: Any) -> EntryT:
        """The entry ``name``; a :class:`ConfigError` naming config ``key`` if there is none."""
        check_name(key, name, self._entries)
        return self._entries[name]


def check_entry_name(kind: str, name: Any) -> None:
    """A new entry's name must be a non-empty string (ValueError naming ``kind`` otherwise)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")


def check_name(key: str, name: Any, names: Collection[str]) -> None:
    """Raise a :class:`ConfigError` naming config ``key`` unless ``name`` is one of ``names``."""
    if not isinstance(name, str) or name not in names:
        raise ConfigError(f"{key} must be one of {list(names)}, got {name!r}")


def check_option_names(
    options: Iterable[str], allowed: Collection[str], *, key: str, owner: str
) -> None:
    """Raise a :class:`ConfigError` for options not in ``allowed``.

    The message names the first unknown option as ``<key>.<option>``, all of them, their
    ``owner`` (e.g. ``distill.name='kd'``) and the allowed options in their given order.
    """
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}: unknown option(s) {unknown} for {owner}; "
            f"allowed options: {list(allowed)}"
        )


def check_option_keys(
    options: Iterable[Any], allowed: Collection[str], *, key: str, owner: str
) -> None:
    """Raise a :class:`ConfigError` for options not in ``allowed``.

    The message lists every unknown option as ``<key>.<option>``, their ``owner`` (e.g.
    ``dataset 'digits'``) and the allowed options sorted (``none`` when there are none).
    """
    unknown = sorted(str(option) for option in options if option not in allowed)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {[key + '.' + option for option in unknown]} for {owner}; "
            f"allowed options: {sorted(allowed) or 'none'}"
        )
