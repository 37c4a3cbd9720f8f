"""Poisoning attacks for robustness studies: malicious clients and what they send.

A fixed set of ``attack.fraction * num_clients`` partitions, drawn from the seed, is
malicious for the whole run; the server tells each in its round config (``attack-kind``,
``attack-scale``) and the ClientApp poisons what it shares. Kinds:

``label_flip``
    Data poisoning: the client trains on labels ``C - 1 - y``; whatever it shares
    (weights, predictions, per-label logits, prototypes) comes from that model.
``random``
    Shared probability rows are drawn from a flat Dirichlet; shared weights are Gaussian
    noise with each tensor's own standard deviation.
``scale``
    Shared predictions are multiplied by ``scale`` (reply validation rejects them: they are
    no longer probability vectors); a shared weight update (trained minus received weights)
    is multiplied by ``scale`` (model replacement).
``sign_flip``
    Shared predictions become ``softmax(-log p)``: valid probability rows that rank the
    least likely class first; a shared weight update is negated.
``targeted``
    Colluding clients all push one class, ``target``: they train on labels set to it and
    share one-hot predictions on it (valid probability rows, so validation cannot tell).
``malformed``
    The client trains honestly but breaks the form of each reply: one required payload
    (its metrics, weights, predictions, ...) gets a key removed, a wrong type or dtype, a
    list for a scalar, NaN, inf, a huge or negative value, a wrong shape or another round
    (:func:`malform_metrics`, :func:`malform_arrays`), drawn from ``(seed, round,
    partition)``. Reply validation must reject every such reply with its reason: this
    checks the server's schema end to end on a real run.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkd.errors import ConfigError, check_block

LABEL_FLIP, MALFORMED, RANDOM, SCALE, SIGN_FLIP, TARGETED = (
    "label_flip",
    "malformed",
    "random",
    "scale",
    "sign_flip",
    "targeted",
)
ATTACK_KINDS = (LABEL_FLIP, MALFORMED, RANDOM, SCALE, SIGN_FLIP, TARGETED)
#: Kinds whose poison is in the training labels (the model itself is poisoned).
LABEL_ATTACKS = (LABEL_FLIP, TARGETED)
_STREAM = 0xA77AC


@dataclass(frozen=True)
class AttackSpec:
    """The ``attack`` config block.

    Parameters
    ----------
    kind : str, optional
        One of :data:`ATTACK_KINDS`; ``None``: no attack.
    fraction : float
        Fraction of all clients that are malicious, in [0, 1).
    scale : float
        Factor of the ``scale`` attack (default 10).
    target : int
        The class the ``targeted`` attack pushes (default 0).
    """

    kind: str | None = None
    fraction: float = 0.0
    scale: float = 10.0
    target: int = 0

    @property
    def enabled(self) -> bool:
        return self.kind is not None and self.fraction > 0

    @staticmethod
    def from_config(cfg: Mapping[str, Any] | None) -> AttackSpec:
        """Parse and check the ``attack`` block (``None``: no attack)."""
        if cfg is None:
            return AttackSpec()
        spec = AttackSpec(**check_block(cfg, "attack", AttackSpec.__dataclass_fields__))
        if spec.kind is not None and spec.kind not in ATTACK_KINDS:
            raise ConfigError(
                f"attack.kind must be one of {ATTACK_KINDS} or null, got {spec.kind!r}"
            )
        if not isinstance(spec.fraction, int | float) or not 0.0 <= spec.fraction < 1.0:
            raise ConfigError(f"attack.fraction must be in [0, 1), got {spec.fraction!r}")
        if spec.fraction > 0 and spec.kind is None:
            raise ConfigError(
                f"attack.fraction={spec.fraction} needs attack.kind (one of {ATTACK_KINDS})"
            )
        if not isinstance(spec.scale, int | float) or spec.scale <= 0:
            raise ConfigError(f"attack.scale must be > 0, got {spec.scale!r}")
        if not isinstance(spec.target, int) or isinstance(spec.target, bool) or spec.target < 0:
            raise ConfigError(f"attack.target must be a class index >= 0, got {spec.target!r}")
        return spec

    def check_classes(self, num_classes: int) -> None:
        """``attack.target`` must name one of the dataset's classes."""
        if self.kind == TARGETED and self.target >= num_classes:
            raise ConfigError(
                f"attack.target={self.target} is not a class of this dataset (0..{num_classes - 1})"
            )

    def malicious(self, num_clients: int, seed: int) -> list[int]:
        """The malicious partition ids: ``round(fraction * num_clients)`` of them, seeded."""
        return malicious_partitions(num_clients, self.fraction if self.enabled else 0.0, seed)


