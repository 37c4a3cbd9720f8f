"""Tests for fedkd.distill.losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fedkd.distill import LOSS_NAMES, KDLoss, build_loss
from fedkd.errors import ConfigError


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _hand_kd(
    student: list[float], teacher: list[float], t: float, alpha: float, label: int | None
) -> float:
    p_t = _softmax([math.log(p) / t for p in teacher])
    q_t = _softmax([s / t for s in student])
    kl = sum(p * (math.log(p) - math.log(q)) for p, q in zip(p_t, q_t, strict=True))
    if label is None:
        return t * t * kl
    ce = -math.log(_softmax(student)[label])
    return alpha * t * t * kl + (1 - alpha) * ce


STUDENT = [[1.0, 2.0, 3.0]]
TEACHER = [[0.2, 0.3, 0.5]]


def test_kd_hand_value_with_labels() -> None:
    loss = KDLoss(temperature=2.0, alpha=0.5)
    got = loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor([2]))
    # Explicit numbers for this case: p_T ∝ sqrt(p), q_T = softmax([0.5, 1, 1.5]).
    p_t = [math.sqrt(p) / sum(math.sqrt(v) for v in TEACHER[0]) for p in TEACHER[0]]
    z = math.exp(0.5) + math.exp(1.0) + math.exp(1.5)
    q_t = [math.exp(0.5) / z, math.exp(1.0) / z, math.exp(1.5) / z]
    kl = sum(p * math.log(p / q) for p, q in zip(p_t, q_t, strict=True))
    ce = math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3.0
    expected = 0.5 * 4.0 * kl + 0.5 * ce
    assert float(got) == pytest.approx(expected, abs=1e-5)
    assert float(got) == pytest.approx(_hand_kd(STUDENT[0], TEACHER[0], 2.0, 0.5, 2), abs=1e-5)


def test_kd_batchmean_over_rows() -> None:
    student = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
    teacher = [[0.2, 0.3, 0.5], [0.7, 0.1, 0.2]]
    loss = KDLoss(temperature=3.0, alpha=0.25)
    got = loss(torch.tensor(student), torch.tensor(teacher), torch.tensor([2, 1]))
    expected = sum(
        _hand_kd(s, t, 3.0, 0.25, y) for s, t, y in zip(student, teacher, [2, 1], strict=True)
    )
    assert float(got) == pytest.approx(expected / 2, abs=1e-5)


def test_kd_t_squared_scaling() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    for temp in (1.0, 2.0, 4.0):
        got = float(KDLoss(temperature=temp)(s, t))
        p_t = _softmax([math.log(p) / temp for p in TEACHER[0]])
        q_t = _softmax([v / temp for v in STUDENT[0]])
        kl = sum(p * math.log(p / q) for p, q in zip(p_t, q_t, strict=True))
        assert got == pytest.approx(temp**2 * kl, abs=1e-5)


def test_kd_labels_none_uses_full_soft_weight() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    half = KDLoss(temperature=2.0, alpha=0.3)
    full = KDLoss(temperature=2.0, alpha=1.0)
    assert float(half(s, t)) == pytest.approx(float(full(s, t)), abs=1e-7)
    assert float(half(s, t)) == pytest.approx(_hand_kd(STUDENT[0], TEACHER[0], 2.0, 0.3, None))
    # alpha = 0 with labels is pure cross-entropy.
    ce = math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 1.0
    assert float(KDLoss(alpha=0.0)(s, t, torch.tensor([0]))) == pytest.approx(ce, abs=1e-5)


def test_kd_identical_distributions_zero() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    probs = torch.softmax(logits, dim=1)
    for temp in (1.0, 5.0):
        assert float(KDLoss(temperature=temp)(logits, probs)) == pytest.approx(0.0, abs=1e-6)


def test_kd_gradient_flows_to_student_only() -> None:
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(TEACHER, requires_grad=True)
    KDLoss(temperature=2.0)(s, t).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(temperature: float) -> None:
    with pytest.raises(ConfigError, match=r"distill\.temperature"):
        KDLoss(temperature=temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.1, float("nan")])
def test_bad_alpha(alpha: float) -> None:
    with pytest.raises(ConfigError, match=r"distill\.alpha.*\[0, 1\]"):
        KDLoss(alpha=alpha)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="equal shapes"):
        KDLoss()(torch.zeros(2, 3), torch.full((2, 4), 0.25))


def test_build_loss_registry() -> None:
    assert LOSS_NAMES == ("kd",)
    loss = build_loss("kd", temperature=3.0, alpha=1.0)
    assert isinstance(loss, KDLoss)
    assert (loss.temperature, loss.alpha) == (3.0, 1.0)
    with pytest.raises(ConfigError, match=r"distill\.name.*'kd'"):
        build_loss("mse")
    with pytest.raises(ConfigError, match=r"distill\.temprature.*allowed options"):
        build_loss("kd", temprature=3.0)
    with pytest.raises(ConfigError, match=r"distill\.temperature"):
        build_loss("kd", temperature=-2.0)
