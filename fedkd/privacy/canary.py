"""One-run privacy auditing with canaries: an empirical lower bound on epsilon.

Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023).
The auditor plants ``m`` canaries, each included in the training data independently with
probability 1/2, runs the mechanism once, scores every canary from what was released
(higher = "more likely included") and guesses "in" for the ``k+`` highest scores and "out"
for the ``k-`` lowest, abstaining on the rest. With ``r = k+ + k-`` guesses of which ``v``
are right, their main theorem for an (epsilon, delta)-DP mechanism (every canary's inclusion
bit protected) bounds the chance of ``v`` or more right guesses by

    P[W >= v] <= f(v) + 2 m delta max_{1 <= i <= v} (f(v - i) - f(v)) / i,
    f(u) = P[Binomial(r, q) >= u],  q = e^epsilon / (1 + e^epsilon).

With ``delta = 0`` this is the pure-DP statement: the right guesses are dominated by
``Binomial(r, q)``. The right-hand side is a p-value for the hypothesis "the mechanism is
(epsilon, delta)-DP" (:func:`audit_p_value`); the audit reports the largest epsilon that the
observation rejects at the chosen confidence (:func:`epsilon_lower_bound`).

Canaries for federated distillation (:func:`plan_canaries`): a canary is a public proxy
example relabelled with a random wrong class, planted in one client's private data. A
client that trained on it shifts its released prediction on that proxy input towards the
wrong label; :func:`score_rows` and :func:`score_labels` turn releases into scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats

logger = logging.getLogger(__name__)

#: SeedSequence stream tag of the canary plan (apart from training and noise streams).
CANARY_STREAM = 0xCA7A4A
#: Guess sizes tried when no guesses are given, as fractions of the canaries.
GUESS_FRACTIONS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
#: Relative precision of the epsilon search.
EPSILON_TOLERANCE = 1e-4


@dataclass(frozen=True)
class CanaryAudit:
    """Outcome of one canary audit.

    Attributes
    ----------
    epsilon_lower_bound : float
        The largest epsilon for which "the mechanism is (epsilon, delta)-DP" is rejected at
        ``confidence``; 0.0 when nothing can be concluded.
    canaries : int
        Number of canaries ``m``.
    guesses : int
        Number of guesses ``r = k_positive + k_negative`` of the reported try.
    correct : int
        Number of right guesses ``v`` of the reported try.
    k_positive, k_negative : int
        Top-scored canaries guessed "in" and bottom-scored canaries guessed "out".
    confidence : float
        Family-wise confidence of the bound (over all tries).
    delta : float
        The delta of the hypotheses tested.
    tries : int
        Number of ``(k_positive, k_negative)`` choices tried; each was tested at confidence
        ``1 - (1 - confidence) / tries`` (Bonferroni).
    """

    epsilon_lower_bound: float
    canaries: int
    guesses: int
    correct: int
    k_positive: int
    k_negative: int
    confidence: float
    delta: float
    tries: int = 1

    def to_dict(self) -> dict[str, float | int]:
        """All fields as a JSON-ready dict."""
        return {
            "epsilon_lower_bound": float(self.epsilon_lower_bound),
            "canaries": int(self.canaries),
            "guesses": int(self.guesses),
            "correct": int(self.correct),
            "k_positive": int(self.k_positive),
            "k_negative": int(self.k_negative),
            "confidence": float(self.confidence),
            "delta": float(self.delta),
            "tries": int(self.tries),
        }


# ----------------------------------------------------------------------------- the bound


def audit_p_value(
    *, canaries: int, guesses: int, correct: int, epsilon: float, delta: float
) -> float:
    """Upper bound on P[``correct`` or more right guesses] under (epsilon, delta)-DP.

    The right-hand side of the theorem in the module docstring, capped at 1.

    Parameters
    ----------
    canaries : int
        Number of canaries ``m`` (all of them, guessed or not: ``delta`` is paid per canary).
    guesses : int
        Number of guesses ``r``, ``0 <= r <= m``.
    correct : int
        Number of right guesses ``v``, ``0 <= v <= r``.
    epsilon : float
        Non-negative epsilon of the hypothesis.
    delta : float
        Delta of the hypothesis, in ``[0, 1]``.

    Returns
    -------
    float
        The p-value in ``[0, 1]``.
    """
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(
            "need 0 <= correct <= guesses <= canaries, got "
            f"correct={correct}, guesses={guesses}, canaries={canaries}"
        )
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    if correct == 0:
        return 1.0
    q = float(special.expit(epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, q))  # f(v) = P[Bin >= v]
    slack = 0.0
    if delta > 0:
        # f(v - i) - f(v) = P[v - i <= Bin < v]: cumulative sums of the pmf below v.
        below = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q)
        steps = np.arange(1, correct + 1)
        slack = 2.0 * canaries * delta * float(np.max(np.cumsum(below) / steps))
    return min(1.0, tail + slack)


def _epsilon_from_counts(
    canaries: int, guesses: int, correct: int, delta: float, level: float
) -> float:
    """The largest epsilon with p-value below ``level``, by bisection (0.0 if none).

    The p-value grows with epsilon (the binomial tail does, and the tests check the sum
    does on a grid), so every epsilon below the returned one is rejected as well.
    """

    def rejected(epsilon: float) -> bool:
        return (
            audit_p_value(
                canaries=canaries, guesses=guesses, correct=correct, epsilon=epsilon, delta=delta
            )
            < level
        )

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):  # ends: past epsilon ~ 37, q rounds to 1 and the p-value to 1
        low, high = high, 2.0 * high
    while high - low > max(EPSILON_TOLERANCE * high, 1e-12):
        middle = 0.5 * (low + high)
        if rejected(middle):
            low = middle
        else:
            high = middle
    return low


def guess_grid(canaries: int) -> list[tuple[int, int]]:
    """The ``(k_positive, k_negative)`` choices tried when none is given.

    For every fraction ``f`` of :data:`GUESS_FRACTIONS`, ``k = max(1, floor(f m))``, both
    ``(k, k)`` (guess "in" and "out") and ``(k, 0)`` (only "in": the usual regime of a
    membership attack, whose "out" guesses are weak). Duplicates are dropped.
    """
    grid: list[tuple[int, int]] = []
    for fraction in GUESS_FRACTIONS:
        k = max(1, int(fraction * canaries))
        for choice in ((k, k), (k, 0)):
            if sum(choice) <= canaries and choice not in grid:
                grid.append(choice)
    return grid


def _check_scores(scores: np.ndarray, included: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    score_arr = np.asarray(scores, dtype=np.float64)
    bits = np.asarray(included)
    if score_arr.ndim != 1 or bits.shape != score_arr.shape:
        raise ValueError(
            f"scores and included must be 1-D of equal length, got {score_arr.shape} "
            f"and {bits.shape}"
        )
    if len(score_arr) == 0:
        raise ValueError("need at least one canary")
    if not np.all(np.isfinite(score_arr)):
        raise ValueError("scores must be finite (found NaN or inf)")
    if bits.dtype != np.bool_:
        if not np.all(np.isin(bits, (0, 1))):
            raise ValueError("included must hold booleans or 0/1 values")
        bits = bits.astype(bool)
    return score_arr, bits


def epsilon_lower_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    guesses: tuple[int, int] | None = None,
) -> CanaryAudit:
    """Empirical lower bound on epsilon from one run's canary scores.

    The auditor guesses "in" for the ``k_positive`` highest scores and "out" for the
    ``k_negative`` lowest (ties broken by canary index, which is independent of the
    inclusion bits) and counts the right guesses; :func:`audit_p_value` turns the count into
    the largest epsilon rejected at ``confidence``.

    Parameters
    ----------
    scores : np.ndarray
        Finite scores ``(m,)``, higher = more likely included. Only their order matters.
    included : np.ndarray
        The true inclusion bits ``(m,)``, booleans or 0/1, each drawn with probability 1/2
        independently of everything else (the theorem needs this).
    delta : float
        Delta of the (epsilon, delta)-DP hypotheses, in ``[0, 1)``.
    confidence : float, default 0.95
        Probability that the bound does not exceed the true epsilon, in ``(0, 1)``.
    guesses : tuple of int, optional
        A pre-declared ``(k_positive, k_negative)``, tested at ``confidence``. ``None``
        tries every choice of :func:`guess_grid` and reports the best, each tested at
        ``1 - (1 - confidence) / len(grid)`` so that the best stays valid at
        ``confidence`` (Bonferroni).

    Returns
    -------
    CanaryAudit
        The bound and the counts of the reported try.

    Raises
    ------
    ValueError
        On arrays of the wrong shape, non-finite scores, ``delta`` outside ``[0, 1)``,
        ``confidence`` outside ``(0, 1)``, or guesses that are negative, none at all, or
        more than the canaries.
    """
    score_arr, bits = _check_scores(scores, included)
    if not 0 <= delta < 1:
        raise ValueError(f"delta must lie in [0, 1), got {delta}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    canaries = len(score_arr)
    if guesses is None:
        choices = guess_grid(canaries)
    else:
        k_positive, k_negative = (int(k) for k in guesses)
        if k_positive < 0 or k_negative < 0 or not 1 <= k_positive + k_negative <= canaries:
            raise ValueError(
                f"guesses=(k_positive, k_negative) must be non-negative with 1 <= sum <= "
                f"{canaries} (the canaries), got {guesses}"
            )
        choices = [(k_positive, k_negative)]
    level = (1.0 - confidence) / len(choices)
    order = np.argsort(-score_arr, kind="stable")  # highest first; ties by index
    best: CanaryAudit | None = None
    for k_positive, k_negative in choices:
        right_in = int(bits[order[:k_positive]].sum())
        right_out = int((~bits[order[canaries - k_negative :]]).sum()) if k_negative else 0
        correct = right_in + right_out
        epsilon = _epsilon_from_counts(canaries, k_positive + k_negative, correct, delta, level)
        audit = CanaryAudit(
            epsilon_lower_bound=epsilon,
            canaries=canaries,
            guesses=k_positive + k_negative,
            correct=correct,
            k_positive=k_positive,
            k_negative=k_negative,
            confidence=confidence,
            delta=delta,
            tries=len(choices),
        )
        if best is None or epsilon > best.epsilon_lower_bound:
            best = audit
    assert best is not None  # choices is never empty
    logger.info(
        "canary audit: epsilon >= %.3f at %.0f%% confidence (%d/%d right, %d canaries)",
        best.epsilon_lower_bound,
        100 * confidence,
        best.correct,
        best.guesses,
        canaries,
    )
    return best


# ----------------------------------------------------------------------------- canaries


@dataclass(frozen=True, eq=False)
class CanaryPlan:
    """Which proxy inputs become canaries, with which wrong labels, in which clients.

    Attributes
    ----------
    proxy_index : np.ndarray
        ``(m,)`` distinct indices into the public proxy set: the canaries' inputs.
    label : np.ndarray
        ``(m,)`` canary labels, each different from its proxy example's true label.
    client : np.ndarray
        ``(m,)`` the partition id that may hold each canary (``i % num_clients``).
    included : np.ndarray
        ``(m,)`` booleans: whether the canary is in that client's training data.
    """

    proxy_index: np.ndarray
    label: np.ndarray
    client: np.ndarray
    included: np.ndarray

    def __len__(self) -> int:
        return len(self.proxy_index)

    def for_client(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(proxy_index, label)`` of the canaries included in client ``partition_id``."""
        keep = self.included & (self.client == partition_id)
        return self.proxy_index[keep], self.label[keep]

    def to_dict(self) -> dict[str, list[int] | list[bool]]:
        """The four arrays as JSON-ready lists."""
        return {
            "proxy_index": [int(v) for v in self.proxy_index],
            "label": [int(v) for v in self.label],
            "client": [int(v) for v in self.client],
            "included": [bool(v) for v in self.included],
        }


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def plan_canaries(
    proxy_labels: np.ndarray, num_clients: int, count: int, num_classes: int, seed: int
) -> CanaryPlan:
    """Draw ``count`` canaries from the proxy set and assign them to clients.

    Canary ``i`` takes a proxy example drawn without replacement, a label drawn uniformly
    among the ``num_classes - 1`` wrong classes, client ``i % num_clients``, and an
    inclusion bit that is 1 with probability 1/2. One generator,
    ``default_rng(SeedSequence([seed, CANARY_STREAM]))``, draws all of them.

    Parameters
    ----------
    proxy_labels : np.ndarray
        True labels ``(N,)`` of the public proxy set, integers in ``[0, num_classes)``.
    num_clients : int
        Number of clients (partitions), at least 1.
    count : int
        Number of canaries ``m``, in ``[2, N]``.
    num_classes : int
        Number of classes, at least 2 (a wrong label must exist).
    seed : int
        Non-negative seed.

    Returns
    -------
    CanaryPlan

    Raises
    ------
    ValueError
        If ``count`` is below 2 or above the proxy size, ``num_classes`` below 2, the
        labels are out of range, or ``num_clients`` / ``seed`` are invalid.
    """
    num_classes = _check_int(num_classes, "num_classes", 2)
    num_clients = _check_int(num_clients, "num_clients", 1)
    count = _check_int(count, "count (canaries)", 2)
    seed = _check_int(seed, "seed", 0)
    labels = np.asarray(proxy_labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(
            f"proxy_labels must be 1-D integers, got shape {labels.shape}, dtype {labels.dtype}"
        )
    if count > len(labels):
        raise ValueError(
            f"count (canaries) must not exceed the {len(labels)} proxy examples, got {count}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"proxy_labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, CANARY_STREAM]))
    proxy_index = rng.choice(len(labels), size=count, replace=False).astype(np.int64)
    # a shift in [1, C) moves the true label to each other class with probability 1/(C-1)
    shift = rng.integers(1, num_classes, size=count)
    label = (labels[proxy_index].astype(np.int64) + shift) % num_classes
    included = rng.random(count) < 0.5
    client = np.arange(count, dtype=np.int64) % num_clients
    return CanaryPlan(proxy_index=proxy_index, label=label, client=client, included=included)


