"""Tests for fedkd.privacy.dpsgd: Opacus DP-SGD with an accountant persisted across rounds."""

from __future__ import annotations

import math
from typing import Any

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp
from torch import nn

from fedkd.errors import ConfigError
from fedkd.models import model_from_config
from fedkd.privacy.dpsgd import DPSGDReport, dpsgd_schedule, opacus_epsilon, train_dpsgd
from fedkd.setup import TrainSettings
from fedkd.train import evaluate

DELTA = 1e-5
DP_KWARGS: dict[str, Any] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": DELTA}


def _data(n: int, *, d: int = 6, num_classes: int = 2, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, num_classes, size=n)


def _blobs(n: int = 300, *, num_classes: int = 6, d: int = 10) -> tuple[np.ndarray, ...]:
    """Well separated Gaussian blobs: easy to learn, chance accuracy 1/num_classes."""
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3.0, size=(num_classes, d))
    y = rng.integers(0, num_classes, size=n)
    return (centers[y] + rng.normal(scale=0.5, size=(n, d))).astype(np.float32), y


def _mlp(
    d: int = 6, num_classes: int = 2, *, hidden: list[int] | None = None, seed: int = 0
) -> nn.Module:
    config: dict[str, object] = {"name": "mlp"}
    if hidden is not None:
        config["hidden"] = hidden
    return model_from_config(config, input_shape=(d,), num_classes=num_classes, seed=seed)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _opacus_traces(model: nn.Module) -> dict[str, object]:
    """Everything Opacus could leave behind on a module tree and its parameters."""
    return {
        "type": type(model),
        "modules": {
            name: (
                type(m),
                sorted(vars(m)),
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(m._backward_pre_hooks),
            )
            for name, m in model.named_modules()
        },
        "params": {name: (id(p), sorted(vars(p))) for name, p in model.named_parameters()},
    }


def test_trains_and_leaves_no_opacus_traces_on_caller_model() -> None:
    x, y = _data(64)
    model = _mlp()
    before, traces = _weights(model), _opacus_traces(model)
    settings = TrainSettings(epochs=2, batch_size=16, lr=0.1)
    report = train_dpsgd(model, x, y, settings=settings, noise_seed=0, **DP_KWARGS)
    assert isinstance(report, DPSGDReport)
    assert not _same_weights(before, _weights(model))
    assert _opacus_traces(model) == traces
    for p in model.parameters():
        assert not hasattr(p, "grad_sample") and not hasattr(p, "summed_grad")
        assert p.grad is None
    assert report.steps == 8 and report.sample_rate == 0.25
    assert math.isfinite(report.loss) and report.epsilon > 0
    # The caller's model still trains normally with plain torch afterwards.
    logits = model(torch.from_numpy(x))
    nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
    assert all(p.grad is not None and not hasattr(p, "grad_sample") for p in model.parameters())


