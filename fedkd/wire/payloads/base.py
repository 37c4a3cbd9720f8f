"""What every payload is: the contract between what a client sends and what a strategy reads.

A payload is one kind of data that crosses the wire from a client to the server (model
weights, proxy predictions, per-label logits, ...). Its module owns, end to end:

* the message keys it writes (:attr:`Payload.keys`, in the reply record :attr:`Payload.record`);
* how a client computes it (:meth:`Payload.compute`), with privacy, poisoning (``attack``)
  and the run's encoding applied there and nowhere else;
* how the server validates it (:meth:`Payload.validate`: shape, dtype, range, caps tied to
  the client's declared example count) and decodes it (:meth:`Payload.decode`);
* what it costs in bytes (:meth:`Payload.uplink_bytes`);
* optionally, what a client does with the server's aggregate of it before or during local
  training (:meth:`Payload.digest`, :meth:`Payload.train`), so the ClientApp never branches
  on the method.

A strategy names the payloads it asks for; the ClientApp computes each one asked for and
the strategy core validates and decodes each one, handing the method decoded values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedkd.distill.loop import distill
from fedkd.errors import ConfigError
from fedkd.privacy.config import PrivacySpec, public_examples
from fedkd.reliability.attacks import (
    LABEL_FLIP,
    MALFORMED,
    malform_arrays,
    malform_metrics,
    poison_probs,
    poison_weights,
)
from fedkd.train import predict_probs
from fedkd.wire import keys
from fedkd.wire.arrays import array_values

if TYPE_CHECKING:
    from fedkd.data import ClientData, FederatedData
    from fedkd.distill.augment import Augmentation
    from fedkd.models import FedKDModel
    from fedkd.setup import FederationSetup, TrainSettings
    from fedkd.wire.encoding import EncodingSpec
    from fedkd.wire.secure import SumRule

#: Largest absolute value accepted in shared weights or statistics: trained models of this
#: framework's sizes stay far below it, while overflowing or scaled-up uploads do not.
MAX_ABS_VALUE = 1e4
#: How far a shared probability row's sum may be from 1 (on top of an encoding's rounding).
PROBABILITY_SUM_TOLERANCE = 1e-3
#: Under ``privacy=dpsgd`` a client reports ``batch * ceil(n / batch)`` examples, the public
#: bound of :func:`fedkd.privacy.public_examples`, which exceeds its true count ``n`` by less
#: than one batch. A histogram of its ``n`` records may therefore sum to less than the
#: report by up to this many batches (minus one example), never to more.
DPSGD_COUNT_SLACK_BATCHES = 1
#: Under local ``logit_dp`` each shared entry is a clipped value (at most ``privacy.clip``)
#: plus Gaussian noise of a public std: an honest entry lies beyond this many stds with
#: probability about 1.5e-23, so a bound of ``clip + NOISE_BOUND_STDS * std`` never rejects
#: an honest client in practice while a value like 1e30 cannot own the noisy mean.
NOISE_BOUND_STDS = 10.0
#: Largest example count or histogram entry accepted: far above any client's data, and
#: exactly representable as a float64 so that every weighted sum stays exact and finite.
MAX_EXAMPLES = 2**53
#: Largest training loss accepted: far above what any model of this framework reports,
#: while an example-weighted mean of such losses stays finite (1e308 would overflow it).
MAX_LOSS = 1e9


@dataclass(frozen=True)
class Reporting:
    """What a client reports about its data under the run's privacy mechanism, as the server
    checks it: exact counts without a mechanism, public bounds under one.

    Parameters
    ----------
    privacy : PrivacySpec
        The run's mechanism (``none``: every count is exact).
    batch_size : int
        Clients' local batch size (``dpsgd``'s public bound is a whole number of batches).
    """

    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    batch_size: int = 1

    @property
    def exact(self) -> bool:
        """Counts are the true ones (no mechanism)."""
        return not self.privacy.enabled

    def examples(self, true_count: int) -> int:
        """The example count an honest client with ``true_count`` records reports."""
        return public_examples(self.privacy, true_count, max(1, self.batch_size))

    def histogram_problem(self, total: float, reported: int) -> str | None:
        """Why a histogram of ``total`` records cannot come from an honest client reporting
        ``reported`` examples, or None. Exact without a mechanism; under ``dpsgd`` the true
        count lies in ``(reported - DPSGD_COUNT_SLACK_BATCHES * batch, reported]``; under
        ``logit_dp`` and ``pate`` the report is 1 for everyone and bounds nothing."""
        if total > reported and (self.exact or self.privacy.name == "dpsgd"):
            return "exceed"
        if self.exact and total < reported:
            return "fall short of"
        if self.privacy.name == "dpsgd":
            slack = DPSGD_COUNT_SLACK_BATCHES * max(1, self.batch_size)
            if total <= reported - slack:
                return "fall short of"
        return None

    def counts_problem(self, counts: np.ndarray, reported: int) -> str | None:
        """Why per-label ``counts`` (checked finite) cannot come from an honest client
        reporting ``reported`` examples, or None: negative, not integral, or a sum that
        :meth:`histogram_problem` refuses."""
        if (counts < 0).any():
            return "negative counts"
        if (counts != np.round(counts)).any():
            return "counts not integral"
        problem = self.histogram_problem(counts.sum(dtype=np.float64), reported)
        return None if problem is None else f"counts {problem} num-examples"

    def noise_bound(self, rows: int) -> float | None:
        """Largest absolute entry of an honest local ``logit_dp`` release of ``rows`` rows
        (None: the rows are not noised on the client)."""
        spec = self.privacy
        if spec.name != "logit_dp" or spec.mode != "local":
            return None
        # the std of fedkd.privacy.mechanisms.local_release (sqrt(2) clip sqrt(rows) sigma)
        std = spec.noise_multiplier * np.sqrt(2.0) * spec.clip * np.sqrt(max(rows, 1))
        return float(spec.clip + NOISE_BOUND_STDS * std)


@dataclass
class Poisoner:
    """What a malicious client (``attack-kind``) does to what it shares; honest: nothing.

    One generator serves every payload of a reply, in the order the payloads are computed,
    so a poisoned reply is reproducible from ``(seed, attack stream)``.
    """

    kind: str
    scale: float
    target: int
    seed: int
    start_state: dict[str, np.ndarray] | None

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, 0xA77AC])
        #: The shared values are changed (``malformed`` changes the reply's form instead).
        self.active = bool(self.kind) and self.kind not in (LABEL_FLIP, MALFORMED)
        self.malformed = self.kind == MALFORMED
        #: ``malformed``: the payload whose values this reply breaks (drawn at the first one).
        self.broken: str | None = None

    def reply(
        self, payload: Payload, values: dict[str, Any], client: ClientRound
    ) -> dict[str, Any]:
        """What leaves for ``payload``: its ``values``, unless the client is ``malformed``.

        A ``malformed`` client breaks one required payload of each reply, drawn from the
        round's requested ones (its generator is seeded from ``(seed, round, partition)``),
        in one of the ways of :func:`fedkd.reliability.attacks.malform_metrics` /
        :func:`~fedkd.reliability.attacks.malform_arrays`, each of which the server rejects.
        Only keys that the privacy mechanism lets leave the client are broken.
        """
        if not self.malformed:
            return values
        if self.broken is None:
            self.broken = str(self.rng.choice(client.required_payloads()))
        if payload.name != self.broken:
            return values
        sendable = [k for k in values if payload.leaves(k, client.privacy)]
        if payload.record == keys.METRICS:
            return malform_metrics(values, sendable=sendable, rng=self.rng)
        arrays = {name: read_array(array) for name, array in values.items()}
        broken = malform_arrays(
            {k: v for k, v in arrays.items() if v is not None}, sendable=sendable, rng=self.rng
        )
        return to_record(broken)

    def weights(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A weight update poisoned relative to the round's starting weights."""
        if not self.active:
            return state
        return poison_weights(state, self.start_state, self.kind, scale=self.scale, rng=self.rng)

    def probs(self, values: np.ndarray) -> np.ndarray:
        """Shared probability rows (or a mechanism's output) poisoned."""
        if not self.active:
            return values
        return poison_probs(values, self.kind, scale=self.scale, rng=self.rng, target=self.target)

    def statistic(self, name: str, values: np.ndarray) -> np.ndarray:
        """A shared statistic (per-label logits, prototypes, features) poisoned like a weight
        tensor from zero."""
        if not self.active:
            return values
        return poison_weights({name: values}, None, self.kind, scale=self.scale, rng=self.rng)[name]


