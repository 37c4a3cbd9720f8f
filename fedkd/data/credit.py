"""Synthetic credit-default population behind ``dataset=credit`` (:func:`generate_credit`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkd.data.dataset_registry import (
    RawDataset,
    is_real,
    require_int,
    require_real,
)
from fedkd.errors import ConfigError

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


def check_credit_options(options: Mapping[str, Any]) -> None:
    """Validate resolved ``credit`` options (raises :class:`ConfigError` naming the key).

    Parameters
    ----------
    options : Mapping[str, Any]
        ``num_samples``, ``default_rate``, ``noise`` and ``seed``.
    """
    num_samples = require_int("dataset.num_samples", options["num_samples"], 100)
    require_int("dataset.seed", options["seed"], 0)
    require_real("dataset.noise", options["noise"], low=0.0)
    rate = options["default_rate"]
    if not is_real(rate) or not 0.0 < float(rate) <= 0.5:
        raise ConfigError(f"dataset.default_rate must be a number in (0, 0.5], got {rate!r}")
    if round(float(rate) * num_samples) < 1:
        raise ConfigError(
            f"dataset.default_rate={rate} x dataset.num_samples={num_samples} rounds to "
            "0 defaulters; raise dataset.default_rate or dataset.num_samples"
        )


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
    check_credit_options(
        {"num_samples": num_samples, "default_rate": default_rate, "noise": noise, "seed": seed}
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


def load_credit(num_samples: int, default_rate: float, noise: float, seed: int) -> RawDataset:
    """:func:`generate_credit`, features standardised (z-scores over the rows), float32."""
    features, labels = generate_credit(num_samples, default_rate, noise, seed)
    mean = features.mean(axis=0)
    std = np.maximum(features.std(axis=0), 1e-8)
    x = ((features - mean) / std).astype(np.float32)
    return RawDataset(
        x=x, y=labels, num_classes=2, input_shape=(len(CREDIT_FEATURES),), name="credit"
    )