def apply_canaries(
    plan: CanaryPlan,
    partition_id: int,
    train_x: np.ndarray,
    train_y: np.ndarray,
    proxy_x: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Append client ``partition_id``'s included canaries to its training data.

    Returns new ``(train_x, train_y)`` with the canaries' inputs ``proxy_x[proxy_index]``
    and labels appended, in the dtypes of ``train_x`` and ``train_y``; the inputs
    themselves when the client holds no canary.

    Raises
    ------
    ValueError
        If a proxy input's shape differs from a training input's.
    """
    proxy_index, label = plan.for_client(partition_id)
    if len(proxy_index) == 0:
        return train_x, train_y
    proxy_arr = np.asarray(proxy_x)
    if proxy_arr.shape[1:] != np.shape(train_x)[1:]:
        raise ValueError(
            f"proxy inputs have shape {proxy_arr.shape[1:]}, training inputs "
            f"{np.shape(train_x)[1:]}: canaries must fit the client's data"
        )
    canary_x = proxy_arr[proxy_index].astype(train_x.dtype, copy=False)
    canary_y = label.astype(train_y.dtype, copy=False)
    return np.concatenate([train_x, canary_x]), np.concatenate([train_y, canary_y])


# ----------------------------------------------------------------------------- scores


def score_rows(plan: CanaryPlan, rows: np.ndarray) -> np.ndarray:
    """Scores from released probability vectors on the canaries' proxy inputs.

    Score ``i`` is ``rows[i, label_i] - mean(rows[i])``: for probability rows, the canary
    label's probability above chance (``1 / C``). Training on the canary pushes it up. A row
    with any NaN (never released) scores 0, the score of a chance-level row, so it falls
    among the middle scores on which the auditor abstains. Only the order of the scores
    matters to :func:`epsilon_lower_bound`.

    Parameters
    ----------
    plan : CanaryPlan
        The plan; row ``i`` belongs to canary ``i``.
    rows : np.ndarray
        ``(m, C)`` released rows aligned with the plan's canaries.

    Returns
    -------
    np.ndarray
        ``(m,)`` float64 scores.
    """
    arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim != 2 or len(arr) != len(plan):
        raise ValueError(f"rows must have shape ({len(plan)}, C), got {arr.shape}")
    if arr.shape[1] <= int(plan.label.max()):
        raise ValueError(
            f"rows have {arr.shape[1]} columns but a canary label is {int(plan.label.max())}"
        )
    released = ~np.any(np.isnan(arr), axis=1)
    scores = np.zeros(len(arr))
    picked = arr[np.arange(len(arr)), plan.label]
    scores[released] = picked[released] - arr[released].mean(axis=1)
    return scores


def score_labels(plan: CanaryPlan, labels: np.ndarray) -> np.ndarray:
    """Scores from released labels (PATE-style) on the canaries' proxy inputs.

    1 where the released label is the canary label, -1 where another label was released,
    0 where the query was not answered (a negative entry in ``labels``).

    Parameters
    ----------
    plan : CanaryPlan
        The plan; entry ``i`` belongs to canary ``i``.
    labels : np.ndarray
        ``(m,)`` integer released labels; negative = not answered.

    Returns
    -------
    np.ndarray
        ``(m,)`` float64 scores in ``{-1, 0, 1}``.
    """
    arr = np.asarray(labels)
    if arr.shape != (len(plan),) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be ({len(plan)},) integers, got {arr.shape}, {arr.dtype}")
    scores = np.where(arr == plan.label, 1.0, -1.0)
    scores[arr < 0] = 0.0
    return scores
