"""Built-in datasets: their loaders and the one-entry-per-dataset list :data:`BUILTIN_DATASETS`.

Each dataset is a single :class:`~fedkd.data.dataset_registry.DatasetEntry` (name, loader,
options with defaults, option check, input kind, summary) in :data:`BUILTIN_DATASETS`;
the names (:data:`DATASET_NAMES`), allowed options (:data:`DATASET_OPTIONS`), option
validation (:func:`resolve_dataset_options`) and dispatch (:func:`load_dataset`) all
derive from the registry. To add a dataset, write its loader and append one entry.

The ``hf`` dataset loads any Hugging Face dataset (Hub id or local parquet/CSV files)
through flwr-datasets :class:`~flwr_datasets.FederatedDataset`. The ``credit`` dataset is a
seeded *synthetic* credit-default population (see :func:`generate_credit`).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedkd.data.credit import CREDIT_FEATURES, check_credit_options, generate_credit, load_credit
from fedkd.data.dataset_registry import (
    DATASETS,
    REQUIRED,
    DatasetEntry,
    RawDataset,
    dataset_names,
    describe_datasets,
    is_real,
    load_dataset,
    register_dataset,
    require_int,
    require_str,
    resolve_dataset_options,
    unregister_dataset,
)
from fedkd.errors import ConfigError

__all__ = [
    "BUILTIN_DATASETS",
    "CREDIT_FEATURES",
    "DATASETS",
    "DATASET_NAMES",
    "DATASET_OPTIONS",
    "REQUIRED",
    "DatasetEntry",
    "RawDataset",
    "dataset_names",
    "describe_datasets",
    "generate_credit",
    "load_dataset",
    "register_dataset",
    "resolve_dataset_options",
    "unregister_dataset",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- option checks


def _check_mnist1d(options: Mapping[str, Any]) -> None:
    require_int("dataset.num_samples", options["num_samples"], 20)
    require_int("dataset.seed", options["seed"], 0)


def _check_synthetic(options: Mapping[str, Any]) -> None:
    num_classes = require_int("dataset.num_classes", options["num_classes"], 2)
    require_int("dataset.num_features", options["num_features"], 1)
    require_int("dataset.num_samples", options["num_samples"], 2 * num_classes)
    require_int("dataset.seed", options["seed"], 0)
    class_sep = options["class_sep"]
    if not is_real(class_sep) or not float(class_sep) > 0:
        raise ConfigError(f"dataset.class_sep must be a number > 0, got {class_sep!r}")


def _check_hf(options: Mapping[str, Any]) -> None:
    require_str("dataset.path", options["path"])
    require_str("dataset.label", options["label"])
    require_str("dataset.train_split", options["train_split"])
    require_str("dataset.test_split", options["test_split"], optional=True)
    data_files = options["data_files"]
    if data_files is not None and not isinstance(data_files, str | Sequence | Mapping):
        raise ConfigError(
            "dataset.data_files must be None, a path, a list of paths or a "
            f"mapping split -> path(s), got {data_files!r}"
        )
    features = options["features"]
    if features is not None and not (
        isinstance(features, str)
        or (
            isinstance(features, Sequence)
            and len(features) > 0
            and all(isinstance(col, str) for col in features)
        )
    ):
        raise ConfigError(
            "dataset.features must be None (all non-label columns), a column name "
            f"or a non-empty list of column names, got {features!r}"
        )


# --------------------------------------------------------------------------- loaders


def _load_digits() -> RawDataset:
    data = _read_digits_file()
    if data is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, target = bunch.data, bunch.target
    else:
        pixels, target = data[:, :-1], data[:, -1].astype(int)
    x = (np.asarray(pixels, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(target, dtype=np.int64)
    return RawDataset(x=x, y=y, num_classes=10, input_shape=(1, 8, 8), name="digits")


def _read_digits_file() -> np.ndarray | None:
    """scikit-learn's ``digits.csv.gz`` read as ``load_digits`` reads it (``np.loadtxt``),
    without importing scikit-learn (about 1 s: scipy, pandas); None when the file is not
    where scikit-learn 1.x keeps it, and ``load_digits`` is used."""
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, mode="rt", encoding="utf-8") as handle:
                return np.loadtxt(handle, delimiter=",")
    return None


def _load_breast_cancer() -> RawDataset:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return RawDataset(x=x, y=y, num_classes=2, input_shape=(30,), name="breast_cancer")


_MNIST1D_CACHE: dict[tuple[int, int], RawDataset] = {}
_MNIST1D_LOCK = threading.Lock()


def _load_mnist1d(num_samples: int, seed: int) -> RawDataset:
    key = (int(num_samples), int(seed))
    with _MNIST1D_LOCK:
        cached = _MNIST1D_CACHE.get(key)
        if cached is None:
            cached = _generate_mnist1d(*key)
            _MNIST1D_CACHE[key] = cached
    # Hand out copies so callers can never corrupt the cache.
    assert cached.x_test is not None and cached.y_test is not None
    return RawDataset(
        x=cached.x.copy(),
        y=cached.y.copy(),
        num_classes=cached.num_classes,
        input_shape=cached.input_shape,
        name=cached.name,
        x_test=cached.x_test.copy(),
        y_test=cached.y_test.copy(),
    )


def _generate_mnist1d(num_samples: int, seed: int) -> RawDataset:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    # mnist1d seeds and draws from the *global* numpy / python RNGs; isolate that.
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        generated = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    length = int(args.final_seq_length)
    return RawDataset(
        x=np.asarray(generated["x"], dtype=np.float32).reshape(-1, 1, length),
        y=np.asarray(generated["y"], dtype=np.int64),
        num_classes=10,
        input_shape=(1, length),
        name="mnist1d",
        x_test=np.asarray(generated["x_test"], dtype=np.float32).reshape(-1, 1, length),
        y_test=np.asarray(generated["y_test"], dtype=np.int64),
    )


def _load_synthetic(
    num_samples: int, num_features: int, num_classes: int, class_sep: float, seed: int
) -> RawDataset:
    """Gaussian class clusters: centres ~ N(0, class_sep^2 I), samples ~ N(centre, I)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, float(class_sep), size=(num_classes, num_features))
    y = rng.permutation(np.arange(num_samples, dtype=np.int64) % num_classes)
    x = centres[y] + rng.standard_normal((num_samples, num_features))
    return RawDataset(
        x=x.astype(np.float32),
        y=y,
        num_classes=int(num_classes),
        input_shape=(int(num_features),),
        name="synthetic",
    )


