"""One-run canary audit: the bound by hand, against mechanisms of known epsilon, and planting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedkd.privacy.canary import (
    CANARY_STREAM,
    CanaryPlan,
    apply_canaries,
    audit_p_value,
    epsilon_lower_bound,
    guess_grid,
    plan_canaries,
    score_labels,
    score_rows,
)

M = 1000


def _inclusion(seed: int, m: int = M) -> tuple[np.random.Generator, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng, rng.random(m) < 0.5


def _randomized_response(epsilon: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores that report each inclusion bit truthfully with probability e^eps / (1 + e^eps).

    Each score depends on its own bit only, so every bit is protected by pure epsilon-DP.
    """
    rng, included = _inclusion(seed)
    truthful = rng.random(M) < 1.0 / (1.0 + math.exp(-epsilon))
    return np.where(truthful, included, ~included).astype(float), included


def _binomial_tail(u: int, r: int, q: float) -> float:
    """P[Binomial(r, q) >= u] by summing the pmf (independent of scipy)."""
    return sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(max(u, 0), r + 1))


# ----------------------------------------------------------------------------- by hand


def test_pure_dp_all_right_guesses_by_hand() -> None:
    # r = v = 10, delta = 0: the p-value is q^10, so the bound solves q^10 = 0.05.
    scores = np.arange(20, dtype=float)
    included = scores >= 10  # the top 10 are all in
    audit = epsilon_lower_bound(scores, included, delta=0.0, guesses=(10, 0))
    q = 0.05 ** (1 / 10)
    assert audit.epsilon_lower_bound == pytest.approx(math.log(q / (1 - q)), rel=2e-4)
    assert audit.epsilon_lower_bound <= math.log(q / (1 - q))  # rounded down, never up
    assert (audit.guesses, audit.correct, audit.k_positive, audit.k_negative) == (10, 10, 10, 0)
    assert (audit.canaries, audit.tries, audit.confidence) == (20, 1, 0.95)


def test_delta_slack_by_hand() -> None:
    # r = v = 1, m = 2: p = q + 2 m delta (1 - q). At level 0.8 with 2 m delta = 0.1,
    # q = (0.8 - 0.1) / (1 - 0.1) = 7/9 and epsilon = log(q / (1 - q)) = log 3.5.
    audit = epsilon_lower_bound(
        np.array([1.0, 0.0]), np.array([1, 0]), delta=0.025, confidence=0.2, guesses=(1, 0)
    )
    assert audit.epsilon_lower_bound == pytest.approx(math.log(3.5), rel=2e-4)


@pytest.mark.parametrize(
    ("m", "r", "v", "epsilon", "delta"),
    [(2, 2, 2, 0.7, 0.01), (10, 5, 3, 1.3, 0.002), (50, 8, 8, 2.0, 1e-4), (9, 6, 0, 1.0, 0.1)],
)
def test_p_value_matches_the_theorem_by_enumeration(
    m: int, r: int, v: int, epsilon: float, delta: float
) -> None:
    q = math.exp(epsilon) / (1 + math.exp(epsilon))
    slack = max(
        ((_binomial_tail(v - i, r, q) - _binomial_tail(v, r, q)) / i for i in range(1, m + 1)),
        default=0.0,
    )
    expected = min(1.0, _binomial_tail(v, r, q) + 2 * m * delta * slack)
    got = audit_p_value(canaries=m, guesses=r, correct=v, epsilon=epsilon, delta=delta)
    assert got == pytest.approx(expected, rel=1e-9)


def test_p_value_grows_with_epsilon() -> None:
    # The bisection assumes it; the slack term alone can shrink as epsilon grows.
    epsilons = np.linspace(0.0, 12.0, 601)
    for m, r, v, delta in [
        (1000, 1000, 1000, 1e-5),
        (1000, 200, 190, 1e-5),
        (1000, 1000, 700, 1e-3),
        (100, 20, 20, 1e-2),
        (10, 10, 9, 0.04),
    ]:
        values = [
            audit_p_value(canaries=m, guesses=r, correct=v, epsilon=e, delta=delta)
            for e in epsilons
        ]
        assert np.all(np.diff(values) >= -1e-12), (m, r, v, delta)


