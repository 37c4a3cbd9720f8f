"""Aggregation of client probability outputs into distillation targets.

The *teacher-target rules* below turn the clients' probability outputs on a shared proxy
set, a ``(K, N, C)`` array ``p`` with ``p[k, n]`` client ``k``'s probability vector for
example ``n``, into one ``(N, C)`` target matrix for the student. Every rule is a (possibly
per-example or per-class) convex combination of the clients, or a sharpened average, and
every returned row sums to 1.

Each rule is one :class:`~fedkd.distill.target_registry.TargetRule` entry in
:data:`BUILTIN_TARGET_RULES`: name, function, options with defaults and ranges, and whether
it needs the clients' ``num_examples`` or ``label_histograms``. From the registry derive
:data:`TARGET_RULES` and, in :mod:`fedkd.distill.target_registry`, ``target_rule_options``,
``validate_target_rule`` (checks a rule name and its options without data, for config
validation) and the dispatch of ``teacher_targets`` on the config name ``aggregation.name``.
To add a rule, write its function ``_name(probs, **options)`` and append one entry.

Every public ``<name>_targets(client_probs, **options)`` function takes ``client_probs``, a
``(K, N, C)`` array or K arrays of equal shape ``(N, C)`` whose rows are probability
vectors, and the rule's options (config keys ``aggregation.<option>``) as keywords. It
returns ``(N, C)`` float32 targets whose rows sum to 1, and raises
:class:`~fedkd.errors.ConfigError` for an option outside its range and ``ValueError`` for
malformed probabilities (see :func:`mean_targets`) or for missing or malformed data the
rule needs.

Four rules are *robust* to a minority of clients sending poisoned predictions:
``median`` (coordinate-wise median over clients), ``trimmed_mean`` (coordinate-wise mean
after dropping the ``trim`` share of largest and smallest values), ``robust_mean``
(Cronus-style spectral filtering: per example, the client vector farthest along the top
principal direction is dropped while that direction's variance exceeds ``threshold``) and
``support_filter`` (:mod:`fedkd.distill.support_filter`: clients that contradict a
label-count weighted median on the classes they declare having seen are dropped, the rest
averaged; built for label skew).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from fedkd.distill.support_filter import SUPPORT_FILTER, support_filter_targets
from fedkd.distill.target_registry import (
    RuleOption,
    TargetRule,
    register_target_rule,
    teacher_targets,
)

__all__ = [
    "BUILTIN_TARGET_RULES",
    "TARGET_RULES",
    "confidence_targets",
    "ensemble_accuracy",
    "entropy_targets",
    "era_targets",
    "label_aware_targets",
    "mean_targets",
    "median_targets",
    "robust_mean_targets",
    "size_weighted_targets",
    "support_filter_targets",
    "trimmed_mean_targets",
]

logger = logging.getLogger(__name__)


def _finish(targets: np.ndarray) -> np.ndarray:
    """Renormalise float64 ``(N, C)`` rows to sum to 1 and return float32."""
    targets = targets / targets.sum(axis=1, keepdims=True)
    return targets.astype(np.float32)


def _weighted(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_k w_kn p_kn / sum_k w_kn`` for ``(K, N)`` weights with positive column sums."""
    weights = weights / weights.sum(axis=0, keepdims=True)
    return _finish(np.einsum("kn,knc->nc", weights, probs))


