"""Tests for the dataset registry: one DatasetEntry is all a new dataset needs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from fedkd.data import (
    DATASET_NAMES,
    DATASET_OPTIONS,
    DATASETS,
    REQUIRED,
    DatasetEntry,
    RawDataset,
    build_federated_data,
    dataset_names,
    describe_datasets,
    load_dataset,
    resolve_dataset_options,
    validate_data_config,
)
from fedkd.data.datasets import BUILTIN_DATASETS
from fedkd.errors import ConfigError

TOY = "toy_blobs"


def _load_toy(num_samples: int, offset: float) -> RawDataset:
    """Two 1-D classes at ``-offset`` and ``+offset`` (deterministic, balanced)."""
    y = np.arange(num_samples, dtype=np.int64) % 2
    x = ((2.0 * y - 1.0) * offset + 0.01 * np.arange(num_samples))[:, None]
    return RawDataset(x=x.astype(np.float32), y=y, num_classes=2, input_shape=(1,), name=TOY)


def _check_toy(options: Mapping[str, Any]) -> None:
    if options["num_samples"] < 10:
        raise ConfigError(f"dataset.num_samples must be >= 10, got {options['num_samples']!r}")


@pytest.fixture
def toy(dataset_registration) -> Iterator[DatasetEntry]:
    """Register a test dataset (one entry, nothing else) and remove it afterwards."""
    entry = DatasetEntry(
        name=TOY,
        loader=_load_toy,
        input_kind="tabular",
        options={"num_samples": 40, "offset": REQUIRED},
        check=_check_toy,
        summary="two 1-D blobs, for tests",
    )
    with dataset_registration.registered(entry) as registered:
        yield registered


def test_builtin_snapshots_match_the_registry() -> None:
    assert dataset_names() == DATASET_NAMES == tuple(e.name for e in BUILTIN_DATASETS)
    assert {name: dict(entry.options) for name, entry in DATASETS.items()} == DATASET_OPTIONS
    assert DATASET_OPTIONS["hf"]["path"] is REQUIRED
    assert {e.name: e.input_kind for e in BUILTIN_DATASETS} == {
        "digits": "image",
        "breast_cancer": "tabular",
        "mnist1d": "sequence",
        "synthetic": "tabular",
        "hf": "auto",
        "credit": "tabular",
    }


def test_registered_dataset_is_validated_and_dispatched(toy: DatasetEntry) -> None:
    assert dataset_names()[-1] == TOY and DATASETS[TOY] is toy
    # Validation: defaults filled in, required / unknown options and the entry's check.
    assert resolve_dataset_options(TOY, {"offset": 2.0}) == {"num_samples": 40, "offset": 2.0}
    with pytest.raises(ConfigError, match=rf"dataset\.offset is required for dataset '{TOY}'"):
        resolve_dataset_options(TOY, {})
    with pytest.raises(ConfigError, match=r"\['dataset\.seed'\].*\['num_samples', 'offset'\]"):
        resolve_dataset_options(TOY, {"offset": 1.0, "seed": 0})
    with pytest.raises(ConfigError, match=r"dataset\.num_samples must be >= 10"):
        load_dataset(TOY, offset=1.0, num_samples=4)
    with pytest.raises(ConfigError, match=rf"dataset\.name must be one of \[.*'{TOY}'\]"):
        resolve_dataset_options("nope", {})
    # Dispatch: load_dataset calls the entry's loader with the resolved options.
    data = load_dataset(TOY, offset=3.0)
    assert data.name == TOY and data.x.shape == (40, 1)
    np.testing.assert_array_equal(data.x, _load_toy(40, 3.0).x)
    # ... and so does everything built on it: config validation and the federated view.
    validate_data_config(
        {"name": TOY, "offset": 1.0},
        {"name": "iid"},
        num_clients=2,
        proxy_fraction=0.2,
        test_fraction=0.2,
        local_test_fraction=0.0,
    )
    federated = build_federated_data(
        {"name": TOY, "offset": 1.0, "num_samples": 60},
        {"name": "iid"},
        num_clients=2,
        seed=0,
    )
    assert federated.name == TOY and federated.num_classes == 2
    assert f"{TOY} (tabular; options: num_samples=40, offset=<required>)" in describe_datasets()


def test_unregistered_dataset_is_gone(toy: DatasetEntry, dataset_registration) -> None:
    with (
        dataset_registration.unregistered(toy),
        pytest.raises(ConfigError, match=r"dataset\.name"),
    ):
        load_dataset(TOY, offset=1.0)


def test_registry_rejects_bad_entries(toy: DatasetEntry, dataset_registration) -> None:
    dataset_registration.check_misuse(toy, "dataset")
    with pytest.raises(ValueError, match="does not take the options"):
        DatasetEntry(name="bad", loader=_load_toy, input_kind="tabular", options={"seed": 0})
    with pytest.raises(ValueError, match="input_kind"):
        DatasetEntry(name="bad", loader=_load_toy, input_kind="video")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string"):
        DatasetEntry(name="", loader=_load_toy, input_kind="tabular")
    # Entries are frozen and their options read-only.
    with pytest.raises(AttributeError):
        toy.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        toy.options["offset"] = 1.0  # type: ignore[index]
