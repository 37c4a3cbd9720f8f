"""Format-specific readers (csv, npz, parquet) of a client's local data file."""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fedkd.data.local_spec import (
    _DEFAULT_LABEL,
    _NPZ_DEFAULT_FEATURES,
    _NPZ_DEFAULT_LABEL,
    DataFileError,
    LocalDataSpec,
    _file,
    _preview,
)


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
