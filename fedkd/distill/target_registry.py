"""Teacher-target rule registry: :class:`TargetRule` records, option checks and dispatch.

The registry itself holds no rules; the built-in ones are registered, in order, by
:data:`fedkd.distill.targets.BUILTIN_TARGET_RULES`. The list of rule names, each rule's
options with defaults and ranges (:func:`target_rule_options`,
:func:`validate_target_rule`) and the dispatch of :func:`teacher_targets` -- including
which rules get the clients' ``num_examples`` or ``label_histograms`` -- all derive from
the registered :class:`TargetRule` records.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from fedkd.errors import ConfigError
from fedkd.registry import Registry, check_entry_name, check_option_names

__all__ = [
    "TARGET_RULE_REGISTRY",
    "RuleOption",
    "TargetRule",
    "register_target_rule",
    "target_rule_names",
    "target_rule_options",
    "teacher_targets",
    "unregister_target_rule",
    "validate_target_rule",
]

_ROW_SUM_TOL = 1e-3

# Keyword arguments teacher_targets itself passes to a rule's function.
_DATA_ARGUMENTS = ("num_examples", "label_histograms")


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


@dataclass(frozen=True)
class RuleOption:
    """One numeric option of a teacher-target rule: its default and allowed range.

    Parameters
    ----------
    default : float
        Value used when the config does not set the option.
    low : float, optional
        Lower bound (default 0.0).
    low_inclusive : bool, optional
        Whether ``low`` itself is allowed (default True: ``value >= low``).
    high : float, optional
        Exclusive upper bound (default ``inf``: none).

    Raises
    ------
    ValueError
        If ``default`` is outside the allowed range.
    """

    default: float
    low: float = 0.0
    low_inclusive: bool = True
    high: float = math.inf

    def __post_init__(self) -> None:
        if not self.accepts(self.default):
            raise ValueError(f"default {self.default!r} is outside its own range {self!r}")

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is a finite number in the allowed range."""
        return (
            _is_real(value)
            and (float(value) >= self.low if self.low_inclusive else float(value) > self.low)
            and float(value) < self.high
        )


@dataclass(frozen=True, eq=False, kw_only=True)
class TargetRule:
    """Everything fedkd needs to know about one teacher-target rule: the place to add one.

    Parameters
    ----------
    name : str
        Registry name, the config value ``aggregation.name``.
    fn : Callable[..., np.ndarray]
        Called as ``fn(probs, **options)`` on validated float64 ``(K, N, C)``
        probabilities with the resolved options (floats), plus ``num_examples`` (a
        validated ``(K,)`` float64 array) and/or ``label_histograms`` (``(K, C)``) as
        keywords when the rule needs them; returns ``(N, C)`` float32 rows summing to 1.
    options : Mapping[str, RuleOption], optional
        The rule's options (config keys ``aggregation.<option>``), in documentation order.
    needs_num_examples : bool, optional
        Whether ``fn`` needs the clients' training-set sizes.
    needs_label_histograms : bool, optional
        Whether ``fn`` needs the clients' per-class label counts.
    summary : str, optional
        One-line description (formula and source), for help texts.

    Raises
    ------
    ValueError
        Empty name, an option named like a data argument, or an ``fn`` that does not
        accept ``probs`` plus its options and data arguments as keywords.
    """

    name: str
    fn: Callable[..., np.ndarray]
    options: Mapping[str, RuleOption] = field(default_factory=dict)
    needs_num_examples: bool = False
    needs_label_histograms: bool = False
    summary: str = ""

    def __post_init__(self) -> None:
        check_entry_name("rule", self.name)
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        clashes = sorted(set(self.options) & {"probs", *_DATA_ARGUMENTS})
        if clashes:
            raise ValueError(f"rule {self.name!r}: option names {clashes} are reserved")
        try:
            inspect.signature(self.fn).bind(None, **self.data_arguments, **self.options)
        except TypeError as error:
            raise ValueError(
                f"rule {self.name!r}: {self.fn!r} must accept probs and the keywords "
                f"{[*self.data_arguments, *self.options]} ({error})"
            ) from error

    @property
    def data_arguments(self) -> dict[str, None]:
        """The data keywords (``num_examples``, ``label_histograms``) ``fn`` receives."""
        needs = (self.needs_num_examples, self.needs_label_histograms)
        return {name: None for name, need in zip(_DATA_ARGUMENTS, needs, strict=True) if need}

    def defaults(self) -> dict[str, float]:
        """The rule's options with their default values."""
        return {key: option.default for key, option in self.options.items()}


