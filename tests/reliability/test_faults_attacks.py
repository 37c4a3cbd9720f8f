"""Fault plans and poisoning functions on hand-built inputs."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.errors import ConfigError
from fedkd.reliability.attacks import (
    AttackSpec,
    flip_labels,
    malicious_partitions,
    poison_labels,
    poison_probs,
    poison_weights,
)
from fedkd.reliability.faults import CRASH, KILL, STRAGGLE, FaultSpec, InjectedFault, inject


def test_fault_plan_is_seeded_sized_and_disjoint() -> None:
    spec = FaultSpec(crash_fraction=0.2, straggler_fraction=0.3, kill_actor_round=2)
    partitions = list(range(10))
    plan = spec.plan(0, 1, partitions)
    assert sorted(plan.values()).count(CRASH) == 2
    assert sorted(plan.values()).count(STRAGGLE) == 3
    assert KILL not in plan.values()  # not the kill round
    assert plan == spec.plan(0, 1, partitions)  # reproducible
    assert plan != spec.plan(0, 3, partitions)  # differs by round
    killed = [p for p, kind in spec.plan(0, 2, partitions).items() if kind == KILL]
    assert len(killed) == 1
    assert FaultSpec().plan(0, 1, partitions) == {}


def test_fault_plan_draws_only_from_the_sampled_clients() -> None:
    plan = FaultSpec(crash_fraction=0.5).plan(3, 1, [4, 7, 9, 12])
    assert set(plan) <= {4, 7, 9, 12} and len(plan) == 2


@pytest.mark.parametrize(
    ("block", "key"),
    [
        ({"crash_fraction": 1.0}, "faults.crash_fraction"),
        ({"straggler_fraction": -0.1}, "faults.straggler_fraction"),
        ({"crash_fraction": 0.6, "straggler_fraction": 0.5}, "must be < 1"),
        ({"straggler_delay": 0}, "faults.straggler_delay"),
        ({"kill_actor_round": 0}, "faults.kill_actor_round"),
        ({"crash": 0.1}, "unknown keys"),
    ],
)
def test_bad_fault_config_names_the_key(block: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        FaultSpec.from_config(block)


def test_killing_a_process_is_refused_inline() -> None:
    with pytest.raises(ConfigError, match="backend=inline"):
        FaultSpec(kill_actor_round=1).check_backend("inline")
    FaultSpec(kill_actor_round=1).check_backend("ray_cpu")


def test_injected_crash_and_straggle() -> None:
    with pytest.raises(InjectedFault):
        inject(CRASH, 0.0)
    inject(STRAGGLE, 0.01)  # returns after sleeping
    inject("", 0.0)  # honest clients do nothing


@pytest.mark.parametrize(
    ("block", "key"),
    [
        ({"kind": "flip"}, "attack.kind"),
        ({"kind": "random", "fraction": 1.0}, "attack.fraction"),
        ({"fraction": 0.2}, "needs attack.kind"),
        ({"kind": "scale", "fraction": 0.2, "scale": 0}, "attack.scale"),
        ({"kind": "targeted", "fraction": 0.2, "target": -1}, "attack.target"),
    ],
)
def test_bad_attack_config_names_the_key(block: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        AttackSpec.from_config(block)


def test_malicious_partitions_are_a_fixed_seeded_share() -> None:
    chosen = malicious_partitions(20, 0.45, seed=0)
    assert len(chosen) == 9 and chosen == sorted(set(chosen))
    assert chosen == malicious_partitions(20, 0.45, seed=0)
    assert chosen != malicious_partitions(20, 0.45, seed=1)
    assert AttackSpec(kind="random", fraction=0.0).malicious(20, 0) == []
    assert AttackSpec(kind=None, fraction=0.0).malicious(20, 0) == []


def test_label_poisoning() -> None:
    np.testing.assert_array_equal(flip_labels(np.array([0, 1, 9]), 10), [9, 8, 0])
    labels = np.array([0, 1, 9])
    np.testing.assert_array_equal(
        poison_labels(labels, "label_flip", num_classes=10, target=3), [9, 8, 0]
    )
    np.testing.assert_array_equal(
        poison_labels(labels, "targeted", num_classes=10, target=3), [3, 3, 3]
    )
    with pytest.raises(ConfigError):
        poison_labels(labels, "random", num_classes=10, target=0)
    with pytest.raises(ConfigError, match=r"attack\.target=10"):
        AttackSpec(kind="targeted", fraction=0.2, target=10).check_classes(10)
    AttackSpec(kind="targeted", fraction=0.2, target=9).check_classes(10)


def test_poisoned_probabilities() -> None:
    rng = np.random.default_rng(0)
    probs = np.array([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8]])
    flipped = poison_probs(probs, "sign_flip", scale=10.0, rng=rng)
    np.testing.assert_allclose(flipped.sum(axis=1), 1.0, rtol=1e-6)
    assert flipped.argmax(axis=1).tolist() == probs.argmin(axis=1).tolist()
    random = poison_probs(probs, "random", scale=10.0, rng=rng)
    assert random.shape == probs.shape and (random >= 0).all()
    np.testing.assert_allclose(random.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(poison_probs(probs, "scale", scale=10.0, rng=rng), probs * 10)
    np.testing.assert_allclose(poison_probs(probs, "label_flip", scale=10.0, rng=rng), probs)
    targeted = poison_probs(probs, "targeted", scale=10.0, rng=rng, target=1)
    np.testing.assert_array_equal(targeted, [[0, 1, 0], [0, 1, 0]])
    with pytest.raises(ConfigError):
        poison_probs(probs, "nope", scale=1.0, rng=rng)


def test_poisoned_weights_act_on_the_update() -> None:
    rng = np.random.default_rng(0)
    start = {"w": np.array([1.0, 1.0], np.float32), "steps": np.array([3])}
    trained = {"w": np.array([1.5, 0.0], np.float32), "steps": np.array([4])}
    scaled = poison_weights(trained, start, "scale", scale=10.0, rng=rng)
    np.testing.assert_allclose(scaled["w"], [6.0, -9.0])  # 1 + 10 * (0.5, -1)
    assert scaled["w"].dtype == np.float32
    np.testing.assert_array_equal(scaled["steps"], [4])  # counters untouched
    flipped = poison_weights(trained, start, "sign_flip", scale=10.0, rng=rng)
    np.testing.assert_allclose(flipped["w"], [0.5, 2.0])  # 1 - (0.5, -1)
    np.testing.assert_allclose(
        poison_weights(trained, None, "sign_flip", scale=1, rng=rng)["w"], [-1.5, 0.0]
    )
    noise = poison_weights(trained, start, "random", scale=10.0, rng=rng)
    assert noise["w"].shape == (2,) and not np.allclose(noise["w"], trained["w"])
    np.testing.assert_allclose(
        poison_weights(trained, start, "label_flip", scale=1, rng=rng)["w"], trained["w"]
    )
