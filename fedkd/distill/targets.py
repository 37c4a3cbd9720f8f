"""Aggregation of client probability outputs into distillation targets.

The *teacher-target rules* below turn the clients' probability outputs on a shared proxy
set, a ``(K, N, C)`` array ``p`` with ``p[k, n]`` client ``k``'s probability vector for
example ``n``, into one ``(N, C)`` target matrix for the student. Every rule is a (possibly
per-example or per-class) convex combination of the clients, or a sharpened average, and
every returned row sums to 1. :func:`teacher_targets` dispatches on the config name
(``aggregation.name``, one of :data:`TARGET_RULES`); :func:`validate_target_rule` checks
a rule name and its options without data, for config validation.

Three rules are *robust* to a minority of clients sending poisoned predictions:
``median`` (coordinate-wise median over clients), ``trimmed_mean`` (coordinate-wise mean
after dropping the ``trim`` share of largest and smallest values) and ``robust_mean``
(Cronus-style spectral filtering: per example, the client vector farthest along the top
principal direction is dropped while that direction's variance exceeds ``threshold``).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

_ROW_SUM_TOL = 1e-3

TARGET_RULES: tuple[str, ...] = (
    "mean",
    "size_weighted",
    "confidence",
    "entropy",
    "label_aware",
    "era",
    "median",
    "trimmed_mean",
    "robust_mean",
)

# Per rule: option name -> (default, lower bound, lower bound inclusive?[, upper bound,
# exclusive]).
_OPTION_SPECS: dict[str, dict[str, tuple[float, ...]]] = {
    "mean": {},
    "size_weighted": {},
    "confidence": {"power": (1.0, 0.0, True)},
    "entropy": {"floor": (1e-6, 0.0, False)},
    "label_aware": {"smoothing": (1.0, 0.0, True)},
    "era": {"temperature": (0.1, 0.0, False)},
    "median": {},
    "trimmed_mean": {"trim": (0.2, 0.0, True, 0.5)},
    "robust_mean": {"threshold": (0.2, 0.0, False)},
}


def _stack(client_probs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    if not isinstance(client_probs, np.ndarray):
        arrays = [np.asarray(p) for p in client_probs]
        if not arrays:
            raise ValueError("client_probs is empty: need at least one client")
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(
                "all clients' probability arrays must have equal shapes, got "
                f"{[a.shape for a in arrays]}"
            )
        client_probs = np.stack(arrays)
    if client_probs.ndim != 3:
        raise ValueError(
            "client_probs must be 3-D (K clients, N examples, C classes), got shape "
            f"{client_probs.shape}"
        )
    k, n, c = client_probs.shape
    if k == 0 or n == 0 or c == 0:
        raise ValueError(f"client_probs must have K, N, C >= 1, got shape {client_probs.shape}")
    return client_probs


def _probs(client_probs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Stack, check and return ``client_probs`` as a float64 ``(K, N, C)`` array."""
    probs = _stack(client_probs).astype(np.float64, copy=False)
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("client_probs must be finite and non-negative (probabilities, not logits)")
    sums = probs.sum(axis=2)
    if np.any(np.abs(sums - 1.0) > _ROW_SUM_TOL):
        worst = float(np.max(np.abs(sums - 1.0)))
        raise ValueError(
            f"client_probs rows must sum to 1 (probabilities); max deviation {worst:.3g}"
        )
    return probs


def _finish(targets: np.ndarray) -> np.ndarray:
    """Renormalise float64 ``(N, C)`` rows to sum to 1 and return float32."""
    targets = targets / targets.sum(axis=1, keepdims=True)
    return targets.astype(np.float32)


