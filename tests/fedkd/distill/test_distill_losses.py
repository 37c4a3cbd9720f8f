"""Tests for fedkd.distill.losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fedkd.distill import LOSS_NAMES, KDLoss, build_loss
from fedkd.distill.losses import DistillInputs
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


def _kd(
    loss: KDLoss,
    logits: torch.Tensor,
    probs: torch.Tensor | None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    return loss(DistillInputs(student_logits=logits, teacher_probs=probs, labels=labels))


STUDENT = [[1.0, 2.0, 3.0]]
TEACHER = [[0.2, 0.3, 0.5]]


def test_kd_hand_value_with_labels() -> None:
    loss = KDLoss(temperature=2.0, alpha=0.5)
    got = _kd(loss, torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor([2]))
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
    got = _kd(loss, torch.tensor(student), torch.tensor(teacher), torch.tensor([2, 1]))
    expected = sum(
        _hand_kd(s, t, 3.0, 0.25, y) for s, t, y in zip(student, teacher, [2, 1], strict=True)
    )
    assert float(got) == pytest.approx(expected / 2, abs=1e-5)


def test_kd_t_squared_scaling() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    for temp in (1.0, 2.0, 4.0):
        got = float(_kd(KDLoss(temperature=temp), s, t))
        p_t = _softmax([math.log(p) / temp for p in TEACHER[0]])
        q_t = _softmax([v / temp for v in STUDENT[0]])
        kl = sum(p * math.log(p / q) for p, q in zip(p_t, q_t, strict=True))
        assert got == pytest.approx(temp**2 * kl, abs=1e-5)


def test_kd_labels_none_uses_full_soft_weight() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    half = KDLoss(temperature=2.0, alpha=0.3)
    full = KDLoss(temperature=2.0, alpha=1.0)
    assert float(_kd(half, s, t)) == pytest.approx(float(_kd(full, s, t)), abs=1e-7)
    assert float(_kd(half, s, t)) == pytest.approx(_hand_kd(STUDENT[0], TEACHER[0], 2.0, 0.3, None))
    # alpha = 0 with labels is pure cross-entropy.
    ce = math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 1.0
    assert float(_kd(KDLoss(alpha=0.0), s, t, torch.tensor([0]))) == pytest.approx(ce, abs=1e-5)


def test_kd_identical_distributions_zero() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    probs = torch.softmax(logits, dim=1)
    for temp in (1.0, 5.0):
        assert float(_kd(KDLoss(temperature=temp), logits, probs)) == pytest.approx(0.0, abs=1e-6)


def test_kd_gradient_flows_to_student_only() -> None:
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(TEACHER, requires_grad=True)
    _kd(KDLoss(temperature=2.0), s, t).backward()
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
        _kd(KDLoss(), torch.zeros(2, 3), torch.full((2, 4), 0.25))


def test_build_loss_registry() -> None:
    assert LOSS_NAMES == ("kd", "hint", "feature", "attention", "self", "combo")
    loss = build_loss("kd", temperature=3.0, alpha=1.0)
    assert isinstance(loss, KDLoss)
    assert (loss.temperature, loss.alpha) == (3.0, 1.0)
    with pytest.raises(ConfigError, match=r"distill\.name.*'kd'"):
        build_loss("mse")
    with pytest.raises(ConfigError, match=r"distill\.temprature.*allowed options"):
        build_loss("kd", temprature=3.0)
    with pytest.raises(ConfigError, match=r"distill\.temperature"):
        build_loss("kd", temperature=-2.0)


def _centred(values: list[float]) -> list[float]:
    mean = sum(values) / len(values)
    return [v - mean for v in values]


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_mse_and_mae_soft_terms_hand_values(temperature: float) -> None:
    student = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
    teacher = [[0.2, 0.3, 0.5], [0.7, 0.1, 0.2]]
    diffs = [
        a - b
        for s, p in zip(student, teacher, strict=True)
        for a, b in zip(_centred(s), _centred([math.log(v + 1e-8) for v in p]), strict=True)
    ]
    # (d / T)^2 * T^2 = d^2 and |d / T| * T^2 = |d| * T, averaged over the 6 entries.
    mse = sum(d * d for d in diffs) / 6
    mae = sum(abs(d) for d in diffs) / 6 * temperature
    s, t = torch.tensor(student), torch.tensor(teacher)
    got_mse = _kd(KDLoss(temperature=temperature, soft_loss="mse"), s, t)
    got_mae = _kd(KDLoss(temperature=temperature, soft_loss="mae"), s, t)
    assert float(got_mse) == pytest.approx(mse, abs=1e-5)
    assert float(got_mae) == pytest.approx(mae, abs=1e-5)
    # Mixed with labels by alpha like the KL term.
    ce = sum(-math.log(_softmax(row)[y]) for row, y in zip(student, [2, 0], strict=True)) / 2
    mixed = _kd(
        KDLoss(temperature=temperature, soft_loss="mse", alpha=0.25), s, t, torch.tensor([2, 0])
    )
    assert float(mixed) == pytest.approx(0.25 * mse + 0.75 * ce, abs=1e-5)


def test_kd_alpha_one_ignores_labels_and_teacher_none_is_cross_entropy() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    soft_only = _kd(KDLoss(temperature=2.0, alpha=1.0), s, t, torch.tensor([0]))
    assert float(soft_only) == pytest.approx(_hand_kd(STUDENT[0], TEACHER[0], 2.0, 1.0, None))
    ce = math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 2.0
    assert float(_kd(KDLoss(), s, None, torch.tensor([1]))) == pytest.approx(ce, abs=1e-6)
    with pytest.raises(ValueError, match="teacher_probs or labels"):
        _kd(KDLoss(), s, None)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kd_gradient_is_t_times_probability_gap_over_batch(temperature: float) -> None:
    student = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
    teacher = [[0.2, 0.3, 0.5], [0.7, 0.1, 0.2]]
    s = torch.tensor(student, requires_grad=True)
    (grad,) = torch.autograd.grad(
        _kd(KDLoss(temperature=temperature, eps=0.0), s, torch.tensor(teacher)), s
    )
    # d/ds [T^2 KL(p_T || q_T)] / B = T^2 * (q_T - p_T) / T / B = T (q_T - p_T) / B.
    for row, (srow, prow) in enumerate(zip(student, teacher, strict=True)):
        q_t = _softmax([v / temperature for v in srow])
        p_t = _softmax([math.log(v) / temperature for v in prow])
        expected = [temperature * (q - p) / 2 for q, p in zip(q_t, p_t, strict=True)]
        assert grad[row].tolist() == pytest.approx(expected, abs=1e-6)


def test_kd_linear_schedule_of_temperature_and_alpha() -> None:
    loss = KDLoss(temperature=1.0, temperature_end=3.0, alpha=1.0, alpha_end=0.5)
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor([2])
    assert (loss.temperature, loss.alpha) == (1.0, 1.0)
    for fraction, temp, alpha in [(0.0, 1.0, 1.0), (0.5, 2.0, 0.75), (1.0, 3.0, 0.5)]:
        loss.set_progress(fraction)
        assert (loss.temperature, loss.alpha) == pytest.approx((temp, alpha))
        expected = _hand_kd(STUDENT[0], TEACHER[0], temp, alpha, 2)
        assert float(_kd(loss, s, t, y)) == pytest.approx(expected, abs=1e-5)


def test_kd_cosine_schedule_of_temperature_and_alpha() -> None:
    loss = KDLoss(temperature=1.0, temperature_end=3.0, alpha=1.0, alpha_end=0.5, schedule="cosine")
    # Half a cosine: f(x) = (1 - cos(pi x)) / 2, so f(0.25) = (1 - sqrt(2)/2) / 2.
    f_quarter = (1 - math.sqrt(2) / 2) / 2
    for fraction, f in [(0.0, 0.0), (0.25, f_quarter), (0.5, 0.5), (1.0, 1.0)]:
        loss.set_progress(fraction)
        assert loss.temperature == pytest.approx(1.0 + 2.0 * f)
        assert loss.alpha == pytest.approx(1.0 - 0.5 * f)
    loss.set_progress(0.25)
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor([0])
    expected = _hand_kd(STUDENT[0], TEACHER[0], 1.0 + 2.0 * f_quarter, 1.0 - 0.5 * f_quarter, 0)
    assert float(_kd(loss, s, t, y)) == pytest.approx(expected, abs=1e-5)


def test_kd_bad_options_name_their_keys() -> None:
    with pytest.raises(ConfigError, match=r"distill\.soft_loss"):
        KDLoss(soft_loss="l2")
    with pytest.raises(ConfigError, match=r"distill\.schedule"):
        KDLoss(schedule="step")
    with pytest.raises(ConfigError, match=r"distill\.temperature_end"):
        KDLoss(temperature_end=0.0)
