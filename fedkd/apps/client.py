"""The fedkd ClientApp: local training, predictions on the public proxy, local evaluation.

The same ``app`` runs under Flower's simulation engine, ``flwr run`` and real SuperNodes.
Everything it needs arrives with the message (``fedkd-setup``) plus the node config
(``partition-id``); datasets, partitions and models are built once per process and reused.

One ``train`` message runs, in order and as the round config asks:

1. start weights: the ``arrays`` the server sent (weight-sharing methods), else the
   client's own model from ``context.state`` (``keep-model``), else the seeded initial
   weights of its architecture;
2. warm-up on the labeled proxy (``warmup-public-epochs``, first participation only);
3. digest: each requested payload learns from the server's ``targets`` (FedMD's digest
   lives in :class:`fedkd.wire.payloads.ProxyPredictions`);
4. revisit: local training on private data, with a payload's own loss when it has one
   (FD's per-label regularizer, FedProto's prototypes), else supervised or DP-SGD;
5. reply with every payload the round names in ``payloads`` (:mod:`fedkd.wire.payloads`:
   each computes, protects, poisons and encodes itself), and save the model when it keeps
   one. The ClientApp never branches on the method.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from fedkd.apps import secure_client
from fedkd.apps.local_training import train_dpsgd, train_supervised, warm_up
from fedkd.apps.runtime import ClientRuntime, client_runtime
from fedkd.errors import FedKDError
from fedkd.privacy import PrivacySpec
from fedkd.privacy.config import public_examples
from fedkd.reliability import faults
from fedkd.reliability.attacks import LABEL_ATTACKS
from fedkd.train import evaluate
from fedkd.wire import keys, secagg_records
from fedkd.wire.ledger import withhold
from fedkd.wire.payloads import (
    ClientMetrics,
    ClientRound,
    Discovery,
    Payload,
    Poisoner,
    resolve,
)
from fedkd.wire.payloads.proxy import DigestOptions

logger = logging.getLogger(__name__)

app = ClientApp()


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


def error_reply(exc: Exception, message: Message, context: Context, stage: str) -> Message:
    """The Error reply to ``message`` for an exception raised while handling it (logged
    in full here; the server sees only :func:`safe_reason`)."""
    injected = isinstance(exc, faults.InjectedFault)  # asked for: no alarm
    logger.log(
        logging.DEBUG if injected else logging.ERROR,
        "ClientApp %s failed on node %s: %s",
        stage,
        context.node_id,
        exc,
        exc_info=not injected,
    )
    return Message(Error(code=CLIENT_APP_ERROR_CODE, reason=safe_reason(exc)), reply_to=message)


def _safe_errors(
    handler: Callable[[Message, Context], Message],
) -> Callable[[Message, Context], Message]:
    """Turn an exception in ``handler`` into an Error reply with a :func:`safe_reason`."""

    @functools.wraps(handler)
    def wrapper(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except Exception as exc:
            return error_reply(exc, message, context, handler.__name__)

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
    runtime = client_runtime(message, context)
    config = message.content.config_records[keys.CONFIG]
    stage = secagg_records.stage_of(config)
    if stage is not None:  # a secure-aggregation stage (fedkd.apps.secure_client)
        return _reply(
            "secagg",
            secure_client.answer(stage, message, context, runtime),
            message,
            runtime.privacy,
        )
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
            if name != secure_client.STATE:  # a session's keys never leave the client
                content[keys.STATE_PREFIX + name] = record
        return Message(content, reply_to=message)
    if bool(config.get(keys.STATE_IMPORT, False)):
        for name in list(context.state.keys()):
            del context.state[name]
        for name, record in message.content.items():
            if name.startswith(keys.STATE_PREFIX):
                context.state[name[len(keys.STATE_PREFIX) :]] = record
        return Message(RecordDict({keys.METRICS: identity}), reply_to=message)
    train_y = runtime.client_data.train_y
    metrics = Discovery.compute(
        partition_id=runtime.partition_id,
        train_y=train_y,
        num_classes=runtime.data.num_classes,
        architecture=runtime.architecture,
        num_examples=public_examples(runtime.privacy, len(train_y), runtime.setup.local.batch_size),
    )
    return _reply("discovery", RecordDict({keys.METRICS: metrics}), message, runtime.privacy)


def _reply(kind: str, content: RecordDict, message: Message, privacy: PrivacySpec) -> Message:
    """The reply, with every key the privacy mechanism does not protect withheld
    (:func:`fedkd.wire.ledger.withhold`; nothing without a mechanism)."""
    removed = withhold(kind, content, privacy)
    if removed:
        logger.debug("withheld under privacy=%s: %s", privacy.name, removed)
    return Message(content, reply_to=message)


@app.train()
@_safe_errors
def train(message: Message, context: Context) -> Message:
    """Warm up, digest, train locally, then compute every payload the round asks for.

    The round config's ``payloads`` names what to send (:mod:`fedkd.wire.payloads`); each
    payload computes, protects, poisons and encodes itself. Simulation harness keys, set by
    the server for chosen clients only: ``fault`` (crash, straggle or kill first, see
    :mod:`fedkd.reliability.faults`) and ``attack-kind`` (poison what is shared, see
    :mod:`fedkd.reliability.attacks`). The three stages are separate functions so that
    ``backend=batched`` can train many clients' local step together (:func:`begin_train`,
    :func:`train_locally`, :func:`finish_train`)."""
    job = begin_train(message, context)
    train_locally(job)
    return finish_train(job)


@dataclass
class TrainJob:
    """One ``train`` message between its stages: the client's round after the warm-up and
    digest, before local training on private data."""

    message: Message
    context: Context
    runtime: ClientRuntime
    client: ClientRound
    payloads: list[Payload]
    keep_model: bool


def begin_train(message: Message, context: Context) -> TrainJob:
    """Everything before local training: faults, label poisoning, start weights, the
    warm-up on the labeled proxy and each payload's digest of the server's targets."""
    runtime = client_runtime(message, context)
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
    fresh = runtime.load_start_weights(message, context, keep_model=keep_model)
    start_state = (
        {k: v.detach().cpu().numpy().copy() for k, v in runtime.model.state_dict().items()}
        if attack and attack not in LABEL_ATTACKS
        else None
    )
    payloads = requested_payloads(config)
    client = ClientRound(
        setup=runtime.setup,
        data=runtime.data,
        client_data=runtime.client_data,
        model=runtime.model,
        device=runtime.device,
        partition_id=runtime.partition_id,
        architecture=runtime.architecture,
        config=config,
        targets=message.content.array_records.get(keys.TARGETS),
        server_round=_int(config, keys.SERVER_ROUND),
        seed=seed,
        privacy=runtime.privacy,
        encoding=runtime.encoding,
        poison=Poisoner(
            attack, _float(config, keys.ATTACK_SCALE, 10.0), attack_target, seed, start_state
        ),
        augmentation=runtime.augmentation,
        state=context.state,
    )
    digest = DigestOptions.from_config(config)  # None: the strategy has no digest/warm-up
    if digest is not None and keep_model and fresh and digest.warmup_public_epochs > 0:
        warm_up(client, digest.warmup_public_epochs)
    if client.targets is not None:
        for payload in payloads:
            payload.digest(client)
    return TrainJob(message, context, runtime, client, payloads, keep_model)


def train_locally(job: TrainJob) -> None:
    """Local training on private data (DP-SGD under ``privacy=dpsgd``)."""
    client = job.client
    if job.runtime.privacy.name == "dpsgd":
        client.train_loss, client.dp_epsilon = train_dpsgd(client, job.context, job.runtime.privacy)
    else:
        client.train_loss = _train(client, job.payloads)


def finish_train(job: TrainJob) -> Message:
    """Save the client's model when it keeps one, then reply with every payload."""
    if job.keep_model:
        job.context.state[keys.STATE_MODEL] = job.runtime.weights_record()
    content = RecordDict()
    for payload in job.payloads:
        values = payload.compute(job.client)
        if payload.record == keys.METRICS:
            content[keys.METRICS] = MetricRecord(values)
        elif payload.record in content.array_records:
            record = content.array_records[payload.record]
            for name, array in values.items():
                record[name] = array
        else:
            content[payload.record] = ArrayRecord(values)
    secure_client.mask_reply(job, content)  # under secagg: the masked sum replaces them
    return _reply("train", content, job.message, job.runtime.privacy)


