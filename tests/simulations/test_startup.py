"""Start-up near the import floor (issue 20): what a run imports, and the timing it reports.

The heavy packages below load only where they are used: Ray for the Ray backends,
``datasets``/``flwr_datasets`` for ``dataset=hf``, scikit-learn for ``breast_cancer``,
matplotlib for the plots after the last round, Opacus for DP-SGD, ONNX for the export. No
test here times anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Packages that neither importing the runner nor building the default run's data may load.
LAZY = (
    "datasets",
    "flwr_datasets",
    "matplotlib",
    "seaborn",
    "pandas",
    "pyarrow",
    "scipy",
    "sklearn",
    "opacus",
    "onnx",
    "ray",
    "dp_accounting",
    "tensorboard",
    "mlflow",
    "wandb",
)


def _loaded_after(code: str) -> list[str]:
    """Which of :data:`LAZY` a fresh interpreter has loaded after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {LAZY!r} if m in sys.modules]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.slow
def test_importing_the_runner_loads_none_of_the_heavy_packages() -> None:
    assert _loaded_after("import simulations.run") == []


@pytest.mark.slow
@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological", "feature_skew"])
def test_the_digits_federation_is_built_without_them(partition: str) -> None:
    """Data and partitions (what a client builds too): no scikit-learn, no Hugging Face."""
    feature = ", 'feature': 20" if partition == "feature_skew" else ""
    code = (
        "from fedkd.data import build_federated_data\n"
        f"build_federated_data({{'name': 'digits'}}, {{'name': {partition!r}{feature}}}, "
        "num_clients=5, seed=0)"
    )
    assert _loaded_after(code) == []


@pytest.mark.slow
def test_an_inline_run_reports_its_start_up_rounds_and_outputs(tmp_path, simulation_cli) -> None:
    run_dir = tmp_path / "run"
    started = time.perf_counter()
    proc = simulation_cli(
        "backend=inline", "strategy=fedavg", "num_rounds=1", "num_clients=2",
        "client.epochs=1", "dataset=synthetic", "dataset.num_samples=300",
        f"hydra.run.dir={run_dir}", timeout=300,
    )  # fmt: skip
    command_seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    startup, rounds, outputs = (
        summary[key] for key in ("startup_seconds", "rounds_seconds", "outputs_seconds")
    )
    assert startup > 0 and rounds >= 0 and outputs >= 0
    # counted from the process's start: within the command as measured from outside
    assert startup + rounds + outputs <= command_seconds
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == pytest.approx(sum(r.get("seconds", 0.0) for r in rows), abs=1e-6)
    # the table (progress on by default; on stdout) shows the whole command and its parts
    for label in ("wall time (whole command)", "start-up", "rounds", "outputs"):
        assert label in proc.stdout
