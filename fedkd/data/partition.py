"""Partitioning of a training pool into client index sets, as flwr-datasets partitions.

Label skew (``dirichlet``, ``pathological``), IID, and feature skew (``feature_skew``: by
the value of one input feature).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np

from fedkd.data.partitioners import (
    continuous_parts,
    dirichlet_parts,
    iid_parts,
    pathological_parts,
)
from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

PARTITION_NAMES: tuple[str, ...] = ("iid", "dirichlet", "pathological", "feature_skew")

#: Allowed options (and their defaults) per partitioner name.
PARTITION_OPTIONS: dict[str, dict[str, Any]] = {
    "iid": {},
    "dirichlet": {"alpha": 0.5, "min_partition_size": 2, "self_balancing": False},
    "pathological": {"classes_per_client": 2, "class_assignment_mode": "first-deterministic"},
    "feature_skew": {"feature": 0, "strictness": 0.7},
}

CLASS_ASSIGNMENT_MODES: tuple[str, ...] = ("first-deterministic", "deterministic", "random")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def resolve_partition_options(
    name: Any,
    options: Mapping[str, Any],
    *,
    num_classes: int | None = None,
    num_features: int | None = None,
) -> dict[str, Any]:
    """Check a partitioner name and its options, and fill in defaults (cheap, no data).

    Parameters
    ----------
    name : str
        One of :data:`PARTITION_NAMES`.
    options : Mapping[str, Any]
        Partitioner options (the ``partition`` config without ``name``).
    num_classes : int | None
        If given, ``classes_per_client`` is also checked against it.
    num_features : int | None
        If given, ``feature`` (feature_skew) is also checked against it (flattened
        feature count).

    Returns
    -------
    dict[str, Any]
        The options with defaults filled in.

    Raises
    ------
    ConfigError
        Unknown name (``partition.name``), unknown option or invalid value
        (``partition.<option>``).
    """
    if not isinstance(name, str) or name not in PARTITION_NAMES:
        raise ConfigError(f"partition.name must be one of {list(PARTITION_NAMES)}, got {name!r}")
    allowed = PARTITION_OPTIONS[name]
    unknown = sorted(str(key) for key in options if key not in allowed)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {['partition.' + key for key in unknown]} for partitioner "
            f"{name!r}; allowed options: {sorted(allowed) or 'none'}"
        )
    resolved = {key: options.get(key, default) for key, default in allowed.items()}
    if name == "dirichlet":
        alpha = resolved["alpha"]
        if not isinstance(alpha, Real) or isinstance(alpha, bool) or not float(alpha) > 0:
            raise ConfigError(f"partition.alpha must be a number > 0, got {alpha!r}")
        resolved["alpha"] = float(alpha)
        size = resolved["min_partition_size"]
        if not _is_int(size) or int(size) < 0:
            raise ConfigError(f"partition.min_partition_size must be an integer >= 0, got {size!r}")
        resolved["min_partition_size"] = int(size)
        if not isinstance(resolved["self_balancing"], bool | np.bool_):
            raise ConfigError(
                "partition.self_balancing must be true or false, "
                f"got {resolved['self_balancing']!r}"
            )
        resolved["self_balancing"] = bool(resolved["self_balancing"])
    elif name == "pathological":
        per_client = resolved["classes_per_client"]
        upper = "num_classes" if num_classes is None else str(num_classes)
        if (
            not _is_int(per_client)
            or int(per_client) < 1
            or (num_classes is not None and int(per_client) > num_classes)
        ):
            raise ConfigError(
                f"partition.classes_per_client must be an integer in [1, {upper}], "
                f"got {per_client!r}"
            )
        resolved["classes_per_client"] = int(per_client)
        mode = resolved["class_assignment_mode"]
        if mode not in CLASS_ASSIGNMENT_MODES:
            raise ConfigError(
                f"partition.class_assignment_mode must be one of "
                f"{list(CLASS_ASSIGNMENT_MODES)}, got {mode!r}"
            )
    elif name == "feature_skew":
        feature = resolved["feature"]
        upper = "num_features - 1" if num_features is None else str(num_features - 1)
        if (
            not _is_int(feature)
            or int(feature) < 0
            or (num_features is not None and int(feature) >= num_features)
        ):
            raise ConfigError(
                f"partition.feature must be an integer in [0, {upper}] (an index into the "
                f"flattened input features), got {feature!r}"
            )
        resolved["feature"] = int(feature)
        strictness = resolved["strictness"]
        if (
            not isinstance(strictness, Real)
            or isinstance(strictness, bool)
            or not 0.0 <= float(strictness) <= 1.0
        ):
            raise ConfigError(
                f"partition.strictness must be a number in [0, 1], got {strictness!r}"
            )
        resolved["strictness"] = float(strictness)
    return resolved


def partition_indices(
    labels: np.ndarray,
    *,
    num_partitions: int,
    name: str,
    seed: int,
    features: np.ndarray | None = None,
    **options: Any,
) -> list[np.ndarray]:
    """Split sample indices into ``num_partitions`` client partitions.

    The flwr-datasets partitioners, as restated on numpy arrays in
    :mod:`fedkd.data.partitioners` (the same partitions, without importing ``datasets``).

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels, shape ``(N,)``.
    num_partitions : int
        Number of partitions (clients), ``1 <= num_partitions <= N``.
    name : str
        ``"iid"``: seeded shuffle, then contiguous equal shards (sizes differ by <= 1).
        ``"dirichlet"``: per-class proportions drawn from ``Dir(alpha)``
        (:class:`~flwr_datasets.partitioner.DirichletPartitioner`).
        ``"pathological"``: each partition gets exactly ``classes_per_client`` classes
        (:class:`~flwr_datasets.partitioner.PathologicalPartitioner`).
        ``"feature_skew"``: by the value of feature ``feature`` of ``features``
        (:class:`~flwr_datasets.partitioner.ContinuousPartitioner`): the standardised
        feature ``z`` is blended with noise, ``b = strictness * z + (1 - strictness) *
        eps`` with ``eps ~ N(0, 1)`` (seeded); rows sorted by ``b`` are cut into
        contiguous shards, client 0 getting the lowest. So ``strictness=1`` sorts by
        the feature, ``0`` is IID; the sort key's correlation with the feature is
        ``s / sqrt(s**2 + (1 - s)**2)`` (0.39 at 0.3, 0.92 at 0.7).
    seed : int
        Seed for all randomness of the partitioning.
    features : np.ndarray | None
        Inputs aligned with ``labels``, shape ``(N, ...)``; required by
        ``feature_skew`` (the feature index counts into each flattened row), ignored
        by the label-based partitioners.
    **options : Any
        dirichlet: ``alpha`` (> 0, default 0.5), ``min_partition_size`` (default 2),
        ``self_balancing`` (default False). pathological: ``classes_per_client``
        (default 2), ``class_assignment_mode`` (``"first-deterministic"`` (default),
        ``"deterministic"`` or ``"random"``). feature_skew: ``feature`` (index into the
        flattened input, default 0), ``strictness`` (in [0, 1], default 0.7).

    Returns
    -------
    list[np.ndarray]
        Per partition, sorted int64 indices into ``labels``. For ``iid``, ``dirichlet``
        and ``feature_skew`` every index is in exactly one partition; ``iid`` and
        ``feature_skew`` partition sizes differ by at most one (no quantity skew). For
        ``pathological`` every index is in at most one partition: samples of a class
        that no partition was assigned (possible when ``num_partitions *
        classes_per_client < num_classes`` or with the random modes) are left out of all
        partitions (a warning is logged).

    Raises
    ------
    ConfigError
        Bad name or option, ``num_partitions`` out of range, or a partitioning that
        cannot be achieved (e.g. Dirichlet ``min_partition_size`` not reachable);
        ``feature_skew`` without ``features``, with ``partition.feature`` out of range,
        or on a constant or non-finite feature column with ``strictness > 0``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"labels must be one-dimensional, got shape {labels.shape}")
    num_samples = len(labels)
    num_classes = len(np.unique(labels))
    flat_features: np.ndarray | None = None
    if features is not None:
        flat_features = np.asarray(features)
        if flat_features.ndim < 1 or len(flat_features) != num_samples:
            raise ConfigError(
                f"features must have one row per label ({num_samples}), got shape "
                f"{flat_features.shape}"
            )
        flat_features = flat_features.reshape(num_samples, -1)
    elif name == "feature_skew":
        raise ConfigError(
            "partition.feature: partition.name='feature_skew' partitions by an input "
            "feature, but no features were given (pass features=... to partition_indices)"
        )
    resolved = resolve_partition_options(
        name,
        options,
        num_classes=num_classes,
        num_features=None if flat_features is None else flat_features.shape[1],
    )
    if not _is_int(num_partitions) or int(num_partitions) < 1:
        raise ConfigError(f"num_partitions must be an integer >= 1, got {num_partitions!r}")
    num_partitions = int(num_partitions)
    if num_partitions > num_samples:
        raise ConfigError(
            f"num_partitions ({num_partitions}) exceeds the number of samples ({num_samples})"
        )
    if not _is_int(seed) or int(seed) < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    seed = int(seed)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = _partition(name, labels, flat_features, num_partitions, seed, resolved)
        except ConfigError:
            raise
        except ValueError as error:
            raise _translate_partition_error(name, resolved, num_partitions, error) from error
    for warning in caught:
        logger.warning("%s partitioner: %s", name, warning.message)
    covered = sum(len(part) for part in result)
    if covered < num_samples:
        logger.warning(
            "%s partitioning left %d of %d samples unassigned (classes given to no client)",
            name,
            num_samples - covered,
            num_samples,
        )
    return result


