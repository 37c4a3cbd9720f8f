"""What every fedkd strategy shares: discovery, seeded sampling, reply checks, bookkeeping.

A method subclasses :class:`FedKDStrategy`, declares what clients share (class flags), and
implements :meth:`FedKDStrategy.aggregate`, which turns the validated replies of one round
into the next global ``ArrayRecord`` (usually the distilled student's weights).
"""

from __future__ import annotations

import copy
import logging
import re
import time
from abc import abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from torch import nn

from fedkd import keys
from fedkd.attacks import AttackSpec
from fedkd.data import FederatedData, proxy_round_indices
from fedkd.distill import agreement, distill, teacher_targets, validate_target_rule
from fedkd.distill.losses import DistillInputs, DistillLoss, build_loss
from fedkd.encoding import EncodingSpec, MalformedEncoding
from fedkd.errors import ConfigError, FedKDError
from fedkd.faults import FaultSpec
from fedkd.interrupt import check_stop
from fedkd.models import FedKDModel, model_from_config
from fedkd.privacy import PrivacyController, PrivacySpec
from fedkd.setup import FederationSetup
from fedkd.train import evaluate, predict_probs, seeded_rng

if TYPE_CHECKING:
    from fedkd.distill.augment import Augmentation

logger = logging.getLogger(__name__)

DISCOVERY_TIMEOUT_SECONDS = 300.0
#: Largest absolute value accepted in shared weights or statistics: trained models of this
#: framework's sizes stay far below it, while overflowing or scaled-up uploads do not.
MAX_ABS_VALUE = 1e4
#: How far a shared probability row's sum may be from 1 (on top of an encoding's rounding).
PROBABILITY_SUM_TOLERANCE = 1e-3
TOO_FEW_ACTIONS = ("skip", "abort")
#: Client error reasons that say the runtime, not the client, failed to run a message (Ray:
#: the actor is restarting after its process died); such messages are resent once.
TRANSIENT_ERRORS = ("ActorUnavailableError",)


class RoundAborted(FedKDError):
    """A round got fewer valid replies than ``min_train_replies`` and the run is set to abort
    (``strategy.on_too_few_replies=abort``); every finished round is kept."""


@dataclass
class RunAssets:
    """Server-side objects a strategy works with, built once by the ServerApp.

    Attributes
    ----------
    setup : FederationSetup
        The settings every client receives (dataset, partition, client model, training).
    data : FederatedData
        The federated view of the dataset; the server uses its proxy and test set only.
    student : FedKDModel
        The global student, trained in place by the strategy.
    distill_loss : nn.Module
        The loss used for distillation steps (``distill`` config group).
    device : torch.device
        Where server-side training and inference run.
    aggregation : dict
        The teacher-target rule (``aggregation`` config group): ``name`` and options.
    student_config : dict
        The ``student`` config group (to tell which client architecture, if any, it is).
    distill_config : dict
        The resolved ``distill`` group (name and options) the loss was built from; clients
        build the same loss for their digest steps.
    augmentation : Augmentation, optional
        Transfer-data augmentation of proxy batches (``augment`` group); ``None``: off.
    privacy : PrivacySpec
        The ``privacy`` group (mechanism, accounting and audit options).
    faults : FaultSpec
        Fault injection (``faults`` block): crashing, straggling and killed clients.
    attack : AttackSpec
        Poisoning simulation (``attack`` block): which clients are malicious and how.
    round_timeout : float
        Seconds the server waits for a round's replies (stragglers sleep past it).
    """

    setup: FederationSetup
    data: FederatedData
    student: FedKDModel
    distill_loss: nn.Module
    device: torch.device
    aggregation: dict[str, Any] = field(default_factory=lambda: {"name": "mean"})
    student_config: dict[str, Any] = field(default_factory=dict)
    distill_config: dict[str, Any] = field(default_factory=lambda: {"name": "kd"})
    augmentation: Augmentation | None = None
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    faults: FaultSpec = field(default_factory=FaultSpec)
    attack: AttackSpec = field(default_factory=AttackSpec)
    round_timeout: float = 3600.0


