"""Small 2-D and 1-D convolutional networks sized from the input shape."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from fedkd.errors import ConfigError
from fedkd.models.base import FedKDModel, positive_int, positive_int_list

# Pool only while the spatial size is at least this large, so 8x8 / short inputs work.
_MIN_POOL_SIZE = 4


#: ``model.pool`` keywords; a list of 1-based conv indices is also accepted.
POOL_MODES = ("every", "last", "none")


class _ConvNet(FedKDModel):
    """Conv-ReLU-(MaxPool) blocks over the spatial axes, then an optional ReLU hidden layer
    and a linear head.

    The shared body of :class:`CNN` (2-D) and :class:`CNN1D` (1-D); a subclass names the
    model and its conv and pool layers. With ``pool="every"`` (the default) each block
    max-pools by 2 while every spatial size is at least ``_MIN_POOL_SIZE``.
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
        hidden: int | None = 64,
        pool: str | list[int] | tuple[int, ...] = "every",
    ) -> None:
        if len(input_shape) != 1 + self._spatial_dims:
            raise ConfigError(
                f"model.name={self._name!r} needs {self._needs}, got input_shape={input_shape}; "
                f"use {self._instead} inputs or 'mlp' for any shape"
            )
        widths = positive_int_list(channels, "model.channels")
        width = None if hidden is None else positive_int(hidden, "model.hidden")
        pool_option, pooled = _pool_plan(pool, len(widths))
        super().__init__(
            self._name,
            options={"channels": widths, "hidden": width, "pool": pool_option},
            input_shape=input_shape,
            num_classes=num_classes,
        )
        c, *sizes = input_shape
        blocks: list[nn.Module] = []
        # Modules are created in the same order as before these options existed (conv
        # blocks, fc, head), so the default config draws the same initial weights.
        for index, out in enumerate(widths, start=1):
            layers: list[nn.Module] = [self._conv(c, out, kernel_size=3, padding=1), nn.ReLU()]
            if pooled is None:
                pool_here = min(sizes) >= _MIN_POOL_SIZE
            else:
                pool_here = index in pooled
                if pool_here and min(sizes) < 2:
                    raise ConfigError(
                        f"model.pool={pool_option!r}: conv{index} output of spatial size "
                        f"{tuple(sizes)} is too small to max-pool by 2 for input_shape="
                        f"{tuple(input_shape)}"
                    )
            if pool_here:
                layers.append(self._pool(2))
                sizes = [size // 2 for size in sizes]
            blocks.append(nn.Sequential(*layers))
            c = out
        self.blocks = nn.ModuleList(blocks)
        flat = c * math.prod(sizes)
        self.fc: nn.Linear | None = None if width is None else nn.Linear(flat, width)
        self.act = nn.ReLU()
        self.head = nn.Linear(flat if width is None else width, num_classes)
        self.feature_names = (*(f"conv{i + 1}" for i in range(len(widths))), "embedding")

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Return logits and ``{"conv1", ..., "embedding"}`` features."""
        features: dict[str, Tensor] = {}
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            features[f"conv{i + 1}"] = h
        emb = h.flatten(1) if self.fc is None else self.act(self.fc(h.flatten(1)))
        features["embedding"] = emb
        return self.head(emb), features


def _pool_plan(pool: Any, num_convs: int) -> tuple[str | list[int], set[int] | None]:
    """``(option as stored in the spec, 1-based convs to pool after)`` for ``model.pool``.

    ``None`` in place of the set means ``"every"``: pool while the input is large enough.
    """
    if isinstance(pool, str):
        if pool not in POOL_MODES:
            raise ConfigError(
                f"model.pool must be one of {POOL_MODES} or a list of conv indices "
                f"1..{num_convs}, got {pool!r}"
            )
        if pool == "every":
            return pool, None
        return pool, {num_convs} if pool == "last" else set()
    if isinstance(pool, (bytes, bool)) or not isinstance(pool, Sequence):
        raise ConfigError(
            f"model.pool must be one of {POOL_MODES} or a list of conv indices "
            f"1..{num_convs}, got {pool!r}"
        )
    indices = [positive_int(i, "model.pool") for i in pool]
    if any(i > num_convs for i in indices) or len(set(indices)) != len(indices):
        raise ConfigError(
            f"model.pool must list distinct conv indices in 1..{num_convs} "
            f"(one per entry of model.channels), got {list(pool)!r}"
        )
    return sorted(indices), set(indices)


class CNN(_ConvNet):
    """Conv-ReLU-(MaxPool) blocks, an optional ReLU hidden layer and a linear head, for (C, H, W).

    Built by ``model: {name: cnn, channels: [16, 32], hidden: 64, pool: every}``.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``.
    num_classes : int
        Number of output logits.
    channels : list of int, optional
        Output channels of each 3x3 conv block (padding 1, so a conv keeps the spatial
        size; default ``[16, 32]``).
    hidden : int or None, optional
        Width of the ReLU hidden layer between the convolutions and the head (default 64).
        ``None`` (YAML ``null``): no hidden layer, the head reads the flattened conv output.
    pool : {"every", "last", "none"} or list of int, optional
        Where to max-pool by 2. ``"every"`` (default): after each block while both spatial
        sizes are >= 4, so 8x8 inputs give 8 -> 4 -> 2; ``"last"``: once, after the last
        block; ``"none"``: never; a list: after those blocks (1-based, e.g. ``[2]``).

    Notes
    -----
    Features are ``"conv1"``, ..., ``"convN"`` (block outputs after their pool,
    ``(B, C_i, H_i, W_i)``) and ``"embedding"`` (``(B, hidden)``, or the flattened last
    block output when ``hidden`` is ``None``).

    The CNN of the independent reference implementation (issue 19; digits: 29,066
    parameters) is ``model: {name: cnn, channels: [32, 64], hidden: null, pool: last}``
    (``model=cnn_reference``): conv 3x3 to 32, conv 3x3 to 64, one 2x2 max-pool, a linear
    layer to the classes.
    """

    _name = "cnn"
    _spatial_dims = 2
    _conv = nn.Conv2d
    _pool = nn.MaxPool2d
    _needs = "image input (C, H, W)"
    _instead = "'cnn1d' for (C, L)"


class CNN1D(_ConvNet):
    """1-D Conv-ReLU-(MaxPool) blocks, an optional ReLU hidden layer and a linear head, for (C, L).

    Built by ``model: {name: cnn1d, channels: [16, 32], hidden: 64, pool: every}`` (e.g. MNIST-1D,
    ``input_shape=(1, 40)``).

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, L)``.
    num_classes : int
        Number of output logits.
    channels : list of int, optional
        Output channels of each size-3 conv block (padding 1; default ``[16, 32]``).
    hidden : int or None, optional
        Width of the ReLU hidden layer (default 64); ``None``: the head reads the flattened
        conv output.
    pool : {"every", "last", "none"} or list of int, optional
        Where to max-pool by 2, as for :class:`CNN`. ``"every"`` (default): after each block
        while the length is >= 4, so L=40 gives 40 -> 20 -> 10.

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
