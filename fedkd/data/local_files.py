"""A client's own private data, read from a local file named in the SuperNode's node config.

In a real deployment every Flower SuperNode (one per hospital, bank, ...) brings its own
data. The client operator declares the file and its schema in the node config; the values
are strings unless noted:

==================  ==========================================================================
``data-file``       Path of the file (required; ``~`` is expanded).
``data-format``     ``csv``, ``npz`` or ``parquet``; inferred from the extension if absent
                    (``.csv``, ``.npz``, ``.parquet`` / ``.pq``).
``label-column``    csv/parquet: the label column (default ``label``); npz: the label
                    array (default ``y``).
``feature-columns`` csv/parquet: the feature columns in order, comma separated (default:
                    every column but the label); npz: the input array(s) (default ``x``).
``image-shape``     Reshape each row's feature values, e.g. ``8x8`` or ``1x28x28``.
``label-map``       String labels to class ids, e.g. ``benign:0,malignant:1``; without it
                    the labels must be integers.
==================  ==========================================================================

One example per format::

    flower-supernode ... --node-config "data-file='/data/hospital_a.csv' \\
        label-column='diagnosis' label-map='benign:0,malignant:1'"
    flower-supernode ... --node-config "data-file='/data/site_3.npz' image-shape='1x8x8'"
    flower-supernode ... --node-config "data-file='/data/bank_b.parquet' \\
        feature-columns='age,income,utilization' label-column='default'"

A CSV file has one header row of column names and one row per sample; an npz archive holds
one array of inputs (first axis = samples) and one 1-D array of labels; a parquet file has
one numeric column per feature. :func:`load_local_data` checks all of it and returns
``float32`` inputs and ``int64`` class ids; every problem raises :class:`DataFileError`
naming the file and the column, array or key concerned.

In simulation the node config has none of these keys: :meth:`LocalDataSpec.from_node_config`
returns ``None`` and the client falls back to its ``partition-id`` share of the run's dataset.
:func:`write_local_data` writes the same formats (tests; one file per SuperNode for a local
deployment).
"""

from __future__ import annotations

import csv
import logging
import math
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

#: The node-config keys read by :meth:`LocalDataSpec.from_node_config`.
NODE_KEYS = (
    "data-file",
    "data-format",
    "label-column",
    "feature-columns",
    "image-shape",
    "label-map",
)

#: Supported values of ``data-format``.
FORMATS: tuple[str, ...] = ("csv", "npz", "parquet")

_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".npz": "npz",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_DEFAULT_LABEL = "label"
_NPZ_DEFAULT_LABEL = "y"
_NPZ_DEFAULT_FEATURES = ("x",)
_IMAGE_SHAPE_PATTERN = re.compile(r"\d+(?:x\d+)*")
_PREVIEW_LIMIT = 20


