"""The support_filter teacher-target rule on hand-built inputs."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.apps.server import prepare_run
from fedkd.config import compose_config
from fedkd.distill import support_filter_targets, teacher_targets, validate_target_rule
from fedkd.distill.support_filter import support_filter_scores, weighted_median
from fedkd.errors import ConfigError

# 4 clients x 2 examples x 2 classes. D sends class 1 everywhere and declares mostly class 0.
BY_HAND = np.array(
    [
        [[0.9, 0.1], [0.4, 0.6]],  # A
        [[0.6, 0.4], [0.2, 0.8]],  # B
        [[0.8, 0.2], [0.3, 0.7]],  # C
        [[0.0, 1.0], [0.0, 1.0]],  # D
    ]
)
BY_HAND_HIST = np.array([[3, 1], [1, 3], [2, 2], [3, 1]])


def test_weighted_median_by_hand() -> None:
    # ascending 0 (w 3), 0.6 (w 1), 0.8 (w 2), 0.9 (w 3): cumulative 3, 4, 6, 9 reaches 9/2
    # at 0.8; a position whose weights are all zero uses equal weights (lower median 0.6)
    values = np.array([[0.9, 0.9], [0.6, 0.6], [0.8, 0.8], [0.0, 0.0]])
    weights = np.array([[3.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    np.testing.assert_allclose(weighted_median(values, weights), [0.8, 0.6])
    # an exact half is reached: 0.2 (w 1), 0.5 (w 1) of total 4 -> 0.5
    np.testing.assert_allclose(weighted_median(np.array([0.2, 0.5, 0.7, 0.9]), np.ones(4)), 0.5)


def test_scores_and_targets_by_hand() -> None:
    # Centre, class 0 (weights h_k0 = 3, 1, 2, 3; half 4.5): example 0 -> 0.8 (above),
    # example 1: 0 (3), 0.2 (1), 0.3 (2) -> 0.3. Class 1 (weights 1, 3, 2, 1; half 3.5):
    # example 0: 0.1 (1), 0.2 (2), 0.4 (3) -> 0.4; example 1: 0.6 (1), 0.7 (2), 0.8 (3)
    # -> 0.8. Consensus classes: 0, 1. A, B and C have their top class there (margin 0);
    # D's margins are 1 - 0 = 1 (weight h_D0 = 3) and 0 (weight h_D1 = 1): 3/4.
    scores = support_filter_scores(BY_HAND, BY_HAND_HIST.astype(np.float64))
    np.testing.assert_allclose(scores, [0.0, 0.0, 0.0, 0.75])
    # 0.75 > 0.5: D is dropped, the targets are the mean of A, B and C
    targets = support_filter_targets(BY_HAND, label_histograms=BY_HAND_HIST)
    np.testing.assert_allclose(targets, [[2.3 / 3, 0.7 / 3], [0.3, 0.7]], rtol=1e-6)
    # at threshold 0.75 D is kept: the plain mean
    kept = support_filter_targets(BY_HAND, label_histograms=BY_HAND_HIST, threshold=0.75)
    np.testing.assert_allclose(kept, BY_HAND.mean(axis=0), rtol=1e-6)


def test_a_client_declaring_the_pushed_class_passes() -> None:
    # D declaring 1 of class 0 and 3 of class 1 scores (1 * 1 + 3 * 0) / 4 = 0.25 <= 0.5:
    # the rule trusts the declared histograms (documented limitation)
    hist = np.array([[3, 1], [1, 3], [2, 2], [1, 3]], dtype=np.float64)
    np.testing.assert_allclose(support_filter_scores(BY_HAND, hist)[3], 0.25)
    np.testing.assert_allclose(
        support_filter_targets(BY_HAND, label_histograms=hist), BY_HAND.mean(axis=0), rtol=1e-6
    )


def _skewed_federation(
    honest: int, colluders: int, *, classes: int = 5, per_class: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Honest client k holds 8 examples of class k % C and 2 of class (k + 1) % C; on those
    classes it puts 0.85 on the truth, elsewhere 0.6 on its main class (wrong). Colluders
    declare histograms of the same kind without class 0 (8 of class 1, 2 or 3, 2 of the
    next) and send one-hot rows on class 0."""
    labels = np.repeat(np.arange(classes), per_class)
    probs, hist = [], []
    for k in range(honest + colluders):
        main = k % classes if k < honest else 1 + k % 3
        second = (main + 1) % classes
        counts = np.zeros(classes)
        counts[main], counts[second] = 8, 2
        hist.append(counts)
        rows = np.zeros((len(labels), classes))
        if k >= honest:
            rows[:, 0] = 1.0
        else:
            for n, y in enumerate(labels):
                top, rest = (y, 0.85) if y in (main, second) else (main, 0.6)
                rows[n] = (1.0 - rest) / (classes - 1)
                rows[n, top] = rest
        probs.append(rows)
    return np.stack(probs), np.stack(hist), labels