@dataclass
class ClientRound:
    """What a payload's client side may read in one ``train`` message (after training).

    Attributes
    ----------
    setup, data, client_data, model, device, partition_id, architecture
        The client runtime: settings, the federated dataset, this client's private records,
        its trained model, where it runs, its partition and architecture index.
    config : ConfigRecord
        The round config the server sent.
    targets : ArrayRecord, optional
        The server's aggregate sent back (``targets``), if any.
    server_round, seed
        The round and this client's training seed for it.
    privacy, encoding
        The run's privacy mechanism and upload encoding.
    poison : Poisoner
        The attack applied to what is shared (inactive for honest clients).
    augmentation
        Transfer-data augmentation of proxy batches (digest steps), if configured.
    state : RecordDict, optional
        The client's ``context.state`` (what a payload keeps between rounds: SCAFFOLD's
        control variate); checkpoints export and import it.
    """

    setup: FederationSetup
    data: FederatedData
    client_data: ClientData
    model: FedKDModel
    device: torch.device
    partition_id: int
    architecture: int
    config: ConfigRecord
    targets: ArrayRecord | None
    server_round: int
    seed: int
    privacy: PrivacySpec
    encoding: EncodingSpec
    poison: Poisoner
    augmentation: Augmentation | None = None
    state: RecordDict | None = None
    #: Set by the ClientApp after local training (``ClientMetrics`` reports them).
    train_loss: float = float("nan")
    dp_epsilon: float | None = None
    #: The trained model's softmax on shared inputs, computed ahead by name
    #: (``backend=batched`` predicts all its clients' at once); read by :meth:`predict`.
    predicted: dict[str, np.ndarray] = field(default_factory=dict)

    def predict(self, name: str, x: np.ndarray) -> np.ndarray:
        """The trained model's softmax on ``x``, the shared input a payload calls ``name``
        (:meth:`Payload.shared_inputs`): taken from :attr:`predicted` when computed ahead,
        else computed now."""
        ahead = self.predicted.get(name)
        if ahead is not None:
            return ahead
        return predict_probs(self.model, x, device=self.device)

    @property
    def train_settings(self) -> TrainSettings:
        """The client's optimizer settings with this round's local epochs."""
        return self.setup.local.train_settings(epochs=self.local_epochs)

    @property
    def local_epochs(self) -> int:
        """Local epochs this round (``local-epochs`` when the server sets it)."""
        return self.int_option(keys.LOCAL_EPOCHS, self.setup.local.epochs)

    def distill_private(self, targets: np.ndarray, loss: torch.nn.Module) -> float:
        """Train the model on its private records toward per-example ``targets`` with
        ``loss`` (the labels as its hard targets) and this round's settings; returns the last
        epoch's loss. The routes of payloads that train with a loss of their own use it."""
        settings = self.train_settings
        report = distill(
            self.model,
            self.client_data.train_x,
            targets,
            loss=loss,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            optimizer=settings.optimizer,
            proxy_y=self.client_data.train_y,
            seed=self.seed,
            device=self.device,
            weight_decay=settings.weight_decay,
        )
        return report.epoch_losses[-1]

    def required_payloads(self) -> list[str]:
        """Names of the required payloads this round asks for (client metrics always)."""
        from fedkd.wire.payloads.registry import PAYLOADS  # the registry imports this module

        names = set(str(self.config.get(keys.PAYLOADS, "")).split(","))
        return sorted(
            name
            for name, payload in PAYLOADS.items()
            if payload.required and (name in names or payload.record == keys.METRICS)
        )

    def int_option(self, key: str, default: int = 0) -> int:
        """An integer round-config value (``default`` when absent or not a number)."""
        value = self.config.get(key, default)
        return int(value) if isinstance(value, int | float) else default

    def float_option(self, key: str, default: float) -> float:
        """A float round-config value (``default`` when absent or not a number)."""
        value = self.config.get(key, default)
        return float(value) if isinstance(value, int | float) else default


