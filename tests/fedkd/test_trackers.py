"""Experiment trackers (``tracker=...``): the config, and each tracker against its real
library, read back through that library's own reader (MLflow's client, W&B's transaction-log
inspector, TensorBoard's event accumulator)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import fedkd.run.trackers
from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.run.report import ReportSpec
from fedkd.run.results import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunWriter,
    read_metrics,
    read_summary,
)
from fedkd.run.tracker_backends import MlflowTracker, WandbTracker
from fedkd.run.trackers import (
    TENSORBOARD_DIR,
    MlflowOptions,
    Trackers,
    TrackerSpec,
    WandbOptions,
    flatten,
    round_metrics,
    summary_metrics,
)

CONFIG = {
    "strategy": {"name": "feddf", "distill_lr": 0.01},
    "num_rounds": 3,
    "report": {"sparsities": [0.5, 0.8]},
    "resume": None,
}


def _row(step: int, accuracy: float) -> dict[str, Any]:
    return {
        "round": step,
        "student_accuracy": accuracy,
        "uplink_bytes": 1000 * step,
        "client_accuracies": {"0": accuracy / 2, "1": accuracy},
        "distill_curve": [1.0, 0.5],  # a list: left out
        "failure_reasons": {"client error": 1},  # counts of texts: left out
        "skipped": "too few replies",  # a text: left out
        "ensemble_accuracy": None,
        "stopped": False,  # a boolean: left out
    }


ROWS = [_row(0, 0.1), _row(1, 0.4), _row(2, 0.3), _row(3, 0.6)]


def _summary(status: str = "completed", **changes: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "status": status,
        "strategy": "feddf",
        "dataset": "digits",
        "partition": "iid",
        "model": "mlp",
        "student": "mlp",
        "num_clients": 2,
        "num_rounds": 3,
        "rounds_completed": 3,
        "seed": 0,
        "final": ROWS[-1],
        "best": {"student_accuracy": {"value": 0.6, "round": 3}},
        "communication": {"uplink_bytes": 6000, "downlink_bytes": 3000},
        "privacy": {"mechanism": "logit_dp", "epsilon": 2.5, "delta": 1e-5},
        "wall_seconds": 1.5,
        "parameters": 10,
        "size_bytes": 40,
    }
    summary.update(changes)
    return summary


def _write_run(run_dir: Path, spec: TrackerSpec, rows: list[dict[str, Any]] = ROWS) -> RunWriter:
    writer = RunWriter(run_dir, report=ReportSpec(html=True), trackers=spec)
    writer.start(CONFIG)
    for row in rows:
        writer.append(row)
    writer.finish(_summary())
    return writer


# ---------------------------------------------------------------------------- what is logged
def test_rows_and_summaries_become_flat_numbers() -> None:
    assert round_metrics(ROWS[1]) == {
        "student_accuracy": 0.4,
        "uplink_bytes": 1000,
        "client_accuracies/0": 0.2,
        "client_accuracies/1": 0.4,
    }
    assert summary_metrics(_summary()) == {
        **{f"final/{k}": v for k, v in round_metrics(ROWS[-1]).items()},
        "best/student_accuracy": 0.6,
        "communication/uplink_bytes": 6000,
        "communication/downlink_bytes": 3000,
        "privacy/epsilon": 2.5,
        "rounds_completed": 3,
        "wall_seconds": 1.5,
    }
    assert flatten(CONFIG) == {
        "strategy.name": "feddf",
        "strategy.distill_lr": 0.01,
        "num_rounds": 3,
        "report.sparsities": [0.5, 0.8],
        "resume": None,
    }


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ([], ()),
        (["tracker=mlflow"], ("mlflow",)),
        (["tracker=[mlflow,tensorboard]"], ("mlflow", "tensorboard")),
        (["report.tensorboard=true"], ("tensorboard",)),  # the alias, kept for one release
        (["tracker=[tensorboard]", "report.tensorboard=true"], ("tensorboard",)),
        (["tracker=wandb", "report.tensorboard=true"], ("wandb", "tensorboard")),
    ],
)
def test_tracker_key_names_the_trackers(overrides: list[str], names: tuple[str, ...]) -> None:
    cfg = compose_config(overrides)
    spec = TrackerSpec.from_config(
        cfg["tracker"], cfg["trackers"], report_tensorboard=cfg["report"]["tensorboard"]
    )
    assert spec.names == names
    assert spec.mlflow == MlflowOptions(tracking_uri=None, experiment="fedkd")
    assert spec.wandb == WandbOptions(project="fedkd", mode="offline", dir=None, entity=None)


@pytest.mark.parametrize(
    ("tracker", "options", "message"),
    [
        ("nope", None, "tracker: unknown tracker 'nope'; choose from ['tensorboard', 'mlflow'"),
        (["mlflow", "mlflow"], None, "tracker lists 'mlflow' twice"),
        (5, None, "tracker must be null, a name or a list of names"),
        ([["mlflow"]], None, "tracker must be null, a name or a list of names"),
        ("mlflow", [], "trackers must be a mapping"),
        ("mlflow", {"comet": {}}, "trackers: unknown keys ['comet']"),
        ("mlflow", {"mlflow": {"uri": "x"}}, "trackers.mlflow: unknown keys ['uri']"),
        ("mlflow", {"mlflow": {"experiment": 1}}, "trackers.mlflow.experiment must be a string"),
        ("mlflow", {"mlflow": {"experiment": " "}}, "trackers.mlflow.experiment must not be"),
        ("wandb", {"wandb": {"mode": "sync"}}, "trackers.wandb.mode must be one of ['offline'"),
        ("wandb", {"wandb": {"dir": 3}}, "trackers.wandb.dir must be a string"),
    ],
)
def test_bad_tracker_config_is_a_config_error(tracker: Any, options: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrackerSpec.from_config(tracker, options)


@pytest.mark.parametrize(
    ("name", "missing", "install"),
    [
        ("mlflow", "mlflow", "pip install mlflow-skinny sqlalchemy alembic"),
        ("mlflow", "alembic", "pip install mlflow-skinny sqlalchemy alembic"),
        ("wandb", "wandb", "pip install wandb"),
        ("tensorboard", "tensorboard", "pip install tensorboard"),
    ],
)
def test_a_tracker_without_its_package_says_how_to_install(
    monkeypatch, name: str, missing: str, install: str
) -> None:
    monkeypatch.setattr(fedkd.run.trackers, "module_available", lambda module: module != missing)
    with pytest.raises(ConfigError) as caught:
        TrackerSpec.from_config(name)
    message = str(caught.value)
    assert f"tracker={name} needs {missing}" in message and install in message
    assert "fedkd[trackers]" in message and "\n" not in message


def test_mlflow_on_a_server_needs_no_database_packages(monkeypatch) -> None:
    monkeypatch.setattr(fedkd.run.trackers, "module_available", lambda module: module == "mlflow")
    spec = TrackerSpec.from_config("mlflow", {"mlflow": {"tracking_uri": "http://localhost:5000"}})
    assert spec.names == ("mlflow",)


def test_wandb_online_without_a_key_is_refused_before_the_run(monkeypatch, tmp_path) -> None:
    for variable in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with pytest.raises(ConfigError, match=re.escape("run `wandb login` or set WANDB_API_KEY")):
        TrackerSpec.from_config("wandb", {"wandb": {"mode": "online"}})
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    assert TrackerSpec.from_config("wandb", {"wandb": {"mode": "online"}}).wandb.mode == "online"


def test_tracker_errors_surface_in_prepare_run(small_plan) -> None:
    assert small_plan("tracker=[mlflow,tensorboard]").options.trackers.names == (
        "mlflow",
        "tensorboard",
    )
    assert small_plan("report.tensorboard=true").options.trackers.names == ("tensorboard",)
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        small_plan("tracker=comet")


# ---------------------------------------------------------------------------- MLflow
@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> str:
    """One SQLite store for this module's MLflow tests (creating one takes a second)."""
    pytest.importorskip("mlflow")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def _mlflow_runs(uri: str, run_dir: Path, experiment: str = "fedkd") -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    return [r for r in runs if r.data.tags.get("fedkd.run_dir") == str(run_dir.resolve())]


