"""The round options every strategy takes (``strategy.*``), checked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedkd.errors import ConfigError, check_types

__all__ = ["TOO_FEW_ACTIONS", "RoundOptions", "alias", "check_types"]

TOO_FEW_ACTIONS = ("skip", "abort")


@dataclass(frozen=True)
class RoundOptions:
    """Who takes part in a round and what a round needs.

    Parameters
    ----------
    fraction_train : float
        Fraction of clients sampled for training each round, in (0, 1].
    fraction_evaluate : float
        Fraction that evaluates the global model on its local test split, in [0, 1].
    min_train_replies : int
        Fewest valid training replies a round needs (>= 1).
    on_too_few_replies : {"skip", "abort"}
        What a round with fewer does: keep the global state, or stop the run.
    proxy_round_size : int
        Proxy rows used per round (0: the whole proxy).
    """

    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_train_replies: int = 1
    on_too_few_replies: str = "skip"
    proxy_round_size: int = 0

    def __post_init__(self) -> None:
        check_types(self, prefix="strategy.")
        if self.proxy_round_size < 0:
            raise ConfigError(
                "strategy.proxy_round_size must be >= 0 (0: whole proxy), "
                f"got {self.proxy_round_size}"
            )
        if not 0.0 < self.fraction_train <= 1.0:
            raise ConfigError(
                f"strategy.fraction_train must be in (0, 1], got {self.fraction_train}"
            )
        if not 0.0 <= self.fraction_evaluate <= 1.0:
            raise ConfigError(
                f"strategy.fraction_evaluate must be in [0, 1], got {self.fraction_evaluate}"
            )
        if self.min_train_replies < 1:
            raise ConfigError(
                f"strategy.min_train_replies must be >= 1, got {self.min_train_replies}"
            )
        if self.on_too_few_replies not in TOO_FEW_ACTIONS:
            raise ConfigError(
                f"strategy.on_too_few_replies must be one of {TOO_FEW_ACTIONS}, "
                f"got {self.on_too_few_replies!r}"
            )


def alias(path: str, name: str, *, settable: bool = False) -> property:
    """A read (and, if asked, write) shortcut to ``self.<path>.<name>``."""

    def owner(self: Any) -> Any:
        for part in path.split("."):
            self = getattr(self, part)
        return self

    def get(self: Any) -> Any:
        return getattr(owner(self), name)

    def set_(self: Any, value: Any) -> None:
        setattr(owner(self), name, value)

    return property(get, set_ if settable else None, doc=f"``{path}.{name}``")
