"""Tests for a client's local data files in fedkd.data.local_files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedkd.data.local_files import (
    NODE_KEYS,
    DataFileError,
    LocalDataSpec,
    load_local_data,
    write_local_data,
)
from fedkd.errors import ConfigError


def _expect_error(action: Callable[[], Any], *fragments: str) -> str:
    """Run ``action``; it must raise DataFileError whose message holds every fragment."""
    with pytest.raises(DataFileError) as caught:
        action()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _load(path: Path, data_format: str = "csv", **spec: Any) -> tuple[np.ndarray, np.ndarray]:
    return load_local_data(LocalDataSpec(path, data_format, **spec))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("extension", ["csv", "npz", "parquet"])
def test_round_trip_keeps_values_and_dtypes(tmp_path: Path, extension: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 5))  # float64 on purpose: the loader must hand back float32
    x[0, 0] = 0.1  # not exact in binary: the text round trip must still be exact
    y = np.array([0, 1, 2, 3] * 3)

    path = write_local_data(tmp_path / f"client.{extension}", x, y)
    spec = LocalDataSpec.from_node_config({"data-file": str(path)})
    assert spec is not None and spec.format == extension
    x_loaded, y_loaded = load_local_data(spec, input_shape=(5,), num_classes=4)

    assert x_loaded.dtype == np.float32 and y_loaded.dtype == np.int64
    assert x_loaded.shape == (12, 5) and y_loaded.shape == (12,)
    np.testing.assert_array_equal(x_loaded, x.astype(np.float32))
    np.testing.assert_array_equal(y_loaded, y)


def test_csv_layout_has_named_columns_then_label(tmp_path: Path) -> None:
    path = write_local_data(
        tmp_path / "c.csv",
        np.array([[1.5, 2.0], [3.0, -4.25]], dtype=np.float32),
        np.array([1, 0]),
        feature_names=["age", "income"],
        label_column="default",
    )
    assert path.read_text().splitlines() == ["age,income,default", "1.5,2.0,1", "3.0,-4.25,0"]


def test_default_column_names_and_npz_arrays(tmp_path: Path) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 1, 3)
    csv_path = write_local_data(tmp_path / "a.csv", x, np.array([0, 1]))
    assert csv_path.read_text().splitlines()[0] == "f0,f1,f2,label"
    npz_path = write_local_data(tmp_path / "sub" / "a.npz", x, np.array([0, 1]))
    with np.load(npz_path) as archive:
        assert sorted(archive.files) == ["x", "y"]
        assert archive["x"].shape == (2, 3)  # flattened


def test_feature_columns_pick_and_order_columns(tmp_path: Path) -> None:
    path = _write_text(tmp_path / "c.csv", "id,b,label,a\n9,2,1,1\n8,4,0,3\n")
    x, y = _load(path, feature_columns=("a", "b"))
    np.testing.assert_array_equal(x, np.array([[1, 2], [3, 4]], dtype=np.float32))
    np.testing.assert_array_equal(y, [1, 0])
    # Default: every column but the label, in file order.
    x_all, _ = _load(path)
    np.testing.assert_array_equal(x_all, np.array([[9, 2, 1], [8, 4, 3]], dtype=np.float32))


def test_image_shape_reshapes_rows(tmp_path: Path) -> None:
    flat = np.arange(3 * 64, dtype=np.float32).reshape(3, 64)
    path = write_local_data(tmp_path / "d.csv", flat, np.array([0, 1, 2]))
    x, _ = _load(path, image_shape=(1, 8, 8))
    assert x.shape == (3, 1, 8, 8)
    # Row-major: pixel (r, c) of sample n is feature r * 8 + c.
    assert x[2, 0, 3, 5] == flat[2, 3 * 8 + 5]
    # The run's input shape reshapes flat rows too, without image_shape.
    x_run, _ = load_local_data(LocalDataSpec(path, "csv"), input_shape=(1, 8, 8))
    np.testing.assert_array_equal(x_run, x)
    # (8, 8) and the run's (1, 8, 8) differ only by a size-1 axis: accepted.
    x_both, _ = load_local_data(
        LocalDataSpec(path, "csv", image_shape=(8, 8)), input_shape=(1, 8, 8)
    )
    assert x_both.shape == (3, 1, 8, 8)


def test_npz_keeps_its_own_row_shape(tmp_path: Path) -> None:
    path = tmp_path / "img.npz"
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez(path, x=images, y=np.array([1, 0]))
    x, y = load_local_data(LocalDataSpec(path, "npz"))
    assert x.shape == (2, 4, 4) and x.dtype == np.float32
    assert x[1, 2, 3] == float(images[1, 2, 3])
    np.testing.assert_array_equal(y, [1, 0])


@pytest.mark.parametrize("extension", ["csv", "parquet"])
def test_label_map_turns_strings_into_class_ids(tmp_path: Path, extension: str) -> None:
    labels = np.array(["malignant", "benign", "benign", "malignant"])
    path = write_local_data(tmp_path / f"h.{extension}", np.ones((4, 2)), labels)
    spec = LocalDataSpec.from_node_config(
        {"data-file": str(path), "label-map": "benign:0, malignant:1"}
    )
    assert spec is not None
    _, y = load_local_data(spec, num_classes=2)
    assert y.dtype == np.int64
    assert y.tolist() == [1, 0, 0, 1]


# --------------------------------------------------------------------------- node config


def test_from_node_config_without_data_file_is_none() -> None:
    assert LocalDataSpec.from_node_config({}) is None
    assert LocalDataSpec.from_node_config({"partition-id": 0, "num-partitions": 4}) is None


def test_from_node_config_parses_every_key() -> None:
    spec = LocalDataSpec.from_node_config(
        {
            "partition-id": 3,  # other keys are left alone
            "data-file": "/data/site a.bin",
            "data-format": "CSV",
            "label-column": "diagnosis",
            "feature-columns": "radius, texture,area",
            "image-shape": "1x28x28",
            "label-map": "benign:0,malignant:1,a:b:2",
        }
    )
    assert spec == LocalDataSpec(
        path=Path("/data/site a.bin"),
        format="csv",
        label_column="diagnosis",
        feature_columns=("radius", "texture", "area"),
        image_shape=(1, 28, 28),
        label_map={"benign": 0, "malignant": 1, "a:b": 2},
    )
    assert set(NODE_KEYS) == {
        "data-file",
        "data-format",
        "label-column",
        "feature-columns",
        "image-shape",
        "label-map",
    }


def test_format_inferred_from_extension_and_defaults_per_format() -> None:
    formats = {
        name: LocalDataSpec.from_node_config({"data-file": name})
        for name in ("a.csv", "b.NPZ", "c.parquet", "d.pq")
    }
    assert {name: spec.format for name, spec in formats.items() if spec} == {
        "a.csv": "csv",
        "b.NPZ": "npz",
        "c.parquet": "parquet",
        "d.pq": "parquet",
    }
    npz, csv_spec = formats["b.NPZ"], formats["a.csv"]
    assert npz is not None and npz.label_column == "y"
    assert csv_spec is not None and csv_spec.label_column == "label"
    single = LocalDataSpec.from_node_config({"data-file": "a.csv", "image-shape": 64})
    assert single is not None and single.image_shape == (64,)


def test_explicit_data_format_overrides_extension(tmp_path: Path) -> None:
    path = _write_text(tmp_path / "export.csv", "a,label\n1.5,1\n")
    # A CSV file under a misleading name, declared as csv: read as CSV.
    misnamed = tmp_path / "export.parquet"
    path.rename(misnamed)
    spec = LocalDataSpec.from_node_config({"data-file": str(misnamed), "data-format": "csv"})
    assert spec is not None and spec.format == "csv"
    x, y = load_local_data(spec)
    assert x.tolist() == [[1.5]] and y.tolist() == [1]
    # Without data-format the extension wins, and the parquet reader rejects the file.
    inferred = LocalDataSpec.from_node_config({"data-file": str(misnamed)})
    assert inferred is not None
    _expect_error(lambda: load_local_data(inferred), "export.parquet", "as parquet")


def test_unknown_format_lists_the_allowed_ones(tmp_path: Path) -> None:
    _expect_error(
        lambda: LocalDataSpec.from_node_config({"data-file": "/data/site.xlsx"}),
        "site.xlsx",
        "data-format",
        "['csv', 'npz', 'parquet']",
    )
    _expect_error(
        lambda: LocalDataSpec.from_node_config({"data-file": "site.csv", "data-format": "tsv"}),
        "site.csv",
        "data-format",
        "'tsv'",
        "['csv', 'npz', 'parquet']",
    )
    _expect_error(lambda: write_local_data(tmp_path / "x.json", np.ones((1, 1)), np.zeros(1)))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("image-shape", "8*8"),
        ("image-shape", "0x8"),
        ("image-shape", True),
        ("label-map", "benign=0"),
        ("label-map", "benign:-1"),
        ("label-map", "a:0,a:1"),
        ("feature-columns", "a,,b"),
        ("label-column", 3),
        ("data-format", ""),
    ],
)
def test_malformed_node_config_value_names_key(key: str, value: Any) -> None:
    config = {"data-file": "/data/hospital_a.csv", key: value}
    _expect_error(lambda: LocalDataSpec.from_node_config(config), "hospital_a.csv", key)


def test_schema_keys_without_data_file_are_an_error() -> None:
    _expect_error(
        lambda: LocalDataSpec.from_node_config({"label-column": "diagnosis"}),
        "label-column",
        "data-file",
    )


def test_data_file_error_is_a_config_error() -> None:
    assert issubclass(DataFileError, ConfigError)
    assert issubclass(DataFileError, ValueError)


# --------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(lambda: _load(tmp_path / "gone.csv"), "gone.csv", "no such file")


def test_malformed_csv(tmp_path: Path) -> None:
    ragged = _write_text(tmp_path / "ragged.csv", "a,b,label\n1,2,0\n3,4\n")
    _expect_error(lambda: _load(ragged), "ragged.csv", "as csv", "line 3")
    quote = _write_text(tmp_path / "quote.csv", 'a,label\n"1,0\n')
    _expect_error(lambda: _load(quote), "quote.csv", "as csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    _expect_error(lambda: _load(binary), "binary.csv", "as csv")


def test_text_value_in_feature_column(tmp_path: Path) -> None:
    path = _write_text(tmp_path / "t.csv", "a,b,c,label\n1,2,3,0\n4,five,x,1\n")
    # Column by position (header names are file content), never the value itself.
    message = _expect_error(lambda: _load(path), "t.csv", "column 2", "not a number", "line 3")
    assert "five" not in message
    # A configured column is named as configured.
    _expect_error(lambda: _load(path, feature_columns=("a", "b")), "t.csv", "'b'", "line 3")
    empty_cell = _write_text(tmp_path / "e.csv", "a,b,label\n1,,0\n")
    _expect_error(lambda: _load(empty_cell), "e.csv", "column 2", "missing")


def test_missing_label_column_counts_available(tmp_path: Path) -> None:
    path = _write_text(tmp_path / "m.csv", "a,b,target\n1,2,0\n")
    message = _expect_error(
        lambda: _load(path, label_column="diagnosis"), "m.csv", "'diagnosis'", "3 column(s)"
    )
    assert "target" not in message  # header cells are file content
    npz_path = tmp_path / "m.npz"
    np.savez(npz_path, x=np.ones((2, 2)), labels=np.zeros(2))
    message = _expect_error(lambda: _load(npz_path, "npz"), "m.npz", "'y'", "2 array(s)")
    assert "labels" not in message


def test_missing_feature_columns_listed(tmp_path: Path) -> None:
    path = _write_text(tmp_path / "f.csv", "a,b,label\n1,2,0\n")
    _expect_error(
        lambda: _load(path, feature_columns=("a", "c", "d")), "f.csv", "['c', 'd']", "3 column(s)"
    )


@pytest.mark.parametrize("extension", ["csv", "npz", "parquet"])
def test_nan_and_inf_in_features(tmp_path: Path, extension: str) -> None:
    x = np.ones((3, 3))
    x[1, 2] = np.nan
    path = write_local_data(tmp_path / f"nan.{extension}", x, np.zeros(3, dtype=int))
    column = "array 'x'" if extension == "npz" else "column 3"
    where = "line 3" if extension == "csv" else "row 2"  # csv counts the header line
    _expect_error(lambda: _load(path, extension), f"nan.{extension}", column, "NaN", where)
    x[1, 2] = 1e39  # finite as float64, inf once cast to float32
    path = write_local_data(tmp_path / f"big.{extension}", x, np.zeros(3, dtype=int))
    message = _expect_error(lambda: _load(path, extension), f"big.{extension}", column, "infinite")
    assert "1e+39" not in message and "1e39" not in message


def test_no_data_rows(tmp_path: Path) -> None:
    header_only = _write_text(tmp_path / "h.csv", "a,label\n")
    _expect_error(lambda: _load(header_only), "h.csv", "no data rows")
    blank = _write_text(tmp_path / "blank.csv", "")
    _expect_error(lambda: _load(blank), "blank.csv", "empty")
    empty_parquet = write_local_data(
        tmp_path / "z.parquet", np.ones((0, 2)), np.zeros(0, dtype=np.int64)
    )
    _expect_error(lambda: _load(empty_parquet, "parquet"), "z.parquet", "no data rows")


def test_labels_must_be_integers_without_label_map(tmp_path: Path) -> None:
    text = _write_text(tmp_path / "s.csv", "a,diagnosis\n1,benign\n")
    message = _expect_error(
        lambda: _load(text, label_column="diagnosis"),
        "s.csv",
        "'diagnosis'",
        "line 2",
        "label-map",
    )
    assert "benign" not in message.split("label-map")[0]  # only the example mapping
    fractional = _write_text(tmp_path / "f.csv", "a,label\n1,0\n2,1.5\n")
    message = _expect_error(lambda: _load(fractional), "f.csv", "'label'", "line 3")
    assert "1.5" not in message


def test_unknown_label_strings_located_not_quoted(tmp_path: Path) -> None:
    path = _write_text(tmp_path / "u.csv", "a,label\n1,benign\n2,unsure\n3,malign\n")
    message = _expect_error(
        lambda: _load(path, label_map={"benign": 0, "malignant": 1}),
        "u.csv",
        "'label'",
        "not in the configured classes",
        "line 3",
        "2 such row(s)",
    )
    assert "unsure" not in message and "malign'" not in message


def test_labels_out_of_range(tmp_path: Path) -> None:
    path = write_local_data(tmp_path / "r.npz", np.ones((3, 2)), np.array([0, 2, 3]))
    assert load_local_data(LocalDataSpec(path, "npz"), num_classes=4)[1].tolist() == [0, 2, 3]
    _expect_error(  # 3 is the first id outside [0, 3)
        lambda: load_local_data(LocalDataSpec(path, "npz"), num_classes=3),
        "r.npz",
        "'y'",
        "outside [0, 3) in row 3",
    )
    negative = _write_text(tmp_path / "n.csv", "a,label\n1,-1\n")
    message = _expect_error(lambda: _load(negative), "n.csv", "'label'", ">= 0", "line 2")
    assert "-1" not in message.replace(str(negative), "")  # the path may hold "-1"


def test_feature_count_mismatch_with_input_shape(tmp_path: Path) -> None:
    path = write_local_data(tmp_path / "bc.csv", np.ones((2, 29)), np.array([0, 1]))
    _expect_error(
        lambda: load_local_data(LocalDataSpec(path, "csv"), input_shape=(30,)),
        "bc.csv",
        "expected 30 features (the run's dataset",
        "found 29",
    )
    # Same count, different layout: (4, 16) is not the run's (1, 8, 8).
    image = write_local_data(tmp_path / "img.csv", np.ones((2, 64)), np.array([0, 1]))
    _expect_error(
        lambda: load_local_data(
            LocalDataSpec(image, "csv", image_shape=(4, 16)), input_shape=(1, 8, 8)
        ),
        "img.csv",
        "(1, 8, 8)",
        "image-shape (4, 16)",
    )


def test_image_shape_product_mismatch(tmp_path: Path) -> None:
    path = write_local_data(tmp_path / "i.csv", np.ones((2, 30)), np.array([0, 1]))
    _expect_error(
        lambda: _load(path, image_shape=(5, 5)), "i.csv", "image-shape (5, 5)", "25", "30"
    )


def test_corrupt_parquet_and_npz(tmp_path: Path) -> None:
    parquet = tmp_path / "broken.parquet"
    good = write_local_data(tmp_path / "good.parquet", np.ones((4, 2)), np.zeros(4, dtype=int))
    parquet.write_bytes(good.read_bytes()[:-30])  # truncated footer
    _expect_error(lambda: _load(parquet, "parquet"), "broken.parquet", "as parquet")
    npz = tmp_path / "broken.npz"
    npz.write_bytes(b"not a zip archive")
    _expect_error(lambda: _load(npz, "npz"), "broken.npz", "as npz")


def test_parquet_non_numeric_and_null_columns(tmp_path: Path) -> None:
    path = tmp_path / "typed.parquet"
    table = pa.table(
        {
            "age": [30.0, None],
            "city": ["Oslo", "Bergen"],
            "label": [0, 1],
        }
    )
    pq.write_table(table, path)
    _expect_error(
        lambda: _load(path, "parquet", feature_columns=("city",)),
        "typed.parquet",
        "'city'",
        "not numeric",
    )
    _expect_error(
        lambda: _load(path, "parquet", feature_columns=("age",)),
        "typed.parquet",
        "'age'",
        "null",
        "row 2",
    )