def test_the_grid_is_bonferroni_corrected() -> None:
    _, included = _inclusion(3)
    scores = included + np.random.default_rng(4).normal(0.0, 0.7, size=M)
    audit = epsilon_lower_bound(scores, included, delta=1e-5, confidence=0.95)
    grid = guess_grid(M)
    assert audit.tries == len(grid) == 12
    assert (audit.k_positive, audit.k_negative) in grid
    # The reported try alone, at the per-try confidence, gives exactly the same bound...
    alone = epsilon_lower_bound(
        scores,
        included,
        delta=1e-5,
        confidence=1 - 0.05 / len(grid),
        guesses=(audit.k_positive, audit.k_negative),
    )
    assert alone.epsilon_lower_bound == audit.epsilon_lower_bound > 0
    # ...which is below what the same try claims when declared in advance.
    declared = epsilon_lower_bound(
        scores, included, delta=1e-5, guesses=(audit.k_positive, audit.k_negative)
    )
    assert declared.epsilon_lower_bound > audit.epsilon_lower_bound
    # and it is the best try of the grid.
    for choice in grid:
        other = epsilon_lower_bound(
            scores, included, delta=1e-5, confidence=1 - 0.05 / len(grid), guesses=choice
        )
        assert other.epsilon_lower_bound <= audit.epsilon_lower_bound


def test_guess_grid_small_and_large() -> None:
    assert guess_grid(2) == [(1, 1), (1, 0)]
    assert guess_grid(1) == [(1, 0)]
    assert (500, 500) in guess_grid(1000) and (10, 0) in guess_grid(1000)


def test_counts_and_ties() -> None:
    # Scores 5, 4, 3, 2, 1, 0: guess "in" for the top 2, "out" for the bottom 2.
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([1, 0, 1, 0, 1, 0])
    audit = epsilon_lower_bound(scores, included, delta=0.0, guesses=(2, 2))
    assert (audit.guesses, audit.correct) == (4, 2)  # in: 5 right, 4 wrong; out: 1 wrong, 0 right
    # Equal scores: ties go by canary index, whatever the bits say.
    flat = epsilon_lower_bound(np.zeros(6), included, delta=0.0, guesses=(1, 1))
    assert flat.correct == 1 + 1  # canary 0 is in (right), canary 5 is out (right)
    json.dumps(audit.to_dict())
    assert audit.to_dict()["correct"] == 2


def test_epsilon_lower_bound_errors() -> None:
    scores, included = np.zeros(4), np.array([1, 0, 1, 0])
    with pytest.raises(ValueError, match="equal length"):
        epsilon_lower_bound(scores, included[:3], delta=0.0)
    with pytest.raises(ValueError, match="finite"):
        epsilon_lower_bound(np.array([0.0, np.nan, 1.0, 2.0]), included, delta=0.0)
    with pytest.raises(ValueError, match="0/1"):
        epsilon_lower_bound(scores, np.array([2, 0, 1, 0]), delta=0.0)
    with pytest.raises(ValueError, match="delta"):
        epsilon_lower_bound(scores, included, delta=1.0)
    with pytest.raises(ValueError, match="confidence"):
        epsilon_lower_bound(scores, included, delta=0.0, confidence=1.0)
    for bad in [(3, 2), (0, 0), (-1, 2)]:
        with pytest.raises(ValueError, match="guesses"):
            epsilon_lower_bound(scores, included, delta=0.0, guesses=bad)
    with pytest.raises(ValueError, match="correct <= guesses"):
        audit_p_value(canaries=3, guesses=4, correct=1, epsilon=1.0, delta=0.0)


# ----------------------------------------------------------------------------- mechanisms


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0, 4.0])
def test_randomized_response_bound_holds_at_95_percent(epsilon: float) -> None:
    # A pre-declared try: its right guesses are exactly Binomial(500, q), so the bound
    # exceeds the true epsilon in at most 5% of runs (2-4% over 1000 seeds, measured).
    # A bound that ignored the confidence (a point estimate) would exceed it in ~50%.
    bounds = np.array(
        [
            epsilon_lower_bound(
                *_randomized_response(epsilon, seed), delta=0.0, guesses=(250, 250)
            ).epsilon_lower_bound
            for seed in range(200)
        ]
    )
    assert np.sum(bounds > epsilon) <= 16  # 5% of 200 is 10; P[Bin(200, .05) > 16] < 0.03
    # Not vacuous: the audit recovers a good part of epsilon (0.34, 0.83, 1.77, 3.47 means).
    assert bounds.mean() > epsilon / 2


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0, 4.0])
def test_randomized_response_with_the_grid(epsilon: float) -> None:
    bounds = np.array(
        [
            epsilon_lower_bound(
                *_randomized_response(epsilon, 1000 + seed), delta=1e-5
            ).epsilon_lower_bound
            for seed in range(50)
        ]
    )
    assert np.sum(bounds > epsilon) <= 5  # the Bonferroni grid is valid at 95% too
    assert bounds.mean() > epsilon / 3


