"""The server side of a private run: which events each round costs, the budget, the release.

:class:`PrivacyController` is plain numpy (no Flower): a strategy asks it, per round,

1. :meth:`PrivacyController.charge_round` before sending the round, with the sampled
   clients; it raises :class:`PrivacyBudgetExhausted` when the round's worst case would take
   epsilon above ``privacy.max_epsilon`` (nothing of that round is sent), and otherwise
   charges what clients release themselves (local ``logit_dp``, ``dpsgd``);
2. :meth:`PrivacyController.release` with the clients' shared proxy outputs, for the
   server-side mechanisms (central ``logit_dp``, ``pate``) and for local ``logit_dp``
   (averaging noisy rows, then projecting onto the simplex: post-processing);
3. :meth:`PrivacyController.round_metrics` for ``metrics.jsonl``.

Privacy units: ``client-<partition id>`` for mechanisms each client applies itself (local
``logit_dp`` and DP-SGD; ``epsilon`` is the largest over clients), ``federation`` for the
server-side ones. Client sampling: DP-SGD's Poisson sampling of examples is accounted
(``q = 1 / batches per epoch``); the fixed-size client sampling of ``fraction_train`` is
not credited (no amplification), so central epsilons are upper bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedkd.privacy.accounting import (
    ACCOUNTANT,
    EventKey,
    PrivacyLedger,
    gaussian,
    poisson_gaussian,
)
from fedkd.privacy.config import PrivacySpec
from fedkd.privacy.mechanisms import (
    central_sum,
    logit_dp_sensitivity,
    noise_generator,
    pate_labels,
    project_to_simplex,
)

FEDERATION = "federation"
SQRT2 = float(np.sqrt(2.0))


class PrivacyBudgetExhausted(RuntimeError):
    """The next round would exceed ``privacy.max_epsilon``; the run stops before it."""


def client_unit(partition_id: int) -> str:
    return f"client-{partition_id}"


def dpsgd_schedule(num_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """DP-SGD's (sample rate, steps) as Opacus runs them (see :mod:`fedkd.privacy.dpsgd`)."""
    from fedkd.privacy.dpsgd import dpsgd_schedule as schedule

    return schedule(num_examples, batch_size, epochs)


@dataclass
class Release:
    """The outcome of :meth:`PrivacyController.release`."""

    targets: np.ndarray  # (rows, C) probability vectors
    rows: np.ndarray | None = None  # positions within the round's proxy subset (pate)
    details: dict[str, Any] = field(default_factory=dict)


