"""Tests for the ``hf`` dataset loader on small local parquet / CSV files (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import config as hf_config

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


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Force offline mode and keep the datasets cache inside tmp_path."""
    monkeypatch.setattr(hf_config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


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
    with pytest.raises(ConfigError, match=r"dataset\.labels"):
        load_dataset("hf", **common, labels="species")


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
