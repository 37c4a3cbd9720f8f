"""Tests for the ``hf`` dataset loader on small local parquet / CSV files (no network).

The loader goes through flwr-datasets ``FederatedDataset``; these tests run offline.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import flwr_datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import config as hf_config
from flwr_datasets.common import telemetry

from fedkd.data import build_federated_data, load_dataset
from fedkd.errors import ConfigError

FRAME = pd.DataFrame(
    {
        "height": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        "weight": [10, 20, 30, 40, 50, 60, 70, 80],
        "note": ["a", "b", "c", "d", "e", "f", "g", "h"],
        "species": ["owl", "cat", "owl", "emu", "cat", "owl", "emu", "cat"],
    }
)
# sorted unique species: cat -> 0, emu -> 1, owl -> 2
EXPECTED_Y = [2, 0, 2, 1, 0, 2, 1, 0]


def _drain_telemetry_queue() -> None:
    """Wait for queued flwr-datasets telemetry events (a one-worker executor) to run."""
    executor = telemetry.state["executor"]
    if executor is not None:
        executor.submit(lambda: None).result(timeout=30)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Force offline mode and keep the datasets cache (and ``~/.flwr``) inside tmp_path."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(hf_config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # flwr-datasets writes ~/.flwr/source
    yield
    _drain_telemetry_queue()  # let this test's events finish while still patched


class _SpyFederatedDataset(flwr_datasets.FederatedDataset):
    """Delegates to the real ``FederatedDataset``, recording how it is used."""

    instances: ClassVar[list[_SpyFederatedDataset]] = []

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.init_kwargs = kwargs
        self.split_calls: list[str] = []
        self.partition_calls = 0
        _SpyFederatedDataset.instances.append(self)

    def load_split(self, split: str) -> Any:
        self.split_calls.append(split)
        return super().load_split(split)

    def load_partition(self, partition_id: int, split: str | None = None) -> Any:
        self.partition_calls += 1
        return super().load_partition(partition_id, split)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> type[_SpyFederatedDataset]:
    monkeypatch.setattr(_SpyFederatedDataset, "instances", [])
    monkeypatch.setattr(flwr_datasets, "FederatedDataset", _SpyFederatedDataset)
    return _SpyFederatedDataset


def test_loads_through_federated_dataset(tmp_path: Path, spy: type[_SpyFederatedDataset]) -> None:
    train_path, test_path = tmp_path / "train.parquet", tmp_path / "test.parquet"
    FRAME.to_parquet(train_path)
    FRAME.iloc[::-1].to_parquet(test_path)
    data_files = {"train": str(train_path), "test": str(test_path)}
    data = load_dataset(
        "hf",
        path="parquet",
        data_files=data_files,
        features=["height", "weight"],
        label="species",
        test_split="test",
    )
    assert len(spy.instances) == 1
    (federated,) = spy.instances
    kwargs = federated.init_kwargs
    assert kwargs["dataset"] == "parquet"
    assert kwargs["data_files"] == data_files  # forwarded to datasets.load_dataset
    assert kwargs["shuffle"] is False
    assert list(kwargs["partitioners"]) == ["train"]
    assert federated.split_calls == ["train", "test"]
    assert federated.partition_calls == 0
    # unshuffled: rows keep the file order
    assert data.y.tolist() == EXPECTED_Y
    assert data.y_test is not None and data.y_test.tolist() == EXPECTED_Y[::-1]


def test_federated_dataset_telemetry_off_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _drain_telemetry_queue()  # events queued by earlier tests must not run while patched
    # Simulate flwr_datasets imported with the variable unset (telemetry on).
    monkeypatch.delenv("FLWR_TELEMETRY_ENABLED", raising=False)
    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "1")
    requests: list[Any] = []

    def fake_urlopen(request: Any, *args: Any, **kwargs: Any) -> Any:
        requests.append(request)
        raise AssertionError("telemetry request attempted")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    path = tmp_path / "animals.parquet"
    FRAME.to_parquet(path)
    load_dataset("hf", path="parquet", data_files=str(path), label="species", features="height")
    _drain_telemetry_queue()
    assert telemetry.FLWR_TELEMETRY_ENABLED == "0"
    assert requests == []


def test_parquet_tabular_with_label_remapping(tmp_path: Path) -> None:
    path = tmp_path / "animals.parquet"
    FRAME.to_parquet(path)
    data = load_dataset(
        "hf",
        path="parquet",
        data_files=str(path),
        features=["height", "weight"],
        label="species",
    )
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    assert data.input_shape == (2,)
    np.testing.assert_array_equal(data.x, FRAME[["height", "weight"]].to_numpy(np.float32))
    assert data.y.tolist() == EXPECTED_Y
    assert data.num_classes == 3
    assert data.x_test is None


def test_csv_with_test_split(tmp_path: Path) -> None:
    train_path, test_path = tmp_path / "train.csv", tmp_path / "test.csv"
    test_frame = pd.DataFrame({"height": [0.5, 9.0], "weight": [1, 2], "species": [3, 1]})
    train_frame = FRAME[["height", "weight"]].assign(species=[7, 1, 7, 3, 1, 7, 3, 1])
    train_frame.to_csv(train_path, index=False)
    test_frame.to_csv(test_path, index=False)
    data = load_dataset(
        "hf",
        path="csv",
        data_files={"train": str(train_path), "test": str(test_path)},
        label="species",
        test_split="test",
    )
    # features default: every non-label column
    assert data.input_shape == (2,)
    # integer labels 1, 3, 7 -> 0, 1, 2
    assert data.y.tolist() == [2, 0, 2, 1, 0, 2, 1, 0]
    assert data.x_test is not None and data.y_test is not None
    np.testing.assert_array_equal(data.x_test, [[0.5, 1.0], [9.0, 2.0]])
    assert data.y_test.tolist() == [1, 0]
    assert data.num_classes == 3


def test_image_column_scaled_channels_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    labels = [0, 1, 0, 1, 0, 1]
    table = pa.table({"pixels": [img.tolist() for img in images], "label": labels})
    path = tmp_path / "images.parquet"
    pq.write_table(table, path)
    data = load_dataset("hf", path="parquet", data_files=str(path), features="pixels")
    assert data.x.shape == (6, 1, 5, 4)
    assert data.input_shape == (1, 5, 4)
    np.testing.assert_allclose(data.x[:, 0], images / 255.0, rtol=1e-6)
    assert data.y.tolist() == labels


def test_hf_errors_name_keys(tmp_path: Path) -> None:
    path = tmp_path / "animals.parquet"
    FRAME.to_parquet(path)
    common = {"path": "parquet", "data_files": str(path)}
    with pytest.raises(ConfigError, match=r"dataset\.label"):
        load_dataset("hf", **common)  # no "label" column
    with pytest.raises(ConfigError, match=r"dataset\.features"):
        load_dataset("hf", **common, label="species")  # "note" is not numeric
    with pytest.raises(ConfigError, match=r"dataset\.features"):
        load_dataset("hf", **common, label="species", features=["missing"])
    with pytest.raises(ConfigError, match=r"dataset\.test_split"):
        load_dataset("hf", **common, label="species", features=["height"], test_split="validation")
    with pytest.raises(ConfigError, match=r"dataset\.train_split"):
        load_dataset("hf", **common, label="species", features=["height"], train_split="x")
    with pytest.raises(ConfigError, match=r"dataset\.labels"):
        load_dataset("hf", **common, labels="species")
    missing = {"path": "parquet", "data_files": str(tmp_path / "missing.parquet")}
    with pytest.raises(ConfigError, match=r"dataset\.path"):
        load_dataset("hf", **missing, label="species")
    with pytest.raises(ConfigError, match=r"dataset\.path"):
        load_dataset("hf", path=str(tmp_path / "no_such_dir"), label="species")


def test_hf_in_federated_view(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {"f1": rng.normal(5, 2, 60), "f2": rng.normal(-3, 4, 60), "y": ["a", "b", "c"] * 20}
    )
    path = tmp_path / "tab.csv"
    frame.to_csv(path, index=False)
    fd = build_federated_data(
        {"name": "hf", "path": "csv", "data_files": str(path), "label": "y"},
        {"name": "iid"},
        num_clients=3,
        seed=0,
    )
    assert fd.num_classes == 3 and fd.input_shape == (2,)
    assert len(fd.train_y) + len(fd.proxy_x) + len(fd.test_y) == 60
    np.testing.assert_allclose(fd.train_x.mean(axis=0), 0.0, atol=1e-5)
