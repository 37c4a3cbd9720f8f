"""The fedkd strategy: Flower's ``Strategy`` contract on top of a small core.

A method subclasses :class:`FedKDStrategy`, names the payloads its clients send
(:attr:`FedKDStrategy.payloads`, see :mod:`fedkd.wire.payloads`) and implements
:meth:`FedKDStrategy.aggregate`, which receives one round's validated, decoded replies
(:class:`~strategies.core.validation.ClientReply`) and the round's state as values, and
returns the next global ``ArrayRecord`` (usually the distilled student's weights).

It is built from :mod:`strategies.core` (the round loop, transport, payload-driven
validation, bookkeeping, server distillation, evaluation, harness, checks: plain functions
and values that never call back into it) and :class:`strategies.toolkit.MethodToolkit`
(what a method's ``aggregate`` calls).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedkd.distill import validate_target_rule
from fedkd.errors import FedKDError
from fedkd.models import FedKDModel
from fedkd.privacy.controller import RoundPlan
from fedkd.run.names import evaluated
from fedkd.wire import keys, secagg_records
from fedkd.wire.encoding import EncodingSpec
from fedkd.wire.ledger import ReleaseLedger
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
from strategies.client_states import ClientStates
from strategies.core import bookkeeping, checks, transport
from strategies.core.arrays import student_arrays, weighted_average
from strategies.core.assets import RunAssets, rule_options
from strategies.core.distillation import DistillOptions, ServerDistillation, round_seed
from strategies.core.evaluation import evaluate_messages, mean_client_accuracy
from strategies.core.harness import harness_config
from strategies.core.loop import run_rounds
from strategies.core.options import RoundOptions, alias
from strategies.core.private_rounds import (
    canary_recorder,
    controller_for,
    evaluation_withheld,
    round_plan,
    sample_private,
)
from strategies.core.validation import ClientReply, RoundState, validate_replies
from strategies.secure import SecureAggregation
from strategies.toolkit import MethodToolkit

logger = logging.getLogger(__name__)

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


class FedKDStrategy(SecureAggregation, ClientStates, MethodToolkit, Strategy):
    """Base class of fedkd strategies (Flower Message API).

    Parameters
    ----------
    assets : RunAssets
        Server-side data, student and loss.
    fraction_train : float
        Fraction of clients sampled for training each round (default 1.0), seeded by
        ``(seed, round)`` over partition ids (not Flower's random node ids).
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
        "canaries",
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
        self.options = RoundOptions(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_replies=min_train_replies,
            on_too_few_replies=on_too_few_replies,
            proxy_round_size=proxy_round_size,
        )
        distill_options = DistillOptions(
            epochs=distill_epochs,
            batch_size=distill_batch_size,
            lr=distill_lr,
            optimizer=distill_optimizer,
            validation_fraction=distill_validation_fraction,
            patience=distill_patience,
        )
        validate_target_rule(
            assets.aggregation.get("name", "mean"), **rule_options(assets.aggregation)
        )
        self.assets = assets
        self.distillation = ServerDistillation(
            distill_options,
            loss=assets.distill_loss,
            device=assets.device,
            seed=assets.setup.seed,
            augmentation=assets.augmentation,
        )
        #: The teacher-target rule: ``name`` and options (the ``aggregation`` group).
        self.target_rule: dict[str, Any] = dict(assets.aggregation)
        self.round_targets: ArrayRecord | None = None  # what clients digest next round
        self.targets_round = 0  # the round whose proxy subset round_targets refer to
        self.federation = transport.Federation.of(assets.privacy, assets.setup.local.batch_size)
        #: Each round's row of ``metrics.jsonl`` as the round builds it.
        self.round_metrics: dict[int, dict[str, Any]] = {}
        #: The round being run (set by :meth:`configure_train`).
        self.current = RoundState(0, proxy_indices=np.arange(len(assets.data.proxy_x)))
        self._architecture_models: dict[int, FedKDModel] = {}
        self._setup_json = assets.setup.to_json()
        #: How clients encode the proxy predictions they upload (``encoding`` block).
        self.encoding = EncodingSpec.from_config(assets.setup.encoding)
        #: Accounting, budget and server-side release of the ``privacy`` mechanism.
        self.privacy = controller_for(assets, fraction_train)
        self.canaries = canary_recorder(assets)  # the one-run audit's observations
        #: The last weights each client returned (kept for the membership audit only).
        self.last_client_weights: dict[int, ArrayRecord] = {}
        #: Every key clients sent and what protected it (``privacy.releases``).
        self.ledger = ReleaseLedger(assets.privacy)
        #: Partitions that poison what they share (``attack``), fixed for the run.
        self.malicious = assets.attack.malicious(assets.setup.num_clients, assets.setup.seed)

    # ------------------------------------------------------------------ declared behaviour
    def requested_payloads(self) -> tuple[str, ...]:
        """The payload names clients send (an instance may ask more, as FedDF does)."""
        return self.payloads

    def wire_payloads(self) -> list[Payload]:
        """Every payload a train reply carries, in compute order: client metrics, the requested
        payloads and the test predictions (``diagnostics.client_test_predictions``)."""
        diagnostics = [TestPredictions.name] if self.assets.client_test_predictions else []
        return resolve([ClientMetrics.name, *self.requested_payloads(), *diagnostics])

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

    # the options, the discovery results and the current round, under their short names
    fraction_train = alias("options", "fraction_train")
    fraction_evaluate = alias("options", "fraction_evaluate")
    min_train_replies = alias("options", "min_train_replies")
    on_too_few_replies = alias("options", "on_too_few_replies")
    proxy_round_size = alias("options", "proxy_round_size")
    distill_epochs = alias("distillation.options", "epochs")
    distill_lr = alias("distillation.options", "lr")
    distill_validation_fraction = alias("distillation.options", "validation_fraction")
    distill_patience = alias("distillation.options", "patience")
    node_of_partition = alias("federation", "node_of_partition", settable=True)
    label_histograms = alias("federation", "label_histograms", settable=True)
    architecture_of = alias("federation", "architecture_of")
    proxy_indices = alias("current", "proxy_indices")

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
        """Run rounds ``first_round..num_rounds`` (:func:`strategies.core.loop.run_rounds`:
        Flower's loop, plus resume and an end-of-round hook for checkpoints)."""
        return run_rounds(
            self,
            grid,
            initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
            first_round=first_round,
            on_round_end=on_round_end,
        )

    def send_and_receive(
        self, grid: Grid, messages: Iterable[Message], *, timeout: float, server_round: int
    ) -> list[Message]:
        """Send and collect, resending once what failed transiently (``transport``)."""
        replies, resent = transport.send_and_receive(
            grid, messages, timeout=timeout, server_round=server_round
        )
        self.ledger.record_replies(replies)
        if resent:
            metrics = self.round_metrics.setdefault(server_round, {})
            metrics["messages_resent"] = metrics.get("messages_resent", 0) + resent
        return replies

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
            num_classes=self.assets.data.num_classes,
            num_architectures=len(self.assets.setup.architectures),
            timeout=timeout,
            observe=lambda r: self.ledger.record("discovery", r.content),
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
        round_config = self.train_config(server_round)
        partitions = self.sample_partitions(server_round, self.fraction_train, stream=0)
        if self.privacy is not None:
            plan = self.privacy_plan(round_config, server_round)
            partitions = sample_private(
                self.privacy, plan, partitions, list(self.node_of_partition)
            )
        state = RoundState(
            server_round,
            partitions=partitions,
            metrics=self.round_metrics.setdefault(server_round, {}),
        )
        self.current = state
        state.metrics["clients_sampled"] = len(partitions)
        state.proxy_indices = round_rows(
            len(self.assets.data.proxy_x),
            size=self.proxy_round_size,
            seed=self.assets.setup.seed,
            server_round=server_round,
        )
        if self.secagg.enabled:  # keys and shares first: only those clients train
            setup = {keys.SETUP: self._setup_json, keys.SERVER_ROUND: server_round}
            state.partitions = partitions = self.open_secure_round(grid, state, setup)
        harness = harness_config(
            self.assets.faults,
            self.assets.attack,
            malicious=self.malicious,
            partitions=partitions,
            seed=self.assets.setup.seed,
            server_round=server_round,
            round_timeout=self.assets.round_timeout,
            metrics=state.metrics,
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
            if self.secure_session is not None:  # the session key and the routed shares
                session, routed = self.secure_session.train_entries(partition_id)
                content.config_records[keys.CONFIG].update(session)
                content[secagg_records.SECAGG] = routed
            node_id = self.node_of_partition[partition_id]
            state.sent_to[node_id] = partition_id
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_id)
            )
        state.metrics["downlink_bytes"] = bookkeeping.downlink_bytes([m.content for m in messages])
        return messages

    def privacy_plan(self, round_config: dict[str, Any], server_round: int) -> RoundPlan:
        """What a round releases, for the privacy accounting (partitions filled later)."""
        examples = {p: self.federation.declared_examples(p) for p in self.node_of_partition}
        return round_plan(self.assets, self.proxy_round_size, server_round, examples, round_config)

    def targets_for(self, partition_id: int) -> ArrayRecord | None:
        """What a client receives to learn from (``targets``): the same consensus for every
        client by default; a method with per-client targets (FedGKT) overrides this."""
        return self.round_targets

    def expectation(self, state: RoundState, partition_id: int, num_examples: int) -> Expectation:
        """What the payload checks compare a reply of ``partition_id`` with."""
        noisy = self.privacy is not None and self.privacy.spec.name == "logit_dp"
        central = noisy and self.assets.privacy.mode == "central"
        expect = Expectation(
            num_classes=self.assets.data.num_classes,
            proxy_rows=len(state.proxy_indices),
            test_rows=len(self.assets.data.test_y),
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
            reporting=self.federation.reporting,
            options=self.payload_options(),
        )
        return self.secure_expectation(expect)

    def payload_options(self) -> dict[str, Any]:
        """Method-specific references for payload checks (e.g. an embedding width)."""
        return {}

    def check_reply(self, reply: Message) -> str | None:
        """Why a training reply of the current round is unusable, or None."""
        _, reason = self._validate([reply])
        return next(iter(reason), None)

    def decode(self, replies: Sequence[Message]) -> list[ClientReply]:
        """The current round's valid replies, validated and decoded (in partition order)."""
        return self._validate(replies)[0]

    def _validate(self, replies: Sequence[Message]) -> tuple[list[ClientReply], Counter[str]]:
        state = self.current
        return validate_replies(
            replies,
            state,
            self.validated_payloads(),
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
        clients = valid  # one reply per client; under secagg, one standing for the survivors
        if self.secure_session is not None:
            valid = self.finish_secure_round(state, clients)
        bookkeeping.record_diagnostics(
            state,
            valid,
            test_labels=self.assets.data.test_y,
            ensemble=self.teacher_targets if self.forms_ensemble else None,
            local=clients,
        )
        audit = self.assets.privacy.audit and self.shares_weights
        bookkeeping.record_privacy(
            state, clients, self.privacy, self.canaries, self.last_client_weights if audit else None
        )
        metrics = state.metrics
        counted = len(valid) if state.secure is None or not valid else len(state.secure.partitions)
        if counted < self.min_train_replies:
            reason = f"{counted} valid replies < min_train_replies={self.min_train_replies}"
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

    def check_privacy(self) -> None:
        """Fail before Ray when ``privacy`` cannot protect what this method shares."""
        checks.check_privacy(
            self.assets,
            method=type(self).__name__,
            has_clients=self.has_clients,
            payloads=self.requested_payloads(),
            trains_locally=self.regularizes_local_training,
            target_rule=self.target_rule,
        )

    # ------------------------------------------------------------------ federated evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global weights to a fraction of clients for local-test evaluation."""
        if self.fraction_evaluate == 0.0 or evaluation_withheld(self.assets.privacy):
            return []
        partitions = self.sample_partitions(server_round, self.fraction_evaluate, stream=1)
        messages, sent_bytes = evaluate_messages(
            partitions,
            self.node_of_partition,
            config={**dict(config), keys.SERVER_ROUND: server_round, keys.SETUP: self._setup_json},
            keep_model=self.keeps_client_models,
            arrays_for=partial(self.weights_for, arrays=arrays) if self.sends_weights else None,
        )
        # Evaluation traffic is reported apart: it measures the run, not the method.
        self.round_metrics.setdefault(server_round, {})["evaluation_downlink_bytes"] = sent_bytes
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted mean local test accuracy (:func:`fedkd.run.names.evaluated`)."""
        accuracy = mean_client_accuracy(replies)
        if accuracy is None:
            return None
        global_model = self.sends_weights and not self.keeps_client_models
        self.round_metrics.setdefault(server_round, {}).update(evaluated(accuracy, global_model))
        return MetricRecord({"client-accuracy": accuracy})

    def global_accuracy(self, server_round: int) -> float | None:
        """The global model's test accuracy when it is not the student (FedGKT); None: none."""
        return None

    def summary(self) -> None:
        """Log the strategy settings (Flower calls this at start)."""
        name, train, evaluate = type(self).__name__, self.fraction_train, self.fraction_evaluate
        logger.info(
            "%s: each round %.0f%% of the clients train and %.0f%% evaluate "
            "(strategy.fraction_train, fraction_evaluate)",
            *(name, 100 * train, 100 * evaluate),
        )