def mean_targets(client_probs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    r"""Average the clients' probabilities into one ``(N, C)`` float32 target matrix.

    The plain ensemble average of Hinton, Vinyals & Dean (2015), "Distilling the Knowledge
    in a Neural Network", arXiv:1503.02531, as used by FedDF (Lin et al., NeurIPS 2020):

    .. math:: t_{nc} = \frac{1}{K} \sum_k p_{knc}.

    Config: ``aggregation: {name: mean}``.

    Parameters
    ----------
    client_probs : np.ndarray or sequence of np.ndarray
        ``(K, N, C)`` array, or K arrays of equal shape ``(N, C)``; each row a probability
        vector.

    Returns
    -------
    np.ndarray
        ``(N, C)`` float32 mean over clients; rows are renormalised to sum to 1.

    Raises
    ------
    ValueError
        If the input is not 3-D / shapes differ, contains non-finite or negative values,
        or has rows that do not sum to 1 (within 1e-3), e.g. logits passed by mistake.
    """
    return teacher_targets(client_probs, rule="mean")


def _mean(probs: np.ndarray) -> np.ndarray:
    return _finish(probs.mean(axis=0))


def size_weighted_targets(
    client_probs: np.ndarray | Sequence[np.ndarray],
    *,
    num_examples: np.ndarray | Sequence[float] | None,
) -> np.ndarray:
    r"""Average the clients weighted by their training-set sizes (FedAvg-style).

    The weighting of FedAvg (McMahan et al., AISTATS 2017, "Communication-Efficient
    Learning of Deep Networks from Decentralized Data") applied to predictions, with
    ``m_k`` client ``k``'s number of training examples:

    .. math:: t_{nc} = \sum_k \frac{m_k}{\sum_j m_j} \, p_{knc}.

    Config: ``aggregation: {name: size_weighted}``. ``num_examples`` are the ``(K,)``
    non-negative training-set sizes, not all zero (a ValueError if they are missing, not
    ``(K,)``, non-finite, negative or all zero); otherwise as every rule (module docstring).
    """
    return teacher_targets(client_probs, rule="size_weighted", num_examples=num_examples)


def _size_weighted(probs: np.ndarray, num_examples: np.ndarray) -> np.ndarray:
    weights = np.broadcast_to(num_examples[:, None], probs.shape[:2])
    return _weighted(probs, weights)


def confidence_targets(
    client_probs: np.ndarray | Sequence[np.ndarray], *, power: float = 1.0
) -> np.ndarray:
    r"""Per-example confidence-weighted average of the clients.

    Confidence-based ensemble weighting as in FedET (Cho et al., IJCAI 2022,
    "Heterogeneous Ensemble Knowledge Transfer for Training Large Models in Federated
    Learning"), with confidence measured by the top-class probability: for each example a
    client counts in proportion to

    .. math::
        w_{kn} = \left(\max_c p_{knc}\right)^{\gamma}, \qquad
        t_{nc} = \frac{\sum_k w_{kn} \, p_{knc}}{\sum_k w_{kn}},

    with ``gamma = power``; ``power = 0`` gives :func:`mean_targets`, larger powers favour
    the most confident client more. Weights are positive since ``max_c p >= 1/C``.

    Config: ``aggregation: {name: confidence, power: 1.0}``: the exponent ``gamma >= 0``
    (default 1.0). Otherwise as every rule (module docstring).
    """
    return teacher_targets(client_probs, rule="confidence", power=power)


def _confidence(probs: np.ndarray, power: float) -> np.ndarray:
    return _weighted(probs, probs.max(axis=2) ** power)


def entropy_targets(
    client_probs: np.ndarray | Sequence[np.ndarray], *, floor: float = 1e-6
) -> np.ndarray:
    r"""Per-example average weighting certain (low-entropy) clients more.

    A certainty weighting in the spirit of the confidence-weighted ensembles of FedET
    (Cho et al., IJCAI 2022; see :func:`confidence_targets`), measuring certainty by the
    entropy gap to the uniform prediction, i.e. the information the client's prediction
    carries about the example:

    .. math::
        H_{kn} = -\sum_c p_{knc} \log p_{knc}, \qquad
        w_{kn} = \max(\log C - H_{kn}, \varepsilon), \qquad
        t_{nc} = \frac{\sum_k w_{kn} \, p_{knc}}{\sum_k w_{kn}},

    with entropies in nats, ``0 log 0 = 0`` and ``epsilon = floor``; a uniform prediction
    gets only the floor weight.

    Config: ``aggregation: {name: entropy, floor: 1.0e-6}``: the minimum weight
    ``epsilon > 0`` (default 1e-6), so weights never all vanish. Otherwise as every rule
    (module docstring).
    """
    return teacher_targets(client_probs, rule="entropy", floor=floor)


def _entropy(probs: np.ndarray, floor: float) -> np.ndarray:
    safe = np.where(probs > 0, probs, 1.0)
    entropy = -(probs * np.log(safe)).sum(axis=2)
    weights = np.maximum(math.log(probs.shape[2]) - entropy, floor)
    return _weighted(probs, weights)


def label_aware_targets(
    client_probs: np.ndarray | Sequence[np.ndarray],
    *,
    label_histograms: np.ndarray | None,
    smoothing: float = 1.0,
) -> np.ndarray:
    r"""Per-class average trusting each client on the classes it has seen.

    Label-count weighted distillation (cf. FedHKD, Chen & Vikalo, 2023, arXiv:2301.05849,
    which aggregates per-class knowledge weighted by per-class sample counts): with
    ``h_kc`` client ``k``'s training count of class ``c`` and ``s = smoothing``,

    .. math::
        w_{kc} = h_{kc} + s, \qquad
        u_{nc} = \frac{\sum_k w_{kc} \, p_{knc}}{\sum_k w_{kc}}, \qquad
        t_{nc} = \frac{u_{nc}}{\sum_{c'} u_{nc'}}.

    A class with ``sum_k w_kc = 0`` (no client saw it and ``s = 0``) uses equal weights
    ``w_kc = 1``; a row with ``sum_c u_nc = 0`` (every client put zero mass on every class
    it has seen) falls back to the plain mean of :func:`mean_targets`.

    Config: ``aggregation: {name: label_aware, smoothing: 1.0}``: the additive count
    ``s >= 0`` (default 1.0). ``label_histograms`` are the ``(K, C)`` non-negative
    per-client label counts (a ValueError if they are missing, not ``(K, C)``, non-finite
    or negative); otherwise as every rule (module docstring).
    """
    return teacher_targets(
        client_probs, rule="label_aware", label_histograms=label_histograms, smoothing=smoothing
    )


def _label_aware(probs: np.ndarray, label_histograms: np.ndarray, smoothing: float) -> np.ndarray:
    weights = label_histograms + smoothing
    unseen = weights.sum(axis=0) <= 0
    if np.any(unseen):
        logger.debug("label_aware: classes %s have no weight; using equal weights", unseen)
        weights[:, unseen] = 1.0
    per_class = np.einsum("kc,knc->nc", weights, probs) / weights.sum(axis=0)
    row_sums = per_class.sum(axis=1)
    empty = row_sums <= 0
    if np.any(empty):
        logger.debug("label_aware: %d rows have zero mass; using the mean", int(empty.sum()))
        per_class[empty] = probs[:, empty].mean(axis=0)
    return _finish(per_class)


def era_targets(
    client_probs: np.ndarray | Sequence[np.ndarray], *, temperature: float = 0.1
) -> np.ndarray:
    r"""Entropy Reduction Aggregation (ERA) of DS-FL.

    Itahara et al., "Distillation-Based Semi-Supervised Federated Learning for
    Communication-Efficient Collaborative Training With Non-IID Private Data", IEEE
    Transactions on Mobile Computing, 2021: the averaged probabilities are sharpened by a
    softmax at temperature ``T``,

    .. math::
        \bar p_{nc} = \frac{1}{K} \sum_k p_{knc}, \qquad
        t_{nc} = \frac{\exp(\bar p_{nc} / T)}{\sum_{c'} \exp(\bar p_{nc'} / T)}.

    As in the paper the softmax is over the averaged *probabilities* divided by ``T`` (not
    their logarithms): small ``T`` (the paper's 0.1) lowers the entropy, while ``T`` near
    1 makes the targets *flatter* than the mean.

    Config: ``aggregation: {name: era, temperature: 0.1}``: the softmax temperature
    ``T > 0`` (default 0.1). Otherwise as every rule (module docstring).
    """
    return teacher_targets(client_probs, rule="era", temperature=temperature)


def _era(probs: np.ndarray, temperature: float) -> np.ndarray:
    scaled = probs.mean(axis=0) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    return _finish(np.exp(scaled))


def _finish_or_mean(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Normalise robust estimates; a row with no mass left (clients disagreeing on every
    class, e.g. a median of distinct one-hot votes) falls back to the plain mean."""
    sums = targets.sum(axis=1, keepdims=True)
    targets = np.where(sums > 1e-12, targets, probs.mean(axis=0))
    return _finish(targets)


def median_targets(client_probs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Coordinate-wise median over clients, renormalised (Yin et al., ICML 2018).

    Any minority of clients, whatever they send, moves each coordinate at most to the
    range of the honest values. YAML: ``aggregation: {name: median}``.
    """
    return teacher_targets(client_probs, rule="median")


def _median(probs: np.ndarray) -> np.ndarray:
    return _finish_or_mean(np.median(probs, axis=0), probs)


def trimmed_mean_targets(
    client_probs: np.ndarray | Sequence[np.ndarray], *, trim: float = 0.2
) -> np.ndarray:
    """Coordinate-wise trimmed mean: per example and class, the ``floor(trim * K)`` largest
    and smallest client values are dropped and the rest averaged (Yin et al., ICML 2018).

    YAML: ``aggregation: {name: trimmed_mean, trim: 0.2}`` with ``0 <= trim < 0.5``.
    """
    return teacher_targets(client_probs, rule="trimmed_mean", trim=trim)


def _trimmed_mean(probs: np.ndarray, trim: float) -> np.ndarray:
    k = probs.shape[0]
    cut = math.floor(trim * k)
    cut = min(cut, (k - 1) // 2)
    ordered = np.sort(probs, axis=0)
    return _finish_or_mean(ordered[cut : k - cut].mean(axis=0), probs)


def robust_mean_targets(
    client_probs: np.ndarray | Sequence[np.ndarray], *, threshold: float = 0.2
) -> np.ndarray:
    """Robust mean by spectral filtering, as in Cronus (Chang, Shejwalkar, Shokri & Houmansadr,
    2019), which aggregates predictions with a robust high-dimensional mean estimator.

    Per example: while more than half of the clients remain and the largest eigenvalue of the
    remaining vectors' covariance exceeds ``threshold``, drop the client whose vector lies
    farthest from the mean along that eigenvector; average the rest. Honest probability
    vectors that agree have a small spread, so ``threshold`` is a variance on the
    probability scale. The default 0.2 sits above the spread of honest clients under a
    Dirichlet(0.5) label skew (docs/ROBUSTNESS.md: 0.05 removed honest clients and lost
    half the accuracy with no attacker); lower it when honest clients agree more.
    YAML: ``aggregation: {name: robust_mean, threshold: 0.2}``.
    """
    return teacher_targets(client_probs, rule="robust_mean", threshold=threshold)


def _robust_mean(probs: np.ndarray, threshold: float) -> np.ndarray:
    k, n, _ = probs.shape
    keep_at_least = k // 2 + 1
    targets = np.empty(probs.shape[1:], dtype=np.float64)
    for i in range(n):
        points = probs[:, i, :]
        kept = np.arange(k)
        while len(kept) > keep_at_least:
            centred = points[kept] - points[kept].mean(axis=0)
            covariance = centred.T @ centred / len(kept)
            values, vectors = np.linalg.eigh(covariance)
            if values[-1] <= threshold:
                break
            kept = np.delete(kept, int(np.argmax(np.abs(centred @ vectors[:, -1]))))
        targets[i] = points[kept].mean(axis=0)
    return _finish(targets)


def ensemble_accuracy(client_probs: np.ndarray | Sequence[np.ndarray], labels: np.ndarray) -> float:
    """Accuracy of the argmax of :func:`mean_targets` against integer ``labels`` ``(N,)``.

    Raises
    ------
    ValueError
        As :func:`mean_targets`, or if ``labels`` is not ``(N,)``.
    """
    mean = mean_targets(client_probs)
    y = np.asarray(labels)
    if y.shape != (mean.shape[0],):
        raise ValueError(f"labels must have shape ({mean.shape[0]},), got {y.shape}")
    return float(np.mean(mean.argmax(axis=1) == y))


# --------------------------------------------------------------------------- registry

#: The built-in teacher-target rules, one :class:`TargetRule` each, registered in this order.
#: Adding a rule = its function above plus one entry here (and, to select it from Hydra, a
#: ``configs/aggregation/<name>.yaml``); a public ``<name>_targets`` wrapper is optional.
BUILTIN_TARGET_RULES: tuple[TargetRule, ...] = (
    TargetRule(name="mean", fn=_mean, summary="plain average over clients (Hinton et al. 2015)"),
    TargetRule(
        name="size_weighted",
        fn=_size_weighted,
        needs_num_examples=True,
        summary="average weighted by the clients' training-set sizes (FedAvg-style)",
    ),
    TargetRule(
        name="confidence",
        fn=_confidence,
        options={"power": RuleOption(1.0, low=0.0)},
        summary="per-example weights (max_c p)^power (FedET)",
    ),
    TargetRule(
        name="entropy",
        fn=_entropy,
        options={"floor": RuleOption(1e-6, low=0.0, low_inclusive=False)},
        summary="per-example weights max(log C - entropy, floor)",
    ),
    TargetRule(
        name="label_aware",
        fn=_label_aware,
        options={"smoothing": RuleOption(1.0, low=0.0)},
        needs_label_histograms=True,
        summary="per-class weights label count + smoothing (cf. FedHKD)",
    ),
    TargetRule(
        name="era",
        fn=_era,
        options={"temperature": RuleOption(0.1, low=0.0, low_inclusive=False)},
        summary="softmax(mean probabilities / temperature) (DS-FL ERA)",
    ),
    TargetRule(
        name="median",
        fn=_median,
        summary="coordinate-wise median over clients, robust (Yin et al. 2018)",
    ),
    TargetRule(
        name="trimmed_mean",
        fn=_trimmed_mean,
        options={"trim": RuleOption(0.2, low=0.0, high=0.5)},
        summary="coordinate-wise trimmed mean, robust (Yin et al. 2018)",
    ),
    TargetRule(
        name="robust_mean",
        fn=_robust_mean,
        options={"threshold": RuleOption(0.2, low=0.0, low_inclusive=False)},
        summary="spectral-filtering robust mean (Cronus)",
    ),
    SUPPORT_FILTER,
)
for _rule in BUILTIN_TARGET_RULES:
    register_target_rule(_rule)

#: Names of the built-in rules (snapshot at import; :func:`target_rule_names` is live).
TARGET_RULES: tuple[str, ...] = tuple(rule.name for rule in BUILTIN_TARGET_RULES)
