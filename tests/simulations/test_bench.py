"""The benchmark harness: one tiny point end to end (in-process engine, so no Ray)."""

from __future__ import annotations

import json

import pytest

from simulations.bench import Workload, main, plain_loop, tree_rss

KEYS = {
    "clients",
    "sim_seconds_per_round",
    "plain_seconds_per_round",
    "ratio",
    "overhead_ms_per_message",
    "startup_seconds",
    "peak_rss_bytes",
    "uplink_bytes_per_round",
}


@pytest.mark.slow
def test_a_tiny_point_is_measured_and_both_paths_compute_the_same(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    code = main(
        [
            "--clients",
            "3",
            "--rounds",
            "2",
            "--tiny",
            "--backend",
            "inline",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["workload"]["method"] == "fedavg" and report["workload"]["epochs"] == 1
    (point,) = report["results"]
    assert set(point) >= KEYS
    assert point["clients"] == 3 and point["actors"] == 1
    # The plain loop is the simulation without Flower: the same seeded numbers.
    assert point["same_result"] and point["sim_accuracy"] == point["plain_accuracy"]
    assert point["sim_seconds_per_round"] > 0 and point["plain_seconds_per_round"] > 0
    assert point["ratio"] == pytest.approx(
        point["sim_seconds_per_round"] / point["plain_seconds_per_round"]
    )
    assert point["peak_rss_bytes"] > 50 * 2**20  # a Python process with torch loaded
    assert point["uplink_bytes_per_round"] > 0
    assert "N=    3" in capsys.readouterr().out


def test_plain_loop_reports_every_round() -> None:
    seconds, accuracy = plain_loop(Workload(3, 3, 20, 1).overrides())
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    assert 0.0 <= accuracy <= 1.0


def test_tree_rss_counts_this_process() -> None:
    import os

    assert tree_rss(os.getpid()) > 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--clients", "ten"])
    with pytest.raises(SystemExit):
        main(["--clients", "1"])