class DataFileError(ConfigError):
    """A client's local data file is missing, unreadable or does not match its declared schema.

    The message names the file, and the column, array or node-config key concerned.
    """


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class LocalDataSpec:
    """Where a client's local data file is and how to read it.

    Parameters
    ----------
    path : Path
        The data file.
    format : str
        One of :data:`FORMATS`.
    label_column : str, default "label"
        csv/parquet: the label column. npz: the label array; the default ``"label"`` also
        matches an array named ``"y"`` (what :func:`write_local_data` writes).
    feature_columns : tuple[str, ...] | None, default None
        csv/parquet: the feature columns, in order; ``None`` means every column but the
        label. npz: the input array names (several are flattened and concatenated);
        ``None`` means ``("x",)``.
    image_shape : tuple[int, ...] | None, default None
        Reshape each row's feature values to this shape; the product must equal the
        number of feature values per row.
    label_map : dict[str, int] | None, default None
        String labels to class ids. Without it the labels must be integers.

    Raises
    ------
    DataFileError
        An unknown format or a malformed field (named by its node-config key).
    """

    path: Path
    format: str
    label_column: str = _DEFAULT_LABEL
    feature_columns: tuple[str, ...] | None = None
    image_shape: tuple[int, ...] | None = None
    label_map: dict[str, int] | None = None

    def __post_init__(self) -> None:
        # Accept str paths and list-valued fields from Python callers; store canonical types.
        object.__setattr__(self, "path", Path(self.path))
        where = _file(self.path)
        if self.format not in FORMATS:
            raise DataFileError(
                f"{where}: data-format must be one of {list(FORMATS)}, got {self.format!r}"
            )
        if not isinstance(self.label_column, str) or not self.label_column:
            raise DataFileError(
                f"{where}: label-column must be a non-empty string, got {self.label_column!r}"
            )
        if self.feature_columns is not None:
            columns = tuple(self.feature_columns)
            if not columns or not all(isinstance(name, str) and name for name in columns):
                raise DataFileError(
                    f"{where}: feature-columns must be a non-empty list of names, "
                    f"got {self.feature_columns!r}"
                )
            duplicates = sorted({name for name in columns if columns.count(name) > 1})
            if duplicates:
                raise DataFileError(f"{where}: feature-columns lists {duplicates} twice")
            if self.label_column in columns:
                raise DataFileError(
                    f"{where}: label-column {self.label_column!r} is also listed in feature-columns"
                )
            object.__setattr__(self, "feature_columns", columns)
        if self.image_shape is not None:
            shape = tuple(self.image_shape)
            if not shape or not all(_is_int(dim) and dim > 0 for dim in shape):
                raise DataFileError(
                    f"{where}: image-shape must be positive integers like (1, 28, 28), "
                    f"got {self.image_shape!r}"
                )
            object.__setattr__(self, "image_shape", tuple(int(dim) for dim in shape))
        if self.label_map is not None:
            label_map = dict(self.label_map)
            valid = all(
                isinstance(name, str) and name and _is_int(class_id) and class_id >= 0
                for name, class_id in label_map.items()
            )
            if not label_map or not valid:
                raise DataFileError(
                    f"{where}: label-map must map label strings to class ids >= 0, "
                    f"got {self.label_map!r}"
                )
            object.__setattr__(self, "label_map", label_map)

    @staticmethod
    def from_node_config(node_config: Mapping[str, Any]) -> LocalDataSpec | None:
        """Read the spec from a SuperNode's node config (keys in :data:`NODE_KEYS`).

        Parameters
        ----------
        node_config : Mapping[str, Any]
            The node config (``context.node_config`` in a ClientApp).

        Returns
        -------
        LocalDataSpec | None
            ``None`` when ``data-file`` is absent (simulation: use ``partition-id``).

        Raises
        ------
        DataFileError
            A value of the wrong type or format (the message names the key), an unknown
            or uninferable format, or schema keys given without ``data-file``.
        """
        if "data-file" not in node_config:
            stray = [key for key in NODE_KEYS if key in node_config]
            if stray:
                raise DataFileError(
                    f"node config sets {stray} but not data-file; add data-file='<path>' "
                    "or drop them"
                )
            return None
        data_file = node_config["data-file"]
        if not isinstance(data_file, str) or not data_file.strip():
            raise DataFileError(
                f"node config key 'data-file' must be a non-empty path, got {data_file!r}"
            )
        path = Path(data_file.strip()).expanduser()
        where = _file(path)

        def text(key: str) -> str | None:
            value = node_config.get(key)
            if value is None:
                return None
            if not isinstance(value, str) or not value.strip():
                raise DataFileError(
                    f"{where}: node config key {key!r} must be a non-empty string, got {value!r}"
                )
            return value.strip()

        data_format = text("data-format")
        data_format = data_format.lower() if data_format is not None else _infer_format(path)
        label_column = text("label-column")
        if label_column is None:
            label_column = _NPZ_DEFAULT_LABEL if data_format == "npz" else _DEFAULT_LABEL
        feature_columns = _parse_feature_columns(text("feature-columns"), where)
        image_shape = _parse_image_shape(node_config.get("image-shape"), where)
        label_map = _parse_label_map(text("label-map"), where)
        return LocalDataSpec(
            path=path,
            format=data_format,
            label_column=label_column,
            feature_columns=feature_columns,
            image_shape=image_shape,
            label_map=label_map,
        )


def _file(path: Path | str) -> str:
    """How messages name the file."""
    return f"data-file '{path}'"


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _preview(names: Sequence[Any]) -> str:
    """A list for a message, cut short when long."""
    shown = [str(name) for name in names[:_PREVIEW_LIMIT]]
    more = len(names) - len(shown)
    return f"{shown}" + (f" (and {more} more)" if more > 0 else "")