def test_colluders_below_the_breakdown_point_do_not_move_the_targets() -> None:
    probs, hist, labels = _skewed_federation(honest=14, colluders=6)
    honest_mean = probs[:14].mean(axis=0)
    assert (honest_mean.argmax(axis=1) == labels).all()  # the honest clients get it right
    mean = teacher_targets(probs, rule="mean")
    assert (mean.argmax(axis=1) == 0).mean() > 0.5  # the mean is captured
    scores = support_filter_scores(probs, hist)
    assert scores[:14].max() <= 0.5 < scores[14:].min()
    targets = support_filter_targets(probs, label_histograms=hist)
    np.testing.assert_allclose(targets, honest_mean, rtol=1e-6)


def test_honest_skewed_clients_are_all_kept() -> None:
    probs, hist, labels = _skewed_federation(honest=20, colluders=0)
    # the coordinate-wise median follows the clients that have not seen a class ...
    median = teacher_targets(probs, rule="median")
    assert (median.argmax(axis=1) != labels).any()
    # ... while support_filter keeps everyone: exactly the mean
    targets = support_filter_targets(probs, label_histograms=hist)
    np.testing.assert_allclose(targets, probs.mean(axis=0), rtol=1e-6)
    assert (targets.argmax(axis=1) == labels).all()


def test_at_least_half_the_clients_plus_one_are_kept() -> None:
    # every client off the consensus somewhere: threshold 1e-9 keeps the 5 // 2 + 1 = 3
    # lowest scores
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(5, 6))
    hist = np.ones((5, 3))
    scores = support_filter_scores(probs, hist)
    assert (scores > 1e-9).all()
    keep = np.sort(np.argsort(scores, kind="stable")[:3])
    targets = support_filter_targets(probs, label_histograms=hist, threshold=1e-9)
    np.testing.assert_allclose(targets, probs[keep].mean(axis=0), rtol=1e-5)


def test_probability_rows_and_threshold_one_is_the_mean() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=(7, 9))
    hist = rng.integers(0, 20, size=(7, 4))
    for threshold in (0.1, 0.5, 1.0):
        targets = support_filter_targets(probs, label_histograms=hist, threshold=threshold)
        assert targets.dtype == np.float32 and targets.shape == (9, 4)
        assert (targets >= 0).all()
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(
        support_filter_targets(probs, label_histograms=hist, threshold=1.0),
        probs.mean(axis=0),
        rtol=1e-5,
    )


def test_a_client_with_no_declared_consensus_class_is_scored_on_every_example() -> None:
    # client 2 declares only class 2, which is never the consensus (the class-2 median is 0:
    # weights 5, 5, 4 on values 0, 0, 1): its score is its unweighted mean margin over both
    # examples, (1 - 0) and (1 - 0) -> 1, so it is dropped
    probs = np.array(
        [
            [[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]],
            [[0.8, 0.2, 0.0], [0.2, 0.8, 0.0]],
            [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]],
        ]
    )
    hist = np.array([[5.0, 5.0, 5.0], [5.0, 5.0, 5.0], [0.0, 0.0, 4.0]])
    np.testing.assert_allclose(support_filter_scores(probs, hist), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(
        support_filter_targets(probs, label_histograms=hist), probs[:2].mean(axis=0), rtol=1e-6
    )


def test_missing_histograms_and_bad_threshold_are_refused() -> None:
    with pytest.raises(ValueError, match="rule 'support_filter' needs label_histograms"):
        support_filter_targets(BY_HAND, label_histograms=None)
    with pytest.raises(ValueError, match=r"label_histograms must have shape \(4, 2\)"):
        support_filter_targets(BY_HAND, label_histograms=np.ones((3, 2)))
    with pytest.raises(ConfigError, match=r"aggregation\.threshold must be a finite number > 0"):
        validate_target_rule("support_filter", threshold=0.0)


def test_refused_at_config_time_when_privacy_withholds_histograms() -> None:
    overrides = [
        "num_clients=4",
        "num_rounds=1",
        "backend=inline",
        "strategy=feddf",
        "privacy=dpsgd",
        "privacy.delta=1e-3",
        "aggregation=support_filter",
        "strategy.teacher_space=probs",
    ]
    with pytest.raises(ConfigError, match="aggregation=support_filter weighs clients by their"):
        prepare_run(compose_config(overrides))
