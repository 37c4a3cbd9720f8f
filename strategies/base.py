"""The fedkd strategy: Flower's ``Strategy`` contract on top of a small core.

A method subclasses :class:`FedKDStrategy`, names the payloads its clients send
(:attr:`FedKDStrategy.payloads`, see :mod:`fedkd.wire.payloads`) and implements
:meth:`FedKDStrategy.aggregate`, which receives one round's validated, decoded replies
(:class:`~strategies.core.validation.ClientReply`) and the round's state as values, and
returns the next global ``ArrayRecord`` (usually the distilled student's weights).

The parts it is built from never call back into it: :mod:`strategies.core.transport`
(discovery, sampling, send/receive with one resend, client states),
:mod:`strategies.core.validation` (payload-driven checks and decoding),
:mod:`strategies.core.bookkeeping` (failures, bytes, losses, diagnostics),
:mod:`strategies.core.distillation` (the server's distillation) and
:mod:`strategies.core.checks` (settings refused before Ray starts).
"""

from __future__ import annotations

import copy
import logging
from abc import abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from torch import nn

from fedkd.distill import teacher_targets, validate_target_rule
from fedkd.distill.losses import DistillLoss
from fedkd.errors import ConfigError, FedKDError
from fedkd.models import FedKDModel, model_from_config
from fedkd.privacy import PrivacyController
from fedkd.run.interrupt import check_stop
from fedkd.train import predict_probs
from fedkd.wire import keys
from fedkd.wire.encoding import EncodingSpec
from fedkd.wire.payloads import (
    MAX_ABS_VALUE,
    ClientMetrics,
    Expectation,
    ModelWeights,
    Payload,
    ProxyPredictions,
    TestPredictions,
    resolve,
)
from fedkd.wire.payloads.proxy import round_rows
from strategies.core import bookkeeping, checks, transport
from strategies.core.assets import RunAssets, rule_options
from strategies.core.distillation import (
    DistillOptions,
    ServerDistillation,
    round_seed,
    validation_split,
)
from strategies.core.validation import ClientReply, RoundState, check_reply, validate_replies

logger = logging.getLogger(__name__)

TOO_FEW_ACTIONS = ("skip", "abort")

__all__ = [
    "MAX_ABS_VALUE",
    "ClientReply",
    "FedKDStrategy",
    "RoundAborted",
    "RoundState",
    "RunAssets",
    "round_seed",
    "student_arrays",
    "weighted_average",
]


