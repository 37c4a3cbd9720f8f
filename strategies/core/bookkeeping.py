"""A round's numbers: failures, bytes, losses and the diagnostics every method reports.

Plain functions of values (the round state, the validated replies, the test labels); they
write into the round's metrics row and call nothing back.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from fedkd.privacy import PrivacyController
from fedkd.privacy.canary_run import CanaryRecorder
from fedkd.wire import keys, secagg_records
from fedkd.wire.payloads import ModelWeights, ProxyPredictions, TestPredictions
from fedkd.wire.payloads.diagnostics import SummedTestPredictions
from strategies.core.validation import ClientReply, RoundState

logger = logging.getLogger(__name__)


def record_replies(
    state: RoundState, valid: Sequence[ClientReply], failures: Counter[str], *, received: int
) -> None:
    """Counts of valid and failed replies (missing ones as timeouts), uplink bytes and the
    example-weighted training loss."""
    metrics = state.metrics
    missing = metrics.get("clients_sampled", received) - received
    if missing > 0:
        failures["no reply (timeout)"] += missing
    metrics["clients_ok"] = len(valid)
    metrics["clients_failed"] = sum(failures.values())
    if failures:
        metrics["failure_reasons"] = dict(failures)
        logger.warning(
            "round %s: %s client failures: %s",
            state.server_round,
            sum(failures.values()),
            dict(failures),
        )
    metrics["uplink_bytes"] = sum(reply.uplink_bytes for reply in valid)
    reported = [r for r in valid if keys.TRAIN_LOSS in r.metrics]  # withheld under privacy
    if reported:
        total = sum(r.num_examples for r in reported)
        metrics["train_loss"] = (
            sum(r.metric(keys.TRAIN_LOSS) * r.num_examples for r in reported) / total
        )


def test_predictions(
    replies: Sequence[ClientReply],
) -> tuple[np.ndarray, list[ClientReply]] | None:
    """Clients' evaluation-only test predictions ``(clients, N, C)`` and the replies they
    came from: a client whose predictions were unusable is left out (None: nobody's)."""
    usable = [r for r in replies if r.values.get(TestPredictions.name) is not None]
    if not usable:
        return None
    return np.stack([r.values[TestPredictions.name] for r in usable]), usable


def record_diagnostics(
    state: RoundState,
    replies: Sequence[ClientReply],
    *,
    test_labels: np.ndarray,
    ensemble: Callable[[np.ndarray, Sequence[ClientReply]], np.ndarray] | None,
    local: Sequence[ClientReply] | None = None,
) -> None:
    """Per-client accuracy on the server test set (mean/min/max, and each client's by
    partition id), the clients' accuracy on their own local test splits (from ``local``'s
    metrics, default ``replies``), and the teacher ensemble's test accuracy (``ensemble``:
    the method's teacher rule, when it forms one). Under secure aggregation ``replies`` is
    the one reply standing for the survivors: only the mean accuracy and the ensemble's."""
    metrics = state.metrics
    reported = replies if local is None else local
    accuracies = [
        r.metric(keys.LOCAL_ACCURACY) for r in reported if keys.LOCAL_ACCURACY in r.metrics
    ]
    if accuracies:
        metrics["personalized_accuracy_mean"] = float(np.mean(accuracies))
    summed = [r.values.get(TestPredictions.name) for r in replies]
    if summed and isinstance(summed[0], SummedTestPredictions):
        metrics["client_accuracy_mean"] = summed[0].mean_accuracy(test_labels)
        if ensemble is not None:
            targets = ensemble(summed[0].rows[None], replies)
            metrics["ensemble_accuracy"] = float((targets.argmax(axis=1) == test_labels).mean())
        return
    found = test_predictions(replies)
    if found is None:
        return
    probs, replies = found
    per_client = (probs.argmax(axis=2) == test_labels[None, :]).mean(axis=1)
    metrics["client_accuracy_mean"] = float(per_client.mean())
    metrics["client_accuracy_min"] = float(per_client.min())
    metrics["client_accuracy_max"] = float(per_client.max())
    # Sorted by partition id, so the row does not depend on the order replies arrived in.
    metrics["client_accuracies"] = dict(
        sorted((r.partition_id, float(a)) for r, a in zip(replies, per_client, strict=True))
    )
    if ensemble is not None:
        targets = ensemble(probs, replies)
        metrics["ensemble_accuracy"] = float((targets.argmax(axis=1) == test_labels).mean())


def downlink_bytes(contents: Sequence[Any]) -> int:
    """Bytes of the ArrayRecords sent (a record sent to many clients counted per client,
    serialized once); secure aggregation's routed shares are counted apart
    (``secagg_downlink_bytes``)."""
    total = 0
    sizes: dict[int, int] = {}
    for content in contents:
        for name, record in content.array_records.items():
            if name == secagg_records.SECAGG:
                continue
            if id(record) not in sizes:
                sizes[id(record)] = record.count_bytes()
            total += sizes[id(record)]
    return total


def record_privacy(
    state: RoundState,
    valid: Sequence[ClientReply],
    privacy: PrivacyController | None,
    canaries: CanaryRecorder | None,
    audit_weights: dict[int, ArrayRecord] | None,
) -> None:
    """The privacy controller's round metrics and the clients' own DP-SGD epsilons; with
    ``audit_weights``, each client's returned weights are kept for the membership audit;
    with ``canaries``, each client's shared proxy rows are observed for the canary audit."""
    if audit_weights is not None:
        for reply in valid:
            audit_weights[reply.partition_id] = reply.values[ModelWeights.name]
    if canaries is not None:
        for reply in valid:
            rows = reply.values.get(ProxyPredictions.name)
            if rows is not None:
                canaries.observe_client(reply.partition_id, state.proxy_indices, rows)
    if privacy is None:
        return
    state.metrics.update(privacy.round_metrics(state.server_round))
    reported = [r.metric(keys.DP_EPSILON) for r in valid if keys.DP_EPSILON in r.metrics]
    if reported:  # the clients' own Opacus accountants, for cross-checking
        state.metrics["client_epsilon_max"] = max(reported)
