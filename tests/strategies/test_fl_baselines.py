"""FedAdam, FedYogi, FedAdagrad and FedProx: hand-computed server steps on fake replies,
the client's proximal term, checkpoints and whole in-process runs (no Ray)."""

from __future__ import annotations

import math
import pickle
import re

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedkd.errors import ConfigError
from fedkd.train import train_local
from fedkd.wire import keys
from strategies.base import FedKDStrategy

TAU = 1e-3


def _weights_like(strategy: FedKDStrategy, fill: float) -> ArrayRecord:
    return ArrayRecord(
        {
            k: Array(np.full(tuple(v.shape), fill, dtype=np.float32))
            for k, v in strategy.assets.student.state_dict().items()
        }
    )


def _round(strategy: FedKDStrategy, server_round: int, sent: float, fills: list[float]) -> float:
    """Send weights all equal to ``sent`` to two clients with 10 and 30 examples, which
    answer with weights all equal to ``fills``; the new global value (all entries equal)."""
    strategy.node_of_partition = {0: 11, 1: 22}
    requests = list(
        strategy.configure_train(
            server_round, _weights_like(strategy, sent), ConfigRecord(), grid=None
        )  # type: ignore[arg-type]
    )
    replies = []
    for request, fill, n in zip(requests, fills, (10, 30), strict=True):
        metrics = MetricRecord(
            {keys.NUM_EXAMPLES: n, keys.TRAIN_LOSS: 1.0, keys.SERVER_ROUND: server_round}
        )
        content = RecordDict({keys.ARRAYS: _weights_like(strategy, fill), keys.METRICS: metrics})
        replies.append(Message(content, reply_to=request))
    arrays, _ = strategy.aggregate_train(server_round, replies)
    assert arrays is not None
    values = np.concatenate([a.numpy().ravel() for a in arrays.values()])
    assert np.all(values == values[0])  # every entry took the same step
    assert all(a.numpy().dtype == np.float32 for a in arrays.values())
    student = np.concatenate(
        [v.numpy().ravel() for v in strategy.assets.student.state_dict().values()]
    )
    np.testing.assert_array_equal(student, values)  # loaded into the student
    return float(values[0])


def test_fedadam_two_server_steps_by_hand(task_identity, small_plan) -> None:
    strategy = small_plan("strategy=fedadam").strategy
    eta, b1, b2 = 0.1, 0.9, 0.99
    # round 1 from 0: mean (10*1 + 30*4)/40 = 3.25 = Delta_1
    d1 = 3.25
    m1, v1 = (1 - b1) * d1, (1 - b2) * d1**2  # 0.325, 0.105625
    eta1 = eta * math.sqrt(1 - b2**2) / (1 - b1**2)  # Flower: bias correction at t + 1
    x1 = 0 + eta1 * m1 / (math.sqrt(v1) + TAU)
    got1 = _round(strategy, 1, 0.0, [1.0, 4.0])
    assert got1 == pytest.approx(x1, rel=1e-5)
    # round 2 from x1: mean (10*(x1+1) + 30*(x1+3))/40 = x1 + 2.5
    d2 = 2.5
    m2, v2 = b1 * m1 + (1 - b1) * d2, b2 * v1 + (1 - b2) * d2**2
    eta2 = eta * math.sqrt(1 - b2**3) / (1 - b1**3)
    x2 = x1 + eta2 * m2 / (math.sqrt(v2) + TAU)
    got2 = _round(strategy, 2, got1, [got1 + 1.0, got1 + 3.0])
    assert got2 == pytest.approx(x2, rel=1e-5)


