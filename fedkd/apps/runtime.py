"""A client process's cache: one runtime (data, model, settings) per partition and setup.

Datasets, partitions and models are built once per process and reused across messages;
the model object is shared by all clients of one architecture in this process, so every
message loads its own starting weights first (:meth:`ClientRuntime.load_start_weights`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message

from fedkd.data import (
    ClientData,
    FederatedData,
    LocalDataSpec,
    clear_federated_data_cache,
    get_federated_data,
    load_local_data,
    local_split,
)
from fedkd.devices import resolve_device, set_torch_threads
from fedkd.distill.augment import Augmentation, build_augmentation
from fedkd.errors import ConfigError
from fedkd.models import FedKDModel, model_from_config
from fedkd.privacy import PrivacySpec
from fedkd.privacy.canary_run import with_canaries
from fedkd.reliability.attacks import poison_labels
from fedkd.setup import FederationSetup, architecture_index
from fedkd.wire import keys
from fedkd.wire.arrays import array_values
from fedkd.wire.encoding import EncodingSpec


@dataclass
class ClientRuntime:
    """What one client process keeps between messages for one partition."""

    setup: FederationSetup
    data: FederatedData
    client_data: ClientData
    partition_id: int
    architecture: int
    model: FedKDModel
    initial_state: dict[str, torch.Tensor]
    device: torch.device
    augmentation: Augmentation | None = None
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    encoding: EncodingSpec = field(default_factory=EncodingSpec)
    _poisoned: dict[tuple[str, int], ClientData] = field(default_factory=dict)

    def with_poisoned_labels(self, kind: str, target: int) -> ClientRuntime:
        """This runtime with poisoned training labels (``label_flip``, ``targeted``)."""
        key = (kind, target)
        if key not in self._poisoned:
            data = self.client_data
            labels = poison_labels(
                data.train_y, kind, num_classes=self.data.num_classes, target=target
            )
            self._poisoned[key] = dataclasses.replace(data, train_y=labels)
        return dataclasses.replace(self, client_data=self._poisoned[key])

    def load_start_weights(self, message: Message, context: Context, *, keep_model: bool) -> bool:
        """Load this round's starting weights; True when the client starts from scratch.

        The model object is shared by all clients of one architecture in this process, so
        it must never carry one client's weights into another client's round.
        """
        state_dict: Mapping[str, torch.Tensor] = self.initial_state
        fresh = True
        if keys.ARRAYS in message.content.array_records:
            state_dict = torch_state(message.content.array_records[keys.ARRAYS])
            fresh = False
        elif keep_model and keys.STATE_MODEL in context.state.array_records:
            state_dict = torch_state(context.state.array_records[keys.STATE_MODEL])
            fresh = False
        self.model.load_state_dict(
            {k: v.to(self.device) for k, v in state_dict.items()}, strict=True
        )
        return fresh

    def weights_record(self) -> ArrayRecord:
        return ArrayRecord({k: v.detach().cpu() for k, v in self.model.state_dict().items()})


def torch_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()``, reading each array with :func:`array_values`."""
    return {name: torch.from_numpy(array_values(array)) for name, array in record.items()}


_runtimes: dict[tuple[str, int, str], ClientRuntime] = {}
_models: dict[tuple[str, str], tuple[FedKDModel, dict[str, torch.Tensor]]] = {}


def clear_client_runtimes() -> None:
    """Forget this process's runtimes, models and datasets (a Ray actor that a sweep keeps
    for its next run starts from nothing, as a new one would)."""
    _runtimes.clear()
    _models.clear()
    clear_federated_data_cache()


def _partition_id(context: Context, setup: FederationSetup) -> int:
    node_config = context.node_config
    if keys.NODE_PARTITION_ID not in node_config:
        raise ConfigError(
            f"node config has no {keys.NODE_PARTITION_ID!r}; "
            "start the SuperNode with --node-config 'partition-id=<i> num-partitions=<n>'"
        )
    partition_id = int(node_config[keys.NODE_PARTITION_ID])
    num_partitions = node_config.get(keys.NODE_NUM_PARTITIONS)
    if num_partitions is not None and int(num_partitions) != setup.num_clients:
        raise ConfigError(
            f"node config says num-partitions={num_partitions} but the run has "
            f"num_clients={setup.num_clients}; they must match"
        )
    if not 0 <= partition_id < setup.num_clients:
        raise ConfigError(f"partition-id {partition_id} is outside [0, {setup.num_clients - 1}]")
    return partition_id


def _model(
    spec: dict[str, Any], data: FederatedData, seed: int, device: torch.device
) -> tuple[FedKDModel, dict[str, torch.Tensor]]:
    """One model object (and its seeded initial weights) per architecture and process."""
    key = (repr(sorted(spec.items())), f"{data.input_shape}/{data.num_classes}/{seed}/{device}")
    cached = _models.get(key)
    if cached is None:
        model = model_from_config(
            spec, input_shape=data.input_shape, num_classes=data.num_classes, seed=seed
        ).to(device)
        cached = (model, {k: v.detach().clone() for k, v in model.state_dict().items()})
        _models[key] = cached
    return cached


def _client_data(
    context: Context,
    setup: FederationSetup,
    data: FederatedData,
    partition_id: int,
    privacy: PrivacySpec,
) -> ClientData:
    """The client's private records: its own data file when the node config names one
    (``data-file``, deployment), else its partition of the run's dataset (simulation)."""
    spec = LocalDataSpec.from_node_config(context.node_config)
    if spec is None:  # simulation: with the audit's canaries when it plants some
        return with_canaries(
            data.client_data(partition_id), privacy, data, setup.federation_seed, partition_id
        )
    x, y = load_local_data(spec, input_shape=data.input_shape, num_classes=data.num_classes)
    return local_split(
        x,
        y,
        fraction=setup.local_test_fraction,
        seed=setup.federation_seed,
        partition_id=partition_id,
    )


def client_runtime(message: Message, context: Context) -> ClientRuntime:
    setup_json = str(message.content.config_records[keys.CONFIG][keys.SETUP])
    setup = FederationSetup.from_json(setup_json)
    partition_id = _partition_id(context, setup)
    cache_key = (setup_json, partition_id, str(context.node_config.get("data-file", "")))
    runtime = _runtimes.get(cache_key)
    if runtime is None:
        set_torch_threads(setup.torch_threads)
        device = resolve_device(setup.device)
        data = get_federated_data(**setup.data_kwargs())
        model, initial_state = _model(setup.model_for(partition_id), data, setup.seed, device)
        privacy = PrivacySpec.from_dict(setup.privacy)
        runtime = ClientRuntime(
            setup=setup,
            data=data,
            client_data=_client_data(context, setup, data, partition_id, privacy),
            partition_id=partition_id,
            architecture=architecture_index(setup.model, partition_id),
            model=model,
            initial_state=initial_state,
            device=device,
            augmentation=build_augmentation(setup.augment, data.input_shape),
            privacy=privacy,
            encoding=EncodingSpec.from_config(setup.encoding),
        )
        _runtimes[cache_key] = runtime
    return runtime
