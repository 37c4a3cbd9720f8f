"""Tests for the cnn / cnn1d layer options (kernel_size, stride, padding, norm, norm_groups,
init) and for model=convbase, MNIST-1D's ConvBase built from them."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from torch import nn

from fedkd.apps.server import prepare_run
from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.models import build_model, count_parameters, model_from_config, model_from_spec
from fedkd.run.export import export_student

REFERENCE_CNN = {"channels": [32, 64], "hidden": None, "pool": "last"}
DEFAULT_CNN = {"channels": [16, 32], "hidden": 64, "pool": "every"}
CONVBASE = {
    "channels": [25, 25, 25],
    "kernel_size": [5, 3, 3],
    "stride": 2,
    "padding": 1,
    "pool": "none",
    "hidden": None,
}


# The layer options at their defaults (the network as before they existed).
LAYER_DEFAULTS = {
    "kernel_size": 3,
    "stride": 1,
    "padding": 1,
    "norm": "none",
    "norm_groups": 2,
    "init": "torch",
}


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over every state-dict entry's name, shape and raw bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _uniform(*shape: int, seed: int = 0) -> torch.Tensor:
    """Inputs in [0, 1], like digits' scaled pixels."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- ConvBase


def test_convbase_is_the_reference_network() -> None:
    """fedkd's ConvBase computes what Greydanus's ConvBase (greydanus/mnist1d,
    notebooks/models.py) does: its layers written out here with torch.nn, fedkd's weights
    copied in, the same logits."""
    model = build_model("cnn1d", input_shape=(1, 40), num_classes=10, seed=0, **CONVBASE)
    reference = nn.Sequential(
        nn.Conv1d(1, 25, 5, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(125, 10),  # the reference's linear_in=125: 25 channels x length 5
    )
    # The count the reference notebooks print ("Initialized ConvBase model with 5210
    # parameters"), and by hand: 1*25*5+25, 2 x (25*25*3+25), 125*10+10.
    assert count_parameters(reference) == 150 + 1_900 + 1_900 + 1_260 == 5_210
    assert count_parameters(model) == 5_210
    with torch.no_grad():
        for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
            assert ours.shape == theirs.shape
            theirs.copy_(ours)
    x = torch.randn(6, 1, 40, generator=torch.Generator().manual_seed(1))
    logits, feats = model.forward_features(x)
    torch.testing.assert_close(logits, reference(x), rtol=0, atol=1e-6)
    # Lengths 40 -> 19 -> 10 -> 5: (n + 2 * 1 - k) // 2 + 1.
    assert [tuple(v.shape) for v in feats.values()] == [
        (6, 25, 19),
        (6, 25, 10),
        (6, 25, 5),
        (6, 125),
    ]


@pytest.mark.parametrize("group", ["model", "student"])
def test_convbase_config(group: str) -> None:
    model = model_from_config(
        compose_config([f"{group}=convbase"])[group], input_shape=(1, 40), num_classes=10
    )
    assert model.spec["name"] == "cnn1d"
    assert model.spec["options"] == {**LAYER_DEFAULTS, **CONVBASE}
    assert count_parameters(model) == 5_210
    assert state_dict_sha256(model_from_spec(model.spec)) == state_dict_sha256(model)


@pytest.mark.parametrize("group", ["model", "student"])
def test_reference_experiment_makes_cnn1d_the_convbase(group: str) -> None:
    reference = compose_config(
        ["experiment=reference", "dataset=mnist1d", "model=cnn1d", "student=cnn1d"]
    )[group]
    convbase = compose_config([f"{group}=convbase"])[group]
    assert dict(reference) == dict(convbase)
    # Without the preset cnn1d keeps its own defaults.
    assert compose_config([f"{group}=cnn1d"])[group] == {
        "name": "cnn1d",
        "channels": [16, 32],
        "hidden": 64,
    }


# ------------------------------------------------------------- kernel_size / stride / padding


def test_kernel_stride_and_padding_per_conv() -> None:
    options = {"channels": [4, 6], "kernel_size": [5, 3], "stride": [1, 2], "padding": [2, 0]}
    model = build_model(
        "cnn", input_shape=(1, 8, 8), num_classes=10, hidden=None, pool="none", **options
    )
    _, feats = model.forward_features(torch.zeros(2, 1, 8, 8))
    # conv1: (8 + 4 - 5) // 1 + 1 = 8; conv2: (8 + 0 - 3) // 2 + 1 = 3
    assert [tuple(v.shape) for v in feats.values()] == [(2, 4, 8, 8), (2, 6, 3, 3), (2, 54)]
    assert count_parameters(model) == (1 * 4 * 25 + 4) + (4 * 6 * 9 + 6) + (54 * 10 + 10)
    assert {k: model.spec["options"][k] for k in options} == options
    assert state_dict_sha256(model_from_spec(model.spec)) == state_dict_sha256(model)


def test_pool_every_reads_the_strided_size() -> None:
    model = build_model("cnn1d", input_shape=(1, 40), num_classes=10, stride=2)
    _, feats = model.forward_features(torch.zeros(2, 1, 40))
    # conv1 40 -> 20, pooled to 10; conv2 10 -> 5 (still >= 4), pooled to 2.
    assert [tuple(v.shape) for v in feats.values()] == [(2, 16, 10), (2, 32, 2), (2, 64)]


# --------------------------------------------------------------------------- init


@pytest.mark.parametrize("options", [DEFAULT_CNN, REFERENCE_CNN])
def test_kaiming_init(options: dict) -> None:
    torch_init = build_model("cnn", input_shape=(1, 8, 8), num_classes=10, seed=3, **options)
    kaiming = build_model(
        "cnn", input_shape=(1, 8, 8), num_classes=10, seed=3, init="kaiming", **options
    )
    for name, tensor in kaiming.state_dict().items():
        default = torch_init.state_dict()[name]
        if name.startswith("head."):  # the head keeps PyTorch's default, drawn first
            assert torch.equal(tensor, default), name
        elif name.endswith(".bias"):
            assert torch.count_nonzero(tensor) == 0, name
        else:
            fan_in = tensor[0].numel()
            expected = math.sqrt(2.0 / fan_in)
            assert abs(float(tensor.std()) / expected - 1) < 0.1, name
            assert not torch.equal(tensor, default), name
    # The point of it: the embedding is not shrunk layer by layer (0.07 vs 0.8 on digits).
    x = _uniform(256, 1, 8, 8)
    with torch.no_grad():
        rms = [
            float(m.forward_features(x)[1]["embedding"].pow(2).mean().sqrt())
            for m in (torch_init, kaiming)
        ]
    assert rms[1] > 2.5 * rms[0]


def test_kaiming_init_is_seeded() -> None:
    build = lambda seed: build_model(  # noqa: E731
        "cnn1d", input_shape=(1, 40), num_classes=10, seed=seed, init="kaiming"
    )
    assert state_dict_sha256(build(1)) == state_dict_sha256(build(1))
    assert state_dict_sha256(build(1)) != state_dict_sha256(build(2))


# --------------------------------------------------------------------------- norm


def test_group_norm_between_conv_and_relu() -> None:
    plain = build_model("cnn", input_shape=(1, 8, 8), num_classes=10, seed=0, **REFERENCE_CNN)
    model = build_model(
        "cnn", input_shape=(1, 8, 8), num_classes=10, seed=0, norm="group", **REFERENCE_CNN
    )
    assert count_parameters(model) == 29_066 + 2 * (32 + 64)
    assert [type(layer) for layer in model.blocks[1]] == [
        nn.Conv2d,
        nn.GroupNorm,
        nn.ReLU,
        nn.MaxPool2d,
    ]
    assert [(block[1].num_groups, block[1].num_channels) for block in model.blocks] == [
        (2, 32),
        (2, 64),
    ]
    # GroupNorm draws no random numbers: every other weight is that of the plain network.
    normed = model.state_dict()
    for name, tensor in plain.state_dict().items():
        assert torch.equal(normed[name.replace(".0.2.", ".0.3.")], tensor), name
    # At initialisation (scale 1, shift 0) each example's group is standardised.
    x = _uniform(5, 1, 8, 8)
    conv, norm = model.blocks[0][0], model.blocks[0][1]
    groups = norm(conv(x)).reshape(5, 2, -1)
    torch.testing.assert_close(groups.mean(-1), torch.zeros(5, 2), rtol=0, atol=1e-5)
    torch.testing.assert_close(groups.var(-1, unbiased=False), torch.ones(5, 2), rtol=0, atol=1e-3)


def test_norm_groups() -> None:
    model = build_model("cnn1d", input_shape=(1, 40), num_classes=10, norm="group", norm_groups=8)
    assert [block[1].num_groups for block in model.blocks] == [8, 8]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"init": "he"}, r"model\.init must be one of \('torch', 'kaiming'\), got 'he'"),
        ({"norm": "batch"}, r"model\.norm must be one of \('none', 'group'\), got 'batch'"),
        (
            {"norm": "group", "norm_groups": 3},
            r"model\.norm_groups=3 must divide every width in model\.channels=\[16, 32\]",
        ),
        ({"norm_groups": 0}, r"model\.norm_groups must be a positive integer"),
        ({"kernel_size": [3]}, r"model\.kernel_size must be an integer or a list of 2"),
        ({"kernel_size": "3"}, r"model\.kernel_size must be an integer or a list of integers"),
        ({"stride": 0}, r"model\.stride must hold integers >= 1"),
        ({"padding": -1}, r"model\.padding must hold integers >= 0"),
        ({"padding": [1, True]}, r"model\.padding must hold integers >= 0"),
        ({"kernel_size": 11, "padding": 0}, r"model\.kernel_size/stride/padding: conv1 .*"),
    ],
)
def test_bad_layer_options_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model("cnn", input_shape=(1, 8, 8), num_classes=10, **options)


