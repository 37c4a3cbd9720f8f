"""SCAFFOLD: the client's control update by hand, FedAvg at zero controls, the server's
control update on fake replies, malformed control replies, refusals and whole runs."""

from __future__ import annotations

import copy
import pickle
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedkd.errors import ConfigError
from fedkd.setup import TrainSettings
from fedkd.train import train_local
from fedkd.wire import keys
from fedkd.wire.payloads import ControlVariates, Poisoner
from fedkd.wire.payloads.base import ClientRound

LR = 0.3
N_EXAMPLES = 12


# ---------------------------------------------------------------------------- client side


def _linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(N_EXAMPLES, 3)).astype(np.float32), rng.integers(0, 2, N_EXAMPLES)


def _client(
    model: torch.nn.Module,
    *,
    epochs: int,
    server_control: np.ndarray | None,
    state: RecordDict,
    server_round: int = 2,
) -> ClientRound:
    """A ClientRound of one client on the tiny task: full-batch plain SGD (one step per
    epoch, so ``K = epochs``)."""
    x, y = _data()
    settings = TrainSettings(
        epochs=epochs, batch_size=N_EXAMPLES, lr=LR, optimizer="sgd", momentum=0.0
    )
    targets = (
        None
        if server_control is None
        else ArrayRecord({keys.SERVER_CONTROL: Array(server_control.astype(np.float32))})
    )
    return ClientRound(
        setup=SimpleNamespace(local=settings),  # type: ignore[arg-type]
        data=SimpleNamespace(num_classes=2),  # type: ignore[arg-type]
        client_data=SimpleNamespace(train_x=x, train_y=y),  # type: ignore[arg-type]
        model=model,  # type: ignore[arg-type]
        device=torch.device("cpu"),
        partition_id=0,
        architecture=0,
        config=ConfigRecord(),
        targets=targets,
        server_round=server_round,
        seed=5,
        privacy=None,  # type: ignore[arg-type]
        encoding=None,  # type: ignore[arg-type]
        poison=Poisoner("", 1.0, 0, 5, None),
        state=state,
    )


def _flat(model: torch.nn.Module) -> np.ndarray:
    return np.concatenate(
        [p.detach().numpy().astype(np.float64).ravel() for p in model.parameters()]
    )


def _by_hand(start: torch.nn.Module, c: np.ndarray, c_i: np.ndarray, steps: int):
    """``K`` full-batch steps ``y <- y - lr (g(y) - c_i + c)`` written out, the raw
    gradients ``g(y_k)`` along the way, and ``y``."""
    x, y = _data()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    weight = start.weight.detach().clone().double().requires_grad_(True)
    bias = start.bias.detach().clone().double().requires_grad_(True)
    correction = torch.from_numpy(c - c_i)
    gradients = []
    for _ in range(steps):
        loss = F.cross_entropy(xt.double() @ weight.T + bias, yt)
        g_w, g_b = torch.autograd.grad(loss, (weight, bias))
        g = torch.cat([g_w.ravel(), g_b.ravel()])
        gradients.append(g.numpy())
        with torch.no_grad():
            new = torch.cat([weight.ravel(), bias.ravel()]) - LR * (g + correction)
            weight.copy_(new[: weight.numel()].reshape(weight.shape))
            bias.copy_(new[weight.numel() :])
    return np.stack(gradients), torch.cat([weight.ravel(), bias.ravel()]).detach().numpy()