def _infer_format(path: Path) -> str:
    data_format = _EXTENSIONS.get(path.suffix.lower())
    if data_format is None:
        raise DataFileError(
            f"{_file(path)}: cannot infer the format from the extension {path.suffix!r} "
            f"(known: {sorted(_EXTENSIONS)}); set data-format to one of {list(FORMATS)}"
        )
    return data_format


def _parse_feature_columns(value: str | None, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    columns = tuple(name.strip() for name in value.split(","))
    if not all(columns):
        raise DataFileError(
            f"{where}: node config key 'feature-columns' must be comma-separated names "
            f"like 'age,income', got {value!r}"
        )
    return columns


def _parse_image_shape(value: Any, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if _is_int(value) and value > 0:
        return (int(value),)
    text = value.replace(" ", "").lower() if isinstance(value, str) else ""
    if not _IMAGE_SHAPE_PATTERN.fullmatch(text) or any(int(dim) == 0 for dim in text.split("x")):
        raise DataFileError(
            f"{where}: node config key 'image-shape' must be positive sizes joined by 'x', "
            f"like '8x8' or '1x28x28', got {value!r}"
        )
    return tuple(int(dim) for dim in text.split("x"))


def _parse_label_map(value: str | None, where: str) -> dict[str, int] | None:
    if value is None:
        return None
    label_map: dict[str, int] = {}
    for item in value.split(","):
        # rpartition: a label may itself contain ':'; the class id never does.
        name, colon, class_id = (part.strip() for part in item.rpartition(":"))
        if not colon or not name or not (class_id.isascii() and class_id.isdigit()):
            raise DataFileError(
                f"{where}: node config key 'label-map' must be 'label:class_id' pairs "
                f"like 'benign:0,malignant:1', got {value!r} (bad item {item.strip()!r})"
            )
        if name in label_map:
            raise DataFileError(f"{where}: node config key 'label-map' maps {name!r} twice")
        label_map[name] = int(class_id)
    return label_map


# --------------------------------------------------------------------------- reading


class _RawTable(NamedTuple):
    """A file's selected columns as read, before conversion and checks."""

    features: list[tuple[str, np.ndarray]]  # (column or array name, values; axis 0 = rows)
    labels: np.ndarray
    label_name: str  # the label column or array actually read
    row_name: Callable[[int], str]  # index -> "line 12" / "row 12", for messages
    kind: str  # "column" or "array", for messages


def _row(index: int) -> str:
    return f"row {index + 1}"


def _select_columns(spec: LocalDataSpec, available: Sequence[str]) -> list[str]:
    """Check the label and feature columns exist; return the feature columns in order."""
    where = _file(spec.path)
    if spec.label_column not in available:
        raise DataFileError(
            f"{where}: label column {spec.label_column!r} not found; available columns: "
            f"{_preview(available)}"
        )
    if spec.feature_columns is None:
        columns = [name for name in available if name != spec.label_column]
        if not columns:
            raise DataFileError(
                f"{where}: no feature columns besides the label column {spec.label_column!r}"
            )
        return columns
    missing = [name for name in spec.feature_columns if name not in available]
    if missing:
        raise DataFileError(
            f"{where}: feature column(s) {_preview(missing)} not found; available columns: "
            f"{_preview(available)}"
        )
    return list(spec.feature_columns)


def _read_csv(spec: LocalDataSpec) -> _RawTable:
    where = _file(spec.path)
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        with spec.path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            header = next((row for row in reader if row), None)
            if header is None:
                raise DataFileError(f"{where}: the file is empty (no header row)")
            header = [name.strip() for name in header]
            for row in reader:
                if not row:  # blank line
                    continue
                if len(row) != len(header):
                    raise DataFileError(
                        f"{where}: could not read it as csv: line {reader.line_num} has "
                        f"{len(row)} fields, the header has {len(header)}"
                    )
                rows.append(row)
                line_numbers.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataFileError(
            f"{where}: could not read it as csv ({type(error).__name__}: {error})"
        ) from error
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataFileError(f"{where}: the header names column(s) {duplicates} more than once")
    feature_columns = _select_columns(spec, header)
    index = {name: position for position, name in enumerate(header)}

    def column(name: str) -> np.ndarray:
        position = index[name]
        return np.array([row[position].strip() for row in rows], dtype=str)

    return _RawTable(
        features=[(name, column(name)) for name in feature_columns],
        labels=column(spec.label_column),
        label_name=spec.label_column,
        row_name=lambda i: f"line {line_numbers[i]}",
        kind="column",
    )


def _import_pyarrow(path: Path) -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:
        raise DataFileError(
            f"{_file(path)}: parquet files need pyarrow, which is not installed "
            "(pip install pyarrow)"
        ) from error
    return pyarrow


def _parquet_column(pa: Any, spec: LocalDataSpec, table: Any, name: str, role: str) -> np.ndarray:
    """One parquet column as numpy; nulls and (for features) non-numeric types rejected."""
    where = _file(spec.path)
    values = table.column(name)
    if values.null_count:
        first = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False)))
        raise DataFileError(
            f"{where}: {role} column {name!r} has {values.null_count} missing (null) "
            f"value(s), the first in {_row(first)}"
        )
    if pa.types.is_dictionary(values.type):  # e.g. a pandas categorical column
        values = values.cast(values.type.value_type)
    kind = values.type
    if pa.types.is_decimal(kind):
        values = values.cast(pa.float64())
    elif role == "feature" and not (
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    ):
        raise DataFileError(
            f"{where}: feature column {name!r} is not numeric (parquet type {kind})"
        )
    elif role == "label" and not (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
    ):
        raise DataFileError(
            f"{where}: label column {name!r} must hold integers or strings (parquet type {kind})"
        )
    return np.asarray(values.to_numpy())


