"""Proxy predictions: soft predictions on the round's proxy rows (FedMD, DS-FL, FedET, FedDF).

The downlink side lives here too: the consensus the server sends back (``targets`` with
``proxy-probs``) is what clients digest before local training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from flwr.app import Array, ConfigRecord, RecordDict

from fedkd.data import proxy_round_indices
from fedkd.distill import build_loss, distill, loss_options
from fedkd.distill.losses import SOFT_LOSSES, DistillLoss
from fedkd.errors import ConfigError, check_types
from fedkd.privacy import PrivacySpec
from fedkd.privacy.mechanisms import clip_rows, local_release, noise_generator, one_hot_votes
from fedkd.setup import FederationSetup
from fedkd.wire import keys
from fedkd.wire.encoding import MalformedEncoding
from fedkd.wire.payloads.base import (
    NOISE_BOUND_STDS,
    ClientRound,
    Expectation,
    Payload,
    check_probability_rows,
    sent_number,
)
from fedkd.wire.payloads.registry import register

if TYPE_CHECKING:
    from fedkd.wire.secure import SumRule


def round_rows(num_proxy: int, *, size: int, seed: int, server_round: int) -> np.ndarray:
    """The proxy rows of one round: the one function client and server both call, so the
    rows a client scores are the rows the server reads (``proxy-round-size``, 0: all)."""
    return proxy_round_indices(
        num_proxy, size=size if size > 0 else None, seed=seed, server_round=server_round
    )


def protect(
    probs: np.ndarray, spec: PrivacySpec, *, seed: int, server_round: int, partition_id: int
) -> np.ndarray:
    """What leaves the client under ``privacy``: noisy clipped rows (local ``logit_dp``),
    clipped rows (central ``logit_dp``: the server adds the noise), one-hot votes (PATE),
    else the rows themselves."""
    if spec.name == "logit_dp" and spec.mode == "local":
        rng = noise_generator(spec.reproducible_noise, seed, server_round, partition_id, 1)
        noisy, _ = local_release(
            probs, clip=spec.clip, noise_multiplier=spec.noise_multiplier, rng=rng
        )
        return noisy
    if spec.name == "logit_dp":
        return clip_rows(probs, spec.clip).astype(np.float32)
    if spec.name == "pate":
        return one_hot_votes(probs)
    return probs


#: DigestOptions field -> its key under ``strategy.`` (the config's spelling)
_DIGEST_KEYS = {
    "epochs": "digest_epochs",
    "lr": "digest_lr",
    "batch_size": "digest_batch_size",
    "temperature": "digest_temperature",
    "soft_loss": "digest_soft_loss",
    "optimizer": "digest_optimizer",
    "momentum": "digest_momentum",
}
#: The digest's optimizers (SGD with ``digest_momentum``); Adam was the only one before.
DIGEST_OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class DigestOptions:
    """How clients of the FedMD family digest the server's consensus on the proxy.

    Built once by :class:`strategies.fedmd.FedMD` (and DS-FL, FedET) from its
    ``strategy.digest_*`` and ``strategy.warmup_public_epochs`` options (the strategy's YAML
    holds the defaults) and sent with every round config (``digest-epochs``, ``digest-lr``,
    ``digest-batch-size``, ``warmup-public-epochs``, and ``digest-temperature`` /
    ``digest-soft-loss`` when set); clients read it back with :meth:`from_config` and have
    no defaults of their own.

    Parameters
    ----------
    epochs : int
        Passes over the round's proxy rows fitting the consensus (>= 0; 0: no digest).
    lr : float
        Learning rate of the digest.
    batch_size : int
        Digest mini-batch size.
    temperature : float or None
        Replaces the ``distill`` loss's temperature in the digest (> 0); ``None``: the loss's.
    soft_loss : str or None
        Replaces the ``distill`` loss's soft term in the digest (one of ``SOFT_LOSSES``);
        ``None``: the loss's.
    warmup_public_epochs : int
        Epochs on the labeled proxy before a client's first participation (>= 0).
    optimizer : {"adam", "sgd"}
        The digest's optimizer (default ``"adam"``; FedMD's paper and reference code use
        SGD, Li & Wang 2019).
    momentum : float
        SGD's momentum (default 0.9; Adam ignores it).
    """

    epochs: int
    lr: float
    batch_size: int
    temperature: float | None
    soft_loss: str | None
    warmup_public_epochs: int
    optimizer: str = "adam"
    momentum: float = 0.9

    def __post_init__(self) -> None:
        check_types(self, prefix="strategy.", names=_DIGEST_KEYS)
        if self.epochs < 0:
            raise ConfigError(f"strategy.digest_epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"strategy.digest_lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"strategy.digest_batch_size must be >= 1, got {self.batch_size}")
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"strategy.digest_temperature must be > 0, got {self.temperature}")
        if self.soft_loss is not None and self.soft_loss not in SOFT_LOSSES:
            raise ConfigError(
                f"strategy.digest_soft_loss must be one of {SOFT_LOSSES} or null, "
                f"got {self.soft_loss!r}"
            )
        if self.optimizer not in DIGEST_OPTIMIZERS:
            raise ConfigError(
                f"strategy.digest_optimizer must be one of {DIGEST_OPTIMIZERS}, "
                f"got {self.optimizer!r}"
            )
        if self.momentum < 0:
            raise ConfigError(f"strategy.digest_momentum must be >= 0, got {self.momentum}")
        if self.warmup_public_epochs < 0:
            raise ConfigError(
                f"strategy.warmup_public_epochs must be >= 0, got {self.warmup_public_epochs}"
            )

    def to_config(self) -> dict[str, Any]:
        """The round-config keys the server sends (the optional two only when set)."""
        config: dict[str, Any] = {
            keys.DIGEST_EPOCHS: self.epochs,
            keys.DIGEST_LR: self.lr,
            keys.DIGEST_BATCH_SIZE: self.batch_size,
            keys.WARMUP_PUBLIC_EPOCHS: self.warmup_public_epochs,
        }
        if self.temperature is not None:
            config[keys.DIGEST_TEMPERATURE] = self.temperature
        if self.soft_loss is not None:
            config[keys.DIGEST_SOFT_LOSS] = self.soft_loss
        if self.optimizer != "adam":  # sent only when set, so Adam runs' configs are as before
            config[keys.DIGEST_OPTIMIZER] = self.optimizer
            config[keys.DIGEST_MOMENTUM] = self.momentum
        return config

    @staticmethod
    def from_config(config: ConfigRecord) -> DigestOptions | None:
        """What the server sent, or None when its strategy has no digest (no
        ``digest-epochs``); ConfigError naming a key the strategy must send but did not."""
        if keys.DIGEST_EPOCHS not in config:
            return None
        soft_loss = config.get(keys.DIGEST_SOFT_LOSS)
        return DigestOptions(
            epochs=int(sent_number(config, keys.DIGEST_EPOCHS)),
            lr=float(sent_number(config, keys.DIGEST_LR)),
            batch_size=int(sent_number(config, keys.DIGEST_BATCH_SIZE)),
            temperature=(
                None
                if keys.DIGEST_TEMPERATURE not in config
                else float(sent_number(config, keys.DIGEST_TEMPERATURE))
            ),
            soft_loss=None if soft_loss is None else str(soft_loss),
            warmup_public_epochs=int(sent_number(config, keys.WARMUP_PUBLIC_EPOCHS)),
            optimizer=str(config.get(keys.DIGEST_OPTIMIZER, "adam")),
            momentum=(
                float(sent_number(config, keys.DIGEST_MOMENTUM))
                if keys.DIGEST_OPTIMIZER in config
                else 0.9
            ),
        )


@register
class ProxyPredictions(Payload):
    """Softmax rows of the client's model on this round's proxy rows, ``(rows, classes)``.

    Client: predict, :func:`protect` (privacy), poison (``attack``), then encode last
    (:mod:`fedkd.wire.encoding`), so the rows that leave are exactly what the encoding
    carries. Server: decode, then check the rows are finite probability vectors (within the
    encoding's rounding), or, for ``logit_dp``, within the clipping bound (central mode) or
    within the clip plus :data:`~fedkd.wire.payloads.base.NOISE_BOUND_STDS` noise stds
    (local mode). PATE's one-hot votes are probability rows too.
    """

    model_output: ClassVar[bool] = True
    name: ClassVar[str] = "proxy-predictions"
    order: ClassVar[int] = 20
    keys: ClassVar[tuple[str, ...]] = (
        keys.PROXY_PROBS,
        keys.PROXY_PROBS_Q,
        keys.PROXY_PROBS_SCALE,
        keys.PROXY_PROBS_IDX,
        keys.PROXY_PROBS_VAL,
    )

    def protection(self, key: str, privacy: PrivacySpec) -> str:
        """``dp`` when noised on the client (local ``logit_dp``) or computed by a DP-SGD
        model; ``central_dp`` when sent in the clear to a server that adds the noise
        (central ``logit_dp``, PATE's votes): that guarantee assumes an honest server."""
        if privacy.name == "logit_dp":
            return "dp" if privacy.mode == "local" else "central_dp"
        if privacy.name == "pate":
            return "central_dp"
        return super().protection(key, privacy)

    # ------------------------------------------------------------------ client
    def digest(self, client: ClientRound) -> None:
        """Fit the server's consensus on the proxy rows it was computed on (FedMD's digest),
        with the run's ``distill`` loss and ``augment`` transforms."""
        targets = client.targets
        options = DigestOptions.from_config(client.config)
        if (
            targets is None
            or options is None
            or options.epochs <= 0
            or keys.PROXY_PROBS not in targets
        ):
            return
        indices = round_rows(
            len(client.data.proxy_x),
            size=client.int_option(keys.PROXY_ROUND_SIZE),
            seed=client.setup.seed,
            server_round=client.int_option(keys.TARGETS_ROUND),
        )
        if keys.TARGETS_ROWS in targets:  # PATE: only the answered queries have labels
            indices = indices[targets[keys.TARGETS_ROWS].numpy().astype(np.int64)]
        consensus = targets[keys.PROXY_PROBS].numpy()
        expected = (len(indices), client.data.num_classes)
        if consensus.shape != expected:
            raise ValueError(f"targets have shape {consensus.shape}, expected {expected}")
        distill(
            client.model,
            client.data.proxy_x[indices],
            consensus,
            loss=digest_loss(client.setup, options),
            epochs=options.epochs,
            batch_size=options.batch_size,
            lr=options.lr,
            optimizer=options.optimizer,
            momentum=options.momentum,
            seed=(client.seed + 1) % 2**32,
            device=client.device,
            augmentation=client.augmentation,
        )

    def shared_inputs(self, client: ClientRound) -> dict[str, np.ndarray]:
        """This round's proxy rows (the same for every client)."""
        size = client.int_option(keys.PROXY_ROUND_SIZE)
        rows = round_rows(
            len(client.data.proxy_x),
            size=size,
            seed=client.setup.seed,
            server_round=client.server_round,
        )
        name = f"proxy/{client.setup.seed}/{client.server_round}/{size}"
        return {name: client.data.proxy_x[rows]}

    def compute(self, client: ClientRound) -> dict[str, Array]:
        ((name, inputs),) = self.shared_inputs(client).items()
        probs = client.predict(name, inputs)
        released = protect(
            probs,
            client.privacy,
            seed=client.setup.seed,
            server_round=client.server_round,
            partition_id=client.partition_id,
        )
        encoded = client.encoding.encode(client.poison.probs(released))
        return client.poison.reply(
            self, {name: Array(values) for name, values in encoded.items()}, client
        )

    # ------------------------------------------------------------------ secure aggregation
    summable: ClassVar[bool] = True

    def sum_shapes(self, expect: Expectation) -> dict[str, tuple[int, ...]]:
        return {keys.PROXY_PROBS: (expect.proxy_rows, expect.num_classes)}

    def summands(
        self, arrays: Mapping[str, np.ndarray], rule: SumRule, *, weight: float, client: ClientRound
    ) -> dict[str, np.ndarray]:
        """The released rows in the rule's space, times ``weight``; under distributed noise
        plus this client's Gaussian share of the central ``logit_dp`` noise."""
        rows = rule.to_space(arrays[keys.PROXY_PROBS]) * weight
        if rule.noise_std > 0:
            spec = client.privacy
            rng = noise_generator(
                spec.reproducible_noise,
                client.setup.seed,
                client.server_round,
                client.partition_id,
                2,
            )
            rows = rows + rng.normal(0.0, rule.noise_std, size=rows.shape)
        return {keys.PROXY_PROBS: rows}

    def from_sums(
        self, sums: Mapping[str, np.ndarray], rule: SumRule, *, weight: float, count: int
    ) -> np.ndarray:
        """Rows whose space value is the weighted mean of the clients' (the mean itself
        under a mechanism, whose release reads the sum instead)."""
        return rule.from_space(sums[keys.PROXY_PROBS] / weight).astype(np.float32)

    def sum_bound(self, rule: SumRule, *, value_bound: float, max_examples: float) -> float:
        weight = rule.weight_bound(max_examples)
        return rule.row_bound(value_bound) * weight + NOISE_BOUND_STDS * rule.noise_std

    # ------------------------------------------------------------------ server
    def raw_rows(self, content: RecordDict, expect: Expectation) -> np.ndarray:
        """The uploaded rows, decoded from the run's encoding (float32: the array itself).

        Raises
        ------
        MalformedEncoding
            The predictions are missing or do not decode; the message is the reason.
        """
        arrays = self.arrays(content)
        if arrays is None:
            raise MalformedEncoding("missing proxy predictions")
        assert expect.encoding is not None
        with np.errstate(over="ignore"):  # an overflowing row is rejected just below
            values = expect.encoding.decode(arrays, shape=(expect.proxy_rows, expect.num_classes))
        if not np.isfinite(values).all():  # int8: a huge finite scale times 127 overflows
            raise MalformedEncoding(f"{keys.PROXY_PROBS}: not finite after decoding")
        return values

    def validate(self, content: RecordDict, expect: Expectation) -> str | None:
        try:
            values = self.raw_rows(content, expect)
        except MalformedEncoding as exc:
            return str(exc)
        encoding = expect.encoding
        assert encoding is not None
        # an encoding that rounds gets its own rounding on top of the usual tolerance
        slack = None if encoding.lossless else encoding.rounding_error(values)
        if expect.noisy:
            bound = expect.reporting.noise_bound(expect.proxy_rows)
            if bound is not None and np.abs(values).max(initial=0.0) > bound:
                return f"{keys.PROXY_PROBS}: beyond what clipping plus the noise can give"
            return check_noisy(values, keys.PROXY_PROBS, clip=expect.noisy_clip, slack=slack)
        return check_probability_rows(
            values,
            keys.PROXY_PROBS,
            slack=slack,
            min_mass=encoding.min_row_mass(expect.num_classes),
        )

    def decode(self, content: RecordDict, expect: Expectation) -> np.ndarray:
        """``(rows, classes)`` rows; a rounding or truncating encoding's rows renormalized to
        sum to 1, unless they are ``logit_dp``'s noisy values."""
        values = self.raw_rows(content, expect)
        assert expect.encoding is not None
        if expect.encoding.lossless or expect.noisy:
            return values
        return values / values.sum(axis=1, keepdims=True)


def digest_loss(setup: FederationSetup, options: DigestOptions) -> DistillLoss:
    """A fresh loss per digest (learned parts never pass between clients); the strategy's
    digest ``temperature`` and ``soft_loss``, when set, replace the loss's own."""
    spec = dict(setup.distill)
    name = str(spec.pop("name"))
    if options.temperature is not None and "temperature" in loss_options(name):
        spec["temperature"] = options.temperature
    if options.soft_loss is not None and "soft_loss" in loss_options(name):
        spec["soft_loss"] = options.soft_loss
    return build_loss(name, **spec)


def check_noisy(
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
