"""Tests for the feature losses (hint, feature, attention) and combo against hand values."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from fedkd.distill.losses import (
    FEATURE_LOSSES,
    LOSSES,
    AttentionLoss,
    DistillInputs,
    FeatureLoss,
    HintLoss,
    KDLoss,
    SoftTargetPaired,
    WeightedSumLoss,
    build_loss,
    loss_options,
)
from fedkd.distill.losses.paired import PAIRING_OPTIONS
from fedkd.errors import ConfigError
from fedkd.models import build_model

# Losses with learned adapters return tensors that require grad; float() of them is fine here.
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "distill"


def _inputs(
    student: dict[str, torch.Tensor],
    teachers: list[dict[str, torch.Tensor]],
    *,
    logits: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> DistillInputs:
    batch = next(iter(student.values())).shape[0]
    return DistillInputs(
        student_logits=torch.zeros(batch, 3) if logits is None else logits,
        teacher_probs=probs,
        labels=labels,
        student_features=student,
        teacher_features=teachers,
    )


def _set_linear(module: torch.nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
    with torch.no_grad():
        module.weight.copy_(torch.tensor(weight, dtype=torch.float32).reshape(module.weight.shape))
        module.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def _pair(
    student_layer: str, student: np.ndarray, teacher_layer: str, teacher: np.ndarray
) -> DistillInputs:
    """Inputs with one student and one teacher feature, given as arrays (float32 tensors)."""
    return _inputs(
        {student_layer: torch.tensor(student, dtype=torch.float32)},
        [{teacher_layer: torch.tensor(teacher, dtype=torch.float32)}],
    )


def _bound_hint(
    student_layer: str, student: np.ndarray, teacher_layer: str, teacher: np.ndarray
) -> tuple[HintLoss, DistillInputs]:
    """A HintLoss from ``student_layer`` to ``teacher_layer`` bound to :func:`_pair` inputs of
    those features; the loss and its inputs."""
    loss = HintLoss(student_layer=student_layer, teacher_layer=teacher_layer)
    inputs = _pair(student_layer, student, teacher_layer, teacher)
    loss.bind(inputs)
    return loss, inputs


def _huber(d: np.ndarray) -> np.ndarray:
    a = np.abs(d)
    return np.where(a < 1.0, 0.5 * d * d, a - 0.5)


# ---------------------------------------------------------------- hint (FitNets)

S_VEC = np.array([[1.0, -2.0], [0.5, 3.0]])
T_VEC = np.array([[0.0, 1.0, 2.0], [-1.0, 0.5, 1.5]])
W_23 = np.array([[0.5, -1.0], [2.0, 0.0], [1.0, 1.0]])
B_3 = np.array([0.1, -0.2, 0.3])


def test_hint_vector_hand_value_and_gradients() -> None:
    s = torch.tensor(S_VEC, dtype=torch.float32, requires_grad=True)
    t = torch.tensor(T_VEC, dtype=torch.float32)
    loss = HintLoss(student_layer="embedding", teacher_layer="embedding")
    inputs = _inputs({"embedding": s}, [{"embedding": t}])
    loss.bind(inputs)
    assert list(loss.adapters) == ["embedding:2->embedding:3"]
    adapter = loss.adapters["embedding:2->embedding:3"]
    _set_linear(adapter, W_23, B_3)
    value = loss(inputs)
    residual = S_VEC @ W_23.T + B_3 - T_VEC
    assert float(value.detach()) == pytest.approx(float((residual**2).mean()), abs=1e-6)
    grad_s, grad_w = torch.autograd.grad(value, [s, adapter.weight])
    # d mean(r^2) / d s = 2 r W / (B * D_t); / d W = 2 r^T s / (B * D_t).
    np.testing.assert_allclose(grad_s.numpy(), 2 * residual @ W_23 / 6, atol=1e-6)
    np.testing.assert_allclose(grad_w.numpy(), 2 * residual.T @ S_VEC / 6, atol=1e-6)


def test_hint_mlp_student_against_cnn_teacher_map_pools_the_map() -> None:
    rng = np.random.default_rng(0)
    s_np = rng.normal(size=(4, 5))
    t_np = rng.normal(size=(4, 7, 2, 2))
    w, b = rng.normal(size=(7, 5)), rng.normal(size=7)
    loss, inputs = _bound_hint("hidden1", s_np, "conv1", t_np)
    assert list(loss.adapters) == ["hidden1:5->conv1:7x2x2"]
    assert isinstance(loss.adapters["hidden1:5->conv1:7x2x2"], torch.nn.Linear)
    _set_linear(loss.adapters["hidden1:5->conv1:7x2x2"], w, b)
    expected = ((s_np @ w.T + b - t_np.mean(axis=(2, 3))) ** 2).mean()
    assert float(loss(inputs)) == pytest.approx(expected, rel=1e-5)


def test_hint_map_to_map_pools_student_then_1x1_conv() -> None:
    rng = np.random.default_rng(1)
    s_np = rng.normal(size=(2, 3, 4, 4))
    t_np = rng.normal(size=(2, 5, 2, 2))
    w, b = rng.normal(size=(5, 3)), rng.normal(size=5)
    loss, inputs = _bound_hint("conv1", s_np, "conv2", t_np)
    regressor = loss.adapters["conv1:3x4x4->conv2:5x2x2"]
    _set_linear(regressor[1], w, b)
    pooled = s_np.reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))  # 2x2 blocks -> 2x2 map
    regressed = np.einsum("oc,bchw->bohw", w, pooled) + b[None, :, None, None]
    expected = ((regressed - t_np) ** 2).mean()
    assert float(loss(inputs)) == pytest.approx(expected, rel=1e-5)


def test_hint_1d_maps_use_conv1d() -> None:
    loss = HintLoss(student_layer="conv1", teacher_layer="conv1")
    inputs = _inputs({"conv1": torch.ones(2, 3, 10)}, [{"conv1": torch.ones(2, 4, 5)}])
    loss.bind(inputs)
    regressor = loss.adapters["conv1:3x10->conv1:4x5"]
    assert isinstance(regressor[1], torch.nn.Conv1d)
    assert regressor(torch.ones(2, 3, 10)).shape == (2, 4, 5)


def test_hint_multi_teacher_average_and_second_bind_keeps_first_adapter() -> None:
    rng = np.random.default_rng(2)
    s_np = rng.normal(size=(3, 5))
    t1, t2 = rng.normal(size=(3, 7)), rng.normal(size=(3, 4, 2, 2))
    s = torch.tensor(s_np, dtype=torch.float32)
    teachers = [
        {"embedding": torch.tensor(t1, dtype=torch.float32)},
        {"embedding": torch.tensor(t2, dtype=torch.float32)},
    ]
    loss = HintLoss(student_layer="embedding", teacher_layer="embedding")
    loss.bind(_inputs({"embedding": s}, teachers[:1]))
    first = loss.adapters["embedding:5->embedding:7"]
    first_weight = first.weight.detach().clone()
    loss.bind(_inputs({"embedding": s}, teachers))
    assert sorted(loss.adapters) == ["embedding:5->embedding:4x2x2", "embedding:5->embedding:7"]
    assert loss.adapters["embedding:5->embedding:7"] is first
    assert torch.equal(first.weight, first_weight)
    w1, b1 = rng.normal(size=(7, 5)), rng.normal(size=7)
    w2, b2 = rng.normal(size=(4, 5)), rng.normal(size=4)
    _set_linear(first, w1, b1)
    _set_linear(loss.adapters["embedding:5->embedding:4x2x2"], w2, b2)
    mse1 = ((s_np @ w1.T + b1 - t1) ** 2).mean()
    mse2 = ((s_np @ w2.T + b2 - t2.mean(axis=(2, 3))) ** 2).mean()
    value = loss(_inputs({"embedding": s}, teachers))
    assert float(value) == pytest.approx((mse1 + mse2) / 2, rel=1e-5)
    value.backward()
    for adapter in loss.adapters.values():
        assert adapter.weight.grad is not None and float(adapter.weight.grad.abs().sum()) > 0


def test_hint_on_real_models_middle_layers_and_constant_teachers() -> None:
    x = torch.randn(4, 1, 8, 8)
    student = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=0, hidden=[16, 8])
    teacher = build_model("cnn", input_shape=(1, 8, 8), num_classes=3, seed=1)
    loss = build_loss("hint")
    loss.check_layers(student.feature_names, [teacher.feature_names])
    logits, features = student.forward_features(x)
    _, t_features = teacher.forward_features(x)  # with gradients: the loss must detach
    inputs = DistillInputs(logits, None, None, features, [t_features])
    loss.bind(inputs)
    # middle: hidden2 of (hidden1, hidden2, embedding), conv2 of (conv1, conv2, embedding).
    assert list(loss.adapters) == ["hidden2:8->conv2:32x2x2"]
    loss(inputs).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.layers[1].weight.grad is not None


def test_hint_check_layers_errors_name_key_and_layer() -> None:
    student, teacher = ("hidden1", "embedding"), ("conv1", "conv2", "embedding")
    HintLoss().check_layers(student, [teacher])
    with pytest.raises(ConfigError, match=r"distill\.student_layer.*'conv7'.*'hidden1'"):
        HintLoss(student_layer="conv7").check_layers(student, [teacher])
    with pytest.raises(ConfigError, match=r"distill\.teacher_layer.*'hidden3'.*'conv1'"):
        HintLoss(teacher_layer="hidden3").check_layers(student, [teacher, teacher])
    with pytest.raises(ConfigError, match=r"teacher_from=weights"):
        HintLoss().check_layers(student, None)
    with pytest.raises(ConfigError, match=r"distill\.student_layer"):
        HintLoss(student_layer=3)  # type: ignore[arg-type]


def test_hint_forward_before_bind_and_without_teachers() -> None:
    inputs = _inputs({"embedding": torch.ones(2, 3)}, [{"embedding": torch.ones(2, 4)}])
    with pytest.raises(RuntimeError, match=r"bind"):
        HintLoss()(inputs)
    with pytest.raises(ValueError, match="teacher_features"):
        HintLoss()(_inputs({"embedding": torch.ones(2, 3)}, []))


# ---------------------------------------------------------------- feature


def test_feature_mse_same_width_needs_no_adapter() -> None:
    loss = FeatureLoss()
    inputs = _inputs(
        {"embedding": torch.tensor([[1.0, 2.0], [0.0, -1.0]])},
        [{"embedding": torch.tensor([[0.0, 2.0], [1.0, 1.0]])}],
    )
    loss.bind(inputs)
    assert len(loss.adapters) == 0
    assert float(loss(inputs)) == pytest.approx((1 + 0 + 1 + 4) / 4)


def test_feature_mse_and_cosine_widths_5_to_7_with_adapter() -> None:
    rng = np.random.default_rng(3)
    s_np, t_np = rng.normal(size=(3, 5)), rng.normal(size=(3, 7))
    w, b = rng.normal(size=(7, 5)), rng.normal(size=7)
    s = torch.tensor(s_np, dtype=torch.float32, requires_grad=True)
    inputs = _inputs({"embedding": s}, [{"embedding": torch.tensor(t_np, dtype=torch.float32)}])
    adapted = s_np @ w.T + b
    cosines = (
        (adapted * t_np).sum(1) / np.linalg.norm(adapted, axis=1) / np.linalg.norm(t_np, axis=1)
    )
    for mode, expected in [
        ("mse", ((adapted - t_np) ** 2).mean()),
        ("cosine", (1 - cosines).mean()),
    ]:
        loss = FeatureLoss(mode=mode)
        loss.bind(inputs)
        assert list(loss.adapters) == ["embedding:5->embedding:7"]
        _set_linear(loss.adapters["embedding:5->embedding:7"], w, b)
        assert float(loss(inputs)) == pytest.approx(expected, rel=1e-5)
    # mse gradient by hand: 2 (a(s) - t) W / (B * D_t).
    loss = FeatureLoss(mode="mse")
    loss.bind(inputs)
    _set_linear(loss.adapters["embedding:5->embedding:7"], w, b)
    (grad,) = torch.autograd.grad(loss(inputs), s)
    np.testing.assert_allclose(grad.numpy(), 2 * (adapted - t_np) @ w / 21, rtol=1e-4, atol=1e-6)


def test_feature_cosine_ignores_scale() -> None:
    t = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    loss = FeatureLoss(mode="cosine")
    assert float(loss(_inputs({"embedding": 5 * t}, [{"embedding": t}]))) == pytest.approx(
        0.0, abs=1e-6
    )


# A 3-4-5 right triangle for the student, an isosceles right triangle for the teacher.
S_TRI = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]
T_TRI = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]


def test_rkd_distance_hand_value() -> None:
    # Student distances 3, 4, 5 (each pair twice), mean 4; teacher 1, 1, sqrt(2).
    s_psi = [3 / 4, 4 / 4, 5 / 4]
    t_mean = (2 + math.sqrt(2)) / 3
    t_psi = [1 / t_mean, 1 / t_mean, math.sqrt(2) / t_mean]
    expected = sum(0.5 * (a - b) ** 2 for a, b in zip(s_psi, t_psi, strict=True)) / 3
    loss = FeatureLoss(mode="rkd_distance")
    inputs = _inputs({"embedding": torch.tensor(S_TRI)}, [{"embedding": torch.tensor(T_TRI)}])
    assert float(loss(inputs)) == pytest.approx(expected, abs=1e-6)
    # Scale invariance of the normalized distances: an independent check.
    scaled = _inputs({"embedding": 10 * torch.tensor(S_TRI)}, [{"embedding": torch.tensor(T_TRI)}])
    assert float(loss(scaled)) == pytest.approx(expected, abs=1e-6)


def test_rkd_angle_hand_value_and_any_width() -> None:
    # Cosines of the student's angles: 0 at (0,0), 3/5 at (3,0), 4/5 at (0,4); teacher:
    # 0, sqrt(2)/2, sqrt(2)/2. Each vertex is the middle of 2 ordered triplets.
    half = math.sqrt(2) / 2
    diffs = [0.0, 0.6 - half, 0.8 - half]
    expected = sum(0.5 * d * d for d in diffs) * 2 / 6
    loss = FeatureLoss(mode="rkd_angle")
    # Teacher of width 3 (a zero third coordinate): RKD needs no adapter.
    teacher = torch.tensor([[*p, 0.0] for p in T_TRI])
    inputs = _inputs({"embedding": torch.tensor(S_TRI)}, [{"embedding": teacher}])
    loss.bind(inputs)
    assert len(loss.adapters) == 0
    assert float(loss(inputs)) == pytest.approx(expected, abs=1e-6)


def test_rkd_matches_a_numpy_route_with_huber_linear_part() -> None:
    rng = np.random.default_rng(4)
    s_np, t_np = rng.normal(size=(5, 4)), rng.normal(size=(5, 6)) * np.array([9, 1, 1, 1, 1, 1])
    n = 5
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]

    def psi_d(x: np.ndarray) -> np.ndarray:
        d = np.array([np.linalg.norm(x[i] - x[j]) for i, j in pairs])
        return d / d.mean()

    def psi_a(x: np.ndarray) -> np.ndarray:
        out = []
        for j in range(n):
            for i in range(n):
                for k in range(n):
                    if len({i, j, k}) == 3:
                        e1, e2 = x[i] - x[j], x[k] - x[j]
                        out.append(e1 @ e2 / np.linalg.norm(e1) / np.linalg.norm(e2))
        return np.array(out)

    inputs = _pair("embedding", s_np, "embedding", t_np)
    got_d = FeatureLoss(mode="rkd_distance")(inputs)
    got_a = FeatureLoss(mode="rkd_angle")(inputs)
    assert float(got_d) == pytest.approx(_huber(psi_d(s_np) - psi_d(t_np)).mean(), rel=1e-4)
    assert float(got_a) == pytest.approx(_huber(psi_a(s_np) - psi_a(t_np)).mean(), rel=1e-4)


@pytest.mark.parametrize("mode", ["rkd_distance", "rkd_angle"])
@pytest.mark.parametrize("batch", [1, 2])
def test_rkd_tiny_batches_are_zero_without_nan(mode: str, batch: int) -> None:
    s = torch.randn(batch, 4, requires_grad=True)
    value = FeatureLoss(mode=mode)(
        _inputs({"embedding": s}, [{"embedding": torch.randn(batch, 3)}])
    )
    if mode == "rkd_angle" or batch == 1:
        assert float(value) == 0.0
    (grad,) = torch.autograd.grad(value, s)
    assert torch.isfinite(grad).all()


def test_rkd_duplicate_examples_keep_gradients_finite() -> None:
    s = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    for mode in ("rkd_distance", "rkd_angle"):
        (grad,) = torch.autograd.grad(
            FeatureLoss(mode=mode)(_inputs({"embedding": s}, [{"embedding": t}])), s
        )
        assert torch.isfinite(grad).all()


def test_feature_multi_teacher_average_and_maps_pooled() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t1 = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    t2_map = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]], [[[1.0, 1.0]], [[2.0, 4.0]]]])  # (2,2,1,2)
    # Pooled t2: [[1, 0], [1, 3]]; mse1 = (0+1+0+4)/4, mse2 = (0+0+1+1)/4.
    loss = FeatureLoss(mode="mse")
    inputs = _inputs({"embedding": s}, [{"embedding": t1}, {"embedding": t2_map}])
    loss.bind(inputs)
    assert float(loss(inputs)) == pytest.approx((5 / 4 + 2 / 4) / 2)


def test_feature_options_and_layers_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"distill\.mode.*rkd_angle"):
        FeatureLoss(mode="l1")
    loss = FeatureLoss(student_layer="hidden9")
    with pytest.raises(ConfigError, match=r"distill\.student_layer.*'hidden9'.*'hidden1'"):
        loss.check_layers(("hidden1", "embedding"), [("conv1", "embedding")])
    with pytest.raises(ConfigError, match=r"distill\.teacher_layer.*'conv5'"):
        FeatureLoss(teacher_layer="conv5").check_layers(("embedding",), [("conv1", "embedding")])
    with pytest.raises(ConfigError, match=r"teacher_from=weights"):
        FeatureLoss().check_layers(("embedding",), None)


# ---------------------------------------------------------------- attention transfer


def _attention_np(f: np.ndarray, p: float = 2.0, size: tuple[int, ...] | None = None) -> np.ndarray:
    q = (np.abs(f) ** p).mean(axis=1)  # (B, H, W)
    if size is not None and q.shape[1:] != size:
        bh, bw = q.shape[1] // size[0], q.shape[2] // size[1]
        q = q.reshape(q.shape[0], size[0], bh, size[1], bw).mean(axis=(2, 4))
    q = q.reshape(q.shape[0], -1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _at_distance(s: np.ndarray, t: np.ndarray, p: float = 2.0) -> float:
    size = tuple(min(a, b) for a, b in zip(s.shape[2:], t.shape[2:], strict=True))
    qs, qt = _attention_np(s, p, size), _attention_np(t, p, size)
    return float(np.linalg.norm(qs - qt, axis=1).mean())


def test_attention_hand_value_single_example() -> None:
    s = np.array([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 2.0], [0.0, 1.0]]]])  # (1, 2, 2, 2)
    t = np.ones((1, 3, 2, 2))
    # Q_s = mean_c s^2 = [1, 2, 0, 1] / sqrt(6); Q_t = [1, 1, 1, 1] / 2.
    q_s = np.array([1.0, 2.0, 0.0, 1.0]) / math.sqrt(6)
    expected = float(np.linalg.norm(q_s - 0.5))
    loss = AttentionLoss(student_layers=["conv1"], teacher_layers=["conv1"])
    inputs = _inputs(
        {"conv1": torch.tensor(s, dtype=torch.float32), "embedding": torch.ones(1, 4)},
        [{"conv1": torch.tensor(t, dtype=torch.float32), "embedding": torch.ones(1, 4)}],
    )
    loss.bind(inputs)
    assert float(loss(inputs)) == pytest.approx(expected, abs=1e-6)
    assert float(loss(inputs)) == pytest.approx(_at_distance(s, t), abs=1e-6)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_pools_the_larger_map_and_p(p: float) -> None:
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(3, 4, 4, 4)), rng.normal(size=(3, 6, 2, 2))
    loss = AttentionLoss(student_layers=["conv1"], teacher_layers=["conv2"], p=p)
    inputs = _pair("conv1", s, "conv2", t)
    assert float(loss(inputs)) == pytest.approx(_at_distance(s, t, p), rel=1e-5)
    # Pooling also applies when the teacher map is the larger one.
    swapped = _pair("conv1", t, "conv2", s)
    assert float(loss(swapped)) == pytest.approx(_at_distance(t, s, p), rel=1e-5)


def test_attention_default_layers_pair_from_the_end_and_average_teachers() -> None:
    x = torch.randn(4, 1, 8, 8)
    student = build_model("cnn", input_shape=(1, 8, 8), num_classes=3, seed=0, channels=[4, 4, 4])
    t1 = build_model("cnn", input_shape=(1, 8, 8), num_classes=3, seed=1, channels=[8, 8])
    t2 = build_model("cnn", input_shape=(1, 8, 8), num_classes=3, seed=2, channels=[6])
    loss = AttentionLoss()
    loss.check_layers(student.feature_names, [t1.feature_names, t2.feature_names])
    logits, sf = student.forward_features(x)
    with torch.no_grad():
        f1, f2 = t1.forward_features(x)[1], t2.forward_features(x)[1]
    inputs = DistillInputs(logits, None, None, sf, [f1, f2])
    loss.bind(inputs)
    np_s = {k: v.detach().numpy() for k, v in sf.items()}
    # Teacher 1: (conv2, conv1), (conv3, conv2); teacher 2: (conv3, conv1).
    distances = [
        _at_distance(np_s["conv2"], f1["conv1"].numpy()),
        _at_distance(np_s["conv3"], f1["conv2"].numpy()),
        _at_distance(np_s["conv3"], f2["conv1"].numpy()),
    ]
    value = loss(inputs)
    assert float(value) == pytest.approx(sum(distances) / 3, rel=1e-5)
    value.backward()
    assert student.blocks[0][0].weight.grad is not None


def test_attention_on_1d_maps() -> None:
    x = torch.randn(3, 1, 40)
    student = build_model("cnn1d", input_shape=(1, 40), num_classes=3, seed=0)
    teacher = build_model("cnn1d", input_shape=(1, 40), num_classes=3, seed=1, channels=[8])
    logits, sf = student.forward_features(x)
    tf = teacher.forward_features(x)[1]
    inputs = DistillInputs(logits, None, None, sf, [tf])
    loss = AttentionLoss()
    loss.bind(inputs)
    # conv2 (16, 10) against conv1 (8, 20): the teacher's attention is pooled to length 10.
    qs = (sf["conv2"].detach().numpy() ** 2).mean(axis=1)
    qt = (tf["conv1"].detach().numpy() ** 2).mean(axis=1).reshape(3, 10, 2).mean(axis=2)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    qt /= np.linalg.norm(qt, axis=1, keepdims=True)
    expected = np.linalg.norm(qs - qt, axis=1).mean()
    assert float(loss(inputs)) == pytest.approx(expected, rel=1e-5)


def test_attention_on_mlp_is_a_config_error() -> None:
    x = torch.randn(2, 1, 8, 8)
    mlp = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=0)
    cnn = build_model("cnn", input_shape=(1, 8, 8), num_classes=3, seed=0)
    loss = AttentionLoss()
    loss.check_layers(cnn.feature_names, [cnn.feature_names])
    logits, mf = mlp.forward_features(x)
    cf = cnn.forward_features(x)[1]
    with pytest.raises(ConfigError, match=r"distill\.student_layers.*convolutional.*'mlp'"):
        loss.bind(DistillInputs(logits, None, None, mf, [cf]))
    with pytest.raises(ConfigError, match=r"distill\.teacher_layers.*convolutional"):
        loss.bind(DistillInputs(logits, None, None, cf, [mf]))
    explicit = AttentionLoss(student_layers=["hidden1"], teacher_layers=["conv1"])
    with pytest.raises(ConfigError, match=r"distill\.student_layers.*'hidden1'.*\(2, 128\)"):
        explicit.bind(DistillInputs(logits, None, None, mf, [cf]))
    # A linear model has no layer besides the embedding: caught from the names alone.
    linear = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, hidden=[])
    with pytest.raises(ConfigError, match=r"convolutional feature maps"):
        loss.check_layers(linear.feature_names, [cnn.feature_names])


def test_attention_options_and_layer_names_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"distill\.p"):
        AttentionLoss(p=0.0)
    with pytest.raises(ConfigError, match=r"same length"):
        AttentionLoss(student_layers=["conv1"], teacher_layers=["conv1", "conv2"])
    with pytest.raises(ConfigError, match=r"distill\.student_layers"):
        AttentionLoss(student_layers="conv1")  # type: ignore[arg-type]
    names = ("conv1", "conv2", "embedding")
    with pytest.raises(ConfigError, match=r"distill\.student_layers.*'conv4'.*'conv1'"):
        AttentionLoss(student_layers=["conv4"]).check_layers(names, [names])
    with pytest.raises(ConfigError, match=r"distill\.teacher_layers.*'conv9'"):
        AttentionLoss(teacher_layers=["conv9"]).check_layers(names, [names])
    with pytest.raises(ConfigError, match=r"teacher_from=weights"):
        AttentionLoss().check_layers(names, None)


# ---------------------------------------------------------------- combo


def _mixed_inputs() -> DistillInputs:
    gen = torch.Generator().manual_seed(0)
    return DistillInputs(
        student_logits=torch.randn(4, 3, generator=gen, requires_grad=True),
        teacher_probs=torch.softmax(torch.randn(4, 3, generator=gen), dim=1),
        labels=torch.tensor([0, 2, 1, 1]),
        student_features={
            "hidden1": torch.randn(4, 5, generator=gen),
            "embedding": torch.randn(4, 6, generator=gen),
        },
        teacher_features=[
            {
                "conv1": torch.randn(4, 7, 2, 2, generator=gen),
                "embedding": torch.randn(4, 6, generator=gen),
            }
        ],
    )


def test_combo_equals_weighted_sum_of_terms_computed_separately() -> None:
    terms: list[dict[str, Any]] = [
        {"name": "kd", "weight": 1.0, "temperature": 4.0},
        {"name": "hint", "weight": 0.5, "student_layer": "hidden1", "teacher_layer": "conv1"},
        {"name": "feature", "weight": 2.0, "mode": "rkd_distance"},
    ]
    combo = build_loss("combo", terms=terms)
    assert isinstance(combo, WeightedSumLoss)
    assert (combo.needs_student_features, combo.needs_teacher_features) == (True, True)
    assert combo.needs_teacher_probs
    inputs = _mixed_inputs()
    combo.bind(inputs)
    kd = KDLoss(temperature=4.0)
    hint = HintLoss(student_layer="hidden1", teacher_layer="conv1")
    hint.bind(inputs)
    hint.load_state_dict(combo.terms[1].state_dict())
    rkd = FeatureLoss(mode="rkd_distance")
    expected = 1.0 * kd(inputs) + 0.5 * hint(inputs) + 2.0 * rkd(inputs)
    value = combo(inputs)
    assert float(value) == pytest.approx(float(expected), rel=1e-6)
    # The hint adapter is a parameter of the combo and is trained through it.
    params = list(combo.parameters())
    assert len(params) == 2
    value.backward()
    assert all(p.grad is not None for p in params)


def test_combo_flags_progress_and_zero_weight() -> None:
    combo = WeightedSumLoss(
        terms=[
            {"name": "kd", "temperature": 1.0, "temperature_end": 3.0},
            {"name": "kd", "weight": 0.0, "temperature": 2.0},
        ]
    )
    assert (combo.needs_student_features, combo.needs_teacher_features) == (False, False)
    assert combo.weights == [1.0, 0.0]
    combo.set_progress(0.5)
    assert combo.terms[0].temperature == pytest.approx(2.0)
    inputs = _mixed_inputs()
    assert float(combo(inputs)) == pytest.approx(float(combo.terms[0](inputs)))
    self_only = WeightedSumLoss(terms=[{"name": "self"}])
    assert self_only.needs_student_features and not self_only.needs_teacher_probs


def test_combo_errors_name_the_term_key() -> None:
    with pytest.raises(ConfigError, match=r"distill\.terms\[1\]\.temperature"):
        build_loss("combo", terms=[{"name": "kd"}, {"name": "kd", "temperature": 0.0}])
    with pytest.raises(ConfigError, match=r"distill\.terms\[0\]\.temprature.*allowed options"):
        build_loss("combo", terms=[{"name": "kd", "temprature": 2.0}])
    with pytest.raises(ConfigError, match=r"distill\.terms\[0\]\.name.*another combo"):
        build_loss("combo", terms=[{"name": "combo", "terms": [{"name": "kd"}]}])
    with pytest.raises(ConfigError, match=r"distill\.terms\[0\]\.name must be one of"):
        build_loss("combo", terms=[{"name": "fitnet"}])
    with pytest.raises(ConfigError, match=r"distill\.terms\[0\]\.name is missing"):
        build_loss("combo", terms=[{"weight": 1.0}])
    with pytest.raises(ConfigError, match=r"distill\.terms\[1\]\.weight"):
        build_loss("combo", terms=[{"name": "kd"}, {"name": "kd", "weight": -1.0}])
    with pytest.raises(ConfigError, match=r"distill\.terms must be a non-empty list"):
        build_loss("combo")
    with pytest.raises(ConfigError, match=r"distill\.terms\[0\] must be a mapping"):
        build_loss("combo", terms=["kd"])
    combo = build_loss("combo", terms=[{"name": "kd"}, {"name": "hint", "student_layer": "x9"}])
    with pytest.raises(ConfigError, match=r"distill\.terms\[1\]\.student_layer.*'x9'"):
        combo.check_layers(("hidden1", "embedding"), [("hidden1", "embedding")])
    with pytest.raises(ConfigError, match=r"distill\.terms\[1\]\.name='hint'.*teacher_from"):
        combo.check_layers(("hidden1", "embedding"), None)


# ---------------------------------------------------------------- registry and YAML


def test_every_distill_yaml_builds_with_the_defaults() -> None:
    for path in sorted(CONFIGS.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        name = spec.pop("name")
        assert path.stem == name
        first_line = path.read_text().splitlines()[0]
        assert first_line.startswith("# ") and "20" in first_line, path  # cites a paper
        loss = build_loss(name, **spec)
        assert loss.loss_name == name
        if name in FEATURE_LOSSES:  # paired with soft targets by default
            assert isinstance(loss, SoftTargetPaired)
            assert isinstance(loss.feature_loss, LOSSES[name])
            assert (loss.weight, loss.kd_weight) == (1.0, 1.0)
            for key in PAIRING_OPTIONS:
                spec.pop(key)
        else:
            assert isinstance(loss, LOSSES[name])
        if name == "kd":
            continue  # its YAML lists the common options only
        assert sorted(spec) == sorted(
            k for k in loss_options(name) if name not in FEATURE_LOSSES or k not in PAIRING_OPTIONS
        ), path
        if name != "combo":
            defaults = {
                k: v.default
                for k, v in inspect.signature(LOSSES[name].__init__).parameters.items()
                if k != "self"
            }
            assert spec == defaults, path


def test_feature_losses_pair_with_soft_targets() -> None:
    torch.manual_seed(0)
    student = {"embedding": torch.randn(6, 5)}
    teacher = [{"embedding": torch.randn(6, 5)}]
    logits = torch.randn(6, 3)
    probs = torch.softmax(torch.randn(6, 3), dim=1)
    inputs = DistillInputs(
        student_logits=logits,
        teacher_probs=probs,
        student_features=student,
        teacher_features=teacher,
    )
    alone = build_loss("feature", mode="mse")
    assert isinstance(alone, FeatureLoss)  # no pairing options: the bare loss
    paired = build_loss("feature", mode="mse", weight=0.5, kd_weight=2.0, temperature=3.0)
    assert isinstance(paired, SoftTargetPaired)
    expected = 0.5 * alone(inputs) + 2.0 * KDLoss(temperature=3.0)(inputs)
    assert float(paired(inputs)) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ConfigError, match=r"distill\.kd_weight"):
        build_loss("hint", kd_weight=-1.0)
    with pytest.raises(ConfigError, match=r"distill\.temperature"):
        build_loss("attention", kd_weight=1.0, temperature=0.0)