def test_fedyogi_server_step_by_hand(task_identity, small_plan) -> None:
    strategy = small_plan("strategy=fedyogi").strategy
    eta, b1, b2 = 0.01, 0.9, 0.99
    d1 = 3.25
    m1 = (1 - b1) * d1
    v1 = 0.0 - (1 - b2) * d1**2 * np.sign(0.0 - d1**2)  # = +0.01 * 3.25^2
    assert _round(strategy, 1, 0.0, [1.0, 4.0]) == pytest.approx(
        eta * m1 / (math.sqrt(v1) + TAU), rel=1e-5
    )
    # round 2, Delta_2 = -0.5: v_1 = 0.105625 > 0.25? no: sign(v1 - 0.25) = -1, v grows
    x1 = eta * m1 / (math.sqrt(v1) + TAU)
    d2 = -0.5
    m2 = b1 * m1 + (1 - b1) * d2
    v2 = v1 - (1 - b2) * d2**2 * np.sign(v1 - d2**2)
    assert v2 == pytest.approx(v1 + 0.0025)
    got2 = _round(strategy, 2, x1, [x1 - 2.0, x1])  # (10*(x1-2) + 30*x1)/40 = x1 - 0.5
    assert got2 == pytest.approx(x1 + eta * m2 / (math.sqrt(v2) + TAU), rel=1e-4)


def test_fedadagrad_server_step_by_hand(task_identity, small_plan) -> None:
    strategy = small_plan("strategy=fedadagrad", "strategy.eta=0.5").strategy
    # beta_1 = 0: m_1 = Delta_1 = 3.25; v_1 = 3.25^2
    x1 = 0.5 * 3.25 / (3.25 + TAU)
    assert _round(strategy, 1, 0.0, [1.0, 4.0]) == pytest.approx(x1, rel=1e-5)
    # round 2, Delta_2 = 2.5: v_2 = 3.25^2 + 2.5^2 (Adagrad accumulates)
    x2 = x1 + 0.5 * 2.5 / (math.sqrt(3.25**2 + 2.5**2) + TAU)
    assert _round(strategy, 2, x1, [x1 + 1.0, x1 + 3.0]) == pytest.approx(x2, rel=1e-5)


def test_optimizer_state_survives_a_checkpoint(task_identity, small_plan) -> None:
    first = small_plan("strategy=fedadam").strategy
    x1 = _round(first, 1, 0.0, [1.0, 4.0])
    saved = pickle.loads(pickle.dumps(first.checkpoint_state()))
    assert {"m_t", "v_t"} <= set(saved)
    resumed = small_plan("strategy=fedadam").strategy
    assert resumed.m_t is None
    resumed.load_checkpoint_state(saved)
    for name, m in first.m_t.items():
        np.testing.assert_array_equal(resumed.m_t[name], m)
        np.testing.assert_array_equal(resumed.v_t[name], first.v_t[name])
    fresh = small_plan("strategy=fedadam").strategy  # no state: a different second step
    steps = [_round(s, 2, x1, [x1 + 1.0, x1 + 3.0]) for s in (first, resumed, fresh)]
    assert steps[0] == steps[1] != steps[2]


@pytest.mark.parametrize(
    "override",
    [
        "strategy.eta=0",
        "strategy.tau=-1",
        "strategy.beta_1=1.0",
        "strategy.beta_2=abc",
    ],
)
def test_bad_server_optimizer_options_are_config_errors(small_plan, override) -> None:
    with pytest.raises(ConfigError, match=re.escape(override.split("=")[0])):
        small_plan("strategy=fedadam", override)


@pytest.mark.parametrize("override", ["strategy.proximal_mu=-0.1", "strategy.proximal_mu=abc"])
def test_bad_proximal_mu_is_a_config_error(small_plan, override) -> None:
    with pytest.raises(ConfigError, match=r"strategy\.proximal_mu"):
        small_plan("strategy=fedprox", override)


