"""Label-based partitioning of a training pool into client index sets via flwr-datasets."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np

from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

PARTITION_NAMES: tuple[str, ...] = ("iid", "dirichlet", "pathological")

#: Allowed options (and their defaults) per partitioner name.
PARTITION_OPTIONS: dict[str, dict[str, Any]] = {
    "iid": {},
    "dirichlet": {"alpha": 0.5, "min_partition_size": 2, "self_balancing": False},
    "pathological": {"classes_per_client": 2, "class_assignment_mode": "first-deterministic"},
}

CLASS_ASSIGNMENT_MODES: tuple[str, ...] = ("first-deterministic", "deterministic", "random")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def resolve_partition_options(
    name: Any, options: Mapping[str, Any], *, num_classes: int | None = None
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
    return resolved


def partition_indices(
    labels: np.ndarray, *, num_partitions: int, name: str, seed: int, **options: Any
) -> list[np.ndarray]:
    """Split sample indices into ``num_partitions`` client partitions by label.

    Uses the flwr-datasets partitioners on a ``datasets.Dataset`` holding the labels and
    the original row index, and reads back the index column of each partition.

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
    seed : int
        Seed for all randomness of the partitioning.
    **options : Any
        dirichlet: ``alpha`` (> 0, default 0.5), ``min_partition_size`` (default 2),
        ``self_balancing`` (default False). pathological: ``classes_per_client``
        (default 2), ``class_assignment_mode`` (``"first-deterministic"`` (default),
        ``"deterministic"`` or ``"random"``).

    Returns
    -------
    list[np.ndarray]
        Per partition, sorted int64 indices into ``labels``. For ``iid`` and
        ``dirichlet`` every index is in exactly one partition. For ``pathological`` every
        index is in at most one partition: samples of a class that no partition was
        assigned (possible when ``num_partitions * classes_per_client < num_classes`` or
        with the random modes) are left out of all partitions (a warning is logged).

    Raises
    ------
    ConfigError
        Bad name or option, ``num_partitions`` out of range, or a partitioning that
        cannot be achieved (e.g. Dirichlet ``min_partition_size`` not reachable).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"labels must be one-dimensional, got shape {labels.shape}")
    num_samples = len(labels)
    num_classes = len(np.unique(labels))
    resolved = resolve_partition_options(name, options, num_classes=num_classes)
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

    import datasets as hf_datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    order = np.arange(num_samples, dtype=np.int64)
    if name == "iid":
        # IidPartitioner shards contiguously without shuffling; shuffle (seeded) first.
        order = np.random.default_rng(seed).permutation(num_samples).astype(np.int64)
    table = hf_datasets.Dataset.from_dict({"label": labels[order].astype(np.int64), "idx": order})

    partitioner: Any
    if name == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif name == "dirichlet":
        if resolved["min_partition_size"] * num_partitions > num_samples:
            raise ConfigError(
                f"partition.min_partition_size ({resolved['min_partition_size']}) x "
                f"num_clients ({num_partitions}) exceeds the {num_samples} available "
                "samples; use fewer clients or a smaller min_partition_size"
            )
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=resolved["alpha"],
            min_partition_size=resolved["min_partition_size"],
            self_balancing=resolved["self_balancing"],
            shuffle=True,
            seed=seed,
        )
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=resolved["classes_per_client"],
            class_assignment_mode=resolved["class_assignment_mode"],
            shuffle=True,
            seed=seed,
        )
    partitioner.dataset = table

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = [
                np.sort(np.asarray(partitioner.load_partition(pid)["idx"], dtype=np.int64))
                for pid in range(num_partitions)
            ]
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
    return ConfigError(f"partition.name={name!r}: partitioning failed: {error}")
