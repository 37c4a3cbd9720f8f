"""docs/experiments/bench_table.py: the BENCHMARKS.md table from bench JSON files, new and
old (before several backends per invocation)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _table_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_table", ROOT / "docs" / "experiments" / "bench_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(clients: int, **fields: object) -> dict[str, object]:
    return {
        "clients": clients,
        "sim_seconds_per_round": 1.5,
        "plain_seconds_per_round": 3.0,
        "ratio": 0.5,
        "startup_seconds": 12.34,
        "peak_rss_bytes": 2**30,
        "uplink_bytes_per_round": 4_570_000,
        "same_result": True,
        **fields,
    }


def test_rows_are_ordered_and_old_files_are_read(tmp_path) -> None:
    new = {
        "workload": {"name": "reference"},
        "import_floor_seconds": 2.5,
        "results": [
            _result(100, backend="ray_cpu", engine="fedkd", outputs_seconds=3.0),
            _result(10, backend="batched", engine=None, outputs_seconds=None),
            {"clients": 10, "backend": "inline", "engine": None, "error": "exit 1"},
        ],
    }
    old = {  # no backend per result, no workload name: tiny by its 20 records per client
        "workload": {
            "samples_per_client": 20,
            "backend": "ray_cpu",
            "overrides": ["backend.engine=flower"],
        },
        "results": [_result(10, same_result=False)],
    }
    (tmp_path / "new.json").write_text(json.dumps(new))
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))  # not a bench file
    module = _table_module()
    lines = module.table(module.load([tmp_path])).splitlines()
    body = [line for line in lines[2:] if line.startswith("|")]
    assert [line.split(" | ")[:3] for line in body] == [
        ["| tiny", "ray_cpu (flower)", "10"],
        ["| reference", "inline", "10"],
        ["| reference", "batched", "10"],
        ["| reference", "ray_cpu (fedkd)", "100"],
    ]
    assert body[0].endswith("| 1.50 | 3.00 | 0.50 | 12.3 | - | 1.00 GiB | 4.57 | **no** |")
    assert "failed" in body[1]
    assert body[3].endswith("| 12.3 | 3.0 | 1.00 GiB | 4.57 | yes |")
    assert lines[-1].endswith("new.json 2.50 s")
