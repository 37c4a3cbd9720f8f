"""The federated view of a dataset: server test set, public proxy and per-client partitions."""

from __future__ import annotations

import json
import logging
import operator
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from fedkd.data.datasets import RawDataset, load_dataset, resolve_dataset_options
from fedkd.data.partition import partition_indices, resolve_partition_options
from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

MIN_CLIENT_SAMPLES = 2
STD_FLOOR = 1e-8

# Stream ids mixed into the seed so that each random step has its own generator.
_TEST_SPLIT_STREAM = 1
_PROXY_SPLIT_STREAM = 2
_LOCAL_SPLIT_STREAM = 3
_PROXY_CAP_STREAM = 4
_PROXY_ROUND_STREAM = 7

#: Value of :attr:`FederatedData.proxy_source` when the proxy is split off the private data.
PROXY_SOURCE_SPLIT = "split"


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's local data: its partition split into local train and test parts.

    Parameters
    ----------
    train_x, train_y : np.ndarray
        Local training inputs (float32) and labels (int64).
    test_x, test_y : np.ndarray
        Local test inputs and labels (may be empty when ``local_test_fraction == 0``).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass(frozen=True, eq=False)
class FederatedData:
    """A dataset split for federated distillation.

    The arrays are shared by every user of a cached instance (see
    :func:`get_federated_data`): treat them as read-only.

    Parameters
    ----------
    name : str
        Dataset name.
    num_classes : int
        Number of classes.
    input_shape : tuple[int, ...]
        Shape of one input sample.
    train_x, train_y : np.ndarray
        The training pool the clients are partitioned from.
    partitions : tuple[np.ndarray, ...]
        Per client, sorted int64 indices into ``train_x``.
    proxy_x : np.ndarray
        Public proxy inputs (for distillation).
    proxy_y : np.ndarray | None
        Proxy labels, or None when the proxy is unlabeled. Always in the private label
        space ``0..num_classes-1`` when present.
    test_x, test_y : np.ndarray
        Held-out server test set.
    local_test_fraction : float
        Fraction of each client's partition used as its local test set.
    seed : int
        Seed all splits were derived from.
    proxy_source : str
        Where the proxy comes from: ``"split"`` (split off the private data) or the
        registry name of the other dataset it was drawn from (``proxy_dataset``).
    proxy_labels_for_diagnostics : np.ndarray | None
        The true proxy labels (int64, aligned with ``proxy_x``) whenever the source has
        them, even when the proxy is unlabeled for training (``proxy_y`` is None). For
        reporting only (e.g. class overlap between proxy and private data):
        **strategies must not train on it** -- use ``proxy_y``. When the proxy comes from
        another dataset with a different ``num_classes`` these are that dataset's class
        ids, not private ones.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    train_x: np.ndarray
    train_y: np.ndarray
    partitions: tuple[np.ndarray, ...]
    proxy_x: np.ndarray
    proxy_y: np.ndarray | None
    test_x: np.ndarray
    test_y: np.ndarray
    local_test_fraction: float
    seed: int
    proxy_source: str = PROXY_SOURCE_SPLIT
    proxy_labels_for_diagnostics: np.ndarray | None = None

    @property
    def num_clients(self) -> int:
        """Number of client partitions."""
        return len(self.partitions)

    def client_data(self, partition_id: int) -> ClientData:
        """Split one client's partition into local train and test sets.

        The split is a seeded shuffle (seed ``(seed, partition_id)``), not stratified.
        With ``local_test_fraction > 0`` the test part has at least one sample and the
        train part keeps at least one sample.

        Parameters
        ----------
        partition_id : int
            Client index in ``[0, num_clients)``.

        Returns
        -------
        ClientData
            Fresh arrays (copies), safe to modify.

        Raises
        ------
        IndexError
            If ``partition_id`` is out of range.
        TypeError
            If ``partition_id`` is not an integer.
        """
        if isinstance(partition_id, bool):
            raise TypeError(f"partition_id must be an integer, got {partition_id!r}")
        pid = operator.index(partition_id)
        if not 0 <= pid < self.num_clients:
            raise IndexError(
                f"partition_id {pid} out of range: valid ids are 0..{self.num_clients - 1}"
            )
        indices = self.partitions[pid]
        return local_split(
            self.train_x[indices],
            self.train_y[indices],
            fraction=self.local_test_fraction,
            seed=self.seed,
            partition_id=pid,
        )

    def label_histograms(self) -> np.ndarray:
        """Per-client label counts over each client's full partition.

        Returns
        -------
        np.ndarray
            int64 array of shape ``(num_clients, num_classes)``.
        """
        return (
            np.stack(
                [
                    np.bincount(self.train_y[part], minlength=self.num_classes).astype(np.int64)
                    for part in self.partitions
                ]
            )
            if self.partitions
            else np.zeros((0, self.num_classes), dtype=np.int64)
        )


def local_split(
    x: np.ndarray, y: np.ndarray, *, fraction: float, seed: int, partition_id: int
) -> ClientData:
    """A client's records split into local train and test parts, seeded by
    ``(seed, partition_id)``: the split of a simulated partition, and of a deployed client's
    own data file (``fedkd.data.local_files``)."""
    rng = np.random.default_rng([seed, _LOCAL_SPLIT_STREAM, partition_id])
    order = rng.permutation(len(y))
    num_test = _local_test_count(len(y), fraction)
    test, train = order[:num_test], order[num_test:]
    return ClientData(train_x=x[train], train_y=y[train], test_x=x[test], test_y=y[test])


def _local_test_count(num_samples: int, fraction: float) -> int:
    if fraction <= 0 or num_samples == 0:
        return 0
    wanted = max(1, round(fraction * num_samples))
    return min(wanted, num_samples - 1)


def _check_open_unit(key: str, value: Any) -> float:
    if not isinstance(value, Real) or isinstance(value, bool) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{key} must be a number in the open interval (0, 1), got {value!r}")
    return float(value)


def _split_mapping(config: Any, key: str) -> tuple[Any, dict[str, Any]]:
    if not isinstance(config, Mapping):
        raise ConfigError(f"{key} must be a mapping with a 'name' entry, got {config!r}")
    if "name" not in config:
        raise ConfigError(f"{key}.name is required")
    options = {str(k): v for k, v in config.items() if k != "name"}
    return config["name"], options


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_proxy_size(key: str, value: Any) -> int | None:
    """``None`` or an integer >= 1 (``key`` names it in the error)."""
    if value is None:
        return None
    if not _is_int(value) or int(value) < 1:
        raise ConfigError(f"{key} must be an integer >= 1 or None, got {value!r}")
    return int(value)


def _check_proxy_classes(value: Any) -> tuple[int, ...] | None:
    """``None`` or a non-empty sequence of class ids >= 0; returned sorted and unique."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.ndim == 1 else value
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise ConfigError(f"data.proxy_classes must be None or a list of class ids, got {value!r}")
    bad = [item for item in value if not _is_int(item) or int(item) < 0]
    if bad:
        raise ConfigError(
            f"data.proxy_classes must hold integer class ids >= 0, got {list(value)!r} "
            f"(invalid: {bad!r})"
        )
    if len(value) == 0:
        raise ConfigError(
            "data.proxy_classes must be None (all classes) or a non-empty list of class "
            "ids; an empty list would leave the proxy empty"
        )
    return tuple(sorted({int(item) for item in value}))


