"""Proxy predictions: soft predictions on the round's proxy rows (FedMD, DS-FL, FedET, FedDF).

The downlink side lives here too: the consensus the server sends back (``targets`` with
``proxy-probs``) is what clients digest before local training.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from flwr.app import Array, ConfigRecord, RecordDict

from fedkd.data import proxy_round_indices
from fedkd.distill import build_loss, distill, loss_options
from fedkd.distill.losses import DistillLoss
from fedkd.privacy import PrivacySpec
from fedkd.privacy.mechanisms import clip_rows, local_release, noise_generator, one_hot_votes
from fedkd.setup import FederationSetup
from fedkd.train import predict_probs
from fedkd.wire import keys
from fedkd.wire.encoding import MalformedEncoding
from fedkd.wire.payloads.base import ClientRound, Expectation, Payload, check_probability_rows
from fedkd.wire.payloads.registry import register


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


@register
class ProxyPredictions(Payload):
    """Softmax rows of the client's model on this round's proxy rows, ``(rows, classes)``.

    Client: predict, :func:`protect` (privacy), poison (``attack``), then encode last
    (:mod:`fedkd.wire.encoding`), so the rows that leave are exactly what the encoding
    carries. Server: decode, then check the rows are probability vectors (within the
    encoding's rounding), or, for ``logit_dp``, within the clipping bound (central mode).
    PATE's one-hot votes are probability rows too.
    """

    name: ClassVar[str] = "proxy-predictions"
    order: ClassVar[int] = 20
    keys: ClassVar[tuple[str, ...]] = (
        keys.PROXY_PROBS,
        keys.PROXY_PROBS_Q,
        keys.PROXY_PROBS_SCALE,
        keys.PROXY_PROBS_IDX,
        keys.PROXY_PROBS_VAL,
    )

    # ------------------------------------------------------------------ client
    def digest(self, client: ClientRound) -> None:
        """Fit the server's consensus on the proxy rows it was computed on (FedMD's digest),
        with the run's ``distill`` loss and ``augment`` transforms."""
        targets = client.targets
        epochs = client.int_option(keys.DIGEST_EPOCHS)
        if targets is None or epochs <= 0 or keys.PROXY_PROBS not in targets:
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
            loss=digest_loss(client.setup, client.config),
            epochs=epochs,
            batch_size=client.int_option(keys.DIGEST_BATCH_SIZE, 32),
            lr=client.float_option(keys.DIGEST_LR, 1e-3),
            optimizer="adam",
            seed=(client.seed + 1) % 2**32,
            device=client.device,
            augmentation=client.augmentation,
        )

    def compute(self, client: ClientRound) -> dict[str, Array]:
        rows = round_rows(
            len(client.data.proxy_x),
            size=client.int_option(keys.PROXY_ROUND_SIZE),
            seed=client.setup.seed,
            server_round=client.server_round,
        )
        probs = predict_probs(client.model, client.data.proxy_x[rows], device=client.device)
        released = protect(
            probs,
            client.privacy,
            seed=client.setup.seed,
            server_round=client.server_round,
            partition_id=client.partition_id,
        )
        encoded = client.encoding.encode(client.poison.probs(released))
        return {name: Array(values) for name, values in encoded.items()}

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
        return expect.encoding.decode(arrays, shape=(expect.proxy_rows, expect.num_classes))

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


def digest_loss(setup: FederationSetup, config: ConfigRecord) -> DistillLoss:
    """A fresh loss per digest (learned parts never pass between clients); the strategy's
    ``digest-temperature`` and ``digest-soft-loss``, when sent, replace the loss's own."""
    spec = dict(setup.distill)
    name = str(spec.pop("name"))
    if keys.DIGEST_TEMPERATURE in config and "temperature" in loss_options(name):
        value = config[keys.DIGEST_TEMPERATURE]
        spec["temperature"] = float(value) if isinstance(value, int | float) else 1.0
    if keys.DIGEST_SOFT_LOSS in config and "soft_loss" in loss_options(name):
        spec["soft_loss"] = str(config[keys.DIGEST_SOFT_LOSS])
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