@pytest.mark.slow  # prepare_run builds the federation's data first (about 3 s)
def test_bad_option_from_the_command_line_fails_before_any_client() -> None:
    cfg = compose_config(["model=cnn", "student=cnn", "+model.init=he"])
    with pytest.raises(ConfigError, match=r"model\.init"):
        prepare_run(cfg)


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize(
    ("name", "shape", "options"),
    [
        ("cnn1d", (1, 40), CONVBASE),
        ("cnn", (1, 8, 8), {**REFERENCE_CNN, "norm": "group", "init": "kaiming"}),
    ],
)
def test_export_reproduces_the_new_layers(name, shape, options, tmp_path) -> None:
    model = build_model(name, input_shape=shape, num_classes=10, seed=0, **options)
    result = export_student(model, _uniform(2, *shape), tmp_path)
    assert 0 <= result["torchscript"]["max_abs_diff"] <= 1e-5


@pytest.mark.slow
def test_fedavg_round_with_convbase_on_mnist1d(tmp_path, in_process_run) -> None:
    """One FedAvg round of model=convbase clients and student on MNIST-1D, exported."""
    summary = in_process_run(
        [
            "model=convbase",
            "student=convbase",
            "strategy=fedavg",
            "dataset=mnist1d",
            "dataset.num_samples=600",
            "backend=inline",
            "num_rounds=1",
            "num_clients=2",
            "client.epochs=1",
            "report.html=false",
        ],
        tmp_path / "run",
    )
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    accuracy = summary["final"]["student_accuracy"]
    assert math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0
    assert summary["export"]["torchscript"]["max_abs_diff"] <= 1e-5
