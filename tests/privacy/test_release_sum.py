"""The secure-aggregation release (PrivacyController.release_sum) against release, and the
split mechanisms (noisy_total, pate_from_histogram) against their first-principles maths."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from fedkd.privacy import PrivacyController, PrivacySpec
from fedkd.privacy.controller import Release, RoundPlan
from fedkd.privacy.mechanisms import (
    central_sum,
    clip_rows,
    local_release,
    noise_generator,
    noisy_total,
    one_hot_votes,
    pate_from_histogram,
    pate_labels,
    project_to_simplex,
)

SEED = 7
K, N, C = 5, 40, 4
PARTITIONS = [0, 2, 3, 5, 8]
CLIP = 0.5
RTOL, ATOL = 1e-6, 1e-7  # float32 targets of float64 sums summed in another order
CENTRAL = {"name": "logit_dp", "mode": "central", "clip": CLIP, "noise_multiplier": 0.3}
LOCAL = {"name": "logit_dp", "mode": "local", "clip": CLIP, "noise_multiplier": 0.3}
PATE = {"name": "pate", "sigma": 1.5}
CONFIDENT_PATE = {"name": "pate", "sigma": 1.5, "threshold": 3.5, "sigma_threshold": 1.0}


class NeverDraws:
    """A ``NormalSource`` that fails the test if anything is drawn from it."""

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Any = None) -> np.ndarray:
        raise AssertionError("no noise may be drawn here")


NEVER: Any = NeverDraws()


def _controller(config: dict[str, Any], **kwargs: Any) -> PrivacyController:
    # RDP alone: the summaries compared stay cheap (PLD adds nothing to the comparison)
    spec = PrivacySpec.from_config({**config, "reproducible_noise": True, "accountant": "rdp"})
    return PrivacyController(spec, seed=SEED, clients=range(10), **kwargs)


def _plan(partitions: list[int]) -> RoundPlan:
    examples = dict.fromkeys(range(10), 100)
    return RoundPlan(partitions, N, examples, local_epochs=1, batch_size=10, server_round=1)


def _shared(seed: int = 0) -> np.ndarray:
    """``(K, N, C)`` predictions, scaled so many rows exceed the clip and some entries are
    negative (what a careless client might send)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(C, 0.4), size=(K, N))
    return probs * rng.uniform(0.2, 2.0, size=(K, N, 1)) - 0.02


def _clipped(shared: np.ndarray) -> np.ndarray:
    """What honest clients send under central ``logit_dp``: non-negative rows clipped."""
    return clip_rows(np.clip(shared, 0.0, None), CLIP)


def _both(
    config: dict[str, Any], shared: np.ndarray, total: np.ndarray, rounds: int = 2, **kwargs: Any
) -> tuple[PrivacyController, list[Release], PrivacyController, list[Release]]:
    """The same rounds run through ``release`` (per client) and ``release_sum`` (the sum)."""
    per_client, summed = _controller(config, **kwargs), _controller(config, **kwargs)
    released, released_sum = [], []
    for server_round in range(1, rounds + 1):
        for controller in (per_client, summed):
            controller.charge_round(server_round, _plan(PARTITIONS))
        released.append(per_client.release(server_round, shared, PARTITIONS))
        released_sum.append(summed.release_sum(server_round, total, K, PARTITIONS))
    return per_client, released, summed, released_sum


def _assert_same_accounting(a: PrivacyController, b: PrivacyController, rounds: int) -> None:
    assert a.ledger.state() == b.ledger.state()
    assert a.ledger.units  # something was charged
    for server_round in range(1, rounds + 1):
        assert a.round_metrics(server_round) == b.round_metrics(server_round)
    assert a.summary(proxy_rows=N)["guarantees"] == b.summary(proxy_rows=N)["guarantees"]


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_central_release_sum_equals_release_of_the_clipped_rows(sampling: str) -> None:
    shared = _shared()
    total = _clipped(shared).sum(axis=0)
    config = {**CENTRAL, "client_sampling": sampling}
    per_client, released, summed, released_sum = _both(config, shared, total, sample_rate=0.5)
    assert per_client.poisson == (sampling == "poisson")
    std = 0.3 * CLIP * math.sqrt(N)
    for server_round, (a, b) in enumerate(zip(released, released_sum, strict=True), start=1):
        np.testing.assert_allclose(b.targets, a.targets, rtol=RTOL, atol=ATOL)
        assert b.rows is None and a.rows is None
        assert b.details == pytest.approx(a.details)
        assert b.details == pytest.approx({"noise_std": std, "sensitivity": CLIP * math.sqrt(N)})
        # from first principles: the round's reproducible noise on the sum, then the mean
        noise = noise_generator(True, SEED, server_round).normal(0.0, std, size=(N, C))
        np.testing.assert_allclose(
            b.targets, project_to_simplex((total + noise) / K), rtol=RTOL, atol=ATOL
        )
    # the noise is not so large that the test compares two uniform targets
    assert not np.allclose(released[0].targets, 1.0 / C, atol=1e-3)
    _assert_same_accounting(per_client, summed, rounds=2)


