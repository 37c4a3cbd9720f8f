"""The federated view of a dataset: server test set, public proxy and per-client partitions.

The types live in :mod:`fedkd.data.federated_types`, the config checks in
:mod:`fedkd.data.data_config` and the seeded splits in :mod:`fedkd.data.splits`; this module
builds (and caches) the view and re-exports their public names.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral
from typing import Any, ParamSpec

import numpy as np

from fedkd.data.data_config import (
    _canonical,
    _check_proxy_classes,
    _check_proxy_dataset,
    _check_proxy_size,
    _split_mapping,
)
from fedkd.data.data_config import validate_data_config as validate_data_config
from fedkd.data.datasets import RawDataset, load_dataset, resolve_dataset_options
from fedkd.data.federated_types import PROXY_SOURCE_SPLIT as PROXY_SOURCE_SPLIT
from fedkd.data.federated_types import ClientData as ClientData
from fedkd.data.federated_types import FederatedData as FederatedData
from fedkd.data.federated_types import local_split as local_split
from fedkd.data.partition import partition_indices
from fedkd.data.splits import (
    _PROXY_CAP_STREAM,
    _PROXY_SPLIT_STREAM,
    _TEST_SPLIT_STREAM,
    _stratified_split,
    _stratified_take,
)
from fedkd.data.splits import proxy_round_indices as proxy_round_indices
from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

MIN_CLIENT_SAMPLES = 2
STD_FLOOR = 1e-8

_P = ParamSpec("_P")


def _select_proxy(
    labels: np.ndarray,
    *,
    classes: tuple[int, ...] | None,
    size: int | None,
    num_classes: int,
    seed: int,
) -> np.ndarray:
    """Indices (sorted int64) of the proxy examples kept after class filtering and capping.

    First keep only labels in ``classes`` (if given), then draw a stratified, seeded
    subsample of ``size`` examples (if given and smaller than what is left).
    """
    kept = np.arange(len(labels), dtype=np.int64)
    if classes is not None:
        out_of_range = [cls for cls in classes if cls >= num_classes]
        if out_of_range:
            raise ConfigError(
                f"data.proxy_classes: class id(s) {out_of_range} out of range; the proxy "
                f"source has {num_classes} classes (valid ids 0..{num_classes - 1})"
            )
        kept = np.flatnonzero(np.isin(labels, classes)).astype(np.int64)
        if len(kept) == 0:
            present = sorted(int(cls) for cls in np.unique(labels))
            raise ConfigError(
                f"data.proxy_classes={list(classes)}: proxy is empty after class filtering "
                f"(the proxy holds classes {present})"
            )
    if size is not None:
        if size > len(kept):
            logger.warning(
                "data.proxy_size=%d exceeds the %d available proxy examples; keeping all",
                size,
                len(kept),
            )
        elif size < len(kept):
            rng = np.random.default_rng([seed, _PROXY_CAP_STREAM])
            _, taken = _stratified_take(labels[kept], size, rng)
            kept = kept[taken]
    return kept


def build_federated_data(
    dataset: Mapping[str, Any],
    partition: Mapping[str, Any],
    *,
    num_clients: int,
    seed: int,
    proxy_fraction: float = 0.2,
    proxy_labeled: bool = False,
    test_fraction: float = 0.2,
    local_test_fraction: float = 0.2,
    proxy_size: int | None = None,
    proxy_classes: Sequence[int] | None = None,
    proxy_dataset: Mapping[str, Any] | None = None,
) -> FederatedData:
    """Load a dataset and split it into server test set, public proxy and client partitions.

    Steps: load; if the source has no test split, take ``test_fraction`` (stratified,
    seeded) as server test set; take ``proxy_fraction`` of the rest (stratified, seeded)
    as the public proxy; partition the remaining training pool into ``num_clients``
    partitions. Tabular data (1-D inputs) is standardised with mean/std fitted on the
    training pool only (std floored at 1e-8) and applied to pool, proxy and test.

    Proxy control (all off by default, which reproduces the plain split exactly):
    with ``proxy_dataset`` the proxy is instead the whole training data of another
    registered dataset and nothing is split off the private data; ``proxy_classes``
    then keeps only proxy examples of the listed classes; ``proxy_size`` finally caps
    the proxy with a stratified, seeded subsample. Filtered or capped-away examples are
    dropped (never added to the training pool), so the client partitions are the same
    as without these options.

    Parameters
    ----------
    dataset : Mapping[str, Any]
        ``{"name": ..., **options}``, see :func:`fedkd.data.load_dataset`.
    partition : Mapping[str, Any]
        ``{"name": ..., **options}``, see :func:`fedkd.data.partition_indices`.
    num_clients : int
        Number of client partitions (>= 1, at most the training-pool size).
    seed : int
        Seed (>= 0) for every split, the proxy cap and the partition: the run's data seed
        (``data_seed``, or ``seed`` when that is null; ``FederationSetup.federation_seed``).
    proxy_fraction : float
        Share of the non-test data used as public proxy, in (0, 1). Still validated, but
        ignored when ``proxy_dataset`` is given.
    proxy_labeled : bool
        Keep the proxy labels (otherwise ``proxy_y`` is None).
    test_fraction : float
        Share held out as server test set when the dataset has no test split, in (0, 1).
    local_test_fraction : float
        Share of each client's partition used as its local test set, in [0, 1).
    proxy_size : int | None
        Cap the proxy at this many examples (>= 1). A larger value keeps the whole proxy
        (with a logged warning). None: no cap.
    proxy_classes : Sequence[int] | None
        Keep only proxy examples whose (true) label is one of these class ids, which must
        lie in ``[0, num_classes)`` of the proxy source. None: all classes.
    proxy_dataset : Mapping[str, Any] | None
        ``{"name": ..., **options}`` of another registered dataset whose training data
        (its test split, if any, is unused) becomes the proxy; its input shape must equal
        the private dataset's. Its labels are kept (``proxy_y``) only if ``proxy_labeled``
        and it has the private dataset's ``num_classes``. None: split the proxy off the
        private data.

    Returns
    -------
    FederatedData
        The federated view.

    Raises
    ------
    ConfigError
        Invalid configuration, more clients than training-pool samples, a client
        partition with fewer than 2 samples, a proxy dataset of another input shape
        (``data.proxy_dataset``), or class ids out of range or an empty proxy after
        class filtering (``data.proxy_classes``).
    """
    validate_data_config(
        dataset,
        partition,
        num_clients=num_clients,
        proxy_fraction=proxy_fraction,
        test_fraction=test_fraction,
        local_test_fraction=local_test_fraction,
        proxy_size=proxy_size,
        proxy_classes=proxy_classes,
        proxy_dataset=proxy_dataset,
    )
    if not isinstance(seed, Integral) or isinstance(seed, bool) or int(seed) < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    num_clients = int(num_clients)
    size_cap = _check_proxy_size("data.proxy_size", proxy_size)
    classes = _check_proxy_classes(proxy_classes)
    proxy_spec = _check_proxy_dataset(proxy_dataset)
    dataset_name, dataset_options = _split_mapping(dataset, "dataset")
    partition_name, partition_options = _split_mapping(partition, "partition")

    raw: RawDataset = load_dataset(dataset_name, **dataset_options)
    proxy_raw: RawDataset | None = None
    if proxy_spec is not None:
        proxy_name, proxy_options = proxy_spec
        if proxy_name == dataset_name and _canonical(
            resolve_dataset_options(proxy_name, proxy_options)
        ) == _canonical(resolve_dataset_options(dataset_name, dataset_options)):
            logger.warning(
                "data.proxy_dataset is the private dataset itself (%r): the proxy will "
                "overlap the clients' private data",
                proxy_name,
            )
        proxy_raw = load_dataset(proxy_name, **proxy_options)
        if tuple(proxy_raw.input_shape) != tuple(raw.input_shape):
            raise ConfigError(
                f"data.proxy_dataset: input shape {tuple(proxy_raw.input_shape)} of proxy "
                f"dataset {proxy_name!r} does not match input shape "
                f"{tuple(raw.input_shape)} of the private dataset {dataset_name!r}"
            )
    if raw.x_test is not None and raw.y_test is not None:
        test_x, test_y = raw.x_test, raw.y_test
        rest_x, rest_y = raw.x, raw.y
    else:
        if len(raw.y) < 3:
            raise ConfigError(f"dataset.name={dataset_name!r} has too few samples to split")
        rest_idx, test_idx = _stratified_split(
            raw.y, float(test_fraction), np.random.default_rng([seed, _TEST_SPLIT_STREAM])
        )
        test_x, test_y = raw.x[test_idx], raw.y[test_idx]
        rest_x, rest_y = raw.x[rest_idx], raw.y[rest_idx]
    if proxy_raw is None:
        if len(rest_y) < 2:
            raise ConfigError(
                f"dataset.name={dataset_name!r}: too few samples ({len(rest_y)}) for a proxy split"
            )
        pool_idx, proxy_idx = _stratified_split(
            rest_y, float(proxy_fraction), np.random.default_rng([seed, _PROXY_SPLIT_STREAM])
        )
        pool_x, pool_y = rest_x[pool_idx], rest_y[pool_idx]
        proxy_x, proxy_true_y = rest_x[proxy_idx], rest_y[proxy_idx]
        proxy_num_classes = raw.num_classes
        proxy_source = PROXY_SOURCE_SPLIT
        keep_labels = bool(proxy_labeled)
    else:
        # The whole non-test data is the training pool; proxy_fraction is not used.
        pool_x, pool_y = rest_x, rest_y
        proxy_x, proxy_true_y = proxy_raw.x, proxy_raw.y
        proxy_num_classes = proxy_raw.num_classes
        proxy_source = proxy_raw.name
        keep_labels = bool(proxy_labeled) and proxy_raw.num_classes == raw.num_classes
        if proxy_labeled and not keep_labels:
            logger.warning(
                "proxy labels dropped (proxy_y is None): proxy dataset %r has %d classes "
                "but the private dataset %r has %d",
                proxy_raw.name,
                proxy_raw.num_classes,
                raw.name,
                raw.num_classes,
            )
    kept = _select_proxy(
        proxy_true_y, classes=classes, size=size_cap, num_classes=proxy_num_classes, seed=seed
    )
    if len(kept) != len(proxy_true_y):
        proxy_x, proxy_true_y = proxy_x[kept], proxy_true_y[kept]

    if num_clients > len(pool_y):
        raise ConfigError(
            f"num_clients ({num_clients}) exceeds the training pool, which has only "
            f"{len(pool_y)} samples; use fewer clients"
        )

    if len(raw.input_shape) == 1:
        mean = pool_x.mean(axis=0, dtype=np.float64)
        std = np.maximum(pool_x.std(axis=0, dtype=np.float64), STD_FLOOR)
        pool_x = ((pool_x - mean) / std).astype(np.float32)
        proxy_x = ((proxy_x - mean) / std).astype(np.float32)
        test_x = ((test_x - mean) / std).astype(np.float32)

    partitions = partition_indices(
        pool_y,
        num_partitions=num_clients,
        name=partition_name,
        seed=seed,
        features=pool_x,  # used by feature_skew only
        **partition_options,
    )
    sizes = [len(part) for part in partitions]
    too_small = [pid for pid, size in enumerate(sizes) if size < MIN_CLIENT_SAMPLES]
    if too_small:
        raise ConfigError(
            f"num_clients={num_clients}: client(s) {too_small} got fewer than "
            f"{MIN_CLIENT_SAMPLES} samples (partition sizes {sizes}); use fewer clients"
            + (" or a larger partition.alpha" if partition_name == "dirichlet" else "")
        )
    logger.info(
        "data: %s, %d records over %d clients (%d..%d each), proxy %d (%s, from %s), test %d",
        raw.name,
        len(pool_y),
        num_clients,
        min(sizes),
        max(sizes),
        len(proxy_true_y),
        "labeled" if keep_labels else "unlabeled",
        proxy_source,
        len(test_y),
    )
    return FederatedData(
        name=raw.name,
        num_classes=raw.num_classes,
        input_shape=tuple(raw.input_shape),
        train_x=np.ascontiguousarray(pool_x, dtype=np.float32),
        train_y=np.ascontiguousarray(pool_y, dtype=np.int64),
        partitions=tuple(partitions),
        proxy_x=np.ascontiguousarray(proxy_x, dtype=np.float32),
        proxy_y=np.ascontiguousarray(proxy_true_y, dtype=np.int64) if keep_labels else None,
        test_x=np.ascontiguousarray(test_x, dtype=np.float32),
        test_y=np.ascontiguousarray(test_y, dtype=np.int64),
        local_test_fraction=float(local_test_fraction),
        seed=seed,
        proxy_source=proxy_source,
        proxy_labels_for_diagnostics=np.array(proxy_true_y, dtype=np.int64),
    )


_CACHE: dict[str, FederatedData] = {}
_CACHE_LOCK = threading.Lock()


def _cache_key(**kwargs: Any) -> str:
    try:
        return json.dumps(_canonical(kwargs), sort_keys=True)
    except TypeError as error:
        raise ConfigError(f"data config is not JSON-serialisable: {error}") from error


def _cached(
    build: Callable[_P, FederatedData], *, name: str, doc: str
) -> Callable[_P, FederatedData]:
    """``build`` behind the process-wide cache, keyed on all its arguments (defaults filled in)."""
    signature = inspect.signature(build)

    @functools.wraps(build)
    def cached(*args: _P.args, **kwargs: _P.kwargs) -> FederatedData:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = _cache_key(**bound.arguments)
        with _CACHE_LOCK:
            result = _CACHE.get(key)
            if result is None:
                result = build(*args, **kwargs)
                _CACHE[key] = result
            return result

    cached.__name__ = cached.__qualname__ = name
    cached.__doc__ = doc
    return cached


get_federated_data = _cached(
    build_federated_data,
    name="get_federated_data",
    doc="""Cached :func:`build_federated_data`: equal arguments return the same object.

    The cache key is the canonical JSON of all arguments (nested mappings sorted), so
    ``{"name": "digits"}`` built twice in one process is built once. Thread-safe.

    Parameters
    ----------
    dataset, partition, num_clients, seed, proxy_fraction, proxy_labeled,
    test_fraction, local_test_fraction, proxy_size, proxy_classes, proxy_dataset
        See :func:`build_federated_data` (same signature).

    Returns
    -------
    FederatedData
        The (shared) federated view; do not modify its arrays in place.
    """,
)


def clear_federated_data_cache() -> None:
    """Drop every cached :class:`FederatedData` (mainly for tests)."""
    with _CACHE_LOCK:
        _CACHE.clear()
