"""The payload registry: every payload module registers its class here with :func:`register`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from fedkd.errors import ConfigError
from fedkd.wire.payloads.base import Payload

#: Registered payloads by name (instances; payloads are stateless).
PAYLOADS: dict[str, Payload] = {}

P = TypeVar("P", bound=type[Payload])


def register(cls: P) -> P:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    existing = PAYLOADS.get(cls.name)
    if existing is not None and type(existing).__qualname__ != cls.__qualname__:
        raise ValueError(f"payload name {cls.name!r} is taken by {type(existing).__name__}")
    PAYLOADS[cls.name] = cls()
    return cls


def resolve(names: Iterable[str]) -> list[Payload]:
    """The payloads named, in their :attr:`Payload.order` (compute and validation order).

    Raises
    ------
    ConfigError
        A name is not a registered payload.
    """
    wanted = set(names)
    unknown = sorted(wanted - set(PAYLOADS))
    if unknown:
        raise ConfigError(f"unknown payloads {unknown}; known: {sorted(PAYLOADS)}")
    chosen = [PAYLOADS[name] for name in wanted]
    return sorted(chosen, key=lambda payload: (payload.order, payload.name))
