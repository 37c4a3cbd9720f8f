"""Tests for proxy control in the federated view (size cap, class filter, other dataset)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from fedkd.data import (
    FederatedData,
    RawDataset,
    build_federated_data,
    get_federated_data,
    load_dataset,
    proxy_round_indices,
    validate_data_config,
)
from fedkd.data import federated as federated_module
from fedkd.errors import ConfigError

DIGITS = {"name": "digits"}
BREAST = {"name": "breast_cancer"}
IID = {"name": "iid"}
DIRICHLET = {"name": "dirichlet", "alpha": 0.5}
SPLITS = {"proxy_fraction": 0.2, "test_fraction": 0.2, "local_test_fraction": 0.2}


def _assert_same_pool(a: FederatedData, b: FederatedData) -> None:
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.train_y, b.train_y)
    np.testing.assert_array_equal(a.test_x, b.test_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    assert len(a.partitions) == len(b.partitions)
    for part_a, part_b in zip(a.partitions, b.partitions, strict=True):
        np.testing.assert_array_equal(part_a, part_b)


def _rows(x: np.ndarray) -> set[bytes]:
    return {np.ascontiguousarray(row).tobytes() for row in x}


def _digits(**proxy: Any) -> FederatedData:
    """The federated view of digits over 4 Dirichlet(0.5) clients (seed 3), proxy options."""
    return build_federated_data(DIGITS, DIRICHLET, num_clients=4, seed=3, **proxy)


def _validate(dataset: dict, **proxy: Any) -> None:
    """validate_data_config on 2 iid clients with 20 % proxy, test and local test splits."""
    validate_data_config(dataset, IID, num_clients=2, **SPLITS, **proxy)


@pytest.fixture(scope="module")
def uncapped() -> FederatedData:
    return _digits(proxy_labeled=True)


# --------------------------------------------------------------------------- defaults


def test_defaults_record_split_source(uncapped: FederatedData) -> None:
    assert uncapped.proxy_source == "split"
    assert uncapped.proxy_y is not None
    assert uncapped.proxy_labels_for_diagnostics is not None
    np.testing.assert_array_equal(uncapped.proxy_labels_for_diagnostics, uncapped.proxy_y)


def test_unlabeled_proxy_still_has_diagnostic_labels(uncapped: FederatedData) -> None:
    fd = _digits()
    assert fd.proxy_y is None
    assert uncapped.proxy_y is not None
    np.testing.assert_array_equal(fd.proxy_labels_for_diagnostics, uncapped.proxy_y)
    np.testing.assert_array_equal(fd.proxy_x, uncapped.proxy_x)


# --------------------------------------------------------------------------- proxy_size


def test_proxy_size_caps_and_keeps_partitions(uncapped: FederatedData) -> None:
    fd = _digits(proxy_labeled=True, proxy_size=50)
    assert len(fd.proxy_x) == 50
    assert fd.proxy_y is not None and len(fd.proxy_y) == 50
    _assert_same_pool(fd, uncapped)
    # The capped proxy is a subset of the uncapped one (dropped examples are discarded,
    # not moved into the pool).
    assert _rows(fd.proxy_x) <= _rows(uncapped.proxy_x)
    assert len(fd.train_y) + len(fd.test_y) + len(uncapped.proxy_x) == 1797
    # Stratified-ish: every digit class is represented in 50 examples.
    assert set(np.unique(fd.proxy_y).tolist()) == set(range(10))


def test_proxy_size_is_seeded() -> None:
    a = build_federated_data(DIGITS, IID, num_clients=2, seed=5, proxy_size=40)
    b = build_federated_data(DIGITS, IID, num_clients=2, seed=5, proxy_size=40)
    c = build_federated_data(DIGITS, IID, num_clients=2, seed=6, proxy_size=40)
    np.testing.assert_array_equal(a.proxy_x, b.proxy_x)
    assert not np.array_equal(a.proxy_x, c.proxy_x)


def test_proxy_size_larger_than_available_keeps_all(
    uncapped: FederatedData, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fedkd.data.federated"):
        fd = _digits(proxy_labeled=True, proxy_size=100_000)
    np.testing.assert_array_equal(fd.proxy_x, uncapped.proxy_x)
    assert any("data.proxy_size" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_proxy_size_invalid(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.proxy_size"):
        build_federated_data(DIGITS, IID, num_clients=2, seed=0, proxy_size=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- proxy_classes


def test_proxy_classes_filters_labels(uncapped: FederatedData) -> None:
    fd = _digits(proxy_classes=[7, 1, 4])
    labels = fd.proxy_labels_for_diagnostics
    assert labels is not None and fd.proxy_y is None
    assert set(np.unique(labels).tolist()) == {1, 4, 7}
    assert uncapped.proxy_y is not None
    assert len(fd.proxy_x) == int(np.isin(uncapped.proxy_y, [1, 4, 7]).sum())
    _assert_same_pool(fd, uncapped)


def test_proxy_classes_then_size(uncapped: FederatedData) -> None:
    fd = _digits(
        proxy_labeled=True,
        proxy_classes=[0, 9],
        proxy_size=20,
    )
    assert fd.proxy_y is not None and len(fd.proxy_y) == 20
    assert set(np.unique(fd.proxy_y).tolist()) == {0, 9}
    _assert_same_pool(fd, uncapped)


def test_proxy_classes_out_of_range() -> None:
    with pytest.raises(ConfigError, match=r"data\.proxy_classes.*\[10\]"):
        build_federated_data(DIGITS, IID, num_clients=2, seed=0, proxy_classes=[3, 10])


@pytest.mark.parametrize("bad", [[], [-1], [1.5], "3", [True]])
def test_proxy_classes_invalid_before_loading(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.proxy_classes"):
        _validate(DIGITS, proxy_classes=bad)


def test_proxy_empty_after_class_filtering(monkeypatch: pytest.MonkeyPatch) -> None:
    # Class 2 has a single example; the stratified 20 % proxy split never takes it
    # (quota 0.2 of one sample loses the largest-remainder tie to class 1's 0.8).
    y = np.array([0] * 50 + [1] * 49 + [2], dtype=np.int64)
    x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    x_test = np.zeros((6, 3), dtype=np.float32)
    y_test = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)
    tiny = RawDataset(
        x=x, y=y, num_classes=3, input_shape=(3,), name="tiny", x_test=x_test, y_test=y_test
    )
    monkeypatch.setattr(federated_module, "load_dataset", lambda name, **options: tiny)
    fd = build_federated_data(BREAST, IID, num_clients=2, seed=0, proxy_labeled=True)
    assert fd.proxy_y is not None and 2 not in fd.proxy_y
    with pytest.raises(ConfigError, match=r"data\.proxy_classes.*proxy is empty after class"):
        build_federated_data(BREAST, IID, num_clients=2, seed=0, proxy_classes=[2])


# --------------------------------------------------------------------------- proxy_dataset


def test_proxy_dataset_shape_mismatch() -> None:
    with pytest.raises(ConfigError, match=r"data\.proxy_dataset") as info:
        build_federated_data(
            DIGITS,
            IID,
            num_clients=2,
            seed=0,
            proxy_dataset={"name": "synthetic", "num_samples": 500, "num_features": 64},
        )
    message = str(info.value)
    assert "(64,)" in message and "(1, 8, 8)" in message


def test_proxy_dataset_replaces_split() -> None:
    proxy_cfg = {"name": "synthetic", "num_samples": 300, "num_features": 30, "num_classes": 2}
    plain = build_federated_data(BREAST, IID, num_clients=3, seed=1)
    fd = build_federated_data(
        BREAST,
        IID,
        num_clients=3,
        seed=1,
        proxy_fraction=0.3,  # ignored with a proxy dataset
        proxy_labeled=True,
        proxy_dataset=proxy_cfg,
    )
    assert fd.proxy_source == "synthetic"
    # The whole non-test data is the training pool; the server test set is unchanged.
    assert len(fd.train_y) + len(fd.test_y) == 569
    np.testing.assert_array_equal(fd.test_y, plain.test_y)
    joined = np.concatenate(fd.partitions)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(fd.train_y)))
    # The proxy is the other dataset's whole training data, standardised with the pool's
    # statistics (so its mean is not ~0, unlike the pool's).
    raw_proxy = load_dataset("synthetic", num_samples=300, num_features=30, num_classes=2)
    assert fd.proxy_x.shape == (300, 30) and fd.proxy_x.dtype == np.float32
    np.testing.assert_allclose(fd.train_x.mean(axis=0), 0.0, atol=1e-4)
    assert fd.proxy_y is not None
    np.testing.assert_array_equal(fd.proxy_y, raw_proxy.y)
    np.testing.assert_array_equal(fd.proxy_labels_for_diagnostics, raw_proxy.y)
    assert not np.allclose(fd.proxy_x, raw_proxy.x)


def test_proxy_dataset_class_mismatch_drops_labels(caplog: pytest.LogCaptureFixture) -> None:
    proxy_cfg = {"name": "synthetic", "num_samples": 200, "num_features": 30, "num_classes": 4}
    with caplog.at_level(logging.WARNING, logger="fedkd.data.federated"):
        fd = build_federated_data(
            BREAST, IID, num_clients=2, seed=0, proxy_labeled=True, proxy_dataset=proxy_cfg
        )
    assert fd.proxy_y is None
    assert fd.proxy_labels_for_diagnostics is not None
    assert set(np.unique(fd.proxy_labels_for_diagnostics).tolist()) == {0, 1, 2, 3}
    assert any("4 classes" in record.getMessage() for record in caplog.records)


def test_proxy_dataset_with_classes_and_size() -> None:
    proxy_cfg = {"name": "synthetic", "num_samples": 400, "num_features": 30, "num_classes": 4}
    fd = build_federated_data(
        BREAST,
        IID,
        num_clients=2,
        seed=0,
        proxy_dataset=proxy_cfg,
        proxy_classes=[1, 3],
        proxy_size=60,
    )
    labels = fd.proxy_labels_for_diagnostics
    assert labels is not None and len(fd.proxy_x) == 60
    assert set(np.unique(labels).tolist()) == {1, 3}


@pytest.mark.parametrize(
    "bad",
    [{"name": "nope"}, {"num_samples": 3}, {"name": "synthetic", "size": 3}, "synthetic"],
)
def test_proxy_dataset_invalid_before_loading(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.proxy_dataset"):
        _validate(DIGITS, proxy_dataset=bad)


def test_validate_accepts_proxy_options() -> None:
    _validate(
        BREAST,
        proxy_size=10,
        proxy_classes=(0, 1),
        proxy_dataset={"name": "synthetic", "num_features": 30},
    )


# --------------------------------------------------------------------------- cache


def test_cache_key_includes_proxy_options() -> None:
    base = get_federated_data(DIGITS, IID, num_clients=2, seed=21)
    assert get_federated_data(DIGITS, IID, num_clients=2, seed=21) is base
    capped = get_federated_data(DIGITS, IID, num_clients=2, seed=21, proxy_size=30)
    assert capped is not base and len(capped.proxy_x) == 30
    filtered = get_federated_data(DIGITS, IID, num_clients=2, seed=21, proxy_classes=[0])
    assert filtered is not base and filtered is not capped
    assert get_federated_data(DIGITS, IID, num_clients=2, seed=21, proxy_classes=(0,)) is filtered
    other = get_federated_data(
        BREAST, IID, num_clients=2, seed=21, proxy_dataset={"name": "synthetic", "num_features": 30}
    )
    assert other.proxy_source == "synthetic"
    again = get_federated_data(
        BREAST, IID, num_clients=2, seed=21, proxy_dataset={"num_features": 30, "name": "synthetic"}
    )
    assert again is other


# --------------------------------------------------------------------------- per round


def test_proxy_round_indices_deterministic_and_sorted() -> None:
    a = proxy_round_indices(500, size=64, seed=0, server_round=3)
    b = proxy_round_indices(500, size=64, seed=0, server_round=3)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and a.shape == (64,)
    assert np.all(np.diff(a) > 0)  # sorted and unique
    assert a.min() >= 0 and a.max() < 500
    expected = np.sort(np.random.default_rng([0, 7, 3]).choice(500, size=64, replace=False)).astype(
        np.int64
    )
    np.testing.assert_array_equal(a, expected)


def test_proxy_round_indices_vary_with_round_and_seed() -> None:
    rounds = [tuple(proxy_round_indices(500, size=64, seed=0, server_round=r)) for r in (1, 2, 3)]
    assert len(set(rounds)) == 3
    assert not np.array_equal(
        proxy_round_indices(500, size=64, seed=0, server_round=1),
        proxy_round_indices(500, size=64, seed=1, server_round=1),
    )


@pytest.mark.parametrize("size", [None, 500, 10_000])
def test_proxy_round_indices_all(size: int | None) -> None:
    out = proxy_round_indices(500, size=size, seed=4, server_round=2)
    np.testing.assert_array_equal(out, np.arange(500))
    assert out.dtype == np.int64


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_proxy_round_indices_bad_size(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.proxy_round_size"):
        proxy_round_indices(100, size=bad, seed=0, server_round=1)  # type: ignore[arg-type]