@pytest.mark.slow  # MLflow's import and a new store take seconds
def test_mlflow_run_holds_params_rounds_summary_and_files(tmp_path, mlflow_store) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run-a"
    _write_run(run_dir, TrackerSpec(("mlflow",), mlflow=MlflowOptions(tracking_uri=mlflow_store)))
    (run,) = _mlflow_runs(mlflow_store, run_dir)
    client = MlflowClient(tracking_uri=mlflow_store)
    assert run.info.run_name == "run-a" and run.info.status == "FINISHED"
    assert run.data.tags["fedkd.status"] == "completed"
    assert run.data.params == {
        "strategy.name": "feddf",
        "strategy.distill_lr": "0.01",
        "num_rounds": "3",
        "report.sparsities": "[0.5, 0.8]",
        "resume": "null",
    }
    history = client.get_metric_history(run.info.run_id, "student_accuracy")
    assert [(m.step, m.value) for m in history] == [(0, 0.1), (1, 0.4), (2, 0.3), (3, 0.6)]
    shares = client.get_metric_history(run.info.run_id, "client_accuracies/0")
    assert [(m.step, m.value) for m in shares] == [(0, 0.05), (1, 0.2), (2, 0.15), (3, 0.3)]
    assert not {"distill_curve", "skipped", "stopped", "failure_reasons/client error"} & set(
        run.data.metrics
    )
    metrics = run.data.metrics
    assert metrics["final/student_accuracy"] == 0.6 and metrics["best/student_accuracy"] == 0.6
    assert metrics["communication/uplink_bytes"] == 6000 and metrics["privacy/epsilon"] == 2.5
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, "report.html", "accuracy.png"} <= artifacts
    copy = Path(client.download_artifacts(run.info.run_id, SUMMARY_FILE, str(tmp_path)))
    assert json.loads(copy.read_text()) == read_summary(run_dir)


