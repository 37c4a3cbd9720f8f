"""The fedkd ClientApp: local training, predictions on the public proxy, local evaluation.

The same ``app`` runs under Flower's simulation engine, ``flwr run`` and real SuperNodes.
Everything it needs arrives with the message (``fedkd-setup``) plus the node config
(``partition-id``); datasets, partitions and models are built once per process and reused.

One ``train`` message runs, in order and as the round config asks:

1. start weights: the ``arrays`` the server sent (weight-sharing methods), else the
   client's own model from ``context.state`` (``keep-model``), else the seeded initial
   weights of its architecture;
2. warm-up on the labeled proxy (``warmup-public-epochs``, first participation only);
3. digest: distill toward the server's ``targets`` on the proxy subset they refer to;
4. revisit: local training on private data (with FD's per-label regularizer when the
   server sent ``label-logits``);
5. reply with what the round asks to share (proxy predictions after privacy and any
   attack, in the run's ``encoding``, see :mod:`fedkd.encoding`), and save the model when
   it keeps one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from fedkd import faults, keys
from fedkd.attacks import (
    LABEL_ATTACKS,
    LABEL_FLIP,
    poison_labels,
    poison_probs,
    poison_weights,
)
from fedkd.data import (
    ClientData,
    FederatedData,
    LocalDataSpec,
    get_federated_data,
    load_local_data,
    local_split,
    proxy_round_indices,
)
from fedkd.devices import resolve_device, set_torch_threads
from fedkd.distill import KDLoss, build_loss, distill, loss_options
from fedkd.distill.augment import Augmentation, build_augmentation
from fedkd.distill.losses import DistillLoss
from fedkd.distill.self_train import born_again, check_born_again, train_self_distilled
from fedkd.encoding import EncodingSpec
from fedkd.errors import ConfigError, FedKDError
from fedkd.models import FedKDModel, model_from_config
from fedkd.privacy import PrivacySpec
from fedkd.privacy.mechanisms import (
    clip_rows,
    local_release,
    noise_generator,
    one_hot_votes,
    torch_noise_seed,
)
from fedkd.prototypes import class_prototypes, train_with_prototypes
from fedkd.setup import FederationSetup, architecture_index
from fedkd.train import evaluate, predict_logits, predict_probs, train_local

logger = logging.getLogger(__name__)

app = ClientApp()


@dataclass
class _ClientRuntime:
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

    def with_poisoned_labels(self, kind: str, target: int) -> _ClientRuntime:
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
            state_dict = message.content.array_records[keys.ARRAYS].to_torch_state_dict()
            fresh = False
        elif keep_model and keys.STATE_MODEL in context.state.array_records:
            state_dict = context.state.array_records[keys.STATE_MODEL].to_torch_state_dict()
            fresh = False
        self.model.load_state_dict(
            {k: v.to(self.device) for k, v in state_dict.items()}, strict=True
        )
        return fresh

    def weights_record(self) -> ArrayRecord:
        return ArrayRecord({k: v.detach().cpu() for k, v in self.model.state_dict().items()})


_runtimes: dict[tuple[str, int, str], _ClientRuntime] = {}
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
    context: Context, setup: FederationSetup, data: FederatedData, partition_id: int
) -> ClientData:
    """The client's private records: its own data file when the node config names one
    (``data-file``, deployment), else its partition of the run's dataset (simulation)."""
    spec = LocalDataSpec.from_node_config(context.node_config)
    if spec is None:
        return data.client_data(partition_id)
    x, y = load_local_data(spec, input_shape=data.input_shape, num_classes=data.num_classes)
    return local_split(
        x, y, fraction=setup.local_test_fraction, seed=setup.seed, partition_id=partition_id
    )


def _runtime(message: Message, context: Context) -> _ClientRuntime:
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
        runtime = _ClientRuntime(
            setup=setup,
            data=data,
            client_data=_client_data(context, setup, data, partition_id),
            partition_id=partition_id,
            architecture=architecture_index(setup.model, partition_id),
            model=model,
            initial_state=initial_state,
            device=device,
            augmentation=build_augmentation(setup.augment, data.input_shape),
            privacy=PrivacySpec.from_dict(setup.privacy),
            encoding=EncodingSpec.from_config(setup.encoding),
        )
        _runtimes[cache_key] = runtime
    return runtime


