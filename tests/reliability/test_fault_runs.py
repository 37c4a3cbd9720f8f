"""Whole runs with injected faults, attacks, checkpoints and resume (in-process engine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.run.results import read_metrics
from simulations.run import resume_config, run

REPO = Path(__file__).resolve().parents[2]
CRASH_REASON = "client error: InjectedFault: injected crash (faults.crash_fraction)"


@pytest.fixture
def small(two_round_overrides) -> list[str]:
    return two_round_overrides("backend=inline", "progress=false")


def _run(
    small: list[str], tmp_path: Path, name: str, *overrides: str, resume: bool = False
) -> dict:
    return run(compose_config([*small, *overrides]), tmp_path / name, resume=resume)


def _rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without timings."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(run_dir)]


@pytest.mark.slow
def test_crashing_clients_are_counted_and_the_run_completes(tmp_path, small) -> None:
    summary = _run(small, tmp_path, "crash", "strategy=fedmd", "faults.crash_fraction=0.25")
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    for row in _rows(tmp_path / "crash")[1:]:
        assert row["faults_injected"] == {"crash": 1}
        assert row["clients_ok"] == 3 and row["clients_failed"] == 1
        assert row["failure_reasons"] == {CRASH_REASON: 1}
        assert row["student_accuracy"] is not None


@pytest.mark.slow
def test_without_faults_or_attack_a_run_is_bit_identical_to_a_clean_one(tmp_path, small) -> None:
    """Fault and attack settings that select nobody, and checkpointing every round, change
    no number."""
    _run(small, tmp_path, "clean", "strategy=fedmd", "checkpoint.every=0")
    _run(
        small,
        tmp_path,
        "inert",
        "strategy=fedmd",
        "faults.straggler_delay=9",
        "attack.kind=sign_flip",
        "attack.fraction=0.1",  # round(0.4) = 0 malicious clients of 4
        "checkpoint.every=1",
    )
    assert _rows(tmp_path / "clean") == _rows(tmp_path / "inert")
    assert (tmp_path / "inert" / "checkpoint.pt").is_file()
    assert not (tmp_path / "clean" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_stragglers_miss_the_deadline_and_are_counted(tmp_path, small) -> None:
    _run(
        small,
        tmp_path,
        "slow",
        "strategy=fedavg",
        "faults.straggler_fraction=0.25",
        "faults.straggler_delay=4.5",
        "round_timeout=4",  # generous: honest clients finish far sooner even on a busy machine
    )
    for row in _rows(tmp_path / "slow")[1:]:
        assert row["faults_injected"] == {"straggle": 1}
        assert row["clients_ok"] == 3
        assert row["failure_reasons"] == {"no reply (timeout)": 1}


def test_too_few_replies_skip_or_abort(tmp_path, small) -> None:
    crash = ["strategy=fedavg", "faults.crash_fraction=0.75", "strategy.min_train_replies=2"]
    skipped = _run(small, tmp_path, "skip", *crash)
    assert skipped["status"] == "completed"
    for row in _rows(tmp_path / "skip")[1:]:
        assert row["skipped"] == "1 valid replies < min_train_replies=2"
        assert row["failure_reasons"] == {CRASH_REASON: 3}
    aborted = _run(small, tmp_path, "abort", *crash, "strategy.on_too_few_replies=abort")
    assert aborted["status"] == "stopped" and aborted["rounds_completed"] == 0
    assert "round 1 aborted" in aborted["stopped_reason"]
    assert CRASH_REASON in aborted["stopped_reason"]


def test_poisoned_replies_that_break_the_format_are_rejected(tmp_path, small) -> None:
    _run(small, tmp_path, "probs", "strategy=dsfl", "attack.kind=scale", "attack.fraction=0.25")
    for row in _rows(tmp_path / "probs")[1:]:
        assert row["failure_reasons"] == {"proxy-probs: rows are not probability vectors": 1}
    _run(
        small,
        tmp_path,
        "weights",
        "strategy=fedavg",
        "attack.kind=scale",
        "attack.fraction=0.25",
        "attack.scale=1e9",
    )
    for row in _rows(tmp_path / "weights")[1:]:
        assert row["failure_reasons"] == {"weights: absurd magnitude": 1}


def test_valid_looking_poison_changes_the_result(tmp_path, small) -> None:
    _run(small, tmp_path, "honest", "strategy=fedavg")
    _run(
        small,
        tmp_path,
        "flipped",
        "strategy=fedavg",
        "attack.kind=label_flip",
        "attack.fraction=0.5",
    )
    honest, flipped = _rows(tmp_path / "honest"), _rows(tmp_path / "flipped")
    assert all(r["clients_failed"] == 0 for r in flipped[1:])  # nothing to reject
    assert honest[-1]["student_accuracy"] != flipped[-1]["student_accuracy"]


@pytest.mark.parametrize(
    "method",
    [
        ["strategy=fedmd"],  # clients' own models live in their state
        [  # the accountant and the clients' DP-SGD histories
            "strategy=feddf",
            "privacy=dpsgd",
            "privacy.reproducible_noise=true",
            "privacy.max_epsilon=null",
        ],
    ],
    ids=["fedmd", "feddf-dpsgd"],
)
@pytest.mark.slow
def test_a_resumed_run_ends_with_the_metrics_of_an_uninterrupted_one(
    tmp_path, method, small
) -> None:
    whole = _run(small, tmp_path, "whole", *method, "num_rounds=4", "checkpoint.every=0")
    _run(small, tmp_path, "parts", *method, "num_rounds=2", "checkpoint.every=2")
    cfg = resume_config(
        tmp_path / "parts", compose_config([*small, "num_rounds=4"]), ["num_rounds=4"]
    )
    resumed = run(cfg, tmp_path / "parts", resume=True)
    assert resumed["resumed_from_round"] == 2 and resumed["rounds_completed"] == 4
    assert _rows(tmp_path / "whole") == _rows(tmp_path / "parts")
    assert resumed["final"]["student_accuracy"] == whole["final"]["student_accuracy"]
    if "privacy=dpsgd" in method:
        assert resumed["privacy"]["epsilon"] == whole["privacy"]["epsilon"]


@pytest.mark.slow
def test_resume_after_the_process_was_killed(tmp_path, small, simulation_cli) -> None:
    """SIGKILL after the first checkpoint; resuming from the CLI ends where an uninterrupted
    run ends (rows written after the checkpoint are dropped and rerun)."""
    common = [*small, "strategy=fedmd", "num_rounds=4"]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.run", *common, "checkpoint.every=1",
         f"hydra.run.dir={killed}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if (killed / "checkpoint.pt").is_file():
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (killed / "summary.json").exists()
    resumed = simulation_cli(f"resume={killed}", "progress=false", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_round"] in (1, 2, 3)
    run(compose_config([*common, "checkpoint.every=0"]), tmp_path / "whole")
    assert _rows(killed) == _rows(tmp_path / "whole")


def test_bad_resumes_fail_before_running(tmp_path, small) -> None:
    _run(small, tmp_path, "done", "strategy=fedavg", "checkpoint.every=0")
    with pytest.raises(ConfigError, match=r"no checkpoint\.pt"):
        run(compose_config([*small, "strategy=fedavg"]), tmp_path / "done", resume=True)
    _run(small, tmp_path, "ckpt", "strategy=fedavg", "checkpoint.every=1")
    with pytest.raises(ConfigError, match="nothing left to run"):
        run(compose_config([*small, "strategy=fedavg"]), tmp_path / "ckpt", resume=True)
    composed = compose_config([*small, "strategy=fedmd"])
    with pytest.raises(ConfigError, match="'strategy=fedmd' would change what the run computes"):
        resume_config(tmp_path / "ckpt", composed, ["strategy=fedmd"])
    changed = compose_config([*small, "strategy=fedavg", "seed=5", "num_rounds=3"])
    with pytest.raises(ConfigError, match="seed differs"):
        run(changed, tmp_path / "ckpt", resume=True)
    with pytest.raises(ConfigError, match="no such run directory"):
        run(compose_config(small), tmp_path / "missing", resume=True)


def test_an_existing_run_directory_is_never_overwritten(tmp_path, small) -> None:
    _run(small, tmp_path, "first", "strategy=fedavg")
    before = {p.name: p.read_bytes() for p in (tmp_path / "first").iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="never overwritten"):
        _run(small, tmp_path, "first", "strategy=fedavg")
    after = {p.name: p.read_bytes() for p in (tmp_path / "first").iterdir() if p.is_file()}
    assert before == after


@pytest.mark.ray
def test_ray_survives_a_killed_actor_and_crashing_clients(tmp_path, small) -> None:
    """On Ray: a client process killed in round 2 costs that client in that round only (Ray
    restarts the actor; a message that met the restart is resent); crashing clients are
    counted every round with a reason that carries no traceback."""
    overrides = [
        *small,
        "backend=ray_cpu",
        "backend.total_cpus=2",
        "strategy=fedavg",
        "num_rounds=3",
        "faults.kill_actor_round=2",
        "faults.crash_fraction=0.25",
    ]
    summary = run(compose_config(overrides), tmp_path / "ray")
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    rows = _rows(tmp_path / "ray")[1:]
    assert [r["faults_injected"] for r in rows] == [
        {"crash": 1},
        {"crash": 1, "kill": 1},
        {"crash": 1},
    ]
    assert [r["clients_ok"] for r in rows] == [3, 2, 3]
    for row in rows:
        reasons = row["failure_reasons"]
        assert reasons.pop(CRASH_REASON) == 1
        assert all("Traceback" not in reason and "\n" not in reason for reason in reasons)
    assert sum(rows[1]["failure_reasons"].values()) == 1  # the killed client, nothing else
