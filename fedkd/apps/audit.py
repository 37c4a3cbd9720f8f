"""The membership-inference audit after a run (``privacy.audit=true``), simulation only.

Targets: the final student (members: every client's private training data; non-members: the
server's held-out test set) and up to ``privacy.audit_clients`` client models (members: that
client's training data; non-members: its own local test split, drawn from the same skewed
partition, so a client model's better fit to its own label or feature mix is not mistaken
for membership). Client models come from the last weights a client returned (weight-sharing
methods) or, for methods where clients keep their own model, from one ``query`` message with
``audit-model`` (simulation telemetry, never part of the method's traffic). Attacks:
:mod:`fedkd.privacy.audit`. LiRA's shadow models have the target's architecture and are
trained with the clients' optimizer settings for ``privacy.audit_epochs`` epochs (default
``client.epochs * num_rounds``, at most 50): an approximation of the federated pipeline that
produced the target, as usual in audits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from torch import nn

from fedkd.models import FedKDModel, model_from_config
from fedkd.privacy.audit import AttackResult, audit_model, balanced_non_members, plot_roc
from fedkd.train import predict_probs, train_local
from fedkd.wire import keys

if TYPE_CHECKING:
    from fedkd.apps.plan import RunPlan

logger = logging.getLogger(__name__)

DEFAULT_MAX_AUDIT_EPOCHS = 50
AUDIT_SEED_STREAM = 977


def audit_epochs(plan: RunPlan) -> int:
    spec = plan.assets.privacy
    if spec.audit_epochs is not None:
        return spec.audit_epochs
    return min(plan.assets.setup.local.epochs * plan.options.num_rounds, DEFAULT_MAX_AUDIT_EPOCHS)


def client_models(plan: RunPlan, grid: Grid) -> dict[int, FedKDModel]:
    """Up to ``privacy.audit_clients`` client models, by partition id."""
    strategy, assets = plan.strategy, plan.assets
    wanted = sorted(strategy.node_of_partition)[: assets.privacy.audit_clients]
    records: dict[int, ArrayRecord] = {}
    if strategy.keeps_client_models and wanted:
        content = RecordDict(
            {
                keys.CONFIG: ConfigRecord(
                    {keys.SETUP: assets.setup.to_json(), keys.AUDIT_MODEL: True}
                )
            }
        )
        messages = [
            Message(
                content=content,
                message_type=MessageType.QUERY,
                dst_node_id=strategy.node_of_partition[p],
            )
            for p in wanted
        ]
        for reply in grid.send_and_receive(messages, timeout=600):
            if reply.has_error():
                continue
            strategy.ledger.record("audit-model", reply.content, simulation_only=True)
            if keys.ARRAYS not in reply.content.array_records:
                continue
            partition = int(reply.content.metric_records[keys.METRICS][keys.PARTITION_ID])  # type: ignore[arg-type]
            records[partition] = reply.content.array_records[keys.ARRAYS]
    else:
        records = {
            p: strategy.last_client_weights[p] for p in wanted if p in strategy.last_client_weights
        }
    return {p: strategy.client_model(p, record) for p, record in sorted(records.items())}


def canary_audit(plan: RunPlan) -> dict[str, Any] | None:
    """The one-run canary audit (:mod:`fedkd.privacy.canary`): an empirical lower bound on
    the record-level epsilon, at 95 % confidence over both targets (each tested at 97.5 %,
    Bonferroni), from what the run released on the canaries and from the final student.
    None when the run planted no canaries."""
    from fedkd.privacy.canary import epsilon_lower_bound, score_rows

    strategy, assets = plan.strategy, plan.assets
    recorder, spec = strategy.canaries, assets.privacy
    if recorder is None:
        return None
    canaries = recorder.plan
    rows: dict[str, np.ndarray] = {}
    if recorder.counts.any():
        rows["released"] = recorder.rows()
    if strategy.has_student:
        inputs = assets.data.proxy_x[canaries.proxy_index]
        rows["student"] = predict_probs(assets.student, inputs, device=assets.device)
    confidence = 0.95
    delta = spec.delta if spec.enabled else 1e-5
    if not rows:  # local-only: no client releases anything about the proxy, no student
        return {
            "canaries": len(canaries),
            "epsilon_lower_bound": None,
            "why": "nothing was released on the canary inputs and the run has no student",
        }
    targets = {}
    for name, released in rows.items():
        scores = score_rows(canaries, released)
        audit = epsilon_lower_bound(
            scores,
            canaries.included,
            delta=delta,
            confidence=1 - (1 - confidence) / len(rows),
        )
        targets[name] = audit.to_dict()
    return {
        "canaries": len(canaries),
        "planted": int(canaries.included.sum()),
        "what": (
            "a canary is a proxy input relabelled with a random wrong class, planted with "
            "probability 1/2 in one client's training data"
        ),
        "released": (
            "the released targets on the canary inputs"
            if recorder.aggregate
            else "the canary's own client's shared predictions on its input"
        ),
        "confidence": confidence,
        "delta": delta,
        "targets": targets,
        "epsilon_lower_bound": max(t["epsilon_lower_bound"] for t in targets.values()),
    }


def run_audit(plan: RunPlan, grid: Grid, run_dir: Path) -> dict[str, Any]:
    """Attack the student and client models; write ``audit_roc.png``; return the summary."""
    assets, strategy = plan.assets, plan.strategy
    spec, data = assets.privacy, assets.data
    epochs = audit_epochs(plan)
    settings = assets.setup.local.train_settings(epochs=epochs)  # the clients' optimizer
    seed = assets.setup.seed

    def train_fn(model: nn.Module, x: np.ndarray, y: np.ndarray, shadow_seed: int) -> None:
        train_local(model, x, y, settings=settings, seed=shadow_seed, device=assets.device)

    def factory_for(model_spec: dict[str, Any]) -> Callable[[int], nn.Module]:
        def factory(index: int) -> nn.Module:
            return model_from_config(
                model_spec,
                input_shape=data.input_shape,
                num_classes=data.num_classes,
                seed=seed + AUDIT_SEED_STREAM + index,
            ).to(assets.device)

        return factory

    Target = tuple[str, nn.Module, dict[str, Any], np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    targets: list[Target] = []
    if strategy.has_student:
        splits = [data.client_data(p) for p in range(data.num_clients)]
        x = np.concatenate([s.train_x for s in splits])
        y = np.concatenate([s.train_y for s in splits])
        student = (assets.student, assets.student_config)
        targets.append(("student", *student, x, y, data.test_x, data.test_y))
    for partition, client_model in client_models(plan, grid).items():
        split = data.client_data(partition)
        if len(split.test_y) < 2:
            logger.warning("client %s has no local test split to audit against", partition)
            continue
        # non-members from the client's own held-out split: the same (skewed) distribution
        # as its members, so the attack measures membership, not the partition's skew
        targets.append(
            (
                f"client-{partition}",
                client_model,
                assets.setup.model_for(partition),
                split.train_x,
                split.train_y,
                split.test_x,
                split.test_y,
            )
        )
    results: list[AttackResult] = []
    for index, (name, target_model, model_spec, member_x, member_y, pool_x, pool_y) in enumerate(
        targets
    ):
        # every member is kept: LiRA's shadows then train on about as many records as the
        # target did (half of members + non-members); ROC AUC does not need balanced sets
        non_x, non_y = balanced_non_members(len(member_y), pool_x, pool_y, seed=seed + index)
        logger.info("auditing %s (%s members, %s non-members)", name, len(member_y), len(non_y))
        results += audit_model(
            target_model,
            (member_x, member_y),
            (non_x, non_y),
            target=name,
            attacks=spec.audit_attacks,
            model_factory=factory_for(model_spec),
            train_fn=train_fn,
            num_shadows=spec.audit_shadows,
            seed=seed + index,
            device=assets.device,
        )
    summary: dict[str, Any] = {
        "targets": {},
        "shadows": spec.audit_shadows,
        "shadow_epochs": epochs,
        "members": "private training data: all clients' for the student, its own for a client",
        "non_members": "never trained on: the server test set for the student, the client's "
        "own local test split for a client (same distribution as its members)",
    }
    for result in results:
        summary["targets"].setdefault(result.target, {})[result.attack] = result.summary()
    canaries = canary_audit(plan)
    if canaries is not None:
        summary["canary"] = canaries
        summary["epsilon_lower_bound"] = canaries["epsilon_lower_bound"]
    if results:
        try:
            summary["plot"] = plot_roc(results, run_dir / "audit_roc.png").name
        except Exception:  # a plotting failure must not lose the numbers
            logger.exception("could not plot the audit ROC curves")
    return summary
