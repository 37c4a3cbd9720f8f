"""``--config-name tune``: the Optuna sweep's config, its objective, and a tiny real study."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep
from hydra.types import RunMode
from omegaconf import OmegaConf

from fedkd.config import config_dir
from fedkd.distill.losses import SOFT_LOSSES, build_loss
from simulations.run import validation_objective

REPO = Path(__file__).resolve().parents[2]
needs_optuna = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="needs the `tune` extra (hydra-optuna-sweeper)",
)
SEARCHED = ("distill.temperature", "distill.alpha", "strategy.distill_epochs", "distill.soft_loss")
TINY = [
    "num_rounds=1",
    "num_clients=3",
    "dataset=synthetic",
    "dataset.num_samples=300",
    "client.epochs=1",
]


def _compose_tune(overrides: list[str] | None = None) -> dict:
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="tune", overrides=overrides or [], return_hydra_config=True)
    return OmegaConf.to_container(cfg, resolve=False)  # hydra.* interpolations need a run


def _search_space(cfg: dict) -> dict:
    params = cfg["hydra"]["sweeper"]["params"]
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return {o.key_or_group: o.value() for o in parsed}


def _sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "HYDRA_FULL_ERROR": "0"}
    command = ["-m", "simulations.run", "--config-name", "tune", *TINY, *args]
    return subprocess.run(
        [sys.executable, *command, f"hydra.sweep.dir={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _trials(sweep_dir: Path) -> list[tuple[list[str], dict]]:
    """Each finished trial's overrides and summary.json, in job order."""
    runs = sorted(p for p in sweep_dir.iterdir() if (p / "summary.json").is_file())
    return [
        (
            yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()),
            json.loads((run / "summary.json").read_text()),
        )
        for run in runs
    ]


@needs_optuna
def test_tune_config_is_an_optuna_study_maximizing_over_four_distillation_settings() -> None:
    cfg = _compose_tune()
    sweeper = cfg["hydra"]["sweeper"]
    assert sweeper["_target_"].endswith("OptunaSweeper")
    assert sweeper["direction"] == "maximize"
    assert sweeper["sampler"]["_target_"] == "optuna.samplers.TPESampler"
    assert isinstance(sweeper["sampler"]["seed"], int)
    assert sweeper["n_jobs"] == 1 and sweeper["n_trials"] >= 10
    assert sweeper["max_failure_rate"] == 1.0  # a failed trial does not end the study
    assert cfg["hydra"]["mode"] == RunMode.MULTIRUN  # no `-m` needed
    assert cfg["hydra"]["sweep"]["dir"].startswith("multirun/tune/")
    assert cfg["backend"]["name"] == "inline"
    assert cfg["data"]["proxy_labeled"] is True  # otherwise distill.alpha is ignored

    space = _search_space(cfg)
    assert set(space) == set(SEARCHED)
    temperature, alpha = space["distill.temperature"], space["distill.alpha"]
    assert isinstance(temperature, IntervalSweep) and (temperature.start, temperature.end) == (
        0.5,
        8.0,
    )
    assert "log" in temperature.tags
    assert isinstance(alpha, IntervalSweep) and (alpha.start, alpha.end) == (0.0, 1.0)
    epochs, soft_loss = space["strategy.distill_epochs"], space["distill.soft_loss"]
    assert isinstance(epochs, ChoiceSweep) and all(
        isinstance(e, int) and e > 0 for e in epochs.list
    )
    assert isinstance(soft_loss, ChoiceSweep) and set(soft_loss.list) == set(SOFT_LOSSES)


@needs_optuna
def test_every_point_of_the_search_space_builds_a_loss() -> None:
    cfg = _compose_tune()
    space = _search_space(cfg)
    temperature, alpha = space["distill.temperature"], space["distill.alpha"]
    for soft_loss in space["distill.soft_loss"].list:
        for t in (temperature.start, temperature.end):
            for a in (alpha.start, alpha.end):
                options = {**cfg["distill"], "temperature": t, "alpha": a, "soft_loss": soft_loss}
                loss = build_loss(options.pop("name"), **options)
                assert (loss.temperature, loss.alpha, loss.soft_loss) == (t, a, soft_loss)