def test_client_control_update_is_the_papers_formula() -> None:
    steps = 4
    model = _linear()
    start = copy.deepcopy(model)
    x0 = _flat(start)
    rng = np.random.default_rng(7)
    c, c_i = rng.normal(0, 0.3, size=8), rng.normal(0, 0.3, size=8)
    state = RecordDict({keys.STATE_CONTROL: ArrayRecord({keys.CONTROL: Array(c_i)})})
    client = _client(model, epochs=steps, server_control=c, state=state)
    payload = ControlVariates()

    assert payload.train(client) is not None
    sent = payload.compute(client)[keys.CONTROL_DELTA].numpy()

    gradients, y_hand = _by_hand(start, c.astype(np.float32).astype(np.float64), c_i, steps)
    y = _flat(model)
    np.testing.assert_allclose(y, y_hand, rtol=1e-5, atol=1e-6)  # corrected local steps
    c_sent = c.astype(np.float32).astype(np.float64)  # c travels as float32
    updated = c_i - c_sent + (x0 - y) / (steps * LR)  # Option II
    stored = state.array_records[keys.STATE_CONTROL][keys.CONTROL].numpy()
    np.testing.assert_allclose(stored, updated, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sent, updated - c_i, rtol=1e-5, atol=1e-6)
    # an independent route: with plain SGD, c_i+ is the mean raw gradient along the path
    np.testing.assert_allclose(stored, gradients.mean(axis=0), rtol=1e-4, atol=1e-5)
    assert keys.STATE_CONTROL_DELTA not in state  # sent once, not kept


def test_zero_controls_train_exactly_as_plain_sgd() -> None:
    model, plain = _linear(), _linear()
    client = _client(model, epochs=3, server_control=None, state=RecordDict(), server_round=1)
    ControlVariates().train(client)
    x, y = _data()
    train_local(plain, x, y, settings=client.train_settings, seed=client.seed)
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_client_without_the_server_control_after_round_one_fails_clearly() -> None:
    client = _client(_linear(), epochs=1, server_control=None, state=RecordDict())
    with pytest.raises(ConfigError, match="server-control"):
        ControlVariates().train(client)
    bad = _client(_linear(), epochs=1, server_control=np.zeros(5), state=RecordDict())
    with pytest.raises(ConfigError, match="shape"):
        ControlVariates().train(bad)


# ---------------------------------------------------------------------------- server side


def _scaffold(small_plan):  # needs the task_identity fixture
    strategy = small_plan("strategy=scaffold").strategy
    strategy.node_of_partition = {0: 11, 1: 22}
    strategy.label_histograms = {0: [10, 0, 0], 1: [10, 10, 10]}
    return strategy


def _weights(strategy, fill: float) -> ArrayRecord:
    return ArrayRecord(
        {
            k: Array(np.full(tuple(v.shape), fill, dtype=np.float32))
            for k, v in strategy.assets.student.state_dict().items()
        }
    )


def _size(strategy) -> int:
    return sum(p.numel() for p in strategy.assets.student.parameters())


def _round(strategy, server_round: int, fills, deltas, *, examples=(10, 30)):
    """One round: two clients answer weights all equal to ``fills`` and control updates
    ``deltas`` (an ArrayRecord, or an array to send as float32)."""
    requests = list(
        strategy.configure_train(server_round, _weights(strategy, 0.0), ConfigRecord(), None)
    )
    replies = []
    for request, fill, delta, n in zip(requests, fills, deltas, examples, strict=True):
        metrics = MetricRecord(
            {keys.NUM_EXAMPLES: n, keys.TRAIN_LOSS: 1.0, keys.SERVER_ROUND: server_round}
        )
        control = (
            delta
            if isinstance(delta, ArrayRecord)
            else ArrayRecord({keys.CONTROL_DELTA: Array(np.asarray(delta, dtype=np.float32))})
        )
        content = RecordDict(
            {keys.ARRAYS: _weights(strategy, fill), keys.CONTROL: control, keys.METRICS: metrics}
        )
        replies.append(Message(content, reply_to=request))
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return requests, arrays


