"""ResNet-8: the small CIFAR-style residual network of the FedDF paper's code."""

from __future__ import annotations

import math

from torch import Tensor, nn

from fedkd.errors import ConfigError
from fedkd.models.base import FedKDModel, positive_int, positive_int_list


def _conv3x3(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (the norm that follows has one)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-GroupNorm layers with an identity (or 1x1 conv-GroupNorm) shortcut.

    ``out = relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))``; the shortcut is a
    strided 1x1 convolution and a GroupNorm when the stride or the width changes (He et al.
    2016's option B, as in the FedDF code).

    Parameters
    ----------
    in_channels, out_channels : int
        Widths of the block's input and output.
    stride : int
        Stride of the first convolution and of the shortcut.
    norm_groups : int
        Number of GroupNorm groups; must divide ``out_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, norm_groups: int):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride=stride)
        self.norm1 = nn.GroupNorm(norm_groups, out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.GroupNorm(norm_groups, out_channels),
            )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Return the block's output, ``(B, out_channels, ceil(H / stride), ceil(W / stride))``."""
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet8(FedKDModel):
    """ResNet-8 for image inputs ``(C, H, W)`` of any size (8x8 digits, 28x28, 32x32).

    Built by ``model: {name: resnet8, channels: [16, 32, 64], norm_groups: 2}``.

    The architecture follows the FedDF reference code (Lin et al., "Ensemble Distillation
    for Robust Model Fusion in Federated Learning", NeurIPS 2020;
    ``epfml/federated-learning-public-code``, ``codes/FedDF-code/pcode/models/resnet.py``,
    ``ResNet_cifar`` with ``resnet_size=8``), the CIFAR ResNet of He et al. 2016 with
    ``n = (8 - 2) / 6 = 1`` block per stage. FedGKT (He et al., "Group Knowledge
    Transfer", NeurIPS 2020) also names its client model ResNet-8, but its code (FedML's
    ``resnet8_56``, ``ResNetClient(Bottleneck, [2, 2, 2])``) is a different, bottleneck-based
    extractor; this class does not follow it. The layers:

    - stem: 3x3 conv (stride 1, no bias) to ``channels[0]``, norm, ReLU;
    - three stages of one :class:`BasicBlock` each, widths ``channels`` (16, 32, 64), strides
      1, 2, 2, with a 1x1 conv-norm shortcut where the shape changes;
    - global average pooling (adaptive, where the reference's ``AvgPool2d(8)`` assumes
      32x32 inputs) and a linear head.

    Initialisation as the reference: conv weights ``N(0, 2 / (k * k * out_channels))``
    (He, fan-out), norm scale 1 and shift 0, PyTorch's default for the head.

    **Normalisation: GroupNorm, not BatchNorm.** The FedDF code offers both
    (``group_norm_num_groups``); fedkd uses GroupNorm only, because BatchNorm's running
    statistics are buffers outside gradient descent: FedAvg would average them like weights,
    and ``num_batches_tracked`` is an int64 buffer that the example-weighted average
    (``strategies/core/arrays.py``) casts back to int64, truncating it. Every state-dict entry
    here is a float32 parameter, so weight averaging, the weight payload's dtype check
    (``fedkd/wire/payloads/weights.py``), DP-SGD (Opacus refuses BatchNorm) and distillation
    with teachers in eval mode need nothing special, and a batch of one example trains.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``.
    num_classes : int
        Number of output logits.
    channels : list of int, optional
        Widths of the three stages (default ``[16, 32, 64]``); the first is also the stem's
        width. Stage strides are 1, 2, 2.
    norm_groups : int, optional
        GroupNorm groups in every norm layer (default 2, the FedDF code's example); must
        divide every width.

    Notes
    -----
    Features are ``"stem"`` (``(B, channels[0], H, W)``), ``"layer1"``, ``"layer2"``, ``"layer3"``
    (stage outputs; 8x8 inputs give 8x8, 4x4, 2x2 maps) and ``"embedding"`` (the pooled
    ``(B, channels[-1])`` vector fed to the head, FedGKT's and FedProto's shared feature).

    With the defaults the model has ``77,754`` parameters on ``(1, 8, 8)`` inputs and 10
    classes and ``78,042`` on ``(3, 32, 32)``.
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: list[int] | tuple[int, ...] = (16, 32, 64),
        norm_groups: int = 2,
    ) -> None:
        if len(input_shape) != 3:
            raise ConfigError(
                f"model.name='resnet8' needs image input (C, H, W), got input_shape="
                f"{input_shape}; use 'cnn1d' for (C, L) inputs or 'mlp' for any shape"
            )
        widths = positive_int_list(channels, "model.channels")
        if len(widths) != 3:
            raise ConfigError(
                f"model.channels of resnet8 must list 3 widths (stem and stage 1, stage 2, "
                f"stage 3), got {widths}"
            )
        groups = positive_int(norm_groups, "model.norm_groups")
        if any(width % groups for width in widths):
            raise ConfigError(
                f"model.norm_groups={groups} must divide every width in model.channels={widths}"
            )
        super().__init__(
            "resnet8",
            options={"channels": widths, "norm_groups": groups},
            input_shape=input_shape,
            num_classes=num_classes,
        )
        self.stem = nn.Sequential(
            _conv3x3(input_shape[0], widths[0]), nn.GroupNorm(groups, widths[0]), nn.ReLU()
        )
        stages: list[nn.Module] = []
        in_width = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            stages.append(BasicBlock(in_width, width, stride=stride, norm_groups=groups))
            in_width = width
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_width, num_classes)
        self.feature_names = ("stem", *(f"layer{i + 1}" for i in range(len(widths))), "embedding")
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Return logits and ``{"stem", "layer1", ..., "embedding"}`` features."""
        h = self.stem(x)
        features: dict[str, Tensor] = {"stem": h}
        for i, stage in enumerate(self.stages):
            h = stage(h)
            features[f"layer{i + 1}"] = h
        emb = self.pool(h).flatten(1)
        features["embedding"] = emb
        return self.head(emb), features
