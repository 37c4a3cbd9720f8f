"""Canaries in a federated run: planted in clients' data, observed in what is released.

The one-run audit (:mod:`fedkd.privacy.canary`) needs, after the run, one score per canary
from what the run released. Which release that is depends on the mechanism's threat model
(:func:`fedkd.privacy.guarantees.describe`):

* server-side mechanisms (central ``logit_dp``, ``pate``): the released targets (the
  noisy consensus, or the noisy-argmax labels as one-hot rows), observed with
  :meth:`CanaryRecorder.observe_release`;
* otherwise (no mechanism, local ``logit_dp``, ``dpsgd``): what the canary's own client
  sent about the proxy (its noised or DP-SGD model's rows), observed with
  :meth:`CanaryRecorder.observe_client`;
* and, for every mechanism, the final student's predictions on the canary inputs.

A canary's rows are averaged over every round that released them (post-processing of the
releases, so the audit tests the whole run's guarantee).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedkd.data import FederatedData
from fedkd.data.federated_types import ClientData
from fedkd.privacy.config import PrivacySpec

if TYPE_CHECKING:  # scipy is imported with the audit only
    from fedkd.privacy.canary import CanaryPlan


def canary_count(spec: PrivacySpec, data: FederatedData) -> int:
    """How many canaries the run plants (0: no canary audit): ``privacy.audit_canaries``,
    at most the proxy size, when ``privacy.audit`` is on and the proxy is split off the
    private data (its true labels are known, so each canary gets a wrong one)."""
    if not spec.audit or spec.audit_canaries < 2 or data.proxy_labels_for_diagnostics is None:
        return 0
    if data.proxy_source != "split":
        return 0
    return min(spec.audit_canaries, len(data.proxy_x))


def canary_plan(spec: PrivacySpec, data: FederatedData, seed: int) -> CanaryPlan | None:
    """The run's canaries (the same on the server and every client: seeded), or None."""
    count = canary_count(spec, data)
    if count == 0:
        return None
    from fedkd.privacy.canary import plan_canaries

    assert data.proxy_labels_for_diagnostics is not None
    return plan_canaries(
        data.proxy_labels_for_diagnostics, data.num_clients, count, data.num_classes, seed
    )


def with_canaries(
    client: ClientData, spec: PrivacySpec, data: FederatedData, seed: int, partition_id: int
) -> ClientData:
    """``client`` with its included canaries appended to its training data (unchanged
    when the run plants none)."""
    plan = canary_plan(spec, data, seed)
    if plan is None:
        return client
    from fedkd.privacy.canary import apply_canaries

    x, y = apply_canaries(plan, partition_id, client.train_x, client.train_y, data.proxy_x)
    return dataclasses.replace(client, train_x=x, train_y=y)


class CanaryRecorder:
    """Sums of the released rows on each canary's proxy input, over the run.

    Parameters
    ----------
    plan : CanaryPlan
        The run's canaries.
    num_classes : int
    aggregate : bool
        Observe the released aggregate (server-side mechanisms) instead of each canary's
        own client's rows.
    """

    def __init__(self, plan: CanaryPlan, num_classes: int, *, aggregate: bool) -> None:
        self.plan = plan
        self.aggregate = aggregate
        self.sums = np.zeros((len(plan), num_classes))
        self.counts = np.zeros(len(plan), dtype=np.int64)
        self._where = {int(p): i for i, p in enumerate(plan.proxy_index)}

    def _add(
        self, proxy_indices: Sequence[int] | np.ndarray, rows: np.ndarray, owner: int | None
    ) -> None:
        for position, index in enumerate(proxy_indices):
            canary = self._where.get(int(index))
            if canary is None or (owner is not None and self.plan.client[canary] != owner):
                continue
            self.sums[canary] += np.asarray(rows[position], dtype=np.float64)
            self.counts[canary] += 1

    def observe_client(
        self, partition_id: int, proxy_indices: Sequence[int] | np.ndarray, rows: np.ndarray
    ) -> None:
        """A client's shared rows on the round's proxy subset (kept for its own canaries)."""
        if not self.aggregate:
            self._add(proxy_indices, rows, partition_id)

    def observe_release(self, proxy_indices: Sequence[int] | np.ndarray, rows: np.ndarray) -> None:
        """The round's released targets on the given proxy rows."""
        if self.aggregate:
            self._add(proxy_indices, rows, None)

    def rows(self) -> np.ndarray:
        """``(m, C)`` mean released rows per canary, NaN where never released."""
        means = np.full(self.sums.shape, np.nan)
        seen = self.counts > 0
        means[seen] = self.sums[seen] / self.counts[seen, None]
        return means