@dataclass
class Expectation:
    """What the server knows about one reply before reading it: the checks' reference.

    Attributes
    ----------
    num_classes : int
        Classes of the dataset.
    proxy_rows : int
        Rows of this round's proxy subset.
    test_rows : int
        Rows of the server test set (evaluation-only predictions).
    num_examples : int
        The example count the reply reports (validated by :class:`ClientMetrics` first).
    declared_examples : int
        The example count the client declared at discovery (0: unknown).
    reference : torch.nn.Module, optional
        A server-side model of the client's architecture (weights checks).
    encoding : EncodingSpec, optional
        How proxy predictions are encoded.
    noisy_clip : float or None
        ``logit_dp``: the clipping bound rows must respect (central mode), else None.
    noisy : bool
        Rows are a mechanism's output (``logit_dp``), not probability rows.
    server_round : int
        The round whose replies are read.
    reporting : Reporting
        What the run's privacy mechanism lets clients report exactly (count caps).
    options : dict
        Method-specific references (``embedding_width`` of FedProto's prototypes, FedGKT's
        feature shape), from the strategy's ``payload_options``.
    """

    num_classes: int
    proxy_rows: int = 0
    test_rows: int = 0
    num_examples: int = 0
    declared_examples: int = 0
    reference: torch.nn.Module | None = None
    encoding: EncodingSpec | None = None
    noisy_clip: float | None = None
    noisy: bool = False
    server_round: int = 0
    reporting: Reporting = field(default_factory=Reporting)
    options: dict[str, Any] = field(default_factory=dict)


