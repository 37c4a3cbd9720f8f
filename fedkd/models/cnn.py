"""Small 2-D and 1-D convolutional networks sized from the input shape."""

from __future__ import annotations

from torch import Tensor, nn

from fedkd.errors import ConfigError
from fedkd.models.base import FedKDModel, positive_int, positive_int_list

# Pool only while the spatial size is at least this large, so 8x8 / short inputs work.
_MIN_POOL_SIZE = 4


class CNN(FedKDModel):
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

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: list[int] | tuple[int, ...] = (16, 32),
        hidden: int = 64,
    ) -> None:
        if len(input_shape) != 3:
            raise ConfigError(
                f"model.name='cnn' needs image input (C, H, W), got input_shape={input_shape}; "
                "use 'cnn1d' for (C, L) inputs or 'mlp' for any shape"
            )
        widths = positive_int_list(channels, "model.channels")
        width = positive_int(hidden, "model.hidden")
        super().__init__(
            "cnn",
            options={"channels": widths, "hidden": width},
            input_shape=input_shape,
            num_classes=num_classes,
        )
        c, h, w = input_shape
        blocks: list[nn.Module] = []
        for out in widths:
            layers: list[nn.Module] = [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.ReLU()]
            if min(h, w) >= _MIN_POOL_SIZE:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            blocks.append(nn.Sequential(*layers))
            c = out
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(c * h * w, width)
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


class CNN1D(FedKDModel):
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

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: list[int] | tuple[int, ...] = (16, 32),
        hidden: int = 64,
    ) -> None:
        if len(input_shape) != 2:
            raise ConfigError(
                f"model.name='cnn1d' needs sequence input (C, L), got input_shape={input_shape}; "
                "use 'cnn' for (C, H, W) inputs or 'mlp' for any shape"
            )
        widths = positive_int_list(channels, "model.channels")
        width = positive_int(hidden, "model.hidden")
        super().__init__(
            "cnn1d",
            options={"channels": widths, "hidden": width},
            input_shape=input_shape,
            num_classes=num_classes,
        )
        c, length = input_shape
        blocks: list[nn.Module] = []
        for out in widths:
            layers: list[nn.Module] = [nn.Conv1d(c, out, kernel_size=3, padding=1), nn.ReLU()]
            if length >= _MIN_POOL_SIZE:
                layers.append(nn.MaxPool1d(2))
                length //= 2
            blocks.append(nn.Sequential(*layers))
            c = out
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(c * length, width)
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