def _partition(
    name: str,
    labels: np.ndarray,
    flat_features: np.ndarray | None,
    num_partitions: int,
    seed: int,
    resolved: Mapping[str, Any],
) -> list[np.ndarray]:
    """The partitioner ``name`` on checked arguments (:mod:`fedkd.data.partitioners`)."""
    num_samples = len(labels)
    if name == "iid":
        # IidPartitioner shards contiguously without shuffling; shuffle (seeded) first.
        order = np.random.default_rng(seed).permutation(num_samples).astype(np.int64)
        return [np.sort(order[rows]) for rows in iid_parts(num_samples, num_partitions)]
    if name == "feature_skew":
        assert flat_features is not None
        # Contiguous shards of np.array_split: sizes differ by <= 1, so a client can only
        # end up with a single sample when num_partitions > N / 2; the federated view
        # rejects such tiny clients (MIN_CLIENT_SAMPLES).
        column = _skew_feature_column(flat_features, resolved["feature"], resolved["strictness"])
        return continuous_parts(
            column, num_partitions, strictness=resolved["strictness"], seed=seed
        )
    if name == "dirichlet":
        if resolved["min_partition_size"] * num_partitions > num_samples:
            raise ConfigError(
                f"partition.min_partition_size ({resolved['min_partition_size']}) x "
                f"num_clients ({num_partitions}) exceeds the {num_samples} available "
                "samples; use fewer clients or a smaller min_partition_size"
            )
        return dirichlet_parts(
            labels.astype(np.int64),
            num_partitions,
            alpha=resolved["alpha"],
            min_partition_size=resolved["min_partition_size"],
            self_balancing=resolved["self_balancing"],
            seed=seed,
        )
    return pathological_parts(
        labels.astype(np.int64),
        num_partitions,
        classes_per_client=resolved["classes_per_client"],
        class_assignment_mode=resolved["class_assignment_mode"],
        seed=seed,
    )


