"""The server side of a private run: which events each round costs, the budget, the release.

:class:`PrivacyController` is plain numpy (no Flower): a strategy asks it, per round,

1. :meth:`PrivacyController.eligible` which clients may still take part (``budget=client``:
   those whose record-level epsilon stays within ``privacy.max_epsilon``);
2. :meth:`PrivacyController.charge_round` before sending the round, with the sampled
   clients; it raises :class:`PrivacyBudgetExhausted` when the round's worst case would take
   the record-level epsilon above ``privacy.max_epsilon`` (``budget=federation``; nothing of
   that round is sent), and otherwise charges what clients release themselves (local
   ``logit_dp``, ``dpsgd``);
3. :meth:`PrivacyController.release` with the clients' shared proxy outputs, for the
   server-side mechanisms (central ``logit_dp``, ``pate``) and for local ``logit_dp``
   (averaging noisy rows, then projecting onto the simplex: post-processing), or
   :meth:`PrivacyController.release_sum` with only their sum (secure aggregation);
4. :meth:`PrivacyController.round_metrics` for ``metrics.jsonl``.

Two guarantees are accounted side by side (docs/PRIVACY.md "Threat model"):

* **record level** (``epsilon``; units ``record/client-<p>``): one training record of client
  ``p`` added, removed or changed. A record only influences its own client's releases, so
  each client is charged for the rounds it took part in; the headline epsilon is the
  largest over clients. Central ``logit_dp`` charges a record at ``z / sqrt(2)`` (its
  client's contribution moves by up to ``sqrt(2) clip sqrt(N)``); DP-SGD charges its
  Poisson-sampled steps.
* **client level** (``epsilon_client``; unit ``client/federation`` for server-side
  mechanisms, ``client/client-<p>`` for local ``logit_dp``): all data of one client (added
  or removed for central ``logit_dp``, replaced for local ``logit_dp`` and ``pate``). DP-SGD
  bounds no client-level relation.

Client sampling (``privacy.client_sampling``): ``fixed`` is not credited (the sample is a
fixed-size draw, not the Poisson sampling amplification theorems need); ``poisson`` (each
client takes part with probability ``q = fraction_train``) credits amplification to central
``logit_dp``'s client-level guarantee: a Poisson-sampled Gaussian every round (the
adversary, who sees only the release, does not learn who took part). Record level is
charged for the rounds a client took part in, as with fixed sampling: amplification for
a changed (not removed) contribution is not the add/remove analysis. PATE and the
client-side mechanisms get no credit (the server sees who took part).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedkd.errors import ConfigError
from fedkd.privacy.accounting import (
    NAMES,
    EventKey,
    PrivacyLedger,
    gaussian,
    poisson_gaussian,
    reported_epsilon,
)
from fedkd.privacy.config import PrivacySpec
from fedkd.privacy.mechanisms import (
    GaussianRelease,
    PateAnswer,
    central_sum,
    logit_dp_noise_std,
    logit_dp_sensitivity,
    noise_generator,
    noisy_total,
    pate_from_histogram,
    pate_labels,
    project_to_simplex,
)

FEDERATION = "client/federation"
SQRT2 = float(np.sqrt(2.0))
Plan = dict[str, list[tuple[EventKey, int]]]


class PrivacyBudgetExhausted(RuntimeError):
    """The next round would exceed ``privacy.max_epsilon``; the run stops before it."""


def record_unit(partition_id: int) -> str:
    return f"record/client-{partition_id}"


def client_unit(partition_id: int) -> str:
    """The client-level unit of a client-side mechanism (local ``logit_dp``)."""
    return f"client/client-{partition_id}"


def dpsgd_schedule(num_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """DP-SGD's (sample rate, steps) as Opacus runs them (see :mod:`fedkd.privacy.dpsgd`)."""
    from fedkd.privacy.dpsgd import dpsgd_schedule as schedule

    return schedule(num_examples, batch_size, epochs)


@dataclass
class Release:
    """The outcome of :meth:`PrivacyController.release` or ``release_sum``."""

    targets: np.ndarray  # (rows, C) probability vectors
    rows: np.ndarray | None = None  # positions within the round's proxy subset (pate)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundPlan:
    """What a round is planned with: the clients that take part and the release sizes."""

    partitions: Sequence[int]
    proxy_rows: int
    client_examples: dict[int, int]
    local_epochs: int
    batch_size: int
    server_round: int = 0


