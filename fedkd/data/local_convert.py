"""Checks and conversion of a local data file's columns: numeric features, class ids, shapes.

Error messages cross to the server (:func:`fedkd.apps.client.safe_reason`), so they name the
file, the row and the column and say what is wrong, never the value: values go to the
client's DEBUG log only.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from fedkd.data.local_readers import _RawTable
from fedkd.data.local_spec import DataFileError, LocalDataSpec, _file

logger = logging.getLogger(__name__)


def _dtype_text(dtype: np.dtype) -> str:
    """A dtype for messages; a structured one by kind only (it holds field names)."""
    return "structured" if dtype.names is not None else str(dtype)


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
                logger.debug("%s: feature %s, %s: %r", where, name, table.row_name(row), text)
                problem = (
                    "an empty (missing) value" if text == "" else "a value that is not a number"
                )
                raise DataFileError(
                    f"{where}: feature {name} is not numeric: {problem} in {table.row_name(row)}"
                )
            values = parsed
        elif values.dtype.kind not in "biuf":
            raise DataFileError(
                f"{where}: feature {name} is not numeric (dtype {_dtype_text(values.dtype)})"
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
            # NaN or infinite is the kind of problem, not the value (which may be a huge
            # finite number in the file that float32 cannot hold).
            problem = "NaN" if np.isnan(x_flat[row, position]) else "infinite or beyond float32"
            raise DataFileError(
                f"{_file(spec.path)}: feature {name} has a non-finite value "
                f"({problem}) in {table.row_name(row)}{suffix}; "
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
        known = np.array([label in spec.label_map for label in unique.tolist()], dtype=bool)
        if not known.all():
            unmapped = ~known[inverse.reshape(-1)]
            bad = int(np.argmax(unmapped))
            logger.debug(
                "%s: labels missing from label-map: %s",
                where,
                unique[~known].tolist()[:20],
            )
            raise DataFileError(
                f"{where}: label {table.kind} {name!r}: label not in the configured classes "
                f"(label-map) in {table.row_name(bad)}; {int(unmapped.sum())} such row(s), "
                f"{int((~known).sum())} distinct unmapped label(s)"
            )
        lookup = np.array([spec.label_map[label] for label in unique.tolist()], dtype=np.int64)
        ids = lookup[inverse.reshape(-1)]
    else:
        values = labels
        if values.dtype.kind in "US":
            parsed, bad = _strings_to_float(values)
            if parsed is None:
                logger.debug("%s: label in %s: %r", where, table.row_name(bad), values[bad].item())
                raise DataFileError(
                    f"{where}: label {table.kind} {name!r} is not an integer class id: "
                    f"a value that is not a number in {table.row_name(bad)}; map string "
                    "labels to class ids with label-map, e.g. label-map='benign:0,malignant:1'"
                )
            values = parsed
        if values.dtype.kind == "f":
            integral = np.isfinite(values) & (values == np.round(values))
            if not integral.all():
                bad = int(np.argmin(integral))
                logger.debug("%s: label in %s: %r", where, table.row_name(bad), labels[bad].item())
                raise DataFileError(
                    f"{where}: label {table.kind} {name!r} is not an integer class id: "
                    f"a fractional or non-finite number in {table.row_name(bad)}"
                )
        elif values.dtype.kind not in "biu":
            raise DataFileError(
                f"{where}: label {table.kind} {name!r} must hold integer class ids "
                f"(dtype {_dtype_text(values.dtype)})"
            )
        ids = values.astype(np.int64)
    outside = (ids < 0) | (ids >= num_classes) if num_classes is not None else ids < 0
    if outside.any():
        bad = int(np.argmax(outside))
        allowed = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        source = " (after label-map)" if spec.label_map is not None else ""
        logger.debug("%s: class id in %s: %d", where, table.row_name(bad), int(ids[bad]))
        raise DataFileError(
            f"{where}: label {table.kind} {name!r}: label not in the configured classes: a "
            f"class id{source} outside {allowed} in {table.row_name(bad)}; "
            f"{int(outside.sum())} label(s) out of range"
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
    """The per-row shape of the returned inputs.

    See :func:`fedkd.data.local_files.load_local_data`.
    """
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
        found = tuple(values.shape[1:])
        source = f"{name} of row shape {found}"
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