def _check_proxy_dataset(value: Any) -> tuple[str, dict[str, Any]] | None:
    """``None`` or a ``{"name": ..., **options}`` mapping accepted by the dataset registry."""
    if value is None:
        return None
    name, options = _split_mapping(value, "data.proxy_dataset")
    try:
        resolve_dataset_options(name, options)
    except ConfigError as error:
        raise ConfigError(f"data.proxy_dataset: {error}") from error
    return str(name), options


def validate_data_config(
    dataset: Mapping[str, Any],
    partition: Mapping[str, Any],
    *,
    num_clients: int,
    proxy_fraction: float,
    test_fraction: float,
    local_test_fraction: float,
    proxy_size: int | None = None,
    proxy_classes: Sequence[int] | None = None,
    proxy_dataset: Mapping[str, Any] | None = None,
) -> None:
    """Cheap validation of a data configuration (no data is loaded).

    Parameters
    ----------
    dataset : Mapping[str, Any]
        ``{"name": <dataset name>, **options}``.
    partition : Mapping[str, Any]
        ``{"name": <partitioner name>, **options}``.
    num_clients : int
        Must be >= 1.
    proxy_fraction, test_fraction : float
        Must lie in the open interval (0, 1).
    local_test_fraction : float
        Must lie in [0, 1).
    proxy_size : int | None
        None or an integer >= 1 (key ``data.proxy_size``).
    proxy_classes : Sequence[int] | None
        None or a non-empty list of integer class ids >= 0 (key ``data.proxy_classes``;
        the upper bound ``num_classes`` is only checked once the data is loaded).
    proxy_dataset : Mapping[str, Any] | None
        None or ``{"name": <dataset name>, **options}`` with a registered name and valid
        options (key ``data.proxy_dataset``; shapes are only checked once loaded).

    Raises
    ------
    ConfigError
        With a message naming the offending key and the allowed values.
    """
    dataset_name, dataset_options = _split_mapping(dataset, "dataset")
    resolve_dataset_options(dataset_name, dataset_options)
    partition_name, partition_options = _split_mapping(partition, "partition")
    resolve_partition_options(partition_name, partition_options)
    if (
        not isinstance(num_clients, Integral)
        or isinstance(num_clients, bool)
        or int(num_clients) < 1
    ):
        raise ConfigError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    _check_open_unit("proxy_fraction", proxy_fraction)
    _check_open_unit("test_fraction", test_fraction)
    if (
        not isinstance(local_test_fraction, Real)
        or isinstance(local_test_fraction, bool)
        or not 0.0 <= float(local_test_fraction) < 1.0
    ):
        raise ConfigError(
            f"local_test_fraction must be a number in [0, 1), got {local_test_fraction!r}"
        )
    _check_proxy_size("data.proxy_size", proxy_size)
    _check_proxy_classes(proxy_classes)
    _check_proxy_dataset(proxy_dataset)


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
        Seed (>= 0) for every split.
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
        "federated %s: pool %d, proxy %d (%s, from %s), test %d, %d clients (sizes %d..%d)",
        raw.name,
        len(pool_y),
        len(proxy_true_y),
        "labeled" if keep_labels else "unlabeled",
        proxy_source,
        len(test_y),
        num_clients,
        min(sizes),
        max(sizes),
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