def test_distributed_noise_is_not_added_again_but_reported_and_charged() -> None:
    shared = _shared(1)
    total = _clipped(shared).sum(axis=0)
    std = 0.3 * CLIP * math.sqrt(N)
    # each client adds a share N(0, std^2 / K): the sum carries noise of std
    shares = np.random.default_rng(3).normal(0.0, std / math.sqrt(K), size=(K, N, C))
    noisy = total + shares.sum(axis=0)
    server_noised, distributed = _controller(CENTRAL), _controller(CENTRAL)
    reference = server_noised.release_sum(1, total, K, PARTITIONS)
    release = distributed.release_sum(1, noisy, K, PARTITIONS, noise_added=True)
    np.testing.assert_array_equal(release.targets, project_to_simplex(noisy / K))
    assert release.details == reference.details
    assert release.details["noise_std"] == pytest.approx(std)
    assert server_noised.ledger.state() == distributed.ledger.state()
    # without any noise in the sum, nothing is added either: the clean mean comes back
    clean = _controller(CENTRAL).release_sum(1, total, K, PARTITIONS, noise_added=True)
    np.testing.assert_array_equal(clean.targets, project_to_simplex(total / K))
    assert not np.allclose(reference.targets, clean.targets, atol=1e-3)


@pytest.mark.parametrize("config", [PATE, CONFIDENT_PATE], ids=["gnmax", "confident"])
def test_pate_release_sum_of_the_vote_histogram_equals_release(config: dict[str, Any]) -> None:
    shared = _shared(2)
    votes = np.stack([one_hot_votes(rows) for rows in shared])
    histogram = votes.sum(axis=0)
    per_client, released, summed, released_sum = _both(config, shared, histogram)
    for a, b in zip(released, released_sum, strict=True):
        np.testing.assert_array_equal(b.targets, a.targets)
        np.testing.assert_array_equal(b.rows, a.rows)
        assert b.details == a.details
        assert b.rows is not None
        assert b.targets.shape == (len(b.rows), C) and b.targets.dtype == np.float32
        np.testing.assert_array_equal(b.targets.sum(axis=1), 1.0)
    answered = sum(r.details["answered"] for r in released_sum)
    if "threshold" in config:  # some queries refused, some answered: the check really ran
        assert 0 < answered < 2 * N
    else:
        assert answered == 2 * N
    _assert_same_accounting(per_client, summed, rounds=2)
    assert summed.round_metrics(1)["pate_answered"] == released_sum[0].details["answered"]


