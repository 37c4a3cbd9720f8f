"""Tests for the synthetic ``credit`` dataset and the ``feature_skew`` partitioner."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedkd.data import (
    CREDIT_FEATURES,
    DATASET_OPTIONS,
    PARTITION_OPTIONS,
    build_federated_data,
    generate_credit,
    get_federated_data,
    load_dataset,
    partition_indices,
    validate_data_config,
)
from fedkd.errors import ConfigError

AGE = CREDIT_FEATURES.index("age")
INCOME = CREDIT_FEATURES.index("log_income")


def _col(name: str) -> int:
    return CREDIT_FEATURES.index(name)


# --------------------------------------------------------------------------- dataset


def test_defaults_and_feature_names() -> None:
    assert DATASET_OPTIONS["credit"] == {
        "num_samples": 5000,
        "default_rate": 0.22,
        "noise": 1.0,
        "seed": 0,
    }
    assert len(CREDIT_FEATURES) == 14 == len(set(CREDIT_FEATURES))
    assert (AGE, INCOME) == (0, 1)  # documented in configs/partition/feature_skew.yaml


def test_shape_and_dtype() -> None:
    data = load_dataset("credit")
    assert data.x.shape == (5000, 14)
    assert data.x.dtype == np.float32
    assert data.y.shape == (5000,)
    assert data.y.dtype == np.int64
    assert set(np.unique(data.y).tolist()) == {0, 1}
    assert (data.num_classes, data.input_shape, data.name) == (2, (14,), "credit")
    assert not data.has_test_split
    assert np.all(np.isfinite(data.x))


def test_same_seed_same_data_other_seed_other_data() -> None:
    first = load_dataset("credit", num_samples=500, seed=3)
    again = load_dataset("credit", num_samples=500, seed=3)
    other = load_dataset("credit", num_samples=500, seed=4)
    np.testing.assert_array_equal(first.x, again.x)
    np.testing.assert_array_equal(first.y, again.y)
    assert not np.allclose(first.x, other.x)
    assert not np.array_equal(first.y, other.y)


def test_does_not_touch_global_rng() -> None:
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    load_dataset("credit", num_samples=200)
    assert np.random.rand() == expected


@pytest.mark.parametrize("rate", [0.05, 0.22, 0.4, 0.5])
@pytest.mark.parametrize("noise", [0.0, 1.0, 3.0])
def test_realised_default_rate(rate: float, noise: float) -> None:
    data = load_dataset("credit", num_samples=2000, default_rate=rate, noise=noise, seed=1)
    assert abs(data.y.mean() - rate) <= 0.03


def test_features_are_standardised_raw_values() -> None:
    data = load_dataset("credit", num_samples=3000, seed=2)
    np.testing.assert_allclose(data.x.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(data.x.std(axis=0), 1.0, atol=1e-3)
    # Independent route: z-score the raw generator output by hand.
    raw, labels = generate_credit(3000, 0.22, 1.0, 2)
    expected = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    np.testing.assert_allclose(data.x, expected, atol=1e-5)
    np.testing.assert_array_equal(data.y, labels)


def test_raw_features_have_their_documented_meaning() -> None:
    raw, _ = generate_credit(4000, 0.22, 1.0, 0)
    age, income = raw[:, AGE], raw[:, INCOME]
    assert age.min() >= 21.0 and age.max() <= 80.0
    assert 9.5 < np.median(income) < 11.0  # log of a plausible annual income
    assert set(np.unique(raw[:, _col("education_level")]).tolist()) == {1.0, 2.0, 3.0, 4.0}
    assert np.all(raw[:, _col("num_credit_lines")] >= 1)
    utilization = raw[:, _col("utilization")]
    assert utilization.min() >= 0.0 and utilization.max() <= 1.1
    np.testing.assert_allclose(
        raw[:, _col("bill_amount")], utilization * raw[:, _col("credit_limit")]
    )
    ratio = raw[:, _col("payment_ratio")]
    assert ratio.min() >= 0.0 and ratio.max() <= 1.0
    late_6m, late_12m = raw[:, _col("late_payments_6m")], raw[:, _col("late_payments_12m")]
    assert np.all((late_6m >= 0) & (late_6m <= 6) & (late_12m >= late_6m) & (late_12m <= 12))
    employed_months = raw[:, _col("months_employed")]
    assert np.all(employed_months <= 12 * (age - 18) + 1e-9)
    # Older borrowers have longer credit histories.
    assert np.corrcoef(age, raw[:, _col("credit_history_months")])[0, 1] > 0.5


def _balanced_accuracy(noise: float, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split

    data = load_dataset("credit", noise=noise, seed=seed)
    x_train, x_test, y_train, y_test = train_test_split(
        data.x, data.y, test_size=0.3, random_state=0, stratify=data.y
    )
    model = LogisticRegression(class_weight="balanced", max_iter=1000).fit(x_train, y_train)
    return float(balanced_accuracy_score(y_test, model.predict(x_test)))


def test_labels_are_learnable() -> None:
    # The majority-class predictor has balanced accuracy 0.5; measured ~0.76.
    assert _balanced_accuracy(noise=1.0) > 0.65


def test_noise_makes_labels_harder() -> None:
    clean, default, noisy = (_balanced_accuracy(noise) for noise in (0.0, 1.0, 4.0))
    assert clean > 0.9
    assert clean > default + 0.1
    assert default > noisy + 0.05


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_samples", 99),
        ("num_samples", 500.0),
        ("num_samples", True),
        ("default_rate", 0),
        ("default_rate", 0.51),
        ("default_rate", -0.1),
        ("default_rate", "0.2"),
        ("noise", -0.5),
        ("noise", float("nan")),
        ("noise", float("inf")),
        ("noise", None),
        ("seed", -1),
        ("seed", 1.5),
    ],
)
def test_bad_options_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"dataset\.{key}"):
        load_dataset("credit", **{key: value})


def test_rate_rounding_to_no_defaulters_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.default_rate"):
        load_dataset("credit", num_samples=100, default_rate=0.001)


def test_unknown_option() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.num_features"):
        load_dataset("credit", num_features=3)


def test_generate_credit_validates_its_arguments() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.noise"):
        generate_credit(noise=-1.0)


# --------------------------------------------------------------------------- feature_skew


@pytest.fixture(scope="module")
def credit() -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("credit", num_samples=4000, seed=0)
    return data.x, data.y


def _feature_skew(
    x: np.ndarray, y: np.ndarray, *, num_partitions: int = 5, seed: int = 0, **options: object
) -> list[np.ndarray]:
    return partition_indices(
        y, num_partitions=num_partitions, name="feature_skew", seed=seed, features=x, **options
    )


def test_feature_skew_defaults() -> None:
    assert PARTITION_OPTIONS["feature_skew"] == {"feature": 0, "strictness": 0.7}


@pytest.mark.parametrize("strictness", [0.0, 0.7, 1.0])
def test_feature_skew_disjoint_cover_balanced(
    credit: tuple[np.ndarray, np.ndarray], strictness: float
) -> None:
    x, y = credit
    parts = _feature_skew(x, y, num_partitions=7, strictness=strictness)
    assert len(parts) == 7
    joined = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(y)))
    assert sorted(len(p) for p in parts) == [571] * 4 + [572] * 3  # 4000 = 7 * 571 + 3
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)


def test_feature_skew_strict_sorts_clients_by_the_feature(
    credit: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = credit
    parts = _feature_skew(x, y, feature=AGE, strictness=1.0)
    means = [float(x[p, AGE].mean()) for p in parts]
    assert np.all(np.diff(means) > 0.3)
    for low, high in itertools.pairwise(parts):
        assert x[low, AGE].max() <= x[high, AGE].min()  # contiguous ranges of age


def test_feature_skew_zero_strictness_is_iid(credit: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = credit
    parts = _feature_skew(x, y, feature=INCOME, strictness=0.0)
    means = [float(x[p, INCOME].mean()) for p in parts]
    # 800 standardised values per client: the mean's standard error is ~0.035.
    assert max(means) - min(means) < 0.2


def test_feature_skew_strictness_orders_the_spread(
    credit: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = credit

    def spread(strictness: float) -> float:
        parts = _feature_skew(x, y, feature=INCOME, strictness=strictness)
        means = [float(x[p, INCOME].mean()) for p in parts]
        return max(means) - min(means)

    low, mid, high = spread(0.0), spread(0.7), spread(1.0)
    assert low < mid < high
    assert mid > 1.0  # 0.7 already gives clearly different customer bases


def test_feature_skew_is_seeded(credit: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = credit
    first = _feature_skew(x, y, seed=1)
    again = _feature_skew(x, y, seed=1)
    other = _feature_skew(x, y, seed=2)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_feature_skew_on_images_uses_the_flattened_index() -> None:
    digits = load_dataset("digits")
    pixel = 3 * 8 + 4  # row 3, column 4 of the 8x8 image
    parts = _feature_skew(digits.x, digits.y, num_partitions=4, feature=pixel, strictness=1.0)
    values = digits.x.reshape(len(digits.y), -1)[:, pixel]
    assert values.std() > 0.1
    means = [float(values[p].mean()) for p in parts]
    assert means == sorted(means) and means[-1] - means[0] > 0.5
    with pytest.raises(ConfigError, match=r"partition\.feature.*\[0, 63\]"):
        _feature_skew(digits.x, digits.y, feature=64)


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        pytest.param(option, value, match, id=f"{option}={value!r}")
        for option, values, match in [
            ("feature", [14, 100, -1, 1.5, True, "age"], r"partition\.feature.*\[0, 13\]"),
            ("strictness", [-0.1, 1.5, True, "high"], r"partition\.strictness"),
        ]
        for value in values
    ],
)
def test_feature_skew_bad_options(
    credit: tuple[np.ndarray, np.ndarray], option: str, value: object, match: str
) -> None:
    x, y = credit
    with pytest.raises(ConfigError, match=match):
        _feature_skew(x, y, **{option: value})


def test_feature_skew_without_features(credit: tuple[np.ndarray, np.ndarray]) -> None:
    _, y = credit
    with pytest.raises(ConfigError, match=r"partition\.feature.*no features"):
        partition_indices(y, num_partitions=3, name="feature_skew", seed=0)


def test_feature_skew_misaligned_features(credit: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = credit
    with pytest.raises(ConfigError, match=r"one row per label"):
        _feature_skew(x[:-1], y)


def test_feature_skew_constant_feature(credit: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = credit
    constant = x.copy()
    constant[:, 2] = 1.0
    with pytest.raises(ConfigError, match=r"partition\.feature=2.*constant"):
        _feature_skew(constant, y, feature=2, strictness=0.5)
    # With strictness 0 the feature carries no weight: still an IID (shuffled) split.
    parts = _feature_skew(constant, y, feature=2, strictness=0.0)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    assert not np.array_equal(parts[0], np.arange(len(parts[0])))


def test_feature_skew_non_finite_feature(credit: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = credit
    broken = x.copy()
    broken[5, 0] = np.nan
    with pytest.raises(ConfigError, match=r"partition\.feature=0.*NaN"):
        _feature_skew(broken, y)


def test_label_partitioners_ignore_features(credit: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = credit
    without = partition_indices(y, num_partitions=4, name="dirichlet", seed=0, alpha=0.5)
    with_features = partition_indices(
        y, num_partitions=4, name="dirichlet", seed=0, alpha=0.5, features=x
    )
    for a, b in zip(without, with_features, strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- pipeline


def test_federated_credit_with_income_skew() -> None:
    fd = get_federated_data(
        {"name": "credit", "num_samples": 2000, "seed": 5},
        {"name": "feature_skew", "feature": INCOME, "strictness": 1.0},
        num_clients=4,
        seed=0,
        proxy_labeled=True,
    )
    assert (fd.name, fd.num_classes, fd.input_shape, fd.num_clients) == ("credit", 2, (14,), 4)
    assert len(fd.test_y) + len(fd.proxy_x) + len(fd.train_y) == 2000
    sizes = [len(p) for p in fd.partitions]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(fd.train_y)
    means = [float(fd.train_x[p, INCOME].mean()) for p in fd.partitions]
    assert np.all(np.diff(means) > 0.3)
    # Poorer banks see more defaults (income lowers the risk score).
    default_rates = [float(fd.train_y[p].mean()) for p in fd.partitions]
    assert default_rates[0] > default_rates[-1]
    assert np.all(fd.label_histograms() > 0)
    client = fd.client_data(0)
    assert client.train_x.shape[1] == 14 and len(client.test_y) > 0


def test_federated_feature_out_of_range_fails_before_partitioning() -> None:
    with pytest.raises(ConfigError, match=r"partition\.feature.*\[0, 13\]"):
        build_federated_data(
            {"name": "credit", "num_samples": 300},
            {"name": "feature_skew", "feature": 14},
            num_clients=3,
            seed=0,
        )


def test_validate_data_config_checks_feature_skew_options() -> None:
    splits = {"proxy_fraction": 0.2, "test_fraction": 0.2, "local_test_fraction": 0.2}
    skew = {"name": "feature_skew", "feature": 1, "strictness": 0.3}
    validate_data_config({"name": "credit"}, skew, num_clients=3, **splits)
    bad_skew = {"name": "feature_skew", "feature": -1}
    with pytest.raises(ConfigError, match=r"partition\.feature"):
        validate_data_config({"name": "credit"}, bad_skew, num_clients=3, **splits)
    bad_credit = {"name": "credit", "default_rate": 0.9}
    with pytest.raises(ConfigError, match=r"dataset\.default_rate"):
        validate_data_config(bad_credit, {"name": "iid"}, num_clients=3, **splits)


def test_feature_skew_tiny_clients_are_rejected() -> None:
    # 100 rows -> pool of 64; 40 clients get 1 or 2 rows each, which is too few.
    with pytest.raises(ConfigError, match=r"fewer than 2 samples"):
        build_federated_data(
            {"name": "credit", "num_samples": 100},
            {"name": "feature_skew"},
            num_clients=40,
            seed=0,
        )
