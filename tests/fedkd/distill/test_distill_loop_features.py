"""The distillation loop feeds losses features, teachers, schedules and augmented batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fedkd.distill import KDLoss, distill
from fedkd.distill.augment import build_augmentation
from fedkd.distill.losses import DistillInputs, DistillLoss
from fedkd.models import build_model, get_weights


class _Recorder(DistillLoss):
    """Embedding MSE through a learned adapter; records what the loop passed in."""

    needs_student_features = True
    needs_teacher_features = True
    needs_teacher_probs = False

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.progress: list[float] = []
        self.seen: list[DistillInputs] = []

    def bind(self, inputs: DistillInputs) -> None:
        s = inputs.student_features["embedding"].shape[1]
        t = inputs.teacher_features[0]["embedding"].shape[1]
        if f"{s}->{t}" not in self.adapters:
            self.adapters[f"{s}->{t}"] = nn.Linear(s, t)

    def set_progress(self, fraction: float) -> None:
        self.progress.append(fraction)

    def forward(self, inputs: DistillInputs) -> Tensor:
        self.seen.append(inputs)
        s = inputs.student_features["embedding"]
        losses = [
            (self.adapters[f"{s.shape[1]}->{t['embedding'].shape[1]}"](s) - t["embedding"])
            .pow(2)
            .mean()
            for t in inputs.teacher_features
        ]
        return torch.stack(losses).mean()


def _data(n: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    probs = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    return x, probs, probs.argmax(axis=1)


def test_feature_loss_gets_teacher_features_and_trains_its_adapter() -> None:
    x, probs, _ = _data()
    student = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=0, hidden=[16])
    teachers = [
        build_model("cnn", input_shape=(1, 8, 8), num_classes=3, seed=s, hidden=24) for s in (1, 2)
    ]
    teacher_before = [get_weights(t) for t in teachers]
    for t in teachers:
        t.train()
    loss = _Recorder()
    report = distill(
        student, x, probs, loss=loss, epochs=3, batch_size=16, lr=0.01, teachers=teachers
    )
    assert list(loss.adapters) == ["16->24"]  # created on the probe batch, before the optimizer
    assert report.epoch_losses[-1] < report.epoch_losses[0]
    first = loss.seen[0]
    assert len(first.teacher_features) == 2
    assert not first.teacher_features[0]["embedding"].requires_grad
    assert first.student_features["embedding"].requires_grad
    # the adapter was trained with the student; teachers are untouched and keep their mode
    assert loss.adapters["16->24"].weight.grad is not None
    for t, before in zip(teachers, teacher_before, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(get_weights(t), before, strict=True))
        assert t.training
    assert loss.progress == [0.0, 0.5, 1.0]


def test_feature_loss_without_teachers_is_refused() -> None:
    x, probs, _ = _data()
    student = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=0)
    with pytest.raises(ValueError, match="no teacher models"):
        distill(student, x, probs, loss=_Recorder(), epochs=1, batch_size=16, lr=0.01)


def test_kd_schedule_reaches_its_end_values() -> None:
    x, probs, _ = _data()
    student = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=0)
    loss = KDLoss(temperature=4.0, temperature_end=1.0, alpha=1.0)
    distill(student, x, probs, loss=loss, epochs=4, batch_size=32, lr=0.01)
    assert loss.temperature == pytest.approx(1.0)


def test_labels_only_distillation_needs_labels() -> None:
    x, _, y = _data()
    student = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=0)
    report = distill(student, x, None, loss=KDLoss(), proxy_y=y, epochs=2, batch_size=16, lr=0.01)
    assert len(report.epoch_losses) == 2
    with pytest.raises(ValueError, match="teacher_probs or proxy_y"):
        distill(student, x, None, loss=KDLoss(), epochs=1, batch_size=16, lr=0.01)


class _Spy(KDLoss):
    def __init__(self) -> None:
        super().__init__(alpha=0.5)
        self.batches: list[DistillInputs] = []

    def forward(self, inputs: DistillInputs) -> Tensor:
        self.batches.append(inputs)
        return super().forward(inputs)


def test_augmentation_changes_inputs_and_mixup_drops_hard_labels() -> None:
    x, probs, y = _data()
    mixup = build_augmentation({"transforms": [{"kind": "mixup", "alpha": 1.0}]}, (1, 8, 8))
    student = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=0)
    spy = _Spy()
    distill(
        student, x, probs, loss=spy, proxy_y=y, epochs=1, batch_size=64, lr=0.01, augmentation=mixup
    )
    batch = spy.batches[0]
    assert batch.labels is None
    assert batch.teacher_probs is not None
    assert torch.allclose(batch.teacher_probs.sum(dim=1), torch.ones(64))
    # mixed targets are not the clean ones
    assert not torch.allclose(
        batch.teacher_probs.sort(dim=0).values, torch.from_numpy(probs).sort(dim=0).values
    )

    noise = build_augmentation({"transforms": [{"kind": "noise", "std": 0.5}]}, (1, 8, 8))
    runs = []
    for augmentation in (None, noise, noise):
        model = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=0)
        distill(
            model,
            x,
            probs,
            loss=KDLoss(),
            epochs=1,
            batch_size=16,
            lr=0.01,
            seed=3,
            augmentation=augmentation,
        )
        runs.append(get_weights(model))
    assert any(not np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(runs[1], runs[2], strict=True))  # seeded
