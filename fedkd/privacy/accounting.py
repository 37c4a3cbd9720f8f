"""Privacy accounting with Google's dp-accounting: Rényi DP and privacy loss distributions.

A :class:`PrivacyLedger` keeps, per privacy unit, how often each kind of event happened.
Units are named by the controller (:mod:`fedkd.privacy.controller`): ``record/client-<p>``
for the record-level guarantee of one client's records, ``client/<...>`` for client-level
guarantees. Events are kept as counts so an epsilon is one ``compose(event, count)`` per
event kind (cached), and a projected epsilon ("what if this round ran") costs the same.

Two accountants (``privacy.accountant``):

* ``rdp``: :class:`dp_accounting.rdp.RdpAccountant` (default orders); milliseconds, so it
  is used for every round's ``epsilon``, the budget and the noise calibration (an upper
  bound, never below the true epsilon);
* ``pld``: :class:`dp_accounting.pld.PLDAccountant` (privacy loss distributions, tight up to
  its discretisation; about a second per composition), used for the final guarantee.

``best`` (the default) reports, for the final guarantee, the smaller of the two with the
accountant's name; both are valid upper bounds, so the smaller one is too.

Event kinds
    ``("gaussian", z)``: a Gaussian mechanism with noise multiplier ``z`` (std / L2
    sensitivity). ``("poisson", q, z)``: a Gaussian mechanism whose unit takes part with
    probability ``q`` (Poisson sampling: a DP-SGD step, or a round under Poisson client
    sampling).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

EventKey = tuple[str, float] | tuple[str, float, float]
Events = tuple[tuple[EventKey, int], ...]

ACCOUNTANTS = ("best", "rdp", "pld")
NAMES = {
    "rdp": "dp-accounting RdpAccountant (Rényi DP, default orders)",
    "pld": "dp-accounting PLDAccountant (privacy loss distributions)",
}
#: Kept for callers that name the per-round accountant.
ACCOUNTANT = NAMES["rdp"]


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
        if key[1] >= 1.0:  # always sampled: the plain Gaussian mechanism
            return dp_accounting.GaussianDpEvent(key[2])
        return dp_accounting.PoissonSampledDpEvent(key[1], dp_accounting.GaussianDpEvent(key[2]))
    raise ValueError(f"unknown event kind {key!r}")


def _compose(accountant: Any, events: Events, delta: float) -> float:
    """Epsilon at ``delta`` of composing each event ``count`` times in ``accountant``."""
    _quiet_absl()
    if not events:
        return 0.0
    for key, count in events:
        accountant.compose(_dp_event(key), int(count))
    return float(accountant.get_epsilon(delta))


@lru_cache(maxsize=4096)
def composed_epsilon(events: Events, delta: float) -> float:
    """Epsilon at ``delta`` of composing each event ``count`` times (dp-accounting RDP)."""
    from dp_accounting import rdp

    return _compose(rdp.RdpAccountant(), events, delta)


@lru_cache(maxsize=512)
def pld_epsilon(events: Events, delta: float) -> float:
    """Epsilon at ``delta`` of the same composition by privacy loss distributions."""
    from dp_accounting.pld import pld_privacy_accountant

    return _compose(pld_privacy_accountant.PLDAccountant(), events, delta)


def reported_epsilon(events: Events, delta: float, accountant: str) -> tuple[float, str]:
    """``(epsilon, accountant name)`` of the final guarantee under ``privacy.accountant``."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    candidates = []
    if accountant in ("best", "rdp"):
        candidates.append((composed_epsilon(events, delta), "rdp"))
    if accountant in ("best", "pld"):
        candidates.append((pld_epsilon(events, delta), "pld"))
    epsilon, name = min(candidates)
    return epsilon, name


def freeze(events: Counter[EventKey]) -> Events:
    return tuple(sorted((k, c) for k, c in events.items() if c > 0))


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

    def events(self, unit: str, extra: Iterable[tuple[EventKey, int]] = ()) -> Events:
        """The frozen events of ``unit``, plus ``extra`` if given."""
        events = Counter(self._events.get(unit, Counter()))
        for key, count in extra:
            events[key] += count
        return freeze(events)

    def epsilon(self, unit: str, extra: Iterable[tuple[EventKey, int]] = ()) -> float:
        """RDP epsilon of ``unit`` so far, plus ``extra`` events if given (a projection)."""
        return composed_epsilon(self.events(unit, extra), self.delta)

    def max_epsilon(self, prefix: str = "") -> float:
        return max((self.epsilon(u) for u in self._events if u.startswith(prefix)), default=0.0)

    def per_unit(self, prefix: str = "") -> dict[str, float]:
        return {unit: self.epsilon(unit) for unit in self.units if unit.startswith(prefix)}

    def state(self) -> dict[str, list[list[object]]]:
        """JSON-ready events per unit (for summaries and checkpoints)."""
        return {
            unit: [[*key, count] for key, count in sorted(events.items())]
            for unit, events in sorted(self._events.items())
        }