def _array(values: np.ndarray) -> Array:
    return Array(np.ascontiguousarray(values, dtype=np.float32))


def _int(config: ConfigRecord, key: str, default: int = 0) -> int:
    value = config.get(key, default)
    return int(value) if isinstance(value, int | float) else default


def _float(config: ConfigRecord, key: str, default: float) -> float:
    value = config.get(key, default)
    return float(value) if isinstance(value, int | float) else default


def _round_indices(runtime: _ClientRuntime, config: ConfigRecord, server_round: int) -> np.ndarray:
    size = _int(config, keys.PROXY_ROUND_SIZE)
    return proxy_round_indices(
        len(runtime.data.proxy_x),
        size=size if size > 0 else None,
        seed=runtime.setup.seed,
        server_round=server_round,
    )


def _digest(runtime: _ClientRuntime, config: ConfigRecord, targets: ArrayRecord, seed: int) -> None:
    """Fit the server's consensus on the proxy subset it was computed on (FedMD's digest),
    with the run's ``distill`` loss and ``augment`` transforms."""
    epochs = _int(config, keys.DIGEST_EPOCHS)
    if epochs <= 0 or keys.PROXY_PROBS not in targets:
        return
    indices = _round_indices(runtime, config, _int(config, keys.TARGETS_ROUND))
    if keys.TARGETS_ROWS in targets:  # PATE: only the answered queries have labels
        indices = indices[targets[keys.TARGETS_ROWS].numpy().astype(np.int64)]
    consensus = targets[keys.PROXY_PROBS].numpy()
    expected = (len(indices), runtime.data.num_classes)
    if consensus.shape != expected:
        raise ValueError(f"targets have shape {consensus.shape}, expected {expected}")
    distill(
        runtime.model,
        runtime.data.proxy_x[indices],
        consensus,
        loss=_digest_loss(runtime.setup, config),
        epochs=epochs,
        batch_size=_int(config, keys.DIGEST_BATCH_SIZE, 32),
        lr=_float(config, keys.DIGEST_LR, 1e-3),
        optimizer="adam",
        seed=seed,
        device=runtime.device,
        augmentation=runtime.augmentation,
    )


def _digest_loss(setup: FederationSetup, config: ConfigRecord) -> DistillLoss:
    """A fresh loss per digest (learned parts never pass between clients); the strategy's
    ``digest-temperature`` and ``digest-soft-loss``, when sent, replace the loss's own."""
    spec = dict(setup.distill)
    name = str(spec.pop("name"))
    if keys.DIGEST_TEMPERATURE in config and "temperature" in loss_options(name):
        spec["temperature"] = _float(config, keys.DIGEST_TEMPERATURE, 1.0)
    if keys.DIGEST_SOFT_LOSS in config and "soft_loss" in loss_options(name):
        spec["soft_loss"] = str(config[keys.DIGEST_SOFT_LOSS])
    return build_loss(name, **spec)