# ---- Hugging Face / local files


def _column_to_array(values: list[Any], column: str) -> np.ndarray:
    """Turn one column (list of per-row values) into a numpy array, PIL images included."""
    if values and hasattr(values[0], "getdata") and hasattr(values[0], "size"):  # PIL image
        return np.stack([np.asarray(image) for image in values])
    try:
        return np.asarray(values)
    except ValueError as error:
        raise ConfigError(
            f"dataset.features: column {column!r} has ragged values ({error})"
        ) from error


def _to_image_array(array: np.ndarray, column: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) / (N, C, H, W) -> float32 (N, C, H, W) scaled to [0, 1]."""
    if array.ndim == 3:
        array = array[:, None, :, :]
    elif array.ndim == 4:
        channels_last = array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4)
        if channels_last:
            array = np.transpose(array, (0, 3, 1, 2))
    else:
        raise ConfigError(
            f"dataset.features: image column {column!r} must hold 2-D or 3-D arrays per "
            f"row, got per-row shape {array.shape[1:]}"
        )
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise ConfigError(f"dataset.features: column {column!r} is not numeric")
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        scaled = array.astype(np.float32) / (1.0 if array.dtype == np.bool_ else 255.0)
    else:
        scaled = array.astype(np.float32)
        low, high = float(scaled.min(initial=0.0)), float(scaled.max(initial=0.0))
        if low < 0.0 or high > 1.0:
            scaled = (scaled - low) / max(high - low, 1e-8)
    return np.ascontiguousarray(scaled, dtype=np.float32)


def _split_to_xy(
    split: Any, feature_columns: list[str], label: str, image: bool
) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(split[label])
    if labels.ndim != 1:
        raise ConfigError(f"dataset.label: column {label!r} must hold one scalar per row")
    if image:
        column = feature_columns[0]
        return _to_image_array(_column_to_array(split[column], column), column), labels
    parts: list[np.ndarray] = []
    for column in feature_columns:
        array = _column_to_array(split[column], column)
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
        ):
            raise ConfigError(
                f"dataset.features: column {column!r} is not numeric (dtype {array.dtype})"
            )
        parts.append(array.reshape(len(array), -1).astype(np.float32))
    return np.concatenate(parts, axis=1), labels


def _disable_flwr_datasets_telemetry() -> None:
    """Default flwr-datasets telemetry to off unless the user set ``FLWR_TELEMETRY_ENABLED``.

    flwr-datasets POSTs an event to ``telemetry.flower.ai`` on every first ``load_split``
    unless ``FLWR_TELEMETRY_ENABLED`` is ``"0"``; it reads that variable once, when
    ``flwr_datasets.common.telemetry`` is imported. So set the default before importing it,
    and if it was already imported with the variable unset, bring its flag in line.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    telemetry = sys.modules.get("flwr_datasets.common.telemetry")
    if telemetry is not None and os.environ["FLWR_TELEMETRY_ENABLED"] == "0":
        telemetry.FLWR_TELEMETRY_ENABLED = "0"  # type: ignore[attr-defined]


