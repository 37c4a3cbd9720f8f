"""Exception types raised by fedkd, and the checks every config block shares."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any


class FedKDError(Exception):
    """Base class for all fedkd errors."""


class ConfigError(FedKDError, ValueError):
    """An invalid configuration value; the message names the config key."""


def check_block(cfg: object, key: str, allowed: Iterable[str]) -> dict[str, Any]:
    """A config block (``faults``, ``attack``, ``encoding``, ...) as a dict, or a ConfigError
    naming the block when it is not a mapping or has keys outside ``allowed``."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{key} must be a mapping, got {cfg!r}")
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ConfigError(f"{key}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    return dict(cfg)


def check_types(options: Any, *, prefix: str, names: Mapping[str, str] | None = None) -> None:
    """Refuse a value of the wrong type in the dataclass ``options``, naming the key as the
    config spells it: ``<prefix><field>``, or ``<prefix><names[field]>`` where the config key
    differs from the field's name (``strategy.digest_lr`` for ``DigestOptions.lr``).

    Called first in ``__post_init__``, so that a string from the command line
    (``strategy.distill_lr=abc``) fails at construction, before any client runs, and never
    reaches the range checks or the training loop (which would name it differently).
    Fields annotated ``int`` take integers (not booleans), ``float`` finite integers or
    floats, ``str`` strings, ``bool`` booleans; ``T | None`` also takes None; others are
    not checked here.
    """
    for field in fields(options):
        value = getattr(options, field.name)
        key = f"{prefix}{(names or {}).get(field.name, field.name)}"
        # a string under postponed annotations (this package's modules), else the type
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
        kind, _, optional = kind.partition(" | ")
        if optional == "None" and value is None:
            continue
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
        if kind == "str" and not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
