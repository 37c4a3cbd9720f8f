"""Errors about a client's local data file never quote its content (issue 18).

A DataFileError's first line crosses to the server as the client's error reason
(:func:`fedkd.apps.client.safe_reason`), so a record planted in any position of a bad file —
a feature cell, a label cell, a header cell, an extra column, an array name — must not
appear in it, while the message still names the file and, for a bad record, its line/row.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedkd.apps.client import safe_reason
from fedkd.data.local_files import DataFileError, LocalDataSpec, load_local_data

CANARY = "CANARY-Jane-Doe-123-45-6789"
# Any of these in a message means part of the record leaked (checked case-insensitively).
FRAGMENTS = ("canary", "jane", "123-45", "6789")


def _csv(text: str) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        path.write_text(text, encoding="utf-8")
        return path

    return write


def _csv_bytes(data: bytes) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return write


def _npz(**arrays: Any) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        with path.open("wb") as handle:
            np.savez(handle, **arrays)
        return path

    return write


def _parquet(columns: dict[str, Any]) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        pq.write_table(pa.table(columns), path)
        return path

    return write


def _npz_object_array(path: Path) -> Path:
    with path.open("wb") as handle:
        np.savez(handle, x=np.array([[CANARY]], dtype=object), y=np.array([0]))
    return path


def _zip_with_bad_member(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", f"\x93NUMPY garbage {CANARY}")
        archive.writestr("y.npy", CANARY)
    return path


_ROWS = "a,b,label\n1,2,0\n3,4,1\n"
_STRUCTURED = np.zeros(2, dtype=[(CANARY, "f4")])

# (id, file suffix, writer, spec fields, where the message must point: line/row or None)
CASES: list[tuple[str, str, Callable[[Path], Path], dict[str, Any], str | None]] = [
    ("csv-feature-cell", "csv", _csv(f"a,b,label\n1,2,0\n3,{CANARY},1\n"), {}, "line 3"),
    (
        "csv-configured-feature-cell",
        "csv",
        _csv(f"a,b,label\n1,2,0\n3,{CANARY},1\n"),
        {"feature_columns": ("b",)},
        "line 3",
    ),
    ("csv-label-cell", "csv", _csv(f"a,b,label\n1,2,0\n3,4,{CANARY}\n"), {}, "line 3"),
    (
        "csv-label-cell-label-map",
        "csv",
        _csv(f"a,b,label\n1,2,benign\n3,4,{CANARY}\n"),
        {"label_map": {"benign": 0}},
        "line 3",
    ),
    ("csv-extra-column", "csv", _csv(f"a,b,label\n1,2,0\n3,4,1,{CANARY}\n"), {}, "line 3"),
    ("csv-header-of-wrong-file", "csv", _csv(f"{CANARY},x\n1,2\n"), {}, None),
    (
        "csv-header-missing-feature",
        "csv",
        _csv(f"{CANARY},label\n1,0\n"),
        {"feature_columns": ("age",)},
        None,
    ),
    ("csv-header-duplicated", "csv", _csv(f"{CANARY},{CANARY},label\n1,2,0\n"), {}, None),
    ("csv-header-of-bad-column", "csv", _csv(f"{CANARY},label\n1,0\n,1\n"), {}, "line 3"),
    ("csv-nan-under-header", "csv", _csv(f"{CANARY},label\n1,0\nnan,1\n"), {}, "line 3"),
    (
        "csv-not-utf8",
        "csv",
        _csv_bytes(f"a,label\n1,0\n2,1\n{CANARY}".encode() + b"\xff,1\n"),
        {},
        "line 4",
    ),
    ("csv-unclosed-quote", "csv", _csv(f'a,label\n1,0\n"{CANARY},1\n'), {}, "line"),
    ("csv-nul-byte", "csv", _csv(f"a,label\n1,0\n{CANARY}\x00,1\n"), {}, "line"),
    (
        "npz-feature-cell",
        "npz",
        _npz(x=np.array([["1"], [CANARY]]), y=np.array([0, 1])),
        {},
        "row 2",
    ),
    ("npz-label-cell", "npz", _npz(x=np.ones((2, 1)), y=np.array(["0", CANARY])), {}, "row 2"),
    (
        "npz-label-cell-label-map",
        "npz",
        _npz(x=np.ones((2, 1)), y=np.array(["benign", CANARY])),
        {"label_map": {"benign": 0}},
        "row 2",
    ),
    ("npz-array-name", "npz", _npz(x=np.ones((2, 1)), **{CANARY: np.zeros(2)}), {}, None),
    (
        "npz-input-array-missing",
        "npz",
        _npz(y=np.zeros(2), **{CANARY: np.zeros(2)}),
        {},
        None,
    ),
    ("npz-structured-dtype", "npz", _npz(x=_STRUCTURED, y=np.zeros(2, dtype=int)), {}, None),
    ("npz-object-array", "npz", _npz_object_array, {}, None),
    ("npz-damaged-member", "npz", _zip_with_bad_member, {}, None),
    ("npz-given-a-csv", "npz", _csv(f"{CANARY},label\n1,0\n"), {}, None),
    (
        "parquet-feature-cell",
        "parquet",
        _parquet({"a": ["1", CANARY], "label": [0, 1]}),
        {},
        None,
    ),
    (
        "parquet-label-cell",
        "parquet",
        _parquet({"a": [1.0, 2.0], "label": ["0", CANARY]}),
        {},
        None,  # a string column without label-map: rejected by type, as a whole,
    ),
    (
        "parquet-label-cell-label-map",
        "parquet",
        _parquet({"a": [1.0, 2.0], "label": ["benign", CANARY]}),
        {"label_map": {"benign": 0}},
        "row 2",
    ),
    ("parquet-header-of-wrong-file", "parquet", _parquet({CANARY: [1.0], "x": [0]}), {}, None),
    (
        "parquet-null-under-header",
        "parquet",
        _parquet({CANARY: [1.0, None], "label": [0, 1]}),
        {},
        "row 2",
    ),
    (
        "parquet-nested-type",
        "parquet",
        _parquet({"a": [{CANARY: 1.0}], "label": [0]}),
        {},
        None,
    ),
    ("parquet-given-a-csv", "parquet", _csv(f"{CANARY},label\n1,0\n"), {}, None),
]


def _assert_no_record(text: str) -> None:
    lowered = text.lower()
    leaked = [fragment for fragment in FRAGMENTS if fragment in lowered]
    assert not leaked, f"{leaked} leaked into {text!r}"


@pytest.mark.parametrize(
    ("suffix", "write", "fields", "where"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_error_names_file_and_place_never_the_record(
    tmp_path: Path,
    suffix: str,
    write: Callable[[Path], Path],
    fields: dict[str, Any],
    where: str | None,
) -> None:
    path = write(tmp_path / f"site.{suffix}")
    spec = LocalDataSpec(path, suffix, **fields)
    with pytest.raises(DataFileError) as caught:
        load_local_data(spec, num_classes=2)
    message, reason = str(caught.value), safe_reason(caught.value)
    _assert_no_record(message)
    _assert_no_record(reason)
    assert "site." + suffix in reason
    if where is not None:
        assert where in reason, f"{where!r} not in {reason!r}"


def test_the_value_stays_in_the_client_debug_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The operator can still see what was wrong, on the client only, at DEBUG.
    path = _csv(f"a,b,label\n1,2,0\n3,{CANARY},1\n")(tmp_path / "site.csv")
    with (
        caplog.at_level(logging.DEBUG, logger="fedkd.data"),
        pytest.raises(DataFileError) as caught,
    ):
        load_local_data(LocalDataSpec(path, "csv"))
    _assert_no_record(str(caught.value))
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(CANARY in line and "line 3" in line for line in debug), debug
