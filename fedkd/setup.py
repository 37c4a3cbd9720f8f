"""The part of a run's configuration that every client needs, as one JSON-serializable value."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any

from fedkd.errors import ConfigError, check_types

OPTIMIZERS = ("sgd", "adam")
HETERO = "hetero"
ASSIGNMENTS = ("round_robin", "map")


def architectures(model: dict[str, Any]) -> list[dict[str, Any]]:
    """The distinct client architectures a ``model`` config describes.

    A single architecture is ``{"name": "mlp", ...options}``; a heterogeneous federation is
    ``{"name": "hetero", "architectures": [spec, ...], "assignment": "round_robin" | "map",
    "map": {partition_id: index}}``.
    """
    if model.get("name") != HETERO:
        return [dict(model)]
    specs = model.get("architectures")
    if not isinstance(specs, list) or not specs:
        raise ConfigError("model.architectures must be a non-empty list of model specs")
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"model.architectures[{index}] must be a mapping with a 'name'")
    return [dict(spec) for spec in specs]


def architecture_index(model: dict[str, Any], partition_id: int) -> int:
    """Which of :func:`architectures` the client with ``partition_id`` uses."""
    specs = architectures(model)
    if model.get("name") != HETERO:
        return 0
    assignment = model.get("assignment", "round_robin")
    if assignment not in ASSIGNMENTS:
        raise ConfigError(f"model.assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    if assignment == "round_robin":
        return partition_id % len(specs)
    mapping = {int(k): int(v) for k, v in (model.get("map") or {}).items()}
    if partition_id not in mapping:
        raise ConfigError(f"model.map has no entry for partition {partition_id}")
    index = mapping[partition_id]
    if not 0 <= index < len(specs):
        raise ConfigError(
            f"model.map[{partition_id}] = {index} is not an index into model.architectures"
        )
    return index


@dataclass(frozen=True)
class TrainSettings:
    """Epochs, batch size and optimizer of one supervised training run, as one value.

    What the training routes take (:func:`fedkd.train.train_local`,
    :func:`fedkd.prototypes.train_with_prototypes`, :func:`fedkd.privacy.dpsgd.train_dpsgd`,
    :mod:`fedkd.distill.self_train`); a run's clients pass their :class:`LocalTraining`
    (which is one), or :meth:`train_settings` of it when a route trains for other epochs.
    The training functions validate the values (``ConfigError`` naming ``client.<key>``).

    Parameters
    ----------
    epochs : int
        Passes over the data.
    batch_size : int
        Mini-batch size (the last batch may be smaller).
    lr : float
        Learning rate.
    optimizer : str
        ``"sgd"`` (with ``momentum``) or ``"adam"`` (default ``"sgd"``).
    momentum : float
        SGD momentum (default 0.9; Adam ignores it).
    weight_decay : float
        L2 penalty (default 0.0).
    """

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0

    def train_settings(self, **changes: Any) -> TrainSettings:
        """These settings as a plain :class:`TrainSettings`, with ``changes`` applied (e.g.
        ``epochs=`` for a route that trains longer or shorter than ``client.epochs``)."""
        values = {f.name: getattr(self, f.name) for f in fields(TrainSettings)}
        return TrainSettings(**{**values, **changes})


@dataclass(frozen=True)
class LocalTraining(TrainSettings):
    """Hyperparameters of a client's local supervised training (the ``client:`` block).

    Its :class:`TrainSettings` fields are what the training routes take; built once per run
    from the composed config (:func:`fedkd.apps.plan.build_setup`), whose ``client:`` block
    holds the defaults. The defaults here only serve a :class:`FederationSetup` built
    without a config.

    Parameters
    ----------
    epochs, batch_size, lr, optimizer, momentum, weight_decay
        See :class:`TrainSettings` (``client.epochs`` is the local epochs per round).
    self_distill : dict, optional
        Options of the ``self`` loss (BYOT deep supervision of early exits by the final
        layer, see :class:`fedkd.distill.losses.SelfDistillLoss`) used for local training
        instead of plain cross-entropy; ``{}`` takes the loss's defaults, ``None`` (default)
        is off.
    born_again : dict, optional
        ``{generations: G, temperature: T, alpha: a}``: after local training, G born-again
        generations (Furlanello et al. 2018) retrain the client's model from a fresh
        initialisation toward the previous generation's softened predictions on the private
        data mixed with the labels. ``None`` (default) is off.
    """

    epochs: int = 5
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    self_distill: dict[str, Any] | None = None
    born_again: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_types(self, prefix="client.")
        if self.epochs < 1:
            raise ConfigError(f"client.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"client.batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"client.lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"client.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"
            )
        if self.momentum < 0:
            raise ConfigError(f"client.momentum must be >= 0, got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"client.weight_decay must be >= 0, got {self.weight_decay}")


#: FederationSetup field -> the config key it comes from (where the two differ)
_SETUP_KEYS = {
    "proxy_fraction": "data.proxy_fraction",
    "proxy_labeled": "data.proxy_labeled",
    "test_fraction": "data.test_fraction",
    "local_test_fraction": "data.local_test_fraction",
    "proxy_size": "data.proxy_size",
    "device": "backend.device",
    "torch_threads": "backend.torch_threads",
}


@dataclass(frozen=True)
class FederationSetup:
    """Everything a ClientApp needs to rebuild its data and model, sent with every message.

    Sending it with the message (rather than through the run config) makes the same
    ClientApp work under ``run_simulation`` (whose run config is empty), ``flwr run`` and
    real SuperNodes. Clients parse it once per process and cache what they build from it.
    """

    dataset: dict[str, Any]
    partition: dict[str, Any]
    num_clients: int
    seed: int
    model: dict[str, Any]
    #: seeds what defines the federation's data (see :attr:`federation_seed`); None: ``seed``
    data_seed: int | None = None
    local: LocalTraining = field(default_factory=LocalTraining)
    proxy_fraction: float = 0.2
    proxy_labeled: bool = False
    test_fraction: float = 0.2
    local_test_fraction: float = 0.2
    proxy_size: int | None = None
    proxy_classes: list[int] | None = None
    proxy_dataset: dict[str, Any] | None = None
    device: str = "cpu"
    torch_threads: int = 1
    distill: dict[str, Any] = field(default_factory=lambda: {"name": "kd"})
    augment: dict[str, Any] | None = None
    privacy: dict[str, Any] | None = None  # PrivacySpec.to_dict() when a mechanism is on
    #: EncodingSpec.to_dict(): how clients encode the proxy predictions they upload
    encoding: dict[str, Any] = field(default_factory=lambda: {"name": "float32", "k": 3})

    def __post_init__(self) -> None:
        check_types(self, prefix="", names=_SETUP_KEYS)
        if self.torch_threads < 0:
            raise ConfigError(
                f"backend.torch_threads must be >= 0 (0: torch's default), got {self.torch_threads}"
            )
        if self.data_seed is not None and self.data_seed < 0:
            raise ConfigError(f"data_seed must be null or an integer >= 0, got {self.data_seed}")

    @property
    def federation_seed(self) -> int:
        """The seed of the federation's data: ``data_seed``, or ``seed`` when that is None.

        It seeds the server test / proxy split, the proxy cap (``data.proxy_size``), the
        partition, each client's local train/test split and the audit's canaries; ``seed``
        keeps initialisation, client sampling, batch order, per-round proxy subsets, noise.
        """
        return self.seed if self.data_seed is None else self.data_seed

    def data_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`fedkd.data.get_federated_data`."""
        return {
            "dataset": self.dataset,
            "partition": self.partition,
            "num_clients": self.num_clients,
            "seed": self.federation_seed,
            "proxy_fraction": self.proxy_fraction,
            "proxy_labeled": self.proxy_labeled,
            "test_fraction": self.test_fraction,
            "local_test_fraction": self.local_test_fraction,
            "proxy_size": self.proxy_size,
            "proxy_classes": self.proxy_classes,
            "proxy_dataset": self.proxy_dataset,
        }

    @property
    def architectures(self) -> list[dict[str, Any]]:
        """The client architectures of this run (one unless ``model.name`` is ``hetero``)."""
        return architectures(self.model)

    def model_for(self, partition_id: int) -> dict[str, Any]:
        """The model spec the client with ``partition_id`` trains."""
        return self.architectures[architecture_index(self.model, partition_id)]

    def to_json(self) -> str:
        """Serialize to a canonical JSON string (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> FederationSetup:
        """Parse (cached per process: the same string always gives the same object)."""
        return _parse_setup(text)


@lru_cache(maxsize=16)
def _parse_setup(text: str) -> FederationSetup:
    raw = json.loads(text)
    raw["local"] = LocalTraining(**raw["local"])
    return FederationSetup(**raw)
