"""Model registry and weight utilities for fedkd."""

from fedkd.models.base import FedKDModel
from fedkd.models.cnn import CNN, CNN1D
from fedkd.models.mlp import MLP
from fedkd.models.registry import (
    MODEL_NAMES,
    MODELS,
    build_model,
    model_from_config,
    model_from_spec,
    model_options,
)
from fedkd.models.resnet import ResNet8
from fedkd.models.weights import count_parameters, get_weights, model_size_bytes, set_weights

__all__ = [
    "CNN",
    "CNN1D",
    "MLP",
    "MODELS",
    "MODEL_NAMES",
    "FedKDModel",
    "ResNet8",
    "build_model",
    "count_parameters",
    "get_weights",
    "model_from_config",
    "model_from_spec",
    "model_options",
    "model_size_bytes",
    "set_weights",
]