def test_local_release_sum_of_noisy_rows_equals_release() -> None:
    shared = _shared(4)
    noisy = np.stack(
        [
            local_release(rows, clip=CLIP, noise_multiplier=0.3, rng=np.random.default_rng(k))[0]
            for k, rows in enumerate(shared)
        ]
    )
    total = noisy.astype(np.float64).sum(axis=0)
    per_client, released, summed, released_sum = _both(LOCAL, noisy, total)
    for a, b in zip(released, released_sum, strict=True):
        np.testing.assert_allclose(b.targets, a.targets, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(b.targets, project_to_simplex(total / K), rtol=RTOL, atol=ATOL)
        assert b.details == a.details
        assert b.details["noise_std"] == pytest.approx(0.3 * math.sqrt(2) * CLIP * math.sqrt(N))
    _assert_same_accounting(per_client, summed, rounds=2)


def test_release_sum_refuses_what_it_cannot_account() -> None:
    total = _clipped(_shared()).sum(axis=0)
    controller = _controller(CENTRAL)
    with pytest.raises(ValueError, match="match partitions"):
        controller.release_sum(1, total, 3, PARTITIONS)
    with pytest.raises(ValueError, match="count=0"):
        controller.release_sum(1, total, 0, [])
    with pytest.raises(ValueError, match=r"\(N, C\) sum"):
        controller.release_sum(1, total[None], K, PARTITIONS)
    broken = total.copy()
    broken[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        controller.release_sum(1, broken, K, PARTITIONS)
    assert controller.ledger.units == []  # nothing charged for a refused release
    with pytest.raises(ValueError, match="not pate"):
        _controller(PATE).release_sum(1, total, K, PARTITIONS, noise_added=True)
    with pytest.raises(ValueError, match="not local logit_dp"):
        _controller(LOCAL).release_sum(1, total, K, PARTITIONS, noise_added=True)
    dpsgd = _controller({"name": "dpsgd"})
    with pytest.raises(ValueError, match="privacy=dpsgd has no server-side release"):
        dpsgd.release_sum(1, total, K, PARTITIONS)


# ----------------------------------------------------------------------------- mechanisms


def test_central_sum_is_the_clipped_sum_plus_one_draw_of_the_stated_std() -> None:
    shared = _shared(5)
    z, std = 1.3, 1.3 * CLIP * math.sqrt(N)
    # first principles: clamp, scale rows above the clip down to it, sum, one normal draw
    clamped = np.maximum(shared, 0.0)
    norms = np.sqrt((clamped**2).sum(axis=-1, keepdims=True))
    total = (clamped * np.minimum(1.0, CLIP / norms)).sum(axis=0)
    expected = total + np.random.default_rng(9).normal(0.0, std, size=(N, C))
    noisy, used = central_sum(shared, clip=CLIP, noise_multiplier=z, rng=np.random.default_rng(9))
    np.testing.assert_allclose(noisy, expected, rtol=1e-12, atol=1e-12)
    assert (used.sensitivity, used.noise_multiplier) == (pytest.approx(CLIP * math.sqrt(N)), z)
    assert used.noise_std == pytest.approx(std)
    again, used_again = noisy_total(
        total, num_rows=N, clip=CLIP, noise_multiplier=z, rng=np.random.default_rng(9)
    )
    np.testing.assert_allclose(again, noisy, rtol=1e-12, atol=1e-12)
    assert used_again == used
    unchanged, reported = noisy_total(
        total, num_rows=N, clip=CLIP, noise_multiplier=z, rng=NEVER, add_noise=False
    )
    np.testing.assert_array_equal(unchanged, total)
    assert reported == used


def test_noisy_total_refuses_a_total_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"num_rows=3"):
        noisy_total(np.zeros((4, 2)), num_rows=3, clip=1.0, noise_multiplier=1.0, rng=NEVER)
    with pytest.raises(ValueError, match="histogram must be"):
        pate_from_histogram(np.zeros((2, 3, 4)), sigma=1.0, rng=np.random.default_rng(0))


@pytest.mark.parametrize("threshold", [None, 3.5])
def test_pate_labels_is_gnmax_on_the_rederived_histogram(threshold: float | None) -> None:
    shared = _shared(6)
    histogram = np.zeros((N, C))
    for rows in shared:  # one vote per client and query, for its argmax
        histogram[np.arange(N), rows.argmax(axis=1)] += 1
    sigma_threshold = None if threshold is None else 1.0
    kwargs: dict[str, Any] = {
        "sigma": 1.5,
        "threshold": threshold,
        "sigma_threshold": sigma_threshold,
    }
    answer = pate_labels(shared, rng=np.random.default_rng(11), **kwargs)
    # first principles: the checks are drawn first, then the answers of the passing queries
    rng = np.random.default_rng(11)
    rows = np.arange(N)
    if threshold is not None:
        rows = np.flatnonzero(histogram.max(axis=1) + rng.normal(0.0, 1.0, size=N) >= threshold)
        assert 0 < len(rows) < N
    labels = (histogram[rows] + rng.normal(0.0, 1.5, size=(len(rows), C))).argmax(axis=1)
    np.testing.assert_array_equal(answer.answered, rows)
    np.testing.assert_array_equal(answer.labels, labels)
    assert answer.queries == N
    # labels depend on the noise: the draw is really there
    assert not np.array_equal(labels, histogram[rows].argmax(axis=1))
    direct = pate_from_histogram(histogram, rng=np.random.default_rng(11), **kwargs)
    np.testing.assert_array_equal(direct.labels, answer.labels)
    np.testing.assert_array_equal(direct.answered, answer.answered)
