"""Every option of every config group composes, and builds (or fails with a clear ConfigError)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkd.apps.server import prepare_run
from fedkd.config import compose_config, config_dir
from fedkd.distill.spaces import MEAN_RULES
from fedkd.errors import ConfigError
from simulations.engine import backend_config

GROUPS = (
    "dataset",
    "partition",
    "model",
    "student",
    "strategy",
    "distill",
    "aggregation",
    "augment",
    "backend",
)
SMALL = ["num_clients=3", "dataset.num_samples=300"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def test_every_group_has_options_and_the_defaults_compose() -> None:
    cfg = compose_config()
    for group in GROUPS:
        assert _options(group), group
        assert cfg[group]["name"] in _options(group)
    assert (cfg["strategy"]["name"], cfg["dataset"]["name"]) == ("feddf", "digits")
    assert (cfg["num_clients"], cfg["partition"]["name"], cfg["partition"]["alpha"]) == (
        10,
        "dirichlet",
        0.5,
    )


@pytest.mark.parametrize("option", _options("dataset"))
def test_dataset_options_build(option: str, tmp_path: Path) -> None:
    overrides = [f"dataset={option}", "num_clients=3"]
    if option in ("mnist1d", "synthetic"):
        overrides.append("dataset.num_samples=300")
    if option == "hf":
        pandas = pytest.importorskip("pandas")
        file = tmp_path / "train.parquet"
        pandas.DataFrame(
            {
                "a": [float(i % 7) for i in range(60)],
                "b": [float(i % 5) for i in range(60)],
                "label": [i % 3 for i in range(60)],
            }
        ).to_parquet(file)
        overrides += [
            "dataset.path=parquet",
            f"dataset.data_files={file}",
            "dataset.features=[a,b]",
        ]
    plan = prepare_run(compose_config(overrides))
    assert plan.assets.data.name == option
    assert plan.assets.data.num_clients == 3


def test_hf_without_a_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.path"):
        compose_config(["dataset=hf"])


@pytest.mark.parametrize("group", ["partition", "strategy", "distill", "aggregation"])
def test_group_options_build(group: str) -> None:
    for option in _options(group):
        overrides = [*SMALL, "dataset=synthetic", "data.proxy_labeled=true", f"{group}={option}"]
        if (group, option) == ("distill", "attention"):  # needs convolutional feature maps
            overrides = ["num_clients=3", "model=cnn", "student=cnn", f"{group}={option}"]
        if group == "aggregation" and option not in MEAN_RULES:  # FedDF's logit mean is a mean
            overrides.append("strategy.teacher_space=probs")
        plan = prepare_run(compose_config(overrides))
        assert plan.config[group]["name"] == option


# The input each augmentation option is written for.
AUGMENT_DATA = {
    "none": ["dataset=synthetic", "dataset.num_samples=300"],
    "tabular": ["dataset=synthetic", "dataset.num_samples=300"],
    "image": ["dataset=digits"],
    "sequence": ["dataset=mnist1d", "dataset.num_samples=300"],
}


@pytest.mark.parametrize("option", _options("augment"))
def test_augment_options_build_on_their_data(option: str) -> None:
    plan = prepare_run(
        compose_config(["num_clients=3", *AUGMENT_DATA[option], f"augment={option}"])
    )
    assert (plan.assets.augmentation is None) == (option == "none")
    assert plan.assets.setup.augment == (None if option == "none" else plan.config["augment"])


@pytest.mark.parametrize("option", _options("model"))
def test_model_options_build_on_fitting_data(option: str) -> None:
    dataset = {
        "mlp": "synthetic",
        "cnn": "digits",
        "cnn1d": "mnist1d",
        "cnn_reference": "digits",
        "convbase": "mnist1d",
        "hetero": "digits",
        "resnet8": "digits",
    }[option]
    extra = [] if dataset == "digits" else ["dataset.num_samples=300"]
    student = "mlp" if option == "hetero" else option
    # The registered architecture each option builds (cnn_reference is cnn with options,
    # convbase cnn1d with options).
    name = {"cnn_reference": "cnn", "convbase": "cnn1d"}.get(option, option)
    plan = prepare_run(
        compose_config(
            ["num_clients=3", f"dataset={dataset}", *extra, f"model={option}", f"student={student}"]
        )
    )
    assert plan.assets.student.spec["name"] == ("mlp" if option == "hetero" else name)
    names = [spec["name"] for spec in plan.assets.setup.architectures]
    assert names == (["mlp", "cnn"] if option == "hetero" else [name])
    assert [plan.assets.setup.model_for(p)["name"] for p in range(3)] == (
        ["mlp", "cnn", "mlp"] if option == "hetero" else [name] * 3
    )


def test_backend_options_translate_to_flower_backend_config() -> None:
    cpu = backend_config(compose_config(["backend=ray_cpu"])["backend"])
    assert cpu["client_resources"] == {"num_cpus": 1, "num_gpus": 0.0, "max_restarts": 2}
    gpu = backend_config(compose_config(["backend=ray_gpu"])["backend"])
    assert gpu["client_resources"]["num_gpus"] == 0.25


def test_gpu_backend_without_a_gpu_fails_clearly() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="cuda"):
        prepare_run(compose_config([*SMALL, "dataset=synthetic", "backend=ray_gpu"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.assignment=map"], "model.map has no entry for partition 0"),
        (["model.assignment=map", "+model.map={0:5,1:0,2:0}"], r"model.map\[0\] = 5"),
        (["model.assignment=bogus"], "model.assignment must be one of"),
    ],
)
def test_hetero_assignment_errors_are_caught_before_ray(overrides: list[str], message: str) -> None:
    """Every partition's architecture is resolved on the server, not first on a client."""
    hetero = [
        "dataset=synthetic",
        *SMALL,
        "model=hetero",
        "model.architectures=[{name:mlp},{name:mlp,hidden:[32]}]",
    ]
    with pytest.raises(ConfigError, match=message):
        prepare_run(compose_config([*hetero, *overrides]))