class Payload:
    """One kind of data a client sends; subclasses are stateless singletons.

    Class attributes
    ----------------
    name : str
        The payload's name: what strategies list and clients receive in ``payloads``.
    record : str
        The reply's record the keys go in (``arrays``, ``predictions``, ``evaluation``).
    keys : tuple of str
        The array keys this payload owns in that record.
    order : int
        Where it comes in a reply: payloads are computed and validated in this order.
    counted : bool
        Whether its bytes count as the method's uplink (evaluation-only outputs do not).
    required : bool
        A reply without a valid value is rejected (False: the value is ``None`` then).
    trains_locally : bool
        Clients train with the payload's own loss (:meth:`train`) once its aggregate
        arrived, replacing ``client.self_distill`` and ``client.born_again``.
    from_private_records : bool
        Computed directly on private records (statistics, per-example features), not only
        as outputs of the client's model on public data: ``privacy=dpsgd``, which protects
        the model, does not cover it.
    """

    name: ClassVar[str]
    record: ClassVar[str] = keys.PREDICTIONS
    keys: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 50
    counted: ClassVar[bool] = True
    required: ClassVar[bool] = True
    trains_locally: ClassVar[bool] = False
    from_private_records: ClassVar[bool] = False

    # ------------------------------------------------------------------ client side
    def digest(self, client: ClientRound) -> None:
        """Before local training: learn from the server's aggregate (default: nothing)."""

    def train(self, client: ClientRound) -> float | None:
        """Local training with the method's own loss when the server's aggregate of this
        payload arrived; returns the training loss, or None to leave training to the
        default (supervised) route."""
        return None

    def compute(self, client: ClientRound) -> dict[str, Any]:
        """What to send, keyed by this payload's keys (protected, poisoned, encoded): Flower
        arrays, or metric values for a payload whose record is ``metrics``."""
        raise NotImplementedError

    def shared_inputs(self, client: ClientRound) -> dict[str, np.ndarray]:
        """Inputs every client of the round predicts on in :meth:`compute` (through
        :meth:`ClientRound.predict`), by name: an engine that trains clients together may
        predict them together too (default: none)."""
        return {}

    # ------------------------------------------------------------------ privacy
    #: The payload is an output of the client's model on public inputs, so ``privacy=dpsgd``
    #: (which protects the model) covers it as post-processing.
    model_output: ClassVar[bool] = False

    def protection(self, key: str, privacy: PrivacySpec) -> str:
        """How ``key`` leaves the client under ``privacy`` (see :mod:`fedkd.wire.ledger`):
        ``dp`` when DP-SGD covers this model output, else ``none``."""
        return "dp" if privacy.name == "dpsgd" and self.model_output else "none"

    def leaves(self, key: str, privacy: PrivacySpec) -> bool:
        """Whether ``key`` leaves the client under ``privacy`` (see
        :func:`fedkd.wire.ledger.withhold`): protected, or allowed unprotected."""
        return self.protection(key, privacy) != "none" or privacy.sends_unprotected(key)

    # ------------------------------------------------------------------ secure aggregation
    #: ``secagg`` can sum it (:mod:`fedkd.wire.payloads.secure_sum`): the server then reads
    #: one value built from the survivors' sum (:meth:`from_sums`), never a client's own.
    summable: ClassVar[bool] = False

    def sum_shapes(self, expect: Expectation) -> dict[str, tuple[int, ...]]:
        """The shapes of the arrays summed for this payload, by name (the server knows them
        before any reply arrives)."""
        raise NotImplementedError(f"payload {self.name} cannot be securely aggregated")

    def summands(
        self, arrays: Mapping[str, np.ndarray], rule: SumRule, *, weight: float, client: ClientRound
    ) -> dict[str, np.ndarray]:
        """A client's contribution to the sum (float64), from what :meth:`compute` produced;
        ``weight``: its example count when the rule is size-weighted, else 1."""
        raise NotImplementedError(f"payload {self.name} cannot be securely aggregated")

    def from_sums(
        self, sums: Mapping[str, np.ndarray], rule: SumRule, *, weight: float, count: int
    ) -> Any:
        """The value methods read, from the sums over ``count`` clients of total ``weight``
        (what :meth:`decode` returns for one reply that stands for all of them)."""
        raise NotImplementedError(f"payload {self.name} cannot be securely aggregated")

    def sum_bound(self, rule: SumRule, *, value_bound: float, max_examples: float) -> float:
        """The largest ``|summand|`` an honest client sends (the fixed-point bound), given
        a mechanism's ``value_bound`` and the largest example count of any client."""
        raise NotImplementedError(f"payload {self.name} cannot be securely aggregated")

    # ------------------------------------------------------------------ server side
    def owned(self, record: ArrayRecord) -> list[str]:
        """The entries of ``record`` that belong to this payload."""
        return [name for name in self.keys if name in record]

    def unreadable(self, content: RecordDict) -> str | None:
        """Why one of this payload's arrays in ``content`` cannot be read as a numpy array
        (bytes that do not deserialize, another serialization type), or None. The server
        checks this before :meth:`validate`, which may then read every array."""
        record = content.array_records.get(self.record)
        if record is None:
            return None
        for name in self.owned(record):
            if read_array(record[name]) is None:
                return f"{name}: not a readable array"
        return None

    def arrays(self, content: RecordDict) -> dict[str, np.ndarray] | None:
        """This payload's arrays in a reply (None when its record is missing)."""
        record = content.array_records.get(self.record)
        if record is None:
            return None
        return {name: array_values(record[name]) for name in self.owned(record)}

    def validate(self, content: RecordDict, expect: Expectation) -> str | None:
        """Why this payload in ``content`` is unusable, or None."""
        raise NotImplementedError

    def decode(self, content: RecordDict, expect: Expectation) -> Any:
        """The validated payload as the value strategies read."""
        raise NotImplementedError

    def uplink_bytes(self, content: RecordDict) -> int:
        """Bytes of this payload's arrays as Flower serializes them."""
        record = content.array_records.get(self.record)
        if record is None or not self.counted:
            return 0
        return sum(record_bytes(record, name) for name in self.keys if name in record)


