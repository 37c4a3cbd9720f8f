"""The fedkd ClientApp: local training, predictions on the public proxy, local evaluation.

The same ``app`` runs under Flower's simulation engine, ``flwr run`` and real SuperNodes.
Everything it needs arrives with the message (``fedkd-setup``) plus the node config
(``partition-id``); datasets, partitions and models are built once per process and reused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedkd import keys
from fedkd.data import ClientData, FederatedData, get_federated_data
from fedkd.devices import resolve_device, set_torch_threads
from fedkd.errors import ConfigError
from fedkd.models import FedKDModel, build_model
from fedkd.setup import FederationSetup
from fedkd.train import evaluate, predict_probs, train_local

logger = logging.getLogger(__name__)

app = ClientApp()


@dataclass
class _ClientRuntime:
    """What one client process keeps between messages."""

    setup: FederationSetup
    data: FederatedData
    client_data: ClientData
    model: FedKDModel
    initial_state: dict[str, torch.Tensor]
    device: torch.device

    def load_round_weights(self, message: Message) -> None:
        """Load the weights the server sent, or the seeded initial weights if it sent none.

        The model object is shared by all clients this process simulates, so it must never
        carry one client's weights into another client's round.
        """
        state_dict: Mapping[str, torch.Tensor] = self.initial_state
        if keys.ARRAYS in message.content.array_records:
            state_dict = message.content.array_records[keys.ARRAYS].to_torch_state_dict()
        self.model.load_state_dict(
            {k: v.to(self.device) for k, v in state_dict.items()}, strict=True
        )


_runtimes: dict[tuple[str, int], _ClientRuntime] = {}
_models: dict[tuple[str, str], tuple[FedKDModel, dict[str, torch.Tensor]]] = {}


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


def _runtime(message: Message, context: Context) -> _ClientRuntime:
    setup_json = str(message.content.config_records[keys.CONFIG][keys.SETUP])
    setup = FederationSetup.from_json(setup_json)
    partition_id = _partition_id(context, setup)
    cache_key = (setup_json, partition_id)
    runtime = _runtimes.get(cache_key)
    if runtime is None:
        set_torch_threads(setup.torch_threads)
        device = resolve_device(setup.device)
        data = get_federated_data(**setup.data_kwargs())
        model_key = (repr(sorted(setup.model.items())), f"{data.input_shape}/{data.num_classes}")
        cached = _models.get(model_key)
        if cached is None:
            model_options = {k: v for k, v in setup.model.items() if k != "name"}
            model = build_model(
                setup.model["name"],
                input_shape=data.input_shape,
                num_classes=data.num_classes,
                seed=setup.seed,
                **model_options,
            ).to(device)
            initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            cached = (model, initial_state)
            _models[model_key] = cached
        runtime = _ClientRuntime(
            setup=setup,
            data=data,
            client_data=data.client_data(partition_id),
            model=cached[0],
            initial_state=cached[1],
            device=device,
        )
        _runtimes[cache_key] = runtime
    return runtime


def _array(values: np.ndarray) -> Array:
    return Array(np.ascontiguousarray(values, dtype=np.float32))


@app.query()
def query(message: Message, context: Context) -> Message:
    """Describe this client: partition id, example count and label histogram."""
    runtime = _runtime(message, context)
    histogram = np.bincount(runtime.client_data.train_y, minlength=runtime.data.num_classes)
    metrics = MetricRecord(
        {
            keys.PARTITION_ID: _partition_id(context, runtime.setup),
            keys.NUM_EXAMPLES: len(runtime.client_data.train_y),
            keys.LABEL_HISTOGRAM: [int(c) for c in histogram],
        }
    )
    return Message(RecordDict({keys.METRICS: metrics}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train locally, then share what the round asks for (weights and/or proxy predictions)."""
    runtime = _runtime(message, context)
    config: ConfigRecord = message.content.config_records[keys.CONFIG]
    model, device, local = runtime.model, runtime.device, runtime.setup.local
    runtime.load_round_weights(message)
    report = train_local(
        model,
        runtime.client_data.train_x,
        runtime.client_data.train_y,
        epochs=local.epochs,
        batch_size=local.batch_size,
        lr=local.lr,
        optimizer=local.optimizer,
        momentum=local.momentum,
        weight_decay=local.weight_decay,
        seed=int(config[keys.TRAIN_SEED]),  # type: ignore[arg-type]
        device=device,
    )
    content = RecordDict(
        {
            keys.METRICS: MetricRecord(
                {
                    keys.NUM_EXAMPLES: report.num_examples,
                    keys.TRAIN_LOSS: float(report.loss),
                    keys.PARTITION_ID: _partition_id(context, runtime.setup),
                }
            )
        }
    )
    if bool(config.get(keys.SHARE_WEIGHTS, False)):
        content[keys.ARRAYS] = ArrayRecord(
            {k: v.detach().cpu() for k, v in model.state_dict().items()}
        )
    if bool(config.get(keys.SHARE_PROXY_PROBS, False)):
        proxy_probs = predict_probs(model, runtime.data.proxy_x, device=device)
        content[keys.PREDICTIONS] = ArrayRecord({keys.PROXY_PROBS: _array(proxy_probs)})
    if bool(config.get(keys.SHARE_TEST_PROBS, False)):
        test_probs = predict_probs(model, runtime.data.test_x, device=device)
        content[keys.EVALUATION] = ArrayRecord({keys.TEST_PROBS: _array(test_probs)})
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate_local(message: Message, context: Context) -> Message:
    """Accuracy of the received global model on this client's local test split."""
    runtime = _runtime(message, context)
    model, device = runtime.model, runtime.device
    runtime.load_round_weights(message)
    test_x, test_y = runtime.client_data.test_x, runtime.client_data.test_y
    if len(test_y) == 0:
        loss, accuracy = 0.0, 0.0
    else:
        loss, accuracy = evaluate(model, test_x, test_y, device=device)
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: len(test_y),
            keys.LOSS: float(loss),
            keys.ACCURACY: float(accuracy),
            keys.PARTITION_ID: _partition_id(context, runtime.setup),
        }
    )
    return Message(RecordDict({keys.METRICS: metrics}), reply_to=message)
