"""Small 2-D and 1-D convolutional networks sized from the input shape."""

from __future__ import annotations

import math
from typing import ClassVar

from torch import Tensor, nn

from fedkd.errors import ConfigError
from fedkd.models.base import FedKDModel, positive_int, positive_int_list

# Pool only while the spatial size is at least this large, so 8x8 / short inputs work.
_MIN_POOL_SIZE = 4


class _ConvNet(FedKDModel):
    """Conv-ReLU-(MaxPool) blocks over the spatial axes, then a ReLU embedding and a head.

    The shared body of :class:`CNN` (2-D) and :class:`CNN1D` (1-D); a subclass names the
    model and its conv and pool layers. Each block max-pools by 2 while every spatial size
    is at least ``_MIN_POOL_SIZE``.
    """

    _name: ClassVar[str]
    _spatial_dims: ClassVar[int]
    _conv: ClassVar[type[nn.Conv1d] | type[nn.Conv2d]]
    _pool: ClassVar[type[nn.MaxPool1d] | type[nn.MaxPool2d]]
    #: The input the model needs and what to use instead, for the ConfigError on other shapes.
    _needs: ClassVar[str]
    _instead: ClassVar[str]

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: list[int] | tuple[int, ...] = (16, 32),
        hidden: int = 64,
    ) -> None:
        if len(input_shape) != 1 + self._spatial_dims:
            raise ConfigError(
                f"model.name={self._name!r} needs {self._needs}, got input_shape={input_shape}; "
                f"use {self._instead} inputs or 'mlp' for any shape"
            )
        widths = positive_int_list(channels, "model.channels")
        width = positive_int(hidden, "model.hidden")
        super().__init__(
            self._name,
            options={"channels": widths, "hidden": width},
            input_shape=input_shape,
            num_classes=num_classes,
        )
        c, *sizes = input_shape
        blocks: list[nn.Module] = []
        for out in widths:
            layers: list[nn.Module] = [self._conv(c, out, kernel_size=3, padding=1), nn.ReLU()]
            if min(sizes) >= _MIN_POOL_SIZE:
                layers.append(self._pool(2))
                sizes = [size // 2 for size in sizes]
            blocks.append(nn.Sequential(*layers))
            c = out
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(c * math.prod(sizes), width)
        self.act = nn.ReLU()
        self.head = nn.Linear(width, num_classes)
        self.feature_names = (*(f"conv{i + 1}" for i in range(len(widths))), "embedding")

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Return logits and ``{"conv1", ..., "embedding"}`` features."""
        features: dict[str, Tensor] = {}
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            features[f"conv{i + 1}"] = h
        emb = self.act(self.fc(h.flatten(1)))
        features["embedding"] = emb
        return self.head(emb), features


class CNN(_ConvNet):
    """Conv-ReLU-(MaxPool) blocks then a ReLU hidden layer and a linear head, for (C, H, W).

    Built by ``model: {name: cnn, channels: [16, 32], hidden: 64}``.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``.
    num_classes : int
        Number of output logits.
    channels : list of int, optional
        Output channels of each 3x3 conv block (padding 1; default ``[16, 32]``). Each
        block max-pools by 2 while both spatial sizes are >= 4, so 8x8 inputs give
        8 -> 4 -> 2.
    hidden : int, optional
        Width of the embedding layer (default 64).

    Notes
    -----
    Features are ``"conv1"``, ..., ``"convN"`` (block outputs, ``(B, C_i, H_i, W_i)``) and
    ``"embedding"`` (``(B, hidden)``).
    """

    _name = "cnn"
    _spatial_dims = 2
    _conv = nn.Conv2d
    _pool = nn.MaxPool2d
    _needs = "image input (C, H, W)"
    _instead = "'cnn1d' for (C, L)"


class CNN1D(_ConvNet):
    """1-D Conv-ReLU-(MaxPool) blocks then a ReLU hidden layer and a linear head, for (C, L).

    Built by ``model: {name: cnn1d, channels: [16, 32], hidden: 64}`` (e.g. MNIST-1D,
    ``input_shape=(1, 40)``).

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, L)``.
    num_classes : int
        Number of output logits.
    channels : list of int, optional
        Output channels of each size-3 conv block (padding 1; default ``[16, 32]``). Each
        block max-pools by 2 while the length is >= 4, so L=40 gives 40 -> 20 -> 10.
    hidden : int, optional
        Width of the embedding layer (default 64).

    Notes
    -----
    Features are ``"conv1"``, ..., ``"convN"`` (``(B, C_i, L_i)``) and ``"embedding"``.
    """

    _name = "cnn1d"
    _spatial_dims = 1
    _conv = nn.Conv1d
    _pool = nn.MaxPool1d
    _needs = "sequence input (C, L)"
    _instead = "'cnn' for (C, H, W)"
