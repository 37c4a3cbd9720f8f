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
#: ``model.norm``: no normalisation, or GroupNorm between each conv and its ReLU.
NORMS = ("none", "group")
#: ``model.init``: PyTorch's default layer initialisation, or He et al. (2015) for ReLU.
INIT_SCHEMES = ("torch", "kaiming")


class _ConvNet(FedKDModel):
    """Conv-(GroupNorm)-ReLU-(MaxPool) blocks over the spatial axes, then an optional ReLU
    hidden layer and a linear head.

    The shared body of :class:`CNN` (2-D) and :class:`CNN1D` (1-D); a subclass names the
    model and its conv and pool layers. With ``pool="every"`` (the default) each block
    max-pools by 2 while every spatial size is at least ``_MIN_POOL_SIZE``. The options
    added later (``kernel_size``, ``stride``, ``padding``, ``norm``, ``norm_groups``,
    ``init``) default to the network as it was before them, weight for weight.
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
        kernel_size: int | list[int] | tuple[int, ...] = 3,
        stride: int | list[int] | tuple[int, ...] = 1,
        padding: int | list[int] | tuple[int, ...] = 1,
        norm: str = "none",
        norm_groups: int = 2,
        init: str = "torch",
    ) -> None:
        if len(input_shape) != 1 + self._spatial_dims:
            raise ConfigError(
                f"model.name={self._name!r} needs {self._needs}, got input_shape={input_shape}; "
                f"use {self._instead} inputs or 'mlp' for any shape"
            )
        widths = positive_int_list(channels, "model.channels")
        width = None if hidden is None else positive_int(hidden, "model.hidden")
        pool_option, pooled = _pool_plan(pool, len(widths))
        kernels = _per_conv(kernel_size, "model.kernel_size", len(widths), minimum=1)
        strides = _per_conv(stride, "model.stride", len(widths), minimum=1)
        paddings = _per_conv(padding, "model.padding", len(widths), minimum=0)
        groups = _norm_groups(norm, norm_groups, widths)
        _check_choice(init, "model.init", INIT_SCHEMES)
        super().__init__(
            self._name,
            options={
                "channels": widths,
                "hidden": width,
                "pool": pool_option,
                "kernel_size": _as_option(kernel_size, kernels),
                "stride": _as_option(stride, strides),
                "padding": _as_option(padding, paddings),
                "norm": norm,
                "norm_groups": int(norm_groups),
                "init": init,
            },
            input_shape=input_shape,
            num_classes=num_classes,
        )
        c, *sizes = input_shape
        blocks: list[nn.Module] = []
        # Modules are created in the same order as before these options existed (conv
        # blocks, fc, head; GroupNorm draws no random numbers), so the default config
        # draws the same initial weights; init="kaiming" redraws them afterwards.
        for index, out in enumerate(widths, start=1):
            kernel, step, pad = kernels[index - 1], strides[index - 1], paddings[index - 1]
            sizes = [(size + 2 * pad - kernel) // step + 1 for size in sizes]
            if min(sizes) < 1:
                raise ConfigError(
                    f"model.kernel_size/stride/padding: conv{index} (kernel {kernel}, stride "
                    f"{step}, padding {pad}) leaves no output for input_shape="
                    f"{tuple(input_shape)}"
                )
            layers: list[nn.Module] = [
                self._conv(c, out, kernel_size=kernel, stride=step, padding=pad)
            ]
            if groups is not None:
                layers.append(nn.GroupNorm(groups, out))
            layers.append(nn.ReLU())
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
        if init == "kaiming":
            self._init_kaiming()

    def _init_kaiming(self) -> None:
        """He et al. (2015) initialisation of every layer followed by a ReLU.

        Conv and hidden-layer weights are drawn from ``N(0, 2 / fan_in)`` and their biases
        set to 0, so the second moment of the activations is kept from layer to layer
        instead of shrinking by about 6x per layer under PyTorch's default
        (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, variance ``1 / (3 fan_in)``, halved again by
        the ReLU). The head keeps PyTorch's default, so the initial logits stay small.
        """
        for layer in self.modules():
            if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)) and layer is not self.head:
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

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


def _per_conv(value: Any, key: str, num_convs: int, *, minimum: int) -> list[int]:
    """One int per conv from ``value``: an int for every conv, or a list with one per conv."""
    if isinstance(value, int) and not isinstance(value, bool):
        values = [value] * num_convs
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        values = list(value)
        if len(values) != num_convs:
            raise ConfigError(
                f"{key} must be an integer or a list of {num_convs} (one per entry of "
                f"model.channels), got {value!r}"
            )
    else:
        raise ConfigError(f"{key} must be an integer or a list of integers, got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{key} must hold integers >= {minimum}, got {value!r}")
    return [int(v) for v in values]


def _as_option(value: Any, per_conv: list[int]) -> int | list[int]:
    """The spec's form of a per-conv option: an int stays an int, a list a list."""
    return per_conv[0] if isinstance(value, int) else per_conv