def test_delta_slack_is_what_keeps_the_bound_valid() -> None:
    # (0.5, 0.01)-DP per bit: with probability 0.01 the score reveals the bit outright,
    # otherwise randomized response. The ~10 revealed bits make 5 + 5 sure guesses.
    epsilon, delta = 0.5, 0.01
    with_slack, without = [], []
    for seed in range(100):
        scores, included = _randomized_response(epsilon, 2000 + seed)
        revealed = np.random.default_rng(3000 + seed).random(M) < delta
        scores[revealed] = np.where(included[revealed], 10.0, -10.0)
        for target, assumed in ((with_slack, delta), (without, 0.0)):
            audit = epsilon_lower_bound(scores, included, delta=assumed, guesses=(5, 5))
            target.append(audit.epsilon_lower_bound)
    assert np.mean(np.array(with_slack) > epsilon) <= 0.05
    # Testing the pure-DP hypothesis instead "finds" more than the true epsilon half the time.
    assert np.mean(np.array(without) > epsilon) > 0.3


def test_a_perfect_leak_gives_a_large_bound() -> None:
    _, included = _inclusion(7)
    audit = epsilon_lower_bound(included.astype(float), included, delta=1e-5)
    # At best all 1000 guesses right: q^1000 = 0.05 / 12 gives epsilon <= 5.3. The only
    # wrong guesses: "in" and "out" tries of equal size when not exactly half are in.
    assert 4.0 < audit.epsilon_lower_bound < 5.4
    k_wrong = abs(int(included.sum()) - audit.k_positive) if audit.k_negative else 0
    assert audit.guesses - audit.correct <= k_wrong


def test_pure_noise_concludes_nothing() -> None:
    positive = 0
    for seed in range(100):
        rng, included = _inclusion(4000 + seed)
        audit = epsilon_lower_bound(rng.normal(size=M), included, delta=1e-5)
        positive += audit.epsilon_lower_bound > 0
    assert positive <= 5


@pytest.mark.parametrize("mu", [1.0, 2.0])
def test_gaussian_mechanism_bound_stays_below_its_epsilon(mu: float) -> None:
    import dp_accounting

    delta = 1e-5
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(1.0 / mu))  # sensitivity mu, sigma 1
    true_epsilon = float(accountant.get_epsilon(delta))
    assert true_epsilon == pytest.approx({1.0: 4.3772, 2.0: 9.9973}[mu], abs=1e-3)
    bounds = []
    for seed in range(20):
        rng, included = _inclusion(5000 + seed)
        scores = included * mu + rng.normal(size=M)
        bounds.append(epsilon_lower_bound(scores, included, delta=delta).epsilon_lower_bound)
    assert sum(b > true_epsilon for b in bounds) <= 1
    assert np.mean(bounds) > 0.5  # and the audit does see the leak


# ----------------------------------------------------------------------------- canaries


