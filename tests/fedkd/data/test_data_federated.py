"""Tests for the federated view (fedkd.data.federated)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedkd.data import (
    FederatedData,
    build_federated_data,
    get_federated_data,
    load_dataset,
    validate_data_config,
)
from fedkd.errors import ConfigError

DIGITS = {"name": "digits"}
IID = {"name": "iid"}


def _row_hashes(x: np.ndarray) -> list[bytes]:
    return [hashlib.sha1(np.ascontiguousarray(row).tobytes()).digest() for row in x]


@pytest.fixture(scope="module")
def digits_fd() -> FederatedData:
    return build_federated_data(DIGITS, IID, num_clients=5, seed=0, proxy_labeled=True)


def test_split_sizes_add_up(digits_fd: FederatedData) -> None:
    n = 1797
    n_test = len(digits_fd.test_y)
    n_proxy = len(digits_fd.proxy_x)
    n_pool = len(digits_fd.train_y)
    assert n_test + n_proxy + n_pool == n
    assert abs(n_test - 0.2 * n) <= 1
    assert abs(n_proxy - 0.2 * (n - n_test)) <= 1
    assert digits_fd.proxy_y is not None and len(digits_fd.proxy_y) == n_proxy
    assert digits_fd.train_x.shape == (n_pool, 1, 8, 8)
    assert digits_fd.train_x.dtype == np.float32 and digits_fd.train_y.dtype == np.int64
    assert digits_fd.num_clients == 5
    assert digits_fd.num_classes == 10 and digits_fd.input_shape == (1, 8, 8)


def test_splits_do_not_overlap_and_cover(digits_fd: FederatedData) -> None:
    raw = load_dataset("digits")

    # digits has duplicate images; compare (image, label) multisets rather than sets.
    def keyed(x: np.ndarray, y: np.ndarray) -> list[bytes]:
        return [h + bytes([int(label)]) for h, label in zip(_row_hashes(x), y, strict=True)]

    assert digits_fd.proxy_y is not None
    parts = (
        keyed(digits_fd.train_x, digits_fd.train_y)
        + keyed(digits_fd.proxy_x, digits_fd.proxy_y)
        + keyed(digits_fd.test_x, digits_fd.test_y)
    )
    assert sorted(parts) == sorted(keyed(raw.x, raw.y))
    # No row used twice more often than it occurs in the raw data (checked above), and
    # distinct pool/test hashes only collide where the raw data has duplicates.
    pool = set(_row_hashes(digits_fd.train_x))
    test = set(_row_hashes(digits_fd.test_x))
    raw_counts: dict[bytes, int] = {}
    for h in _row_hashes(raw.x):
        raw_counts[h] = raw_counts.get(h, 0) + 1
    assert all(raw_counts[h] > 1 for h in pool & test)


def test_splits_are_stratified(digits_fd: FederatedData) -> None:
    raw_share = np.bincount(load_dataset("digits").y) / 1797
    test_share = np.bincount(digits_fd.test_y, minlength=10) / len(digits_fd.test_y)
    assert np.abs(test_share - raw_share).max() < 0.01


def test_partitions_cover_pool(digits_fd: FederatedData) -> None:
    joined = np.concatenate(digits_fd.partitions)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(digits_fd.train_y)))
    hist = digits_fd.label_histograms()
    assert hist.shape == (5, 10) and hist.dtype == np.int64
    np.testing.assert_array_equal(hist.sum(axis=0), np.bincount(digits_fd.train_y))
    np.testing.assert_array_equal(hist.sum(axis=1), [len(p) for p in digits_fd.partitions])


def test_client_data_split(digits_fd: FederatedData) -> None:
    client = digits_fd.client_data(2)
    part = digits_fd.partitions[2]
    assert len(client.train_y) + len(client.test_y) == len(part)
    assert abs(len(client.test_y) - 0.2 * len(part)) <= 1
    together = np.concatenate([client.train_x, client.test_x])
    assert sorted(_row_hashes(together)) == sorted(_row_hashes(digits_fd.train_x[part]))
    again = digits_fd.client_data(2)
    np.testing.assert_array_equal(client.test_y, again.test_y)
    np.testing.assert_array_equal(client.train_x, again.train_x)


@pytest.mark.parametrize("bad_id", [-1, 5])
def test_client_data_bad_id(digits_fd: FederatedData, bad_id: int) -> None:
    with pytest.raises(IndexError, match="partition_id"):
        digits_fd.client_data(bad_id)


def test_local_test_keeps_one_train_sample() -> None:
    fd = build_federated_data(
        {"name": "synthetic", "num_samples": 40, "num_classes": 2},
        IID,
        num_clients=10,
        seed=0,
        test_fraction=0.25,
        proxy_fraction=0.25,
        local_test_fraction=0.9,
    )
    for pid in range(fd.num_clients):
        client = fd.client_data(pid)
        assert len(client.train_y) >= 1 and len(client.test_y) >= 1
    no_test = build_federated_data(
        DIGITS, IID, num_clients=3, seed=0, local_test_fraction=0.0
    ).client_data(0)
    assert no_test.test_x.shape == (0, 1, 8, 8)


def test_proxy_unlabeled_by_default() -> None:
    fd = build_federated_data(DIGITS, IID, num_clients=2, seed=0)
    assert fd.proxy_y is None
    assert len(fd.proxy_x) > 0


def test_standardisation_fitted_on_pool_only() -> None:
    fd = build_federated_data({"name": "breast_cancer"}, IID, num_clients=3, seed=0)
    np.testing.assert_allclose(fd.train_x.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(fd.train_x.std(axis=0), 1.0, atol=1e-3)
    # The proxy/test got the pool's transform, so their means are near 0 but not exact.
    assert np.abs(fd.proxy_x.mean(axis=0)).max() > 1e-3
    assert np.abs(fd.test_x.mean(axis=0)).max() > 1e-3
    # Independent route: pool, proxy and test share one per-feature affine map of the raw
    # rows, so sorted standardised values are an exact affine image of sorted raw values.
    raw = load_dataset("breast_cancer")
    assert fd.proxy_y is None
    everything = np.concatenate([fd.train_x, fd.proxy_x, fd.test_x]).astype(np.float64)
    for feature in (0, 3, 29):
        scale, shift = np.polyfit(
            np.sort(everything[:, feature]), np.sort(raw.x[:, feature].astype(np.float64)), 1
        )
        rebuilt = everything[:, feature] * scale + shift
        np.testing.assert_allclose(np.sort(rebuilt), np.sort(raw.x[:, feature]), rtol=1e-4)
        # The fitted mean is the pool's, not the whole dataset's.
        pool_raw = fd.train_x[:, feature] * scale + shift
        np.testing.assert_allclose(shift, pool_raw.mean(), rtol=1e-4)
        assert not np.isclose(shift, raw.x[:, feature].mean(), rtol=1e-5, atol=0)


def test_images_not_standardised() -> None:
    fd = build_federated_data(DIGITS, IID, num_clients=2, seed=0)
    assert fd.train_x.min() == 0.0 and fd.train_x.max() == 1.0


def test_mnist1d_uses_predefined_test_split() -> None:
    fd = build_federated_data(
        {"name": "mnist1d", "num_samples": 200, "seed": 1}, IID, num_clients=4, seed=0
    )
    raw = load_dataset("mnist1d", num_samples=200, seed=1)
    assert raw.x_test is not None
    np.testing.assert_array_equal(fd.test_x, raw.x_test)
    assert len(fd.train_y) + len(fd.proxy_x) == 160
    assert len(fd.proxy_x) == 32


def test_seed_controls_everything() -> None:
    part = {"name": "dirichlet", "alpha": 0.5}
    a = build_federated_data(DIGITS, part, num_clients=4, seed=1)
    b = build_federated_data(DIGITS, part, num_clients=4, seed=1)
    c = build_federated_data(DIGITS, part, num_clients=4, seed=2)
    np.testing.assert_array_equal(a.test_x, b.test_x)
    np.testing.assert_array_equal(a.proxy_x, b.proxy_x)
    for pa, pb in zip(a.partitions, b.partitions, strict=True):
        np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(a.test_y, c.test_y)


def test_get_federated_data_is_cached() -> None:
    first = get_federated_data(
        {"name": "digits"}, {"name": "dirichlet", "alpha": 1.0}, num_clients=3, seed=11
    )
    # Same content, different dict instances and key order.
    second = get_federated_data(
        {"name": "digits"}, {"alpha": 1.0, "name": "dirichlet"}, num_clients=3, seed=11
    )
    assert first is second
    third = get_federated_data(
        {"name": "digits"}, {"name": "dirichlet", "alpha": 2.0}, num_clients=3, seed=11
    )
    assert third is not first
    fourth = get_federated_data(
        {"name": "digits"}, {"name": "dirichlet", "alpha": 1.0}, num_clients=3, seed=12
    )
    assert fourth is not first


def test_cache_key_handles_nested_options() -> None:
    from fedkd.data.federated import _cache_key

    a = _cache_key(dataset={"name": "hf", "data_files": {"train": "a", "test": "b"}}, seed=1)
    b = _cache_key(dataset={"data_files": {"test": "b", "train": "a"}, "name": "hf"}, seed=1)
    c = _cache_key(dataset={"name": "hf", "data_files": {"train": "a", "test": "c"}}, seed=1)
    assert a == b != c


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"dataset": {"name": "mnist"}}, "dataset.name"),
        ({"dataset": {"name": "digits", "size": 3}}, "dataset.size"),
        ({"partition": {"name": "labelskew"}}, "partition.name"),
        ({"partition": {"name": "dirichlet", "alpha": 0}}, "partition.alpha"),
        ({"partition": {"name": "dirichlet", "alpha": -0.5}}, "partition.alpha"),
        ({"proxy_fraction": 0.0}, "proxy_fraction"),
        ({"proxy_fraction": 1.0}, "proxy_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"local_test_fraction": 1.0}, "local_test_fraction"),
        ({"local_test_fraction": -0.1}, "local_test_fraction"),
        ({"num_clients": 0}, "num_clients"),
    ],
)
def test_validate_data_config_names_key(overrides: dict[str, object], key: str) -> None:
    args: dict[str, object] = {
        "dataset": DIGITS,
        "partition": IID,
        "num_clients": 3,
        "proxy_fraction": 0.2,
        "test_fraction": 0.2,
        "local_test_fraction": 0.2,
    }
    args.update(overrides)
    with pytest.raises(ConfigError) as info:
        validate_data_config(**args)  # type: ignore[arg-type]
    assert key in str(info.value)
    assert isinstance(info.value, ValueError)


def test_validate_accepts_good_config() -> None:
    validate_data_config(
        {"name": "mnist1d", "num_samples": 1000},
        {"name": "pathological", "classes_per_client": 3},
        num_clients=10,
        proxy_fraction=0.1,
        test_fraction=0.3,
        local_test_fraction=0.0,
    )


def test_more_clients_than_samples() -> None:
    with pytest.raises(ConfigError, match=r"num_clients") as info:
        build_federated_data({"name": "breast_cancer"}, IID, num_clients=1000, seed=0)
    pool_size = 569 - round(0.2 * 569) - round(0.2 * (569 - round(0.2 * 569)))
    assert str(pool_size) in str(info.value)


def test_too_small_client_partition() -> None:
    with pytest.raises(ConfigError, match=r"num_clients=60.*fewer than 2 samples"):
        build_federated_data(
            {"name": "synthetic", "num_samples": 100, "num_classes": 2},
            {"name": "pathological", "classes_per_client": 1},
            num_clients=60,
            seed=0,
        )


def test_build_rejects_bad_fractions_before_loading() -> None:
    with pytest.raises(ConfigError, match=r"proxy_fraction"):
        build_federated_data(DIGITS, IID, num_clients=2, seed=0, proxy_fraction=1.0)
