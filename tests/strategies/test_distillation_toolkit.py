"""The distillation toolkit end to end: every loss, client-side self-distillation and
augmentation run through the real ServerApp and ClientApp (in process, no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TINY = [
    "dataset=digits",
    "num_clients=3",
    "num_rounds=2",
    "client.epochs=3",
    "++strategy.distill_epochs=5",
    "++strategy.distill_lr=0.003",
    "data.proxy_size=120",
]

ABOVE_CHANCE = 0.15  # ten classes; tiny runs (2 rounds, 3 clients) learn well above 0.10


def _final(summary: dict[str, Any], key: str = "student_accuracy") -> float:
    assert summary["status"] == "completed"
    value = summary["final"][key]
    assert value is not None
    return float(value)


def test_hint_distils_an_mlp_student_from_cnn_clients(in_process_run: Any, tmp_path: Path) -> None:
    kd = in_process_run([*TINY, "model=cnn", "student=mlp"], tmp_path / "kd")
    hint = in_process_run([*TINY, "model=cnn", "student=mlp", "distill=hint"], tmp_path / "hint")
    assert _final(hint) > ABOVE_CHANCE
    assert _final(hint) != _final(kd)  # the hint term changes what the student learns


@pytest.mark.parametrize(
    ("loss", "models"),
    [
        ("feature", ["model=cnn", "student=mlp"]),
        pytest.param(
            "feature",
            ["model=cnn", "student=mlp", "distill.mode=rkd_angle"],
            marks=pytest.mark.slow,
        ),
        ("attention", ["model=cnn", "student=cnn", "student.channels=[8]"]),
        ("combo", ["model=hetero", "student=mlp"]),
    ],
)
def test_feature_losses_run_with_feddf(
    in_process_run: Any, tmp_path: Path, loss: str, models: list[str]
) -> None:
    summary = in_process_run([*TINY, f"distill={loss}", *models], tmp_path)
    assert _final(summary) > ABOVE_CHANCE


def test_self_distillation_loss_on_server_and_in_client_digests(
    in_process_run: Any, tmp_path: Path
) -> None:
    summary = in_process_run(
        [*TINY, "strategy=fedmd", "distill=self", "++strategy.digest_epochs=1"], tmp_path
    )
    assert _final(summary) > ABOVE_CHANCE
    mae = in_process_run([*TINY, "strategy=fedmd", "distill.soft_loss=mae"], tmp_path / "mae")
    assert _final(mae) > ABOVE_CHANCE


def test_client_self_distillation_and_born_again(in_process_run: Any, tmp_path: Path) -> None:
    base = [*TINY, "strategy=fedavg"]
    plain = in_process_run(base, tmp_path / "plain")
    byot = in_process_run([*base, "client.self_distill={}"], tmp_path / "byot")
    again = in_process_run([*base, "client.born_again={generations:1}"], tmp_path / "again")
    for summary in (byot, again):
        assert _final(summary) > ABOVE_CHANCE
        assert _final(summary) != _final(plain)


def test_augmentation_changes_the_run_and_is_reproducible(
    in_process_run: Any, tmp_path: Path
) -> None:
    base = [*TINY, "strategy=fedmd", "++strategy.digest_epochs=1"]
    plain = in_process_run(base, tmp_path / "plain")
    first = in_process_run([*base, "augment=image"], tmp_path / "a")
    second = in_process_run([*base, "augment=image"], tmp_path / "b")
    assert _final(first) == _final(second)
    assert first["final"]["distill_loss"] != plain["final"]["distill_loss"]


@pytest.mark.parametrize("strategy", ["fedmd", "dsfl", "fedet", "fd", "centralized"])
def test_cnn_clients_teach_an_mlp_student_in_every_method(
    in_process_run: Any, tmp_path: Path, strategy: str
) -> None:
    summary = in_process_run(
        [*TINY, f"strategy={strategy}", "model=cnn", "student=mlp", "data.proxy_labeled=true"],
        tmp_path,
    )
    assert summary["student"] == "mlp" and summary["model"] == "cnn"
    assert _final(summary) > ABOVE_CHANCE