def _proxy(n: int = 300, num_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    return x, rng.integers(0, num_classes, size=n)


def test_plan_is_seeded_and_well_formed() -> None:
    _, labels = _proxy()
    plan = plan_canaries(labels, num_clients=3, count=200, num_classes=4, seed=5)
    again = plan_canaries(labels, num_clients=3, count=200, num_classes=4, seed=5)
    other = plan_canaries(labels, num_clients=3, count=200, num_classes=4, seed=6)
    assert plan.to_dict() == again.to_dict() != other.to_dict()
    assert len(plan) == 200 and len(set(plan.proxy_index.tolist())) == 200
    assert plan.proxy_index.min() >= 0 and plan.proxy_index.max() < 300
    assert np.all(plan.label != labels[plan.proxy_index])
    assert plan.label.min() >= 0 and plan.label.max() < 4
    assert np.array_equal(plan.client, np.arange(200) % 3)
    assert plan.included.dtype == np.bool_
    # The documented stream: the first draw is the proxy indices.
    rng = np.random.default_rng(np.random.SeedSequence([5, CANARY_STREAM]))
    assert np.array_equal(plan.proxy_index, rng.choice(300, size=200, replace=False))
    json.dumps(plan.to_dict())


def test_plan_draws_wrong_labels_uniformly_and_includes_half() -> None:
    labels = np.zeros(6000, dtype=np.int64)  # true label 0: the wrong ones are 1, 2, 3
    plan = plan_canaries(labels, num_clients=10, count=6000, num_classes=4, seed=0)
    shares = np.bincount(plan.label, minlength=4) / 6000
    assert shares[0] == 0.0
    assert np.allclose(shares[1:], 1 / 3, atol=0.03)
    assert abs(plan.included.mean() - 0.5) < 0.03


def test_plan_errors() -> None:
    _, labels = _proxy(n=10)
    with pytest.raises(ValueError, match="must not exceed the 10 proxy examples"):
        plan_canaries(labels, num_clients=2, count=11, num_classes=4, seed=0)
    with pytest.raises(ValueError, match="count"):
        plan_canaries(labels, num_clients=2, count=1, num_classes=4, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        plan_canaries(np.zeros(10, dtype=int), num_clients=2, count=5, num_classes=1, seed=0)
    with pytest.raises(ValueError, match="num_clients"):
        plan_canaries(labels, num_clients=0, count=5, num_classes=4, seed=0)
    with pytest.raises(ValueError, match=r"proxy_labels must lie in \[0, 2\)"):
        plan_canaries(labels, num_clients=2, count=5, num_classes=2, seed=0)
    with pytest.raises(ValueError, match="1-D integers"):
        plan_canaries(labels.astype(float), num_clients=2, count=5, num_classes=4, seed=0)


def test_apply_appends_exactly_the_clients_included_canaries() -> None:
    proxy_x, proxy_labels = _proxy()
    plan = plan_canaries(proxy_labels, num_clients=3, count=60, num_classes=4, seed=1)
    train_x = np.ones((7, 5), dtype=np.float32)
    train_y = np.zeros(7, dtype=np.int32)
    for partition_id in range(3):
        mine = plan.included & (plan.client == partition_id)
        x, y = apply_canaries(plan, partition_id, train_x, train_y, proxy_x)
        assert (x.dtype, y.dtype) == (np.float32, np.int32)
        assert len(x) == len(y) == 7 + mine.sum()
        assert np.array_equal(x[:7], train_x) and np.array_equal(y[:7], train_y)
        assert np.array_equal(x[7:], proxy_x[plan.proxy_index[mine]])
        assert np.array_equal(y[7:], plan.label[mine])
        index, label = plan.for_client(partition_id)
        assert np.array_equal(index, plan.proxy_index[mine])
        assert np.array_equal(label, plan.label[mine])
    # A client without canaries gets its own arrays back.
    x, y = apply_canaries(plan, 99, train_x, train_y, proxy_x)
    assert x is train_x and y is train_y
    with pytest.raises(ValueError, match="shape"):
        apply_canaries(plan, 0, np.ones((7, 4), dtype=np.float32), train_y, proxy_x)


def _plan(labels: list[int], included: list[bool]) -> CanaryPlan:
    n = len(labels)
    return CanaryPlan(
        proxy_index=np.arange(n),
        label=np.array(labels),
        client=np.zeros(n, dtype=np.int64),
        included=np.array(included),
    )


def test_score_rows_by_hand() -> None:
    plan = _plan([1, 0, 2], [True, False, True])
    rows = np.array([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [np.nan, np.nan, np.nan]])
    scores = score_rows(plan, rows)
    assert scores == pytest.approx([0.7 - 1 / 3, 0.1 - 1 / 3, 0.0])
    with pytest.raises(ValueError, match="shape"):
        score_rows(plan, rows[:2])
    with pytest.raises(ValueError, match="columns"):
        score_rows(plan, rows[:, :2])


def test_score_labels_by_hand() -> None:
    plan = _plan([1, 0, 2, 3], [True] * 4)
    assert score_labels(plan, np.array([1, 2, -1, 3])).tolist() == [1.0, -1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="integers"):
        score_labels(plan, np.array([1.0, 2.0, 0.0, 3.0]))


def test_memorising_clients_are_caught_end_to_end() -> None:
    # Clients that memorise their canaries release the canary label on them, the true
    # label elsewhere: the audit sees the leak through the released rows.
    _, proxy_labels = _proxy(n=1000)
    plan = plan_canaries(proxy_labels, num_clients=4, count=1000, num_classes=4, seed=2)
    released = np.where(plan.included, plan.label, proxy_labels[plan.proxy_index])
    rows = np.full((1000, 4), 0.1)
    rows[np.arange(1000), released] = 0.7
    audit = epsilon_lower_bound(score_rows(plan, rows), plan.included, delta=1e-5)
    assert audit.epsilon_lower_bound > 4.0
    assert epsilon_lower_bound(
        score_labels(plan, released), plan.included, delta=1e-5
    ).epsilon_lower_bound == pytest.approx(audit.epsilon_lower_bound)