def _read_parquet(spec: LocalDataSpec) -> _RawTable:
    pa = _import_pyarrow(spec.path)
    where = _file(spec.path)
    try:
        parquet_file = pa.parquet.ParquetFile(spec.path)
        available = list(parquet_file.schema_arrow.names)
        feature_columns = _select_columns(spec, available)
        table = parquet_file.read(columns=[*feature_columns, spec.label_column])
    except (pa.ArrowException, OSError, ValueError) as error:
        if isinstance(error, DataFileError):
            raise
        raise DataFileError(
            f"{where}: could not read it as parquet ({type(error).__name__}: {error})"
        ) from error
    return _RawTable(
        features=[
            (name, _parquet_column(pa, spec, table, name, "feature")) for name in feature_columns
        ],
        labels=_parquet_column(pa, spec, table, spec.label_column, "label"),
        label_name=spec.label_column,
        row_name=_row,
        kind="column",
    )


def _read_npz(spec: LocalDataSpec) -> _RawTable:
    where = _file(spec.path)
    if not zipfile.is_zipfile(spec.path):
        raise DataFileError(
            f"{where}: could not read it as npz (not a zip archive of .npy arrays; "
            "write it with numpy.savez)"
        )
    try:
        with np.load(spec.path, allow_pickle=False) as archive:
            available = list(archive.files)
            label_name = spec.label_column
            if label_name not in available and label_name == _DEFAULT_LABEL:
                label_name = _NPZ_DEFAULT_LABEL
            if label_name not in available:
                tried = sorted({spec.label_column, label_name})
                raise DataFileError(
                    f"{where}: label array {' / '.join(map(repr, tried))} not found; "
                    f"available arrays: {_preview(available)}"
                )
            feature_names = list(spec.feature_columns or _NPZ_DEFAULT_FEATURES)
            missing = [name for name in feature_names if name not in available]
            if missing:
                raise DataFileError(
                    f"{where}: input array(s) {_preview(missing)} not found; available "
                    f"arrays: {_preview(available)}"
                )
            features = [(name, np.asarray(archive[name])) for name in feature_names]
            labels = np.asarray(archive[label_name])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, DataFileError):
            raise
        raise DataFileError(
            f"{where}: could not read it as npz ({type(error).__name__}: {error})"
        ) from error
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataFileError(
            f"{where}: label array {label_name!r} must be 1-D, has shape {labels.shape}"
        )
    for name, values in features:
        if values.ndim == 0 or len(values) != len(labels):
            raise DataFileError(
                f"{where}: input array {name!r} has shape {values.shape}, but the label "
                f"array {label_name!r} has {len(labels)} rows"
            )
    return _RawTable(
        features=features, labels=labels, label_name=label_name, row_name=_row, kind="array"
    )