def _train_private(
    runtime: _ClientRuntime, config: ConfigRecord, targets: ArrayRecord | None, seed: int
) -> float:
    """Local training on private data; FedProto adds a pull toward the global class
    prototypes (``prototypes``), FD toward the global per-label logits (``label-logits``)."""
    local = runtime.setup.local
    epochs = _int(config, keys.LOCAL_EPOCHS, local.epochs)
    x, y = runtime.client_data.train_x, runtime.client_data.train_y
    if epochs <= 0:
        return float("nan")
    if targets is not None and keys.PROTOTYPES in targets:
        return train_with_prototypes(
            runtime.model,
            x,
            y,
            prototypes=targets[keys.PROTOTYPES].numpy(),
            soft=targets[keys.PROTOTYPE_SOFT].numpy(),
            counts=targets[keys.PROTOTYPE_COUNTS].numpy(),
            proto_weight=_float(config, keys.PROTO_WEIGHT, 1.0),
            soft_weight=_float(config, keys.PROTO_SOFT_WEIGHT, 0.0),
            temperature=_float(config, keys.PROTO_TEMPERATURE, 1.0),
            epochs=epochs,
            batch_size=local.batch_size,
            lr=local.lr,
            optimizer=local.optimizer,
            momentum=local.momentum,
            weight_decay=local.weight_decay,
            seed=seed,
            device=runtime.device,
        )
    if targets is not None and keys.LABEL_LOGITS in targets:
        temperature = _float(config, keys.FD_TEMPERATURE, 1.0)
        global_logits = targets[keys.LABEL_LOGITS].numpy()
        counts = targets[keys.LABEL_COUNTS].numpy()
        soft = torch.softmax(torch.from_numpy(global_logits) / temperature, dim=1).numpy()
        # Labels nobody reported have no global logits: their target is the hard label.
        onehot = np.eye(runtime.data.num_classes, dtype=np.float32)
        per_label = np.where((counts > 0)[:, None], soft, onehot).astype(np.float32)
        report = distill(
            runtime.model,
            x,
            per_label[y],
            loss=KDLoss(temperature=temperature, alpha=_float(config, keys.FD_BETA, 0.5)),
            epochs=epochs,
            batch_size=local.batch_size,
            lr=local.lr,
            optimizer=local.optimizer,
            proxy_y=y,
            seed=seed,
            device=runtime.device,
            weight_decay=local.weight_decay,
        )
        return report.epoch_losses[-1]
    return _train_supervised(runtime, x, y, epochs=epochs, seed=seed)


def _train_supervised(
    runtime: _ClientRuntime, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int
) -> float:
    """Cross-entropy training, or BYOT self-distillation (``client.self_distill``), then
    born-again generations (``client.born_again``) when configured."""
    local = runtime.setup.local
    common: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": local.batch_size,
        "lr": local.lr,
        "optimizer": local.optimizer,
        "weight_decay": local.weight_decay,
        "seed": seed,
        "device": runtime.device,
    }
    if local.self_distill is not None:
        loss = train_self_distilled(runtime.model, x, y, options=local.self_distill, **common)
    else:
        loss = train_local(runtime.model, x, y, momentum=local.momentum, **common).loss
    spec = check_born_again(local.born_again)
    if spec is not None and spec["generations"] > 0:
        loss = born_again(runtime.model, x, y, **spec, **common)
    return loss


def _train_dpsgd(
    runtime: _ClientRuntime, config: ConfigRecord, context: Context, spec: PrivacySpec
) -> tuple[float, float]:
    """DP-SGD local training (Opacus); the accountant's history lives in ``context.state``
    so epsilon composes over every round this client trained in."""
    from fedkd.privacy.dpsgd import train_dpsgd

    local = runtime.setup.local
    history: list[tuple[float, float, int]] = []
    if keys.DP_HISTORY in context.state.config_records:
        saved = context.state.config_records[keys.DP_HISTORY]
        noise, rate, steps = (np.asarray(saved[k]) for k in ("noise", "rate", "steps"))
        history = [(float(z), float(q), int(n)) for z, q, n in zip(noise, rate, steps, strict=True)]
    report = train_dpsgd(
        runtime.model,
        runtime.client_data.train_x,
        runtime.client_data.train_y,
        epochs=_int(config, keys.LOCAL_EPOCHS, local.epochs),
        batch_size=local.batch_size,
        lr=local.lr,
        optimizer=local.optimizer,
        momentum=local.momentum,
        weight_decay=local.weight_decay,
        noise_multiplier=spec.noise_multiplier,
        max_grad_norm=spec.max_grad_norm,
        delta=spec.delta,
        history=history,
        noise_seed=torch_noise_seed(
            spec.reproducible_noise,
            runtime.setup.seed,
            _int(config, keys.SERVER_ROUND),
            runtime.partition_id,
        ),
        device=runtime.device,
    )
    context.state[keys.DP_HISTORY] = ConfigRecord(
        {
            "noise": [float(z) for z, _, _ in report.history],
            "rate": [float(q) for _, q, _ in report.history],
            "steps": [int(n) for _, _, n in report.history],
        }
    )
    return report.loss, report.epsilon


