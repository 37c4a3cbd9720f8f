"""Who takes part in a round of a private run, and what the accountant is told about it.

Without a privacy mechanism a round samples ``fraction_train`` of the clients
(:func:`strategies.core.transport.sample_partitions`). With one, :func:`sample_private`
first drops the clients whose own budget is spent (``privacy.budget=client``), samples the
rest (Poisson under ``privacy.client_sampling=poisson``, whose amplification the accountant
credits), then charges the round before anything is sent
(:meth:`fedkd.privacy.PrivacyController.charge_round`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from fedkd.privacy import PrivacyController, PrivacySpec
from fedkd.privacy.canary_run import CanaryRecorder, canary_plan
from fedkd.privacy.controller import RoundPlan
from fedkd.wire import keys
from fedkd.wire.payloads.proxy import round_rows
from strategies.core import transport
from strategies.core.assets import RunAssets


def round_plan(
    assets: RunAssets,
    proxy_round_size: int,
    server_round: int,
    examples: Mapping[int, int],
    round_config: Mapping[str, Any],
) -> RoundPlan:
    """What a round releases, for the accounting (``partitions`` are filled in later):
    the round's proxy rows, each client's declared (public) example count and DP-SGD's
    schedule."""
    seed, local = assets.setup.seed, assets.setup.local
    size = len(assets.data.proxy_x)
    rows = round_rows(size, size=proxy_round_size, seed=seed, server_round=server_round)
    return RoundPlan(
        partitions=[],
        proxy_rows=len(rows),
        client_examples=dict(examples),
        local_epochs=int(round_config.get(keys.LOCAL_EPOCHS, local.epochs)),
        batch_size=local.batch_size,
        server_round=server_round,
    )


def canary_recorder(assets: RunAssets) -> CanaryRecorder | None:
    """What the one-run canary audit observes during the run (None: no canaries planted;
    :mod:`fedkd.privacy.canary_run`)."""
    # canaries are planted in the clients' data: the same on both sides, from the data seed
    plan = canary_plan(assets.privacy, assets.data, assets.setup.federation_seed)
    if plan is None:
        return None
    aggregate = assets.privacy.server_side
    return CanaryRecorder(plan, assets.data.num_classes, aggregate=aggregate)


def evaluation_withheld(privacy: PrivacySpec) -> bool:
    """Under a mechanism, clients' accuracies on their private test splits (and the split
    sizes they are weighted by) are not sent, and the evaluation round is not run, unless
    ``privacy.allow_unprotected`` names both ``accuracy`` and ``num-examples``."""
    return not all(privacy.sends_unprotected(k) for k in (keys.ACCURACY, keys.NUM_EXAMPLES))


def controller_for(assets: RunAssets, fraction_train: float) -> PrivacyController | None:
    """The run's accountant (None without a mechanism); ``fraction_train`` is the Poisson
    sampling rate under ``privacy.client_sampling=poisson``."""
    if not assets.privacy.enabled:
        return None
    return PrivacyController(
        assets.privacy,
        seed=assets.setup.seed,
        clients=range(assets.setup.num_clients),
        sample_rate=fraction_train,
    )


def sample_private(
    privacy: PrivacyController, plan: RoundPlan, sampled: list[int], available: list[int]
) -> list[int]:
    """The round's clients under a mechanism (``sampled``: the plain fixed-size sample,
    kept when nothing changes it), charged to the accountant before anything is sent."""
    seed, fraction, server_round = privacy.seed, privacy.sample_rate, plan.server_round
    candidates = privacy.eligible(sorted(available), plan)
    if privacy.spec.client_sampling == "poisson":
        sampled = transport.poisson_sample(
            candidates, fraction, seed=seed, server_round=server_round, stream=0
        )
    elif len(candidates) < len(available):  # as many as usual, from those left
        share = min(1.0, fraction * len(available) / max(1, len(candidates)))
        sampled = (
            transport.sample_partitions(
                candidates, share, seed=seed, server_round=server_round, stream=0
            )
            if candidates
            else []
        )
    privacy.charge_round(server_round, replace(plan, partitions=sampled))
    return sampled