@pytest.mark.slow
def test_mlflow_default_store_is_mlflow_db_in_the_working_directory(tmp_path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri_before = mlflow.get_tracking_uri()
    trackers = Trackers(TrackerSpec(("mlflow",)))
    trackers.start(CONFIG, Path("run"))  # relative, as hydra.run.dir may be
    trackers.log_round(ROWS[0])
    trackers.finish(_summary(), files=[])
    assert (tmp_path / "mlflow.db").is_file()
    (run,) = _mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "run")
    assert run.data.metrics["student_accuracy"] == 0.1
    assert mlflow.get_tracking_uri() == uri_before  # no global tracking URI was set


@pytest.mark.slow
def test_each_run_of_a_sweep_gets_its_own_mlflow_run_and_store(tmp_path) -> None:
    pytest.importorskip("mlflow")
    import mlflow

    uri_before = mlflow.get_tracking_uri()
    for job in ("0", "1"):
        uri = f"sqlite:///{tmp_path}/store-{job}/mlflow.db"
        spec = TrackerSpec(("mlflow",), mlflow=MlflowOptions(uri, experiment=f"sweep-{job}"))
        _write_run(tmp_path / f"job-{job}", spec, rows=ROWS[:2])
    for job, other in (("0", "1"), ("1", "0")):
        uri = f"sqlite:///{tmp_path}/store-{job}/mlflow.db"
        assert len(_mlflow_runs(uri, tmp_path / f"job-{job}", f"sweep-{job}")) == 1
        assert _mlflow_runs(uri, tmp_path / f"job-{other}", f"sweep-{job}") == []
    assert mlflow.get_tracking_uri() == uri_before
    # the store's artifacts sit beside its database file
    assert (tmp_path / "store-0" / "mlruns").is_dir()


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run(tmp_path, mlflow_store) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run-r"
    spec = TrackerSpec(("mlflow",), mlflow=MlflowOptions(tracking_uri=mlflow_store))
    first = RunWriter(run_dir, trackers=spec)
    first.start(CONFIG)
    for row in ROWS:
        first.append(row)
    first.trackers.close()  # the process died after round 3, checkpointed at round 2
    (crashed,) = _mlflow_runs(mlflow_store, run_dir)
    assert crashed.info.status == "FAILED"
    again = RunWriter(run_dir, report=ReportSpec(html=False), trackers=spec)
    again.resume({**CONFIG, "num_rounds": 4}, last_round=2)
    for row in (_row(3, 0.7), _row(4, 0.8)):
        again.append(row)
    again.finish(_summary())
    (run,) = _mlflow_runs(mlflow_store, run_dir)
    assert run.info.run_id == crashed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["fedkd.resumed_from_round"] == "2"
    assert run.data.params["num_rounds"] == "3"  # MLflow params never change; config.yaml has 4
    history = MlflowClient(tracking_uri=mlflow_store).get_metric_history(
        run.info.run_id, "student_accuracy"
    )
    assert sorted((m.step, m.value) for m in history) == [
        (0, 0.1), (1, 0.4), (2, 0.3), (3, 0.6), (3, 0.7), (4, 0.8)
    ]  # fmt: skip
    assert run.data.metrics["student_accuracy"] == 0.8


