"""Clipping, Gaussian noise, PATE votes and noise generators (fedkd.privacy.mechanisms)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedkd.privacy.mechanisms import (
    central_sum,
    clip_rows,
    local_release,
    logit_dp_sensitivity,
    noise_generator,
    one_hot_votes,
    pate_labels,
    project_to_simplex,
    torch_noise_seed,
)


def _probs(rows: int, classes: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(rows, classes)) * 3
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("clip", [0.1, 0.5, 1.0])
def test_clipped_rows_respect_the_bound_and_short_rows_are_untouched(clip: float) -> None:
    values = np.random.default_rng(1).normal(size=(500, 10)) * np.linspace(0.01, 3, 500)[:, None]
    clipped = clip_rows(values, clip)
    norms = np.linalg.norm(clipped, axis=1)
    assert (norms <= clip * (1 + 1e-12)).all()
    short = np.linalg.norm(values, axis=1) <= clip
    np.testing.assert_allclose(clipped[short], values[short])
    # long rows keep their direction
    long = ~short
    cosine = (clipped[long] * values[long]).sum(1) / (
        norms[long] * np.linalg.norm(values[long], axis=1)
    )
    np.testing.assert_allclose(cosine, 1.0, atol=1e-12)


def test_sensitivity_is_stated_per_mode_and_relation() -> None:
    # central: one client added or removed, or one record of a client changed
    assert logit_dp_sensitivity(100, 0.5, "central", "client") == pytest.approx(5.0)
    assert logit_dp_sensitivity(100, 0.5, "central", "record") == pytest.approx(5.0 * math.sqrt(2))
    # local: any change of the client's non-negative clipped rows
    for relation in ("client", "record"):
        assert logit_dp_sensitivity(100, 0.5, "local", relation) == pytest.approx(
            5.0 * math.sqrt(2)
        )
    with pytest.raises(ValueError, match="relation"):
        logit_dp_sensitivity(100, 0.5, "central", "example")


@pytest.mark.parametrize("noise_multiplier", [0.5, 2.0])
def test_local_noise_std_matches_the_configured_one(noise_multiplier: float) -> None:
    probs = _probs(400, 10)
    noisy, used = local_release(
        probs, clip=0.5, noise_multiplier=noise_multiplier, rng=np.random.default_rng(3)
    )
    expected_std = noise_multiplier * math.sqrt(2) * 0.5 * math.sqrt(400)
    assert used.noise_std == pytest.approx(expected_std)
    residual = noisy.astype(np.float64) - clip_rows(probs, 0.5)
    assert residual.mean() == pytest.approx(0.0, abs=4 * expected_std / math.sqrt(residual.size))
    assert residual.std() == pytest.approx(expected_std, rel=0.03)


def test_central_sum_reclips_and_adds_noise_of_the_stated_std() -> None:
    contributions = np.stack([_probs(300, 4, seed=s) * 5 for s in range(6)])  # rows of norm > 1
    total, used = central_sum(
        contributions, clip=1.0, noise_multiplier=1.5, rng=np.random.default_rng(4)
    )
    exact = clip_rows(contributions, 1.0).sum(axis=0)
    assert used.sensitivity == pytest.approx(math.sqrt(300))
    assert (total - exact).std() == pytest.approx(1.5 * math.sqrt(300), rel=0.05)
    # one client removed changes the clean sum by at most the stated sensitivity
    without = clip_rows(contributions[1:], 1.0).sum(axis=0)
    assert np.linalg.norm(exact - without) <= used.sensitivity + 1e-9


def test_projection_gives_probability_rows() -> None:
    noisy = np.array([[0.5, -0.2, 0.7], [-1.0, -2.0, -0.1], [2.0, 2.0, 0.0]])
    projected = project_to_simplex(noisy)
    np.testing.assert_allclose(projected.sum(axis=1), 1.0, rtol=1e-6)
    assert (projected >= 0).all()
    np.testing.assert_allclose(projected[0], [0.5 / 1.2, 0.0, 0.7 / 1.2], rtol=1e-6)
    np.testing.assert_allclose(projected[1], [1 / 3] * 3, rtol=1e-6)


def test_votes_are_one_hot_argmaxes() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    np.testing.assert_array_equal(one_hot_votes(probs), [[0, 1, 0], [1, 0, 0]])


def test_gnmax_with_small_noise_returns_the_plurality_and_large_noise_does_not() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, size=400)
    votes = np.zeros((9, 400, 5))
    for k in range(9):  # 7 of 9 teachers vote the true label
        labels = truth if k < 7 else rng.integers(0, 5, size=400)
        votes[k, np.arange(400), labels] = 1
    quiet = pate_labels(votes, sigma=0.5, rng=np.random.default_rng(1))
    assert quiet.queries == 400 and len(quiet.answered) == 400
    assert (quiet.labels == truth).mean() > 0.99
    loud = pate_labels(votes, sigma=100.0, rng=np.random.default_rng(1))
    assert (loud.labels == truth).mean() < 0.4


def test_confident_gnmax_answers_only_confident_queries() -> None:
    votes = np.zeros((10, 2, 3))
    votes[:, 0, 0] = 1  # unanimous
    votes[:4, 1, 0] = 1  # split 4/3/3
    votes[4:7, 1, 1] = 1
    votes[7:, 1, 2] = 1
    answer = pate_labels(
        votes, sigma=0.1, threshold=8.0, sigma_threshold=0.1, rng=np.random.default_rng(0)
    )
    np.testing.assert_array_equal(answer.answered, [0])
    np.testing.assert_array_equal(answer.labels, [0])


def test_a_client_cannot_cast_more_than_one_vote() -> None:
    votes = np.zeros((3, 1, 2))
    votes[0, 0] = [0.0, 50.0]  # a cheating "vote" weight
    votes[1:, 0, 0] = 1
    answer = pate_labels(votes, sigma=1e-6, rng=np.random.default_rng(0))
    assert answer.labels[0] == 0


def test_noise_is_cryptographically_seeded_unless_reproducible() -> None:
    a = noise_generator(False, 0, 1).normal(size=5)
    b = noise_generator(False, 0, 1).normal(size=5)
    assert not np.allclose(a, b)
    c = noise_generator(True, 0, 1).normal(size=5)
    d = noise_generator(True, 0, 1).normal(size=5)
    np.testing.assert_array_equal(c, d)
    assert not np.allclose(c, noise_generator(True, 0, 2).normal(size=5))
    # the reproducible stream is apart from the run's own seeded streams
    assert not np.allclose(c, np.random.default_rng(0).normal(size=5))
    assert torch_noise_seed(False, 0, 1) is None
    assert torch_noise_seed(True, 0, 1) == torch_noise_seed(True, 0, 1)
    assert torch_noise_seed(True, 0, 1) != torch_noise_seed(True, 0, 2)


def test_default_noise_comes_from_the_operating_systems_csprng() -> None:
    from scipy import stats

    from fedkd.privacy.mechanisms import SecureNormal, noise_generator

    source = noise_generator(False, 0, 1)
    assert isinstance(source, SecureNormal)
    draws = source.normal(0.0, 2.0, size=(200, 50))
    assert draws.shape == (200, 50)
    # a standard normal after scaling (Kolmogorov-Smirnov), and never the same twice
    assert stats.kstest(draws.ravel() / 2.0, "norm").pvalue > 1e-3
    assert not np.array_equal(draws, source.normal(0.0, 2.0, size=(200, 50)))
    assert np.isfinite(source.normal(size=100_000)).all()
    assert source.normal(1.0, 0.0, size=3).tolist() == [1.0, 1.0, 1.0]
    # reproducible noise: a seeded numpy generator, the same for the same seed and stream
    a, b = noise_generator(True, 7, 1), noise_generator(True, 7, 1)
    assert np.array_equal(a.normal(size=5), b.normal(size=5))
