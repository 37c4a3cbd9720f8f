"""fedkd.data.partitioners gives the partitions flwr-datasets' classes give (issue 20).

The reference route is flwr-datasets itself, on a ``datasets.Dataset`` holding the labels
(or the feature column) and the row index, as ``partition_indices`` used it before; the
pinned digests were computed with that route, so a change of either side shows here.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import numpy as np
import pytest

from fedkd.data import partition_indices
from fedkd.data.partitioners import (
    continuous_parts,
    dirichlet_parts,
    iid_parts,
    pathological_parts,
)

RNG = np.random.default_rng(7)
LABELS = RNG.integers(0, 10, size=1000).astype(np.int64)
FEATURES = RNG.normal(size=(1000, 3)).astype(np.float32)
# Few rows and a rare class: Dirichlet redraws, pathological hits unused classes.
SMALL = np.concatenate([np.repeat(np.arange(4), 30), [4, 4, 4]]).astype(np.int64)


def _reference(partitioner: Any, columns: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Partitions of flwr-datasets' ``partitioner`` on a table with an ``idx`` column."""
    import datasets

    num_rows = len(next(iter(columns.values())))
    partitioner.dataset = datasets.Dataset.from_dict(
        {**columns, "idx": np.arange(num_rows, dtype=np.int64)}
    )
    return [
        np.sort(np.asarray(partitioner.load_partition(pid)["idx"], dtype=np.int64))
        for pid in range(partitioner.num_partitions)
    ]


def _assert_same(ours: list[np.ndarray], reference: list[np.ndarray]) -> None:
    assert len(ours) == len(reference)
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine.dtype == np.int64
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize(("num_rows", "num_partitions"), [(1000, 10), (1000, 7), (13, 13), (5, 1)])
def test_iid_is_flwr_iid(num_rows: int, num_partitions: int) -> None:
    from flwr_datasets.partitioner import IidPartitioner

    reference = _reference(
        IidPartitioner(num_partitions=num_partitions), {"label": np.zeros(num_rows, np.int64)}
    )
    _assert_same(iid_parts(num_rows, num_partitions), reference)


@pytest.mark.parametrize(
    ("labels", "num_partitions", "alpha", "min_size", "balancing", "seed"),
    [
        (LABELS, 10, 0.5, 2, False, 0),
        (LABELS, 20, 0.1, 5, False, 5),
        (LABELS, 10, 1.0, 2, True, 1),
        (LABELS, 30, 0.05, 0, True, 3),
        (LABELS, 3, 100.0, 10, False, 9),
        (SMALL, 6, 0.3, 8, False, 2),  # redraws (warnings) before it succeeds
        (SMALL, 6, 0.3, 8, True, 4),
    ],
)
def test_dirichlet_is_flwr_dirichlet(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    min_size: int,
    balancing: bool,
    seed: int,
) -> None:
    from flwr_datasets.partitioner import DirichletPartitioner

    options = {"alpha": alpha, "min_partition_size": min_size, "self_balancing": balancing}
    with warnings.catch_warnings(record=True) as theirs_warned:
        warnings.simplefilter("always")
        reference = _reference(
            DirichletPartitioner(
                num_partitions=num_partitions, partition_by="label", seed=seed, **options
            ),
            {"label": labels},
        )
    with warnings.catch_warnings(record=True) as ours_warned:
        warnings.simplefilter("always")
        ours = dirichlet_parts(labels, num_partitions, seed=seed, **options)
    _assert_same(ours, reference)
    assert len(ours_warned) == len(theirs_warned)  # as many redraws
    if labels is SMALL:
        assert ours_warned  # the case does redraw


def test_dirichlet_gives_up_where_flwr_does() -> None:
    from flwr_datasets.partitioner import DirichletPartitioner

    options = {"alpha": 0.01, "min_partition_size": 90, "self_balancing": False}
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="max number of attempts"):
        _reference(
            DirichletPartitioner(num_partitions=6, partition_by="label", seed=0, **options),
            {"label": LABELS[:600]},
        )
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="max number of attempts"):
        dirichlet_parts(LABELS[:600], 6, seed=0, **options)