_READERS: dict[str, Callable[[LocalDataSpec], _RawTable]] = {
    "csv": _read_csv,
    "npz": _read_npz,
    "parquet": _read_parquet,
}


# --------------------------------------------------------------------------- conversion


def _strings_to_float(values: np.ndarray) -> tuple[np.ndarray | None, int]:
    """Parse a string array as float64; on failure return ``(None, first bad flat index)``."""
    try:
        return np.asarray(values, dtype=np.float64), -1
    except ValueError:
        flat = values.reshape(-1)
        for position, text in enumerate(flat.tolist()):
            try:
                float(text)
            except ValueError:
                return None, position
        raise  # numpy refused a value that float() accepts: surface numpy's error


def _features_to_float(spec: LocalDataSpec, table: _RawTable) -> np.ndarray:
    """Each feature column/array -> float64 of shape (N, -1), checked numeric."""
    where = _file(spec.path)
    parts: list[np.ndarray] = []
    for name, values in table.features:
        if values.dtype.kind in "US":
            parsed, bad = _strings_to_float(values)
            if parsed is None:
                row = bad // max(1, math.prod(values.shape[1:]))
                text = values.reshape(-1)[bad].item()
                shown = "an empty (missing) value" if text == "" else f"the value {text!r}"
                raise DataFileError(
                    f"{where}: feature {table.kind} {name!r} is not numeric: "
                    f"{shown} in {table.row_name(row)}"
                )
            values = parsed
        elif values.dtype.kind not in "biuf":
            raise DataFileError(
                f"{where}: feature {table.kind} {name!r} is not numeric (dtype {values.dtype})"
            )
        width = math.prod(values.shape[1:])
        parts.append(values.reshape(len(values), width).astype(np.float64, copy=False))
    return np.concatenate(parts, axis=1)


def _check_finite(spec: LocalDataSpec, table: _RawTable, x_flat: np.ndarray) -> None:
    """Reject NaN/inf, naming the first column and row (after the float32 cast)."""
    finite = np.isfinite(x_flat)
    if finite.all():
        return
    row, position = (int(index[0]) for index in np.nonzero(~finite))
    # Map the flat position back to the column / array it came from.
    start = 0
    for name, values in table.features:
        width = math.prod(values.shape[1:])
        if position < start + width:
            suffix = "" if table.kind == "column" else f" (value {position - start} of the row)"
            raise DataFileError(
                f"{_file(spec.path)}: feature {table.kind} {name!r} has a non-finite value "
                f"({x_flat[row, position]}) in {table.row_name(row)}{suffix}; "
                f"{int((~finite).sum())} non-finite value(s) in all"
            )
        start += width


def _labels_to_ids(spec: LocalDataSpec, table: _RawTable, num_classes: int | None) -> np.ndarray:
    where = _file(spec.path)
    name = table.label_name
    labels = table.labels
    if spec.label_map is not None:
        texts = labels if labels.dtype.kind in "US" else labels.astype(str)
        unique, inverse = np.unique(texts, return_inverse=True)
        unknown = [label for label in unique.tolist() if label not in spec.label_map]
        if unknown:
            raise DataFileError(
                f"{where}: label {table.kind} {name!r} has label(s) {_preview(unknown)} "
                f"missing from label-map (which maps {_preview(list(spec.label_map))})"
            )
        lookup = np.array([spec.label_map[label] for label in unique.tolist()], dtype=np.int64)
        ids = lookup[inverse.reshape(-1)]
    else:
        values = labels
        if values.dtype.kind in "US":
            parsed, bad = _strings_to_float(values)
            if parsed is None:
                raise DataFileError(
                    f"{where}: label {table.kind} {name!r} is not an integer class id: "
                    f"{values[bad].item()!r} in {table.row_name(bad)}; map string labels to "
                    "class ids with label-map, e.g. label-map='benign:0,malignant:1'"
                )
            values = parsed
        if values.dtype.kind == "f":
            integral = np.isfinite(values) & (values == np.round(values))
            if not integral.all():
                bad = int(np.argmin(integral))
                raise DataFileError(
                    f"{where}: label {table.kind} {name!r} is not an integer class id: "
                    f"{labels[bad].item()!r} in {table.row_name(bad)}"
                )
        elif values.dtype.kind not in "biu":
            raise DataFileError(
                f"{where}: label {table.kind} {name!r} must hold integer class ids "
                f"(dtype {values.dtype})"
            )
        ids = values.astype(np.int64)
    outside = (ids < 0) | (ids >= num_classes) if num_classes is not None else ids < 0
    if outside.any():
        bad = int(np.argmax(outside))
        allowed = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        source = " (after label-map)" if spec.label_map is not None else ""
        raise DataFileError(
            f"{where}: label {table.kind} {name!r} has class id {int(ids[bad])}{source} in "
            f"{table.row_name(bad)}, outside {allowed}; {int(outside.sum())} label(s) out of "
            "range"
        )
    return ids


