"""Robust teacher-target rules (median, trimmed_mean, robust_mean) on hand-built inputs."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.distill import (
    median_targets,
    robust_mean_targets,
    teacher_targets,
    trimmed_mean_targets,
    validate_target_rule,
)
from fedkd.errors import ConfigError

HONEST = np.array([0.6, 0.3, 0.1])
ATTACK = np.array([0.0, 1.0, 0.0])


def _federation(honest: int, malicious: int, examples: int = 5, seed: int = 0) -> np.ndarray:
    """Honest clients near HONEST (small seeded jitter), malicious ones sending ATTACK."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(honest):
        jitter = HONEST + rng.normal(0, 0.02, size=(examples, 3))
        jitter = np.clip(jitter, 1e-3, None)
        rows.append(jitter / jitter.sum(axis=1, keepdims=True))
    rows += [np.tile(ATTACK, (examples, 1))] * malicious
    return np.stack(rows)


def test_the_mean_is_flipped_by_four_attackers_out_of_ten() -> None:
    probs = _federation(6, 4)
    assert (teacher_targets(probs, rule="mean").argmax(axis=1) == 1).all()


@pytest.mark.parametrize(
    ("rule", "options"),
    # robust_mean at 0.05: the colluders' cluster has variance 0.24 * 0.86 = 0.21 along the
    # split, just above the default 0.2, which stops filtering after one of four is gone
    [("median", {}), ("trimmed_mean", {"trim": 0.4}), ("robust_mean", {"threshold": 0.05})],
)
def test_robust_rules_keep_the_honest_answer(rule: str, options: dict) -> None:
    probs = _federation(6, 4)
    targets = teacher_targets(probs, rule=rule, **options)
    assert targets.shape == (5, 3)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert (targets.argmax(axis=1) == 0).all()
    honest_mean = probs[:6].mean(axis=0)
    assert np.abs(targets - honest_mean).max() < 0.08


def test_median_by_hand() -> None:
    probs = np.array([[[0.7, 0.3]], [[0.6, 0.4]], [[0.0, 1.0]]])
    np.testing.assert_allclose(median_targets(probs), [[0.6, 0.4]], rtol=1e-6)


def test_trimmed_mean_by_hand_and_zero_trim_is_the_mean() -> None:
    probs = np.array([[[0.9, 0.1]], [[0.6, 0.4]], [[0.5, 0.5]], [[0.0, 1.0]]])
    # trim 0.25 of 4 clients: drop one value at each end of every coordinate
    np.testing.assert_allclose(trimmed_mean_targets(probs, trim=0.25), [[0.55, 0.45]], rtol=1e-6)
    np.testing.assert_allclose(trimmed_mean_targets(probs, trim=0.0), probs.mean(axis=0), rtol=1e-6)


def test_robust_mean_keeps_agreeing_clients_untouched() -> None:
    probs = _federation(8, 0)
    np.testing.assert_allclose(
        robust_mean_targets(probs),
        probs.mean(axis=0) / probs.mean(axis=0).sum(1, keepdims=True),
        rtol=1e-5,
    )


def test_robust_mean_never_drops_half_of_the_clients() -> None:
    # 5 against 5: no majority to keep, so at most 4 are dropped and the result stays a
    # probability vector
    probs = np.concatenate([_federation(5, 0), np.tile(ATTACK, (5, 5, 1))])
    targets = robust_mean_targets(probs, threshold=1e-9)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)


def test_median_of_disagreeing_votes_falls_back_to_the_mean() -> None:
    probs = np.eye(3)[:, None, :]  # three clients, three different one-hot votes
    np.testing.assert_allclose(median_targets(probs), [[1 / 3] * 3], rtol=1e-6)


@pytest.mark.parametrize(
    ("rule", "options", "message"),
    [
        ("trimmed_mean", {"trim": 0.5}, r"aggregation.trim must be a finite number >= 0 and < 0.5"),
        ("trimmed_mean", {"trim": -0.1}, "aggregation.trim"),
        ("robust_mean", {"threshold": 0.0}, "aggregation.threshold must be a finite number > 0"),
        ("median", {"trim": 0.1}, "unknown option"),
    ],
)
def test_bad_options_name_the_key(rule: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_target_rule(rule, **options)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "robust_mean"])
def test_robust_rules_run_end_to_end(rule: str, in_process_run, tmp_path) -> None:
    summary = in_process_run(
        ["num_clients=3", "num_rounds=1", "client.epochs=5", "partition=iid", "strategy=dsfl",
         "strategy.distill_epochs=2", f"aggregation={rule}"],
        tmp_path,
    )  # fmt: skip
    assert summary["status"] == "completed"
    assert summary["final"]["ensemble_accuracy"] > 0.5
