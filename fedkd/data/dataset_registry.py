"""Dataset registry machinery: :class:`DatasetEntry`, registration, option checks and loading.

The registry itself holds no datasets; the built-in ones are registered, in order, by
:data:`fedkd.data.datasets.BUILTIN_DATASETS`. Everything else -- the list of names, the
allowed options and their defaults, option validation, dispatch to the loader and the
human-readable summary of :func:`describe_datasets` -- is derived from the registered
:class:`DatasetEntry` records.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

import numpy as np

from fedkd.errors import ConfigError
from fedkd.registry import Registry, check_entry_name, check_option_keys

__all__ = [
    "DATASETS",
    "REQUIRED",
    "DatasetEntry",
    "RawDataset",
    "dataset_names",
    "describe_datasets",
    "load_dataset",
    "register_dataset",
    "resolve_dataset_options",
    "unregister_dataset",
]

#: Shape family of one input sample: ``image`` ``(C, H, W)``, ``sequence`` ``(C, L)``,
#: ``tabular`` ``(F,)``, or ``auto`` when the data decides (e.g. the ``hf`` loader).
InputKind = Literal["image", "sequence", "tabular", "auto"]
INPUT_KINDS: tuple[str, ...] = get_args(InputKind)


class _Required:
    """Type of :data:`REQUIRED` (a marker with a readable repr)."""

    def __repr__(self) -> str:
        return "REQUIRED"


#: Marker for a dataset option without a default: the config must set it.
REQUIRED: Final[Any] = _Required()


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


@dataclass(frozen=True, eq=False, kw_only=True)
class DatasetEntry:
    """Everything fedkd needs to know about one dataset: the single place to add one.

    Parameters
    ----------
    name : str
        Registry name, the config value ``dataset.name``.
    loader : Callable[..., RawDataset]
        Called as ``loader(**resolved_options)``; must accept exactly the keys of
        ``options`` as keyword arguments.
    input_kind : {"image", "sequence", "tabular", "auto"}
        Shape family of one input sample (see :data:`InputKind`).
    options : Mapping[str, Any], optional
        Allowed options (config keys ``dataset.<option>``) and their defaults, in
        documentation order; :data:`REQUIRED` marks an option without a default.
    check : Callable[[Mapping[str, Any]], None], optional
        Validates the resolved options (defaults filled in) and raises
        :class:`~fedkd.errors.ConfigError` naming the ``dataset.<option>`` key.
    summary : str, optional
        One-paragraph description for :func:`describe_datasets`.

    Raises
    ------
    ValueError
        Empty name, unknown input kind, or a loader that does not accept the options.
    """

    name: str
    loader: Callable[..., RawDataset]
    input_kind: InputKind
    options: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], None] | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        check_entry_name("dataset", self.name)
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(
                f"dataset {self.name!r}: input_kind must be one of {list(INPUT_KINDS)}, "
                f"got {self.input_kind!r}"
            )
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        try:
            inspect.signature(self.loader).bind(**self.options)
        except TypeError as error:
            raise ValueError(
                f"dataset {self.name!r}: loader {self.loader!r} does not take the options "
                f"{list(self.options)} as keyword arguments ({error})"
            ) from error


_REGISTRY: Registry[DatasetEntry] = Registry("dataset")

#: Live read-only view of the registry, name -> :class:`DatasetEntry`, in registration order.
DATASETS: Mapping[str, DatasetEntry] = _REGISTRY.view


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Add a dataset to the registry and return it (ValueError if the name is taken)."""
    return _REGISTRY.register(entry)


def unregister_dataset(name: str) -> DatasetEntry:
    """Remove a dataset from the registry and return it (KeyError if it is not registered);
    mainly for tests and plugins."""
    return _REGISTRY.unregister(name)


def dataset_names() -> tuple[str, ...]:
    """Return the registered dataset names, in registration order (live, unlike the
    import-time snapshot :data:`fedkd.data.datasets.DATASET_NAMES`)."""
    return _REGISTRY.names()


def describe_datasets() -> str:
    """Return one line per registered dataset: name, input kind, options with defaults
    and summary (for help texts and docs)."""
    lines = []
    for entry in DATASETS.values():
        options = ", ".join(
            f"{key}={'<required>' if default is REQUIRED else repr(default)}"
            for key, default in entry.options.items()
        )
        lines.append(
            f"{entry.name} ({entry.input_kind}; options: {options or 'none'}): {entry.summary}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- validation


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (``bool`` excluded)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (``bool`` excluded; NaN and inf included)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def require_int(key: str, value: Any, minimum: int) -> int:
    """An integer ``>= minimum``, else a :class:`ConfigError` naming ``key``."""
    if not is_int(value) or int(value) < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def require_real(key: str, value: Any, *, low: float, high: float | None = None) -> float:
    """A finite number with ``low <= value`` (and ``value <= high`` if given)."""
    if (
        not is_real(value)
        or not np.isfinite(float(value))
        or float(value) < low
        or (high is not None and float(value) > high)
    ):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{key} must be a finite number {allowed}, got {value!r}")
    return float(value)


def require_str(key: str, value: Any, *, optional: bool = False) -> str | None:
    """A non-empty string (or ``None`` if ``optional``), else a :class:`ConfigError`."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        allowed = "a non-empty string or None" if optional else "a non-empty string"
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")
    return value


def resolve_dataset_options(name: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check a dataset name and its options; return the options with defaults filled in
    (no loading).

    Parameters
    ----------
    name : str
        A registered dataset name (see :func:`dataset_names`).
    options : Mapping[str, Any]
        Dataset options (everything in the ``dataset`` config except ``name``).

    Raises
    ------
    ConfigError
        Unknown name (key ``dataset.name``), unknown option, missing required option
        or an option value out of range (key ``dataset.<option>``).
    """
    entry = _REGISTRY.get("dataset.name", name)
    allowed = entry.options
    check_option_keys(options, allowed, key="dataset", owner=f"dataset {name!r}")
    resolved: dict[str, Any] = {}
    for key, default in allowed.items():
        if key in options:
            resolved[key] = options[key]
        elif default is REQUIRED:
            raise ConfigError(f"dataset.{key} is required for dataset {name!r}")
        else:
            resolved[key] = default
    if entry.check is not None:
        entry.check(resolved)
    return resolved


def load_dataset(name: str, **options: Any) -> RawDataset:
    """Load a registered dataset into numpy arrays.

    Parameters
    ----------
    name : str
        A registered dataset name: the built-ins are ``"digits"``, ``"breast_cancer"``,
        ``"mnist1d"``, ``"synthetic"``, ``"hf"`` and ``"credit"`` (see
        :data:`fedkd.data.datasets.BUILTIN_DATASETS`).
    **options : Any
        Dataset-specific options; each entry's ``options`` lists them with their
        defaults and its ``summary`` describes them (all at once:
        :func:`describe_datasets`).

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
    return DATASETS[name].loader(**resolved)
