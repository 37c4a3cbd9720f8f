"""Exception types raised by fedkd, and the check every config block shares."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