def _load_hf(
    path: str,
    data_files: str | Sequence[str] | Mapping[str, Any] | None,
    features: str | Sequence[str] | None,
    label: str,
    train_split: str,
    test_split: str | None,
) -> RawDataset:
    """Load any Hugging Face dataset through flwr-datasets ``FederatedDataset``.

    ``path`` and ``data_files`` go to ``FederatedDataset(dataset=path, data_files=...)``,
    which forwards them to ``datasets.load_dataset`` (so local parquet/CSV files work).
    Shuffling is off, so rows keep the source order; the splits are read whole with
    ``load_split`` (the train split gets a one-partition IID partitioner only because
    ``FederatedDataset`` requires one; fedkd partitions the numpy arrays itself later).
    flwr-datasets telemetry defaults to off (``FLWR_TELEMETRY_ENABLED=0``).
    """
    _disable_flwr_datasets_telemetry()
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import IidPartitioner

    kwargs: dict[str, Any] = {}
    if data_files is not None:
        kwargs["data_files"] = (
            dict(data_files)
            if isinstance(data_files, Mapping)
            else data_files
            if isinstance(data_files, str)
            else list(data_files)
        )

    def check_splits(loaded: Any) -> Any:
        # Runs inside FederatedDataset right after datasets.load_dataset (its
        # "preprocessor" hook), so a missing split is reported with the available ones.
        available = sorted(loaded.keys())
        for key, split_name in (("train_split", train_split), ("test_split", test_split)):
            if split_name is not None and split_name not in loaded:
                raise ConfigError(
                    f"dataset.{key}: split {split_name!r} not found; available splits: {available}"
                )
        return loaded

    logger.info(
        "loading Hugging Face dataset %r through flwr-datasets FederatedDataset (data_files=%r)",
        path,
        data_files,
    )
    federated = FederatedDataset(
        dataset=path,
        partitioners={train_split: IidPartitioner(num_partitions=1)},
        preprocessor=check_splits,
        shuffle=False,
        **kwargs,
    )
    try:
        train = federated.load_split(train_split)  # first call runs load_dataset
        test = None if test_split is None else federated.load_split(test_split)
    except ConfigError:
        raise
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"dataset.path: could not load {path!r}: {error}") from error
    columns = list(train.column_names)
    if label not in columns:
        raise ConfigError(f"dataset.label: column {label!r} not found; columns: {columns}")
    if features is None:
        feature_columns = [column for column in columns if column != label]
    elif isinstance(features, str):
        feature_columns = [features]
    else:
        feature_columns = list(features)
    missing = [column for column in feature_columns if column not in columns]
    if missing or not feature_columns or label in feature_columns:
        raise ConfigError(
            f"dataset.features: {features!r} must name existing non-label columns; "
            f"columns: {columns}"
        )
    image = False
    if len(feature_columns) == 1:
        first = train[0][feature_columns[0]] if len(train) else None
        first_array = _column_to_array([first], feature_columns[0]) if first is not None else None
        image = first_array is not None and first_array.ndim in (3, 4)  # (1, H, W[, C])

    x, raw_labels = _split_to_xy(train, feature_columns, label, image)
    x_test: np.ndarray | None = None
    raw_test_labels: np.ndarray | None = None
    if test is not None:
        x_test, raw_test_labels = _split_to_xy(test, feature_columns, label, image)

    all_labels = (
        raw_labels if raw_test_labels is None else np.concatenate([raw_labels, raw_test_labels])
    )
    classes = np.unique(all_labels)
    y = np.searchsorted(classes, raw_labels).astype(np.int64)
    y_test = (
        None
        if raw_test_labels is None
        else np.searchsorted(classes, raw_test_labels).astype(np.int64)
    )
    if len(classes) < 2:
        raise ConfigError(f"dataset.label: column {label!r} has fewer than 2 distinct values")
    logger.info(
        "loaded %r: %d train rows, %s test rows, %d classes, input shape %s",
        path,
        len(y),
        None if y_test is None else len(y_test),
        len(classes),
        x.shape[1:],
    )
    return RawDataset(
        x=x,
        y=y,
        num_classes=len(classes),
        input_shape=tuple(int(dim) for dim in x.shape[1:]),
        name="hf",
        x_test=x_test,
        y_test=y_test,
    )