_REGISTRY: Registry[TargetRule] = Registry("target rule")

#: Live read-only view of the registry, name -> :class:`TargetRule`, in registration order.
TARGET_RULE_REGISTRY: Mapping[str, TargetRule] = _REGISTRY.view


def register_target_rule(rule: TargetRule) -> TargetRule:
    """Add a teacher-target rule to the registry and return it (ValueError if the name is
    taken)."""
    return _REGISTRY.register(rule)


def unregister_target_rule(name: str) -> TargetRule:
    """Remove a teacher-target rule from the registry and return it (KeyError if it is not
    registered); mainly for tests and plugins."""
    return _REGISTRY.unregister(name)


def target_rule_names() -> tuple[str, ...]:
    """Return the registered rule names in registration order (live, unlike the
    import-time snapshot :data:`fedkd.distill.targets.TARGET_RULES`)."""
    return _REGISTRY.names()


def check_rule_option(rule: str, key: str, value: Any) -> float:
    """Check one option of a registered ``rule`` against its range; return it as a float.

    Raises
    ------
    ConfigError
        If ``value`` is not a finite number in range (key ``aggregation.<key>``).
    """
    spec = TARGET_RULE_REGISTRY[rule].options[key]
    if not spec.accepts(value):
        relation = ">=" if spec.low_inclusive else ">"
        bound = f" and < {spec.high:g}" if math.isfinite(spec.high) else ""
        raise ConfigError(
            f"aggregation.{key} must be a finite number {relation} {spec.low:g}{bound} for "
            f"aggregation.name={rule!r}, got {value!r}"
        )
    return float(value)


def target_rule_options(rule: str) -> dict[str, float]:
    """Return the options accepted by target rule ``rule`` with their defaults.

    Raises
    ------
    ConfigError
        If ``rule`` is not a registered rule (key ``aggregation.name``).
    """
    return _REGISTRY.get("aggregation.name", rule).defaults()


def validate_target_rule(rule: str, **options: Any) -> None:
    """Check a rule name, its option names and option ranges, without any data.

    YAML: ``aggregation: {name: era, temperature: 0.1}`` ->
    ``validate_target_rule("era", temperature=0.1)``. Data-dependent requirements
    (``num_examples`` for ``size_weighted``, ``label_histograms`` for ``label_aware``:
    the rules with ``needs_num_examples`` / ``needs_label_histograms``) are checked by
    :func:`teacher_targets`.

    Raises
    ------
    ConfigError
        Unknown ``aggregation.name`` (message lists the registered rules), unknown option
        ``aggregation.<option>`` (message lists the allowed ones) or an option value out of
        range (``aggregation.<option>``).
    """
    _resolve_options(rule, options)


def _resolve_options(rule: str, options: Mapping[str, Any]) -> dict[str, float]:
    defaults = target_rule_options(rule)
    check_option_names(options, defaults, key="aggregation", owner=f"aggregation.name={rule!r}")
    resolved = {**defaults, **options}
    return {key: check_rule_option(rule, key, value) for key, value in resolved.items()}


# --------------------------------------------------------------------------- input checks