def sent_number(config: ConfigRecord, key: str) -> int | float:
    """A number the strategy always sends in the round config; the client keeps no default
    of its own, so a missing or non-numeric value is a :class:`ConfigError` naming the key."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"round config: {key!r} must be a number the server sends, got {value!r}")
    return value


def read_array(array: Array) -> np.ndarray | None:
    """``array`` as numpy, or None when its bytes do not deserialize (a hostile or broken
    client can send any bytes under any declared dtype and shape; Flower only loads them
    on :meth:`~flwr.app.Array.numpy`, never with pickles)."""
    try:
        return array_values(array)
    except (ValueError, TypeError, OSError, EOFError):
        return None


def record_bytes(record: ArrayRecord, name: str) -> int:
    """Bytes of one entry of an ArrayRecord as ``ArrayRecord.count_bytes`` counts them (the
    serialized array plus its key), so payloads' bytes add up to the record's."""
    return len(record[name].data) + len(name)


def as_array(values: np.ndarray) -> Array:
    """A float32, C-contiguous Flower array (what clients send statistics as)."""
    return Array(np.ascontiguousarray(values, dtype=np.float32))


def to_record(arrays: Mapping[str, np.ndarray]) -> dict[str, Array]:
    """Numpy arrays as Flower arrays, dtype kept."""
    return {name: Array(np.ascontiguousarray(values)) for name, values in arrays.items()}


def shared_floats(
    arrays: Mapping[str, np.ndarray] | None, key: str, expected_shape: tuple[int, ...]
) -> tuple[np.ndarray | None, str | None]:
    """The float array ``key`` of shape ``expected_shape``, or why it is unusable."""
    if arrays is None or key not in arrays:
        return None, f"{key}: missing"
    values = arrays[key]
    if values.shape != expected_shape:
        return None, f"{key}: shape {values.shape}, expected {expected_shape}"
    if values.dtype.kind != "f":
        return None, f"{key}: wrong dtype {values.dtype}"
    if not np.isfinite(values).all():
        return None, f"{key}: not finite floats"
    return values, None


def check_probability_rows(
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
            values.sum(axis=1, dtype=np.float64), 1.0, atol=PROBABILITY_SUM_TOLERANCE
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