# --------------------------------------------------------------------------- registry

#: The built-in datasets, one :class:`DatasetEntry` each, registered in this order. Adding a
#: dataset = a loader above (or in its own module) plus one entry here (and, to select it
#: from Hydra, a ``configs/dataset/<name>.yaml``).
BUILTIN_DATASETS: tuple[DatasetEntry, ...] = (
    DatasetEntry(
        name="digits",
        loader=_load_digits,
        input_kind="image",
        summary="scikit-learn 8x8 digits, 1797 images, 10 classes; pixels scaled to [0, 1].",
    ),
    DatasetEntry(
        name="breast_cancer",
        loader=_load_breast_cancer,
        input_kind="tabular",
        summary="scikit-learn Wisconsin breast cancer, 569 rows, 30 raw features, 2 classes.",
    ),
    DatasetEntry(
        name="mnist1d",
        loader=_load_mnist1d,
        input_kind="sequence",
        options={"num_samples": 4000, "seed": 42},
        check=_check_mnist1d,
        summary="MNIST-1D (Greydanus 2020), input (1, 40), 10 classes; num_samples counts "
        "train + test. Generated locally (never downloaded), cached in-process; 80/20 "
        "train/test.",
    ),
    DatasetEntry(
        name="synthetic",
        loader=_load_synthetic,
        input_kind="tabular",
        options={
            "num_samples": 2000,
            "num_features": 20,
            "num_classes": 4,
            "class_sep": 1.5,
            "seed": 0,
        },
        check=_check_synthetic,
        summary="Gaussian clusters with centres drawn from N(0, class_sep^2 I) and "
        "unit-variance noise; balanced classes.",
    ),
    DatasetEntry(
        name="hf",
        loader=_load_hf,
        input_kind="auto",
        options={
            "path": REQUIRED,
            "data_files": None,
            "features": None,
            "label": "label",
            "train_split": "train",
            "test_split": None,
        },
        check=_check_hf,
        summary="Any Hugging Face dataset through flwr-datasets FederatedDataset (unshuffled, "
        "whole splits via load_split; telemetry off unless FLWR_TELEMETRY_ENABLED is set). "
        "path: Hub id or builder name such as 'parquet'/'csv'; features: column list or a "
        "single image column (default: all non-label columns). Labels are mapped to 0..K-1 "
        "by sorted unique value; images become float32 (C, H, W) in [0, 1].",
    ),
    DatasetEntry(
        name="credit",
        loader=load_credit,
        input_kind="tabular",
        options={"num_samples": 5000, "default_rate": 0.22, "noise": 1.0, "seed": 0},
        check=check_credit_options,
        summary="SYNTHETIC (not real) borrowers with the 14 CREDIT_FEATURES, standardised; "
        "label 1 = default; default_rate in (0, 0.5], noise = logistic label-noise scale "
        ">= 0. Generative model: generate_credit.",
    ),
)
for _entry in BUILTIN_DATASETS:
    register_dataset(_entry)

#: Names of the built-in datasets (snapshot at import; :func:`dataset_names` is live).
DATASET_NAMES: tuple[str, ...] = tuple(entry.name for entry in BUILTIN_DATASETS)

#: Allowed options (and their defaults, :data:`REQUIRED` if none) per built-in dataset name.
DATASET_OPTIONS: dict[str, dict[str, Any]] = {
    entry.name: dict(entry.options) for entry in BUILTIN_DATASETS
}
