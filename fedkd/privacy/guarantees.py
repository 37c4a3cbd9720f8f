"""What each mechanism promises, to whom, and the noise that makes a promise hold.

* :func:`neighbouring` and :func:`describe`: the threat model of docs/PRIVACY.md as data
  (``summary.json`` ``privacy``): who the adversary is, and which neighbouring relation
  each guarantee is for.
* :func:`worst_case_epsilon`: the record-level epsilon of a whole planned run before it
  starts (every client in every round; every PATE query answered and checked).
* :func:`calibrate`: ``privacy.target_epsilon`` turned into the noise parameter
  (``noise_multiplier`` or ``sigma``) whose worst case meets it, by bisection over RDP
  (an upper bound, so the reported, possibly tighter, epsilon is never above the target).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from fedkd.errors import ConfigError
from fedkd.privacy.config import PrivacySpec

#: The noise parameter ``privacy.target_epsilon`` calibrates, per mechanism.
NOISE_PARAMETER = {"logit_dp": "noise_multiplier", "dpsgd": "noise_multiplier", "pate": "sigma"}
#: Search range of the calibration (a larger noise parameter than this is not useful).
SEARCH_RANGE = (1e-2, 1e4)


def neighbouring(spec: PrivacySpec, relation: str) -> str:
    """``"add_remove"`` or ``"replace"``: the neighbouring relation of a guarantee.

    Record level: DP-SGD's is add/remove (Opacus's accounting); the prediction mechanisms'
    sensitivities hold for any change of one record (so for add/remove too), stated as
    ``replace``. Client level: central ``logit_dp`` is add/remove (the sum over clients);
    local ``logit_dp`` and PATE are replace (a client's release or votes changed).
    """
    if relation == "record":
        return "add_remove" if spec.name == "dpsgd" else "replace"
    if spec.name == "logit_dp" and spec.mode == "central":
        return "add_remove"
    return "add_remove" if spec.name == "dpsgd" else "replace"


def describe(spec: PrivacySpec) -> dict[str, Any]:
    """The threat model of ``spec``: ``adversary``, ``trust`` and the accounting rule."""
    if spec.name == "dpsgd":
        info = {
            "adversary": "the server, other clients, and whoever sees the student or any model",
            "trust": "none: each client noises its own training",
            "accounting": (
                "each client's Poisson-sampled DP-SGD steps, for the rounds it took part in"
            ),
        }
    elif spec.name == "logit_dp" and spec.mode == "local":
        info = {
            "adversary": "the server, and everyone downstream of it",
            "trust": "none: each client noises its own release",
            "accounting": "one Gaussian mechanism per client per round it took part in",
        }
    elif spec.name == "logit_dp":
        info = {
            "adversary": "whoever sees the released targets, the student or the clients' digest",
            "trust": "an honest server: it sees every client's clipped rows in the clear",
            "accounting": (
                "one Gaussian mechanism per round: multiplier z for a client, z/sqrt(2) for "
                "a record (charged to the clients that took part)"
            ),
        }
    else:
        info = {
            "adversary": "whoever sees the released labels, the student or the clients' digest",
            "trust": "an honest server: it sees every client's votes in the clear",
            "accounting": (
                "data-dependent in the count: each answered query costs a Gaussian mechanism "
                "sigma/sqrt(2) (and each checked one sigma_threshold under confident GNMax); "
                "worst_case_epsilon charges every query"
            ),
        }
    return info


@dataclass(frozen=True)
class PlannedRun:
    """What the run will release, as far as is known before it starts.

    Attributes
    ----------
    num_rounds : int
    clients : sequence of int
        Every partition id.
    proxy_rows : int
        Proxy rows released per round.
    client_examples : dict[int, int]
        Each client's public example count (:func:`fedkd.privacy.public_examples`).
    local_epochs, batch_size : int
        DP-SGD's schedule.
    sample_rate : float
        ``fraction_train`` (Poisson client sampling credits it).
    """

    num_rounds: int
    clients: Sequence[int]
    proxy_rows: int
    client_examples: dict[int, int]
    local_epochs: int
    batch_size: int
    sample_rate: float = 1.0


def worst_case_epsilon(spec: PrivacySpec, run: PlannedRun) -> float:
    """Record-level epsilon (RDP) after ``run.num_rounds`` rounds if every client takes part
    in every round and every PATE query is answered."""
    from fedkd.privacy.controller import PrivacyController, RoundPlan

    controller = PrivacyController(spec, seed=0, clients=run.clients, sample_rate=run.sample_rate)
    plan = RoundPlan(
        run.clients, run.proxy_rows, run.client_examples, run.local_epochs, run.batch_size
    )
    events = controller.round_events(plan)
    return max(
        (
            controller.ledger.epsilon(unit, [(key, count * run.num_rounds) for key, count in e])
            for unit, e in events.items()
            if unit.startswith("record/")
        ),
        default=0.0,
    )


def with_noise(spec: PrivacySpec, value: float) -> PrivacySpec:
    """``spec`` with its noise parameter (:data:`NOISE_PARAMETER`) set to ``value``."""
    if NOISE_PARAMETER[spec.name] == "sigma":
        return replace(spec, sigma=value)
    return replace(spec, noise_multiplier=value)


def calibrate(spec: PrivacySpec, run: PlannedRun) -> PrivacySpec:
    """``spec`` with the noise parameter whose worst case meets ``spec.target_epsilon``.

    Raises
    ------
    ConfigError
        The target cannot be reached within :data:`SEARCH_RANGE` (for example a PATE
        threshold check alone costs more), naming ``privacy.target_epsilon``.
    """
    target = spec.target_epsilon
    if target is None:
        return spec
    name = NOISE_PARAMETER[spec.name]

    def epsilon(value: float) -> float:
        return worst_case_epsilon(with_noise(spec, value), run)

    low, high = SEARCH_RANGE
    floor = epsilon(high)
    if floor > target:
        raise ConfigError(
            f"privacy.target_epsilon={target:g} cannot be reached over {run.num_rounds} "
            f"rounds: even privacy.{name}={high:g} gives epsilon {floor:.4g} (record level, "
            f"delta={spec.delta:g}); raise the target or release less (fewer rounds, rows or "
            "threshold checks)"
        )
    if epsilon(low) <= target:
        return with_noise(spec, low)
    for _ in range(60):  # bisection on a log scale, to 1e-4 relative
        middle = math.sqrt(low * high)
        if epsilon(middle) > target:
            low = middle
        else:
            high = middle
        if high / low < 1 + 1e-4:
            break
    return with_noise(spec, high)
