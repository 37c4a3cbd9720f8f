"""The ``support_filter`` teacher-target rule: drop clients that contradict a support-weighted
consensus on the classes they declare having seen, then average the rest."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from fedkd.distill.target_registry import RuleOption, TargetRule, teacher_targets

__all__ = ["SUPPORT_FILTER", "support_filter_scores", "support_filter_targets", "weighted_median"]

logger = logging.getLogger(__name__)


def support_filter_targets(
    client_probs: np.ndarray | Sequence[np.ndarray],
    *,
    label_histograms: np.ndarray | None,
    threshold: float = 0.5,
) -> np.ndarray:
    r"""Mean of the clients that agree with a support-weighted consensus where they should.

    Under label skew honest clients disagree on the classes they have not seen, so
    statistics that treat every client alike per coordinate (the median, trimmed means,
    spectral filters) confuse skew with poisoning. Each client's declared label histogram
    ``h_kc`` says where it should be right; a client that contradicts the consensus on the
    classes it declares having seen is dropped as a whole, and the others are averaged as
    by :func:`~fedkd.distill.targets.mean_targets`. It combines a per-class robust centre
    weighted by label counts (the weighting of FedHKD, Chen & Vikalo 2023,
    arXiv:2301.05849, with the coordinate-wise median of Yin et al., ICML 2018, in place of
    the mean) with the removal of outlying clients before averaging of Cronus (Chang,
    Shejwalkar, Shokri & Houmansadr, 2019). For ``K`` clients, ``N`` proxy examples and
    ``C`` classes:

    1. **Centre.** Per example and class, the weighted median over clients with weights the
       declared counts, ``m_nc = wmed_k(p_knc; h_kc)`` (the smallest value whose
       cumulative weight reaches half of ``sum_k h_kc``; equal weights for a class no
       client declares), and the consensus class ``c*_n = argmax_c m_nc``. A class's
       median follows the clients holding most of its examples, so colluders holding less
       than half of every class's declared examples cannot move it to their values.
    2. **Score.** Client ``k``'s margin against the consensus, how far its own top class
       stands above the consensus class, averaged over examples weighted by its declared
       count of the consensus class,

       .. math::
           d_k = \frac{\sum_n h_{k c^*_n} \,(\max_c p_{knc} - p_{k n c^*_n})}
                      {\sum_n h_{k c^*_n}} \in [0, 1]

       (the unweighted average over all examples when ``sum_n h_{k c*_n} = 0``). An honest
       client is mostly right, or unsure, on the classes it has seen (small ``d_k``); a
       client sending one-hot rows on one class scores about one minus its declared share
       of that class. A margin, unlike ``1 - p_{k n c*_n}``, does not punish an honest
       client for being unsure (early rounds) rather than wrong.
    3. **Keep and average.** ``S = {k : d_k <= threshold}``, topped up with the lowest
       scores to at least ``floor(K / 2) + 1`` clients; ``t_n = mean_{k in S} p_kn``.
       Without an outlier ``S`` holds every client and the rule is exactly the mean.

    What it guarantees: each ``m_nc`` stays within the range of the honest values while
    the malicious clients hold less than half of class ``c``'s declared count (the
    consensus class can still flip where honest values are close, e.g. unsure clients in
    the first round); a client sending one-hot rows on class ``t`` is dropped when its
    declared share of ``t`` is below ``1 - threshold``; at most ``K - floor(K/2) - 1``
    clients are dropped, so half of the clients or more colluding always get in. A class
    that only one client declares follows that client's values. The rule
    trusts the declared histograms, which the attacker does not control in fedkd's threat
    model (docs/ROBUSTNESS.md); a client that could declare a false histogram (capped only
    by its example count) could claim the class it pushes and pass the filter.

    Config: ``aggregation: {name: support_filter, threshold: 0.5}``: the highest score
    ``threshold > 0`` a kept client may have (default 0.5; 1 or more keeps every client:
    the mean). ``label_histograms`` are the ``(K, C)`` clients' declared label counts; the
    rule needs them (a ValueError if missing, and refused at config time under a privacy
    mechanism that withholds them, as ``label_aware``). Otherwise as every rule
    (:mod:`fedkd.distill.targets`).
    """
    return teacher_targets(
        client_probs,
        rule="support_filter",
        label_histograms=label_histograms,
        threshold=threshold,
    )


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Lower weighted median over axis 0 of ``values`` ``(K, ...)`` with ``(K, ...)`` weights
    ``>= 0``: per position the smallest value whose cumulative weight (values in ascending
    order) reaches half the total. Positions whose weights sum to 0 use equal weights."""
    weights = np.where(weights.sum(axis=0, keepdims=True) > 0, weights, 1.0)
    order = np.argsort(values, axis=0, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=0)
    cumulative = np.cumsum(np.take_along_axis(weights, order, axis=0), axis=0)
    # ``>= half`` with a relative tolerance so that an exact half is reached despite rounding
    half = 0.5 * cumulative[-1:]
    reached = cumulative >= half * (1 - 1e-12)
    first = np.argmax(reached, axis=0)[None]
    return np.take_along_axis(sorted_values, first, axis=0)[0]


def support_filter_scores(probs: np.ndarray, label_histograms: np.ndarray) -> np.ndarray:
    """The ``(K,)`` disagreement scores ``d_k`` of :func:`support_filter_targets` (step 2)
    for validated float64 ``(K, N, C)`` probabilities and ``(K, C)`` label counts."""
    k, n, c = probs.shape
    weights = np.broadcast_to(label_histograms[:, None, :], (k, n, c))
    centre = weighted_median(probs, weights)  # (N, C)
    consensus = centre.argmax(axis=1)  # (N,)
    support = label_histograms[:, consensus]  # (K, N): h_{k c*_n}
    # (K, N): how far the client's own top class stands above the consensus class
    margin = probs.max(axis=2) - probs[:, np.arange(n), consensus]
    totals = support.sum(axis=1)
    unweighted = margin.mean(axis=1)
    weighted = (support * margin).sum(axis=1) / np.where(totals > 0, totals, 1.0)
    return np.where(totals > 0, weighted, unweighted)


def _support_filter(
    probs: np.ndarray, label_histograms: np.ndarray, threshold: float
) -> np.ndarray:
    k = probs.shape[0]
    scores = support_filter_scores(probs, label_histograms)
    kept = scores <= threshold
    keep_at_least = k // 2 + 1
    if kept.sum() < keep_at_least:
        kept[np.argsort(scores, kind="stable")[:keep_at_least]] = True
    logger.debug(
        "support_filter: scores %s, dropped clients %s",
        np.round(scores, 3).tolist(),
        np.flatnonzero(~kept).tolist(),
    )
    targets = probs[kept].mean(axis=0)
    return (targets / targets.sum(axis=1, keepdims=True)).astype(np.float32)


#: The rule's registry record, registered with the built-in rules by
#: :data:`fedkd.distill.targets.BUILTIN_TARGET_RULES`.
SUPPORT_FILTER = TargetRule(
    name="support_filter",
    fn=_support_filter,
    options={"threshold": RuleOption(0.5, low=0.0, low_inclusive=False)},
    needs_label_histograms=True,
    summary="mean of the clients agreeing with a label-count weighted median on the classes "
    "they have seen, robust",
)