def test_history_persists_across_calls() -> None:
    x, y = _data(100)  # q = 0.1 keeps Opacus's RDP computation cheap
    common: dict[str, Any] = {
        "settings": TrainSettings(epochs=1, batch_size=10, lr=0.05),
        "max_grad_norm": 1.0,
        "delta": DELTA,
    }
    model = _mlp(hidden=[8])
    first = train_dpsgd(model, x, y, noise_multiplier=1.0, noise_seed=1, **common)
    second = train_dpsgd(
        model, x, y, noise_multiplier=1.5, history=first.history, noise_seed=2, **common
    )
    alone = train_dpsgd(_mlp(hidden=[8]), x, y, noise_multiplier=1.5, noise_seed=2, **common)

    assert first.history == [(1.0, first.sample_rate, first.steps)]
    assert second.history == [*first.history, *alone.history]
    assert [steps for _, _, steps in second.history] == [first.steps, second.steps]
    both = opacus_epsilon([*first.history, *alone.history], DELTA)
    assert second.epsilon == pytest.approx(both, rel=1e-12)
    assert second.epsilon > first.epsilon
    assert second.epsilon > alone.epsilon
    assert opacus_epsilon(first.history, DELTA) == pytest.approx(first.epsilon, rel=1e-12)

    # Same sigma and sample rate: Opacus merges into one entry whose steps add up.
    third = train_dpsgd(
        model, x, y, noise_multiplier=1.5, history=second.history, noise_seed=3, **common
    )
    assert third.history == [first.history[0], (1.5, second.sample_rate, 2 * second.steps)]
    assert third.epsilon > second.epsilon
    # JSON round trips turn tuples into lists; they are accepted.
    as_json = [list(entry) for entry in third.history]
    assert opacus_epsilon(as_json, DELTA) == pytest.approx(third.epsilon, rel=1e-12)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "batch_size", "epochs", "sample_rate", "steps"),
    [
        (64, 16, 1, 1 / 4, 4),  # divisible
        (10, 3, 2, 1 / 4, 8),  # 4 loader batches, last one short
        (7, 10, 3, 1.0, 3),  # batch larger than the data: every example in every batch
        (50, 7, 1, 1 / 8, 8),
        # 93 loader batches, but 1 / (1 / 93) == 92.99999999999999 in floating point:
        # Opacus runs 92 steps and accounts them at 1 / 92.
        (186, 2, 1, 1 / 92, 92),
    ],
)
def test_schedule_matches_recorded_history(
    n: int, batch_size: int, epochs: int, sample_rate: float, steps: int
) -> None:
    assert dpsgd_schedule(n, batch_size, epochs) == (sample_rate, steps)
    x, y = _data(n)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=0.05)
    report = train_dpsgd(_mlp(hidden=[4]), x, y, settings=settings, noise_seed=0, **DP_KWARGS)
    assert report.history == [(1.0, sample_rate, steps)]
    assert (report.sample_rate, report.steps) == (sample_rate, steps)


def test_schedule_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="num_examples"):
        dpsgd_schedule(0, 4, 1)
    with pytest.raises(ConfigError, match=r"client\.epochs"):
        dpsgd_schedule(10, 4, 0)


def test_epsilon_matches_dp_accounting() -> None:
    x, y = _data(100)
    report = train_dpsgd(
        _mlp(hidden=[4]), x, y, settings=TrainSettings(epochs=3, batch_size=10, lr=0.05),
        noise_seed=0, noise_multiplier=1.1, max_grad_norm=1.0, delta=DELTA,
    )  # fmt: skip
    q, steps = dpsgd_schedule(100, 10, 3)
    orders = [1 + i / 10 for i in range(1, 100)] + list(range(12, 256))
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.1))
    expected = rdp.RdpAccountant(orders).compose(event, steps).get_epsilon(DELTA)
    assert report.epsilon == pytest.approx(expected, rel=0.05)


def test_noise_seed_reproducible_and_none_is_fresh() -> None:
    x, y = _data(50)
    kwargs: dict[str, Any] = {
        "settings": TrainSettings(epochs=1, batch_size=5, lr=0.1),
        **DP_KWARGS,
    }

    def trained(noise_seed: int | None) -> dict[str, torch.Tensor]:
        model = _mlp(hidden=[8], seed=3)
        train_dpsgd(model, x, y, noise_seed=noise_seed, **kwargs)
        return _weights(model)

    assert _same_weights(trained(7), trained(7))
    assert not _same_weights(trained(7), trained(8))
    global_state = torch.get_rng_state()
    unseeded = trained(None), trained(None)
    assert not _same_weights(*unseeded)
    # Noise, Poisson sampling and dropout never draw from (or reseed) the global RNG.
    assert torch.equal(torch.get_rng_state(), global_state)


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_noise_is_applied_and_small_noise_learns() -> None:
    x, y = _blobs(120)  # 6 classes: chance accuracy 1/6
    kwargs: dict[str, Any] = {
        "settings": TrainSettings(epochs=5, batch_size=30, lr=0.5, momentum=0.0),
        "max_grad_norm": 1.0,
        "delta": DELTA,
        "noise_seed": 0,
    }
    learner, drowned = _mlp(10, 6, hidden=[32]), _mlp(10, 6, hidden=[32])
    train_dpsgd(learner, x, y, noise_multiplier=0.5, **kwargs)
    train_dpsgd(drowned, x, y, noise_multiplier=1000.0, **kwargs)
    assert evaluate(learner, x, y)[1] > 0.9
    assert evaluate(drowned, x, y)[1] < 0.4


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")
def test_per_example_gradients_are_clipped() -> None:
    # With clipping bound C and almost no noise, one SGD step moves the weights by at most
    # lr * |B| * C / expected_batch_size <= lr * n * C / batch_size (all |B| <= n).
    n, batch_size, epochs, lr, clip = 40, 10, 2, 0.1, 1e-4
    x, y = _data(n)
    model = _mlp()
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.0)
    report = train_dpsgd(
        model, x, y, settings=settings, noise_multiplier=1e-3, max_grad_norm=clip, delta=DELTA,
        noise_seed=0,
    )  # fmt: skip
    moved = torch.nn.utils.parameters_to_vector(model.parameters()).detach() - before
    bound = report.steps * lr * n * clip / batch_size * 1.01  # 1% for the tiny noise
    assert 0 < moved.norm() <= bound
    # Unclipped CE gradients at initialisation are orders of magnitude above C.
    assert bound < 0.01