def _skew_feature_column(features: np.ndarray, feature: int, strictness: float) -> np.ndarray:
    """The column ``ContinuousPartitioner`` sorts by, checked so that it cannot fail late.

    ``ContinuousPartitioner`` standardises the column in float32 and rejects one with
    std < 1e-6 when ``strictness > 0``; with ``strictness == 0`` it would divide by zero
    (NaN scores, i.e. no shuffle at all). The feature carries zero weight then, so any
    non-constant stand-in (the row number) gives the same, IID, partition.
    """
    column = features[:, feature].astype(np.float64)
    if not np.all(np.isfinite(column)):
        raise ConfigError(
            f"partition.feature={feature}: the feature column has NaN or infinite values"
        )
    values = column.astype(np.float32)
    if strictness == 0.0:
        return np.arange(len(values), dtype=np.float32)
    if float(np.std(values)) < 1e-6:
        raise ConfigError(
            f"partition.feature={feature}: the feature column is constant, so it cannot "
            "skew the clients; choose another partition.feature (allowed range "
            f"[0, {features.shape[1] - 1}]) or partition.strictness=0 (IID)"
        )
    return values


def _translate_partition_error(
    name: str, resolved: Mapping[str, Any], num_partitions: int, error: ValueError
) -> ConfigError:
    if name == "dirichlet":
        return ConfigError(
            f"partition.alpha={resolved['alpha']}: Dirichlet partitioning could not give "
            f"every one of {num_partitions} clients at least "
            f"partition.min_partition_size={resolved['min_partition_size']} samples "
            f"({error}); use a larger alpha, fewer clients, a smaller min_partition_size "
            "or self_balancing=true"
        )
    if name == "pathological":
        return ConfigError(
            f"partition.classes_per_client={resolved['classes_per_client']}: pathological "
            f"partitioning into {num_partitions} clients is impossible ({error}); use fewer "
            "clients or fewer classes per client"
        )
    if name == "feature_skew":
        return ConfigError(
            f"partition.feature={resolved['feature']}: feature-skew partitioning into "
            f"{num_partitions} clients failed ({error})"
        )
    return ConfigError(f"partition.name={name!r}: partitioning failed: {error}")