def _layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape without its size-1 axes: (1, 8, 8) and (8, 8) lay out values the same."""
    return tuple(dim for dim in shape if dim != 1)


def _row_shape(
    spec: LocalDataSpec,
    table: _RawTable,
    num_values: int,
    input_shape: tuple[int, ...] | None,
) -> tuple[int, ...]:
    """The per-row shape of the returned inputs (see :func:`load_local_data`)."""
    where = _file(spec.path)
    found: tuple[int, ...] = (num_values,)
    source = f"{num_values} feature values"
    if spec.image_shape is not None:
        if math.prod(spec.image_shape) != num_values:
            raise DataFileError(
                f"{where}: image-shape {spec.image_shape} holds "
                f"{math.prod(spec.image_shape)} values, but each row has {num_values} "
                "feature values"
            )
        found, source = spec.image_shape, f"image-shape {spec.image_shape}"
    elif len(table.features) == 1 and table.features[0][1].ndim > 2:
        name, values = table.features[0]
        found, source = tuple(values.shape[1:]), f"{table.kind} {name!r} of row shape"
        source = f"{source} {found}"
    if input_shape is None:
        return found
    expected = math.prod(input_shape)
    if num_values != expected:
        raise DataFileError(
            f"{where}: expected {expected} features (the run's dataset, input shape "
            f"{input_shape}), found {num_values}"
        )
    if len(_layout(found)) > 1 and _layout(found) != _layout(input_shape):
        raise DataFileError(
            f"{where}: expected input shape {input_shape} (the run's dataset), found {source}"
        )
    return input_shape


def load_local_data(
    spec: LocalDataSpec,
    *,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a client's local data file.

    Parameters
    ----------
    spec : LocalDataSpec
        The file and its schema.
    input_shape : tuple[int, ...] | None, default None
        The run's input shape. If given, each row must hold ``prod(input_shape)`` feature
        values and is reshaped to it; a declared ``image_shape`` (or an npz input array's
        own row shape) must lay the values out the same way, size-1 axes aside.
    num_classes : int | None, default None
        The run's number of classes. If given, class ids must lie in ``[0, num_classes)``
        (otherwise they must be ``>= 0``).

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``x``: float32 of shape ``(N, *row_shape)``, where ``row_shape`` is
        ``input_shape`` if given, else ``image_shape``, else an npz input array's own row
        shape, else ``(num_features,)``. ``y``: int64 class ids of shape ``(N,)``.

    Raises
    ------
    DataFileError
        The file is missing or unreadable, lacks a declared column/array, holds
        non-numeric or non-finite features, no rows, labels that are not class ids (or
        not in ``label_map``, or out of range), or features that do not fit
        ``input_shape`` / ``image_shape``. The message names the file and the column,
        array or key.
    ValueError
        ``input_shape`` or ``num_classes`` malformed.
    """
    if input_shape is not None and (
        not input_shape or not all(_is_int(dim) and dim > 0 for dim in input_shape)
    ):
        raise ValueError(f"input_shape must be positive integers, got {input_shape!r}")
    if num_classes is not None and (not _is_int(num_classes) or num_classes < 1):
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    where = _file(spec.path)
    if not spec.path.exists():
        raise DataFileError(f"{where}: no such file")
    if not spec.path.is_file():
        raise DataFileError(f"{where}: not a regular file")

    table = _READERS[spec.format](spec)
    if len(table.labels) == 0:
        raise DataFileError(f"{where}: the file has no data rows")
    with np.errstate(over="ignore"):  # values beyond float32 become inf: reported next
        x_flat = _features_to_float(spec, table).astype(np.float32)
    _check_finite(spec, table, x_flat)
    y = _labels_to_ids(spec, table, num_classes)
    row_shape = _row_shape(
        spec, table, x_flat.shape[1], tuple(input_shape) if input_shape is not None else None
    )
    x = np.ascontiguousarray(x_flat.reshape(len(x_flat), *row_shape))
    logger.info("loaded %d rows of shape %s from %s", len(x), row_shape, spec.path)
    return x, y


