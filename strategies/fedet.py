"""FedET-style weighted consensus: a weighted teacher ensemble, and the student fed back."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from fedkd.distill import TARGET_RULES, validate_target_rule
from fedkd.errors import ConfigError
from fedkd.train import predict_probs
from strategies.base import RunAssets
from strategies.fedmd import FedMD

logger = logging.getLogger(__name__)


class FedET(FedMD):
    """Weighted multi-teacher consensus in the manner of FedET (Cho, Manoel, Joshi,
    Sinha & Dimitriadis, IJCAI 2022, "Heterogeneous Ensemble Knowledge Transfer for
    Training Large Models in Federated Learning").

    Round ``t`` as in :class:`strategies.fedmd.FedMD`, with two changes::

        c_t = sum_k w_k(x) p_k(x) / sum_k w_k(x)   # w from ``weighting``: per example by
                                                   # confidence or entropy, per class by
                                                   # label counts, or by data size
        distill the server student toward c_t on the proxy subset
        clients digest the STUDENT's predictions on that subset (feedback of the server
        model's knowledge), not the raw consensus

    Parameters
    ----------
    weighting : str
        The teacher rule (YAML default ``confidence``): one of ``mean``, ``size_weighted``,
        ``confidence``, ``entropy``, ``label_aware``, ``era``. FedET takes its rule from
        here, not from the ``aggregation`` group, whose setting is then ignored (a warning
        says so when it is not ``mean``).
    weighting_options : dict or None
        Options of that rule (e.g. ``{power: 2.0}`` for confidence).
    (others)
        See :class:`strategies.fedmd.FedMD`; ``fedet.yaml`` digests with the ``distill``
        loss's own soft term (``digest_soft_loss: null``; with ``distill=kd``, KL: the
        paper's soft-target CE).
    """

    headline_metric: ClassVar[str] = (
        "global_on_global_test_accuracy"  # FedET trains a large server model
    )

    def __init__(
        self,
        assets: RunAssets,
        *,
        weighting: str,
        weighting_options: dict[str, Any] | None,
        **options: Any,
    ) -> None:
        super().__init__(assets, **options)
        if weighting not in TARGET_RULES:
            raise ConfigError(
                f"strategy.weighting must be one of {TARGET_RULES}, got {weighting!r}"
            )
        validate_target_rule(weighting, **dict(weighting_options or {}))
        self.target_rule = {"name": weighting, **dict(weighting_options or {})}
        if assets.aggregation.get("name", "mean") not in ("mean", weighting):
            logger.warning(
                "fedet uses strategy.weighting=%s; aggregation=%s is ignored",
                weighting,
                assets.aggregation.get("name"),
            )

    def digest_targets(self, consensus: np.ndarray, proxy_x: np.ndarray) -> np.ndarray:
        """The distilled student's predictions: the server model teaches the clients back."""
        return predict_probs(self.assets.student, proxy_x, device=self.assets.device)
