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
naming the file, the line or row, the column, array or key concerned, and the kind of
problem. The message becomes the client's error reason, which crosses to the server
(:func:`fedkd.apps.client.safe_reason`), so it never quotes the file's content: no cell or
label value, no header cell (a column not named in ``feature-columns`` is named by its
position), no line text. The offending value goes to the client's DEBUG log only.

In simulation the node config has none of these keys: :meth:`LocalDataSpec.from_node_config`
returns ``None`` and the client falls back to its ``partition-id`` share of the run's dataset.
:func:`write_local_data` writes the same formats (tests; one file per SuperNode for a local
deployment).

The spec and node-config parsing live in :mod:`fedkd.data.local_spec`, the per-format
readers in :mod:`fedkd.data.local_readers` and the column checks in
:mod:`fedkd.data.local_convert`; their public names are re-exported here.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedkd.data.local_convert import _check_finite, _features_to_float, _labels_to_ids, _row_shape
from fedkd.data.local_readers import _READERS, _import_pyarrow
from fedkd.data.local_spec import (
    _DEFAULT_LABEL,
    _NPZ_DEFAULT_LABEL,
    _file,
    _infer_format,
    _is_int,
    _preview,
)
from fedkd.data.local_spec import FORMATS as FORMATS
from fedkd.data.local_spec import NODE_KEYS as NODE_KEYS
from fedkd.data.local_spec import DataFileError as DataFileError
from fedkd.data.local_spec import LocalDataSpec as LocalDataSpec

logger = logging.getLogger(__name__)


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
        ``input_shape`` / ``image_shape``. The message names the file, the line or row
        and the column, array or key, never a value read from the file.
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