def test_server_control_update_by_hand(task_identity, small_plan) -> None:
    strategy = _scaffold(small_plan)
    size = _size(strategy)
    d0, d1 = np.linspace(-1, 1, size), np.full(size, 0.25)
    requests, arrays = _round(strategy, 1, [1.0, 4.0], [d0, d1])
    sent = requests[0].content.array_records[keys.TARGETS][keys.SERVER_CONTROL].numpy()
    np.testing.assert_array_equal(sent, np.zeros(size, np.float32))  # c starts at 0
    values = np.concatenate([a.numpy().ravel() for a in arrays.values()])
    np.testing.assert_array_equal(values, np.full(values.shape, 3.25, np.float32))  # FedAvg
    # c <- c + (1/N) sum_i Delta c_i, N = num_clients = 4 (|S| = 2 answered)
    c1 = (d0.astype(np.float32).astype(np.float64) + 0.25) / 4
    np.testing.assert_allclose(strategy.server_control, c1, rtol=0, atol=1e-12)
    requests, _ = _round(strategy, 2, [1.0, 1.0], [np.ones(size), np.ones(size)])
    sent = requests[1].content.array_records[keys.TARGETS][keys.SERVER_CONTROL].numpy()
    np.testing.assert_array_equal(sent, c1.astype(np.float32))  # round 2 sends c_1
    np.testing.assert_allclose(strategy.server_control, c1 + 2 / 4, rtol=0, atol=1e-12)
    # the downlink counts c: both records, for both clients
    control_bytes = ArrayRecord(
        {keys.SERVER_CONTROL: Array(np.zeros(size, np.float32))}
    ).count_bytes()
    weight_bytes = _weights(strategy, 0.0).count_bytes()
    assert strategy.round_metrics[2]["downlink_bytes"] == 2 * (weight_bytes + control_bytes)


def test_server_control_survives_a_checkpoint(task_identity, small_plan) -> None:
    first = _scaffold(small_plan)
    size = _size(first)
    _round(first, 1, [1.0, 4.0], [np.ones(size), np.ones(size)])
    saved = pickle.loads(pickle.dumps(first.checkpoint_state()))
    resumed = _scaffold(small_plan)
    resumed.load_checkpoint_state(saved)
    np.testing.assert_array_equal(resumed.server_control, first.server_control)
    assert first.keeps_client_state()  # the clients' c_i are exported with checkpoints


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (ArrayRecord({keys.CONTROL_DELTA: Array(np.zeros(3, np.float32))}), "shape"),
        (ArrayRecord({keys.CONTROL_DELTA: Array(np.full(8, np.nan, np.float32))}), "finite"),
        (ArrayRecord({"other": Array(np.zeros(3, np.float32))}), "missing"),
        (ArrayRecord({keys.CONTROL_DELTA: Array(np.full(8, 1e6, np.float32))}), "magnitude"),
        (ArrayRecord({keys.CONTROL_DELTA: Array(np.zeros(8, np.int32))}), "dtype"),
    ],
)
def test_a_malformed_control_reply_is_rejected_and_the_round_goes_on(
    task_identity, small_plan, bad, reason
) -> None:
    strategy = _scaffold(small_plan)
    size = _size(strategy)
    if bad.get(keys.CONTROL_DELTA) is not None and bad[keys.CONTROL_DELTA].shape == (8,):
        values = bad[keys.CONTROL_DELTA].numpy()
        bad = ArrayRecord({keys.CONTROL_DELTA: Array(np.resize(values, size))})
    _, arrays = _round(strategy, 1, [1.0, 4.0], [np.ones(size), bad])
    metrics = strategy.round_metrics[1]
    assert metrics["clients_ok"] == 1 and metrics["clients_failed"] == 1
    (why,) = metrics["failure_reasons"]
    assert why.startswith("control:") and reason in why
    values = np.concatenate([a.numpy().ravel() for a in arrays.values()])
    assert np.all(values == 1.0)  # only the good reply's weights
    np.testing.assert_allclose(strategy.server_control, np.ones(size) / 4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("privacy=dpsgd", "privacy=dpsgd"),
        ("privacy=logit_dp", "privacy=logit_dp"),
        ("client.self_distill={}", "client.self_distill"),
        ("client.born_again={generations:1}", "client.born_again"),
        ("client.optimizer=adam", "client.optimizer"),
    ],
)
def test_scaffold_refuses_what_its_correction_does_not_apply_to(
    small_plan, override, message
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        small_plan("strategy=scaffold", override)


def test_scaffold_refuses_mixed_architectures(small_overrides) -> None:
    from fedkd.apps.server import prepare_run
    from fedkd.config import compose_config

    hetero = ["model=hetero", "model.architectures=[{name:mlp},{name:mlp,hidden:[32]}]"]
    with pytest.raises(ConfigError, match="single architecture"):
        prepare_run(compose_config(small_overrides(4, "strategy=scaffold", *hetero)))


# ---------------------------------------------------------------------------- whole runs


def _rows(run_dir) -> list[dict]:
    from fedkd.run.results import read_metrics

    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(run_dir)]


