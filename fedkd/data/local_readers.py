"""Format-specific readers (csv, npz, parquet) of a client's local data file."""

from __future__ import annotations

import csv
import logging
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

logger = logging.getLogger(__name__)


class _RawTable(NamedTuple):
    """A file's selected columns as read, before conversion and checks."""

    # (how messages name the column or array, values; axis 0 = rows). Never a name read
    # from the file: a configured name, or the column's position (see _column_label).
    features: list[tuple[str, np.ndarray]]
    labels: np.ndarray
    label_name: str  # the label column or array actually read
    row_name: Callable[[int], str]  # index -> "line 12" / "row 12", for messages
    kind: str  # "column" or "array", for messages


def _row(index: int) -> str:
    return f"row {index + 1}"


def _column_label(spec: LocalDataSpec, name: str, available: Sequence[str]) -> str:
    """How messages name a feature column: its configured name, else its position.

    Column names read from the file are file content (the "header" of a wrongly chosen
    file may be a record), and error messages cross to the server; configured names are
    the operator's node config.
    """
    if spec.feature_columns is not None:
        return f"column {name!r}"
    return f"column {available.index(name) + 1}"


def _select_columns(spec: LocalDataSpec, available: Sequence[str]) -> list[str]:
    """Check the label and feature columns exist; return the feature columns in order.

    Messages give the number of columns found, never their names (file content); the
    names go to the client's DEBUG log.
    """
    where = _file(spec.path)
    if spec.label_column not in available:
        logger.debug("%s: columns in the file: %s", where, _preview(available))
        raise DataFileError(
            f"{where}: label column {spec.label_column!r} not found among the file's "
            f"{len(available)} column(s) (is this the right file?)"
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
        logger.debug("%s: columns in the file: %s", where, _preview(available))
        raise DataFileError(
            f"{where}: feature column(s) {_preview(missing)} not found among the file's "
            f"{len(available)} column(s)"
        )
    return list(spec.feature_columns)


def _undecodable_line(path: Path) -> str:
    """Where the first non-UTF-8 byte of a file is, as "line N" (for messages)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        return f"line {line}"
    return "some line"  # decodes as a whole: the stream decoder's error had another cause


def _read_csv(spec: LocalDataSpec) -> _RawTable:
    where = _file(spec.path)
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    line_num = 0
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        with spec.path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            header = next((row for row in reader if row), None)
            if header is None:
                raise DataFileError(f"{where}: the file is empty (no header row)")
            header = [name.strip() for name in header]
            for row in reader:
                line_num = reader.line_num
                if not row:  # blank line
                    continue
                if len(row) != len(header):
                    raise DataFileError(
                        f"{where}: could not read it as csv: wrong number of columns in line "
                        f"{reader.line_num}: {len(row)}, expected {len(header)} (the header's)"
                    )
                rows.append(row)
                line_numbers.append(reader.line_num)
    except UnicodeDecodeError as error:
        raise DataFileError(
            f"{where}: could not read it as csv: {_undecodable_line(spec.path)} is not UTF-8 text"
        ) from error
    except csv.Error as error:
        # The csv module's messages are fixed texts ("line contains NUL", "unexpected end
        # of data", ...); the record itself goes to the client's DEBUG log only.
        logger.debug("%s: csv error after line %d: %s", where, line_num, error)
        raise DataFileError(
            f"{where}: could not read it as csv: malformed record after line {line_num} "
            "(e.g. an unclosed quote or a NUL byte)"
        ) from error
    except OSError as error:
        raise DataFileError(
            f"{where}: could not read it as csv ({type(error).__name__}: {error.strerror})"
        ) from error
    positions: dict[str, list[int]] = {}
    for position, name in enumerate(header, start=1):
        positions.setdefault(name, []).append(position)
    duplicates = [found for found in positions.values() if len(found) > 1]
    if duplicates:
        raise DataFileError(
            f"{where}: the header names the same column more than once (columns "
            f"{', '.join(' and '.join(map(str, found)) for found in duplicates)})"
        )
    feature_columns = _select_columns(spec, header)
    index = {name: position for position, name in enumerate(header)}

    def column(name: str) -> np.ndarray:
        position = index[name]
        return np.array([row[position].strip() for row in rows], dtype=str)

    return _RawTable(
        features=[(_column_label(spec, name, header), column(name)) for name in feature_columns],
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


def _type_text(kind: Any) -> str:
    """A parquet type for messages; nested types by kind only (they hold field names)."""
    return str(kind) if kind.num_fields == 0 else type(kind).__name__


def _parquet_column(
    pa: Any, spec: LocalDataSpec, table: Any, name: str, role: str, label: str
) -> np.ndarray:
    """One parquet column as numpy; nulls and (for features) non-numeric types rejected.

    ``label`` is how messages name the column (see :func:`_column_label`).
    """
    where = _file(spec.path)
    values = table.column(name)
    if values.null_count:
        first = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False)))
        raise DataFileError(
            f"{where}: {role} {label} has {values.null_count} missing (null) "
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
            f"{where}: feature {label} is not numeric (parquet type {_type_text(kind)})"
        )
    elif role == "label" and not (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
    ):
        raise DataFileError(
            f"{where}: label {label} must hold integers or strings "
            f"(parquet type {_type_text(kind)})"
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
        # pyarrow's text may quote schema or statistics: the client's DEBUG log only.
        logger.debug("%s: reading it as parquet failed: %s", where, error)
        raise DataFileError(
            f"{where}: could not read it as parquet ({type(error).__name__}; not a parquet "
            "file, or a damaged one)"
        ) from error
    features = []
    for name in feature_columns:
        label = _column_label(spec, name, available)
        features.append((label, _parquet_column(pa, spec, table, name, "feature", label)))
    return _RawTable(
        features=features,
        labels=_parquet_column(
            pa, spec, table, spec.label_column, "label", f"column {spec.label_column!r}"
        ),
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
                logger.debug("%s: arrays in the file: %s", where, _preview(available))
                raise DataFileError(
                    f"{where}: label array {' / '.join(map(repr, tried))} not found among "
                    f"the file's {len(available)} array(s)"
                )
            feature_names = list(spec.feature_columns or _NPZ_DEFAULT_FEATURES)
            missing = [name for name in feature_names if name not in available]
            if missing:
                logger.debug("%s: arrays in the file: %s", where, _preview(available))
                raise DataFileError(
                    f"{where}: input array(s) {_preview(missing)} not found among the "
                    f"file's {len(available)} array(s)"
                )
            features = [(f"array {name!r}", np.asarray(archive[name])) for name in feature_names]
            labels = np.asarray(archive[label_name])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, DataFileError):
            raise
        # numpy's text may quote an array header: the client's DEBUG log only.
        logger.debug("%s: reading it as npz failed: %s", where, error)
        raise DataFileError(
            f"{where}: could not read it as npz ({type(error).__name__}; a damaged "
            "archive, or an array of Python objects: write plain numeric arrays with "
            "numpy.savez)"
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
                f"{where}: input {name} has shape {values.shape}, but the label "
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
