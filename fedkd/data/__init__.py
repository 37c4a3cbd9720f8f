"""Data loading, partitioning and the federated view used by fedkd.

Re-exports the dataset registry: the names in :mod:`fedkd.data.dataset_registry`'s ``__all__``.
"""

from fedkd.data import dataset_registry
from fedkd.data.dataset_registry import *  # noqa: F403
from fedkd.data.datasets import CREDIT_FEATURES, DATASET_NAMES, DATASET_OPTIONS, generate_credit
from fedkd.data.federated import (
    ClientData,
    FederatedData,
    build_federated_data,
    clear_federated_data_cache,
    get_federated_data,
    local_split,
    proxy_round_indices,
    validate_data_config,
)
from fedkd.data.local_files import (
    DataFileError,
    LocalDataSpec,
    load_local_data,
    write_local_data,
)
from fedkd.data.partition import (
    CLASS_ASSIGNMENT_MODES,
    PARTITION_NAMES,
    PARTITION_OPTIONS,
    partition_indices,
    resolve_partition_options,
)

__all__ = [
    "CLASS_ASSIGNMENT_MODES",
    "CREDIT_FEATURES",
    "DATASET_NAMES",
    "DATASET_OPTIONS",
    "PARTITION_NAMES",
    "PARTITION_OPTIONS",
    "ClientData",
    "DataFileError",
    "FederatedData",
    "LocalDataSpec",
    "build_federated_data",
    "clear_federated_data_cache",
    "generate_credit",
    "get_federated_data",
    "load_local_data",
    "local_split",
    "partition_indices",
    "proxy_round_indices",
    "resolve_partition_options",
    "validate_data_config",
    "write_local_data",
    *dataset_registry.__all__,
]
