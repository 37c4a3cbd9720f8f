"""Cheap validation of the ``data`` config (dataset, partition, proxy options); no data loaded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

from fedkd.data.datasets import resolve_dataset_options
from fedkd.data.partition import resolve_partition_options
from fedkd.errors import ConfigError


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