def test_whole_run_counts_weights_and_controls(
    task_identity, in_process_run, small_overrides, tmp_path
) -> None:
    overrides = small_overrides(3, "strategy=scaffold", "num_rounds=3")
    summary = in_process_run(overrides, tmp_path / "scaffold")
    assert summary["rounds_completed"] == 3
    assert 0.0 <= summary["final"]["student_accuracy"] <= 1.0
    from fedkd.apps.server import prepare_run
    from fedkd.config import compose_config

    student = prepare_run(compose_config([*overrides, "progress=false"])).assets.student
    weights = ArrayRecord({k: Array(v.numpy()) for k, v in student.state_dict().items()})
    size = sum(p.numel() for p in student.parameters())
    control = ArrayRecord({keys.CONTROL_DELTA: Array(np.zeros(size, np.float32))})
    server = ArrayRecord({keys.SERVER_CONTROL: Array(np.zeros(size, np.float32))})
    scaffold = {r["round"]: r for r in _rows(tmp_path / "scaffold")}
    assert sorted(scaffold) == [0, 1, 2, 3]  # round 0: the initial student
    for row in (scaffold[1], scaffold[2], scaffold[3]):
        assert row["clients_ok"] == 3
        assert row["uplink_bytes"] == 3 * (weights.count_bytes() + control.count_bytes())
        assert row["downlink_bytes"] == 3 * (weights.count_bytes() + server.count_bytes())
    # round 1 (c = c_i = 0) is FedAvg's, bit for bit; later rounds are corrected
    in_process_run(small_overrides(3, "strategy=fedavg", "num_rounds=3"), tmp_path / "fedavg")
    fedavg = {r["round"]: r for r in _rows(tmp_path / "fedavg")}
    same = ("student_accuracy", "student_loss", "train_loss", "client_accuracies")
    assert {k: scaffold[1][k] for k in same} == {k: fedavg[1][k] for k in same}
    assert scaffold[2]["train_loss"] != fedavg[2]["train_loss"]


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, two_round_overrides) -> None:
    from fedkd.config import compose_config
    from simulations.run import resume_config, run

    small = two_round_overrides("backend=inline", "progress=false", "strategy=scaffold")
    whole = run(compose_config([*small, "num_rounds=4", "checkpoint.every=0"]), tmp_path / "whole")
    run(compose_config([*small, "num_rounds=2", "checkpoint.every=2"]), tmp_path / "parts")
    cfg = resume_config(
        tmp_path / "parts", compose_config([*small, "num_rounds=4"]), ["num_rounds=4"]
    )
    resumed = run(cfg, tmp_path / "parts", resume=True)
    assert resumed["resumed_from_round"] == 2 and resumed["rounds_completed"] == 4
    assert _rows(tmp_path / "whole") == _rows(tmp_path / "parts")  # c and every c_i came back
    assert resumed["final"]["student_accuracy"] == whole["final"]["student_accuracy"]
