"""Model registry: build a FedKDModel from its config name and options."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import torch

from fedkd.errors import ConfigError
from fedkd.models.base import FedKDModel, positive_int
from fedkd.models.cnn import CNN, CNN1D
from fedkd.models.mlp import MLP
from fedkd.models.resnet import ResNet8
from fedkd.registry import check_name, check_option_names

logger = logging.getLogger(__name__)

# Adding a model = writing a FedKDModel subclass + one entry here.
MODELS: dict[str, type[FedKDModel]] = {
    "mlp": MLP,
    "cnn": CNN,
    "cnn1d": CNN1D,
    "resnet8": ResNet8,
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)

_BUILD_ARGS = frozenset({"self", "input_shape", "num_classes"})


def model_options(name: str) -> tuple[str, ...]:
    """Return the option names accepted by model ``name`` (besides shape/classes).

    Raises
    ------
    ConfigError
        If ``name`` is not in :data:`MODEL_NAMES` (key ``model.name``).
    """
    cls = _model_class(name)
    params = inspect.signature(cls.__init__).parameters
    return tuple(p for p in params if p not in _BUILD_ARGS)


def build_model(
    name: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int = 0,
    **options: Any,
) -> FedKDModel:
    """Build a model from the registry with deterministically seeded initialisation.

    YAML: ``model: {name: cnn, channels: [16, 32], hidden: 64}``.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES` (``"mlp"``, ``"cnn"``, ``"cnn1d"``, ``"resnet8"``).
    input_shape : tuple of int
        Shape of one example (without the batch dimension).
    num_classes : int
        Number of output logits.
    seed : int, optional
        Seed of the weight initialisation. The global torch RNG state is forked, so it is
        neither used nor modified.
    **options
        Architecture options, see :class:`~fedkd.models.mlp.MLP`,
        :class:`~fedkd.models.cnn.CNN`, :class:`~fedkd.models.cnn.CNN1D`,
        :class:`~fedkd.models.resnet.ResNet8`.

    Returns
    -------
    FedKDModel
        A freshly initialised model on the CPU, in train mode.

    Raises
    ------
    ConfigError
        Unknown ``model.name``, unknown option (``model.<option>``), invalid option values,
        or an ``input_shape`` of the wrong rank for the architecture.
    """
    cls = _model_class(name)
    allowed = model_options(name)
    check_option_names(options, allowed, key="model", owner=f"model.name={name!r}")
    shape = _check_shape(input_shape)
    classes = positive_int(num_classes, "model.num_classes")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(input_shape=shape, num_classes=classes, **options)
    logger.debug(
        "built model %s %s for input %s, %d classes", name, model.spec["options"], shape, classes
    )
    return model


def model_from_spec(spec: Mapping[str, Any], *, seed: int = 0) -> FedKDModel:
    """Rebuild a model (fresh weights) from a :attr:`FedKDModel.spec` dict."""
    return build_model(
        spec["name"],
        input_shape=tuple(spec["input_shape"]),
        num_classes=spec["num_classes"],
        seed=seed,
        **spec.get("options", {}),
    )


def model_from_config(
    config: Mapping[str, Any], *, input_shape: tuple[int, ...], num_classes: int, seed: int = 0
) -> FedKDModel:
    """Build a model from a config-group mapping ``{"name": ..., **options}``."""
    options = {k: v for k, v in config.items() if k != "name" and not str(k).startswith("_")}
    return build_model(
        config["name"], input_shape=input_shape, num_classes=num_classes, seed=seed, **options
    )


def _model_class(name: str) -> type[FedKDModel]:
    check_name("model.name", name, MODEL_NAMES)
    return MODELS[name]


def _check_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ConfigError(
            f"model.input_shape must be a non-empty tuple of positive ints, got {input_shape!r}"
        )
    return tuple(int(d) for d in shape)
