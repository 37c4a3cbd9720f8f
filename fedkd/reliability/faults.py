"""Fault injection for simulations: clients that crash, clients that hang, a killed actor.

The server decides, per round and from ``(seed, round)``, which sampled clients misbehave
and tells each one in its round config (``fault``); a client without that key runs
normally, so a run with every fraction at 0 sends exactly the messages of a clean run.

Kinds
-----
``crash``
    The ClientApp raises :class:`InjectedFault` before training (an error reply).
``straggle``
    The ClientApp sleeps ``delay`` seconds before training, past the round timeout, so its
    reply arrives after the server moved on and must never count in a later round.
``kill``
    The ClientApp process exits (``os._exit``): under Ray the actor dies and Ray restarts
    it (``backend.max_restarts``). Refused on the inline backend, where the client runs in
    the server's own process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkd.errors import ConfigError, FedKDError, check_block

CRASH, STRAGGLE, KILL = "crash", "straggle", "kill"
KINDS = (CRASH, STRAGGLE, KILL)
_STREAM = 0xFA17  # keeps fault draws independent of every other use of (seed, round)


class InjectedFault(FedKDError):
    """Raised by a client told to crash (``faults.crash_fraction``)."""


@dataclass(frozen=True)
class FaultSpec:
    """The ``faults`` config block.

    Parameters
    ----------
    crash_fraction : float
        Fraction of each round's sampled clients that raise instead of training.
    straggler_fraction : float
        Fraction of each round's sampled clients that hang past the round timeout.
    straggler_delay : float, optional
        How long a straggler sleeps, in seconds; ``None``: ``round_timeout + 1``.
    kill_actor_round : int, optional
        The round in which one sampled client's process exits (Ray actor killed).
    """

    crash_fraction: float = 0.0
    straggler_fraction: float = 0.0
    straggler_delay: float | None = None
    kill_actor_round: int | None = None

    @property
    def enabled(self) -> bool:
        return (
            self.crash_fraction > 0
            or self.straggler_fraction > 0
            or self.kill_actor_round is not None
        )

    @staticmethod
    def from_config(cfg: Mapping[str, Any] | None) -> FaultSpec:
        """Parse and check the ``faults`` block (``None``: no faults)."""
        if cfg is None:
            return FaultSpec()
        spec = FaultSpec(**check_block(cfg, "faults", FaultSpec.__dataclass_fields__))
        for key in ("crash_fraction", "straggler_fraction"):
            value = getattr(spec, key)
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ConfigError(f"faults.{key} must be in [0, 1), got {value!r}")
        if spec.crash_fraction + spec.straggler_fraction >= 1.0:
            raise ConfigError(
                "faults.crash_fraction + faults.straggler_fraction must be < 1 (some client "
                f"must be able to answer), got {spec.crash_fraction + spec.straggler_fraction}"
            )
        if spec.straggler_delay is not None and (
            not isinstance(spec.straggler_delay, int | float) or spec.straggler_delay <= 0
        ):
            raise ConfigError(
                f"faults.straggler_delay must be > 0 seconds or null, got {spec.straggler_delay!r}"
            )
        if spec.kill_actor_round is not None and (
            not isinstance(spec.kill_actor_round, int) or spec.kill_actor_round < 1
        ):
            raise ConfigError(
                f"faults.kill_actor_round must be a round number >= 1 or null, "
                f"got {spec.kill_actor_round!r}"
            )
        return spec

    def check_backend(self, backend: str) -> None:
        """A killed process is only survivable where clients run in their own process."""
        if self.kill_actor_round is not None and backend in ("inline", "batched"):
            raise ConfigError(
                f"faults.kill_actor_round kills a client's process, but backend={backend} runs "
                "clients in the server's process; use backend=ray_cpu (or ray_gpu)"
            )

    def plan(self, seed: int, server_round: int, partitions: Sequence[int]) -> dict[int, str]:
        """Which of this round's sampled ``partitions`` misbehave, and how.

        Deterministic in ``(seed, server_round)``; crash and straggle sets are disjoint and
        sized ``round(fraction * len(partitions))``; the kill round picks one more client.
        """
        if not self.enabled or not partitions:
            return {}
        rng = np.random.default_rng([seed, server_round, _STREAM])
        order = [int(p) for p in rng.permutation(sorted(partitions))]
        crashes = round(self.crash_fraction * len(order))
        stragglers = round(self.straggler_fraction * len(order))
        faults = dict.fromkeys(order[:crashes], CRASH)
        faults.update(dict.fromkeys(order[crashes : crashes + stragglers], STRAGGLE))
        if self.kill_actor_round == server_round and crashes + stragglers < len(order):
            faults[order[crashes + stragglers]] = KILL
        return faults

    def delay(self, round_timeout: float) -> float:
        """Seconds a straggler sleeps."""
        return float(self.straggler_delay) if self.straggler_delay else round_timeout + 1.0


def inject(kind: str, delay: float) -> None:
    """Misbehave as told (called by the ClientApp before it trains)."""
    if kind == CRASH:
        raise InjectedFault("injected crash (faults.crash_fraction)")
    if kind == STRAGGLE:
        time.sleep(delay)
    elif kind == KILL:
        os._exit(17)  # no clean-up on purpose: this is what a dying process looks like
    elif kind:
        raise ConfigError(f"unknown fault kind {kind!r}; expected one of {KINDS}")