# --------------------------------------------------------------------------- writing


def write_local_data(
    path: str | Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    feature_names: Sequence[str] | None = None,
    label_column: str = _DEFAULT_LABEL,
) -> Path:
    """Write inputs and labels as one local data file (the inverse of :func:`load_local_data`).

    The format comes from the extension (``.csv``, ``.npz``, ``.parquet`` / ``.pq``);
    parent folders are created. Each sample's features are flattened to ``d`` values.

    - csv / parquet: feature columns ``f0 .. f{d-1}`` (or ``feature_names``), then the
      label column ``label_column``.
    - npz: array ``x`` of shape ``(N, d)`` and the labels as ``y`` (or as
      ``label_column`` if that is not the default ``"label"``); ``feature_names`` does
      not apply.

    Parameters
    ----------
    path : str | Path
        Where to write.
    x : np.ndarray
        Numeric inputs, shape ``(N, ...)``.
    y : np.ndarray
        Labels, shape ``(N,)``: integer class ids, or strings (read back with a
        ``label_map``).
    feature_names : Sequence[str] | None, default None
        csv/parquet column names for the ``d`` flattened features.
    label_column : str, default "label"
        Name of the label column (array, for npz).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    DataFileError
        An extension that names no known format, or pyarrow missing for parquet.
    ValueError
        Mismatched shapes, non-numeric ``x``, bad ``feature_names`` or ``label_column``.
    """
    path = Path(path)
    data_format = _infer_format(path)
    inputs = np.asarray(x)
    labels = np.asarray(y)
    if inputs.ndim < 1 or labels.ndim != 1 or len(inputs) != len(labels):
        raise ValueError(
            f"x must have shape (N, ...) and y shape (N,), got {inputs.shape} and {labels.shape}"
        )
    if inputs.dtype.kind not in "biuf":
        raise ValueError(f"x must be numeric, got dtype {inputs.dtype}")
    if labels.dtype.kind not in "biuUS":
        raise ValueError(f"y must hold integers or strings, got dtype {labels.dtype}")
    if not label_column:
        raise ValueError("label_column must be a non-empty string")
    flat = inputs.reshape(len(inputs), math.prod(inputs.shape[1:]))
    if inputs.dtype.kind == "b":
        flat = flat.astype(np.uint8)
    width = flat.shape[1]
    if feature_names is not None and data_format == "npz":
        raise ValueError("feature_names applies to csv/parquet; npz stores the inputs as 'x'")
    names = (
        [f"f{index}" for index in range(width)] if feature_names is None else list(feature_names)
    )
    if len(names) != width or len(set(names)) != width or label_column in names:
        raise ValueError(
            f"feature_names must be {width} distinct names other than {label_column!r}, "
            f"got {_preview(names)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if data_format == "csv":
        # numpy's str() of a float is the shortest text that reads back to the same value.
        cells = np.column_stack([flat.astype(str), labels.astype(str)])
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*names, label_column])
            writer.writerows(cells.tolist())
    elif data_format == "npz":
        label_name = _NPZ_DEFAULT_LABEL if label_column == _DEFAULT_LABEL else label_column
        if label_name == "x":
            raise ValueError("label_column 'x' would overwrite the npz input array")
        # Through a handle: np.savez appends '.npz' to a bare path without that suffix.
        with path.open("wb") as handle:
            arrays: dict[str, Any] = {"x": flat, label_name: labels}
            np.savez(handle, **arrays)
    else:
        pa = _import_pyarrow(path)
        columns = {name: flat[:, index] for index, name in enumerate(names)}
        columns[label_column] = labels
        pa.parquet.write_table(pa.table(columns), path)
    return path