_CACHE: dict[str, FederatedData] = {}
_CACHE_LOCK = threading.Lock()


def _canonical(value: Any) -> Any:
    """Convert config values to JSON-able canonical form (mappings sorted, numpy unboxed)."""
    if isinstance(value, Mapping):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _cache_key(**kwargs: Any) -> str:
    try:
        return json.dumps(_canonical(kwargs), sort_keys=True)
    except TypeError as error:
        raise ConfigError(f"data config is not JSON-serialisable: {error}") from error


def get_federated_data(
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
    """Cached :func:`build_federated_data`: equal arguments return the same object.

    The cache key is the canonical JSON of all arguments (nested mappings sorted), so
    ``{"name": "digits"}`` built twice in one process is built once. Thread-safe.

    Parameters
    ----------
    dataset, partition, num_clients, seed, proxy_fraction, proxy_labeled,
    test_fraction, local_test_fraction, proxy_size, proxy_classes, proxy_dataset
        See :func:`build_federated_data`.

    Returns
    -------
    FederatedData
        The (shared) federated view; do not modify its arrays in place.
    """
    key = _cache_key(
        dataset=dataset,
        partition=partition,
        num_clients=num_clients,
        seed=seed,
        proxy_fraction=proxy_fraction,
        proxy_labeled=proxy_labeled,
        test_fraction=test_fraction,
        local_test_fraction=local_test_fraction,
        proxy_size=proxy_size,
        proxy_classes=proxy_classes,
        proxy_dataset=proxy_dataset,
    )
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            cached = build_federated_data(
                dataset,
                partition,
                num_clients=num_clients,
                seed=seed,
                proxy_fraction=proxy_fraction,
                proxy_labeled=proxy_labeled,
                test_fraction=test_fraction,
                local_test_fraction=local_test_fraction,
                proxy_size=proxy_size,
                proxy_classes=proxy_classes,
                proxy_dataset=proxy_dataset,
            )
            _CACHE[key] = cached
        return cached


def clear_federated_data_cache() -> None:
    """Drop every cached :class:`FederatedData` (mainly for tests)."""
    with _CACHE_LOCK:
        _CACHE.clear()
