"""Tests for fedkd.data.partition.partition_indices."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.data import PARTITION_NAMES, partition_indices
from fedkd.errors import ConfigError

# 10 classes x 60 samples, interleaved.
LABELS = np.tile(np.arange(10, dtype=np.int64), 60)


def _mean_max_class_share(parts: list[np.ndarray], labels: np.ndarray) -> float:
    shares = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts if len(p)]
    return float(np.mean(shares))


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


def test_names() -> None:
    assert PARTITION_NAMES == ("iid", "dirichlet", "pathological", "feature_skew")


def test_iid_balanced_disjoint_covering_sorted() -> None:
    parts = partition_indices(LABELS, num_partitions=7, name="iid", seed=0)
    assert len(parts) == 7
    sizes = sorted(len(p) for p in parts)
    assert sizes == [85] * 2 + [86] * 5  # 600 = 7 * 85 + 5
    _assert_exact_cover(parts, len(LABELS))
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)


def test_iid_is_shuffled_and_seeded() -> None:
    parts = partition_indices(LABELS, num_partitions=3, name="iid", seed=0)
    # Not contiguous shards of the original order.
    assert not np.array_equal(parts[0], np.arange(200))
    same = partition_indices(LABELS, num_partitions=3, name="iid", seed=0)
    other = partition_indices(LABELS, num_partitions=3, name="iid", seed=1)
    for a, b in zip(parts, same, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_covers_and_is_seeded() -> None:
    parts = partition_indices(LABELS, num_partitions=5, name="dirichlet", seed=3, alpha=0.5)
    _assert_exact_cover(parts, len(LABELS))
    same = partition_indices(LABELS, num_partitions=5, name="dirichlet", seed=3, alpha=0.5)
    other = partition_indices(LABELS, num_partitions=5, name="dirichlet", seed=4, alpha=0.5)
    for a, b in zip(parts, same, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_small_alpha_more_skewed() -> None:
    skew_small = np.mean(
        [
            _mean_max_class_share(
                partition_indices(LABELS, num_partitions=5, name="dirichlet", seed=s, alpha=0.1),
                LABELS,
            )
            for s in range(3)
        ]
    )
    skew_large = np.mean(
        [
            _mean_max_class_share(
                partition_indices(LABELS, num_partitions=5, name="dirichlet", seed=s, alpha=100.0),
                LABELS,
            )
            for s in range(3)
        ]
    )
    assert skew_large < 0.2  # close to uniform share 0.1
    assert skew_small > skew_large + 0.2


def test_dirichlet_min_partition_size_respected() -> None:
    parts = partition_indices(
        LABELS, num_partitions=10, name="dirichlet", seed=0, alpha=1.0, min_partition_size=20
    )
    assert min(len(p) for p in parts) >= 20


def test_dirichlet_impossible_min_size_fails_fast() -> None:
    with pytest.raises(ConfigError, match=r"min_partition_size"):
        partition_indices(
            LABELS, num_partitions=10, name="dirichlet", seed=0, alpha=0.5, min_partition_size=61
        )


def test_dirichlet_unreachable_min_size_translated() -> None:
    # Possible in principle (6 * 90 <= 600) but practically never with tiny alpha.
    with pytest.raises(ConfigError, match=r"partition\.alpha"):
        partition_indices(
            LABELS, num_partitions=6, name="dirichlet", seed=0, alpha=0.01, min_partition_size=90
        )


@pytest.mark.parametrize("mode", ["first-deterministic", "deterministic", "random"])
def test_pathological_at_most_k_classes(mode: str) -> None:
    parts = partition_indices(
        LABELS,
        num_partitions=10,
        name="pathological",
        seed=0,
        classes_per_client=2,
        class_assignment_mode=mode,
    )
    assert len(parts) == 10
    for part in parts:
        assert 1 <= len(np.unique(LABELS[part])) <= 2
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined))  # disjoint


def test_pathological_unused_classes_left_out() -> None:
    # 2 clients x 1 class with first-deterministic: only classes 0 and 1 are used.
    parts = partition_indices(
        LABELS, num_partitions=2, name="pathological", seed=0, classes_per_client=1
    )
    assert [np.unique(LABELS[p]).tolist() for p in parts] == [[0], [1]]
    assert sum(len(p) for p in parts) == 120


@pytest.mark.parametrize("bad", [0, 11, 1.5])
def test_pathological_bad_classes_per_client(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"partition\.classes_per_client"):
        partition_indices(
            LABELS, num_partitions=3, name="pathological", seed=0, classes_per_client=bad
        )


def test_pathological_bad_mode() -> None:
    with pytest.raises(ConfigError, match=r"partition\.class_assignment_mode"):
        partition_indices(
            LABELS, num_partitions=3, name="pathological", seed=0, class_assignment_mode="x"
        )


@pytest.mark.parametrize("alpha", [0, -1.0, 0.0])
def test_bad_alpha(alpha: float) -> None:
    with pytest.raises(ConfigError, match=r"partition\.alpha"):
        partition_indices(LABELS, num_partitions=3, name="dirichlet", seed=0, alpha=alpha)


def test_unknown_name_and_option() -> None:
    with pytest.raises(ConfigError, match=r"partition\.name") as info:
        partition_indices(LABELS, num_partitions=3, name="shard", seed=0)
    assert "dirichlet" in str(info.value)
    with pytest.raises(ConfigError, match=r"partition\.alpha"):
        partition_indices(LABELS, num_partitions=3, name="iid", seed=0, alpha=1.0)


def test_too_many_partitions() -> None:
    with pytest.raises(ConfigError, match=r"num_partitions"):
        partition_indices(LABELS[:5], num_partitions=6, name="iid", seed=0)