def _privatize(
    runtime: _ClientRuntime, spec: PrivacySpec, probs: np.ndarray, server_round: int
) -> np.ndarray:
    """What leaves the client under ``privacy``: noisy clipped rows (local logit_dp),
    clipped rows (central logit_dp: the server adds the noise), or one-hot votes (PATE)."""
    if spec.name == "logit_dp" and spec.mode == "local":
        rng = noise_generator(
            spec.reproducible_noise, runtime.setup.seed, server_round, runtime.partition_id, 1
        )
        noisy, _ = local_release(
            probs, clip=spec.clip, noise_multiplier=spec.noise_multiplier, rng=rng
        )
        return noisy
    if spec.name == "logit_dp":
        return clip_rows(probs, spec.clip).astype(np.float32)
    if spec.name == "pate":
        return one_hot_votes(probs)
    return probs


def _label_logits(runtime: _ClientRuntime) -> tuple[np.ndarray, np.ndarray]:
    """FD's upload: mean logits per true label on private data, and the label counts."""
    num_classes = runtime.data.num_classes
    logits = predict_logits(runtime.model, runtime.client_data.train_x, device=runtime.device)
    labels = runtime.client_data.train_y
    counts = np.bincount(labels, minlength=num_classes).astype(np.float32)
    sums = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(sums, labels, logits)
    means = sums / np.maximum(counts, 1.0)[:, None]
    return means.astype(np.float32), counts


@dataclass
class _Poisoner:
    """What a malicious client (``attack-kind``) does to what it shares; honest: nothing."""

    kind: str
    scale: float
    target: int
    seed: int
    start_state: dict[str, np.ndarray] | None

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, 0xA77AC])
        self.active = bool(self.kind) and self.kind != LABEL_FLIP

    def weights(self, record: ArrayRecord) -> ArrayRecord:
        if not self.active:
            return record
        state = {name: array.numpy() for name, array in record.items()}
        poisoned = poison_weights(
            state, self.start_state, self.kind, scale=self.scale, rng=self.rng
        )
        return ArrayRecord({name: Array(np.ascontiguousarray(v)) for name, v in poisoned.items()})

    def probs(self, values: np.ndarray) -> np.ndarray:
        if not self.active:
            return values
        return poison_probs(values, self.kind, scale=self.scale, rng=self.rng, target=self.target)

    def statistics(self, shared: dict[str, Array]) -> dict[str, Array]:
        """Per-label logits and prototypes are poisoned like weight tensors (from zero);
        proxy predictions were poisoned already; counts are left alone."""
        if not self.active:
            return shared
        out = dict(shared)
        for key in (keys.LABEL_LOGITS, keys.PROTOTYPES, keys.PROTOTYPE_SOFT):
            if key in out:
                values = out[key].numpy()
                poisoned = poison_weights(
                    {key: values}, None, self.kind, scale=self.scale, rng=self.rng
                )[key]
                out[key] = _array(poisoned)
        return out


#: Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION.
CLIENT_APP_ERROR_CODE = 2


def safe_reason(exc: BaseException) -> str:
    """What the server learns about a client failure.

    fedkd's own errors name config keys, node-config keys and files, never records, so
    their first line crosses; any other exception crosses as its type only (its message
    or traceback could quote private data). The full traceback stays in the client's log.
    """
    if isinstance(exc, FedKDError):
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
    return f"{type(exc).__name__} (details in the client's log)"


