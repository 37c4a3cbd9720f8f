"""A client's local data spec (:class:`LocalDataSpec`), read from the SuperNode's node config."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkd.errors import ConfigError

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
        matches an array named ``"y"`` (what
        :func:`fedkd.data.local_files.write_local_data` writes).
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