def _weighted(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_k w_kn p_kn / sum_k w_kn`` for ``(K, N)`` weights with positive column sums."""
    weights = weights / weights.sum(axis=0, keepdims=True)
    return _finish(np.einsum("kn,knc->nc", weights, probs))


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _check_option(rule: str, key: str, value: Any) -> float:
    """Check one option of ``rule`` against its range; return it as a float."""
    spec = _OPTION_SPECS[rule][key]
    low, inclusive = spec[1], bool(spec[2])
    high = spec[3] if len(spec) > 3 else math.inf
    ok = (
        _is_real(value)
        and (float(value) >= low if inclusive else float(value) > low)
        and float(value) < high
    )
    if not ok:
        relation = ">=" if inclusive else ">"
        bound = f" and < {high:g}" if math.isfinite(high) else ""
        raise ConfigError(
            f"aggregation.{key} must be a finite number {relation} {low:g}{bound} for "
            f"aggregation.name={rule!r}, got {value!r}"
        )
    return float(value)


def target_rule_options(rule: str) -> dict[str, float]:
    """Return the options accepted by target rule ``rule`` with their defaults.

    Raises
    ------
    ConfigError
        If ``rule`` is not in :data:`TARGET_RULES` (key ``aggregation.name``).
    """
    if not isinstance(rule, str) or rule not in _OPTION_SPECS:
        raise ConfigError(f"aggregation.name must be one of {list(TARGET_RULES)}, got {rule!r}")
    return {key: spec[0] for key, spec in _OPTION_SPECS[rule].items()}


def validate_target_rule(rule: str, **options: Any) -> None:
    """Check a rule name, its option names and option ranges, without any data.

    YAML: ``aggregation: {name: era, temperature: 0.1}`` ->
    ``validate_target_rule("era", temperature=0.1)``. Data-dependent requirements
    (``num_examples`` for ``size_weighted``, ``label_histograms`` for ``label_aware``) are
    checked by :func:`teacher_targets`.

    Raises
    ------
    ConfigError
        Unknown ``aggregation.name`` (message lists :data:`TARGET_RULES`), unknown option
        ``aggregation.<option>`` (message lists the allowed ones) or an option value out of
        range (``aggregation.<option>``).
    """
    _resolve_options(rule, options)


def _resolve_options(rule: str, options: Mapping[str, Any]) -> dict[str, float]:
    defaults = target_rule_options(rule)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(
            f"aggregation.{unknown[0]}: unknown option(s) {unknown} for "
            f"aggregation.name={rule!r}; allowed options: {list(defaults)}"
        )
    resolved = {**defaults, **options}
    return {key: _check_option(rule, key, value) for key, value in resolved.items()}


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
    return _finish(_probs(client_probs).mean(axis=0))


def _num_examples(num_examples: np.ndarray | Sequence[float] | None, k: int) -> np.ndarray:
    if num_examples is None:
        raise ValueError(
            "rule 'size_weighted' needs num_examples, the (K,) clients' training-set sizes"
        )
    sizes = np.asarray(num_examples, dtype=np.float64)
    if sizes.shape != (k,):
        raise ValueError(
            f"num_examples must have shape ({k},) (one size per client), got {sizes.shape}"
        )
    if not np.all(np.isfinite(sizes)) or np.any(sizes < 0):
        raise ValueError(f"num_examples must be finite and non-negative, got {sizes.tolist()}")
    if sizes.sum() <= 0:
        raise ValueError("num_examples are all zero: no client has any training examples")
    return sizes


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

    Config: ``aggregation: {name: size_weighted}``.

    Parameters
    ----------
    client_probs : np.ndarray or sequence of np.ndarray
        ``(K, N, C)`` probabilities, as :func:`mean_targets`.
    num_examples : array-like
        ``(K,)`` non-negative training-set sizes, not all zero.

    Returns
    -------
    np.ndarray
        ``(N, C)`` float32 targets, rows summing to 1.

    Raises
    ------
    ValueError
        As :func:`mean_targets`, or if ``num_examples`` is missing, not ``(K,)``,
        non-finite, negative or all zero.
    """
    probs = _probs(client_probs)
    sizes = _num_examples(num_examples, probs.shape[0])
    return _size_weighted(probs, sizes)


def _size_weighted(probs: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    weights = np.broadcast_to(sizes[:, None], probs.shape[:2])
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

    Config: ``aggregation: {name: confidence, power: 1.0}``.

    Parameters
    ----------
    client_probs : np.ndarray or sequence of np.ndarray
        ``(K, N, C)`` probabilities, as :func:`mean_targets`.
    power : float, optional
        Exponent ``gamma >= 0`` (default 1.0). Config key ``aggregation.power``.

    Returns
    -------
    np.ndarray
        ``(N, C)`` float32 targets, rows summing to 1.

    Raises
    ------
    ConfigError
        If ``power`` is not a finite number ``>= 0``.
    ValueError
        As :func:`mean_targets`.
    """
    gamma = _check_option("confidence", "power", power)
    return _confidence(_probs(client_probs), gamma)


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

    Config: ``aggregation: {name: entropy, floor: 1.0e-6}``.

    Parameters
    ----------
    client_probs : np.ndarray or sequence of np.ndarray
        ``(K, N, C)`` probabilities, as :func:`mean_targets`.
    floor : float, optional
        Minimum weight ``epsilon > 0`` (default 1e-6), so weights never all vanish.
        Config key ``aggregation.floor``.

    Returns
    -------
    np.ndarray
        ``(N, C)`` float32 targets, rows summing to 1.

    Raises
    ------
    ConfigError
        If ``floor`` is not a finite number ``> 0``.
    ValueError
        As :func:`mean_targets`.
    """
    eps = _check_option("entropy", "floor", floor)
    return _entropy(_probs(client_probs), eps)


def _entropy(probs: np.ndarray, floor: float) -> np.ndarray:
    safe = np.where(probs > 0, probs, 1.0)
    entropy = -(probs * np.log(safe)).sum(axis=2)
    weights = np.maximum(math.log(probs.shape[2]) - entropy, floor)
    return _weighted(probs, weights)


def _label_histograms(label_histograms: np.ndarray | None, k: int, c: int) -> np.ndarray:
    if label_histograms is None:
        raise ValueError(
            "rule 'label_aware' needs label_histograms, the (K, C) clients' label counts"
        )
    hist = np.asarray(label_histograms, dtype=np.float64)
    if hist.shape != (k, c):
        raise ValueError(
            f"label_histograms must have shape ({k}, {c}) (K clients, C classes), got {hist.shape}"
        )
    if not np.all(np.isfinite(hist)) or np.any(hist < 0):
        raise ValueError("label_histograms must be finite and non-negative counts")
    return hist


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

    Config: ``aggregation: {name: label_aware, smoothing: 1.0}``.

    Parameters
    ----------
    client_probs : np.ndarray or sequence of np.ndarray
        ``(K, N, C)`` probabilities, as :func:`mean_targets`.
    label_histograms : np.ndarray
        ``(K, C)`` non-negative per-client label counts.
    smoothing : float, optional
        Additive count ``s >= 0`` (default 1.0). Config key ``aggregation.smoothing``.

    Returns
    -------
    np.ndarray
        ``(N, C)`` float32 targets, rows summing to 1.

    Raises
    ------
    ConfigError
        If ``smoothing`` is not a finite number ``>= 0``.
    ValueError
        As :func:`mean_targets`, or if ``label_histograms`` is missing, not ``(K, C)``,
        non-finite or negative.
    """
    s = _check_option("label_aware", "smoothing", smoothing)
    probs = _probs(client_probs)
    hist = _label_histograms(label_histograms, probs.shape[0], probs.shape[2])
    return _label_aware(probs, hist, s)


def _label_aware(probs: np.ndarray, hist: np.ndarray, smoothing: float) -> np.ndarray:
    weights = hist + smoothing
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

    Config: ``aggregation: {name: era, temperature: 0.1}``.

    Parameters
    ----------
    client_probs : np.ndarray or sequence of np.ndarray
        ``(K, N, C)`` probabilities, as :func:`mean_targets`.
    temperature : float, optional
        Softmax temperature ``T > 0`` (default 0.1). Config key
        ``aggregation.temperature``.

    Returns
    -------
    np.ndarray
        ``(N, C)`` float32 targets, rows summing to 1.

    Raises
    ------
    ConfigError
        If ``temperature`` is not a finite number ``> 0``.
    ValueError
        As :func:`mean_targets`.
    """
    t = _check_option("era", "temperature", temperature)
    return _era(_probs(client_probs), t)


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
    probs = _probs(client_probs)
    return _finish_or_mean(np.median(probs, axis=0), probs)


def trimmed_mean_targets(
    client_probs: np.ndarray | Sequence[np.ndarray], *, trim: float = 0.2
) -> np.ndarray:
    """Coordinate-wise trimmed mean: per example and class, the ``floor(trim * K)`` largest
    and smallest client values are dropped and the rest averaged (Yin et al., ICML 2018).

    YAML: ``aggregation: {name: trimmed_mean, trim: 0.2}`` with ``0 <= trim < 0.5``.
    """
    return _trimmed_mean(_probs(client_probs), _check_option("trimmed_mean", "trim", trim))


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
    return _robust_mean(_probs(client_probs), _check_option("robust_mean", "threshold", threshold))


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


_RuleFn = Callable[[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, float]], np.ndarray]

# Registry: name -> rule on validated float64 (K, N, C) probabilities, with num_examples,
# label_histograms and the resolved options. Adding a rule = a public function, an entry
# here, one in _OPTION_SPECS and TARGET_RULES, and a configs/aggregation/<name>.yaml.
_RULES: dict[str, _RuleFn] = {
    "mean": lambda p, sizes, hist, opts: _finish(p.mean(axis=0)),
    "size_weighted": lambda p, sizes, hist, opts: _size_weighted(
        p, _num_examples(sizes, p.shape[0])
    ),
    "confidence": lambda p, sizes, hist, opts: _confidence(p, opts["power"]),
    "entropy": lambda p, sizes, hist, opts: _entropy(p, opts["floor"]),
    "label_aware": lambda p, sizes, hist, opts: _label_aware(
        p, _label_histograms(hist, p.shape[0], p.shape[2]), opts["smoothing"]
    ),
    "era": lambda p, sizes, hist, opts: _era(p, opts["temperature"]),
    "median": lambda p, sizes, hist, opts: _finish_or_mean(np.median(p, axis=0), p),
    "trimmed_mean": lambda p, sizes, hist, opts: _trimmed_mean(p, opts["trim"]),
    "robust_mean": lambda p, sizes, hist, opts: _robust_mean(p, opts["threshold"]),
}
assert tuple(_RULES) == TARGET_RULES == tuple(_OPTION_SPECS)


def teacher_targets(
    client_probs: np.ndarray | Sequence[np.ndarray],
    *,
    rule: str = "mean",
    num_examples: np.ndarray | None = None,
    label_histograms: np.ndarray | None = None,
    **options: float,
) -> np.ndarray:
    """Aggregate client probabilities into ``(N, C)`` targets with a named rule.

    YAML: ``aggregation: {name: era, temperature: 0.1}`` ->
    ``teacher_targets(probs, rule="era", temperature=0.1)``. See :func:`mean_targets`,
    :func:`size_weighted_targets`, :func:`confidence_targets`, :func:`entropy_targets`,
    :func:`label_aware_targets` and :func:`era_targets` for the formulas and sources.

    Parameters
    ----------
    client_probs : np.ndarray or sequence of np.ndarray
        ``(K, N, C)`` array (K clients, N examples, C classes), rows probability vectors.
    rule : str, optional
        One of :data:`TARGET_RULES` (default ``"mean"``). Config key ``aggregation.name``.
    num_examples : np.ndarray, optional
        ``(K,)`` clients' training-set sizes; required by ``size_weighted``, ignored by the
        other rules.
    label_histograms : np.ndarray, optional
        ``(K, C)`` clients' label counts; required by ``label_aware``, ignored by the
        other rules.
    **options : float
        The rule's options (see :func:`target_rule_options`); missing ones take their
        defaults.

    Returns
    -------
    np.ndarray
        ``(N, C)`` float32 targets; every row sums to 1.

    Raises
    ------
    ConfigError
        As :func:`validate_target_rule`.
    ValueError
        Bad ``client_probs`` (see :func:`mean_targets`), or ``num_examples`` /
        ``label_histograms`` missing or malformed for the rule that needs them.
    """
    resolved = _resolve_options(rule, options)
    probs = _probs(client_probs)
    return _RULES[rule](probs, num_examples, label_histograms, resolved)


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