def _check_choice(value: Any, key: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{key} must be one of {allowed}, got {value!r}")


def _norm_groups(norm: Any, norm_groups: Any, widths: list[int]) -> int | None:
    """GroupNorm's group count for ``model.norm``, or None for ``norm="none"``."""
    _check_choice(norm, "model.norm", NORMS)
    groups = positive_int(norm_groups, "model.norm_groups")
    if norm == "none":
        return None
    if any(width % groups for width in widths):
        raise ConfigError(
            f"model.norm_groups={groups} must divide every width in model.channels={widths} "
            f"(model.norm={norm!r})"
        )
    return groups


class CNN(_ConvNet):
    """Conv-ReLU-(MaxPool) blocks, an optional ReLU hidden layer and a linear head, for (C, H, W).

    Built by ``model: {name: cnn, channels: [16, 32], hidden: 64, pool: every}``; the
    layer options below (``kernel_size`` ... ``init``) are left out of the YAMLs and set
    with ``+model.<option>=...``.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``.
    num_classes : int
        Number of output logits.
    channels : list of int, optional
        Output channels of each conv block (default ``[16, 32]``).
    hidden : int or None, optional
        Width of the ReLU hidden layer between the convolutions and the head (default 64).
        ``None`` (YAML ``null``): no hidden layer, the head reads the flattened conv output.
    pool : {"every", "last", "none"} or list of int, optional
        Where to max-pool by 2. ``"every"`` (default): after each block while both spatial
        sizes are >= 4, so 8x8 inputs give 8 -> 4 -> 2; ``"last"``: once, after the last
        block; ``"none"``: never; a list: after those blocks (1-based, e.g. ``[2]``).
    kernel_size, stride, padding : int or list of int, optional
        Of every conv (an int) or of each (a list, one per entry of ``channels``); defaults
        3, 1 and 1, so a conv keeps the spatial size. A conv maps a size ``n`` to
        ``(n + 2 * padding - kernel_size) // stride + 1``.
    norm : {"none", "group"}, optional
        ``"none"`` (default): Conv-ReLU. ``"group"``: Conv-GroupNorm-ReLU, ``norm_groups``
        groups, adding ``2 * width`` parameters per block. GroupNorm, not BatchNorm, for
        the reasons given in :class:`~fedkd.models.resnet.ResNet8` (no running-statistics
        buffers for FedAvg to average).
    norm_groups : int, optional
        GroupNorm groups (default 2); must divide every width when ``norm="group"``.
    init : {"torch", "kaiming"}, optional
        ``"torch"`` (default): PyTorch's default layer initialisation. ``"kaiming"``:
        conv and hidden-layer weights ``N(0, 2 / fan_in)`` (He et al., "Delving Deep into
        Rectifiers", ICCV 2015) and zero biases; the head keeps PyTorch's default.

    Notes
    -----
    Features are ``"conv1"``, ..., ``"convN"`` (block outputs after their pool,
    ``(B, C_i, H_i, W_i)``) and ``"embedding"`` (``(B, hidden)``, or the flattened last
    block output when ``hidden`` is ``None``).

    The CNN of the independent reference implementation (issue 19; digits: 29,066
    parameters) is ``model: {name: cnn, channels: [32, 64], hidden: null, pool: last}``
    (``model=cnn_reference``): conv 3x3 to 32, conv 3x3 to 64, one 2x2 max-pool, a linear
    layer to the classes.

    **Why ``init`` and ``norm`` exist (issue 19).** Under PyTorch's default initialisation
    (weight variance ``1 / (3 fan_in)``) each conv or linear layer followed by a ReLU
    shrinks the activations' second moment about six-fold, so on digits the default
    shape's embedding starts at an RMS of 0.07 (0.8 with ``init="kaiming"``). With plain
    SGD (lr 0.1, no momentum) on clients that hold one or two classes (Dirichlet 0.1), the
    local steps then go mostly into the head's bias ("predict my classes"), which cancels
    when FedAvg averages the clients, while the convolutions hardly move: the default
    shape sat at chance for about 20 of ``experiment=reference``'s 30 rounds and ended
    near 57 % (seeds 0-2). ``init="kaiming"`` (83-87 %) or ``norm="group"`` (90-94 %)
    keep the signal and remove the stall. The reference shape, one layer shallower, stalls
    for only about 3 rounds under the default and ends at 92 %, as the independent
    implementation (89-92 %); ``experiment=reference`` keeps PyTorch's default for it so
    that the two stay comparable (``kaiming``: 94-95 %, ``group``: 95-96 %).
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
        Output channels of each conv block (default ``[16, 32]``).
    hidden : int or None, optional
        Width of the ReLU hidden layer (default 64); ``None``: the head reads the flattened
        conv output.
    pool : {"every", "last", "none"} or list of int, optional
        Where to max-pool by 2, as for :class:`CNN`. ``"every"`` (default): after each block
        while the length is >= 4, so L=40 gives 40 -> 20 -> 10.
    kernel_size, stride, padding, norm, norm_groups, init
        As for :class:`CNN` (defaults 3, 1, 1, ``"none"``, 2, ``"torch"``).

    Notes
    -----
    Features are ``"conv1"``, ..., ``"convN"`` (``(B, C_i, L_i)``) and ``"embedding"``.

    MNIST-1D's ConvBase (Greydanus, "Scaling Down Deep Learning", 2020;
    ``greydanus/mnist1d``, ``notebooks/models.py``) is ``model: {name: cnn1d, channels:
    [25, 25, 25], kernel_size: [5, 3, 3], stride: 2, padding: 1, pool: none, hidden:
    null}`` (``model=convbase``): lengths 40 -> 19 -> 10 -> 5, a linear head on the
    flattened 25 x 5 map, 5,210 parameters, PyTorch's default initialisation as there.
    """

    _name = "cnn1d"
    _spatial_dims = 1
    _conv = nn.Conv1d
    _pool = nn.MaxPool1d
    _needs = "sequence input (C, L)"
    _instead = "'cnn' for (C, H, W)"
