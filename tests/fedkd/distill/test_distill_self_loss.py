"""Tests for the BYOT self-distillation loss against hand-computed values."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from fedkd.distill.losses import DistillInputs, SelfDistillLoss, build_loss
from fedkd.errors import ConfigError
from fedkd.models import build_model

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _kl(p_logits: np.ndarray, q_logits: np.ndarray, t: float) -> float:
    """T^2 * mean_b KL(softmax(p / T) || softmax(q / T))."""
    log_p, log_q = _log_softmax(p_logits / t), _log_softmax(q_logits / t)
    return float(t * t * (np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean())


def _ce(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(-_log_softmax(logits)[np.arange(len(labels)), labels].mean())


RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(2, 3))
HIDDEN1 = RNG.normal(size=(2, 2))
HIDDEN2 = RNG.normal(size=(2, 2, 2, 2))  # a (B, C, H, W) map: its head sees channel means
EMBEDDING = RNG.normal(size=(2, 3))
LABELS = np.array([2, 0])
TEACHER = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
HEAD_W = {"hidden1": RNG.normal(size=(3, 2)), "hidden2": RNG.normal(size=(3, 2))}
HEAD_B = {"hidden1": RNG.normal(size=3), "hidden2": RNG.normal(size=3)}
ADAPT_W = {"hidden1": RNG.normal(size=(3, 2)), "hidden2": RNG.normal(size=(3, 2))}
ADAPT_B = {"hidden1": RNG.normal(size=3), "hidden2": RNG.normal(size=3)}
POOLED = {"hidden1": HIDDEN1, "hidden2": HIDDEN2.mean(axis=(2, 3))}
SHAPES = {"hidden1": "2", "hidden2": "2x2x2"}


def _tensor(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32, requires_grad=grad)


def _inputs(*, teacher: bool, labels: bool, grad: bool = False) -> DistillInputs:
    return DistillInputs(
        student_logits=_tensor(LOGITS, grad),
        teacher_probs=_tensor(TEACHER) if teacher else None,
        labels=torch.tensor(LABELS) if labels else None,
        student_features={
            "hidden1": _tensor(HIDDEN1, grad),
            "hidden2": _tensor(HIDDEN2, grad),
            "embedding": _tensor(EMBEDDING, grad),
        },
    )


def _bound(loss: SelfDistillLoss, inputs: DistillInputs) -> SelfDistillLoss:
    loss.bind(inputs)
    with torch.no_grad():
        for layer in ("hidden1", "hidden2"):
            head = loss.heads[f"{layer}:{SHAPES[layer]}->3"]
            head.weight.copy_(_tensor(HEAD_W[layer]))
            head.bias.copy_(_tensor(HEAD_B[layer]))
            key = f"{layer}:{SHAPES[layer]}->embedding:3"
            if key in loss.adapters:
                loss.adapters[key].weight.copy_(_tensor(ADAPT_W[layer]))
                loss.adapters[key].bias.copy_(_tensor(ADAPT_B[layer]))
    return loss


def _exits() -> dict[str, np.ndarray]:
    return {k: POOLED[k] @ HEAD_W[k].T + HEAD_B[k] for k in ("hidden1", "hidden2")}


def _hand(
    *,
    t: float,
    alpha: float,
    exit_weight: float,
    feature_weight: float,
    main_alpha: float,
    teacher: bool,
    labels: bool,
) -> float:
    if teacher:
        soft = _kl(np.log(TEACHER), LOGITS, t)
        final = main_alpha * soft + (1 - main_alpha) * _ce(LOGITS, LABELS) if labels else soft
    else:
        final = _ce(LOGITS, LABELS)
    exit_terms = []
    for exit_logits in _exits().values():
        soft = _kl(LOGITS, exit_logits, t)
        exit_terms.append(alpha * soft + (1 - alpha) * _ce(exit_logits, LABELS) if labels else soft)
    hints = [
        (((POOLED[k] @ ADAPT_W[k].T + ADAPT_B[k]) - EMBEDDING) ** 2).mean()
        for k in ("hidden1", "hidden2")
    ]
    return final + exit_weight * np.mean(exit_terms) + feature_weight * float(np.mean(hints))


@pytest.mark.parametrize(("teacher", "labels"), [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize(
    ("t", "alpha", "main_alpha"), [(3.0, 0.5, 1.0), (1.0, 0.0, 0.3), (2.0, 1.0, 0.0)]
)
def test_self_hand_values(
    teacher: bool, labels: bool, t: float, alpha: float, main_alpha: float
) -> None:
    loss = SelfDistillLoss(
        temperature=t, alpha=alpha, main_alpha=main_alpha, exit_weight=0.7, feature_weight=0.4
    )
    inputs = _inputs(teacher=teacher, labels=labels)
    _bound(loss, inputs)
    expected = _hand(
        t=t,
        alpha=alpha,
        main_alpha=main_alpha,
        exit_weight=0.7,
        feature_weight=0.4,
        teacher=teacher,
        labels=labels,
    )
    assert float(loss(inputs)) == pytest.approx(expected, rel=1e-5)


def test_self_exit_logits_pool_maps() -> None:
    loss = _bound(SelfDistillLoss(), _inputs(teacher=False, labels=True))
    exits = loss.exit_logits(_inputs(teacher=False, labels=True).student_features)
    assert list(exits) == ["hidden1", "hidden2"]
    for layer, expected in _exits().items():
        np.testing.assert_allclose(exits[layer].detach().numpy(), expected, rtol=1e-5)
    assert len(loss.adapters) == 0  # feature_weight = 0 creates no hint adapters


def test_self_exits_learn_from_final_not_the_reverse() -> None:
    loss = _bound(
        SelfDistillLoss(exit_weight=2.0, feature_weight=1.0), _inputs(teacher=False, labels=True)
    )
    inputs = _inputs(teacher=False, labels=True, grad=True)
    loss(inputs).backward()
    # Only CE(final, y) reaches the final logits: (softmax(s) - onehot(y)) / B.
    expected = (np.exp(_log_softmax(LOGITS)) - np.eye(3)[LABELS]) / 2
    assert inputs.student_logits.grad is not None
    np.testing.assert_allclose(inputs.student_logits.grad.numpy(), expected, atol=1e-6)
    # The embedding is the hint's target, a constant.
    assert inputs.student_features["embedding"].grad is None
    assert inputs.student_features["hidden1"].grad is not None
    for module in [*loss.heads.values(), *loss.adapters.values()]:
        assert module.weight.grad is not None and float(module.weight.grad.abs().sum()) > 0


def test_self_t_squared_scaling_of_the_exit_soft_term() -> None:
    inputs = _inputs(teacher=False, labels=True)
    ce = _ce(LOGITS, LABELS)
    for t in (1.0, 2.0, 4.0):
        loss = _bound(SelfDistillLoss(temperature=t, alpha=1.0), inputs)
        soft = [_kl(LOGITS, e, t) for e in _exits().values()]
        assert float(loss(inputs)) == pytest.approx(ce + np.mean(soft), rel=1e-5)


def test_self_on_real_models_and_second_bind_keeps_first_heads() -> None:
    x = torch.randn(4, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 1])
    mlp = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=0, hidden=[8, 6])
    cnn = build_model("cnn", input_shape=(1, 8, 8), num_classes=3, seed=0, channels=[4])
    loss = build_loss("self", feature_weight=0.5)
    loss.check_layers(mlp.feature_names, None)  # needs no teacher models
    assert not loss.needs_teacher_features and not loss.needs_teacher_probs
    logits, features = mlp.forward_features(x)
    loss.bind(DistillInputs(logits, None, labels, features))
    first = dict(loss.heads)
    assert sorted(first) == ["hidden1:8->3", "hidden2:6->3"]
    assert sorted(loss.adapters) == ["hidden1:8->embedding:6", "hidden2:6->embedding:6"]
    c_logits, c_features = cnn.forward_features(x)
    loss.bind(DistillInputs(c_logits, None, labels, c_features))
    assert sorted(loss.heads) == ["conv1:4x4x4->3", "hidden1:8->3", "hidden2:6->3"]
    assert all(loss.heads[k] is v for k, v in first.items())
    assert loss.exit_logits(c_features)["conv1"].shape == (4, 3)
    value = loss(DistillInputs(c_logits, None, labels, c_features))
    value.backward()
    assert cnn.blocks[0][0].weight.grad is not None


def test_self_needs_an_exit_layer() -> None:
    linear = build_model("mlp", input_shape=(4,), num_classes=3, hidden=[])
    assert linear.feature_names == ("embedding",)
    with pytest.raises(ConfigError, match=r"distill\.layers.*exit layer.*\['embedding'\]"):
        SelfDistillLoss().check_layers(linear.feature_names, None)
    logits, features = linear.forward_features(torch.randn(2, 4))
    with pytest.raises(ConfigError, match=r"distill\.layers"):
        SelfDistillLoss().bind(DistillInputs(logits, None, torch.tensor([0, 1]), features))
    with pytest.raises(ConfigError, match=r"distill\.layers.*'conv3'.*'hidden1'"):
        SelfDistillLoss(layers=["conv3"]).check_layers(("hidden1", "embedding"), None)
    only_first = SelfDistillLoss(layers=["hidden1"])
    only_first.bind(_inputs(teacher=False, labels=True))
    assert list(only_first.heads) == ["hidden1:2->3"]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
        ({"main_alpha": -0.1}, "main_alpha"),
        ({"exit_weight": -1.0}, "exit_weight"),
        ({"feature_weight": float("nan")}, "feature_weight"),
        ({"layers": "hidden1"}, "layers"),
        ({"layers": []}, "layers"),
    ],
)
def test_self_bad_options_name_their_key(options: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"distill\.{key}"):
        SelfDistillLoss(**options)


def test_self_needs_labels_or_teacher_and_a_bind() -> None:
    inputs = _inputs(teacher=False, labels=False)
    loss = _bound(SelfDistillLoss(), _inputs(teacher=False, labels=True))
    with pytest.raises(ValueError, match="teacher_probs or labels"):
        loss(inputs)
    with pytest.raises(RuntimeError, match="bind"):
        SelfDistillLoss()(_inputs(teacher=False, labels=True))


def test_self_warns_when_exits_are_never_trained(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        SelfDistillLoss(exit_weight=0.0)
    assert "exit_weight" in caplog.text
