"""FedGKT: its payload (features) checked and decoded, the server model trained on fake
replies and its logits sent back per client, the clients' KD step against a direct
distillation, state through checkpoints, refused privacy, and an in-process run."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedkd.apps.server import prepare_run
from fedkd.config import compose_config
from fedkd.distill import KDLoss, distill
from fedkd.errors import ConfigError
from fedkd.run.results import read_metrics
from fedkd.train import predict_logits
from fedkd.wire import keys
from fedkd.wire.encoding import EncodingSpec
from fedkd.wire.payloads import ClientRound, Poisoner
from fedkd.wire.payloads.features import (
    FEATURE_LABELS,
    FEATURE_LOGITS,
    FEATURES,
    SERVER_LOGITS,
    TEST_FEATURES,
    Features,
    embed,
)

# 3 classes, 6 features, client embedding width D = 4, two clients of 30 records each
SMALL = [
    "dataset=synthetic",
    "dataset.num_samples=300",
    "dataset.num_features=6",
    "dataset.num_classes=3",
    "partition=iid",
    "num_clients=2",
    "model.hidden=[4]",
    "client.epochs=1",
    "strategy=fedgkt",
    "strategy.server_hidden=[8]",
    "strategy.distill_epochs=2",
]


def _strategy(*extra: str):
    strategy = prepare_run(compose_config([*SMALL, *extra])).strategy
    strategy.node_of_partition = {0: 11, 1: 22}
    strategy.label_histograms = {0: [10, 10, 10], 1: [10, 10, 10]}
    return strategy


def _requests(strategy, server_round: int) -> list[Message]:
    return list(strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid=None))


def _reply(request: Message, num_examples: int = 30, **arrays: np.ndarray) -> Message:
    config = request.content.config_records[keys.CONFIG]
    predictions = {k: v for k, v in arrays.items() if k != TEST_FEATURES}
    content = RecordDict(
        {
            keys.METRICS: MetricRecord(
                {
                    keys.NUM_EXAMPLES: num_examples,
                    keys.TRAIN_LOSS: 0.5,
                    keys.SERVER_ROUND: config[keys.SERVER_ROUND],
                }
            ),
            keys.PREDICTIONS: ArrayRecord(
                {k: Array(np.asarray(v)) for k, v in predictions.items()}
            ),
        }
    )
    if TEST_FEATURES in arrays:
        content[keys.EVALUATION] = ArrayRecord({TEST_FEATURES: Array(arrays[TEST_FEATURES])})
    return Message(content, reply_to=request)


def _shared(rows: int, seed: int, *, width: int = 4, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        FEATURES: rng.normal(size=(rows, width)).astype(np.float32),
        FEATURE_LOGITS: rng.normal(size=(rows, classes)).astype(np.float32),
        FEATURE_LABELS: rng.integers(0, classes, size=rows).astype(np.int64),
    }


def test_server_model_learns_from_features_and_sends_each_client_its_logits(
    task_identity,
) -> None:
    strategy = _strategy()
    first = _requests(strategy, 1)
    config = first[0].content.config_records[keys.CONFIG]
    assert config[keys.PAYLOADS] == "client-metrics,features,test-predictions,test-features"
    assert config["gkt-temperature"] == 3.0 and config["gkt-alpha"] == 0.5
    assert all(keys.TARGETS not in m.content.array_records for m in first)  # round 1: CE only
    shared = [_shared(30, 0), _shared(20, 1)]  # the second client sends 20 of its 30 rows
    before = copy.deepcopy(strategy.server_model.state_dict())
    strategy.aggregate_train(1, [_reply(first[0], **shared[0]), _reply(first[1], **shared[1])])
    metrics = strategy.round_metrics[1]
    assert metrics["clients_ok"] == 2 and metrics["clients_failed"] == 0
    after = strategy.server_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the server model trained
    second = _requests(strategy, 2)
    for message, sent in zip(second, shared, strict=True):
        logits = message.content.array_records[keys.TARGETS][SERVER_LOGITS].numpy()
        expected = predict_logits(strategy.server_model, sent[FEATURES])
        assert logits.shape == (len(sent[FEATURES]), 3)  # one row per feature row sent
        np.testing.assert_array_equal(logits, expected)
    # uplink counts the features payload's arrays (features, logits, labels), nothing else
    floats = sum(
        s[FEATURES].nbytes + s[FEATURE_LOGITS].nbytes + s[FEATURE_LABELS].nbytes for s in shared
    )
    assert floats < metrics["uplink_bytes"] < floats + 1000


def test_student_accuracy_is_the_server_model_on_each_clients_test_embedding(
    task_identity,
) -> None:
    strategy = _strategy()
    requests = _requests(strategy, 1)
    test_rows = len(strategy.assets.data.test_y)
    rng = np.random.default_rng(5)
    test_features = [rng.normal(size=(test_rows, 4)).astype(np.float32) for _ in range(2)]
    replies = [
        _reply(r, **_shared(30, i), **{TEST_FEATURES: test_features[i]})
        for i, r in enumerate(requests)
    ]
    strategy.aggregate_train(1, replies)
    test_y = strategy.assets.data.test_y
    by_hand = [
        float((predict_logits(strategy.server_model, f).argmax(axis=1) == test_y).mean())
        for f in test_features
    ]
    metrics = strategy.round_metrics[1]
    assert strategy.global_accuracy(1) == pytest.approx(np.mean(by_hand))
    assert (metrics["combined_accuracy_min"], metrics["combined_accuracy_max"]) == (
        min(by_hand),
        max(by_hand),
    )
    assert "student_balanced_accuracy" not in metrics and "student_auc" not in metrics


def test_binary_task_scores_are_means_over_each_clients_test_embedding(task_identity) -> None:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    strategy = _strategy("dataset.num_classes=2")
    requests = _requests(strategy, 1)
    test_y = strategy.assets.data.test_y
    rng = np.random.default_rng(6)
    test_features = [rng.normal(size=(len(test_y), 4)).astype(np.float32) for _ in range(2)]
    replies = [
        _reply(r, **_shared(30, i, classes=2), **{TEST_FEATURES: test_features[i]})
        for i, r in enumerate(requests)
    ]
    strategy.aggregate_train(1, replies)
    probs = [
        torch.softmax(torch.from_numpy(predict_logits(strategy.server_model, f)), dim=1).numpy()
        for f in test_features
    ]
    metrics = strategy.round_metrics[1]
    assert metrics["student_balanced_accuracy"] == pytest.approx(
        np.mean([balanced_accuracy_score(test_y, p.argmax(axis=1)) for p in probs])
    )
    assert metrics["student_auc"] == pytest.approx(
        np.mean([roc_auc_score(test_y, p[:, 1]) for p in probs])
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda s: s.pop(FEATURES), "missing features"),
        (lambda s: s.update({k: np.concatenate([v, v]) for k, v in s.items()}), "row count"),
        (lambda s: s.update({FEATURES: np.zeros((30, 5), np.float32)}), "features: wrong shape"),
        (lambda s: s.update({FEATURE_LABELS: s[FEATURE_LABELS].astype(np.float32)}), "dtype"),
        (lambda s: s[FEATURES].__setitem__((0, 0), np.nan), "features: not finite"),
        (lambda s: s[FEATURE_LOGITS].__setitem__((1, 1), 1e6), "absurd magnitude"),
        (lambda s: s[FEATURE_LABELS].__setitem__(2, 3), "label out of range"),
    ],
)
def test_unusable_features_are_rejected_with_their_reason(task_identity, change, reason) -> None:
    strategy = _strategy()
    requests = _requests(strategy, 1)
    bad = _shared(30, 0)
    change(bad)
    strategy.aggregate_train(1, [_reply(requests[0], **bad), _reply(requests[1], **_shared(30, 1))])
    reasons = strategy.round_metrics[1]["failure_reasons"]
    assert sum(reasons.values()) == 1 and reason in next(iter(reasons))
    assert strategy.round_metrics[1]["clients_ok"] == 1


def test_client_training_distills_toward_the_server_logits(task_identity) -> None:
    plan = prepare_run(compose_config(SMALL))
    setup, data = plan.assets.setup, plan.assets.data
    client_data = data.client_data(0)
    model = plan.strategy.architecture_model(0)
    start = copy.deepcopy(model.state_dict())
    server_logits = np.random.default_rng(3).normal(size=(len(client_data.train_y), 3))
    targets = ArrayRecord({SERVER_LOGITS: Array(server_logits.astype(np.float32))})
    client = ClientRound(
        setup=setup,
        data=data,
        client_data=client_data,
        model=model,
        device=torch.device("cpu"),
        partition_id=0,
        architecture=0,
        config=ConfigRecord({"gkt-temperature": 2.0, "gkt-alpha": 0.7}),
        targets=targets,
        server_round=2,
        seed=17,
        privacy=plan.assets.privacy,
        encoding=EncodingSpec(),
        poison=Poisoner("", 1.0, 0, 17, None),
    )
    loss = Features().train(client)
    trained = copy.deepcopy(model.state_dict())
    model.load_state_dict(start)  # the same step by hand
    report = distill(
        model,
        client_data.train_x,
        torch.softmax(torch.from_numpy(server_logits.astype(np.float32)).double(), dim=1)
        .float()
        .numpy(),
        loss=KDLoss(temperature=2.0, alpha=0.7),
        epochs=setup.local.epochs,
        batch_size=setup.local.batch_size,
        lr=setup.local.lr,
        optimizer=setup.local.optimizer,
        proxy_y=client_data.train_y,
        seed=17,
        device="cpu",
        weight_decay=setup.local.weight_decay,
    )
    assert loss == report.epoch_losses[-1]
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained[name])
    # without server logits (round 1) the payload leaves training to the default route
    client.targets = None
    assert Features().train(client) is None
    embeddings, logits = embed(model, client_data.train_x, device=torch.device("cpu"))
    assert embeddings.shape == (len(client_data.train_y), 4) and logits.shape[1] == 3


def test_server_model_and_logits_survive_a_checkpoint(task_identity) -> None:
    strategy = _strategy()
    requests = _requests(strategy, 1)
    strategy.aggregate_train(1, [_reply(r, **_shared(30, i)) for i, r in enumerate(requests)])
    saved = strategy.checkpoint_state()
    fresh = _strategy()
    fresh.load_checkpoint_state(saved)
    for name, value in strategy.server_model.state_dict().items():
        assert torch.equal(value, fresh.server_model.state_dict()[name])
    for partition, logits in strategy.server_logits.items():
        np.testing.assert_array_equal(fresh.server_logits[partition], logits)


@pytest.mark.parametrize(
    ("privacy", "message"),
    [("dpsgd", r"private data \(features\)"), ("logit_dp", "shares no proxy predictions")],
)
def test_privacy_mechanisms_are_refused(privacy: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        prepare_run(compose_config([*SMALL, f"privacy={privacy}"]))


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"strategy\.alpha"):
        prepare_run(compose_config([*SMALL, "strategy.alpha=1.5"]))
    with pytest.raises(ConfigError, match=r"strategy\.temperature"):
        prepare_run(compose_config([*SMALL, "strategy.temperature=0"]))
    hetero = [o for o in SMALL if not o.startswith("model.")]
    widths = "model.architectures=[{name: mlp, hidden: [4]}, {name: mlp, hidden: [5]}]"
    with pytest.raises(ConfigError, match="same embedding width"):
        prepare_run(compose_config([*hetero, "model=hetero", widths]))


def test_fedgkt_runs_in_process_and_the_combined_model_learns(in_process_run, tmp_path) -> None:
    summary = in_process_run(
        [*SMALL, "num_rounds=3", "strategy.distill_epochs=20", "strategy.distill_lr=0.01"],
        tmp_path,
    )
    assert summary["status"] == "completed"
    rows = read_metrics(tmp_path)
    accuracies = [r["student_accuracy"] for r in rows[1:]]
    assert all(a is not None for a in accuracies)
    # well above chance, and above the clients' own one-epoch models (the server model adds)
    assert accuracies[-1] > 0.8
    assert accuracies[-1] > rows[-1]["client_accuracy_mean"] + 0.2
    assert all(r["clients_ok"] == 2 and r["uplink_bytes"] > 0 for r in rows[1:])
    assert all(r["downlink_bytes"] > 0 for r in rows[2:])  # server logits from round 2 on
