"""Clients that bring their own data file (node config ``data-file``): the same numbers as
the simulated partition, and a malformed file fails on that node only."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.supercore.task_identity import TaskIdentity

from fedkd.data import get_federated_data, write_local_data
from fedkd.run.results import read_metrics

ARGS = [
    "dataset=synthetic",
    "dataset.num_samples=300",
    "num_clients=3",
    "num_rounds=2",
    "client.epochs=1",
    "strategy=feddf",
    "strategy.distill_epochs=2",
]


def _run(
    grid_cls: Any, overrides: list[str], run_dir: Path, node_files: dict[int, Path]
) -> dict[str, Any]:
    from fedkd.apps.client import app as client_app
    from fedkd.apps.server import prepare_run, run_federation
    from fedkd.config import compose_config

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        cfg = compose_config([*overrides, "progress=false"])
        plan = prepare_run(cfg)
        grid = grid_cls(client_app, cfg["num_clients"])
        for context in grid.contexts.values():
            path = node_files.get(int(context.node_config["partition-id"]))
            if path is not None:
                context.node_config["data-file"] = str(path)
        return run_federation(grid, plan, run_dir, show_progress=False)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _partition_files(tmp_path: Path, suffix: str) -> dict[int, Path]:
    from fedkd.apps.server import build_setup
    from fedkd.config import compose_config

    setup = build_setup(compose_config(ARGS))
    data = get_federated_data(**setup.data_kwargs())
    files = {}
    for p in range(3):
        rows = data.partitions[p]
        files[p] = write_local_data(
            tmp_path / f"node{p}.{suffix}", data.train_x[rows], data.train_y[rows]
        )
    return files


def test_own_data_files_give_the_simulated_numbers(tmp_path, in_process_grid) -> None:
    files = _partition_files(tmp_path, "npz")
    _run(in_process_grid, ARGS, tmp_path / "files", files)
    _run(in_process_grid, ARGS, tmp_path / "sim", {})
    drop = ("seconds",)
    with_files = [
        {k: v for k, v in r.items() if k not in drop} for r in read_metrics(tmp_path / "files")
    ]
    simulated = [
        {k: v for k, v in r.items() if k not in drop} for r in read_metrics(tmp_path / "sim")
    ]
    assert with_files == simulated


def test_a_malformed_data_file_fails_on_that_node_only(tmp_path, caplog, in_process_grid) -> None:
    files = _partition_files(tmp_path, "csv")
    text = files[1].read_text().splitlines()
    text[3] = text[3].replace(text[3].split(",")[0], "not-a-number", 1)
    files[1].write_text("\n".join(text) + "\n")
    summary = _run(in_process_grid, ARGS, tmp_path / "run", files)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    rows = read_metrics(tmp_path / "run")
    assert all(r["clients_ok"] == 2 for r in rows[1:])
    assert "failed discovery" in caplog.text and "node1.csv" in caplog.text
    assert "not numeric" in caplog.text
    assert np.isfinite(rows[-1]["student_accuracy"])


def test_a_bad_record_never_reaches_the_server(tmp_path, caplog, in_process_grid) -> None:
    # Issue 18: the failing node's error reason names the file and line, not the record.
    canary = "CANARY-Jane-Doe-123-45-6789"
    caplog.set_level(logging.INFO)  # the value itself is logged at DEBUG, on the client only
    files = _partition_files(tmp_path, "csv")
    text = files[1].read_text().splitlines()
    text[3] = text[3].replace(text[3].split(",")[0], canary, 1)
    files[1].write_text("\n".join(text) + "\n")
    summary = _run(in_process_grid, ARGS, tmp_path / "run", files)
    assert summary["status"] == "completed"
    assert "failed discovery" in caplog.text and "node1.csv" in caplog.text
    assert "line 4" in caplog.text
    written = [
        path.read_text(errors="replace") for path in (tmp_path / "run").rglob("*") if path.is_file()
    ]
    assert written  # the run left its files: they are what is checked
    for text_seen in [caplog.text, repr(summary), *written]:
        lowered = text_seen.lower()
        assert "canary" not in lowered and "jane" not in lowered and "123-45" not in lowered
