"""Class prototypes, their count-weighted aggregation and prototype-regularized training,
checked against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkd.models import MLP
from fedkd.prototypes import aggregate_prototypes, class_prototypes, train_with_prototypes
from fedkd.setup import TrainSettings
from fedkd.train import train_local

# A linear model (hidden=[]): the embedding is the flattened input, logits = x W^T + b.
W = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
B = np.array([0.0, 0.5, -0.5])
X = np.array([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0], [2.0, 2.0]], dtype=np.float32)
Y = np.array([0, 0, 1, 2])


def _linear_model() -> MLP:
    model = MLP(input_shape=(2,), num_classes=3, hidden=[])
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor(W, dtype=torch.float32))
        model.head.bias.copy_(torch.tensor(B, dtype=torch.float32))
    return model


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_class_prototypes_are_per_class_means() -> None:
    model = _linear_model()
    y = np.array([0, 0, 1, 1])  # class 2 absent
    prototypes, soft, counts = class_prototypes(model, X, y, num_classes=3, batch_size=3)
    np.testing.assert_allclose(prototypes, [[2.0, 1.0], [1.0, 1.5], [0.0, 0.0]], atol=1e-6)
    probs = _softmax(X.astype(np.float64) @ W.T + B)
    np.testing.assert_allclose(soft[0], (probs[0] + probs[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(soft[1], (probs[2] + probs[3]) / 2, atol=1e-6)
    np.testing.assert_array_equal(soft[2], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(counts, [2.0, 2.0, 0.0])
    assert prototypes.dtype == soft.dtype == counts.dtype == np.float32
    assert model.training  # mode restored


def test_aggregate_prototypes_weights_by_counts() -> None:
    # 2 clients, 3 classes, D = 2; class 1 only at client 1, class 2 nowhere
    prototypes = np.array(
        [[[1.0, 0.0], [9.0, 9.0], [0.0, 0.0]], [[3.0, 4.0], [2.0, 1.0], [0.0, 0.0]]]
    )
    soft = np.array(
        [
            [[1.0, 0.0, 0.0], [0.3, 0.3, 0.4], [0.0, 0.0, 0.0]],
            [[0.6, 0.4, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    counts = np.array([[1.0, 0.0, 0.0], [3.0, 5.0, 0.0]])
    global_prototypes, global_soft, global_counts = aggregate_prototypes(prototypes, soft, counts)
    # class 0: (1*[1,0] + 3*[3,4]) / 4 = [2.5, 3]; class 1: client 1 only (client 0's row
    # has count 0 and must not leak in); class 2: nobody -> zeros
    np.testing.assert_allclose(global_prototypes, [[2.5, 3.0], [2.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(global_soft[0], [(1.0 + 1.8) / 4, 1.2 / 4, 0.0])
    np.testing.assert_allclose(global_soft[1], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(global_soft[2], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(global_counts, [4.0, 5.0, 0.0])


def test_aggregate_prototypes_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="counts"):
        aggregate_prototypes(np.zeros((2, 3, 4)), np.zeros((2, 3, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="soft"):
        aggregate_prototypes(np.zeros((2, 3, 4)), np.zeros((2, 3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=">= 0"):
        aggregate_prototypes(np.zeros((1, 3, 4)), np.zeros((1, 3, 3)), -np.ones((1, 3)))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_first_batch_loss_is_ce_plus_prototype_and_soft_terms(temperature: float) -> None:
    """One epoch with one full batch reports the loss before the step: compare it with
    CE + lambda * mean ||x - P[y]||^2 + gamma T^2 mean KL, computed with numpy; class 2 has
    no global prototype, so its example enters the CE only."""
    prototypes = np.array([[1.0, 1.0], [0.0, 0.0], [5.0, 5.0]])
    soft = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.0, 0.0, 0.0]])
    counts = np.array([4.0, 1.0, 0.0])
    proto_weight, soft_weight = 0.3, 0.7
    loss = train_with_prototypes(
        _linear_model(),
        X,
        Y,
        prototypes=prototypes.astype(np.float32),
        soft=soft.astype(np.float32),
        counts=counts.astype(np.float32),
        proto_weight=proto_weight,
        soft_weight=soft_weight,
        temperature=temperature,
        settings=TrainSettings(epochs=1, batch_size=len(Y), lr=0.1),
    )
    x = X.astype(np.float64)
    logits = x @ W.T + B
    ce = -np.log(_softmax(logits)[np.arange(4), Y]).mean()
    matched = [0, 1, 2]  # examples whose class has a prototype
    distance = np.mean([((x[i] - prototypes[Y[i]]) ** 2).mean() for i in matched])
    kl = []
    for i in matched:
        target = _softmax(np.log(soft[Y[i]]) / temperature)
        q = _softmax(logits[i] / temperature)
        kl.append((target * np.log(target / q)).sum())
    expected = ce + proto_weight * distance + soft_weight * temperature**2 * np.mean(kl)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_zero_weights_reproduce_plain_local_training() -> None:
    """With both weights at 0 the loss is CE with the same seeded shuffling: same result as
    fedkd.train.train_local, an independent route."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    settings = TrainSettings(epochs=2, batch_size=8, lr=0.05, optimizer="sgd", momentum=0.9)
    a = MLP(input_shape=(5,), num_classes=3, hidden=[6])
    b = MLP(input_shape=(5,), num_classes=3, hidden=[6])
    b.load_state_dict(a.state_dict())
    loss = train_with_prototypes(
        a,
        x,
        y,
        prototypes=np.ones((3, 6), dtype=np.float32),
        soft=np.full((3, 3), 1 / 3, dtype=np.float32),
        counts=np.ones(3, dtype=np.float32),
        proto_weight=0.0,
        soft_weight=0.0,
        settings=settings,
        seed=7,
    )
    report = train_local(b, x, y, settings=settings, seed=7)
    assert loss == pytest.approx(report.loss, rel=1e-6)
    for name, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[name])


