"""``flwr run .`` runs the same ServerApp/ClientApp as a local Flower simulation, and
``python -m simulations.flwr_local`` runs it on a SuperLink it stops (issue 21).

The end-to-end tests run the commands as a user does and read what a user sees: the
results table at the end, no third-party warning noise, the run directory named as a
normal run's with ``run.log`` and ``checkpoint.pt`` in it, and no process left running
once the SuperLink is stopped (by the pid the ServerApp prints, or by the launcher).
Processes are found by a marker in their environment (conftest's ``leftover_processes``),
never by name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from fedkd.apps.flwr_run import (
    LAUNCHER_VAR,
    default_run_dir,
    quiet_flwr_run_warnings,
    superlink_hint,
)
from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.run.results import read_metrics
from simulations.flwr_local import HIDDEN_LINES, split_arguments

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MARKER_VAR = "FEDKD_TEST_MARKER"  # what conftest's leftover_processes looks for
OVERRIDES = [
    "dataset=synthetic",
    "dataset.num_samples=300",
    "num_clients=3",
    "num_rounds=2",
    "client.epochs=1",
]
# What a user must not see: Python warnings from Ray or torch (the filters are fedkd's).
NOISE = ("FutureWarning", "DeprecationWarning", "torch.jit", "warnings.warn(")

needs_flwr = pytest.mark.skipif(
    shutil.which("flwr", path=str(BIN)) is None,
    reason="flwr CLI not installed beside this interpreter",
)
needs_proc = pytest.mark.skipif(
    not Path("/proc/self/environ").is_file(), reason="finds processes through /proc (Linux)"
)


def _free_ports() -> tuple[int, int]:
    """Two distinct ports free on 127.0.0.1 (both held while chosen)."""
    with socket.socket() as first, socket.socket() as second:
        first.bind(("127.0.0.1", 0))
        second.bind(("127.0.0.1", 0))
        return int(first.getsockname()[1]), int(second.getsockname()[1])


def _env(tmp_path: Path, marker: str) -> dict[str, str]:
    """A private FLWR_HOME and local SuperLink ports (a user's own local SuperLink on the
    default 39091 is never reused), the marker, and the venv's tools on PATH."""
    http_port, control_port = _free_ports()
    return {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),  # flwr starts tools by name
        MARKER_VAR: marker,
    }


def _unwrapped(output: str) -> str:
    """``output`` with every run of whitespace as one space: rich wraps long lines at the
    width of a console that is not a terminal."""
    return " ".join(output.split())


def _only_run_dir(cwd: Path) -> Path:
    (run_dir,) = (cwd / "outputs").glob("*/*")
    return run_dir


def _assert_a_normal_runs_outputs(run_dir: Path, rounds: int) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == rounds
    assert (run_dir / "checkpoint.pt").is_file()  # checkpoint.every: 5 and after the last
    log = (run_dir / "run.log").read_text()  # the server's lines, as a normal run's run.log
    assert re.search(r"^\[[\d :,-]+\]\[fedkd\.[\w.]+\]\[INFO\] - ", log, re.M), log[-2000:]
    return summary


# --------------------------------------------------------------------------- fast


def test_the_default_run_dir_is_hydras_run_dir(monkeypatch):
    """default_run_dir, against the pattern of configs/config.yaml's hydra.run.dir filled
    in by hand; with a suffix for the deployment."""
    pattern = yaml.safe_load((REPO / "configs" / "config.yaml").read_text())["hydra"]["run"]
    now = datetime(2026, 3, 4, 5, 6, 7)
    expected = (
        pattern["dir"]
        .replace("${now:%Y-%m-%d}", "2026-03-04")
        .replace("${now:%H-%M-%S}", "05-06-07")
        .replace("${hydra.runtime.choices.strategy}", "fedavg")
        .replace("${hydra.runtime.choices.dataset}", "synthetic")
    )
    cfg = compose_config(["strategy=fedavg", "dataset=synthetic"])
    assert expected == "outputs/2026-03-04/05-06-07-fedavg-synthetic"  # the pattern's shape
    assert str(default_run_dir(cfg, now=now)) == expected
    assert default_run_dir(cfg, now=now, suffix="-deploy").name == f"{Path(expected).name}-deploy"


def test_launcher_options_are_taken_out_and_checked(tmp_path):
    overrides, options = split_arguments(
        ["strategy=fedavg", f"flwr.out_dir={tmp_path}", "flwr.timeout=90"]
    )
    assert overrides == ["strategy=fedavg"]
    assert (options.out_dir, options.timeout_seconds) == (tmp_path, 90.0)
    assert split_arguments([])[1].timeout_seconds is None
    with pytest.raises(ConfigError, match=r"flwr\.bogus"):
        split_arguments(["flwr.bogus=1"])
    with pytest.raises(ConfigError, match=r"flwr\.timeout must be > 0"):
        split_arguments(["flwr.timeout=0"])


