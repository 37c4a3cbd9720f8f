"""FedMD, DS-FL, FedET, FD, local-only and centralized: aggregation on fake replies (no Ray),
and each method end to end on an in-process grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedkd.apps.client import app as client_app
from fedkd.apps.server import prepare_run
from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.run.results import read_metrics
from fedkd.wire import keys
from fedkd.wire.payloads.label_logits import FDOptions
from strategies.fd import global_label_logits


@pytest.fixture
def small(small_overrides) -> list[str]:
    """The small task on 2 clients with 8-unit models, a labeled proxy of 4 records and one
    distillation epoch."""
    proxy = ("data.proxy_labeled=true", "data.proxy_size=4", "++strategy.distill_epochs=1")
    return small_overrides(2, "model.hidden=[8]", "student.hidden=[8]", *proxy)


def _strategy(small: list[str], *extra: str):
    return prepare_run(compose_config([*small, *extra])).strategy


def _requests(strategy) -> list[Message]:
    strategy.node_of_partition = {0: 11, 1: 22}
    return list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid=None))


def _prediction_reply(request: Message, probs: np.ndarray, n: int) -> Message:
    return Message(
        RecordDict(
            {
                keys.METRICS: MetricRecord(
                    {keys.NUM_EXAMPLES: n, keys.TRAIN_LOSS: 0.1, keys.SERVER_ROUND: 1}
                ),
                keys.PREDICTIONS: ArrayRecord({keys.PROXY_PROBS: Array(probs.astype(np.float32))}),
            }
        ),
        reply_to=request,
    )


P0 = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
P1 = np.array([[0.2, 0.7, 0.1], [0.0, 0.4, 0.6], [0.5, 0.3, 0.2], [0.0, 0.0, 1.0]])
MEAN = np.array([[0.4, 0.5, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.5, 0.0, 0.5]])


def test_fedmd_consensus_is_the_mean_and_is_sent_back_next_round(task_identity, small) -> None:
    strategy = _strategy(small, "strategy=fedmd", "strategy.teacher_space=probs")
    requests = _requests(strategy)
    config = requests[0].content.config_records[keys.CONFIG]
    assert config[keys.KEEP_MODEL] is True
    assert config[keys.PAYLOADS] == "client-metrics,proxy-predictions,test-predictions"
    assert keys.ARRAYS not in requests[0].content.array_records  # no weights travel
    replies = [_prediction_reply(requests[0], P0, 10), _prediction_reply(requests[1], P1, 30)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and len(arrays) == 0
    np.testing.assert_allclose(strategy.round_targets[keys.PROXY_PROBS].numpy(), MEAN, atol=1e-6)
    metrics = strategy.round_metrics[1]
    assert "student_accuracy_before_distill" in metrics and "distill_loss" in metrics
    # Round 2 messages carry the consensus and name the round it refers to.
    strategy.node_of_partition = {0: 11, 1: 22}
    round2 = list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), grid=None))
    assert round2[0].content.config_records[keys.CONFIG][keys.TARGETS_ROUND] == 1
    np.testing.assert_allclose(
        round2[0].content.array_records[keys.TARGETS][keys.PROXY_PROBS].numpy(), MEAN, atol=1e-6
    )
    targets_bytes = strategy.round_targets.count_bytes()
    assert strategy.round_metrics[2]["downlink_bytes"] == 2 * targets_bytes


def test_size_weighted_rule_applies_to_fedmd(task_identity, small) -> None:
    strategy = _strategy(
        small, "strategy=fedmd", "aggregation=size_weighted", "strategy.teacher_space=probs"
    )
    requests = _requests(strategy)
    replies = [_prediction_reply(requests[0], P0, 10), _prediction_reply(requests[1], P1, 30)]
    strategy.aggregate_train(1, replies)
    expected = 0.25 * P0 + 0.75 * P1
    np.testing.assert_allclose(
        strategy.round_targets[keys.PROXY_PROBS].numpy(), expected, atol=1e-6
    )


def test_dsfl_sharpens_the_mean_with_era(task_identity, small) -> None:
    strategy = _strategy(small, "strategy=dsfl", "strategy.era_temperature=0.5")
    requests = _requests(strategy)
    strategy.aggregate_train(
        1, [_prediction_reply(requests[0], P0, 10), _prediction_reply(requests[1], P1, 10)]
    )
    row = [math.exp(v / 0.5) for v in MEAN[0]]
    expected_first = [v / sum(row) for v in row]
    targets = strategy.round_targets[keys.PROXY_PROBS].numpy()
    np.testing.assert_allclose(targets[0], expected_first, atol=1e-6)
    assert targets[0].max() > MEAN[0].max() * 0.0 + targets[0].min()  # not uniform
    entropy = lambda p: -(p * np.log(np.clip(p, 1e-12, 1))).sum()  # noqa: E731
    # ERA with T < 1 over probabilities in [0, 1]: sharper than softmax(mean) at T = 1
    soft = np.exp(MEAN[0]) / np.exp(MEAN[0]).sum()
    assert entropy(targets[0]) < entropy(soft)


def test_fedet_weights_confident_clients_and_feeds_the_student_back(task_identity, small) -> None:
    strategy = _strategy(small, "strategy=fedet")
    requests = _requests(strategy)
    strategy.aggregate_train(
        1, [_prediction_reply(requests[0], P0, 10), _prediction_reply(requests[1], P1, 10)]
    )
    from fedkd.train import predict_probs

    data = strategy.assets.data
    student_probs = predict_probs(strategy.assets.student, data.proxy_x[strategy.proxy_indices])
    np.testing.assert_allclose(
        strategy.round_targets[keys.PROXY_PROBS].numpy(), student_probs, atol=1e-6
    )
    # last example: client 0 certain of class 0, client 1 of class 2 -> equal weights;
    # third example: client 0 (max 0.5) vs client 1 (max 0.5) -> mean; first example:
    # client 1 is more confident (0.7 vs 0.6): weights 0.6/1.3 and 0.7/1.3
    consensus = strategy.teacher_targets(
        np.stack([P0, P1]),
        strategy.decode(
            [_prediction_reply(requests[0], P0, 10), _prediction_reply(requests[1], P1, 10)]
        ),
    )
    np.testing.assert_allclose(consensus[0], (0.6 * P0[0] + 0.7 * P1[0]) / 1.3, atol=1e-6)


def test_fd_global_label_logits_by_hand() -> None:
    logits = np.array([[[1.0, 0.0], [0.0, 0.0]], [[3.0, 2.0], [0.0, 4.0]]])  # client, label, logit
    counts = np.array([[1.0, 0.0], [3.0, 2.0]])
    global_logits, totals = global_label_logits(logits, counts)
    # label 0: (1*[1,0] + 3*[3,2]) / 4 = [2.5, 1.5]; label 1: only client 1 -> [0, 4]
    np.testing.assert_allclose(global_logits, [[2.5, 1.5], [0.0, 4.0]])
    np.testing.assert_allclose(totals, [4.0, 2.0])


def test_fd_options_travel_as_sent_and_clients_keep_no_defaults(task_identity, small) -> None:
    strategy = _strategy(small, "strategy=fd", "strategy.beta=0.25", "strategy.temperature=2.0")
    config = _requests(strategy)[0].content.config_records[keys.CONFIG]
    assert (config[keys.FD_BETA], config[keys.FD_TEMPERATURE]) == (0.25, 2.0)
    assert FDOptions.from_config(config) == FDOptions(beta=0.25, temperature=2.0)
    with pytest.raises(ConfigError, match="fd-beta"):
        FDOptions.from_config(ConfigRecord({keys.FD_TEMPERATURE: 1.0}))


def test_fd_shares_only_per_label_logits(task_identity, in_process_run, tmp_path, small) -> None:
    summary = in_process_run([*small, "strategy=fd", "num_rounds=2"], tmp_path)
    rows = read_metrics(tmp_path)
    classes = 3
    per_client = (classes * classes + classes) * 4  # float32 payload, before record overhead
    assert rows[-1]["clients_ok"] == 2
    assert 2 * per_client <= rows[-1]["uplink_bytes"] < 2 * per_client + 2 * 1024
    assert summary["final"]["student_accuracy"] is not None


@pytest.mark.parametrize("method", ["fedmd", "dsfl", "fedet", "fd", "local_only"])
def test_clients_keep_their_models_across_rounds(
    method, task_identity, in_process_grid, small
) -> None:
    plan = prepare_run(compose_config([*small, f"strategy={method}"]))
    grid = in_process_grid(client_app, 2)
    plan.strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=2)
    for context in grid.contexts.values():
        assert keys.STATE_MODEL in context.state.array_records
    metrics = plan.strategy.round_metrics[2]
    assert metrics["clients_ok"] == 2
    assert 0.0 <= metrics["personalized_accuracy_mean"] <= 1.0
    assert metrics["client_accuracy_min"] <= metrics["client_accuracy_mean"]
    assert metrics["client_accuracy_mean"] <= metrics["client_accuracy_max"]
    if method == "local_only":
        assert metrics["uplink_bytes"] == 0 and "ensemble_accuracy" not in metrics
    else:
        assert 0.0 <= metrics["ensemble_accuracy"] <= 1.0


def test_local_only_has_no_student(in_process_run, tmp_path, small) -> None:
    summary = in_process_run([*small, "strategy=local_only", "num_rounds=2"], tmp_path)
    assert summary["final"]["student_accuracy"] is None
    assert summary["communication"]["uplink_bytes"] == 0
    assert 0.0 <= summary["final"]["client_accuracy_mean"] <= 1.0


def test_centralized_trains_on_the_pooled_client_data(in_process_run, tmp_path, small) -> None:
    plan = prepare_run(compose_config([*small, "strategy=centralized"]))
    data = plan.assets.data
    expected = sum(len(data.client_data(p).train_y) for p in range(data.num_clients))
    assert len(plan.strategy.pooled_y) == expected
    summary = in_process_run([*small, "strategy=centralized", "num_rounds=3"], tmp_path)
    rows = read_metrics(tmp_path)
    assert all(r["clients_sampled"] == 0 and r["uplink_bytes"] == 0 for r in rows[1:])
    assert summary["final"]["student_accuracy"] > rows[0]["student_accuracy"]


def test_fedmd_warmup_on_the_labeled_proxy_changes_the_first_round(in_process_run, tmp_path, small):
    plain = in_process_run([*small, "strategy=fedmd", "num_rounds=1"], tmp_path / "a")
    warm = in_process_run(
        [*small, "strategy=fedmd", "num_rounds=1", "strategy.warmup_public_epochs=3"],
        tmp_path / "b",
    )
    assert plain["final"]["train_loss"] != warm["final"]["train_loss"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["strategy=dsfl", "strategy.era_temperature=0"], "era_temperature"),
        (
            ["strategy=fedmd", "aggregation=era", "aggregation.temperature=-1"],
            "aggregation.temperature",
        ),
        (
            ["strategy=fedmd", "data.proxy_labeled=false", "strategy.warmup_public_epochs=1"],
            "proxy_labeled",
        ),
        (["strategy=fd", "data.proxy_labeled=false"], "proxy_labeled"),
        (["strategy=fd", "strategy.beta=1.5"], "strategy.beta"),
        (["strategy=fedmd", "strategy.digest_epochs=-1"], "strategy.digest_epochs"),
        (["strategy=fedet", "strategy.weighting=vote"], "strategy.weighting"),
        (["strategy=fedmd", "data.proxy_classes=[7]"], "data.proxy_classes"),
    ],
)
def test_bad_method_settings_fail_before_ray(overrides, key, small) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        prepare_run(compose_config([*small, *overrides]))


def test_per_round_proxy_subsample_is_consistent_between_server_and_clients(
    in_process_run, tmp_path, small
) -> None:
    """Clients score this round's subset and digest last round's: shapes must agree, and
    uplink shrinks with the subset."""
    full = in_process_run(
        [*small, "strategy=dsfl", "num_rounds=3", "data.proxy_size=20"], tmp_path / "full"
    )
    sub = in_process_run(
        [
            *small,
            "strategy=dsfl",
            "num_rounds=3",
            "data.proxy_size=20",
            "strategy.proxy_round_size=5",
        ],
        tmp_path / "sub",
    )
    rows = read_metrics(tmp_path / "sub")
    assert all(r["clients_ok"] == 2 and r["clients_failed"] == 0 for r in rows[1:])
    assert sub["communication"]["uplink_bytes"] < full["communication"]["uplink_bytes"]


@pytest.mark.parametrize(
    ("overrides", "clients"),
    [
        pytest.param(
            [
                "dataset=digits",
                "model=hetero",
                "student=mlp",
                "strategy=fedmd",
                "num_clients=4",
                "num_rounds=2",
                "client.epochs=1",
                "data.proxy_size=50",
            ],
            4,
            id="heterogeneous_clients_with_fedmd",
        ),
        pytest.param(
            [
                "dataset=breast_cancer",
                "num_clients=3",
                "num_rounds=2",
                "client.epochs=1",
                "partition=iid",
                "strategy=feddf",
                "+data.proxy_dataset={name: synthetic, num_samples: 200, num_features: 30}",
            ],
            3,
            id="proxy_from_another_dataset",
        ),
    ],
)
def test_whole_runs_complete(in_process_run, tmp_path, overrides, clients) -> None:
    summary = in_process_run(overrides, tmp_path)
    assert summary["status"] == "completed"
    assert read_metrics(tmp_path)[-1]["clients_ok"] == clients


def test_feddf_clients_evaluate_their_architectures_global_model(
    in_process_run, tmp_path, small
) -> None:
    """FedDF with clients of another architecture than the student: each evaluation message
    carries the distilled model of the client's own architecture, so every client answers
    (the student's weights did not load into a client model of another class)."""
    overrides = [*small, "strategy=feddf", "num_rounds=2", "strategy.fraction_evaluate=1.0"]
    summary = in_process_run([*overrides, "model.hidden=[4]"], tmp_path)  # student: [8]
    assert summary["status"] == "completed"
    rows = read_metrics(tmp_path)
    assert all(0.0 <= row["client_accuracy"] <= 1.0 for row in rows[1:]), rows


def test_centralized_on_the_labeled_proxy_alone(small) -> None:
    plan = prepare_run(compose_config([*small, "strategy=centralized", "strategy.train_on=proxy"]))
    np.testing.assert_array_equal(plan.strategy.pooled_y, plan.assets.data.proxy_y)
    with pytest.raises(ConfigError, match="proxy_labeled"):
        prepare_run(
            compose_config(
                [
                    *small,
                    "strategy=centralized",
                    "strategy.train_on=proxy",
                    "data.proxy_labeled=false",
                ]
            )
        )
    with pytest.raises(ConfigError, match="train_on"):
        prepare_run(compose_config([*small, "strategy=centralized", "strategy.train_on=both"]))


def test_server_distillation_is_watched_on_a_held_out_proxy_split(in_process_run, tmp_path, small):
    in_process_run(
        [
            *small,
            "strategy=feddf",
            "num_rounds=2",
            "data.proxy_size=20",
            "strategy.distill_epochs=6",
            "strategy.distill_validation_fraction=0.25",
            "strategy.distill_patience=2",
        ],
        tmp_path,
    )
    row = read_metrics(tmp_path)[-1]
    assert len(row["distill_validation_curve"]) == len(row["distill_curve"]) <= 6
    assert 1 <= row["distill_best_epoch"] <= len(row["distill_curve"])
    stopped = len(row["distill_curve"]) < 6
    assert row["distill_stopped_early"] == stopped


def test_early_stopping_without_a_validation_split_is_a_config_error(small) -> None:
    with pytest.raises(ConfigError, match="distill_validation_fraction"):
        prepare_run(compose_config([*small, "strategy=feddf", "strategy.distill_patience=2"]))


def test_validation_split_is_disjoint_and_seeded(small) -> None:
    strategy = _strategy(small, "strategy=feddf", "strategy.distill_validation_fraction=0.25")
    train, held_out = strategy.validation_split(1, 20)
    assert len(held_out) == 5 and len(train) == 15
    assert not set(train) & set(held_out)
    again = strategy.validation_split(1, 20)
    np.testing.assert_array_equal(held_out, again[1])
    assert not np.array_equal(held_out, strategy.validation_split(2, 20)[1])


def test_fedmd_sends_only_the_rows_the_consensus_is_sure_of(task_identity, small) -> None:
    # only row 1 of the mean puts 0.55 or more on its top class (0.6): only it travels
    strategy = _strategy(
        small,
        "strategy=fedmd",
        "strategy.teacher_space=probs",
        "strategy.consensus_min_confidence=0.55",
    )
    requests = _requests(strategy)
    replies = [_prediction_reply(requests[0], P0, 10), _prediction_reply(requests[1], P1, 10)]
    strategy.aggregate_train(1, replies)
    targets = strategy.round_targets
    np.testing.assert_array_equal(targets[keys.TARGETS_ROWS].numpy(), [1])
    np.testing.assert_allclose(targets[keys.PROXY_PROBS].numpy(), MEAN[[1]], atol=1e-6)


def test_fedmd_warm_up_rounds_send_no_consensus(task_identity, small) -> None:
    strategy = _strategy(
        small, "strategy=fedmd", "strategy.teacher_space=probs", "strategy.digest_from_round=3"
    )
    requests = _requests(strategy)
    replies = [_prediction_reply(requests[0], P0, 10), _prediction_reply(requests[1], P1, 10)]
    strategy.aggregate_train(1, replies)
    assert strategy.round_targets is None  # round 2 trains locally only
    assert "distill_loss" in strategy.round_metrics[1]  # the student still learns
    strategy.node_of_partition = {0: 11, 1: 22}
    round2 = list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), grid=None))
    assert keys.TARGETS not in round2[0].content.array_records
    replies = [_prediction_reply(round2[0], P0, 10), _prediction_reply(round2[1], P1, 10)]
    for reply in replies:
        reply.content[keys.METRICS][keys.SERVER_ROUND] = 2
    strategy.aggregate_train(2, replies)
    assert strategy.round_targets is not None  # round 3 digests round 2's consensus


def test_fedmd_keeps_the_most_confident_share_of_the_rows(task_identity, small) -> None:
    # top-class confidences of MEAN: 0.5, 0.6, 0.5, 0.5; half the rows: row 1, then row 0
    strategy = _strategy(
        small,
        "strategy=fedmd",
        "strategy.teacher_space=probs",
        "strategy.consensus_keep_fraction=0.5",
    )
    requests = _requests(strategy)
    replies = [_prediction_reply(requests[0], P0, 10), _prediction_reply(requests[1], P1, 10)]
    strategy.aggregate_train(1, replies)
    targets = strategy.round_targets
    np.testing.assert_array_equal(targets[keys.TARGETS_ROWS].numpy(), [0, 1])
    np.testing.assert_allclose(targets[keys.PROXY_PROBS].numpy(), MEAN[[0, 1]], atol=1e-6)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy.consensus_keep_fraction=0", r"consensus_keep_fraction must be in \(0, 1\]"),
        ("strategy.consensus_min_confidence=1.0", r"consensus_min_confidence must be in \[0, 1\)"),
        ("strategy.digest_from_round=1", r"digest_from_round must be >= 2"),
    ],
)
def test_consensus_levers_are_checked(small, override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _strategy(small, "strategy=fedmd", override)
