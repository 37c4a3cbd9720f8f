"""experiment=reference (issue 19, item 6): the independent implementation's protocol as one
preset, its per-method settings, and the federation it fixes across training seeds."""

from __future__ import annotations

import json

import pytest

from fedkd.apps.server import prepare_run
from fedkd.config import compose_config
from fedkd.models import count_parameters

REFERENCE = ["experiment=reference"]


def test_the_protocol() -> None:
    cfg = compose_config(REFERENCE)
    assert cfg["dataset"]["name"] == "digits" and cfg["backend"]["name"] == "inline"
    assert (cfg["num_clients"], cfg["num_rounds"], cfg["data_seed"]) == (20, 30, 0)
    assert cfg["partition"] == {
        "name": "dirichlet",
        "alpha": 0.1,
        "min_partition_size": 5,
        "self_balancing": True,
    }
    assert cfg["data"]["test_fraction"] == 0.2 and cfg["data"]["proxy_fraction"] == 0.2
    assert cfg["data"]["local_test_fraction"] == 0.0 and cfg["data"]["proxy_labeled"] is False
    client = cfg["client"]
    assert (client["epochs"], client["batch_size"], client["lr"]) == (2, 32, 0.1)
    assert (client["optimizer"], client["momentum"]) == ("sgd", 0.0)
    assert cfg["diagnostics"]["client_test_predictions"] is True
    assert cfg["strategy"]["fraction_evaluate"] == 0.0


@pytest.mark.parametrize(
    ("strategy", "expected", "temperature"),
    [
        (
            "feddf",
            {
                "distill_epochs": 40,
                "distill_batch_size": 64,
                "distill_lr": 0.001,
                "teacher_space": "tempered_probs",
            },
            3.0,
        ),
        (
            "fedmd",
            {
                "teacher_space": "logits",
                "digest_optimizer": "sgd",
                "digest_lr": 0.05,
                "digest_momentum": 0.9,
                "digest_epochs": 1,
                "digest_soft_loss": "mae",
            },
            1.0,
        ),
        (
            "dsfl",
            {"teacher_space": "probs", "era_temperature": 0.1, "digest_optimizer": "sgd"},
            1.0,
        ),
    ],
)
def test_each_method_gets_the_independent_implementations_settings(
    strategy, expected, temperature
) -> None:
    cfg = compose_config([*REFERENCE, f"strategy={strategy}"])
    assert {k: cfg["strategy"][k] for k in expected} == expected
    assert cfg["distill"]["temperature"] == temperature


def test_the_command_line_still_wins() -> None:
    cfg = compose_config(
        [*REFERENCE, "strategy=fedmd", "strategy.digest_lr=0.01", "partition.alpha=1.0"]
    )
    assert cfg["strategy"]["digest_lr"] == 0.01 and cfg["partition"]["alpha"] == 1.0
    # without the experiment, the method keeps its own defaults
    assert compose_config(["strategy=fedmd"])["strategy"]["digest_optimizer"] == "adam"


@pytest.mark.parametrize(("model", "parameters"), [("mlp", 9_610), ("cnn", 29_066)])
def test_the_reference_models(model, parameters) -> None:
    plan = prepare_run(
        compose_config([*REFERENCE, f"model={model}", f"student={model}", "strategy=fedavg"])
    )
    assert count_parameters(plan.assets.student) == parameters


def test_seeds_share_one_federation(in_process_run, tmp_path) -> None:
    short = [*REFERENCE, "strategy=fedavg", "num_rounds=1", "num_clients=5", "report.html=false"]
    runs = [in_process_run([*short, f"seed={seed}"], tmp_path / f"s{seed}") for seed in (0, 1)]
    partitions = [json.loads((tmp_path / f"s{s}" / "partitions.json").read_text()) for s in (0, 1)]
    assert partitions[0] == partitions[1]
    assert all(
        min(sum(counts) for counts in p["label_histograms"].values()) >= 5 for p in partitions
    )
    assert runs[0]["final"]["student_accuracy"] != runs[1]["final"]["student_accuracy"]
    assert runs[0]["final"]["client_accuracy_mean"] is not None  # test predictions are on
    assert "personalized_accuracy_mean" not in runs[0]["final"]  # no local test split
