"""Tests for the dataset registry in fedkd.data.datasets."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedkd.data import DATASET_NAMES, load_dataset
from fedkd.errors import ConfigError


def test_registry_names() -> None:
    assert DATASET_NAMES == ("digits", "breast_cancer", "mnist1d", "synthetic", "hf", "credit")


def test_digits_shapes_and_scaling() -> None:
    data = load_dataset("digits")
    assert data.x.shape == (1797, 1, 8, 8)
    assert data.x.dtype == np.float32
    assert data.y.shape == (1797,)
    assert data.y.dtype == np.int64
    assert data.num_classes == 10
    assert data.input_shape == (1, 8, 8)
    assert data.name == "digits"
    assert data.x_test is None and data.y_test is None
    assert data.x.min() == 0.0 and data.x.max() == 1.0  # raw pixels are 0..16
    assert set(np.unique(data.y).tolist()) == set(range(10))


def test_digits_read_without_sklearn_equal_load_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The digits are read from scikit-learn's file without importing it (issue 20), and are
    exactly what ``load_digits`` gives; without the file, ``load_digits`` is used."""
    from sklearn.datasets import load_digits

    from fedkd.data import datasets

    bunch = load_digits()
    expected_x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    data = load_dataset("digits")
    np.testing.assert_array_equal(data.x, expected_x)
    np.testing.assert_array_equal(data.y, bunch.target)
    monkeypatch.setattr(datasets, "_read_digits_file", lambda: None)
    fallback = load_dataset("digits")
    np.testing.assert_array_equal(fallback.x, data.x)
    np.testing.assert_array_equal(fallback.y, data.y)


def test_breast_cancer_raw_features() -> None:
    data = load_dataset("breast_cancer")
    assert data.x.shape == (569, 30)
    assert data.x.dtype == np.float32
    assert data.y.dtype == np.int64
    assert data.num_classes == 2
    assert data.input_shape == (30,)
    # Raw (unstandardised) features: the "mean area" column is in the hundreds.
    assert data.x[:, 3].mean() > 100.0
    assert np.bincount(data.y).tolist() == [212, 357]


def test_mnist1d_default_has_own_test_split() -> None:
    data = load_dataset("mnist1d")
    assert data.x.shape == (3200, 1, 40)  # 4000 * 0.8
    assert data.x_test is not None and data.y_test is not None
    assert data.x_test.shape == (800, 1, 40)
    assert data.y_test.shape == (800,)
    assert data.x.dtype == np.float32 and data.x_test.dtype == np.float32
    assert data.y.dtype == np.int64 and data.y_test.dtype == np.int64
    assert data.num_classes == 10
    assert data.input_shape == (1, 40)


def test_mnist1d_seeded_and_leaves_global_rng_alone() -> None:
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    first = load_dataset("mnist1d", num_samples=200, seed=7)
    assert np.random.rand() == expected_np
    assert random.random() == expected_py
    again = load_dataset("mnist1d", num_samples=200, seed=7)
    other = load_dataset("mnist1d", num_samples=200, seed=8)
    assert first.x.shape == (160, 1, 40)
    np.testing.assert_array_equal(first.x, again.x)
    assert not np.array_equal(first.x, other.x)
    # Cached copies are independent: mutating one does not leak into the next load.
    first.x[...] = 0.0
    assert not np.all(load_dataset("mnist1d", num_samples=200, seed=7).x == 0.0)


def test_synthetic_options_and_seed() -> None:
    data = load_dataset("synthetic", num_samples=300, num_features=5, num_classes=3, seed=1)
    assert data.x.shape == (300, 5)
    assert data.input_shape == (5,)
    assert data.num_classes == 3
    assert np.bincount(data.y).tolist() == [100, 100, 100]
    same = load_dataset("synthetic", num_samples=300, num_features=5, num_classes=3, seed=1)
    other = load_dataset("synthetic", num_samples=300, num_features=5, num_classes=3, seed=2)
    np.testing.assert_array_equal(data.x, same.x)
    assert not np.array_equal(data.x, other.x)


def test_synthetic_class_sep_separates_clusters() -> None:
    def between_to_within(class_sep: float) -> float:
        data = load_dataset("synthetic", num_samples=600, class_sep=class_sep, seed=3)
        means = np.stack([data.x[data.y == k].mean(axis=0) for k in range(4)])
        within = np.mean([data.x[data.y == k].std(axis=0).mean() for k in range(4)])
        return float(means.std(axis=0).mean() / within)

    assert between_to_within(3.0) > 2 * between_to_within(0.5)


def test_unknown_dataset_name() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.name") as info:
        load_dataset("cifar10")
    assert "digits" in str(info.value)


def test_unknown_option_named() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.num_samples"):
        load_dataset("digits", num_samples=10)


def test_invalid_option_value_named() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.class_sep"):
        load_dataset("synthetic", class_sep=0)
    with pytest.raises(ConfigError, match=r"dataset\.path"):
        load_dataset("hf")