def requested_payloads(config: ConfigRecord) -> list[Payload]:
    """The payloads the round config's ``payloads`` names (client metrics always)."""
    names = [name for name in str(config.get(keys.PAYLOADS, "")).split(",") if name]
    return resolve([ClientMetrics.name, *names])


def _train(client: ClientRound, payloads: list[Payload]) -> float:
    """Local training on private data: the first payload that trains with a loss of its
    own (FD's per-label logits, FedProto's prototypes, once the server's aggregate arrived),
    else supervised training."""
    epochs = client.local_epochs
    if epochs <= 0:
        return float("nan")
    for payload in payloads:
        loss = payload.train(client)
        if loss is not None:
            return loss
    return train_supervised(client, epochs=epochs)


def _int(config: ConfigRecord, key: str, default: int = 0) -> int:
    value = config.get(key, default)
    return int(value) if isinstance(value, int | float) else default


def _float(config: ConfigRecord, key: str, default: float) -> float:
    value = config.get(key, default)
    return float(value) if isinstance(value, int | float) else default


@app.evaluate()
@_safe_errors
def evaluate_local(message: Message, context: Context) -> Message:
    """Accuracy on this client's local test split of the global model (when the server sends
    weights) or of the client's own model (methods where clients keep theirs)."""
    runtime = client_runtime(message, context)
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
    return _reply("evaluate", RecordDict({keys.METRICS: metrics}), message, runtime.privacy)
