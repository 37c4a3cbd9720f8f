"""The benchmark harness: its command line, its workloads, the bracketing of several
backends by one pair of plain loops, and small points end to end (in-process engine, so no
Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import simulations.bench as bench
from simulations.bench import main, parse_args, plain_loop, tree_rss
from simulations.bench_workloads import (
    REFERENCE_DIGITS_MAX_CLIENTS,
    REFERENCE_DIRICHLET_MAX_CLIENTS,
    Backend,
    ReferenceWorkload,
    SyntheticWorkload,
    make_workload,
)

KEYS = {
    "clients",
    "backend",
    "engine",
    "sim_seconds_per_round",
    "plain_seconds_per_round",
    "ratio",
    "overhead_ms_per_message",
    "startup_seconds",
    "startup_source",
    "outputs_seconds",
    "peak_rss_bytes",
    "uplink_bytes_per_round",
    "same_result",
    "workload",
    "data",
}


def _run(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    code = main([*args, "--out", str(out), "--work-dir", str(tmp_path / "work")])
    assert code == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_a_tiny_point_is_measured_and_both_paths_compute_the_same(tmp_path, capsys) -> None:
    report = _run(tmp_path, "--clients", "3", "--rounds", "2", "--tiny", "--backend", "inline")
    assert report["workload"]["name"] == "tiny"  # --tiny is --workload tiny
    assert report["workload"]["method"] == "fedavg" and report["workload"]["epochs"] == 1
    assert report["import_floor_seconds"] > 0
    (point,) = report["results"]
    assert set(point) >= KEYS
    assert point["clients"] == 3 and point["actors"] == 1
    assert point["backend"] == "inline" and point["engine"] is None
    # The plain loop is the simulation without Flower: the same seeded numbers.
    assert point["same_result"] and point["sim_accuracy"] == point["plain_accuracy"]
    assert point["sim_seconds_per_round"] > 0 and point["plain_seconds_per_round"] > 0
    assert point["ratio"] == pytest.approx(
        point["sim_seconds_per_round"] / point["plain_seconds_per_round"]
    )
    assert 0 < point["startup_seconds"] < point["wall_seconds"]
    assert point["peak_rss_bytes"] > 50 * 2**20  # a Python process with torch loaded
    assert point["uplink_bytes_per_round"] > 0
    assert "N=    3" in capsys.readouterr().out


@pytest.mark.slow
def test_the_reference_workload_gives_the_same_accuracy_in_both_paths(tmp_path) -> None:
    report = _run(
        tmp_path,
        "--workload",
        "reference",
        "--clients",
        "5",
        "--rounds",
        "2",
        "--backend",
        "inline",
    )
    assert "experiment=reference" in report["workload"]["description"]
    (point,) = report["results"]
    assert point["workload"] == "reference" and point["data"].startswith("digits, dirichlet")
    assert point["same_result"] and point["sim_accuracy"] == point["plain_accuracy"]


def test_plain_loop_reports_every_round() -> None:
    seconds, accuracy = plain_loop(SyntheticWorkload(3, 3, 20, 1).overrides())
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    assert 0.0 <= accuracy <= 1.0


def test_tree_rss_counts_this_process() -> None:
    import os

    assert tree_rss(os.getpid()) > 0


# ---------------------------------------------------------------------- the command line
def test_bad_arguments_are_refused() -> None:
    for argv in (
        ["--clients", "ten"],
        ["--clients", "1"],
        ["--workload", "huge"],
        ["--tiny", "--workload", "reference"],  # the alias contradicts the choice
        ["--backend", "inline:flower"],  # an engine for an in-process backend
        ["--backend", "inline,inline"],
        ["--backend", ","],
    ):
        with pytest.raises(SystemExit):
            parse_args(argv)


def test_workload_choice_and_the_tiny_alias() -> None:
    assert parse_args([]).workload == "default"
    assert parse_args(["--workload", "reference"]).workload == "reference"
    assert parse_args(["--tiny"]).workload == "tiny"
    assert parse_args(["--tiny", "--workload", "tiny"]).workload == "tiny"


def test_backends_are_a_comma_list_with_optional_engines() -> None:
    args = parse_args(["--backend", "inline, batched,ray_cpu,ray_cpu:flower"])
    assert args.backends == [
        Backend("inline"),
        Backend("batched"),
        Backend("ray_cpu"),
        Backend("ray_cpu", "flower"),
    ]
    inline, batched, ray, flower = args.backends
    assert inline.overrides() == ["backend=inline"] and inline.label == "inline"
    assert batched.overrides() == ["backend=batched"]  # passed through like inline
    assert flower.overrides() == ["backend=ray_cpu", "backend.engine=flower"]
    assert [b.resolved_engine() for b in args.backends] == [None, None, "fedkd", "flower"]
    assert ray.resolved_engine(["backend.engine=flower"]) == "flower"  # from --set
    assert bench.actor_count(batched, [], 100) == 1
    assert bench.actor_count(ray, ["backend.max_actors=1"], 100) == 1
    assert bench.actor_count(ray, [], 1) == 1  # never more actors than clients


# ---------------------------------------------------------------------- the bracketing
def test_every_backend_is_bracketed_by_the_same_plain_loops(tmp_path, monkeypatch) -> None:
    calls: list[str] = []

    def fake_plain(overrides: list[str]) -> tuple[list[float], float]:
        calls.append("plain")
        return [9.0, 2.0, 2.0], 0.5  # the first round is warm-up: left out of the median

    def fake_simulate(overrides, run_dir, *, extra=()):
        calls.append(" ".join(o for o in extra if o.startswith("backend")))
        if "backend=batched" in extra:
            raise RuntimeError("the simulation failed (exit 1)")
        rows = [
            {"round": 0, "seconds": 0.0},
            *(
                {"round": r, "seconds": 1.0, "uplink_bytes": 10, "downlink_bytes": 20}
                for r in (1, 2, 3)
            ),
        ]
        summary: dict[str, Any] = {"final": {"student_accuracy": 0.5}}
        if "backend.engine=flower" in extra:  # a run that reports its own start-up and outputs
            summary.update(startup_seconds=4.0, outputs_seconds=1.5)
        return 10.0, 123, rows, summary

    monkeypatch.setattr(bench, "plain_loop", fake_plain)
    monkeypatch.setattr(bench, "simulate", fake_simulate)
    backends = [Backend("inline"), Backend("batched"), Backend("ray_cpu", "flower")]
    points = bench.measure(make_workload("tiny", 4, 3), tmp_path, backends=backends)
    assert calls == [
        "plain",
        "backend=inline",
        "backend=batched",
        "backend=ray_cpu backend.engine=flower",
        "plain",
    ]
    inline, batched, flower = points
    assert isinstance(batched, dict) and batched["backend"] == "batched" and "error" in batched
    assert isinstance(inline, bench.Point) and isinstance(flower, bench.Point)
    assert inline.plain_seconds_per_round == flower.plain_seconds_per_round == 2.0
    assert inline.ratio == flower.ratio == 0.5  # 1.0 s per round against 2.0
    assert (inline.actors, flower.actors) == (1, 2)
    assert flower.engine == "flower" and inline.engine is None
    # start-up: the run's own figure, else the wall time not in rounds (10 - 3 x 1.0)
    assert (flower.startup_seconds, flower.startup_source, flower.outputs_seconds) == (
        4.0,
        "summary",
        1.5,
    )
    assert (inline.startup_seconds, inline.startup_source, inline.outputs_seconds) == (
        7.0,
        "harness",
        None,
    )
    assert inline.same_result and inline.uplink_bytes_per_round == 10


# ---------------------------------------------------------------------- the reference workload
def test_the_reference_partition_scales_with_the_clients() -> None:
    small = ReferenceWorkload(REFERENCE_DIRICHLET_MAX_CLIENTS, 2)
    assert small.dirichlet and small.dataset == "digits"
    assert "partition=iid" not in small.overrides()
    mid = ReferenceWorkload(REFERENCE_DIRICHLET_MAX_CLIENTS + 1, 2)
    assert not mid.dirichlet and mid.dataset == "digits" and "partition=iid" in mid.overrides()
    assert ReferenceWorkload(REFERENCE_DIGITS_MAX_CLIENTS, 2).dataset == "digits"
    large = ReferenceWorkload(REFERENCE_DIGITS_MAX_CLIENTS + 1, 2)
    assert large.dataset == "mnist1d" and "dataset=mnist1d" in large.overrides()
    assert "mnist1d" in large.data and "iid" in large.data


@pytest.mark.parametrize(
    ("clients", "dataset", "partition"),
    [
        (10, "digits", "dirichlet"),
        (100, "digits", "iid"),
        pytest.param(1000, "mnist1d", "iid", marks=pytest.mark.slow),  # generates MNIST-1D
    ],
)
def test_the_reference_workload_builds_a_federation(clients, dataset, partition) -> None:
    from fedkd.apps.server import prepare_run
    from fedkd.config import compose_config

    workload = make_workload("reference", clients, 2)
    cfg = compose_config(workload.overrides())
    assert (cfg["dataset"]["name"], cfg["partition"]["name"]) == (dataset, partition)
    assert cfg["num_clients"] == clients and cfg["num_rounds"] == 2
    # the reference protocol, as configs/experiment/reference.yaml states it
    assert cfg["strategy"]["name"] == "fedavg" and cfg["strategy"]["fraction_evaluate"] == 0.0
    client = {k: cfg["client"][k] for k in ("epochs", "lr", "batch_size", "optimizer")}
    assert client == {"epochs": 2, "lr": 0.1, "batch_size": 32, "optimizer": "sgd"}
    assert cfg["data"]["local_test_fraction"] == 0.0
    assert cfg["diagnostics"]["client_test_predictions"] is True
    assert cfg["model"]["hidden"] == [128] and cfg["checkpoint"]["every"] == 0
    plan = prepare_run(cfg)
    data = plan.assets.data
    sizes = [len(data.client_data(p).train_y) for p in range(clients)]
    assert len(sizes) == clients and min(sizes) >= 1
    assert all(len(data.client_data(p).test_y) == 0 for p in range(clients))
    if partition == "iid":
        assert max(sizes) - min(sizes) <= 1