def _safe_errors(
    handler: Callable[[Message, Context], Message],
) -> Callable[[Message, Context], Message]:
    """Turn an exception in ``handler`` into an Error reply with a :func:`safe_reason`."""

    @functools.wraps(handler)
    def wrapper(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except Exception as exc:
            injected = isinstance(exc, faults.InjectedFault)  # asked for: no alarm
            logger.log(
                logging.DEBUG if injected else logging.ERROR,
                "ClientApp %s failed on node %s: %s",
                handler.__name__,
                context.node_id,
                exc,
                exc_info=not injected,
            )
            return Message(
                Error(code=CLIENT_APP_ERROR_CODE, reason=safe_reason(exc)), reply_to=message
            )

    return wrapper


@app.query()
@_safe_errors
def query(message: Message, context: Context) -> Message:
    """Describe this client: partition id, example count, label histogram, architecture.

    Other questions, by config key:

    * ``audit-model`` (the membership audit after a run, simulation only): reply with the
      client's own model;
    * ``state-export`` (checkpoints): reply with every ``context.state`` record, keys
      prefixed ``state/``;
    * ``state-import`` (resume): replace ``context.state`` with the ``state/`` records sent.
    """
    runtime = _runtime(message, context)
    config = message.content.config_records[keys.CONFIG]
    identity = MetricRecord({keys.PARTITION_ID: runtime.partition_id})
    if bool(config.get(keys.AUDIT_MODEL, False)):
        content = RecordDict()
        if keys.STATE_MODEL in context.state.array_records:
            content[keys.ARRAYS] = context.state.array_records[keys.STATE_MODEL]
        content[keys.METRICS] = identity
        return Message(content, reply_to=message)
    if bool(config.get(keys.STATE_EXPORT, False)):
        content = RecordDict({keys.METRICS: identity})
        for name, record in context.state.items():
            content[keys.STATE_PREFIX + name] = record
        return Message(content, reply_to=message)
    if bool(config.get(keys.STATE_IMPORT, False)):
        for name in list(context.state.keys()):
            del context.state[name]
        for name, record in message.content.items():
            if name.startswith(keys.STATE_PREFIX):
                context.state[name[len(keys.STATE_PREFIX) :]] = record
        return Message(RecordDict({keys.METRICS: identity}), reply_to=message)
    histogram = np.bincount(runtime.client_data.train_y, minlength=runtime.data.num_classes)
    metrics = MetricRecord(
        {
            keys.PARTITION_ID: runtime.partition_id,
            keys.NUM_EXAMPLES: len(runtime.client_data.train_y),
            keys.LABEL_HISTOGRAM: [int(c) for c in histogram],
            keys.ARCHITECTURE: runtime.architecture,
        }
    )
    return Message(RecordDict({keys.METRICS: metrics}), reply_to=message)


@app.train()
@_safe_errors
def train(message: Message, context: Context) -> Message:
    """Warm up, digest, train locally, then share what the round asks for.

    Simulation harness keys, set by the server for chosen clients only: ``fault`` (crash,
    straggle or kill first, see :mod:`fedkd.faults`) and ``attack-kind`` (poison what is
    shared, see :mod:`fedkd.attacks`)."""
    runtime = _runtime(message, context)
    config = message.content.config_records[keys.CONFIG]
    fault = str(config.get(keys.FAULT, ""))
    if fault:
        faults.inject(fault, _float(config, keys.FAULT_DELAY, 1.0))
    attack = str(config.get(keys.ATTACK_KIND, ""))
    attack_target = _int(config, keys.ATTACK_TARGET)
    if attack in LABEL_ATTACKS:
        runtime = runtime.with_poisoned_labels(attack, attack_target)
    keep_model = bool(config.get(keys.KEEP_MODEL, False))
    seed = _int(config, keys.TRAIN_SEED)
    server_round = _int(config, keys.SERVER_ROUND)
    data, device = runtime.data, runtime.device
    fresh = runtime.load_start_weights(message, context, keep_model=keep_model)
    start_state = (
        {k: v.detach().cpu().numpy().copy() for k, v in runtime.model.state_dict().items()}
        if attack and attack not in LABEL_ATTACKS
        else None
    )

    warmup_epochs = _int(config, keys.WARMUP_PUBLIC_EPOCHS)
    if keep_model and fresh and warmup_epochs > 0:
        if data.proxy_y is None:
            raise ConfigError("FedMD warm-up needs a labeled proxy: set data.proxy_labeled=true")
        local = runtime.setup.local
        train_local(
            runtime.model,
            data.proxy_x,
            data.proxy_y,
            epochs=warmup_epochs,
            batch_size=local.batch_size,
            lr=local.lr,
            optimizer=local.optimizer,
            momentum=local.momentum,
            seed=seed,
            device=device,
        )
    targets = message.content.array_records.get(keys.TARGETS)
    if targets is not None:
        _digest(runtime, config, targets, seed=(seed + 1) % 2**32)
    privacy = runtime.privacy
    dp_epsilon: float | None = None
    if privacy.name == "dpsgd":
        train_loss, dp_epsilon = _train_dpsgd(runtime, config, context, privacy)
    else:
        train_loss = _train_private(runtime, config, targets, seed)
    if keep_model:
        context.state[keys.STATE_MODEL] = runtime.weights_record()

    metrics: dict[str, Any] = {
        keys.NUM_EXAMPLES: len(runtime.client_data.train_y),
        keys.TRAIN_LOSS: float(train_loss),
        keys.PARTITION_ID: runtime.partition_id,
        keys.ARCHITECTURE: runtime.architecture,
        keys.SERVER_ROUND: server_round,  # the server rejects replies for another round
    }
    if dp_epsilon is not None:
        metrics[keys.DP_EPSILON] = float(dp_epsilon)
    if len(runtime.client_data.test_y):
        _, metrics[keys.LOCAL_ACCURACY] = evaluate(
            runtime.model, runtime.client_data.test_x, runtime.client_data.test_y, device=device
        )
    content = RecordDict({keys.METRICS: MetricRecord(metrics)})
    poison = _Poisoner(
        attack, _float(config, keys.ATTACK_SCALE, 10.0), attack_target, seed, start_state
    )
    if bool(config.get(keys.SHARE_WEIGHTS, False)):
        content[keys.ARRAYS] = poison.weights(runtime.weights_record())
    shared: dict[str, Array] = {}
    if bool(config.get(keys.SHARE_PROXY_PROBS, False)):
        indices = _round_indices(runtime, config, server_round)
        probs = predict_probs(runtime.model, data.proxy_x[indices], device=device)
        released = _privatize(runtime, privacy, probs, server_round)
        # encoded last: the rows that leave the client are exactly what the encoding carries
        encoded = runtime.encoding.encode(poison.probs(released))
        shared.update({name: Array(values) for name, values in encoded.items()})
    if bool(config.get(keys.SHARE_LABEL_LOGITS, False)):
        label_logits, label_counts = _label_logits(runtime)
        shared[keys.LABEL_LOGITS] = _array(label_logits)
        shared[keys.LABEL_COUNTS] = _array(label_counts)
    if bool(config.get(keys.SHARE_PROTOTYPES, False)):
        # after local training: the statistics describe the model the client keeps
        prototypes, prototype_soft, prototype_counts = class_prototypes(
            runtime.model,
            runtime.client_data.train_x,
            runtime.client_data.train_y,
            num_classes=data.num_classes,
            device=device,
        )
        shared[keys.PROTOTYPES] = _array(prototypes)
        shared[keys.PROTOTYPE_SOFT] = _array(prototype_soft)
        shared[keys.PROTOTYPE_COUNTS] = _array(prototype_counts)
    if shared:
        content[keys.PREDICTIONS] = ArrayRecord(poison.statistics(shared))
    if bool(config.get(keys.SHARE_TEST_PROBS, False)):
        test_probs = predict_probs(runtime.model, data.test_x, device=device)
        content[keys.EVALUATION] = ArrayRecord({keys.TEST_PROBS: _array(test_probs)})
    return Message(content, reply_to=message)


@app.evaluate()
@_safe_errors
def evaluate_local(message: Message, context: Context) -> Message:
    """Accuracy on this client's local test split of the global model (when the server sends
    weights) or of the client's own model (methods where clients keep theirs)."""
    runtime = _runtime(message, context)
    config = message.content.config_records[keys.CONFIG]
    runtime.load_start_weights(
        message, context, keep_model=bool(config.get(keys.KEEP_MODEL, False))
    )
    test_x, test_y = runtime.client_data.test_x, runtime.client_data.test_y
    if len(test_y) == 0:
        loss, accuracy = 0.0, 0.0
    else:
        loss, accuracy = evaluate(runtime.model, test_x, test_y, device=runtime.device)
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: len(test_y),
            keys.LOSS: float(loss),
            keys.ACCURACY: float(accuracy),
            keys.PARTITION_ID: runtime.partition_id,
        }
    )
    return Message(RecordDict({keys.METRICS: metrics}), reply_to=message)
