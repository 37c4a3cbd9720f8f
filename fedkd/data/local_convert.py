"""Checks and conversion of a local data file's columns: numeric features, class ids, shapes."""

from __future__ import annotations

import math

import numpy as np

from fedkd.data.local_readers import _RawTable
from fedkd.data.local_spec import DataFileError, LocalDataSpec, _file, _preview


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