class RoundAborted(FedKDError):
    """A round got fewer valid replies than ``min_train_replies`` and the run is set to abort
    (``strategy.on_too_few_replies=abort``); every finished round is kept."""


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
    proxy_round_size : int
        Proxy rows used per round (0: the whole proxy).
    distill_epochs, distill_batch_size, distill_lr, distill_optimizer,
    distill_validation_fraction, distill_patience
        The server's distillation (:class:`~strategies.core.distillation.DistillOptions`).

    Notes
    -----
    Before the first round every node receives a ``query`` message and answers with its
    :class:`~fedkd.wire.payloads.Discovery`. Train messages carry ``config`` (keys
    ``server-round``, ``fedkd-setup``, ``payloads``, ``train-seed``, ...) and, when
    :attr:`sends_weights`, ``arrays`` with the global weights. Clients answer with every
    payload named in ``payloads``: :attr:`payloads` plus client metrics and the
    evaluation-only test predictions.
    """

    #: What clients send besides their metrics and test predictions (payload names).
    payloads: ClassVar[tuple[str, ...]] = ()
    #: Clients receive the global weights and start local training from them.
    sends_weights: ClassVar[bool] = True
    #: Clients keep their own model across rounds (``context.state``).
    keeps_client_models: ClassVar[bool] = False
    #: The method forms a teacher ensemble (its accuracy is reported each round).
    forms_ensemble: ClassVar[bool] = False
    #: Every client must train the student's architecture (weights go into the student).
    requires_student_architecture: ClassVar[bool] = False
    #: The server keeps a student (``student_accuracy`` is reported); False for local-only.
    has_student: ClassVar[bool] = True
    #: The server holds the client models while distilling (FedDF with teacher weights), so
    #: losses that match the teacher's intermediate features can be used.
    provides_teacher_models: bool = False
    #: Clients take part (False for centralized training, which sends no message).
    has_clients: ClassVar[bool] = True
    #: Attributes that carry the method's state from one round to the next (saved in
    #: checkpoints); subclasses with more state extend the tuple.
    checkpoint_attributes: ClassVar[tuple[str, ...]] = (
        "round_targets",
        "targets_round",
        "last_client_weights",
        "privacy",
    )

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
        options = DistillOptions(
            epochs=distill_epochs,
            batch_size=distill_batch_size,
            lr=distill_lr,
            optimizer=distill_optimizer,
            validation_fraction=distill_validation_fraction,
            patience=distill_patience,
        )
        if proxy_round_size < 0:
            raise ConfigError(
                f"strategy.proxy_round_size must be >= 0 (0: whole proxy), got {proxy_round_size}"
            )
        validate_target_rule(
            assets.aggregation.get("name", "mean"), **rule_options(assets.aggregation)
        )
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
        self.distillation = ServerDistillation(
            options,
            loss=assets.distill_loss,
            device=assets.device,
            seed=assets.setup.seed,
            augmentation=assets.augmentation,
        )
        #: The teacher-target rule: ``name`` and options (the ``aggregation`` group).
        self.target_rule: dict[str, Any] = dict(assets.aggregation)
        self.round_targets: ArrayRecord | None = None  # what clients digest next round
        self.targets_round = 0  # the round whose proxy subset round_targets refer to
        self.federation = transport.Federation()
        #: Each round's row of ``metrics.jsonl`` as the round builds it.
        self.round_metrics: dict[int, dict[str, Any]] = {}
        #: The round being run (set by :meth:`configure_train`).
        self.current = RoundState(0, proxy_indices=np.arange(len(assets.data.proxy_x)))
        self._architecture_models: dict[int, FedKDModel] = {}
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

    # ------------------------------------------------------------------ declared behaviour
    def requested_payloads(self) -> tuple[str, ...]:
        """The payload names clients send (an instance may ask more, as FedDF does)."""
        return self.payloads

    def wire_payloads(self) -> list[Payload]:
        """Every payload a train reply carries: client metrics, the requested payloads and
        the evaluation-only test predictions, in compute order."""
        return resolve([ClientMetrics.name, *self.requested_payloads(), TestPredictions.name])

    @property
    def shares_weights(self) -> bool:
        """Clients send their trained weights back."""
        return ModelWeights.name in self.requested_payloads()

    @property
    def shares_proxy_predictions(self) -> bool:
        """Clients send soft predictions on the proxy set."""
        return ProxyPredictions.name in self.requested_payloads()

    @property
    def regularizes_local_training(self) -> bool:
        """Clients train with a payload's own loss (FD, FedProto), which replaces
        ``client.self_distill`` and ``client.born_again``."""
        return any(p.trains_locally for p in resolve(self.requested_payloads()))

    # the discovery results and the current round, under their historical names
    @property
    def node_of_partition(self) -> dict[int, int]:
        return self.federation.node_of_partition

    @node_of_partition.setter
    def node_of_partition(self, value: dict[int, int]) -> None:
        self.federation.node_of_partition = value

    @property
    def label_histograms(self) -> dict[int, list[int]]:
        return self.federation.label_histograms

    @label_histograms.setter
    def label_histograms(self, value: dict[int, list[int]]) -> None:
        self.federation.label_histograms = value

    @property
    def architecture_of(self) -> dict[int, int]:
        return self.federation.architecture_of

    @property
    def proxy_indices(self) -> np.ndarray:
        """This round's proxy rows (indices into the proxy)."""
        return self.current.proxy_indices

    @property
    def distill_epochs(self) -> int:
        return self.distillation.options.epochs

    @property
    def distill_lr(self) -> float:
        return self.distillation.options.lr

    @property
    def distill_validation_fraction(self) -> float:
        return self.distillation.options.validation_fraction

    @property
    def distill_patience(self) -> int:
        return self.distillation.options.patience

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
        self, grid: Grid, messages: Iterable[Message], *, timeout: float, server_round: int
    ) -> list[Message]:
        """Send and collect, resending once what failed transiently
        (:func:`strategies.core.transport.send_and_receive`)."""
        replies, resent = transport.send_and_receive(
            grid, messages, timeout=timeout, server_round=server_round
        )
        if resent:
            metrics = self.round_metrics.setdefault(server_round, {})
            metrics["messages_resent"] = metrics.get("messages_resent", 0) + resent
        return replies

    # ------------------------------------------------------------------ checkpoints
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

    def keeps_client_state(self) -> bool:
        """Whether clients hold state between rounds that a checkpoint must save: their own
        model (``keep-model``) or their DP-SGD accountant history (``privacy=dpsgd``)."""
        return self.keeps_client_models or (
            self.privacy is not None and self.privacy.spec.name == "dpsgd"
        )

    def export_client_states(
        self, grid: Grid, *, timeout: float | None = None
    ) -> dict[int, dict[str, Any]]:
        """Every discovered client's ``context.state`` records, by partition id."""
        return transport.export_client_states(
            grid, self.node_of_partition, setup_json=self._setup_json, timeout=timeout
        )

    def import_client_states(
        self, grid: Grid, states: dict[int, dict[str, Any]], *, timeout: float | None = None
    ) -> None:
        """Give each client back the ``context.state`` a checkpoint saved for its partition."""
        transport.import_client_states(
            grid, self.node_of_partition, states, setup_json=self._setup_json, timeout=timeout
        )

    # ------------------------------------------------------------------ discovery, sampling
    def discover(self, grid: Grid, timeout: float | None = None) -> None:
        """Ask every node for its partition id (once); map partition ids to node ids."""
        if self.node_of_partition:
            return
        transport.discover(
            grid,
            self.federation,
            setup_json=self._setup_json,
            expected=self.assets.setup.num_clients,
            timeout=timeout,
        )

    def sample_partitions(self, server_round: int, fraction: float, *, stream: int) -> list[int]:
        """Sorted partition ids sampled reproducibly from ``(seed, round, stream)``."""
        return transport.sample_partitions(
            self.node_of_partition,
            fraction,
            seed=self.assets.setup.seed,
            server_round=server_round,
            stream=stream,
        )

    # ------------------------------------------------------------------ training
    def train_config(self, server_round: int) -> dict[str, Any]:
        """Round settings sent to clients; subclasses add method-specific keys."""
        return {
            keys.SERVER_ROUND: server_round,
            keys.SETUP: self._setup_json,
            keys.PAYLOADS: ",".join(p.name for p in self.wire_payloads()),
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
        state = RoundState(
            server_round,
            partitions=partitions,
            metrics=self.round_metrics.setdefault(server_round, {}),
        )
        self.current = state
        state.metrics["clients_sampled"] = len(partitions)
        harness = self.harness_config(state)
        state.proxy_indices = round_rows(
            len(self.assets.data.proxy_x),
            size=self.proxy_round_size,
            seed=self.assets.setup.seed,
            server_round=server_round,
        )
        round_config = self.train_config(server_round)
        if self.privacy is not None:
            self.privacy.charge_round(
                server_round,
                partitions,
                proxy_rows=len(state.proxy_indices),
                client_examples={p: self.federation.declared_examples(p) for p in partitions},
                local_epochs=int(
                    round_config.get(keys.LOCAL_EPOCHS, self.assets.setup.local.epochs)
                ),
                batch_size=self.assets.setup.local.batch_size,
            )
        messages = []
        for partition_id in partitions:
            content = RecordDict(
                {
                    keys.CONFIG: ConfigRecord(
                        {
                            **dict(config),
                            **round_config,
                            keys.TRAIN_SEED: round_seed(
                                self.assets.setup.seed, server_round, 0, partition_id
                            ),
                            **harness.get(partition_id, {}),
                        }
                    )
                }
            )
            if self.sends_weights:
                content[keys.ARRAYS] = self.weights_for(partition_id, arrays)
            targets = self.targets_for(partition_id)
            if targets is not None:
                content[keys.TARGETS] = targets
            node_id = self.node_of_partition[partition_id]
            state.sent_to[node_id] = partition_id
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_id)
            )
        state.metrics["downlink_bytes"] = bookkeeping.downlink_bytes([m.content for m in messages])
        return messages

    def targets_for(self, partition_id: int) -> ArrayRecord | None:
        """What a client receives to learn from (``targets``): the same consensus for every
        client by default; a method with per-client targets (FedGKT) overrides this."""
        return self.round_targets

    def harness_config(self, state: RoundState) -> dict[int, dict[str, Any]]:
        """Extra round-config keys for clients told to fail (``faults``) or to poison what
        they share (``attack``); empty for every other client, so a run without faults or
        attack sends exactly the messages of a clean run."""
        extra: dict[int, dict[str, Any]] = {}
        faults = self.assets.faults
        plan = faults.plan(self.assets.setup.seed, state.server_round, state.partitions)
        if plan:
            state.metrics["faults_injected"] = dict(sorted(Counter(plan.values()).items()))
        for partition_id, kind in plan.items():
            extra[partition_id] = {
                keys.FAULT: kind,
                keys.FAULT_DELAY: faults.delay(self.assets.round_timeout),
            }
        attack = self.assets.attack
        for partition_id in set(self.malicious) & set(state.partitions):
            extra.setdefault(partition_id, {}).update(
                {
                    keys.ATTACK_KIND: str(attack.kind),
                    keys.ATTACK_SCALE: float(attack.scale),
                    keys.ATTACK_TARGET: int(attack.target),
                }
            )
        return extra

    def expectation(self, state: RoundState, partition_id: int, num_examples: int) -> Expectation:
        """What the payload checks compare a reply of ``partition_id`` with."""
        data = self.assets.data
        noisy = self.privacy is not None and self.privacy.spec.name == "logit_dp"
        central = noisy and self.assets.privacy.mode == "central"
        return Expectation(
            num_classes=data.num_classes,
            proxy_rows=len(state.proxy_indices),
            test_rows=len(data.test_y),
            num_examples=num_examples,
            declared_examples=self.federation.declared_examples(partition_id),
            reference=(
                self.architecture_model(self.architecture_of.get(partition_id, 0))
                if self.shares_weights and num_examples
                else None
            ),
            encoding=self.encoding,
            noisy=noisy,
            noisy_clip=self.assets.privacy.clip if central else None,
            server_round=state.server_round,
            options=self.payload_options(),
        )

    def payload_options(self) -> dict[str, Any]:
        """Method-specific references for payload checks (e.g. an embedding width)."""
        return {}

    def check_reply(self, reply: Message) -> str | None:
        """Why a training reply of the current round is unusable, or None."""
        state = self.current
        return check_reply(
            reply,
            state,
            self.wire_payloads(),
            lambda partition_id, count: self.expectation(state, partition_id, count),
        )

    def decode(self, replies: Sequence[Message]) -> list[ClientReply]:
        """The current round's valid replies, validated and decoded (in partition order)."""
        return self._validate(replies)[0]

    def _validate(self, replies: Sequence[Message]) -> tuple[list[ClientReply], Counter[str]]:
        state = self.current
        return validate_replies(
            replies,
            state,
            self.wire_payloads(),
            lambda partition_id, count: self.expectation(state, partition_id, count),
            lambda partition_id: self.architecture_of.get(partition_id, 0),
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and decode replies, record the round's numbers, then let the method
        aggregate the valid ones."""
        replies = list(replies)
        state = self.current
        valid, failures = self._validate(replies)
        bookkeeping.record_replies(state, valid, failures, received=len(replies))
        bookkeeping.record_diagnostics(
            state,
            valid,
            test_labels=self.assets.data.test_y,
            ensemble=self.teacher_targets if self.forms_ensemble else None,
        )
        self._record_privacy(state, valid)
        metrics = state.metrics
        if len(valid) < self.min_train_replies:
            reason = f"{len(valid)} valid replies < min_train_replies={self.min_train_replies}"
            if self.on_too_few_replies == "abort":
                raise RoundAborted(
                    f"round {server_round} aborted: {reason} (failures: {dict(failures) or 'none'})"
                )
            metrics["skipped"] = reason
            logger.warning("round %s skipped: %s", server_round, reason)
            return None, MetricRecord({"clients-ok": len(valid)})
        new_arrays = self.aggregate(state, valid)
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
    def aggregate(self, state: RoundState, replies: list[ClientReply]) -> ArrayRecord:
        """Turn one round's valid replies into the next global ArrayRecord."""

    # ------------------------------------------------------------------ privacy
    def check_privacy(self) -> None:
        """Fail before Ray when the ``privacy`` mechanism cannot protect what this method
        shares, or its delta is not meaningful for the privacy unit."""
        checks.check_privacy(
            self.assets,
            method=type(self).__name__,
            has_clients=self.has_clients,
            payloads=self.requested_payloads(),
            trains_locally=self.regularizes_local_training,
            target_rule=self.target_rule,
        )

    def _record_privacy(self, state: RoundState, valid: list[ClientReply]) -> None:
        if self.assets.privacy.audit and self.shares_weights:
            for reply in valid:
                self.last_client_weights[reply.partition_id] = reply.values[ModelWeights.name]
        if self.privacy is None:
            return
        state.metrics.update(self.privacy.round_metrics(state.server_round))
        reported = [r.metric(keys.DP_EPSILON) for r in valid if keys.DP_EPSILON in r.metrics]
        if reported:  # the clients' own Opacus accountants, for cross-checking
            state.metrics["client_epsilon_max"] = max(reported)

    # ------------------------------------------------------------------ helpers for methods
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

    def proxy_probs(self, replies: Sequence[ClientReply]) -> np.ndarray:
        """The clients' decoded proxy predictions: (clients, proxy rows, classes)."""
        return np.stack([r.values[ProxyPredictions.name] for r in replies])

    def teacher_targets(
        self, client_probs: np.ndarray, replies: Sequence[ClientReply]
    ) -> np.ndarray:
        """Combine per-client probabilities with :attr:`target_rule` (``aggregation``)."""
        rule = self.target_rule
        histograms = np.array([self.label_histograms.get(r.partition_id, []) for r in replies])
        return teacher_targets(
            client_probs,
            rule=rule.get("name", "mean"),
            num_examples=np.array([r.num_examples for r in replies], dtype=np.float64),
            label_histograms=histograms if histograms.ndim == 2 and histograms.size else None,
            **rule_options(rule),
        )

    def predict_with_weights(
        self, replies: Sequence[ClientReply], inputs: np.ndarray
    ) -> np.ndarray:
        """Run every client's returned weights on ``inputs`` on the server: (clients, N, C)."""
        outputs = []
        for reply in replies:
            model = self.architecture_model(reply.architecture)
            state = reply.values[ModelWeights.name].to_torch_state_dict()
            model.load_state_dict(state, strict=True)
            outputs.append(predict_probs(model, inputs, device=self.assets.device))
        return np.stack(outputs)

    def teacher_models(self, replies: Sequence[ClientReply]) -> list[FedKDModel]:
        """One server-side model per reply, holding that client's returned weights."""
        return [self.client_model(r.partition_id, r.values[ModelWeights.name]) for r in replies]

    def client_model(self, partition_id: int, weights: ArrayRecord) -> FedKDModel:
        """A new server-side model of the client's architecture holding ``weights``."""
        model = copy.deepcopy(self.architecture_model(self.architecture_of.get(partition_id, 0)))
        model.load_state_dict(weights.to_torch_state_dict(), strict=True)
        return model

    def distill_student(
        self,
        state: RoundState,
        inputs: np.ndarray,
        targets: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        model: FedKDModel | None = None,
        teachers: Sequence[nn.Module] = (),
    ) -> None:
        """Distill ``model`` (default: the student) toward ``targets`` on ``inputs``; for the
        student, the round's row records the test accuracy before and after, the loss and
        the agreement (:meth:`ServerDistillation.fit`)."""
        student = model is None or model is self.assets.student
        data = self.assets.data
        state.metrics.update(
            self.distillation.fit(
                self.assets.student if model is None else model,
                state.server_round,
                inputs,
                targets,
                labels=labels,
                teachers=teachers,
                test=(data.test_x, data.test_y) if student else None,
            )
        )

    def validation_split(self, server_round: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of this round's proxy rows to distill on and to validate on."""
        return validation_split(
            size,
            fraction=self.distill_validation_fraction,
            seed=self.assets.setup.seed,
            server_round=server_round,
        )

    # ------------------------------------------------------------------ distillation loss
    def distilled_architectures(self) -> list[int]:
        """Client architectures the server distills besides the student (FedDF's prototypes)."""
        return []

    def digests_on_clients(self) -> bool:
        """Whether clients run distillation steps (a digest) with the ``distill`` loss."""
        return self.keeps_client_models and int(getattr(self, "digest_epochs", 0)) > 0

    def check_distill_loss(self) -> None:
        """Fail before Ray when the ``distill`` loss cannot work with this run's models
        (:func:`strategies.core.checks.check_distill_loss`)."""
        checks.check_distill_loss(
            self.assets,
            method=type(self).__name__,
            architecture_model=self.architecture_model,
            probe_bind=self._probe_bind,
            provides_teacher_models=self.provides_teacher_models,
            distills_student=self.has_student and self.distill_epochs > 0,
            distilled_architectures=self.distilled_architectures(),
            digests_on_clients=self.digests_on_clients(),
        )

    def _probe_bind(
        self, loss: DistillLoss, student: FedKDModel, teachers: Sequence[FedKDModel]
    ) -> None:
        self.distillation.probe_bind(
            loss, student, teachers, input_shape=self.assets.data.input_shape
        )

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


def _metric(reply: Message, key: str) -> float:
    value = reply.content.metric_records[keys.METRICS][key]
    if not isinstance(value, int | float):
        raise TypeError(f"metric {key!r} is not a number")
    return float(value)


def num_examples(reply: Message) -> int:
    """The example count a (evaluation) reply reports."""
    return int(_metric(reply, keys.NUM_EXAMPLES))


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