def malicious_partitions(num_clients: int, fraction: float, seed: int) -> list[int]:
    """Sorted ids of ``round(fraction * num_clients)`` partitions drawn from ``seed``."""
    count = round(fraction * num_clients)
    if count <= 0:
        return []
    rng = np.random.default_rng([seed, _STREAM])
    return sorted(int(p) for p in rng.choice(num_clients, size=count, replace=False))


def flip_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``label_flip``: each label ``y`` becomes ``num_classes - 1 - y``."""
    return (num_classes - 1 - np.asarray(labels)).astype(np.asarray(labels).dtype)


def poison_labels(labels: np.ndarray, kind: str, *, num_classes: int, target: int) -> np.ndarray:
    """The training labels of a malicious client: flipped (``label_flip``) or all set to
    ``target`` (``targeted``)."""
    labels = np.asarray(labels)
    if kind == LABEL_FLIP:
        return flip_labels(labels, num_classes)
    if kind == TARGETED:
        return np.full_like(labels, target)
    raise ConfigError(
        f"attack.kind {kind!r} does not poison labels; expected one of {LABEL_ATTACKS}"
    )


def poison_probs(
    probs: np.ndarray, kind: str, *, scale: float, rng: np.random.Generator, target: int = 0
) -> np.ndarray:
    """What a malicious client shares instead of its ``(rows, classes)`` predictions."""
    probs = np.asarray(probs, dtype=np.float64)
    if kind == LABEL_FLIP:  # the poison is in the training labels
        out = probs
    elif kind == TARGETED:
        out = np.zeros_like(probs)
        out[:, target] = 1.0
    elif kind == RANDOM:
        out = rng.dirichlet(np.ones(probs.shape[1]), size=probs.shape[0])
    elif kind == SCALE:
        out = probs * scale
    elif kind == SIGN_FLIP:
        logits = -np.log(np.clip(probs, 1e-12, None))
        logits -= logits.max(axis=1, keepdims=True)
        out = np.exp(logits)
        out /= out.sum(axis=1, keepdims=True)
    else:
        raise ConfigError(f"attack.kind must be one of {ATTACK_KINDS}, got {kind!r}")
    return out.astype(np.float32)


def poison_weights(
    state: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray] | None,
    kind: str,
    *,
    scale: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """What a malicious client shares instead of its trained weights ``state``.

    ``reference`` holds the weights it started the round from (the update is ``state -
    reference``); without one, the update is taken from zero. Integer tensors (counters)
    are left alone.
    """
    out: dict[str, np.ndarray] = {}
    for name, values in state.items():
        values = np.asarray(values)
        if values.dtype.kind != "f" or kind in LABEL_ATTACKS:  # poisoned by training
            out[name] = values.copy()
            continue
        start = np.zeros_like(values) if reference is None else np.asarray(reference[name])
        if kind == RANDOM:
            std = float(values.std()) or 1.0
            poisoned = rng.normal(0.0, std, size=values.shape)
        elif kind == SCALE:
            poisoned = start + scale * (values - start)
        elif kind == SIGN_FLIP:
            poisoned = start - (values - start)
        else:
            raise ConfigError(f"attack.kind must be one of {ATTACK_KINDS}, got {kind!r}")
        out[name] = poisoned.astype(values.dtype)
    return out


# ---------------------------------------------------------------------- malformed replies
_DROP = object()  # a break that removes the key
_NUM_EXAMPLES, _SERVER_ROUND = "num-examples", "server-round"
_TRAIN_LOSS, _LOCAL_ACCURACY, _DP_EPSILON = "train-loss", "local-accuracy", "dp-epsilon"
_Break = Callable[[Any], Any]
_COUNT_BREAKS: dict[str, _Break] = {
    "missing": lambda v: _DROP,
    "wrong type": lambda v: float(v) + 0.5,
    "list for a scalar": lambda v: [int(v)],
    "NaN": lambda v: float("nan"),
    "inf": lambda v: float("inf"),
    "negative": lambda v: -abs(int(v)) - 1,
    "huge": lambda v: 2**62,
}
_VALUE_BREAKS: dict[str, _Break] = {
    "list for a scalar": lambda v: [float(v), float(v)],
    "NaN": lambda v: float("nan"),
    "inf": lambda v: float("inf"),
    "negative": lambda v: -1.0,
    "huge": lambda v: 1e308,
}
#: Every metric a ``malformed`` client may break, and how: each value the server rejects
#: (optional metrics are never removed, since a reply without them is valid).
METRIC_BREAKS: dict[str, dict[str, _Break]] = {
    _NUM_EXAMPLES: _COUNT_BREAKS,
    _SERVER_ROUND: {**_COUNT_BREAKS, "huge": lambda v: int(v) + 1},  # another round
    _TRAIN_LOSS: _VALUE_BREAKS,
    _LOCAL_ACCURACY: {**_VALUE_BREAKS, "huge": lambda v: 7.5},  # an accuracy above 1
    _DP_EPSILON: {k: v for k, v in _VALUE_BREAKS.items() if k != "huge"},  # no upper cap
}
#: How a ``malformed`` client breaks one array (float arrays: every break; integer ones:
#: the first three). Each one fails the shape, dtype, finiteness or range checks.
ARRAY_BREAKS = ("missing", "wrong shape", "wrong dtype", "NaN", "inf", "huge", "negative")


def malform_metrics(
    metrics: Mapping[str, Any], *, sendable: Collection[str], rng: np.random.Generator
) -> dict[str, Any]:
    """A copy of a reply's metric values with one value broken so that the server must
    reject the reply: one of :data:`METRIC_BREAKS` for a key present and ``sendable``
    (keys a privacy mechanism withholds would be dropped before they leave)."""
    out = dict(metrics)
    candidates = sorted(k for k in METRIC_BREAKS if k in out and k in sendable)
    if not candidates:  # nothing of the schema to break: drop the example count
        out.pop(_NUM_EXAMPLES, None)
        return out
    key = str(rng.choice(candidates))
    breaks = METRIC_BREAKS[key]
    value = breaks[str(rng.choice(sorted(breaks)))](out[key])
    if value is _DROP:
        del out[key]
    else:
        out[key] = value
    return out


def malform_arrays(
    arrays: Mapping[str, np.ndarray], *, sendable: Collection[str], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A copy of one payload's arrays with one array broken in one of the ways of
    :data:`ARRAY_BREAKS` (an array of a key that leaves the client)."""
    out = {name: np.array(values, copy=True) for name, values in arrays.items()}
    candidates = sorted(k for k in out if k in sendable) or sorted(out)
    if not candidates:
        return out
    name = str(rng.choice(candidates))
    values = out[name]
    floating = values.dtype.kind == "f" and values.size > 0
    kind = str(rng.choice(ARRAY_BREAKS if floating else ARRAY_BREAKS[:3]))
    if kind == "missing":
        del out[name]
    elif kind == "wrong shape":  # one more row (or a 0-d value made a vector)
        extra = np.zeros((1, *values.shape[1:]), dtype=values.dtype)
        out[name] = np.concatenate([values.reshape(-1, *values.shape[1:]), extra])
    elif kind == "wrong dtype":  # floats sent as integers, integers as floats
        target = np.int32 if values.dtype.kind == "f" else np.float32
        out[name] = np.nan_to_num(values.astype(np.float64)).astype(target)
    else:
        bad = {"NaN": np.nan, "inf": np.inf, "huge": 1e30, "negative": -1e30}[kind]
        flat = values.astype(np.float64).reshape(-1)
        flat[rng.integers(flat.size)] = bad
        with np.errstate(over="ignore"):
            out[name] = flat.reshape(values.shape).astype(values.dtype)
    return out
