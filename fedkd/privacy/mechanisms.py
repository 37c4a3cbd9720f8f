"""Mechanisms on what clients share about the public proxy: clipping, Gaussian noise, PATE votes.

Notation: a client releases an ``(N, C)`` matrix (N proxy examples of this round, C classes)
whose rows are its predicted probability vectors.

``logit_dp`` (Gaussian mechanism on clipped predictions)
    Every row is a probability vector (non-negative) clipped to L2 norm ``clip``; two such
    rows differ by at most ``sqrt(2) * clip`` in L2 (``|u - v|^2 = |u|^2 + |v|^2 - 2 u.v``
    and ``u.v >= 0``), and one client's whole release of N rows by ``sqrt(2) * clip *
    sqrt(N)``. The L2 sensitivities, by neighbouring relation (:func:`logit_dp_sensitivity`):

    * local (each client noises its own release; any change of the client's data, one
      record or all of them): ``sqrt(2) * clip * sqrt(N)``;
    * central, client level (the server noises the sum over clients; one client added or
      removed): ``clip * sqrt(N)``;
    * central, record level (one record of one client added, removed or changed: that
      client's contribution changes instead of disappearing): ``sqrt(2) * clip * sqrt(N)``.

    The noise std is ``noise_multiplier * sqrt(2) * clip * sqrt(N)`` per entry in local mode
    and ``noise_multiplier * clip * sqrt(N)`` in central mode (the client-level
    sensitivity), so a central release is a Gaussian mechanism with multiplier ``z`` for a
    client and ``z / sqrt(2)`` for a record. A single training record can change a
    client's model arbitrarily, so these bounds assume nothing about training.

``pate`` (Papernot et al., ICLR 2018)
    Clients vote with their argmax (one-hot rows). The server sums the votes per example,
    adds ``N(0, sigma^2)`` to every count and releases the noisy argmax (GNMax). One client
    changing its vote moves two counts by one: L2 sensitivity ``sqrt(2)``. Confident GNMax
    first checks ``max count + N(0, sigma_threshold^2) >= threshold`` (sensitivity 1) and
    answers only the queries that pass. Accounting here is data-independent: every check
    and every answer is charged as a Gaussian mechanism.

Noise comes from :func:`noise_generator`: by default :class:`SecureNormal`, Gaussian
samples built from the operating system's CSPRNG (:func:`os.urandom`) by the Box-Muller
transform; with ``privacy.reproducible_noise=true``, a numpy generator derived from the run
seed so research runs can be repeated. Reproducible noise is predictable to anyone who knows
the seed: never use it in a real deployment.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

#: SeedSequence stream tag of privacy noise (apart from every training stream).
NOISE_STREAM = 0x5EC0DE


class SecureNormal:
    """Gaussian noise from the operating system's CSPRNG.

    Each sample uses two 53-bit uniforms from :func:`os.urandom` (``u1`` in ``(0, 1]``,
    ``u2`` in ``[0, 1)``) and the Box-Muller transform ``sqrt(-2 ln u1) cos(2 pi u2)`` in
    float64. Nothing about the noise is predictable from the run's seed or from any other
    generator of the run. Floating-point artefacts of sampling (Mironov, CCS 2012) are not
    mitigated beyond float64 precision.
    """

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: object = None) -> np.ndarray:
        shape = () if size is None else tuple(np.atleast_1d(np.asarray(size, dtype=np.int64)))
        count = int(np.prod(shape, dtype=np.int64))
        bits = np.frombuffer(os.urandom(16 * count), dtype=np.uint64).reshape(2, count) >> 11
        u1 = (bits[0].astype(np.float64) + 1.0) * 2.0**-53
        u2 = bits[1].astype(np.float64) * 2.0**-53
        samples = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        return (loc + scale * samples).reshape(shape)


#: What a mechanism draws its noise from: both have ``normal(loc, scale, size)``.
NormalSource = SecureNormal | np.random.Generator


def noise_generator(reproducible: bool, seed: int, *stream: int) -> NormalSource:
    """The noise source for one release.

    ``reproducible=False`` (the default of every mechanism): :class:`SecureNormal`, the
    operating system's CSPRNG, independent of the run seed and of every other RNG in the
    run. ``True``: a numpy generator derived from ``(seed, NOISE_STREAM, *stream)``, so a
    rerun with the same seed adds the same noise (unsafe outside research).
    """
    if reproducible:
        return np.random.default_rng(np.random.SeedSequence([seed, NOISE_STREAM, *stream]))
    return SecureNormal()


def torch_noise_seed(reproducible: bool, seed: int, *stream: int) -> int | None:
    """A torch generator seed for DP-SGD noise: ``None`` (cryptographic) unless reproducible."""
    if not reproducible:
        return None
    state = np.random.SeedSequence([seed, NOISE_STREAM, *stream]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


def clip_rows(values: np.ndarray, clip: float) -> np.ndarray:
    """Scale every row whose L2 norm exceeds ``clip`` down to norm ``clip`` (float64)."""
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    values = np.asarray(values, dtype=np.float64)
    norms = np.linalg.norm(values, axis=-1, keepdims=True)
    return values * np.minimum(1.0, clip / np.maximum(norms, 1e-12))


def logit_dp_sensitivity(num_rows: int, clip: float, mode: str, relation: str = "client") -> float:
    """L2 sensitivity of a ``logit_dp`` release of ``num_rows`` clipped probability rows
    per client, for neighbouring ``relation`` ``"record"`` or ``"client"`` (module doc)."""
    if relation not in ("record", "client"):
        raise ValueError(f"relation must be 'record' or 'client', got {relation!r}")
    base = clip * math.sqrt(num_rows)
    if mode == "local" or relation == "record":
        return math.sqrt(2.0) * base
    return base


def logit_dp_noise_std(num_rows: int, clip: float, mode: str, noise_multiplier: float) -> float:
    """Noise std per entry: ``noise_multiplier`` times the sensitivity it is defined by
    (local: any change of the client's data; central: one client added or removed)."""
    return noise_multiplier * logit_dp_sensitivity(num_rows, clip, mode, "client")


@dataclass(frozen=True)
class GaussianRelease:
    """What a Gaussian release used: the numbers the run reports next to epsilon."""

    sensitivity: float
    noise_std: float
    noise_multiplier: float


def local_release(
    probs: np.ndarray, *, clip: float, noise_multiplier: float, rng: NormalSource
) -> tuple[np.ndarray, GaussianRelease]:
    """A client's locally private release: clipped non-negative rows plus Gaussian noise."""
    sensitivity = logit_dp_sensitivity(len(probs), clip, "local")
    std = noise_multiplier * sensitivity
    rows = clip_rows(np.clip(np.asarray(probs, dtype=np.float64), 0.0, None), clip)
    noisy = rows + rng.normal(0.0, std, size=np.shape(probs))
    return noisy.astype(np.float32), GaussianRelease(sensitivity, std, noise_multiplier)


def noisy_total(
    total: np.ndarray,
    *,
    num_rows: int,
    clip: float,
    noise_multiplier: float,
    rng: NormalSource,
    add_noise: bool = True,
) -> tuple[np.ndarray, GaussianRelease]:
    """Central ``logit_dp``'s Gaussian noise added to an already-summed ``(N, C)`` total.

    Parameters
    ----------
    total : np.ndarray
        ``(num_rows, C)``: the sum over clients of their clipped non-negative rows.
    num_rows : int
        ``N``, the rows each client released (the sensitivity grows with ``sqrt(N)``).
    clip : float
        The L2 norm every row was clipped to.
    noise_multiplier : float
        ``z``: the noise std is ``z`` times the client-level sensitivity ``clip sqrt(N)``.
    rng : NormalSource
        Where the noise comes from (one draw of ``total``'s shape).
    add_noise : bool
        ``False`` when the clients added the noise themselves (distributed noise): the
        total comes back unchanged (float64), and the release reports the noise it stands for.

    Returns
    -------
    (np.ndarray, GaussianRelease)
        The noisy total (float64) and the client-level sensitivity and noise std.
    """
    total = np.asarray(total, dtype=np.float64)
    if total.ndim != 2 or total.shape[0] != num_rows:
        raise ValueError(
            f"total must be a (num_rows={num_rows}, classes) sum, got shape {total.shape}"
        )
    sensitivity = logit_dp_sensitivity(num_rows, clip, "central", "client")
    std = noise_multiplier * sensitivity
    if add_noise:
        total = total + rng.normal(0.0, std, size=total.shape)
    return total, GaussianRelease(sensitivity, std, noise_multiplier)


def central_sum(
    contributions: np.ndarray, *, clip: float, noise_multiplier: float, rng: NormalSource
) -> tuple[np.ndarray, GaussianRelease]:
    """The noisy sum over clients of their clipped ``(K, N, C)`` contributions.

    The server drops negative parts and clips again, so the stated sensitivities hold even
    if a client did neither; the noise is :func:`noisy_total`'s. ``sensitivity`` is the
    client-level one (the noise's unit).
    """
    contributions = np.clip(np.asarray(contributions, dtype=np.float64), 0.0, None)
    total = clip_rows(contributions, clip).sum(axis=0)
    return noisy_total(
        total,
        num_rows=contributions.shape[1],
        clip=clip,
        noise_multiplier=noise_multiplier,
        rng=rng,
    )


def project_to_simplex(values: np.ndarray) -> np.ndarray:
    """Rows made probability vectors again (post-processing): negative parts dropped, then
    normalised; a row with nothing positive left becomes uniform."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    sums = values.sum(axis=1, keepdims=True)
    uniform = np.full_like(values, 1.0 / values.shape[1])
    return np.where(sums > 0, values / np.maximum(sums, 1e-300), uniform).astype(np.float32)


def one_hot_votes(probs: np.ndarray) -> np.ndarray:
    """A client's PATE votes: its argmax per row, one-hot (float32)."""
    probs = np.asarray(probs)
    votes = np.zeros(probs.shape, dtype=np.float32)
    votes[np.arange(len(probs)), probs.argmax(axis=1)] = 1.0
    return votes


@dataclass(frozen=True)
class PateAnswer:
    """Released labels of one round's queries."""

    labels: np.ndarray  # (answered,) noisy-argmax labels
    answered: np.ndarray  # (answered,) row positions within the round's queries
    queries: int


def pate_labels(
    votes: np.ndarray,
    *,
    sigma: float,
    rng: NormalSource,
    threshold: float | None = None,
    sigma_threshold: float | None = None,
) -> PateAnswer:
    """GNMax (``threshold=None``) or confident GNMax over ``(K, N, C)`` one-hot votes.

    Votes are re-derived as one-hot argmaxes, so a client cannot cast more than one vote;
    their sum is answered by :func:`pate_from_histogram`.
    """
    counts = one_hot_votes(np.asarray(votes).reshape(-1, votes.shape[-1])).reshape(votes.shape)
    histogram = counts.sum(axis=0).astype(np.float64)  # (N, C)
    return pate_from_histogram(
        histogram, sigma=sigma, rng=rng, threshold=threshold, sigma_threshold=sigma_threshold
    )


def pate_from_histogram(
    histogram: np.ndarray,
    *,
    sigma: float,
    rng: NormalSource,
    threshold: float | None = None,
    sigma_threshold: float | None = None,
) -> PateAnswer:
    """GNMax (``threshold=None``) or confident GNMax over an ``(N, C)`` vote histogram.

    Parameters
    ----------
    histogram : np.ndarray
        ``(N, C)``: per query, the number of clients voting for each class.
    sigma : float
        Std of the noise added to every count before the argmax (sensitivity ``sqrt(2)``).
    rng : NormalSource
        Where the noise comes from: the threshold checks are drawn first (``(N,)``), then
        the answers (``(answered, C)``).
    threshold : float, optional
        Confident GNMax: answer only the queries whose ``max count + N(0, sigma_threshold^2)``
        reaches it (sensitivity 1).
    sigma_threshold : float, optional
        Std of the check's noise; required with ``threshold``.

    Returns
    -------
    PateAnswer
        The noisy-argmax labels of the answered queries and their positions.
    """
    histogram = np.asarray(histogram, dtype=np.float64)
    if histogram.ndim != 2:
        raise ValueError(f"histogram must be (queries, classes), got shape {histogram.shape}")
    queries = len(histogram)
    rows = np.arange(queries)
    if threshold is not None:
        if sigma_threshold is None:
            raise ValueError("confident GNMax needs sigma_threshold")
        checked = histogram.max(axis=1) + rng.normal(0.0, sigma_threshold, size=queries)
        rows = rows[checked >= threshold]
    noisy = histogram[rows] + rng.normal(0.0, sigma, size=(len(rows), histogram.shape[1]))
    return PateAnswer(labels=noisy.argmax(axis=1), answered=rows, queries=queries)
