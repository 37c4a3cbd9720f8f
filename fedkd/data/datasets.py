"""Dataset registry: load a named dataset into plain numpy arrays (:class:`RawDataset`).

The ``hf`` dataset loads any Hugging Face dataset (Hub id or local parquet/CSV files)
through flwr-datasets :class:`~flwr_datasets.FederatedDataset`.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

DATASET_NAMES: tuple[str, ...] = ("digits", "breast_cancer", "mnist1d", "synthetic", "hf")

_REQUIRED = object()  # marker for an option without a default

#: Allowed options (and their defaults) per dataset name.
DATASET_OPTIONS: dict[str, dict[str, Any]] = {
    "digits": {},
    "breast_cancer": {},
    "mnist1d": {"num_samples": 4000, "seed": 42},
    "synthetic": {
        "num_samples": 2000,
        "num_features": 20,
        "num_classes": 4,
        "class_sep": 1.5,
        "seed": 0,
    },
    "hf": {
        "path": _REQUIRED,
        "data_files": None,
        "features": None,
        "label": "label",
        "train_split": "train",
        "test_split": None,
    },
}


@dataclass(frozen=True, eq=False)
class RawDataset:
    """A whole dataset as numpy arrays, before any federated splitting.

    Parameters
    ----------
    x : np.ndarray
        Inputs, float32, shape ``(N, *input_shape)``.
    y : np.ndarray
        Labels, int64 in ``0..num_classes-1``, shape ``(N,)``.
    num_classes : int
        Number of classes.
    input_shape : tuple[int, ...]
        Shape of one input sample.
    name : str
        Registry name of the dataset.
    x_test, y_test : np.ndarray | None
        A predefined test split, if the source has one.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def has_test_split(self) -> bool:
        """Whether the source provides its own test split."""
        return self.x_test is not None and self.y_test is not None


# --------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _require_int(key: str, value: Any, minimum: int) -> int:
    if not _is_int(value) or int(value) < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _require_str(key: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        allowed = "a non-empty string or None" if optional else "a non-empty string"
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")
    return value


def resolve_dataset_options(name: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check a dataset name and its options, and fill in defaults (no loading).

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`.
    options : Mapping[str, Any]
        Dataset options (everything in the ``dataset`` config except ``name``).

    Returns
    -------
    dict[str, Any]
        The options with defaults filled in.

    Raises
    ------
    ConfigError
        Unknown name (key ``dataset.name``), unknown option, missing required option
        or an option value out of range (key ``dataset.<option>``).
    """
    if not isinstance(name, str) or name not in DATASET_NAMES:
        raise ConfigError(f"dataset.name must be one of {list(DATASET_NAMES)}, got {name!r}")
    allowed = DATASET_OPTIONS[name]
    unknown = sorted(str(key) for key in options if key not in allowed)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {['dataset.' + key for key in unknown]} for dataset "
            f"{name!r}; allowed options: {sorted(allowed) or 'none'}"
        )
    resolved: dict[str, Any] = {}
    for key, default in allowed.items():
        if key in options:
            resolved[key] = options[key]
        elif default is _REQUIRED:
            raise ConfigError(f"dataset.{key} is required for dataset {name!r}")
        else:
            resolved[key] = default

    if name == "mnist1d":
        _require_int("dataset.num_samples", resolved["num_samples"], 20)
        _require_int("dataset.seed", resolved["seed"], 0)
    elif name == "synthetic":
        num_classes = _require_int("dataset.num_classes", resolved["num_classes"], 2)
        _require_int("dataset.num_features", resolved["num_features"], 1)
        _require_int("dataset.num_samples", resolved["num_samples"], 2 * num_classes)
        _require_int("dataset.seed", resolved["seed"], 0)
        class_sep = resolved["class_sep"]
        if not _is_real(class_sep) or not float(class_sep) > 0:
            raise ConfigError(f"dataset.class_sep must be a number > 0, got {class_sep!r}")
    elif name == "hf":
        _require_str("dataset.path", resolved["path"])
        _require_str("dataset.label", resolved["label"])
        _require_str("dataset.train_split", resolved["train_split"])
        _require_str("dataset.test_split", resolved["test_split"], optional=True)
        data_files = resolved["data_files"]
        if data_files is not None and not isinstance(data_files, str | Sequence | Mapping):
            raise ConfigError(
                "dataset.data_files must be None, a path, a list of paths or a "
                f"mapping split -> path(s), got {data_files!r}"
            )
        features = resolved["features"]
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
    return resolved


# --------------------------------------------------------------------------- loaders


def _load_digits() -> RawDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    return RawDataset(x=x, y=y, num_classes=10, input_shape=(1, 8, 8), name="digits")


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


_LOADERS: dict[str, Callable[..., RawDataset]] = {
    "digits": _load_digits,
    "breast_cancer": _load_breast_cancer,
    "mnist1d": _load_mnist1d,
    "synthetic": _load_synthetic,
    "hf": _load_hf,
}


def load_dataset(name: str, **options: Any) -> RawDataset:
    """Load a registered dataset into numpy arrays.

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`: ``"digits"``, ``"breast_cancer"``, ``"mnist1d"``,
        ``"synthetic"`` or ``"hf"``.
    **options : Any
        Dataset-specific options, see :data:`DATASET_OPTIONS`:

        - ``mnist1d``: ``num_samples`` (train + test, default 4000), ``seed`` (42).
          Generated locally (never downloaded), cached in-process; 80/20 train/test.
        - ``synthetic``: ``num_samples`` (2000), ``num_features`` (20), ``num_classes`` (4),
          ``class_sep`` (1.5), ``seed`` (0). Gaussian clusters with centres drawn from
          ``N(0, class_sep^2 I)`` and unit-variance noise; balanced classes.
        - ``hf``: loaded through flwr-datasets ``FederatedDataset`` (unshuffled, whole
          splits via ``load_split``; telemetry off unless ``FLWR_TELEMETRY_ENABLED`` is set).
          ``path`` (Hub id or builder name such as ``"parquet"``/``"csv"``),
          ``data_files``, ``features`` (column list or a single image column; default:
          all non-label columns), ``label`` (``"label"``), ``train_split`` (``"train"``),
          ``test_split`` (None). Labels are mapped to ``0..K-1`` by sorted unique value;
          images become float32 ``(C, H, W)`` in [0, 1].

    Returns
    -------
    RawDataset
        float32 inputs, int64 labels and metadata.

    Raises
    ------
    ConfigError
        Unknown name (``dataset.name``), unknown/invalid option (``dataset.<option>``).
    """
    resolved = resolve_dataset_options(name, options)
    return _LOADERS[name](**resolved)
