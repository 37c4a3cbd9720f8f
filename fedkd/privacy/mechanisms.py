"""Mechanisms on what clients share about the public proxy: clipping, Gaussian noise, PATE votes.

Notation: a client releases an ``(N, C)`` matrix (N proxy examples of this round, C classes)
whose rows are its predicted probability vectors.

``logit_dp`` (Gaussian mechanism on clipped predictions)
    Every row is clipped to L2 norm ``clip``, so one client's whole release has L2 norm at
    most ``clip * sqrt(N)``. The L2 sensitivity is

    * central (the server adds noise to the sum over clients, neighbouring = one client
      added or removed): ``clip * sqrt(N)``;
    * local (each client noises its own release, neighbouring = the client's data replaced
      by anything): ``2 * clip * sqrt(N)``.

    The noise is ``N(0, (noise_multiplier * sensitivity)^2)`` per entry, so each release is
    one Gaussian mechanism with that noise multiplier (RDP ``alpha / (2 z^2)``). A single
    training record can change a client's model arbitrarily, so the privacy unit is the
    whole client; that bounds every record too.

``pate`` (Papernot et al., ICLR 2018)
    Clients vote with their argmax (one-hot rows). The server sums the votes per example,
    adds ``N(0, sigma^2)`` to every count and releases the noisy argmax (GNMax). One client
    changing its vote moves two counts by one: L2 sensitivity ``sqrt(2)``. Confident GNMax
    first checks ``max count + N(0, sigma_threshold^2) >= threshold`` (sensitivity 1) and
    answers only the queries that pass. Accounting here is data-independent: every check
    and every answer is charged as a Gaussian mechanism.

Noise comes from :func:`noise_generator`: seeded from the operating system's CSPRNG
(:mod:`secrets`), or, with ``privacy.reproducible_noise=true``, derived from the run seed so
research runs can be repeated. Reproducible noise is predictable to anyone who knows the
seed: never use it in a real deployment.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

#: SeedSequence stream tag of privacy noise (apart from every training stream).
NOISE_STREAM = 0x5EC0DE


def noise_generator(reproducible: bool, seed: int, *stream: int) -> np.random.Generator:
    """The generator for one release's noise.

    ``reproducible=False`` (the default of every mechanism): 128 bits from
    :func:`secrets.randbits` seed a PCG64 generator, independent of the run seed and of
    every other RNG in the run. ``True``: derived from ``(seed, NOISE_STREAM, *stream)``,
    so a rerun with the same seed adds the same noise (unsafe outside research).
    """
    if reproducible:
        return np.random.default_rng(np.random.SeedSequence([seed, NOISE_STREAM, *stream]))
    return np.random.default_rng(secrets.randbits(128))


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


def logit_dp_sensitivity(num_rows: int, clip: float, mode: str) -> float:
    """L2 sensitivity of one client's clipped ``(num_rows, C)`` release (see module doc)."""
    base = clip * math.sqrt(num_rows)
    return 2.0 * base if mode == "local" else base


@dataclass(frozen=True)
class GaussianRelease:
    """What a Gaussian release used: the numbers the run reports next to epsilon."""

    sensitivity: float
    noise_std: float
    noise_multiplier: float


def local_release(
    probs: np.ndarray, *, clip: float, noise_multiplier: float, rng: np.random.Generator
) -> tuple[np.ndarray, GaussianRelease]:
    """A client's locally private release: clipped rows plus Gaussian noise."""
    sensitivity = logit_dp_sensitivity(len(probs), clip, "local")
    std = noise_multiplier * sensitivity
    noisy = clip_rows(probs, clip) + rng.normal(0.0, std, size=np.shape(probs))
    return noisy.astype(np.float32), GaussianRelease(sensitivity, std, noise_multiplier)


def central_sum(
    contributions: np.ndarray, *, clip: float, noise_multiplier: float, rng: np.random.Generator
) -> tuple[np.ndarray, GaussianRelease]:
    """The noisy sum over clients of their clipped ``(K, N, C)`` contributions.

    The server clips again, so the stated sensitivity holds even if a client did not.
    """
    contributions = np.asarray(contributions, dtype=np.float64)
    sensitivity = logit_dp_sensitivity(contributions.shape[1], clip, "central")
    std = noise_multiplier * sensitivity
    total = clip_rows(contributions, clip).sum(axis=0)
    noisy = total + rng.normal(0.0, std, size=total.shape)
    return noisy, GaussianRelease(sensitivity, std, noise_multiplier)


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
    rng: np.random.Generator,
    threshold: float | None = None,
    sigma_threshold: float | None = None,
) -> PateAnswer:
    """GNMax (``threshold=None``) or confident GNMax over ``(K, N, C)`` one-hot votes.

    Votes are re-derived as one-hot argmaxes, so a client cannot cast more than one vote.
    """
    counts = one_hot_votes(np.asarray(votes).reshape(-1, votes.shape[-1])).reshape(votes.shape)
    histogram = counts.sum(axis=0).astype(np.float64)  # (N, C)
    queries = len(histogram)
    rows = np.arange(queries)
    if threshold is not None:
        if sigma_threshold is None:
            raise ValueError("confident GNMax needs sigma_threshold")
        checked = histogram.max(axis=1) + rng.normal(0.0, sigma_threshold, size=queries)
        rows = rows[checked >= threshold]
    noisy = histogram[rows] + rng.normal(0.0, sigma, size=(len(rows), histogram.shape[1]))
    return PateAnswer(labels=noisy.argmax(axis=1), answered=rows, queries=queries)