def test_the_noise_filters_are_narrow():
    """Ray's accelerator notice, torch.jit's and the legacy ONNX export's deprecations are
    silenced; another DeprecationWarning, even from the same module, is not."""
    cases = [
        ("Tip: In future versions of Ray, ... RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0",
         FutureWarning, "ray._private.worker", False),
        ("`torch.jit.trace` is deprecated. Please switch to `torch.compile`",
         DeprecationWarning, "torch.jit._trace", False),
        ("You are using the legacy TorchScript-based ONNX export. Starting in PyTorch 2.9",
         DeprecationWarning, "fedkd.run.export", False),
        ("The feature will be removed. Please remove usage of this function",
         DeprecationWarning, "torch.onnx._internal.torchscript_exporter.utils", False),
        ("The feature will be removed. Please remove usage of this function",
         DeprecationWarning, "fedkd.run.export", True),  # the module is part of the filter
        ("`foo` is deprecated", DeprecationWarning, "torch.jit._trace", True),
        ("Tip: something else", FutureWarning, "ray._private.worker", True),
    ]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # as Flower's "once" in flwr-simulation, or louder
        quiet_flwr_run_warnings()
        logging.captureWarnings(False)  # keep them in `caught`, not in the logging system
        for message, category, module, _ in cases:
            warnings.warn_explicit(message, category, f"{module}.py", 1, module=module)
    shown = [str(w.message) for w in caught]
    assert shown == [message for message, _, _, kept in cases if kept]


@pytest.mark.slow  # starts processes
@needs_proc
def test_the_hint_names_the_simulation_superlink_above_the_serverapp(tmp_path):
    """simulation_superlink walks up from the ServerApp's process: a process running
    ``flower-superlink --simulation`` two levels up is found, by its pid; none is found
    without ``--simulation`` or under a fedkd launcher."""
    fake = tmp_path / "flower-superlink"  # stands for the real one; its child the superexec
    fake.write_text(
        "import subprocess, sys\n"
        "child = 'from fedkd.apps.flwr_run import superlink_hint as h; print(h())'\n"
        "inner = [sys.executable, '-c', child]\n"
        "superexec = [sys.executable, '-c', f'import subprocess; subprocess.run({inner!r})']\n"
        "import os; print(os.getpid(), flush=True)\n"
        "subprocess.run(superexec)\n"
    )

    def hint(*args: str, env: dict[str, str] | None = None) -> tuple[str, str]:
        out = subprocess.run(
            [sys.executable, str(fake), *args],
            capture_output=True, text=True, check=True, timeout=60,
            env={**os.environ, **(env or {})},
        ).stdout.splitlines()  # fmt: skip
        return out[0], out[1]

    pid, text = hint("--insecure", "--simulation")
    assert f"Flower's local SuperLink (pid {pid})" in text and f"`kill {pid}`" in text
    assert hint("--insecure")[1] == "None"  # a deployment's SuperLink: not Flower's local one
    assert hint("--simulation", env={LAUNCHER_VAR: "simulations.flwr_local"})[1] == "None"
    assert superlink_hint() is None  # pytest runs under no SuperLink


# ------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.ray
@needs_flwr
@needs_proc
def test_flwr_run_prints_the_results_and_the_pid_that_stops_everything(
    tmp_path, in_process_run, leftover_processes
):
    """``flwr run`` as the README has it, without out-dir: the results table at the end, no
    warning noise, a run directory named as a normal run's (under the SuperLink's cwd) with
    run.log and checkpoint.pt, and the pid of the SuperLink Flower leaves running, which
    stops everything when killed."""
    marker = uuid.uuid4().hex
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    try:
        proc = subprocess.run(
            [str(BIN / "flwr"), "run", str(REPO),
             "--federation-config", "num-supernodes=3",
             "--run-config", f'overrides="{" ".join(OVERRIDES)}"', "--stream"],
            cwd=cwd, env=_env(tmp_path, marker), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        # `flwr run --stream` exits 0 even when the ServerApp failed: check the results too.
        assert proc.returncode == 0, output[-3000:]
        run_dir = _only_run_dir(cwd)
        assert re.fullmatch(r"\d\d-\d\d-\d\d-feddf-synthetic", run_dir.name), run_dir
        _assert_a_normal_runs_outputs(run_dir, rounds=2)
        assert f"results in {run_dir}" in _unwrapped(output), output[-3000:]  # the table's end
        assert not [word for word in NOISE if word in output], output
        hint = re.search(r"Flower's local SuperLink \(pid (\d+)\).*`kill (\d+)`", output)
        assert hint is not None and hint.group(1) == hint.group(2), output[-3000:]
        superlink = int(hint.group(1))
        cmdline = Path(f"/proc/{superlink}/cmdline").read_bytes()
        assert b"flower-superlink" in cmdline and b"--simulation" in cmdline
        assert f"{MARKER_VAR}={marker}".encode() in Path(f"/proc/{superlink}/environ").read_bytes()
        os.kill(superlink, signal.SIGTERM)  # the documented way to stop it
    finally:
        left = leftover_processes(marker, 30.0)  # the superexec exits within ~10 s
    assert left == [], f"left running (killed now): {left}"
    in_process_run(OVERRIDES, tmp_path / "inproc")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(run_dir)) == strip(read_metrics(tmp_path / "inproc"))