# ---------------------------------------------------------------------------- W&B
@pytest.fixture
def wandb_home(tmp_path, monkeypatch) -> Any:
    """W&B's own folders (artifact staging, cache, settings) under ``tmp_path``; W&B's
    service is shut down after the test."""
    wandb = pytest.importorskip("wandb")
    for variable in ("DATA_DIR", "CACHE_DIR", "CONFIG_DIR", "ARTIFACT_DIR"):
        monkeypatch.setenv(f"WANDB_{variable}", str(tmp_path / "wandb-home" / variable.lower()))
    for variable in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_SILENT"):
        monkeypatch.delenv(variable, raising=False)
    yield wandb
    wandb.teardown()


def _wandb_records(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The latest offline run's summary and records, read by W&B's own inspector."""
    offline = (run_dir / "wandb" / "latest-run").resolve()
    assert offline.name.startswith("offline-run-")
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json"]
    summary = subprocess.run(
        [*command, "--summary", str(offline)], capture_output=True, text=True, timeout=120
    )
    records = subprocess.run([*command, str(offline)], capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0 and records.returncode == 0, summary.stderr + records.stderr
    lines = [json.loads(line) for line in records.stdout.splitlines() if line.strip()]
    return json.loads(summary.stdout), lines


@pytest.mark.slow  # W&B runs its own service process
def test_wandb_offline_run_holds_config_rounds_summary_and_files(
    tmp_path, wandb_home, capfd
) -> None:
    run_dir = tmp_path / "run-w"
    _write_run(run_dir, TrackerSpec(("wandb",)))
    out, err = capfd.readouterr()
    assert "wandb" not in (out + err).lower()  # no banner, no sync hint, no warnings
    summary, records = _wandb_records(run_dir)
    assert summary["name"] == "run-w" and summary["project"] == "fedkd"
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    config = summary["config"]
    assert config["strategy.name"] == "feddf" and config["strategy.distill_lr"] == 0.01
    assert config["report.sparsities"] == [0.5, 0.8]
    assert config["fedkd.run_dir"] == str(run_dir.resolve())
    assert summary["summary"]["status"] == "completed"
    assert summary["summary"]["final/student_accuracy"] == 0.6
    assert summary["summary"]["privacy/epsilon"] == 2.5
    history = [r["history"] for r in records if r["type"] == "history"]
    items = [h["item"] for h in history]
    assert [i["student_accuracy"] for i in items] == [0.1, 0.4, 0.3, 0.6]
    assert [i["_step"] for i in items] == [0, 1, 2, 3]
    assert items[1]["client_accuracies/0"] == 0.2 and "distill_curve" not in items[1]
    (artifact,) = [r["artifact"] for r in records if r["type"] == "artifact"]
    files = {c["path"] for c in artifact["manifest"]["contents"]}
    assert {CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, "report.html", "accuracy.png"} <= files


@pytest.mark.slow  # W&B runs its own service process
def test_wandb_dir_and_a_failed_run(tmp_path, wandb_home) -> None:
    spec = TrackerSpec(("wandb",), wandb=WandbOptions(project="elsewhere", dir=str(tmp_path)))
    trackers = Trackers(spec)
    trackers.start(CONFIG, tmp_path / "run-f")
    trackers.log_round(ROWS[0])
    trackers.finish(_summary("failed", error="RuntimeError: boom"), files=[])
    summary, _ = _wandb_records(tmp_path)  # the wandb/ folder is in trackers.wandb.dir
    assert summary["project"] == "elsewhere" and summary["exit_code"] == 1
    assert summary["summary"]["status"] == "failed"
    assert not (tmp_path / "run-f").exists()  # nothing written into the run directory


@pytest.mark.slow  # W&B runs its own service process
def test_a_resumed_run_starts_a_wandb_run_holding_the_kept_rounds(tmp_path, wandb_home) -> None:
    run_dir = tmp_path / "run-r"
    first = RunWriter(run_dir, report=ReportSpec(html=False), trackers=TrackerSpec(("wandb",)))
    first.start(CONFIG)
    for row in ROWS:
        first.append(row)
    first.trackers.close()  # died after round 3, checkpointed at round 1
    crashed, _ = _wandb_records(run_dir)
    assert crashed["exit_code"] == 1
    again = RunWriter(run_dir, report=ReportSpec(html=False), trackers=TrackerSpec(("wandb",)))
    again.resume(CONFIG, last_round=1)
    for row in (_row(2, 0.9), _row(3, 0.95)):
        again.append(row)
    again.finish(_summary())
    resumed, records = _wandb_records(run_dir)
    assert resumed["run_id"] != crashed["run_id"] and resumed["exit_code"] == 0
    assert resumed["config"]["fedkd.resumed_from_round"] == 1
    items = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert [(i["_step"], i["student_accuracy"]) for i in items] == [
        (0, 0.1), (1, 0.4), (2, 0.9), (3, 0.95)
    ]  # fmt: skip


# ---------------------------------------------------------------------------- TensorBoard
def _events(run_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(
        str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "histograms": 0}
    )
    accumulator.Reload()
    return accumulator


def test_tensorboard_events_read_back(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    _write_run(tmp_path, TrackerSpec(("tensorboard",)))
    events = _events(tmp_path)
    assert set(events.Tags()["scalars"]) == {"student_accuracy", "uplink_bytes"}
    assert events.Tags()["histograms"] == ["client_accuracies"]  # not a scalar per client
    assert [(e.step, e.value) for e in events.Scalars("student_accuracy")] == [
        (0, pytest.approx(0.1)), (1, pytest.approx(0.4)), (2, pytest.approx(0.3)),
        (3, pytest.approx(0.6)),
    ]  # fmt: skip
    histograms = events.Histograms("client_accuracies")
    assert [(h.step, h.histogram_value.num) for h in histograms] == [(0, 2), (1, 2), (2, 2), (3, 2)]
    assert histograms[3].histogram_value.max == pytest.approx(0.6)


def test_report_tensorboard_alias_and_resume_purges_later_rounds(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    first = RunWriter(tmp_path, report=ReportSpec(html=False, tensorboard=True))
    assert first.trackers.spec.names == ("tensorboard",)
    first.start(CONFIG)
    for row in ROWS:
        first.append(row)
    first.trackers.close()  # died after round 3, checkpointed at round 1
    again = RunWriter(tmp_path, report=ReportSpec(html=False, tensorboard=True))
    again.resume(CONFIG, last_round=1)
    for row in (_row(2, 0.9), _row(3, 0.95)):
        again.append(row)
    again.finish(_summary())
    scalars = _events(tmp_path).Scalars("student_accuracy")
    assert [(e.step, round(e.value, 3)) for e in scalars] == [
        (0, 0.1),
        (1, 0.4),
        (2, 0.9),
        (3, 0.95),
    ]


# ---------------------------------------------------------------------------- failures
@pytest.mark.slow
def test_a_tracker_failing_mid_run_is_switched_off_and_the_results_are_complete(
    tmp_path, mlflow_store, monkeypatch, caplog
) -> None:
    pytest.importorskip("tensorboard")
    real = MlflowTracker.log_round

    def failing(self: MlflowTracker, row: dict[str, Any]) -> None:
        if row["round"] == 2:
            raise RuntimeError("tracking server went away")
        real(self, row)

    monkeypatch.setattr(MlflowTracker, "log_round", failing)
    spec = TrackerSpec(("mlflow", "tensorboard"), mlflow=MlflowOptions(tracking_uri=mlflow_store))
    with caplog.at_level(logging.ERROR, logger="fedkd.run.trackers"):
        writer = _write_run(tmp_path / "run-x", spec)
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1  # logged once, then off
    assert "mlflow tracking failed while logging a round" in failures[0].getMessage()
    assert writer.trackers.active == ()  # all ended after finish
    assert [r["round"] for r in read_metrics(tmp_path / "run-x")] == [0, 1, 2, 3]
    assert read_summary(tmp_path / "run-x")["status"] == "completed"
    assert [e.step for e in _events(tmp_path / "run-x").Scalars("student_accuracy")] == [
        0, 1, 2, 3
    ]  # fmt: skip
    (run,) = _mlflow_runs(mlflow_store, tmp_path / "run-x")
    assert run.info.status == "FAILED" and "final/student_accuracy" not in run.data.metrics


def test_a_tracker_that_cannot_start_leaves_the_run_alone(tmp_path, monkeypatch, caplog) -> None:
    def broken(self: WandbTracker, *args: Any, **kwargs: Any) -> None:
        raise OSError("no space left for wandb/")

    monkeypatch.setattr(WandbTracker, "start", broken)
    trackers = Trackers(TrackerSpec(("wandb",)))
    with caplog.at_level(logging.ERROR, logger="fedkd.run.trackers"):
        trackers.start(CONFIG, tmp_path)
    assert trackers.active == ()
    assert "could not start wandb tracking; the run goes on without it" in caplog.text
    trackers.log_round(ROWS[0])
    trackers.finish(_summary(), files=[])


# ---------------------------------------------------------------------------- a whole run
@pytest.mark.slow
def test_a_run_logs_to_all_three_trackers(tmp_path, wandb_home, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from simulations.run import run

    monkeypatch.chdir(tmp_path)  # MLflow's default store: ./mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_config(
        ["backend=inline", "dataset=synthetic", "dataset.num_samples=200", "num_clients=2",
         "num_rounds=2", "client.epochs=1", "progress=false", "report.export=false",
         "tracker=[mlflow,wandb,tensorboard]"]
    )  # fmt: skip
    run_dir = tmp_path / "run"
    summary = run(cfg, run_dir)
    assert summary["status"] == "completed"
    (logged,) = _mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db", run_dir)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert (
        logged.data.params["strategy.name"] == "feddf" and logged.data.params["num_rounds"] == "2"
    )
    history = client.get_metric_history(logged.info.run_id, "student_accuracy")
    rows = read_metrics(run_dir)
    assert [(m.step, m.value) for m in history] == [
        (r["round"], r["student_accuracy"]) for r in rows
    ]
    assert {"report.html", SUMMARY_FILE} <= {
        a.path for a in client.list_artifacts(logged.info.run_id)
    }
    wandb_summary, _ = _wandb_records(run_dir)
    assert wandb_summary["summary"]["student_accuracy"] == rows[-1]["student_accuracy"]
    assert [e.step for e in _events(run_dir).Scalars("student_accuracy")] == [0, 1, 2]
