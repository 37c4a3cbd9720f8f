"""Seeded random splits: stratified test/proxy splits and the per-round proxy subsample."""

from __future__ import annotations

import numpy as np

from fedkd.data.data_config import _check_proxy_size, _is_int
from fedkd.errors import ConfigError

# Stream ids mixed into the seed so that each random step has its own generator.
_TEST_SPLIT_STREAM = 1
_PROXY_SPLIT_STREAM = 2
_LOCAL_SPLIT_STREAM = 3
_PROXY_CAP_STREAM = 4
_PROXY_ROUND_STREAM = 7


def _stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``arange(len(labels))`` into (rest, taken) with ``taken`` ≈ fraction of N.

    The total taken is ``round(fraction * N)`` (at least 1, at most N - 1), allocated to
    classes proportionally by largest remainder, so per-class shares are preserved.
    """
    num_samples = len(labels)
    total = min(max(1, round(fraction * num_samples)), num_samples - 1)
    return _stratified_take(labels, total, rng)


def _stratified_take(
    labels: np.ndarray, total: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``arange(len(labels))`` into (rest, taken) with exactly ``total`` taken.

    ``total`` (in ``[0, N]``) is allocated to classes proportionally by largest
    remainder (ties broken randomly, seeded), then drawn at random within each class.
    """
    num_samples = len(labels)
    if num_samples == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * (total / num_samples)
    per_class = np.floor(quotas).astype(np.int64)
    remainder = total - int(per_class.sum())
    if remainder > 0:
        # Largest fractional parts first; ties broken randomly (seeded).
        tie_break = rng.random(len(classes))
        order = np.lexsort((tie_break, -(quotas - per_class)))
        per_class[order[:remainder]] += 1
    taken_parts = []
    for cls, take in zip(classes, per_class, strict=True):
        members = np.flatnonzero(labels == cls)
        taken_parts.append(rng.permutation(members)[:take])
    taken = np.sort(np.concatenate(taken_parts)).astype(np.int64)
    mask = np.ones(num_samples, dtype=bool)
    mask[taken] = False
    return np.flatnonzero(mask).astype(np.int64), taken


def proxy_round_indices(
    num_proxy: int, *, size: int | None, seed: int, server_round: int
) -> np.ndarray:
    """Indices of the proxy examples used in one round (per-round proxy subsampling).

    Parameters
    ----------
    num_proxy : int
        Number of proxy examples (>= 0).
    size : int | None
        Examples per round (>= 1, key ``data.proxy_round_size``). None, or a value
        >= ``num_proxy``, selects the whole proxy.
    seed : int
        Experiment seed (>= 0).
    server_round : int
        Round number (>= 0); the draw is seeded by ``(seed, server_round)``, so it is
        reproducible and differs between rounds.

    Returns
    -------
    np.ndarray
        Sorted, unique int64 indices into the proxy, ``min(size, num_proxy)`` of them.

    Raises
    ------
    ConfigError
        ``size`` is not None and not an integer >= 1 (``data.proxy_round_size``), or
        ``seed`` is not an integer >= 0.
    ValueError
        ``num_proxy`` or ``server_round`` is not an integer >= 0.
    """
    round_size = _check_proxy_size("data.proxy_round_size", size)
    if not _is_int(seed) or int(seed) < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if not _is_int(num_proxy) or int(num_proxy) < 0:
        raise ValueError(f"num_proxy must be an integer >= 0, got {num_proxy!r}")
    if not _is_int(server_round) or int(server_round) < 0:
        raise ValueError(f"server_round must be an integer >= 0, got {server_round!r}")
    num_proxy = int(num_proxy)
    if round_size is None or round_size >= num_proxy:
        return np.arange(num_proxy, dtype=np.int64)
    rng = np.random.default_rng([int(seed), _PROXY_ROUND_STREAM, int(server_round)])
    chosen = rng.choice(num_proxy, size=round_size, replace=False)
    return np.sort(chosen).astype(np.int64)