def _flwr_local(
    tmp_path: Path, marker: str, *args: str, tmp_dir: Path | None = None
) -> subprocess.Popen[str]:
    env = _env(tmp_path, marker)
    if tmp_dir is not None:  # its temporary FLWR_HOME goes there (Ray's session files too)
        env["TMPDIR"] = str(tmp_dir)
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.flwr_local", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.ray
@needs_flwr
@needs_proc
def test_flwr_local_runs_the_app_and_leaves_nothing_running(tmp_path, leftover_processes):
    """The launcher: the results table at the end, no noise (Flower's wrong "default 2"
    line only in logs/flwr-run.log), the run directory it was given with the logs, run.log
    and checkpoint.pt, and no process or temporary directory left once it exits."""
    marker = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    # short: Ray's socket paths under TMPDIR must fit in 107 bytes
    tmp_dir = Path(tempfile.mkdtemp(prefix="fk-"))
    proc = _flwr_local(tmp_path, marker, *OVERRIDES, f"flwr.out_dir={run_dir}", tmp_dir=tmp_dir)
    try:
        output, _ = proc.communicate(timeout=400)
        homes = list(tmp_dir.glob("fedkd-flwr-*"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = leftover_processes(marker, 5.0)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    assert proc.returncode == 0, output[-3000:]
    assert left == [], f"left running (killed now): {left}"
    summary = _assert_a_normal_runs_outputs(run_dir, rounds=2)
    assert summary["num_clients"] == 3
    assert _unwrapped(output).count(f"results in {run_dir}") == 1, output[-3000:]  # once
    stopped = re.search(r"stopped the SuperLink \(pid (\d+)\)", output)
    assert stopped is not None, output[-3000:]
    assert not [word for word in (*NOISE, *HIDDEN_LINES[:1]) if word in output], output
    assert "Flower's local SuperLink" not in output  # the launcher stops its own
    assert "(3 simulated SuperNodes)" in output
    logs = run_dir / "logs"
    assert HIDDEN_LINES[0] in (logs / "flwr-run.log").read_text()  # kept, not shown
    assert (logs / "superlink.log").stat().st_size > 0
    for path in re.findall(r"log (/\S+\.log)", output):  # every log path it printed exists
        assert Path(path).is_file(), path
    assert homes == []  # its FLWR_HOME is gone


@pytest.mark.slow
@pytest.mark.ray
@needs_flwr
@needs_proc
def test_ctrl_c_stops_flwr_local_and_everything_it_started(tmp_path, leftover_processes):
    """SIGINT once round 1 is in metrics.jsonl: exit 130, summary.json says interrupted with
    the finished rounds, and nothing the launcher started (SuperLink, superexec,
    flwr-simulation, Ray) is left."""
    marker = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    proc = _flwr_local(tmp_path, marker, *OVERRIDES, "num_rounds=30", f"flwr.out_dir={run_dir}")
    try:
        deadline = time.monotonic() + 300
        metrics = run_dir / "metrics.jsonl"
        while proc.poll() is None and not (
            metrics.is_file() and len(metrics.read_text().splitlines()) >= 2
        ):
            assert time.monotonic() < deadline, "round 1 never finished"
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = leftover_processes(marker, 5.0)
    assert proc.returncode == 130, output[-3000:]
    assert left == [], f"left running (killed now): {left}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    rounds = [row["round"] for row in read_metrics(run_dir)]
    assert rounds == list(range(len(rounds))) and summary["rounds_completed"] == rounds[-1] < 30
