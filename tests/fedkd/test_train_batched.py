"""``train_batched`` computes what ``train_local`` computes client by client."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedkd.models import model_from_config
from fedkd.setup import TrainSettings
from fedkd.train import train_local
from fedkd.train_batched import BatchedJob, batching_refusal, train_batched

MLP = {"name": "mlp", "hidden": [16], "dropout": 0.0}


def _jobs(model: torch.nn.Module, sizes: list[int], shape: tuple[int, ...], mu: float = 0.0):
    rng = np.random.default_rng(len(sizes))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    jobs = []
    for c, n in enumerate(sizes):
        # each client starts from its own weights, as after FedMD's digest
        state = {k: v + 0.01 * c for k, v in start.items()}
        x = rng.normal(size=(n, *shape)).astype(np.float32)
        jobs.append(BatchedJob(state, x, rng.integers(0, 3, n), seed=100 + c, proximal_mu=mu))
    return jobs


def _sequential(model, job, settings):
    model.load_state_dict(job.state)
    report = train_local(
        model, job.x, job.y, settings=settings, seed=job.seed, proximal_mu=job.proximal_mu
    )
    return {k: v.clone() for k, v in model.state_dict().items()}, report


SETTINGS = [
    TrainSettings(epochs=3, batch_size=4, lr=0.1, optimizer="sgd", momentum=0.0),
    TrainSettings(
        epochs=2, batch_size=4, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=1e-3
    ),
    TrainSettings(epochs=2, batch_size=5, lr=0.01, optimizer="adam", weight_decay=1e-4),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["sgd", "momentum+wd", "adam"])
@pytest.mark.parametrize("mu", [0.0, 0.5], ids=["plain", "fedprox"])
def test_equals_sequential_training(settings: TrainSettings, mu: float) -> None:
    # ragged: one batch, an exact multiple, a short last batch, many batches
    model = model_from_config(MLP, input_shape=(6,), num_classes=3, seed=0)
    jobs = _jobs(model, [1, 3, 4, 9, 17], (6,), mu)
    results = train_batched(model, jobs, settings=settings)
    for job, (state, report) in zip(jobs, results, strict=True):
        expected, expected_report = _sequential(model, job, settings)
        for name, value in expected.items():
            torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6)
        assert report.steps == expected_report.steps
        assert report.num_examples == expected_report.num_examples
        assert math.isclose(report.loss, expected_report.loss, rel_tol=1e-5, abs_tol=1e-6)


def test_convolutional_model_with_group_norm() -> None:
    spec = {"name": "cnn", "channels": [4, 4], "norm": "group"}
    model = model_from_config(spec, input_shape=(1, 8, 8), num_classes=3, seed=1)
    assert batching_refusal(model) is None
    settings = TrainSettings(epochs=2, batch_size=3, lr=0.05, optimizer="sgd", momentum=0.9)
    jobs = _jobs(model, [2, 7], (1, 8, 8))
    for job, (state, _) in zip(jobs, train_batched(model, jobs, settings=settings), strict=True):
        expected, _ = _sequential(model, job, settings)
        for name, value in expected.items():
            torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5)


def test_model_and_start_states_are_left_alone() -> None:
    model = model_from_config(MLP, input_shape=(6,), num_classes=3, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    jobs = _jobs(model, [5, 6], (6,))
    starts = [{k: v.clone() for k, v in job.state.items()} for job in jobs]
    train_batched(model, jobs, settings=SETTINGS[1])
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
    for job, start in zip(jobs, starts, strict=True):
        assert all(torch.equal(job.state[k], start[k]) for k in start)


def test_refuses_what_it_cannot_reproduce() -> None:
    dropout = model_from_config({**MLP, "dropout": 0.3}, input_shape=(6,), num_classes=3, seed=0)
    assert "dropout" in (batching_refusal(dropout) or "")
    with pytest.raises(ValueError, match="dropout"):
        train_batched(dropout, _jobs(dropout, [3], (6,)), settings=SETTINGS[0])
    norm = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    assert "running statistics" in (batching_refusal(norm) or "")
    model = model_from_config(MLP, input_shape=(6,), num_classes=3, seed=0)
    with pytest.raises(ValueError, match="empty"):
        train_batched(model, _jobs(model, [0], (6,)), settings=SETTINGS[0])