@pytest.mark.parametrize(
    ("override", "message"),
    [("privacy=dpsgd", "privacy=dpsgd"), ("client.self_distill={}", "client.self_distill")],
)
def test_fedprox_refuses_local_routes_without_the_term(small_plan, override, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        small_plan("strategy=fedprox", override)


def test_fedprox_sends_proximal_mu_and_fedavg_does_not(small_plan) -> None:
    fedprox = small_plan("strategy=fedprox", "strategy.proximal_mu=0.5").strategy
    assert fedprox.train_config(1)[keys.PROXIMAL_MU] == 0.5
    assert keys.PROXIMAL_MU not in small_plan("strategy=fedavg").strategy.train_config(1)


def _one_step(mu: float | None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A 4-3 linear model and its copy after one full-batch SGD step (``mu`` None: the
    call without ``proximal_mu``)."""
    torch.manual_seed(0)
    start = torch.nn.Linear(4, 3)
    model = torch.nn.Linear(4, 3)
    model.load_state_dict(start.state_dict())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=16)
    hparams = {"epochs": 2, "batch_size": 8, "lr": 0.5, "optimizer": "sgd", "momentum": 0.0}
    extra = {} if mu is None else {"proximal_mu": mu}
    train_local(model, x, y, seed=3, **hparams, **extra)
    return start, model


def _drift(start: torch.nn.Module, model: torch.nn.Module) -> float:
    return sum(
        float((p - q).detach().pow(2).sum())
        for p, q in zip(model.parameters(), start.parameters(), strict=True)
    )


def test_proximal_term_keeps_the_client_near_the_global_weights() -> None:
    start, plain = _one_step(None)
    _, zero = _one_step(0.0)
    _, proximal = _one_step(1.0)
    for p, q in zip(plain.parameters(), zero.parameters(), strict=True):
        assert torch.equal(p, q)  # mu = 0 is exactly plain training
    assert 0 < _drift(start, proximal) < _drift(start, plain)
    with pytest.raises(ValueError, match="proximal_mu"):
        _one_step(-1.0)


@pytest.mark.parametrize("method", ["fedadam", "fedyogi", "fedadagrad", "fedprox"])
def test_whole_run_completes(method, task_identity, in_process_run, small_overrides, tmp_path):
    summary = in_process_run(small_overrides(3, f"strategy={method}", "num_rounds=2"), tmp_path)
    assert 0.0 <= summary["final"]["student_accuracy"] <= 1.0


def test_fedprox_reaches_the_clients(task_identity, in_process_run, small_overrides, tmp_path):
    def run(*extra: str) -> dict:
        overrides = small_overrides(3, "num_rounds=1", *extra)
        final = in_process_run(overrides, tmp_path / "_".join(extra))["final"]
        return {k: v for k, v in final.items() if k != "seconds"}  # wall time differs

    fedavg = run("strategy=fedavg")
    assert run("strategy=fedprox", "strategy.proximal_mu=0") == fedavg  # mu = 0: FedAvg
    assert run("strategy=fedprox", "strategy.proximal_mu=5")["train_loss"] != fedavg["train_loss"]


def test_fedadam_resumed_run_matches_an_uninterrupted_one(tmp_path, two_round_overrides) -> None:
    from fedkd.config import compose_config
    from fedkd.run.results import read_metrics
    from simulations.run import resume_config, run

    small = two_round_overrides("backend=inline", "progress=false", "strategy=fedadam")

    def rows(name: str) -> list[dict]:
        return [
            {k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(tmp_path / name)
        ]

    whole = run(compose_config([*small, "num_rounds=4", "checkpoint.every=0"]), tmp_path / "whole")
    run(compose_config([*small, "num_rounds=2", "checkpoint.every=2"]), tmp_path / "parts")
    cfg = resume_config(
        tmp_path / "parts", compose_config([*small, "num_rounds=4"]), ["num_rounds=4"]
    )
    resumed = run(cfg, tmp_path / "parts", resume=True)
    assert resumed["resumed_from_round"] == 2 and resumed["rounds_completed"] == 4
    assert rows("whole") == rows("parts")  # m and v came back from the checkpoint
    assert resumed["final"]["student_accuracy"] == whole["final"]["student_accuracy"]
