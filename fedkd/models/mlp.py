"""Multi-layer perceptron that flattens inputs of any shape."""

from __future__ import annotations

from torch import Tensor, nn

from fedkd.models.base import FedKDModel, flat_size, positive_int_list, unit_interval


class MLP(FedKDModel):
    """Fully connected ReLU network over the flattened input.

    Built by ``model: {name: mlp, hidden: [128, 64], dropout: 0.0}``.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one example; any rank, flattened to ``prod(input_shape)`` features.
    num_classes : int
        Number of output logits.
    hidden : list of int, optional
        Hidden layer widths (default ``[128, 64]``). An empty list gives a linear model.
    dropout : float, optional
        Dropout probability applied after each hidden activation (default 0.0).

    Notes
    -----
    Features are ``"hidden1"``, ..., ``"hiddenN"`` (post-ReLU activations) and
    ``"embedding"``, the vector fed to the output layer (the last hidden activation after
    dropout, or the flattened input when ``hidden`` is empty).
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: list[int] | tuple[int, ...] = (128, 64),
        dropout: float = 0.0,
    ) -> None:
        widths = positive_int_list(hidden, "model.hidden", allow_empty=True)
        p = unit_interval(dropout, "model.dropout")
        super().__init__(
            "mlp",
            options={"hidden": widths, "dropout": p},
            input_shape=input_shape,
            num_classes=num_classes,
        )
        in_features = flat_size(input_shape)
        self.layers = nn.ModuleList()
        for width in widths:
            self.layers.append(nn.Linear(in_features, width))
            in_features = width
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(p)
        self.head = nn.Linear(in_features, num_classes)
        self.feature_names = (*(f"hidden{i + 1}" for i in range(len(widths))), "embedding")

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Return logits and ``{"hidden1", ..., "embedding"}`` features."""
        h = x.flatten(1)
        features: dict[str, Tensor] = {}
        for i, layer in enumerate(self.layers):
            h = self.act(layer(h))
            features[f"hidden{i + 1}"] = h
            h = self.dropout(h)
        features["embedding"] = h
        return self.head(h), features
