"""ServerApp and ClientApp end to end on an in-process grid, for every dataset and method."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedkd.run.results import ACCURACY_PLOT, BYTES_PLOT, read_metrics

TINY = ["num_clients=3", "num_rounds=1", "client.epochs=1", "strategy.fraction_evaluate=1.0"]
DATASETS = {
    "digits": ["dataset=digits"],
    "breast_cancer": ["dataset=breast_cancer"],
    "mnist1d": ["dataset=mnist1d", "dataset.num_samples=600"],
    "synthetic": ["dataset=synthetic", "dataset.num_samples=300"],
}
PARTITIONS = {
    "iid": ["partition=iid"],
    "dirichlet": ["partition=dirichlet", "partition.alpha=1.0"],
    "pathological": ["partition=pathological", "partition.classes_per_client=2"],
}


@pytest.mark.parametrize("strategy", ["fedavg", "feddf"])
@pytest.mark.parametrize("partition", list(PARTITIONS))
@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.slow
def test_every_dataset_partition_and_strategy_runs(
    dataset, partition, strategy, tmp_path, in_process_run
) -> None:
    overrides = [*TINY, *DATASETS[dataset], *PARTITIONS[partition], f"strategy={strategy}"]
    if strategy == "feddf":
        overrides.append("strategy.distill_epochs=1")
    summary = in_process_run(overrides, tmp_path)
    assert summary["status"] == "completed"
    assert summary["strategy"] == strategy and summary["dataset"] == dataset
    rows = read_metrics(tmp_path)
    assert [r["round"] for r in rows] == [0, 1]
    final = rows[-1]
    assert final["clients_ok"] == 3 and final["clients_failed"] == 0
    assert 0.0 <= final["student_accuracy"] <= 1.0
    assert 0.0 <= final["client_accuracy"] <= 1.0
    assert ("ensemble_accuracy" in final) == (strategy == "feddf")
    assert final["uplink_bytes"] > 0 and final["downlink_bytes"] > 0


def test_run_directory_contract(tmp_path, in_process_run) -> None:
    overrides = ["dataset=digits", "num_clients=4", "num_rounds=3", "client.epochs=2", "seed=3"]
    summary = in_process_run(overrides, tmp_path)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", ACCURACY_PLOT, BYTES_PLOT):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = read_metrics(tmp_path)
    required = {
        "round",
        "student_accuracy",
        "ensemble_accuracy",
        "clients_ok",
        "clients_failed",
        "uplink_bytes",
        "downlink_bytes",
        "seconds",
        "student_validation_accuracy",
        "client_accuracy_mean",
        "personalized_accuracy_mean",
    }
    for row in rows[1:]:
        assert required <= set(row), required - set(row)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    assert on_disk["final"] == rows[-1]
    assert on_disk["communication"]["uplink_bytes"] == sum(r["uplink_bytes"] for r in rows[1:])
    best = max(r["student_accuracy"] for r in rows[1:])
    assert on_disk["best"]["student_accuracy"]["value"] == best
    assert on_disk["parameters"] > 0 and on_disk["size_bytes"] == 4 * on_disk["parameters"]
    assert on_disk["seed"] == 3 and on_disk["num_rounds"] == 3


BINARY_KEYS = ("student_balanced_accuracy", "student_auc")


def test_binary_task_reports_balanced_accuracy_auc_and_the_majority_baseline(
    tmp_path, in_process_run
) -> None:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from fedkd.apps.server import prepare_run
    from fedkd.config import compose_config
    from fedkd.run.checkpoint import load_checkpoint
    from fedkd.run.results import read_partitions
    from fedkd.train import predict_probs

    overrides = ["dataset=breast_cancer", "strategy=fedavg", "num_clients=3", "num_rounds=2",
                 "client.epochs=1"]  # fmt: skip
    summary = in_process_run(overrides, tmp_path)
    rows = read_metrics(tmp_path)
    for row in rows:  # round 0 (the initial student) too
        # next to the accuracy, by the new names (fedkd/run/names.py); the aliases follow
        assert list(row)[1:4] == [
            "global_on_global_test_accuracy",
            "global_on_global_test_balanced_accuracy",
            "global_on_global_test_auc",
        ]
        assert all(0.0 <= row[key] <= 1.0 for key in BINARY_KEYS), row
    for key in BINARY_KEYS:
        assert summary["final"][key] == rows[-1][key]
        best = max(r[key] for r in rows[1:])
        assert summary["best"][key]["value"] == best
    # the final student (the checkpoint after the last round) scored by scikit-learn
    plan = prepare_run(compose_config([*overrides, "progress=false"]))
    plan.assets.student.load_state_dict(load_checkpoint(tmp_path)["student"])
    test_y = plan.assets.data.test_y
    probs = predict_probs(plan.assets.student, plan.assets.data.test_x)
    assert rows[-1]["student_balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(test_y, probs.argmax(axis=1)), abs=1e-12
    )
    assert rows[-1]["student_auc"] == pytest.approx(roc_auc_score(test_y, probs[:, 1]), abs=1e-12)
    # the majority class of the clients' training labels, as they reported them at discovery
    counts = np.sum(list(read_partitions(tmp_path).values()), axis=0)
    majority = int(np.argmax(counts))
    assert summary["majority_baseline"] == {
        "class": majority,
        "accuracy": pytest.approx(float(np.mean(test_y == majority))),
        "balanced_accuracy": 0.5,
        "auc": 0.5,
    }


def test_multiclass_rows_have_no_binary_scores(tmp_path, in_process_run) -> None:
    overrides = ["dataset=synthetic", "dataset.num_samples=300", "num_clients=3", "num_rounds=1",
                 "strategy=fedavg"]  # fmt: skip
    summary = in_process_run(overrides, tmp_path)
    for row in read_metrics(tmp_path):
        assert not set(BINARY_KEYS) & set(row), row
    assert not set(BINARY_KEYS) & set(summary["best"])
    assert set(summary["majority_baseline"]) == {"class", "accuracy"}


def test_feddf_learns_on_digits(tmp_path, in_process_run) -> None:
    summary = in_process_run(["num_rounds=5"], tmp_path)  # default: FedDF, digits, 10 clients
    assert summary["final"]["student_accuracy"] > 0.8
    assert summary["final"]["ensemble_accuracy"] > 0.8


def test_teacher_from_predictions_equals_teacher_from_weights(tmp_path, in_process_run) -> None:
    """Two routes to the same ensemble: clients' shared predictions vs the server running
    the clients' returned models. Identical training, so identical metrics; only the
    uplink differs (predictions add bytes)."""
    base = ["dataset=synthetic", "dataset.num_samples=400", "num_clients=3", "num_rounds=2"]
    by_weights = in_process_run([*base, "strategy.teacher_from=weights"], tmp_path / "w")
    by_preds = in_process_run([*base, "strategy.teacher_from=predictions"], tmp_path / "p")
    rows_w, rows_p = read_metrics(tmp_path / "w"), read_metrics(tmp_path / "p")
    for row_w, row_p in zip(rows_w[1:], rows_p[1:], strict=True):
        assert row_p["ensemble_accuracy"] == pytest.approx(row_w["ensemble_accuracy"], abs=1e-9)
        assert row_p["student_accuracy"] == pytest.approx(row_w["student_accuracy"], abs=1e-6)
        assert row_p["uplink_bytes"] > row_w["uplink_bytes"]
    assert by_preds["final"]["student_accuracy"] == pytest.approx(
        by_weights["final"]["student_accuracy"], abs=1e-6
    )


def test_same_seed_same_metrics(tmp_path, in_process_run) -> None:
    overrides = ["dataset=synthetic", "dataset.num_samples=300", "num_clients=3", "num_rounds=2"]
    in_process_run(overrides, tmp_path / "a")
    in_process_run(overrides, tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "a")) == strip(read_metrics(tmp_path / "b"))


def test_fedavg_rejects_mixed_architectures(tmp_path, in_process_run) -> None:
    from fedkd.errors import ConfigError

    for overrides in (["model=cnn", "student=mlp"], ["model=hetero", "student=mlp"]):
        with pytest.raises(ConfigError, match="same single architecture"):
            in_process_run(["strategy=fedavg", *overrides], tmp_path)
    assert not any(tmp_path.iterdir())


def test_feddf_distills_heterogeneous_clients_into_another_architecture(
    tmp_path, in_process_run
) -> None:
    """MLP and CNN clients (round-robin), a CNN-free MLP student of another width."""
    summary = in_process_run(
        [
            "model=hetero",
            "student=mlp",
            "student.hidden=[32]",
            "num_clients=4",
            "num_rounds=2",
            "client.epochs=2",
        ],
        tmp_path,
    )
    rows = read_metrics(tmp_path)
    assert summary["status"] == "completed"
    assert rows[-1]["clients_ok"] == 4
    assert 0.0 <= rows[-1]["ensemble_accuracy"] <= 1.0
    assert "student_accuracy_before_distill" in rows[-1]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model=cnn", "student=cnn", "dataset=breast_cancer"], "model"),
        (["model=cnn1d", "student=cnn1d", "dataset=digits"], "model"),
    ],
)
def test_model_that_does_not_fit_the_data_is_a_config_error(
    overrides, key, tmp_path, in_process_run
):
    from fedkd.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        in_process_run(overrides, tmp_path)


def test_image_and_sequence_models_run(tmp_path, in_process_run) -> None:
    for overrides in (
        ["model=cnn", "student=cnn", "dataset=digits"],
        ["model=cnn1d", "student=cnn1d", "dataset=mnist1d", "dataset.num_samples=600"],
    ):
        name = overrides[0].split("=")[1]
        summary = in_process_run([*overrides, *TINY[:3]], tmp_path / name)
        assert summary["model"] == name and summary["status"] == "completed"
        assert np.isfinite(summary["final"]["student_accuracy"])


def test_validation_set_is_the_pooled_local_test_splits() -> None:
    from fedkd.apps.server import prepare_run, validation_set
    from fedkd.config import compose_config

    data = prepare_run(compose_config(["num_clients=4"])).assets.data
    x, y = validation_set(data)
    assert len(y) == sum(len(data.client_data(p).test_y) for p in range(4))
    test_rows = {row.tobytes() for row in data.test_x}
    train_rows = {
        row.tobytes()
        for row in data.train_x[np.concatenate([data.partitions[p] for p in range(4)])]
    }
    val_rows = {row.tobytes() for row in x}
    assert not val_rows & test_rows  # never the server test set
    assert val_rows <= train_rows  # drawn from the clients' partitions
    for p in range(4):  # ...but never from what a client trains on
        assert not val_rows & {row.tobytes() for row in data.client_data(p).train_x}
