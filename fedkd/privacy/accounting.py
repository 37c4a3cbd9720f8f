"""Privacy accounting with Google's dp-accounting library (Rényi DP, then converted to (ε, δ)).

A :class:`PrivacyLedger` keeps, per privacy unit (one client for local mechanisms and DP-SGD,
the whole federation for central ones), how often each kind of Gaussian event happened, and
asks :class:`dp_accounting.rdp.RdpAccountant` for the composed epsilon at the run's delta.
Events are kept as counts so an epsilon is one ``compose(event, count)`` per event kind
(cached), and a projected epsilon ("what if this round ran") costs the same.

Event kinds
    ``("gaussian", z)``: a Gaussian mechanism with noise multiplier ``z`` (std / L2
    sensitivity). ``("poisson", q, z)``: one DP-SGD step, Poisson sampling rate ``q``.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

EventKey = tuple[str, float] | tuple[str, float, float]

ACCOUNTANT = "dp-accounting RdpAccountant (Rényi DP, default orders)"


def _quiet_absl() -> None:
    # dp-accounting logs one warning per fractional order it skips for sampled Gaussians.
    logging.getLogger("absl").setLevel(logging.ERROR)


def gaussian(noise_multiplier: float) -> EventKey:
    return ("gaussian", float(noise_multiplier))


def poisson_gaussian(sample_rate: float, noise_multiplier: float) -> EventKey:
    return ("poisson", float(sample_rate), float(noise_multiplier))


def _dp_event(key: EventKey) -> Any:
    import dp_accounting

    if key[0] == "gaussian":
        return dp_accounting.GaussianDpEvent(key[1])
    if key[0] == "poisson" and len(key) == 3:
        return dp_accounting.PoissonSampledDpEvent(key[1], dp_accounting.GaussianDpEvent(key[2]))
    raise ValueError(f"unknown event kind {key!r}")


@lru_cache(maxsize=4096)
def composed_epsilon(events: tuple[tuple[EventKey, int], ...], delta: float) -> float:
    """Epsilon at ``delta`` of composing each event ``count`` times (dp-accounting RDP)."""
    from dp_accounting import rdp

    _quiet_absl()
    if not events:
        return 0.0
    accountant = rdp.RdpAccountant()
    for key, count in events:
        accountant.compose(_dp_event(key), int(count))
    return float(accountant.get_epsilon(delta))


class PrivacyLedger:
    """Composed (ε, δ) per privacy unit."""

    def __init__(self, delta: float) -> None:
        self.delta = delta
        self._events: dict[str, Counter[EventKey]] = defaultdict(Counter)

    @property
    def units(self) -> list[str]:
        return sorted(self._events)

    def add(self, unit: str, key: EventKey, count: int = 1) -> None:
        if count > 0:
            self._events[unit][key] += count

    def epsilon(self, unit: str, extra: Iterable[tuple[EventKey, int]] = ()) -> float:
        """Epsilon of ``unit`` so far, plus ``extra`` events if given (a projection)."""
        events = Counter(self._events.get(unit, Counter()))
        for key, count in extra:
            events[key] += count
        frozen = tuple(sorted((k, c) for k, c in events.items() if c > 0))
        return composed_epsilon(frozen, self.delta)

    def max_epsilon(self) -> float:
        return max((self.epsilon(u) for u in self._events), default=0.0)

    def per_unit(self) -> dict[str, float]:
        return {unit: self.epsilon(unit) for unit in self.units}

    def state(self) -> dict[str, list[list[object]]]:
        """JSON-ready events per unit (for summaries and checkpoints)."""
        return {
            unit: [[*key, count] for key, count in sorted(events.items())]
            for unit, events in sorted(self._events.items())
        }