def _stack(client_probs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    if not isinstance(client_probs, np.ndarray):
        arrays = [np.asarray(p) for p in client_probs]
        if not arrays:
            raise ValueError("client_probs is empty: need at least one client")
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(
                "all clients' probability arrays must have equal shapes, got "
                f"{[a.shape for a in arrays]}"
            )
        client_probs = np.stack(arrays)
    if client_probs.ndim != 3:
        raise ValueError(
            "client_probs must be 3-D (K clients, N examples, C classes), got shape "
            f"{client_probs.shape}"
        )
    k, n, c = client_probs.shape
    if k == 0 or n == 0 or c == 0:
        raise ValueError(f"client_probs must have K, N, C >= 1, got shape {client_probs.shape}")
    return client_probs


def check_probs(client_probs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Stack, check and return ``client_probs`` as a float64 ``(K, N, C)`` array.

    Raises
    ------
    ValueError
        If the input is not 3-D / shapes differ, contains non-finite or negative values,
        or has rows that do not sum to 1 (within 1e-3), e.g. logits passed by mistake.
    """
    probs = _stack(client_probs).astype(np.float64, copy=False)
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("client_probs must be finite and non-negative (probabilities, not logits)")
    sums = probs.sum(axis=2)
    if np.any(np.abs(sums - 1.0) > _ROW_SUM_TOL):
        worst = float(np.max(np.abs(sums - 1.0)))
        raise ValueError(
            f"client_probs rows must sum to 1 (probabilities); max deviation {worst:.3g}"
        )
    return probs


def _num_examples(
    num_examples: np.ndarray | Sequence[float] | None, k: int, rule: str
) -> np.ndarray:
    if num_examples is None:
        raise ValueError(f"rule {rule!r} needs num_examples, the (K,) clients' training-set sizes")
    sizes = np.asarray(num_examples, dtype=np.float64)
    if sizes.shape != (k,):
        raise ValueError(
            f"num_examples must have shape ({k},) (one size per client), got {sizes.shape}"
        )
    if not np.all(np.isfinite(sizes)) or np.any(sizes < 0):
        raise ValueError(f"num_examples must be finite and non-negative, got {sizes.tolist()}")
    if sizes.sum() <= 0:
        raise ValueError("num_examples are all zero: no client has any training examples")
    return sizes


def _label_histograms(label_histograms: np.ndarray | None, k: int, c: int, rule: str) -> np.ndarray:
    if label_histograms is None:
        raise ValueError(f"rule {rule!r} needs label_histograms, the (K, C) clients' label counts")
    hist = np.asarray(label_histograms, dtype=np.float64)
    if hist.shape != (k, c):
        raise ValueError(
            f"label_histograms must have shape ({k}, {c}) (K clients, C classes), got {hist.shape}"
        )
    if not np.all(np.isfinite(hist)) or np.any(hist < 0):
        raise ValueError("label_histograms must be finite and non-negative counts")
    return hist


# --------------------------------------------------------------------------- dispatch


def teacher_targets(
    client_probs: np.ndarray | Sequence[np.ndarray],
    *,
    rule: str = "mean",
    num_examples: np.ndarray | Sequence[float] | None = None,
    label_histograms: np.ndarray | None = None,
    **options: float,
) -> np.ndarray:
    """Aggregate client probabilities into ``(N, C)`` targets with a named rule.

    YAML: ``aggregation: {name: era, temperature: 0.1}`` ->
    ``teacher_targets(probs, rule="era", temperature=0.1)``. See the rule functions of
    :mod:`fedkd.distill.targets` (:func:`~fedkd.distill.targets.mean_targets`,
    :func:`~fedkd.distill.targets.era_targets`, ...) for the formulas and sources.

    Parameters
    ----------
    client_probs : np.ndarray or sequence of np.ndarray
        ``(K, N, C)`` array (K clients, N examples, C classes), rows probability vectors.
    rule : str, optional
        A registered rule name (default ``"mean"``). Config key ``aggregation.name``.
    num_examples : array-like, optional
        ``(K,)`` clients' training-set sizes; required by the rules that need them
        (``size_weighted``), ignored by the others.
    label_histograms : np.ndarray, optional
        ``(K, C)`` clients' label counts; required by the rules that need them
        (``label_aware``), ignored by the others.
    **options : float
        The rule's options (see :func:`target_rule_options`); missing ones take their
        defaults.

    Returns
    -------
    np.ndarray
        ``(N, C)`` float32 targets; every row sums to 1.

    Raises
    ------
    ConfigError
        As :func:`validate_target_rule`.
    ValueError
        Bad ``client_probs`` (see :func:`check_probs`), or ``num_examples`` /
        ``label_histograms`` missing or malformed for the rule that needs them.
    """
    resolved = _resolve_options(rule, options)
    entry = TARGET_RULE_REGISTRY[rule]
    probs = check_probs(client_probs)
    k, _, c = probs.shape
    data: dict[str, np.ndarray] = {}
    if entry.needs_num_examples:
        data["num_examples"] = _num_examples(num_examples, k, rule)
    if entry.needs_label_histograms:
        data["label_histograms"] = _label_histograms(label_histograms, k, c, rule)
    return entry.fn(probs, **data, **resolved)