def test_empty_poisson_batches_do_not_crash() -> None:
    # q = 0.1 with 10 examples: about 35% of the 30 batches are empty (P(none) ~ 3e-6).
    x, y = _data(10)
    settings = TrainSettings(epochs=3, batch_size=1, lr=0.1)
    report = train_dpsgd(_mlp(), x, y, settings=settings, noise_seed=0, **DP_KWARGS)
    assert report.steps == 30 and report.history == [(1.0, 0.1, 30)]
    # 49 examples at batch 1: Opacus's expected batch size int(49 * (1 / 49)) is 0.
    x, y = _data(49)
    model = _mlp()
    settings = TrainSettings(epochs=1, batch_size=1, lr=0.1)
    train_dpsgd(model, x, y, settings=settings, noise_seed=0, **DP_KWARGS)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"noise_multiplier": 0.0}, "privacy.noise_multiplier must be > 0"),
        ({"noise_multiplier": -1.0}, "privacy.noise_multiplier must be > 0"),
        ({"max_grad_norm": 0.0}, "privacy.max_grad_norm"),
        ({"max_grad_norm": -0.5}, "privacy.max_grad_norm"),
        ({"delta": 1.0}, "privacy.delta"),
        ({"delta": 1.5}, "privacy.delta"),
        ({"delta": 0.0}, "privacy.delta"),
        ({"delta": -1e-5}, "privacy.delta"),
        ({"noise_seed": -1}, "privacy.noise_seed"),
        ({"batch_size": 0}, "client.batch_size"),
        ({"optimizer": "rmsprop"}, "client.optimizer"),
    ],
)
def test_bad_config_raises_config_error(override: dict[str, Any], key: str) -> None:
    x, y = _data(8)
    model = _mlp()
    before = _weights(model)
    hparams = {k: v for k, v in override.items() if k in ("batch_size", "optimizer")}
    settings = TrainSettings(**{"epochs": 1, "batch_size": 4, "lr": 0.1, **hparams})
    kwargs = {**DP_KWARGS, **{k: v for k, v in override.items() if k not in hparams}}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train_dpsgd(model, x, y, settings=settings, **kwargs)
    assert _same_weights(before, _weights(model))


def test_batchnorm_model_is_rejected_with_opacus_reason() -> None:
    x, y = _data(8)
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"BatchNorm cannot support.*Hint"):
        train_dpsgd(
            model, x, y, settings=TrainSettings(epochs=1, batch_size=4, lr=0.1), **DP_KWARGS
        )


def test_malformed_history_and_delta_for_opacus_epsilon() -> None:
    assert opacus_epsilon([], DELTA) == 0.0
    with pytest.raises(ValueError, match=r"history\[1\]"):
        opacus_epsilon([(1.0, 0.1, 5), (1.0, 0.1)], DELTA)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"history\[0\]"):
        opacus_epsilon([(1.0, 1.5, 5)], DELTA)
    with pytest.raises(ConfigError, match=r"privacy\.delta"):
        opacus_epsilon([(1.0, 0.1, 5)], 1.0)