def test_proto_weight_pulls_embeddings_toward_prototypes() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=60)
    prototypes = rng.uniform(0.5, 1.5, size=(3, 8)).astype(np.float32)
    counts = np.array([10.0, 10.0, 10.0], dtype=np.float32)
    soft = np.full((3, 3), 1 / 3, dtype=np.float32)
    start = MLP(input_shape=(4,), num_classes=3, hidden=[8]).state_dict()

    def distance_after(proto_weight: float) -> float:
        model = MLP(input_shape=(4,), num_classes=3, hidden=[8])
        model.load_state_dict(start)
        train_with_prototypes(
            model,
            x,
            y,
            prototypes=prototypes,
            soft=soft,
            counts=counts,
            proto_weight=proto_weight,
            settings=TrainSettings(epochs=5, batch_size=16, lr=0.05),
            seed=3,
        )
        embeddings, _, _ = class_prototypes(model, x, y, num_classes=3)
        return float(((embeddings - prototypes) ** 2).sum(axis=1).mean())

    assert distance_after(8.0) < 0.5 * distance_after(0.0)  # 8 = D: the summed-distance pull


def test_train_with_prototypes_rejects_mismatched_shapes() -> None:
    kwargs = dict(settings=TrainSettings(epochs=1, batch_size=4, lr=0.1), proto_weight=1.0)
    good = dict(
        prototypes=np.zeros((3, 2), dtype=np.float32),
        soft=np.zeros((3, 3), dtype=np.float32),
        counts=np.ones(3, dtype=np.float32),
    )
    with pytest.raises(ValueError, match="counts"):
        train_with_prototypes(_linear_model(), X, Y, **{**good, "counts": np.ones(2)}, **kwargs)
    with pytest.raises(ValueError, match="width"):
        train_with_prototypes(
            _linear_model(), X, Y, **{**good, "prototypes": np.zeros((3, 5))}, **kwargs
        )
    with pytest.raises(ValueError, match="proto_weight"):
        train_with_prototypes(_linear_model(), X, Y, **good, **{**kwargs, "proto_weight": -1.0})
