"""Dataset registry: load a named dataset into plain numpy arrays (:class:`RawDataset`).

The ``hf`` dataset loads any Hugging Face dataset (Hub id or local parquet/CSV files)
through flwr-datasets :class:`~flwr_datasets.FederatedDataset`. The ``credit`` dataset is a
seeded *synthetic* credit-default population (see :func:`generate_credit`).
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

DATASET_NAMES: tuple[str, ...] = (
    "digits",
    "breast_cancer",
    "mnist1d",
    "synthetic",
    "hf",
    "credit",
)

#: Column names of the ``credit`` dataset, in feature-index order (``x[:, i]`` is
#: ``CREDIT_FEATURES[i]``); e.g. ``partition.feature=0`` skews clients by age and
#: ``partition.feature=1`` by income. Units are those before standardisation.
CREDIT_FEATURES: tuple[str, ...] = (
    "age",  # 0: years, 21 + Gamma(3, 6.5), capped at 80
    "log_income",  # 1: natural log of annual income
    "education_level",  # 2: 1 = high school, 2 = some college, 3 = university, 4 = graduate
    "months_employed",  # 3: at the current employer
    "credit_history_months",  # 4: age of the oldest credit account
    "num_credit_lines",  # 5: open credit lines (>= 1)
    "credit_limit",  # 6: thousands, on the card this record is about
    "bill_amount",  # 7: thousands, current balance = utilization * credit_limit
    "utilization",  # 8: balance / limit, in [0, 1.1]
    "debt_to_income",  # 9: (balance + other debt) / annual income
    "payment_ratio",  # 10: last payment / last bill, in [0, 1]
    "late_payments_6m",  # 11: months with a late payment in the last 6 (0..6)
    "late_payments_12m",  # 12: same over the last 12 months (>= late_payments_6m, <= 12)
    "recent_inquiries",  # 13: hard credit inquiries in the last 6 months
)

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
    "credit": {"num_samples": 5000, "default_rate": 0.22, "noise": 1.0, "seed": 0},
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


def _require_real(key: str, value: Any, *, low: float, high: float | None = None) -> float:
    """A finite number with ``low <= value`` (and ``value <= high`` if given)."""
    if (
        not _is_real(value)
        or not np.isfinite(float(value))
        or float(value) < low
        or (high is not None and float(value) > high)
    ):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{key} must be a finite number {allowed}, got {value!r}")
    return float(value)


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
    elif name == "credit":
        num_samples = _require_int("dataset.num_samples", resolved["num_samples"], 100)
        _require_int("dataset.seed", resolved["seed"], 0)
        _require_real("dataset.noise", resolved["noise"], low=0.0)
        rate = resolved["default_rate"]
        if not _is_real(rate) or not 0.0 < float(rate) <= 0.5:
            raise ConfigError(f"dataset.default_rate must be a number in (0, 0.5], got {rate!r}")
        if round(float(rate) * num_samples) < 1:
            raise ConfigError(
                f"dataset.default_rate={rate} x dataset.num_samples={num_samples} rounds to "
                "0 defaulters; raise dataset.default_rate or dataset.num_samples"
            )
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


# ---- synthetic credit default


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-values)))


def generate_credit(
    num_samples: int = 5000, default_rate: float = 0.22, noise: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    r"""Generate the synthetic credit-default population behind ``dataset=credit``.

    **Synthetic data, not real credit records.** No real person, bank or public data set
    is behind these rows: every value is drawn from the hand-written model below (numpy
    only, fully determined by ``seed``). Its marginals and signs are loosely modelled on
    the UCI "default of credit card clients" data (Yeh & Lien, 2009) and on common
    credit-scoring features, but nothing is fitted to real data, so results on it say
    nothing about real borrowers. It is meant as an offline, citable tabular benchmark
    ("banks holding credit-default records") for federated learning and privacy studies.

    Generative model, one borrower per row, all draws independent across rows
    (:math:`a = \text{age} - 21`, :math:`\sigma` the logistic sigmoid,
    :math:`\Gamma(k, \theta)` a gamma draw with shape :math:`k` and scale :math:`\theta`):

    - ``age`` :math:`= \min(21 + \Gamma(3, 6.5), 80)` years;
      ``education_level`` :math:`\in \{1,2,3,4\}` with probabilities
      0.25, 0.30, 0.30, 0.15.
    - ``log_income`` :math:`\ell = 9.9 + 0.18(\text{edu} - 2.5) + 0.035a
      - 0.0006a^2 + \mathcal N(0, 0.4^2)` (income rises and flattens with age).
    - ``months_employed`` :math:`= \min(12\,\Gamma(2, 3 + 0.15a), 12(\text{age}-18))`;
      ``credit_history_months`` :math:`= 12(\text{age}-18)\,U(0.2, 1)`;
      ``num_credit_lines`` :math:`= 1 + \text{Poisson}(\max(1.5 + 0.06a
      + 0.8(\ell - 10.5), 0.2))`.
    - ``credit_limit`` (thousands) :math:`= e^{\ell} e^{\mathcal N(-1.4, 0.35^2)}
      (1 + 0.05\,\text{lines}) / 1000`.
    - An unobserved financial-stress factor :math:`s \sim \mathcal N(0, 1)` drives the
      behavioural features: ``utilization`` :math:`u = 1.1\,\sigma(-0.8 + 1.1s
      + \mathcal N(0, 0.6^2))`; ``bill_amount`` :math:`= u \cdot \text{limit}`;
      ``debt_to_income`` :math:`d = 1000\,\text{bill}/e^{\ell} + \Gamma(2, 0.09)`;
      ``payment_ratio`` :math:`r = \sigma(1 - s + \mathcal N(0, 0.7^2))`;
      ``late_payments_6m`` :math:`L_6 = \min(\text{Poisson}(e^{-1.5 + 0.9s}), 6)`;
      ``late_payments_12m`` :math:`L_{12} = \min(L_6 + \text{Poisson}(e^{-1.7 + 0.8s}),
      12)`; ``recent_inquiries`` :math:`q = \text{Poisson}(e^{-0.6 + 0.4s})`.
    - Risk score (linear terms, a U-shape in age, an interaction and a threshold):

      .. math::

          R = 1.6(u - 0.5) + 0.5L_6 + 0.2(L_{12} - L_6) - 1.6(r - 0.5) + 1.2(d - 0.4)
              - 0.6(\ell - 10.5) - 0.06\min(m_{emp}, 120)/12 + 0.12q - 0.02h/12
              + 0.0015(\text{age} - 45)^2 + 0.9u\,[L_6 > 0] + 0.8\,[u > 0.9] + 0.4s

      with :math:`m_{emp}` = ``months_employed`` and :math:`h` =
      ``credit_history_months``.
    - Label: ``default`` :math:`y = [R + \text{noise}\cdot\varepsilon > t]` with
      :math:`\varepsilon \sim \text{Logistic}(0, 1)`, i.e. given the threshold,
      :math:`P(y = 1 \mid x, s) = \sigma((R - t)/\text{noise})` -- a logistic model
      with intercept :math:`-t/\text{noise}` and temperature ``noise`` (``noise=0``:
      deterministic labels). The threshold :math:`t` is the order statistic of the
      generated population that makes exactly ``round(default_rate * num_samples)``
      borrowers default, so the realised default rate equals ``default_rate`` up to
      rounding.

    With the defaults a logistic regression on the standardised features reaches a
    ROC AUC of about 0.84 (balanced accuracy about 0.76); larger ``noise`` lowers both.

    To run on the real UCI data instead (needs the network), use the ``hf`` loader with
    the public Hub copy ``scikit-learn/credit-card-clients`` (one CSV, a ``train`` split
    only); list the feature columns, since the file's ``ID`` column is not a feature::

        python -m simulations.run dataset=hf \
            dataset.path=scikit-learn/credit-card-clients \
            dataset.label=default.payment.next.month \
            'dataset.features=[LIMIT_BAL,AGE,PAY_0,PAY_2,PAY_3,BILL_AMT1,PAY_AMT1]'

    fedkd then splits off the server test set and standardises the features itself.

    Parameters
    ----------
    num_samples : int
        Number of borrowers (rows).
    default_rate : float
        Share of defaulters, in (0, 0.5].
    noise : float
        Scale (temperature) of the logistic label noise, >= 0.
    seed : int
        Seed of the ``numpy.random.Generator`` all draws come from.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        Raw (unstandardised) float64 features of shape ``(num_samples, 14)``, columns in
        :data:`CREDIT_FEATURES` order, and int64 labels (1 = default, 0 = no default).

    Raises
    ------
    ConfigError
        An argument out of range (named as the ``dataset.<option>`` key).
    """
    resolve_dataset_options(
        "credit",
        {"num_samples": num_samples, "default_rate": default_rate, "noise": noise, "seed": seed},
    )
    rng = np.random.default_rng(seed)
    n = int(num_samples)
    age = np.minimum(21.0 + rng.gamma(3.0, 6.5, n), 80.0)
    years = age - 21.0
    education = rng.choice(np.arange(1, 5), size=n, p=[0.25, 0.30, 0.30, 0.15]).astype(float)
    log_income = (
        9.9 + 0.18 * (education - 2.5) + 0.035 * years - 0.0006 * years**2 + rng.normal(0.0, 0.4, n)
    )
    income = np.exp(log_income)
    working_months = 12.0 * (age - 18.0)
    months_employed = np.minimum(12.0 * rng.gamma(2.0, 3.0 + 0.15 * years), working_months)
    history_months = working_months * rng.uniform(0.2, 1.0, n)
    lines = 1.0 + rng.poisson(np.maximum(1.5 + 0.06 * years + 0.8 * (log_income - 10.5), 0.2))
    credit_limit = income * np.exp(rng.normal(-1.4, 0.35, n)) * (1.0 + 0.05 * lines) / 1000.0
    stress = rng.standard_normal(n)  # unobserved
    utilization = 1.1 * _sigmoid(-0.8 + 1.1 * stress + rng.normal(0.0, 0.6, n))
    bill_amount = utilization * credit_limit
    debt_to_income = 1000.0 * bill_amount / income + rng.gamma(2.0, 0.09, n)
    payment_ratio = _sigmoid(1.0 - stress + rng.normal(0.0, 0.7, n))
    late_6m = np.minimum(rng.poisson(np.exp(-1.5 + 0.9 * stress)), 6).astype(float)
    late_12m = np.minimum(late_6m + rng.poisson(np.exp(-1.7 + 0.8 * stress)), 12).astype(float)
    inquiries = rng.poisson(np.exp(-0.6 + 0.4 * stress)).astype(float)

    risk = (
        1.6 * (utilization - 0.5)
        + 0.5 * late_6m
        + 0.2 * (late_12m - late_6m)
        - 1.6 * (payment_ratio - 0.5)
        + 1.2 * (debt_to_income - 0.4)
        - 0.6 * (log_income - 10.5)
        - 0.06 * np.minimum(months_employed, 120.0) / 12.0
        + 0.12 * inquiries
        - 0.02 * history_months / 12.0
        + 0.0015 * (age - 45.0) ** 2
        + 0.9 * utilization * (late_6m > 0)
        + 0.8 * (utilization > 0.9)
        + 0.4 * stress
    )
    latent = risk + float(noise) * rng.logistic(0.0, 1.0, n)
    # Choosing the threshold as an order statistic fixes the realised default rate.
    num_defaults = round(float(default_rate) * n)
    labels = np.zeros(n, dtype=np.int64)
    labels[np.argsort(-latent, kind="stable")[:num_defaults]] = 1

    features = np.column_stack(
        [
            age,
            log_income,
            education,
            months_employed,
            history_months,
            lines,
            credit_limit,
            bill_amount,
            utilization,
            debt_to_income,
            payment_ratio,
            late_6m,
            late_12m,
            inquiries,
        ]
    )
    assert features.shape[1] == len(CREDIT_FEATURES)
    return features, labels


def _load_credit(num_samples: int, default_rate: float, noise: float, seed: int) -> RawDataset:
    """:func:`generate_credit`, features standardised (z-scores over the rows), float32."""
    features, labels = generate_credit(num_samples, default_rate, noise, seed)
    mean = features.mean(axis=0)
    std = np.maximum(features.std(axis=0), 1e-8)
    x = ((features - mean) / std).astype(np.float32)
    return RawDataset(
        x=x, y=labels, num_classes=2, input_shape=(len(CREDIT_FEATURES),), name="credit"
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
    "credit": _load_credit,
}


def load_dataset(name: str, **options: Any) -> RawDataset:
    """Load a registered dataset into numpy arrays.

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`: ``"digits"``, ``"breast_cancer"``, ``"mnist1d"``,
        ``"synthetic"``, ``"hf"`` or ``"credit"``.
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
        - ``credit``: ``num_samples`` (5000), ``default_rate`` (0.22, in (0, 0.5]),
          ``noise`` (1.0, logistic label-noise scale >= 0), ``seed`` (0). Synthetic
          (not real) borrowers with the 14 :data:`CREDIT_FEATURES`, standardised;
          label 1 = default. Generative model: :func:`generate_credit`.

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