class FedKDStrategy(Strategy):
    """Base class of fedkd strategies (Flower Message API).

    Parameters
    ----------
    assets : RunAssets
        Server-side data, student and loss.
    fraction_train : float
        Fraction of clients sampled for training each round (default 1.0). Sampling is
        seeded by ``(seed, round)`` over partition ids, so it does not depend on Flower's
        random node ids.
    fraction_evaluate : float
        Fraction of clients that evaluate the global model on their local test split each
        round (default 0.0: off).
    min_train_replies : int
        Fewest valid training replies a round needs; with fewer, the round is skipped (the
        global state is kept) or the run stops, as ``on_too_few_replies`` says, and the
        reason is logged and counted.
    on_too_few_replies : {"skip", "abort"}
        ``skip`` (default): keep the global state and go on with the next round; ``abort``:
        raise :class:`RoundAborted` (the run ends with status ``stopped``).

    Notes
    -----
    Before the first round every node receives a ``query`` message and answers with its
    partition id, example count and label histogram (``RecordDict`` key ``metrics``).
    Train messages carry ``config`` (keys ``server-round``, ``fedkd-setup``,
    ``share-weights``, ``share-proxy-probs``, ``share-test-probs``, ``train-seed``) and,
    when :attr:`sends_weights`, ``arrays`` with the global weights. Replies carry proxy
    predictions in the run's ``encoding`` (:mod:`fedkd.encoding`); read them through
    :meth:`proxy_probs`, which decodes them.
    """

    #: Clients receive the global weights and start local training from them.
    sends_weights: ClassVar[bool] = True
    #: Clients send their trained weights back.
    shares_weights: ClassVar[bool] = False
    #: Clients send soft predictions on the proxy set.
    shares_proxy_predictions: ClassVar[bool] = False
    #: Clients keep their own model across rounds (``context.state``).
    keeps_client_models: ClassVar[bool] = False
    #: Clients send per-label mean logits (FD).
    shares_label_logits: ClassVar[bool] = False
    #: The method forms a teacher ensemble (its accuracy is reported each round).
    forms_ensemble: ClassVar[bool] = False
    #: Every client must train the student's architecture (weights go into the student).
    requires_student_architecture: ClassVar[bool] = False
    #: The server keeps a student (``student_accuracy`` is reported); False for local-only.
    has_student: ClassVar[bool] = True
    #: Clients train locally with the method's own regularized loss (FD, FedProto), which
    #: replaces ``client.self_distill`` and ``client.born_again``.
    regularizes_local_training: ClassVar[bool] = False
    #: The server holds the client models while distilling (FedDF with teacher weights), so
    #: losses that match the teacher's intermediate features can be used.
    provides_teacher_models: bool = False
    #: Clients take part (False for centralized training, which sends no message).
    has_clients: ClassVar[bool] = True

    def __init__(
        self,
        assets: RunAssets,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 0.0,
        min_train_replies: int = 1,
        on_too_few_replies: str = "skip",
        proxy_round_size: int = 0,
        distill_epochs: int = 20,
        distill_batch_size: int = 64,
        distill_lr: float = 1e-4,
        distill_optimizer: str = "adam",
        distill_validation_fraction: float = 0.0,
        distill_patience: int = 0,
    ) -> None:
        if not 0.0 <= distill_validation_fraction < 1.0:
            raise ConfigError(
                "strategy.distill_validation_fraction must be in [0, 1), "
                f"got {distill_validation_fraction}"
            )
        if distill_patience < 0:
            raise ConfigError(f"strategy.distill_patience must be >= 0, got {distill_patience}")
        if distill_patience > 0 and distill_validation_fraction == 0.0:
            raise ConfigError(
                "strategy.distill_patience (early stopping) needs a validation split of the "
                "proxy: set strategy.distill_validation_fraction > 0"
            )
        if proxy_round_size < 0:
            raise ConfigError(
                f"strategy.proxy_round_size must be >= 0 (0: whole proxy), got {proxy_round_size}"
            )
        if distill_epochs < 0:
            raise ConfigError(f"strategy.distill_epochs must be >= 0, got {distill_epochs}")
        validate_target_rule(assets.aggregation.get("name", "mean"), **_options(assets.aggregation))
        if not 0.0 < fraction_train <= 1.0:
            raise ConfigError(f"strategy.fraction_train must be in (0, 1], got {fraction_train}")
        if not 0.0 <= fraction_evaluate <= 1.0:
            raise ConfigError(
                f"strategy.fraction_evaluate must be in [0, 1], got {fraction_evaluate}"
            )
        if min_train_replies < 1:
            raise ConfigError(f"strategy.min_train_replies must be >= 1, got {min_train_replies}")
        if on_too_few_replies not in TOO_FEW_ACTIONS:
            raise ConfigError(
                f"strategy.on_too_few_replies must be one of {TOO_FEW_ACTIONS}, "
                f"got {on_too_few_replies!r}"
            )
        self.assets = assets
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_replies = min_train_replies
        self.on_too_few_replies = on_too_few_replies
        self.proxy_round_size = proxy_round_size
        self.distill_epochs = distill_epochs
        self.distill_batch_size = distill_batch_size
        self.distill_lr = distill_lr
        self.distill_optimizer = distill_optimizer
        self.distill_validation_fraction = distill_validation_fraction
        self.distill_patience = distill_patience
        #: The teacher-target rule: ``name`` and options (the ``aggregation`` group).
        self.target_rule: dict[str, Any] = dict(assets.aggregation)
        self.round_targets: ArrayRecord | None = None  # what clients digest next round
        self.targets_round = 0  # the round whose proxy subset round_targets refer to
        #: This round's proxy subset (indices into the proxy), set by configure_train.
        self.proxy_indices = np.arange(len(assets.data.proxy_x))
        self.architecture_of: dict[int, int] = {}
        self._architecture_models: dict[int, FedKDModel] = {}
        self.node_of_partition: dict[int, int] = {}
        self.label_histograms: dict[int, list[int]] = {}
        self.round_metrics: dict[int, dict[str, Any]] = {}
        self._sent_to: dict[int, int] = {}  # node id -> partition id, current round
        self._setup_json = assets.setup.to_json()
        #: How clients encode the proxy predictions they upload (``encoding`` block).
        self.encoding = EncodingSpec.from_config(assets.setup.encoding)
        #: Accounting, budget and server-side release of the ``privacy`` mechanism.
        self.privacy = (
            PrivacyController(assets.privacy, seed=assets.setup.seed)
            if assets.privacy.enabled
            else None
        )
        #: The last weights each client returned (kept for the membership audit only).
        self.last_client_weights: dict[int, ArrayRecord] = {}
        #: Partitions that poison what they share (``attack``), fixed for the run.
        self.malicious = assets.attack.malicious(assets.setup.num_clients, assets.setup.seed)
        self._round = 0  # the round whose replies are being collected

    # ------------------------------------------------------------------ the round loop
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Any = None,
        *,
        first_round: int = 1,
        on_round_end: Any = None,
    ) -> Result:
        """Run rounds ``first_round..num_rounds`` (Flower's loop, plus resume and a hook).

        ``evaluate_fn(round, arrays)`` runs before the first round (only when starting at
        round 1) and after each round; ``on_round_end(round, arrays)`` runs after it (the
        ServerApp writes checkpoints there). Train and evaluate replies that miss
        ``timeout`` are left behind; they are never read in a later round.
        """
        logger.info("%s: rounds %s..%s", type(self).__name__, first_round, num_rounds)
        self.summary()
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result()
        arrays = initial_arrays
        if evaluate_fn is not None and first_round == 1:
            metrics = evaluate_fn(0, arrays)
            if metrics is not None:
                result.evaluate_metrics_serverapp[0] = metrics
        for server_round in range(first_round, num_rounds + 1):
            check_stop(f"before round {server_round}")
            replies = self.send_and_receive(
                grid,
                self.configure_train(server_round, arrays, train_config, grid),
                timeout=timeout,
                server_round=server_round,
            )
            new_arrays, train_metrics = self.aggregate_train(server_round, replies)
            if new_arrays is not None:
                result.arrays = arrays = new_arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[server_round] = train_metrics
            evaluate_replies = self.send_and_receive(
                grid,
                self.configure_evaluate(server_round, arrays, evaluate_config, grid),
                timeout=timeout,
                server_round=server_round,
            )
            evaluate_metrics = self.aggregate_evaluate(server_round, evaluate_replies)
            if evaluate_metrics is not None:
                result.evaluate_metrics_clientapp[server_round] = evaluate_metrics
            if evaluate_fn is not None:
                metrics = evaluate_fn(server_round, arrays)
                if metrics is not None:
                    result.evaluate_metrics_serverapp[server_round] = metrics
            if on_round_end is not None:
                on_round_end(server_round, arrays)
        return result

    def send_and_receive(
        self,
        grid: Grid,
        messages: Iterable[Message],
        *,
        timeout: float,
        server_round: int,
    ) -> list[Message]:
        """``grid.send_and_receive``, resending once, within the same deadline, the messages
        that failed for a transient runtime reason (:data:`TRANSIENT_ERRORS`: a Ray actor
        restarting after its process died). The ClientApp's context is only updated on
        success, so running the message again is safe. Messages told to fail (``fault``)
        are never resent."""
        messages = list(messages)
        deadline = time.monotonic() + timeout
        replies = exchange(grid, messages, timeout=timeout, server_round=server_round)
        sent = {m.metadata.dst_node_id: m for m in messages}
        retry = [
            sent[r.metadata.src_node_id]
            for r in replies
            if r.has_error()
            and _first_line(r).split(":", 1)[0] in TRANSIENT_ERRORS
            and r.metadata.src_node_id in sent
            and keys.FAULT
            not in sent[r.metadata.src_node_id].content.config_records.get(keys.CONFIG, {})
        ]
        remaining = deadline - time.monotonic()
        if not retry or remaining <= 0:
            return replies
        again = {m.metadata.dst_node_id for m in retry}
        logger.info(
            "round %s: resending %s message(s) after a transient failure", server_round, len(retry)
        )
        self.round_metrics.setdefault(server_round, {}).setdefault("messages_resent", 0)
        self.round_metrics[server_round]["messages_resent"] += len(retry)
        kept = [r for r in replies if r.metadata.src_node_id not in again]
        fresh = [
            Message(
                content=m.content,
                message_type=m.metadata.message_type,
                dst_node_id=m.metadata.dst_node_id,
            )
            for m in retry
        ]
        return kept + exchange(grid, fresh, timeout=remaining, server_round=server_round)

    # ------------------------------------------------------------------ checkpoints
    #: Attributes that carry the method's state from one round to the next (saved in
    #: checkpoints); subclasses with more state extend the tuple.
    checkpoint_attributes: ClassVar[tuple[str, ...]] = (
        "round_targets",
        "targets_round",
        "last_client_weights",
        "privacy",
    )

    def checkpoint_state(self) -> dict[str, Any]:
        """The method's state between rounds (picklable), for :meth:`load_checkpoint_state`."""
        return {name: copy.deepcopy(getattr(self, name)) for name in self.checkpoint_attributes}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` saved."""
        missing = sorted(set(self.checkpoint_attributes) - set(state))
        if missing:
            raise ConfigError(
                f"checkpoint lacks strategy state {missing} for {type(self).__name__}"
            )
        for name in self.checkpoint_attributes:
            setattr(self, name, state[name])

    # ------------------------------------------------------------------ discovery
    def discover(self, grid: Grid, timeout: float | None = None) -> None:
        """Ask every node for its partition id (once); map partition ids to node ids."""
        if self.node_of_partition:
            return
        node_ids = self.wait_for_nodes(grid, timeout=timeout)
        content = RecordDict({keys.CONFIG: ConfigRecord({keys.SETUP: self._setup_json})})
        messages = [
            Message(content=content, message_type=MessageType.QUERY, dst_node_id=node_id)
            for node_id in node_ids
        ]
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                logger.warning("node %s failed discovery: %s", node_id, _first_line(reply))
                continue
            metrics = reply.content.metric_records[keys.METRICS]
            partition_id = int(metrics[keys.PARTITION_ID])  # type: ignore[arg-type]
            if partition_id in self.node_of_partition:
                logger.warning(
                    "partition %s claimed by nodes %s and %s; keeping the first",
                    partition_id,
                    self.node_of_partition[partition_id],
                    node_id,
                )
                continue
            self.node_of_partition[partition_id] = node_id
            self.label_histograms[partition_id] = [
                int(c)
                for c in metrics[keys.LABEL_HISTOGRAM]  # type: ignore[union-attr]
            ]
            self.architecture_of[partition_id] = int(metrics.get(keys.ARCHITECTURE, 0))  # type: ignore[arg-type]
        if not self.node_of_partition:
            raise RuntimeError("no node answered the discovery query; nothing to train on")
        logger.info("discovered %s of %s nodes", len(self.node_of_partition), len(node_ids))

    def wait_for_nodes(self, grid: Grid, *, timeout: float | None = None) -> list[int]:
        """Node ids once all ``num_clients`` nodes are connected (or ``timeout`` passes).

        Simulated and real SuperNodes register asynchronously; asking too early would
        silently run with whoever happened to be connected.
        """
        expected = self.assets.setup.num_clients
        deadline = time.monotonic() + (DISCOVERY_TIMEOUT_SECONDS if timeout is None else timeout)
        while len(node_ids := sorted(grid.get_node_ids())) < expected:
            check_stop("while waiting for nodes")
            if time.monotonic() > deadline:
                logger.warning(
                    "only %s of %s nodes connected after waiting; continuing with them",
                    len(node_ids),
                    expected,
                )
                break
            time.sleep(0.1)
        return node_ids

    def sample_partitions(self, server_round: int, fraction: float, *, stream: int) -> list[int]:
        """Sorted partition ids sampled reproducibly from ``(seed, round, stream)``."""
        available = sorted(self.node_of_partition)
        count = max(1, round(fraction * len(available)))
        if count >= len(available):
            return available
        rng = np.random.default_rng([self.assets.setup.seed, server_round, stream])
        return sorted(int(p) for p in rng.choice(available, size=count, replace=False))

    def keeps_client_state(self) -> bool:
        """Whether clients hold state between rounds that a checkpoint must save: their own
        model (``keep-model``) or their DP-SGD accountant history (``privacy=dpsgd``)."""
        return self.keeps_client_models or (
            self.privacy is not None and self.privacy.spec.name == "dpsgd"
        )

    def export_client_states(
        self, grid: Grid, *, timeout: float | None = None
    ) -> dict[int, dict[str, Any]]:
        """Every discovered client's ``context.state`` records, by partition id (checkpoints).

        Raises
        ------
        RuntimeError
            A client did not answer or failed: the states would be incomplete.
        """
        partitions = {node: p for p, node in self.node_of_partition.items()}
        config = ConfigRecord({keys.SETUP: self._setup_json, keys.STATE_EXPORT: True})
        messages = [
            Message(
                content=RecordDict({keys.CONFIG: config}),
                message_type=MessageType.QUERY,
                dst_node_id=node_id,
            )
            for node_id in sorted(partitions)
        ]
        states: dict[int, dict[str, Any]] = {}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node_id = reply.metadata.src_node_id
            if reply.has_error() or node_id not in partitions:
                raise RuntimeError(f"node {node_id} could not export its state")
            states[partitions[node_id]] = {
                name[len(keys.STATE_PREFIX) :]: record
                for name, record in reply.content.items()
                if name.startswith(keys.STATE_PREFIX)
            }
        missing = sorted(set(partitions.values()) - set(states))
        if missing:
            raise RuntimeError(f"partitions {missing} did not export their state in time")
        return states

    def import_client_states(
        self, grid: Grid, states: dict[int, dict[str, Any]], *, timeout: float | None = None
    ) -> None:
        """Give each client back the ``context.state`` records a checkpoint saved for its
        partition (a resumed run's nodes are new: their node ids differ)."""
        messages = []
        for partition_id, records in sorted(states.items()):
            if not records:
                continue
            if partition_id not in self.node_of_partition:
                raise RuntimeError(f"partition {partition_id} has no node to restore its state")
            content = RecordDict(
                {keys.CONFIG: ConfigRecord({keys.SETUP: self._setup_json, keys.STATE_IMPORT: True})}
            )
            for name, record in records.items():
                content[keys.STATE_PREFIX + name] = record
            messages.append(
                Message(
                    content=content,
                    message_type=MessageType.QUERY,
                    dst_node_id=self.node_of_partition[partition_id],
                )
            )
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        failed = [r.metadata.src_node_id for r in replies if r.has_error()]
        if failed or len(replies) < len(messages):
            raise RuntimeError(
                f"restoring client states failed ({len(messages) - len(replies)} no reply, "
                f"errors from nodes {failed})"
            )

    # ------------------------------------------------------------------ training
    def train_config(self, server_round: int) -> dict[str, Any]:
        """Round settings sent to clients; subclasses add method-specific keys."""
        return {
            keys.SERVER_ROUND: server_round,
            keys.SETUP: self._setup_json,
            keys.SHARE_WEIGHTS: self.shares_weights,
            keys.SHARE_PROXY_PROBS: self.shares_proxy_predictions,
            keys.SHARE_LABEL_LOGITS: self.shares_label_logits,
            # evaluation only (never counted as uplink): per-client and ensemble diagnostics
            keys.SHARE_TEST_PROBS: True,
            keys.KEEP_MODEL: self.keeps_client_models,
            keys.PROXY_ROUND_SIZE: self.proxy_round_size,
            keys.TARGETS_ROUND: self.targets_round,
        }

    def weights_for(self, partition_id: int, arrays: ArrayRecord) -> ArrayRecord:
        """The weights a client starts from (heterogeneous methods send per architecture)."""
        return arrays

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients and send each the round config (and weights and/or targets)."""
        self.discover(grid)
        partitions = self.sample_partitions(server_round, self.fraction_train, stream=0)
        metrics = self.round_metrics.setdefault(server_round, {})
        metrics["clients_sampled"] = len(partitions)
        self._sent_to = {}
        self._round = server_round
        harness = self.harness_config(server_round, partitions)
        self.proxy_indices = proxy_round_indices(
            len(self.assets.data.proxy_x),
            size=self.proxy_round_size or None,
            seed=self.assets.setup.seed,
            server_round=server_round,
        )
        if self.privacy is not None:
            self.privacy.charge_round(
                server_round,
                partitions,
                proxy_rows=len(self.proxy_indices),
                client_examples={p: sum(self.label_histograms.get(p, [])) for p in partitions},
                local_epochs=int(
                    self.train_config(server_round).get(
                        keys.LOCAL_EPOCHS, self.assets.setup.local.epochs
                    )
                ),
                batch_size=self.assets.setup.local.batch_size,
            )
        messages = []
        downlink_bytes = 0
        record_bytes: dict[int, int] = {}  # the same record goes to many clients
        for partition_id in partitions:
            round_config = ConfigRecord(
                {
                    **dict(config),
                    **self.train_config(server_round),
                    keys.TRAIN_SEED: round_seed(
                        self.assets.setup.seed, server_round, 0, partition_id
                    ),
                    **harness.get(partition_id, {}),
                }
            )
            content = RecordDict({keys.CONFIG: round_config})
            if self.sends_weights:
                content[keys.ARRAYS] = self.weights_for(partition_id, arrays)
            if self.round_targets is not None:
                content[keys.TARGETS] = self.round_targets
            for record in content.array_records.values():
                if id(record) not in record_bytes:
                    record_bytes[id(record)] = record.count_bytes()
                downlink_bytes += record_bytes[id(record)]
            node_id = self.node_of_partition[partition_id]
            self._sent_to[node_id] = partition_id
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_id)
            )
        metrics["downlink_bytes"] = downlink_bytes
        return messages

    def harness_config(
        self, server_round: int, partitions: Sequence[int]
    ) -> dict[int, dict[str, Any]]:
        """Extra round-config keys for clients told to fail (``faults``) or to poison what
        they share (``attack``); empty for every other client, so a run without faults or
        attack sends exactly the messages of a clean run."""
        extra: dict[int, dict[str, Any]] = {}
        faults = self.assets.faults
        plan = faults.plan(self.assets.setup.seed, server_round, partitions)
        if plan:
            self.round_metrics[server_round]["faults_injected"] = dict(
                sorted(Counter(plan.values()).items())
            )
        for partition_id, kind in plan.items():
            extra[partition_id] = {
                keys.FAULT: kind,
                keys.FAULT_DELAY: faults.delay(self.assets.round_timeout),
            }
        attack = self.assets.attack
        for partition_id in set(self.malicious) & set(partitions):
            extra.setdefault(partition_id, {}).update(
                {
                    keys.ATTACK_KIND: str(attack.kind),
                    keys.ATTACK_SCALE: float(attack.scale),
                    keys.ATTACK_TARGET: int(attack.target),
                }
            )
        return extra

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, then let the method aggregate the valid ones."""
        replies = list(replies)
        valid, failures = self.validate_replies(server_round, replies)
        metrics = self.round_metrics.setdefault(server_round, {})
        missing = metrics.get("clients_sampled", len(replies)) - len(replies)
        if missing > 0:
            failures["no reply (timeout)"] += missing
        metrics["clients_ok"] = len(valid)
        metrics["clients_failed"] = sum(failures.values())
        if failures:
            metrics["failure_reasons"] = dict(failures)
            logger.warning(
                "round %s: %s client failures: %s",
                server_round,
                sum(failures.values()),
                dict(failures),
            )
        metrics["uplink_bytes"] = sum(_uplink_bytes(reply) for reply in valid)
        if valid:
            total = sum(num_examples(r) for r in valid)
            metrics["train_loss"] = (
                sum(_metric(r, keys.TRAIN_LOSS) * num_examples(r) for r in valid) / total
            )
        self.record_diagnostics(server_round, valid)
        self._record_privacy(server_round, valid)
        if len(valid) < self.min_train_replies:
            reason = f"{len(valid)} valid replies < min_train_replies={self.min_train_replies}"
            if self.on_too_few_replies == "abort":
                raise RoundAborted(
                    f"round {server_round} aborted: {reason} (failures: {dict(failures) or 'none'})"
                )
            metrics["skipped"] = reason
            logger.warning("round %s skipped: %s", server_round, reason)
            return None, MetricRecord({"clients-ok": len(valid)})
        new_arrays = self.aggregate(server_round, valid)
        if self.privacy is not None:
            metrics.update(self.privacy.round_metrics(server_round))
        return new_arrays, MetricRecord(
            {
                "clients-ok": len(valid),
                "clients-failed": metrics["clients_failed"],
                "uplink-bytes": metrics["uplink_bytes"],
            }
        )

    @abstractmethod
    def aggregate(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        """Turn one round's valid replies into the next global ArrayRecord."""

    # ------------------------------------------------------------------ privacy
    def check_privacy(self) -> None:
        """Fail before Ray when the ``privacy`` mechanism cannot protect what this method
        shares, or its delta is not meaningful for the privacy unit."""
        spec = self.assets.privacy
        method = type(self).__name__
        if not spec.enabled:
            return
        if not self.has_clients:
            raise ConfigError(
                f"privacy={spec.name} protects what clients share; strategy {method} trains "
                "centrally on pooled data and shares nothing (use privacy=none)"
            )
        if spec.name in ("logit_dp", "pate"):
            if not self.shares_proxy_predictions or self.shares_weights:
                shared = "weights" if self.shares_weights else "no proxy predictions"
                raise ConfigError(
                    f"privacy={spec.name} protects shared proxy predictions, but strategy "
                    f"{method} shares {shared}; use strategy=fedmd, dsfl or fedet, or "
                    "privacy=dpsgd (which covers everything a DP-SGD model releases)"
                )
            rule = self.assets.aggregation.get("name", "mean")
            if rule != "mean":
                raise ConfigError(
                    f"privacy={spec.name} releases a noisy "
                    f"{'mean' if spec.name == 'logit_dp' else 'vote count'} of the clients' "
                    f"predictions, which replaces the teacher rule; aggregation={rule} "
                    "cannot apply (use aggregation=mean)"
                )
            if self.target_rule.get("name", "mean") != "mean":
                logger.warning(
                    "privacy=%s replaces %s's weighting %r with the mechanism's release",
                    spec.name,
                    method,
                    self.target_rule.get("name"),
                )
            population = self.assets.setup.num_clients
            unit = f"1/num_clients = 1/{population}"
        else:  # dpsgd
            if self.shares_label_logits or self.regularizes_local_training:
                raise ConfigError(
                    f"privacy=dpsgd cannot cover strategy {method}: it shares statistics "
                    "computed directly on private data (per-label logits or class "
                    "prototypes), not only outputs of the DP-SGD model"
                )
            local = self.assets.setup.local
            if local.self_distill is not None or local.born_again is not None:
                raise ConfigError(
                    "privacy=dpsgd trains clients with DP-SGD; client.self_distill and "
                    "client.born_again would train on private data without it (set them null)"
                )
            data = self.assets.data
            population = min(len(data.client_data(p).train_y) for p in range(data.num_clients))
            unit = f"1/n = 1/{population} (n: the smallest client's training set)"
        if not spec.delta < 1.0 / population:
            raise ConfigError(
                f"privacy.delta={spec.delta:g} must be < {unit}: a larger delta allows "
                "releasing a whole unit's data"
            )

    def shares_noisy_predictions(self) -> bool:
        """Replies carry mechanism outputs instead of probability rows (logit_dp)."""
        return self.privacy is not None and self.privacy.spec.name == "logit_dp"

    def _record_privacy(self, server_round: int, valid: list[Message]) -> None:
        if self.assets.privacy.audit and self.shares_weights:
            for reply in valid:
                self.last_client_weights[self.partition_of(reply)] = reply.content.array_records[
                    keys.ARRAYS
                ]
        if self.privacy is None:
            return
        metrics = self.round_metrics.setdefault(server_round, {})
        metrics.update(self.privacy.round_metrics(server_round))
        reported = [
            _metric(r, keys.DP_EPSILON)
            for r in valid
            if keys.DP_EPSILON in r.content.metric_records[keys.METRICS]
        ]
        if reported:  # the clients' own Opacus accountants, for cross-checking
            metrics["client_epsilon_max"] = max(reported)

    # ------------------------------------------------------------------ checks
    def validate_replies(
        self, server_round: int, replies: list[Message]
    ) -> tuple[list[Message], Counter[str]]:
        """Split replies into valid ones and counted failure reasons."""
        valid: list[Message] = []
        failures: Counter[str] = Counter()
        for reply in replies:
            reason = self.check_reply(reply)
            if reason is None:
                valid.append(reply)
            else:
                failures[reason] += 1
                logger.debug(
                    "round %s: rejected reply from node %s: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    reason,
                )
        # Replies arrive in completion order; aggregate in partition order so that float
        # sums (and so every metric) do not depend on which actor finished first.
        valid.sort(key=lambda reply: self._sent_to[reply.metadata.src_node_id])
        return valid, failures

    def check_reply(self, reply: Message) -> str | None:
        """Return why a training reply is unusable, or None when it is fine.

        Client errors are reduced to their first line: full tracebacks stay on the client.
        """
        if reply.has_error():
            return f"client error: {_first_line(reply)}"
        if reply.metadata.src_node_id not in self._sent_to:
            return "reply from a node that was not sampled this round"
        content = reply.content
        if keys.METRICS not in content.metric_records:
            return "missing metrics"
        reply_metrics = content.metric_records[keys.METRICS]
        echoed = reply_metrics.get(keys.SERVER_ROUND)
        if not isinstance(echoed, int):
            return "missing server-round"
        if echoed != self._round:
            return "reply for another round"
        num_examples = reply_metrics.get(keys.NUM_EXAMPLES)
        if not isinstance(num_examples, int) or num_examples < 1:
            return "implausible num-examples"
        known = sum(self.label_histograms.get(self.partition_of(reply), []))
        if known and num_examples > known:
            # the client told discovery how many records it holds; more is a lie that
            # would buy it weight in every example-weighted average
            return "implausible num-examples"
        if self.shares_weights:
            if keys.ARRAYS not in content.array_records:
                return "missing weights"
            reference = self.architecture_model(self.architecture_of_reply(reply))
            reason = _check_weights(content.array_records[keys.ARRAYS], reference)
            if reason:
                return reason
        num_classes = self.assets.data.num_classes
        if self.shares_proxy_predictions:
            try:
                values = self.shared_proxy_values(reply)
            except MalformedEncoding as exc:
                return str(exc)
            # an encoding that rounds gets its own rounding on top of the usual tolerance
            slack = None if self.encoding.lossless else self.encoding.rounding_error(values)
            if self.shares_noisy_predictions():
                assert self.privacy is not None
                reason = _check_noisy(
                    values,
                    keys.PROXY_PROBS,
                    clip=self.privacy.spec.clip if self.privacy.spec.mode == "central" else None,
                    slack=slack,
                )
            else:
                reason = _check_probability_rows(
                    values,
                    keys.PROXY_PROBS,
                    slack=slack,
                    min_mass=self.encoding.min_row_mass(num_classes),
                )
            if reason:
                return reason
        if self.shares_label_logits:
            shared = content.array_records.get(keys.PREDICTIONS)
            if shared is None or keys.LABEL_LOGITS not in shared or keys.LABEL_COUNTS not in shared:
                return "missing label logits"
            logits, counts = shared[keys.LABEL_LOGITS].numpy(), shared[keys.LABEL_COUNTS].numpy()
            if logits.shape != (num_classes, num_classes) or counts.shape != (num_classes,):
                return "label logits: wrong shape"
            if logits.dtype.kind != "f" or counts.dtype.kind != "f":
                return "label logits: wrong dtype"
            if not (np.isfinite(logits).all() and np.isfinite(counts).all()) or (counts < 0).any():
                return "label logits: not finite or negative counts"
            if np.abs(logits).max(initial=0.0) > MAX_ABS_VALUE:
                return "label logits: absurd magnitude"
        return None

    # ------------------------------------------------------------------ helpers for methods
    def partition_of(self, reply: Message) -> int:
        """The partition id a (validated) reply answers for."""
        return self._sent_to[reply.metadata.src_node_id]

    def architecture_of_reply(self, reply: Message) -> int:
        return self.architecture_of.get(self.partition_of(reply), 0)

    def architecture_model(self, index: int) -> FedKDModel:
        """A server-side model object of client architecture ``index`` (built once)."""
        model = self._architecture_models.get(index)
        if model is None:
            model = model_from_config(
                self.assets.setup.architectures[index],
                input_shape=self.assets.data.input_shape,
                num_classes=self.assets.data.num_classes,
                seed=self.assets.setup.seed,
            ).to(self.assets.device)
            self._architecture_models[index] = model
        return model

    def shared_proxy_values(self, reply: Message) -> np.ndarray:
        """The proxy predictions a reply uploaded, decoded from the run's ``encoding``: the
        ``(proxy subset, classes)`` rows (for ``float32``, the uploaded array itself).

        The one place where replies are decoded; validation and aggregation both read it.

        Raises
        ------
        MalformedEncoding
            The predictions are missing or do not decode; the message is the reason.
        """
        record = reply.content.array_records.get(keys.PREDICTIONS)
        if record is None:
            raise MalformedEncoding("missing proxy predictions")
        expected = (len(self.proxy_indices), self.assets.data.num_classes)
        return self.encoding.decode(
            {name: array.numpy() for name, array in record.items()}, shape=expected
        )

    def proxy_probs(self, replies: list[Message]) -> np.ndarray:
        """Stack the clients' shared proxy predictions: (clients, proxy subset, classes).

        Rows of a rounding or truncating encoding (``float16``, ``int8``, ``topk``) are
        renormalized to sum to 1, unless they are ``logit_dp``'s noisy values."""
        client_probs = np.stack([self.shared_proxy_values(r) for r in replies])
        if self.encoding.lossless or self.shares_noisy_predictions():
            return client_probs
        return client_probs / client_probs.sum(axis=2, keepdims=True)

    def teacher_targets(self, client_probs: np.ndarray, replies: list[Message]) -> np.ndarray:
        """Combine per-client probabilities with :attr:`target_rule` (``aggregation``)."""
        rule = self.target_rule
        partitions = [self.partition_of(r) for r in replies]
        histograms = np.array([self.label_histograms.get(p, []) for p in partitions])
        return teacher_targets(
            client_probs,
            rule=rule.get("name", "mean"),
            num_examples=np.array([num_examples(r) for r in replies], dtype=np.float64),
            label_histograms=histograms if histograms.ndim == 2 and histograms.size else None,
            **_options(rule),
        )

    def record_diagnostics(self, server_round: int, replies: list[Message]) -> None:
        """Per-client accuracy on the server test set (mean/min/max, and each client's by
        partition id), the clients' accuracy on their own local test splits, and the teacher
        ensemble's test accuracy."""
        metrics = self.round_metrics.setdefault(server_round, {})
        local = [
            _metric(r, keys.LOCAL_ACCURACY)
            for r in replies
            if keys.LOCAL_ACCURACY in r.content.metric_records[keys.METRICS]
        ]
        if local:
            metrics["personalized_accuracy_mean"] = float(np.mean(local))
        test_probs = self.client_test_probs(replies)
        if test_probs is None:
            return
        labels = self.assets.data.test_y
        per_client = (test_probs.argmax(axis=2) == labels[None, :]).mean(axis=1)
        metrics["client_accuracy_mean"] = float(per_client.mean())
        metrics["client_accuracy_min"] = float(per_client.min())
        metrics["client_accuracy_max"] = float(per_client.max())
        # Sorted by partition id, so the row does not depend on the order replies arrived in.
        metrics["client_accuracies"] = dict(
            sorted(
                (self.partition_of(r), float(a)) for r, a in zip(replies, per_client, strict=True)
            )
        )
        if self.forms_ensemble:
            ensemble = self.teacher_targets(test_probs, replies)
            metrics["ensemble_accuracy"] = float((ensemble.argmax(axis=1) == labels).mean())

    def client_test_probs(self, replies: list[Message]) -> np.ndarray | None:
        """Clients' evaluation-only test predictions, when every valid reply has them."""
        expected = (len(self.assets.data.test_y), self.assets.data.num_classes)
        probs = []
        for reply in replies:
            if keys.EVALUATION not in reply.content.array_records:
                return None
            if _check_probs(
                reply.content.array_records[keys.EVALUATION], keys.TEST_PROBS, expected
            ):
                return None
            probs.append(reply.content.array_records[keys.EVALUATION][keys.TEST_PROBS].numpy())
        return np.stack(probs) if probs else None

    def predict_with_weights(self, replies: list[Message], inputs: np.ndarray) -> np.ndarray:
        """Run every client's returned weights on ``inputs`` on the server: (clients, N, C)."""
        outputs = []
        for reply in replies:
            model = self.architecture_model(self.architecture_of_reply(reply))
            state = reply.content.array_records[keys.ARRAYS].to_torch_state_dict()
            model.load_state_dict(state, strict=True)
            outputs.append(predict_probs(model, inputs, device=self.assets.device))
        return np.stack(outputs)

    def teacher_models(self, replies: list[Message]) -> list[FedKDModel]:
        """One server-side model per reply, holding that client's returned weights."""
        return [
            self.client_model(self.partition_of(r), r.content.array_records[keys.ARRAYS])
            for r in replies
        ]

    def client_model(self, partition_id: int, weights: ArrayRecord) -> FedKDModel:
        """A new server-side model of the client's architecture holding ``weights``."""
        model = copy.deepcopy(self.architecture_model(self.architecture_of.get(partition_id, 0)))
        model.load_state_dict(weights.to_torch_state_dict(), strict=True)
        return model

    # ------------------------------------------------------------------ distillation loss
    def distilled_architectures(self) -> list[int]:
        """Client architectures the server distills besides the student (FedDF's prototypes)."""
        return []

    def digests_on_clients(self) -> bool:
        """Whether clients run distillation steps (a digest) with the ``distill`` loss."""
        return self.keeps_client_models and int(getattr(self, "digest_epochs", 0)) > 0

    def check_distill_loss(self) -> None:
        """Fail before Ray when the ``distill`` loss cannot work with this run's models.

        Checks the layers the loss reads against the student (and every model the server
        distills) and, where the server holds client models, the teachers; a loss that
        matches teacher features where none exist (prediction-sharing methods, client
        digests) is refused. Then the loss's learned modules are created on a probe batch
        (seeded), which also catches shape problems such as attention maps on an MLP.
        """
        architectures = range(len(self.assets.setup.architectures))
        self_distill = self.assets.setup.local.self_distill
        if self_distill is not None:
            self._check_client_self_distill(self_distill, architectures)
        loss = self.assets.distill_loss
        if not isinstance(loss, DistillLoss):
            return
        teachers = (
            [self.architecture_model(i) for i in architectures]
            if self.provides_teacher_models
            else None
        )
        if self.has_student and self.distill_epochs > 0:
            students = [self.assets.student]
            students += [self.architecture_model(i) for i in self.distilled_architectures()]
            for student in students:
                loss.check_layers(
                    student.feature_names,
                    None if teachers is None else [t.feature_names for t in teachers],
                )
                self._probe_bind(loss, student, teachers or [])
        if self.digests_on_clients():
            # Clients build their own copy from the same config; never share learned parts.
            config = self.assets.distill_config
            client_loss = build_loss(config["name"], **_options(config))
            for i in architectures:
                model = self.architecture_model(i)
                try:
                    client_loss.check_layers(model.feature_names, None)
                except ConfigError as exc:
                    raise ConfigError(
                        f"{exc} (strategy {type(self).__name__} runs the distill loss in the "
                        "clients' digest steps, where only the server's consensus exists)"
                    ) from exc
                self._probe_bind(client_loss, model, [])

    def _check_client_self_distill(self, spec: Any, architectures: range) -> None:
        """``client.self_distill`` must build the ``self`` loss and fit every client model."""
        if not isinstance(spec, dict):
            raise ConfigError(
                f"client.self_distill must be a mapping of self-loss options or null, got {spec!r}"
            )
        try:
            loss = build_loss("self", **spec)
            for i in architectures:
                model = self.architecture_model(i)
                loss.check_layers(model.feature_names, None)
                self._probe_bind(loss, model, [])
        except ConfigError as exc:
            raise ConfigError(f"client.self_distill: {exc}") from exc

    def _probe_bind(
        self, loss: DistillLoss, student: FedKDModel, teachers: list[FedKDModel]
    ) -> None:
        device = self.assets.device
        x = torch.zeros((2, *self.assets.data.input_shape), device=device)
        with seeded_rng(self.assets.setup.seed, device), torch.no_grad():
            logits, features = student.to(device).forward_features(x)
            teacher_features = (
                [t.to(device).forward_features(x)[1] for t in teachers]
                if loss.needs_teacher_features
                else []
            )
            loss.bind(
                DistillInputs(
                    student_logits=logits,
                    teacher_probs=torch.softmax(logits, dim=1),
                    labels=torch.zeros(2, dtype=torch.long, device=device),
                    student_features=features,
                    teacher_features=teacher_features,
                )
            )
        loss.to(device)

    def validation_split(self, server_round: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of this round's proxy examples to distill on and to validate on.

        The held-out part (``distill_validation_fraction``) is drawn per round from
        ``(seed, round)``; it is never trained on in that round.
        """
        indices = np.arange(size)
        if self.distill_validation_fraction == 0.0 or size < 2:
            return indices, indices[:0]
        rng = np.random.default_rng([self.assets.setup.seed, server_round, 3])
        shuffled = rng.permutation(size)
        held_out = min(size - 1, max(1, round(self.distill_validation_fraction * size)))
        return np.sort(shuffled[held_out:]), np.sort(shuffled[:held_out])

    def distill_student(
        self,
        server_round: int,
        inputs: np.ndarray,
        targets: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        model: FedKDModel | None = None,
        teachers: Sequence[nn.Module] = (),
    ) -> None:
        """Distill ``model`` (default: the student) toward ``targets`` on ``inputs``, recording
        the student's test accuracy before and after, the loss and the agreement.

        ``teachers`` are the models feature-matching losses read (FedDF's client models)."""
        model = self.assets.student if model is None else model
        metrics = self.round_metrics.setdefault(server_round, {})
        data = self.assets.data
        if model is self.assets.student:
            _, metrics["student_accuracy_before_distill"] = evaluate(
                model, data.test_x, data.test_y, device=self.assets.device
            )
        if self.distill_epochs > 0:
            train, held_out = self.validation_split(server_round, len(inputs))
            report = distill(
                model,
                inputs[train],
                targets[train],
                loss=self.assets.distill_loss,
                epochs=self.distill_epochs,
                batch_size=self.distill_batch_size,
                lr=self.distill_lr,
                optimizer=self.distill_optimizer,
                proxy_y=None if labels is None else labels[train],
                seed=round_seed(self.assets.setup.seed, server_round, 1),
                device=self.assets.device,
                validation_x=inputs[held_out] if len(held_out) else None,
                validation_targets=targets[held_out] if len(held_out) else None,
                patience=self.distill_patience,
                teachers=teachers,
                augmentation=self.assets.augmentation,
            )
            if model is self.assets.student:
                metrics["distill_loss"] = report.epoch_losses[-1]
                metrics["distill_curve"] = list(report.epoch_losses)
                if report.validation_agreement:
                    metrics["distill_validation_curve"] = list(report.validation_agreement)
                    metrics["distill_best_epoch"] = report.best_epoch
                    metrics["distill_stopped_early"] = report.stopped_early
        if model is self.assets.student:
            metrics["proxy_agreement"] = agreement(model, inputs, targets)

    # ------------------------------------------------------------------ federated evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global weights to a fraction of clients for local-test evaluation."""
        if self.fraction_evaluate == 0.0:
            return []
        partitions = self.sample_partitions(server_round, self.fraction_evaluate, stream=1)
        eval_config = ConfigRecord(
            {
                **dict(config),
                keys.SERVER_ROUND: server_round,
                keys.SETUP: self._setup_json,
                keys.KEEP_MODEL: self.keeps_client_models,
            }
        )
        content = RecordDict({keys.CONFIG: eval_config})
        if self.sends_weights:
            content[keys.ARRAYS] = arrays
        # Evaluation traffic is reported apart: it measures the run, not the method.
        self.round_metrics.setdefault(server_round, {})["evaluation_downlink_bytes"] = (
            arrays.count_bytes() * len(partitions) if self.sends_weights else 0
        )
        return [
            Message(
                content=content,
                message_type=MessageType.EVALUATE,
                dst_node_id=self.node_of_partition[p],
            )
            for p in partitions
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted mean of the clients' local test accuracy."""
        ok = [r for r in replies if not r.has_error() and keys.METRICS in r.content.metric_records]
        counted = [r for r in ok if num_examples(r) > 0]
        if not counted:
            return None
        total = sum(num_examples(r) for r in counted)
        accuracy = sum(_metric(r, keys.ACCURACY) * num_examples(r) for r in counted) / total
        self.round_metrics.setdefault(server_round, {})["client_accuracy"] = accuracy
        return MetricRecord({"client-accuracy": accuracy})

    def summary(self) -> None:
        """Log the strategy settings (Flower calls this at start)."""
        logger.info(
            "%s: fraction_train=%s fraction_evaluate=%s min_train_replies=%s",
            type(self).__name__,
            self.fraction_train,
            self.fraction_evaluate,
            self.min_train_replies,
        )


PULL_INTERVAL_SECONDS = 0.1  # as Flower's grids poll


def exchange(
    grid: Grid, messages: list[Message], *, timeout: float, server_round: int
) -> list[Message]:
    """Push ``messages`` and collect their replies until all are in or ``timeout`` passes
    (Flower's ``send_and_receive``), checking between polls whether the run was asked to
    stop (:func:`fedkd.interrupt.check_stop`). A grid that runs the ClientApp while
    pushing (``synchronous``, the inline engine) is asked directly."""
    if getattr(grid, "synchronous", False):
        return list(grid.send_and_receive(messages, timeout=timeout))
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        found = list(grid.pull_messages(pending))
        replies.extend(found)
        pending.difference_update(m.metadata.reply_to_message_id for m in found)
        if not pending or time.monotonic() >= deadline:
            break
        check_stop(f"in round {server_round}")
        time.sleep(PULL_INTERVAL_SECONDS)
    return replies


def _options(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "name" and not k.startswith("_")}


def weighted_average(
    state_dicts: list[dict[str, np.ndarray]], weights: list[float]
) -> dict[str, np.ndarray]:
    """Weighted mean of state dicts with identical keys/shapes (weights need not sum to 1)."""
    if not state_dicts or len(state_dicts) != len(weights):
        raise ValueError("need one weight per state dict and at least one state dict")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    averaged: dict[str, np.ndarray] = {}
    for name, first in state_dicts[0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for state, weight in zip(state_dicts, weights, strict=True):
            acc += state[name].astype(np.float64) * (weight / total)
        averaged[name] = acc.astype(first.dtype)
    return averaged


def student_arrays(model: nn.Module) -> ArrayRecord:
    """The model's weights as an ArrayRecord (moved to CPU first)."""
    return ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})


def reply_state_dict(reply: Message) -> dict[str, np.ndarray]:
    """The weights a reply carries, as numpy arrays keyed by parameter name."""
    return {name: array.numpy() for name, array in reply.content.array_records[keys.ARRAYS].items()}


def _metric(reply: Message, key: str) -> float:
    value = reply.content.metric_records[keys.METRICS][key]
    if not isinstance(value, int | float):
        raise TypeError(f"metric {key!r} is not a number")
    return float(value)


def num_examples(reply: Message) -> int:
    """The example count a reply reports (its weight in averages)."""
    return int(_metric(reply, keys.NUM_EXAMPLES))


def _uplink_bytes(reply: Message) -> int:
    """ArrayRecord bytes a reply carries, excluding evaluation-only outputs."""
    return sum(
        record.count_bytes()
        for name, record in reply.content.array_records.items()
        if name != keys.EVALUATION
    )


def _first_line(reply: Message) -> str:
    """A client error as a short, data-free reason.

    fedkd's ClientApp already sends one generic line (see ``fedkd.apps.client.safe_reason``).
    Anything else (a runtime's reason with a traceback or an exception's text, which could
    quote private data) is cut down to the exception's type name.
    """
    reason = (reply.error.reason if reply.error else None) or ""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    if not lines:
        return f"error code {reply.error.code if reply.error else '?'}"
    match = re.match(r"<class '([\w.]+)'>", lines[0])
    if match:  # Flower's runtimes: "<class 'X'>:<'message and traceback'>"
        return match.group(1).rsplit(".", 1)[-1]
    if len(lines) > 1:  # a traceback: its last line is "Type: message"
        return lines[-1].split(":", 1)[0][:100]
    return lines[0][:300]


def round_seed(seed: int, server_round: int, *stream: int) -> int:
    """A 32-bit seed derived from ``(seed, round, *stream)``; streams keep uses independent."""
    return int(np.random.SeedSequence([seed, server_round, *stream]).generate_state(1)[0])


def _check_weights(record: ArrayRecord, reference: nn.Module) -> str | None:
    expected = reference.state_dict()
    if set(record.keys()) != set(expected.keys()):
        return "weights: unexpected parameter names"
    for name, array in record.items():
        if tuple(array.shape) != tuple(expected[name].shape):
            return f"weights: wrong shape for {name}"
        values = array.numpy()
        if values.dtype != torch.empty(0, dtype=expected[name].dtype).numpy().dtype:
            return f"weights: wrong dtype for {name}"
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return "weights: non-finite values"
        if values.dtype.kind == "f" and np.abs(values).max(initial=0.0) > MAX_ABS_VALUE:
            return "weights: absurd magnitude"
    return None


def _shared_floats(
    record: ArrayRecord, key: str, expected_shape: tuple[int, int]
) -> tuple[np.ndarray | None, str | None]:
    """The ``(rows, classes)`` float array ``key`` of a reply, or why it is unusable."""
    if key not in record:
        return None, f"{key}: missing"
    values = record[key].numpy()
    if values.shape != expected_shape:
        return None, f"{key}: shape {values.shape}, expected {expected_shape}"
    if values.dtype.kind != "f":
        return None, f"{key}: wrong dtype {values.dtype}"
    if not np.isfinite(values).all():
        return None, f"{key}: not finite floats"
    return values, None


def _check_probs(record: ArrayRecord, key: str, expected_shape: tuple[int, int]) -> str | None:
    values, reason = _shared_floats(record, key, expected_shape)
    if values is None:
        return reason
    return _check_probability_rows(values, key)


def _check_probability_rows(
    values: np.ndarray, key: str, *, slack: np.ndarray | None = None, min_mass: float = 1.0
) -> str | None:
    """Why finite ``(rows, classes)`` values are not probability rows, or None.

    Parameters
    ----------
    values : np.ndarray
        The (decoded) rows.
    key : str
        The name used in the reason.
    slack : np.ndarray, optional
        Per-row bound on the encoding's rounding error (L1), added to the tolerance of
        :data:`PROBABILITY_SUM_TOLERANCE`; ``None``: rows as computed (float32).
    min_mass : float
        The least row sum the encoding can leave (``k / C`` for ``topk``, else 1).
    """
    if slack is None:
        if (values < -1e-6).any() or not np.allclose(
            values.sum(axis=1), 1.0, atol=PROBABILITY_SUM_TOLERANCE
        ):
            return f"{key}: rows are not probability vectors"
        return None
    sums = values.sum(axis=1, dtype=np.float64)
    tolerance = PROBABILITY_SUM_TOLERANCE + slack
    if (
        (values < -1e-6 - slack[:, None]).any()
        or (sums > 1.0 + tolerance).any()
        or (sums < min_mass - tolerance).any()
    ):
        return f"{key}: rows are not probability vectors"
    return None


def _check_noisy(
    values: np.ndarray, key: str, *, clip: float | None, slack: np.ndarray | None = None
) -> str | None:
    """Shared outputs of ``logit_dp`` (decoded, finite): rows within ``clip`` when clients
    only clip (central mode; the server clips again anyway), plus the encoding's rounding
    ``slack`` per row (``None``: float32)."""
    if clip is None:
        return None
    bound = clip * (1 + 1e-4) + 1e-6
    norms = np.linalg.norm(values, axis=1)
    if (norms > (bound if slack is None else bound + slack)).any():
        return f"{key}: rows exceed the clipping bound privacy.clip={clip:g}"
    return None