def test_validation_objective_reads_validation_metrics_never_the_test_set() -> None:
    final = {"student_accuracy": 0.9, "student_validation_accuracy": 0.7, "client_accuracy": 0.6}
    assert validation_objective({"final": final}) == 0.7
    # no student (local_only, fedproto): the clients on their local test splits
    no_student = {"student_accuracy": None, "student_validation_accuracy": None}
    assert validation_objective({"final": {**no_student, "client_accuracy": 0.6}}) == 0.6
    local_only = {**no_student, "personalized_accuracy_mean": 0.5, "client_accuracy_mean": 0.8}
    assert validation_objective({"final": local_only}) == 0.5
    # only test-set numbers: nothing to optimize
    test_only = {"student_accuracy": 0.9, "client_accuracy_mean": 0.8, "ensemble_accuracy": 0.95}
    assert validation_objective({"final": test_only}) is None
    assert validation_objective({"status": "completed", "final": {}}) is None
    # the new names (fedkd/run/names.py) alone, as a run may write them
    new = {"global_on_global_test_accuracy": 0.9, "global_on_local_test_accuracy": 0.7}
    assert validation_objective({"final": new}) == 0.7
    fedmd = {
        "local_on_global_test_accuracy_mean": 0.9,
        "local_on_local_test_accuracy_evaluated": 0.4,
    }
    assert validation_objective({"final": fedmd}) == 0.4


@needs_optuna
@pytest.mark.slow
def test_a_tiny_study_writes_the_best_validation_trial(tmp_path: Path) -> None:
    proc = _sweep(tmp_path, "hydra.sweeper.n_trials=3", "strategy.distill_epochs=choice(1,2)")
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    best_params, best_value = results["best_params"], results["best_value"]
    assert set(best_params) == set(SEARCHED)
    assert 0.5 <= best_params["distill.temperature"] <= 8.0
    assert 0.0 <= best_params["distill.alpha"] <= 1.0
    assert best_params["strategy.distill_epochs"] in (1, 2)
    assert best_params["distill.soft_loss"] in SOFT_LOSSES

    trials = _trials(tmp_path)
    assert len(trials) == 3
    assert all(summary["status"] == "completed" for _, summary in trials)
    validation = [summary["final"]["student_validation_accuracy"] for _, summary in trials]
    assert best_value == max(validation)
    # The best trial's run is the one with the best params, and its objective is the
    # validation accuracy, not the (different) test accuracy of the same student.
    best_runs = [
        summary
        for overrides, summary in trials
        if all(f"{k}={v}" in overrides for k, v in best_params.items())
    ]
    assert len(best_runs) == 1
    final = best_runs[0]["final"]
    assert final["student_validation_accuracy"] == best_value
    assert not math.isclose(final["student_accuracy"], best_value)


@needs_optuna
@pytest.mark.slow
def test_a_failed_trial_is_marked_failed_and_the_study_goes_on(tmp_path: Path) -> None:
    # "nope" is not a soft loss: those trials raise a ConfigError before any training.
    proc = _sweep(
        tmp_path,
        "hydra.sweeper.n_trials=4",
        "strategy.distill_epochs=1",
        "distill.soft_loss=choice(kl,nope)",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "Failed experiment: distill.soft_loss must be one of" in output

    trials = _trials(tmp_path)
    launched = output.count("Launching 1 jobs locally")
    assert launched == 4 and 1 <= len(trials) < 4  # the seeded sampler tries both values
    assert all("distill.soft_loss=kl" in overrides for overrides, _ in trials)
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["best_params"]["distill.soft_loss"] == "kl"
    assert results["best_value"] == max(
        summary["final"]["student_validation_accuracy"] for _, summary in trials
    )