@pytest.mark.parametrize(
    ("labels", "num_partitions", "per_client", "mode", "seed"),
    [
        (LABELS, 10, 2, "first-deterministic", 0),
        (LABELS, 12, 3, "random", 2),
        (LABELS, 8, 2, "deterministic", 1),
        (LABELS, 25, 4, "first-deterministic", 6),
        (LABELS, 4, 1, "random", 3),
        (SMALL, 3, 2, "first-deterministic", 1),  # classes given to no client (a warning)
    ],
)
def test_pathological_is_flwr_pathological(
    labels: np.ndarray, num_partitions: int, per_client: int, mode: str, seed: int
) -> None:
    from flwr_datasets.partitioner import PathologicalPartitioner

    with warnings.catch_warnings(record=True) as theirs_warned:
        warnings.simplefilter("always")
        reference = _reference(
            PathologicalPartitioner(
                num_partitions=num_partitions,
                partition_by="label",
                num_classes_per_partition=per_client,
                class_assignment_mode=mode,  # type: ignore[arg-type]
                seed=seed,
            ),
            {"label": labels},
        )
    with warnings.catch_warnings(record=True) as ours_warned:
        warnings.simplefilter("always")
        ours = pathological_parts(
            labels, num_partitions, classes_per_client=per_client, class_assignment_mode=mode,
            seed=seed,
        )  # fmt: skip
    _assert_same(ours, reference)
    assert len(ours_warned) == len(theirs_warned)
    if labels is SMALL:
        assert ours_warned  # the case leaves a class out
        assert sum(map(len, ours)) < len(labels)


def test_pathological_refuses_where_flwr_does() -> None:
    # class 4 has 3 rows, but 4 of 5 clients are given it
    labels, options = SMALL, {"classes_per_client": 5, "class_assignment_mode": "random"}
    with pytest.raises(ValueError, match="Label: 4"):
        pathological_parts(labels, 4, seed=0, **options)
    from flwr_datasets.partitioner import PathologicalPartitioner

    with pytest.raises(ValueError, match="Label: 4"):
        _reference(
            PathologicalPartitioner(
                num_partitions=4, partition_by="label", num_classes_per_partition=5,
                class_assignment_mode="random", seed=0,
            ),
            {"label": labels},
        )  # fmt: skip


@pytest.mark.parametrize(
    ("column", "num_partitions", "strictness", "seed"),
    [(0, 10, 0.7, 0), (1, 7, 1.0, 3), (2, 5, 0.0, 4), (0, 50, 0.3, 11)],
)
def test_continuous_is_flwr_continuous(
    column: int, num_partitions: int, strictness: float, seed: int
) -> None:
    from flwr_datasets.partitioner import ContinuousPartitioner

    values = FEATURES[:, column]
    reference = _reference(
        ContinuousPartitioner(
            num_partitions=num_partitions, partition_by="feature", strictness=strictness,
            seed=seed,
        ),
        {"feature": values},
    )  # fmt: skip
    ours = continuous_parts(values, num_partitions, strictness=strictness, seed=seed)
    _assert_same(ours, reference)


def _digest(parts: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(np.int64(len(part)).tobytes())
        digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


# Computed with partition_indices on flwr-datasets 0.6.1 before it stopped importing it.
PINNED = [
    ("iid", 10, 0, {}, "92db978f76952b2b"),
    ("iid", 7, 3, {}, "dbec7787453990ff"),
    ("dirichlet", 10, 0, {"alpha": 0.5}, "4d723197f208d112"),
    ("dirichlet", 20, 5, {"alpha": 0.1, "min_partition_size": 5}, "d7958bcf860706f8"),
    ("dirichlet", 10, 1, {"alpha": 1.0, "self_balancing": True}, "eadc992dda387d29"),
    ("pathological", 10, 0, {"classes_per_client": 2}, "99a633f74381313c"),
    (
        "pathological",
        12,
        2,
        {"classes_per_client": 3, "class_assignment_mode": "random"},
        "e6c65ab4f2198a67",
    ),
    (
        "pathological",
        8,
        1,
        {"classes_per_client": 2, "class_assignment_mode": "deterministic"},
        "2a87a4a8759c2848",
    ),
    ("feature_skew", 10, 0, {"feature": 1, "strictness": 0.7}, "cc4e33a98e6469ad"),
    ("feature_skew", 5, 4, {"feature": 2, "strictness": 0.0}, "ea91cccf87f0da13"),
]


@pytest.mark.parametrize(("name", "num_partitions", "seed", "options", "digest"), PINNED)
def test_partitions_are_pinned(
    name: str, num_partitions: int, seed: int, options: dict[str, Any], digest: str
) -> None:
    parts = partition_indices(
        LABELS, num_partitions=num_partitions, name=name, seed=seed, features=FEATURES, **options
    )
    assert _digest(parts) == digest