class PrivacyController:
    """Accounting, budget and server-side release for one run (see module docstring)."""

    def __init__(self, spec: PrivacySpec, *, seed: int) -> None:
        if not spec.enabled:
            raise ValueError("PrivacyController needs a mechanism (privacy.name != none)")
        self.spec = spec
        self.seed = seed
        self.ledger = PrivacyLedger(spec.delta)
        self.stopped: str | None = None
        self.rounds_charged = 0
        self.release_details: dict[str, Any] = {}
        self._round: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------ planning
    def round_events(
        self,
        partitions: Sequence[int],
        *,
        proxy_rows: int,
        client_examples: dict[int, int],
        local_epochs: int,
        batch_size: int,
    ) -> dict[str, list[tuple[EventKey, int]]]:
        """Worst-case events of a round with these clients, per unit."""
        spec = self.spec
        if spec.name == "dpsgd":
            per_client: dict[str, list[tuple[EventKey, int]]] = {}
            for p in partitions:
                rate, steps = dpsgd_schedule(client_examples[p], batch_size, local_epochs)
                event = poisson_gaussian(rate, spec.noise_multiplier)
                per_client[client_unit(p)] = [(event, steps)]
            return per_client
        if spec.name == "logit_dp" and spec.mode == "local":
            event = gaussian(spec.noise_multiplier)
            return {client_unit(p): [(event, 1)] for p in partitions}
        if spec.name == "logit_dp":
            return {FEDERATION: [(gaussian(spec.noise_multiplier), 1)]}
        # pate: every query answered, and every query checked under confident GNMax
        events: list[tuple[EventKey, int]] = [(gaussian(spec.sigma / SQRT2), proxy_rows)]
        if spec.confident:
            assert spec.sigma_threshold is not None
            events.append((gaussian(spec.sigma_threshold), proxy_rows))
        return {FEDERATION: events}

    def charge_round(
        self,
        server_round: int,
        partitions: Sequence[int],
        *,
        proxy_rows: int,
        client_examples: dict[int, int],
        local_epochs: int,
        batch_size: int,
    ) -> None:
        """Check the budget for this round, then charge the client-side releases."""
        planned = self.round_events(
            partitions,
            proxy_rows=proxy_rows,
            client_examples=client_examples,
            local_epochs=local_epochs,
            batch_size=batch_size,
        )
        projected = max(
            (self.ledger.epsilon(unit, extra) for unit, extra in planned.items()), default=0.0
        )
        budget = self.spec.max_epsilon
        if budget is not None and projected > budget:
            self.stopped = (
                f"stopped before round {server_round}: it would raise epsilon to "
                f"{projected:.4g} > privacy.max_epsilon={budget:g} (delta={self.spec.delta:g})"
            )
            raise PrivacyBudgetExhausted(self.stopped)
        self._round[server_round] = {"projected_epsilon": projected}
        if self.spec.name == "dpsgd" or (
            self.spec.name == "logit_dp" and self.spec.mode == "local"
        ):
            for unit, events in planned.items():
                for key, count in events:
                    self.ledger.add(unit, key, count)
        self.rounds_charged += 1

    # ------------------------------------------------------------------ release
    def release(self, server_round: int, shared: np.ndarray) -> Release:
        """Targets from the clients' ``(K, N, C)`` shared outputs under the mechanism."""
        spec = self.spec
        shared = np.asarray(shared, dtype=np.float64)
        rng = noise_generator(spec.reproducible_noise, self.seed, server_round)
        if spec.name == "logit_dp" and spec.mode == "local":
            # rows are already noisy: averaging and projecting are post-processing
            release = Release(project_to_simplex(shared.mean(axis=0)))
            std = spec.noise_multiplier * logit_dp_sensitivity(shared.shape[1], spec.clip, "local")
            release.details = {"noise_std": std}
        elif spec.name == "logit_dp":
            total, used = central_sum(
                shared, clip=spec.clip, noise_multiplier=spec.noise_multiplier, rng=rng
            )
            self.ledger.add(FEDERATION, gaussian(spec.noise_multiplier))
            release = Release(project_to_simplex(total / len(shared)))
            release.details = {"noise_std": used.noise_std, "sensitivity": used.sensitivity}
        elif spec.name == "pate":
            answer = pate_labels(
                shared,
                sigma=spec.sigma,
                rng=rng,
                threshold=spec.threshold,
                sigma_threshold=spec.sigma_threshold,
            )
            self.ledger.add(FEDERATION, gaussian(spec.sigma / SQRT2), len(answer.answered))
            if spec.confident:
                assert spec.sigma_threshold is not None
                self.ledger.add(FEDERATION, gaussian(spec.sigma_threshold), answer.queries)
            targets = np.zeros((len(answer.answered), shared.shape[2]), dtype=np.float32)
            targets[np.arange(len(answer.answered)), answer.labels] = 1.0
            release = Release(targets, rows=answer.answered)
            release.details = {
                "queries": answer.queries,
                "answered": len(answer.answered),
            }
        else:
            raise ValueError(f"privacy={spec.name} has no server-side release")
        self._round.setdefault(server_round, {}).update(release.details)
        return release

    # ------------------------------------------------------------------ reporting
    def round_metrics(self, server_round: int) -> dict[str, Any]:
        """``epsilon`` (largest over units) and ``delta`` after this round, plus details."""
        metrics: dict[str, Any] = {
            "epsilon": self.ledger.max_epsilon(),
            "delta": self.spec.delta,
        }
        details = self._round.get(server_round, {})
        if "answered" in details:
            metrics["pate_answered"] = details["answered"]
            metrics["pate_queries"] = details["queries"]
        return metrics

    def sensitivity(self, proxy_rows: int) -> float | None:
        spec = self.spec
        if spec.name == "logit_dp":
            return logit_dp_sensitivity(proxy_rows, spec.clip, spec.mode)
        if spec.name == "pate":
            return SQRT2
        return None

    def summary(self, *, proxy_rows: int) -> dict[str, Any]:
        """The ``privacy`` entry of ``summary.json``."""
        spec = self.spec
        per_unit = self.ledger.per_unit()
        summary: dict[str, Any] = {
            "mechanism": spec.name,
            "unit": spec.unit,
            "epsilon": max(per_unit.values(), default=0.0),
            "delta": spec.delta,
            "accountant": ACCOUNTANT,
            "rounds_accounted": self.rounds_charged,
            "max_epsilon": spec.max_epsilon,
            "stopped_by_budget": self.stopped is not None,
            "reproducible_noise": spec.reproducible_noise,
            "client_sampling": "not credited (fixed-size sampling; epsilon is an upper bound)",
        }
        if self.stopped:
            summary["stopped_reason"] = self.stopped
        if len(per_unit) > 1 or any(u.startswith("client-") for u in per_unit):
            summary["epsilon_per_unit"] = per_unit
        if spec.name == "logit_dp":
            sensitivity = self.sensitivity(proxy_rows)
            assert sensitivity is not None
            summary.update(
                {
                    "mode": spec.mode,
                    "clip": spec.clip,
                    "noise_multiplier": spec.noise_multiplier,
                    "sensitivity": sensitivity,
                    "sensitivity_formula": (
                        "2 * clip * sqrt(rows)" if spec.mode == "local" else "clip * sqrt(rows)"
                    ),
                    "noise_std": spec.noise_multiplier * sensitivity,
                    "rows_per_release": proxy_rows,
                }
            )
        elif spec.name == "pate":
            summary.update(
                {
                    "sigma": spec.sigma,
                    "threshold": spec.threshold,
                    "sigma_threshold": spec.sigma_threshold,
                    "sensitivity": SQRT2,
                    "accounting": "data-independent (every check and answer charged)",
                }
            )
        elif spec.name == "dpsgd":
            summary.update(
                {
                    "noise_multiplier": spec.noise_multiplier,
                    "max_grad_norm": spec.max_grad_norm,
                    "client_sampling": "examples: Poisson (accounted); clients: not credited",
                }
            )
        summary["events"] = self.ledger.state()
        return summary