class PrivacyController:
    """Accounting, budget and server-side release for one run (see module docstring).

    Parameters
    ----------
    spec : PrivacySpec
        The mechanism.
    seed : int
        The run seed (reproducible noise only).
    clients : sequence of int, optional
        Every partition id of the federation (Poisson client sampling charges all).
    sample_rate : float
        ``q`` of Poisson client sampling (``strategy.fraction_train``).
    """

    def __init__(
        self,
        spec: PrivacySpec,
        *,
        seed: int,
        clients: Sequence[int] = (),
        sample_rate: float = 1.0,
    ) -> None:
        if not spec.enabled:
            raise ValueError("PrivacyController needs a mechanism (privacy.name != none)")
        self.spec = spec
        self.seed = seed
        self.clients = list(clients)
        self.sample_rate = float(sample_rate)
        self.ledger = PrivacyLedger(spec.delta)
        self.stopped: str | None = None
        self.rounds_charged = 0
        self.exhausted: list[int] = []  # clients whose own budget is spent (budget=client)
        #: Record-level epsilon of the whole planned run in the worst case (set before it).
        self.worst_case_epsilon: float | None = None
        self._round: dict[int, dict[str, Any]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint; one written before record-level accounting cannot
        be continued (its events are per client only)."""
        missing = sorted({"clients", "sample_rate", "exhausted", "worst_case_epsilon"} - set(state))
        if missing:
            raise ConfigError(
                "this checkpoint's privacy accounting was written by an older fedkd (before "
                f"record- and client-level guarantees; it lacks {missing}): start the run again"
            )
        self.__dict__.update(state)

    @property
    def poisson(self) -> bool:
        """Central ``logit_dp`` credited with Poisson client sampling."""
        spec = self.spec
        return (
            spec.client_sampling == "poisson"
            and spec.name == "logit_dp"
            and spec.mode == "central"
            and self.sample_rate < 1.0
        )

    # ------------------------------------------------------------------ planning
    def round_events(self, plan: RoundPlan) -> Plan:
        """Worst-case events of a round with these clients, per unit (every PATE query
        answered and checked)."""
        spec, events = self.spec, {}
        if spec.name == "dpsgd":
            for p in plan.partitions:
                rate, steps = dpsgd_schedule(
                    plan.client_examples[p], plan.batch_size, plan.local_epochs
                )
                events[record_unit(p)] = [(poisson_gaussian(rate, spec.noise_multiplier), steps)]
            return events
        if spec.name == "logit_dp" and spec.mode == "local":
            event = gaussian(spec.noise_multiplier)
            for p in plan.partitions:
                events[record_unit(p)] = [(event, 1)]
                events[client_unit(p)] = [(event, 1)]
            return events
        if spec.name == "logit_dp":
            return self._central_events(plan.partitions)
        per_query: list[tuple[EventKey, int]] = [(gaussian(spec.sigma / SQRT2), plan.proxy_rows)]
        if spec.confident:
            assert spec.sigma_threshold is not None
            per_query.append((gaussian(spec.sigma_threshold), plan.proxy_rows))
        events = {record_unit(p): list(per_query) for p in plan.partitions}
        events[FEDERATION] = list(per_query)
        return events

    def _central_events(self, partitions: Sequence[int]) -> Plan:
        """Central ``logit_dp``: the records of the clients that take part at ``z/sqrt(2)``
        (whether a client takes part does not depend on its records, so each is charged for
        the rounds it took part in), the federation at ``z``, Poisson-sampled when credited
        (the adversary, who sees only the release, does not learn who took part)."""
        z = self.spec.noise_multiplier
        events: Plan = {record_unit(p): [(gaussian(z / SQRT2), 1)] for p in partitions}
        federation = poisson_gaussian(self.sample_rate, z) if self.poisson else gaussian(z)
        events[FEDERATION] = [(federation, 1)]
        return events

    def projected(self, plan: RoundPlan) -> float:
        """The record-level epsilon (RDP) if this round ran as planned."""
        events = self.round_events(plan)
        units = set(events) | set(self.ledger.units)
        return max(
            (self.ledger.epsilon(u, events.get(u, ())) for u in units if u.startswith("record/")),
            default=0.0,
        )

    def eligible(self, candidates: Sequence[int], plan: RoundPlan) -> list[int]:
        """The candidates that may take part in the next round: all of them, except under
        ``budget=client``, where a client whose own record-level epsilon would pass
        ``privacy.max_epsilon`` with this round stops taking part for good."""
        budget = self.spec.max_epsilon
        if self.spec.budget != "client" or budget is None:
            return list(candidates)
        keep = []
        for p in candidates:
            if p in self.exhausted:
                continue
            alone = RoundPlan(
                [p], plan.proxy_rows, plan.client_examples, plan.local_epochs, plan.batch_size
            )
            extra = self.round_events(alone).get(record_unit(p), [])
            if self.ledger.epsilon(record_unit(p), extra) > budget:
                self.exhausted.append(p)
            else:
                keep.append(p)
        return keep

    def charge_round(self, server_round: int, plan: RoundPlan) -> None:
        """Check the budget for this round, then charge the client-side releases."""
        projected = self.projected(plan)
        budget = self.spec.max_epsilon
        if (not plan.partitions and not self.poisson) or (
            budget is not None and self.spec.budget == "federation" and projected > budget
        ):
            if not plan.partitions:
                self.stopped = (
                    f"stopped before round {server_round}: every client's budget is spent "
                    f"(privacy.max_epsilon={budget}, record level, budget=client)"
                )
            else:
                self.stopped = (
                    f"stopped before round {server_round}: it would raise epsilon to "
                    f"{projected:.4g} > privacy.max_epsilon={budget:g} (record level, "
                    f"delta={self.spec.delta:g})"
                )
            raise PrivacyBudgetExhausted(self.stopped)
        self._round[server_round] = {"projected_epsilon": projected}
        if self.poisson:  # every round, whether or not anyone is sampled or replies
            z = self.spec.noise_multiplier
            self.ledger.add(FEDERATION, poisson_gaussian(self.sample_rate, z))
        if self.spec.name == "dpsgd" or (
            self.spec.name == "logit_dp" and self.spec.mode == "local"
        ):  # charged whether or not anyone replies
            for unit, events in self.round_events(plan).items():
                for key, count in events:
                    self.ledger.add(unit, key, count)
        self.rounds_charged += 1

    # ------------------------------------------------------------------ release
    def release(
        self, server_round: int, shared: np.ndarray, partitions: Sequence[int] = ()
    ) -> Release:
        """Targets from the clients' ``(K, N, C)`` shared outputs under the mechanism;
        ``partitions``: whose outputs they are (charged at record level).

        The server protects what it sees itself: central ``logit_dp`` drops negative parts
        and clips every client's rows again (:func:`central_sum`), PATE re-derives one vote
        per client and row (:func:`pate_labels`). Under secure aggregation use
        :meth:`release_sum`.
        """
        spec = self.spec
        shared = np.asarray(shared, dtype=np.float64)
        rng = noise_generator(spec.reproducible_noise, self.seed, server_round)
        mechanism = self._server_side()
        if mechanism == "central":
            noisy, used = central_sum(
                shared, clip=spec.clip, noise_multiplier=spec.noise_multiplier, rng=rng
            )
            return self._central_release(server_round, noisy, len(shared), partitions, used)
        if mechanism == "pate":
            answer = pate_labels(shared, rng=rng, **self._gnmax_options())
            return self._pate_release(server_round, answer, shared.shape[2], partitions)
        return self._local_release(server_round, shared.sum(axis=0), len(shared))

    def _gnmax_options(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "sigma": spec.sigma,
            "threshold": spec.threshold,
            "sigma_threshold": spec.sigma_threshold,
        }

    def release_sum(
        self,
        server_round: int,
        total: np.ndarray,
        count: int,
        partitions: Sequence[int],
        *,
        noise_added: bool = False,
    ) -> Release:
        """Targets from the ``(N, C)`` sum of what ``count`` clients sent (secure aggregation).

        Charges the ledger, reports and returns exactly what :meth:`release` does for the
        same clients; the server sees only the sum.

        Parameters
        ----------
        server_round : int
            The round (the noise stream of reproducible noise).
        total : np.ndarray
            ``(N, C)``, the sum over the surviving clients of what each sent: central
            ``logit_dp``, its non-negative rows clipped to ``privacy.clip`` (with its share
            of the noise when ``noise_added``); ``pate``, its one-hot votes (so ``total`` is
            the vote histogram); local ``logit_dp``, its noisy rows.
        count : int
            How many clients the sum is over (``>= 1``).
        partitions : sequence of int
            Whose contributions are in the sum (``count`` of them; charged at record level).
        noise_added : bool
            Central ``logit_dp`` only: the clients added the noise themselves (distributed
            noise), so none is added here; the release reports the noise it stands for,
            which assumes the shares of the surviving clients add up to noise of that std
            (a client that withholds its share lowers it).

        Notes
        -----
        The server can no longer clip rows or re-derive votes: it never sees one client's
        contribution. The guarantee to an honest client still holds, because it clips its
        rows (or casts one vote per row) itself, and the noise is calibrated to how far one
        such contribution moves the sum; a malicious client can distort the sum (scale its
        rows, cast weighted votes) but not weaken the privacy of the other clients (with
        ``noise_added``, only by withholding its noise share, see above).
        """
        spec = self.spec
        mechanism = self._server_side()
        total = np.asarray(total, dtype=np.float64)
        if total.ndim != 2:
            raise ValueError(f"total must be an (N, C) sum, got shape {total.shape}")
        if not np.isfinite(total).all():
            raise ValueError("total has non-finite entries (a failed secure-aggregation decode?)")
        if count < 1 or len(partitions) != count:
            raise ValueError(f"count={count} must be >= 1 and match partitions={partitions}")
        if noise_added and mechanism != "central":
            other = "pate" if mechanism == "pate" else "local logit_dp"
            raise ValueError(f"noise_added=True is for central logit_dp only, not {other}")
        rng = noise_generator(spec.reproducible_noise, self.seed, server_round)
        if mechanism == "central":
            noisy, used = noisy_total(
                total,
                num_rows=len(total),
                clip=spec.clip,
                noise_multiplier=spec.noise_multiplier,
                rng=rng,
                add_noise=not noise_added,
            )
            return self._central_release(server_round, noisy, count, partitions, used)
        if mechanism == "pate":
            answer = pate_from_histogram(total, rng=rng, **self._gnmax_options())
            return self._pate_release(server_round, answer, total.shape[1], partitions)
        return self._local_release(server_round, total, count)

    def _server_side(self) -> str:
        """Which release the mechanism has: ``central``, ``pate`` or ``local``."""
        spec = self.spec
        if spec.name == "logit_dp":
            return "local" if spec.mode == "local" else "central"
        if spec.name == "pate":
            return "pate"
        raise ValueError(f"privacy={spec.name} has no server-side release")

    def _central_release(
        self,
        server_round: int,
        noisy: np.ndarray,
        count: int,
        partitions: Sequence[int],
        used: GaussianRelease,
    ) -> Release:
        """Central ``logit_dp``: charge who took part, project the noisy mean."""
        for unit, events in self._central_events(partitions).items():
            if unit == FEDERATION and self.poisson:
                continue  # charged in charge_round
            for key, times in events:
                self.ledger.add(unit, key, times)
        release = Release(project_to_simplex(noisy / count))
        release.details = {"noise_std": used.noise_std, "sensitivity": used.sensitivity}
        return self._recorded(server_round, release)

    def _pate_release(
        self, server_round: int, answer: PateAnswer, classes: int, partitions: Sequence[int]
    ) -> Release:
        """PATE: charge every answer and check, release the answered labels one-hot."""
        spec = self.spec
        for unit in [FEDERATION, *(record_unit(p) for p in partitions)]:
            self.ledger.add(unit, gaussian(spec.sigma / SQRT2), len(answer.answered))
            if spec.confident:
                assert spec.sigma_threshold is not None
                self.ledger.add(unit, gaussian(spec.sigma_threshold), answer.queries)
        targets = np.zeros((len(answer.answered), classes), dtype=np.float32)
        targets[np.arange(len(answer.answered)), answer.labels] = 1.0
        release = Release(targets, rows=answer.answered)
        release.details = {"queries": answer.queries, "answered": len(answer.answered)}
        return self._recorded(server_round, release)

    def _local_release(self, server_round: int, total: np.ndarray, count: int) -> Release:
        """Local ``logit_dp``: rows are already noisy (charged in :meth:`charge_round`), so
        averaging and projecting are post-processing."""
        spec = self.spec
        release = Release(project_to_simplex(total / count))
        std = logit_dp_noise_std(len(total), spec.clip, "local", spec.noise_multiplier)
        release.details = {"noise_std": std}
        return self._recorded(server_round, release)

    def _recorded(self, server_round: int, release: Release) -> Release:
        self._round.setdefault(server_round, {}).update(release.details)
        return release

    # ------------------------------------------------------------------ reporting
    def client_level_bounded(self) -> bool:
        return self.spec.name != "dpsgd"

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        """``epsilon`` (record level, largest over clients), ``epsilon_client`` (client
        level; ``None`` when the mechanism bounds none) and ``delta`` after this round."""
        metrics: dict[str, Any] = {
            "epsilon": self.ledger.max_epsilon("record/"),
            "epsilon_client": (
                self.ledger.max_epsilon("client/") if self.client_level_bounded() else None
            ),
            "delta": self.spec.delta,
        }
        details = self._round.get(server_round, {})
        if "answered" in details:
            metrics["pate_answered"] = details["answered"]
            metrics["pate_queries"] = details["queries"]
        return metrics

    def sensitivity(self, proxy_rows: int, relation: str = "client") -> float | None:
        spec = self.spec
        if spec.name == "logit_dp":
            return logit_dp_sensitivity(proxy_rows, spec.clip, spec.mode, relation)
        if spec.name == "pate":
            return SQRT2
        if spec.name == "dpsgd" and relation == "record":
            return spec.max_grad_norm
        return None

    def guarantee(self, relation: str, *, proxy_rows: int) -> dict[str, Any]:
        """One entry of ``privacy.guarantees`` (see :mod:`fedkd.privacy.guarantees`)."""
        from fedkd.privacy.guarantees import neighbouring

        prefix = f"{relation}/"
        entry: dict[str, Any] = {
            "relation": relation,
            "neighbouring": neighbouring(self.spec, relation),
            "bounded": relation == "record" or self.client_level_bounded(),
            "epsilon": None,
            "delta": self.spec.delta,
            "accountant": None,
            "sensitivity": self.sensitivity(proxy_rows, relation),
        }
        if not entry["bounded"]:
            entry["sensitivity"] = None
            return entry
        epsilon, name = self.tightest(prefix)
        entry["epsilon"], entry["accountant"] = epsilon, NAMES.get(name, name)
        return entry

    def tightest(self, prefix: str) -> tuple[float, str]:
        """The largest over units of the smaller of each unit's RDP and PLD epsilons
        (``privacy.accountant``), computing PLD only where it can change the answer."""
        units = sorted(
            (u for u in self.ledger.units if u.startswith(prefix)),
            key=self.ledger.epsilon,
            reverse=True,
        )
        best, best_name = 0.0, "rdp"
        for unit in units:
            if self.ledger.epsilon(unit) <= best:
                break  # RDP bounds the rest: none can exceed what is reported
            epsilon, name = reported_epsilon(
                self.ledger.events(unit), self.spec.delta, self.spec.accountant
            )
            if epsilon > best:
                best, best_name = epsilon, name
        return best, best_name

    def summary(self, *, proxy_rows: int) -> dict[str, Any]:
        """The ``privacy`` entry of ``summary.json``."""
        from fedkd.privacy.guarantees import describe

        spec = self.spec
        guarantees = [self.guarantee(r, proxy_rows=proxy_rows) for r in ("record", "client")]
        record = guarantees[0]
        summary: dict[str, Any] = {
            "mechanism": spec.name,
            "unit": spec.unit,
            "epsilon": record["epsilon"],
            "epsilon_client": guarantees[1]["epsilon"],
            "delta": spec.delta,
            "accountant": record["accountant"],
            "guarantees": guarantees,
            "rounds_accounted": self.rounds_charged,
            "max_epsilon": spec.max_epsilon,
            "target_epsilon": spec.target_epsilon,
            "budget": spec.budget,
            "stopped_by_budget": self.stopped is not None,
            "reproducible_noise": spec.reproducible_noise,
            "noise_source": (
                "numpy PCG64 seeded from the run seed (research reruns only)"
                if spec.reproducible_noise
                else "operating-system CSPRNG (os.urandom, Box-Muller)"
            ),
            "client_sampling": (
                f"poisson (q={self.sample_rate:g}; amplification credited)"
                if self.poisson
                else f"{spec.client_sampling} (not credited: epsilon is an upper bound)"
            ),
            **describe(spec),
        }
        if self.worst_case_epsilon is not None:
            summary["worst_case_epsilon"] = self.worst_case_epsilon
        if self.exhausted:
            summary["clients_exhausted"] = sorted(self.exhausted)
        if self.stopped:
            summary["stopped_reason"] = self.stopped
        per_unit = self.ledger.per_unit("record/")
        if per_unit:
            summary["epsilon_per_client"] = {u.split("/", 1)[1]: e for u, e in per_unit.items()}
        if spec.name == "logit_dp":
            summary.update(
                {
                    "mode": spec.mode,
                    "clip": spec.clip,
                    "noise_multiplier": spec.noise_multiplier,
                    "sensitivity": self.sensitivity(proxy_rows, "client"),
                    "noise_std": logit_dp_noise_std(
                        proxy_rows, spec.clip, spec.mode, spec.noise_multiplier
                    ),
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
                }
            )
        elif spec.name == "dpsgd":
            summary.update(
                {"noise_multiplier": spec.noise_multiplier, "max_grad_norm": spec.max_grad_norm}
            )
        summary["events"] = self.ledger.state()
        return summary
