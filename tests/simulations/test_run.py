"""The runner: a real Flower simulation on Ray through the CLI, and bad input caught before Ray."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.run.results import read_metrics
from simulations.run import run


@pytest.fixture
def small(two_round_overrides) -> list[str]:
    return two_round_overrides("strategy.distill_epochs=2")


@pytest.fixture
def cli(simulation_cli):
    """``python -m simulations.run`` with Hydra's short errors, 240 s unless told."""
    return functools.partial(simulation_cli, timeout=240, env={"HYDRA_FULL_ERROR": "0"})


@pytest.mark.ray
def test_cli_runs_a_ray_simulation_matching_the_in_process_engine(
    tmp_path, in_process_run, small, cli
):
    run_dir = tmp_path / "ray"
    proc = cli(*small, "backend.total_cpus=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global model, global test set" in proc.stdout  # the final table, on stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    ray_rows = read_metrics(run_dir)
    assert [r["round"] for r in ray_rows] == [0, 1, 2]
    assert all(r["clients_ok"] == 4 and r["clients_failed"] == 0 for r in ray_rows[1:])
    # Same config and seed on the in-process grid: the Ray engine must not change a number.
    in_process_run(small, tmp_path / "inproc")
    inproc_rows = read_metrics(tmp_path / "inproc")
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in ray_rows] == [
        {k: v for k, v in r.items() if k not in drop} for r in inproc_rows
    ]


@pytest.mark.slow
def test_unknown_group_option_is_rejected_with_the_choices(tmp_path, cli):
    run_dir = tmp_path / "never"
    proc = cli("dataset=nope", f"hydra.run.dir={run_dir}", timeout=120)
    assert proc.returncode != 0
    assert "nope" in proc.stderr and "digits" in proc.stderr  # names the allowed values
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["partition.alpha=0"], "partition.alpha"),
        (["partition.alpha=-1"], "partition.alpha"),
        (["num_clients=5000"], "num_clients"),
        (["data.proxy_fraction=0"], "proxy_fraction"),
        (["data.proxy_fraction=1.5"], "proxy_fraction"),
        (["num_rounds=0"], "num_rounds"),
        (["model.name=transformer", "student.name=transformer"], "model.name"),
        (["strategy._target_=strategies.nope.Nope"], "strategy"),
        (["distill.temperature=0"], "distill.temperature"),
        (["backend.name=spark"], "backend.name"),
    ],
)
def test_bad_input_fails_before_ray_and_leaves_no_run_dir(overrides, key, tmp_path):
    import ray

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)  # what Hydra creates before our code runs
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(cfg, run_dir)
    assert not ray.is_initialized()
    assert not run_dir.exists()


@pytest.mark.slow
def test_cli_config_error_is_one_clear_line_and_exit_code_2(tmp_path, cli):
    run_dir = tmp_path / "never"
    proc = cli("partition.alpha=0", f"hydra.run.dir={run_dir}", timeout=120)
    assert proc.returncode == 2
    assert "fedkd: invalid configuration: partition.alpha" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


@pytest.mark.slow
def test_inline_backend_applies_torch_threads_to_the_servers_own_training(tmp_path, monkeypatch):
    """``centralized`` has no client, so only the runner can set backend.torch_threads for
    its training on the inline backend; the training sees the configured count."""
    import torch

    import strategies.centralized as centralized

    seen: list[int] = []
    real = centralized.train_local

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(centralized, "train_local", recording)
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        cfg = compose_config(
            ["strategy=centralized", "backend=inline", f"backend.torch_threads={wanted}",
             "dataset=synthetic", "dataset.num_samples=200", "num_clients=2", "num_rounds=1",
             "client.epochs=1", "progress=false", "report.html=false", "report.export=false"]
        )  # fmt: skip
        run(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {wanted}


@pytest.mark.slow
def test_inline_backend_cli_gives_the_same_numbers_without_ray(
    tmp_path, in_process_run, small, cli
):
    run_dir = tmp_path / "inline"
    proc = cli(*small, "backend=inline", f"hydra.run.dir={run_dir}", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray" not in proc.stderr  # no Ray start-up messages
    in_process_run(small, tmp_path / "ref")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(run_dir)) == strip(read_metrics(tmp_path / "ref"))


@pytest.mark.slow
def test_the_installed_fedkd_run_script_finds_its_configs_from_any_directory(tmp_path):
    """The console script imports ``simulations.run`` as a module (not ``__main__``), where
    Hydra once resolved ``../configs`` to a Python package ``configs`` and found nothing."""
    (entry_point,) = entry_points(group="console_scripts", name="fedkd-run")
    assert entry_point.value == "simulations.run:main"
    script = Path(sys.executable).parent / "fedkd-run"
    # the generated script, else the same thing it does: load the entry point and call it
    command = (
        [str(script)]
        if script.is_file()
        else [sys.executable, "-c", "import sys; from importlib.metadata import entry_points; "
              "(e,) = entry_points(group='console_scripts', name='fedkd-run'); "
              "sys.exit(e.load()())"]
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("FEDKD_CONFIG_DIR", "PYTHONPATH")}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [*command, "backend=inline", "num_rounds=1", "dataset=synthetic",
         "dataset.num_samples=300", "num_clients=2", "client.epochs=1", "progress=false",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,  # not the checkout
        env={**env, "FLWR_TELEMETRY_ENABLED": "0"},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
