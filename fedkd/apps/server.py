"""The fedkd ServerApp: builds data, student and strategy from the config and runs the rounds.

Two ways in, one code path:

* ``python -m simulations.run`` composes the config with Hydra, calls :func:`prepare_run`
  (so bad input fails before Ray starts) and hands :func:`make_server_app` to the engine.
* ``flwr run .`` loads the module-level ``app``; it composes the same config from the
  run config's ``overrides`` string and writes into ``out-dir``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedkd.apps.flwr_run import (
    default_run_dir,
    launcher,
    quiet_flwr_run_warnings,
    run_log,
    superlink_hint,
)
from fedkd.apps.plan import (  # noqa: F401  (re-exported: the ServerApp's public names)
    DEFAULT_ROUND_TIMEOUT_SECONDS,
    RunOptions,
    RunPlan,
    build_options,
    build_setup,
    checkpoint_every,
    prepare_run,
    resolve_distill,
)
from fedkd.config import compose_config
from fedkd.data import FederatedData
from fedkd.devices import resolve_device
from fedkd.errors import ConfigError
from fedkd.metrics import binary_scores, majority_baseline
from fedkd.models import FedKDModel, count_parameters, model_from_config, model_size_bytes
from fedkd.privacy import PrivacyBudgetExhausted
from fedkd.run import names
from fedkd.run.checkpoint import (
    check_resumable,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from fedkd.run.console import active_display, phase
from fedkd.run.progress import RoundProgress, print_summary
from fedkd.run.report import ReportSpec
from fedkd.run.results import (
    SUMMARY_FILE,
    RunWriter,
    check_fresh_run_dir,
    failure_status,
    record_outputs_seconds,
    summarize,
)
from fedkd.run.timing import run_origin
from fedkd.train import evaluate, predict_probs
from strategies.base import RoundAborted, RunAssets, student_arrays

logger = logging.getLogger(__name__)


def run_federation(
    grid: Grid,
    plan: RunPlan,
    run_dir: Path,
    *,
    show_progress: bool = True,
    resume: bool = False,
    defer_summary: bool = False,
) -> dict[str, Any]:
    """Run all rounds on ``grid`` and write the run directory; returns the summary.

    With ``resume``, ``run_dir`` holds a run with a checkpoint: its state is restored (the
    student, the strategy, the generators, and every client's state through a
    ``state-import`` query) and the rounds after the checkpoint are run. With
    ``show_progress`` the results table is printed at the end; ``defer_summary`` leaves that
    to the caller, once the engine has shut down (``simulations.run``: the table's wall time
    then covers the whole command), except when the run ends in an exception.
    """
    cfg, run_options, assets, strategy = plan.config, plan.options, plan.assets, plan.strategy
    writer = RunWriter(run_dir, report=run_options.report, trackers=run_options.trackers)
    first_round, initial_arrays, resumed_from = 1, student_arrays(assets.student), None
    timeout = run_options.round_timeout
    num_rounds = run_options.num_rounds
    if resume:
        state = load_checkpoint(run_dir)
        check_resumable(state["config"], cfg, run_dir)
        resumed_from = int(state["round"])
        writer.resume(cfg, last_round=resumed_from)
        assets.student.load_state_dict(state["student"], strict=True)
        strategy.load_checkpoint_state(state["strategy"])
        set_rng_states(state["rng"])
        if strategy.has_clients:
            strategy.discover(grid)
            strategy.import_client_states(grid, state["clients"], timeout=timeout)
        first_round, initial_arrays = resumed_from + 1, state["arrays"]
    else:
        writer.start(cfg)
    every = run_options.checkpoint_every
    validation_x, validation_y = validation_set(assets.data)
    baseline = majority_class_baseline(assets.data)
    started = last_round_end = time.perf_counter()
    first_round_start: float | None = None  # start-up ends here (fedkd.run.timing)

    def on_round_end(server_round: int, arrays: ArrayRecord) -> None:
        if every and (server_round % every == 0 or server_round == num_rounds):
            write_checkpoint(plan, grid, run_dir, server_round, arrays, timeout=timeout)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        nonlocal last_round_end, first_round_start
        # The strategy's student is the model under test; ``arrays`` is whatever the method
        # sends between rounds (student weights, or consensus targets).
        loss: float | None = None
        accuracy: float | None = None
        validation_accuracy: float | None = None
        binary: dict[str, float | None] = {}
        if strategy.has_student:
            loss, accuracy = evaluate(
                assets.student, assets.data.test_x, assets.data.test_y, device=assets.device
            )
            if assets.data.num_classes == 2:  # accuracy alone flatters a skewed binary task
                binary = student_binary_scores(assets)
            if len(validation_y):
                _, validation_accuracy = evaluate(
                    assets.student, validation_x, validation_y, device=assets.device
                )
        else:  # a global model that is not the student (FedGKT), or none
            accuracy = strategy.global_accuracy(server_round)
        now = time.perf_counter()
        row: dict[str, Any] = {
            "round": server_round,
            "student_accuracy": accuracy,
            **binary,
            "student_loss": loss,
            "student_validation_accuracy": validation_accuracy,
        }
        if server_round >= 1:
            if first_round_start is None:
                first_round_start = last_round_end
            round_metrics = strategy.round_metrics.get(server_round, {})
            row.update(
                {
                    "clients_ok": 0,
                    "clients_failed": 0,
                    "uplink_bytes": 0,
                    "downlink_bytes": 0,
                    **round_metrics,
                    "seconds": now - last_round_end,
                }
            )
        last_round_end = now
        row = names.with_aliases(row)  # the new names and, for one release, the old ones
        writer.append(row)
        progress.update(row)
        if accuracy is None or loss is None:
            return MetricRecord()
        return MetricRecord({"student-accuracy": accuracy, "student-loss": loss})

    status, error = "completed", None
    shown = active_display()  # simulations.run shows one from before the data is built
    progress = (
        shown
        if isinstance(shown, RoundProgress)
        else RoundProgress(num_rounds, enabled=show_progress)
    )
    progress.set_headline(type(strategy).headline_metric)
    if resumed_from:
        progress.advance_to(resumed_from)
    privacy: dict[str, Any] | None = None
    final_student: dict[str, Any] = {}
    stopped_reason: str | None = None
    try:
        with progress:
            try:
                strategy.start(
                    grid=grid,
                    initial_arrays=initial_arrays,
                    num_rounds=num_rounds,
                    timeout=timeout,
                    train_config=ConfigRecord(),
                    evaluate_fn=evaluate_fn,
                    first_round=first_round,
                    on_round_end=on_round_end,
                )
            except (PrivacyBudgetExhausted, RoundAborted) as exc:  # finished rounds are kept
                status, stopped_reason = "stopped", str(exc)
                logger.warning("%s", exc)
        phase("writing the results")
        privacy = privacy_summary(plan, grid, run_dir)
        final_student = student_outputs(plan, run_dir, writer.report)
    except BaseException as exc:
        status, error = failure_status(exc), f"{type(exc).__name__}: {exc}"
        raise
    finally:
        rounds_start = last_round_end if first_round_start is None else first_round_start
        summary = summarize(
            writer.rows,
            config=cfg,
            wall_seconds=time.perf_counter() - started,
            timing={
                "startup_seconds": rounds_start - run_origin(),
                "rounds_seconds": last_round_end - rounds_start,
                "outputs_seconds": time.perf_counter() - last_round_end,  # so far
            },
            student_parameters=count_parameters(assets.student),
            student_size_bytes=model_size_bytes(assets.student),
            status=status,
            error=error,
            majority_baseline=baseline,
        )
        if stopped_reason is not None:
            summary["stopped_reason"] = stopped_reason
        if resumed_from is not None:
            summary["resumed_from_round"] = resumed_from
        if privacy is not None:
            summary["privacy"] = privacy
        summary.update(final_student)
        # Partition ids -> label counts, as the clients reported them at discovery.
        summary = writer.finish(summary, label_histograms=strategy.label_histograms)
        summary = record_outputs_seconds(run_dir, summary)  # the report included
        if show_progress and (not defer_summary or error is not None):
            print_summary(summary, run_dir)
    return summary


def student_outputs(plan: RunPlan, run_dir: Path, spec: ReportSpec) -> dict[str, Any]:
    """What the ``report`` block asks for on the final student: its export (``export``) and
    the compression comparison (``compression``). Keys for ``summary.json``; a failure is
    logged and recorded as ``<key>_error`` instead of losing the run's results."""
    if not plan.strategy.has_student:
        return {}
    import copy

    import torch

    student = copy.deepcopy(plan.assets.student).cpu().eval()
    test_x, test_y = plan.assets.data.test_x, plan.assets.data.test_y
    outputs: dict[str, Any] = {}
    if spec.export:
        from fedkd.run.export import export_student

        try:
            example = torch.as_tensor(np.asarray(test_x[:4], dtype=np.float32))
            exported = export_student(student, example, run_dir)
            for entry in exported.values():  # paths relative to the run directory: it moves
                if "path" in entry:
                    entry["path"] = os.path.relpath(entry["path"], run_dir)
            outputs["export"] = exported
        except Exception as exc:
            logger.exception("could not export the student")
            outputs["export_error"] = f"{type(exc).__name__}: {exc}"
    if spec.compression:
        from fedkd.run.compression import compare

        try:
            teacher = train_teacher(plan, epochs=spec.teacher_epochs)
            outputs["compression"] = compare(
                student,
                teacher,
                test_x,
                test_y,
                sparsities=spec.sparsities,
                ranks=spec.ranks,
                repeats=spec.latency_repeats,
                warmup=10,
            )
        except Exception as exc:
            logger.exception("could not run the compression comparison")
            outputs["compression_error"] = f"{type(exc).__name__}: {exc}"
    return outputs


def train_teacher(plan: RunPlan, *, epochs: int) -> FedKDModel:
    """The teacher of the compression comparison: the client architecture (partition 0's)
    trained on every client's training data pooled, with the clients' optimizer settings
    (what the federation's clients could reach together), on the CPU."""
    from fedkd.train import train_local

    setup, data = plan.assets.setup, plan.assets.data
    clients = [data.client_data(p) for p in range(data.num_clients)]
    x = np.concatenate([c.train_x for c in clients])
    y = np.concatenate([c.train_y for c in clients])
    teacher = model_from_config(
        setup.model_for(0), input_shape=data.input_shape, num_classes=data.num_classes,
        seed=setup.seed,
    )  # fmt: skip
    settings = setup.local.train_settings(epochs=epochs)
    train_local(teacher, x, y, settings=settings, seed=setup.seed, device=resolve_device("cpu"))
    return teacher.eval()


def write_checkpoint(
    plan: RunPlan,
    grid: Grid,
    run_dir: Path,
    server_round: int,
    arrays: ArrayRecord,
    *,
    timeout: float,
) -> bool:
    """Save everything round ``server_round + 1`` needs (see :mod:`fedkd.run.checkpoint`).

    When a client cannot export its state the checkpoint would be incomplete, so none is
    written and the previous one stays; the run goes on. Returns whether one was written.
    """
    strategy = plan.strategy
    try:
        clients = (
            strategy.export_client_states(grid, timeout=timeout)
            if strategy.has_clients and strategy.keeps_client_state()
            else {}  # FedAvg, FedDF: nothing to fetch, so no message per client
        )
    except RuntimeError as exc:
        logger.warning("round %s: no checkpoint written: %s", server_round, exc)
        return False
    save_checkpoint(
        run_dir,
        {
            "round": server_round,
            "arrays": arrays,
            "student": {k: v.detach().cpu() for k, v in plan.assets.student.state_dict().items()},
            "strategy": strategy.checkpoint_state(),
            "rng": rng_states(),
            "clients": clients,
            "config": plan.config,
        },
    )
    logger.debug("round %s: checkpoint written", server_round)
    phase(f"round {server_round}: checkpoint written")
    return True


def privacy_summary(plan: RunPlan, grid: Grid, run_dir: Path) -> dict[str, Any]:
    """The ``privacy`` entry of ``summary.json``: accounting, the audit when asked, and for
    every run the release ledger (``releases``: every key clients sent and what protected
    it, :mod:`fedkd.wire.ledger`)."""
    spec, strategy = plan.assets.privacy, plan.strategy
    summary: dict[str, Any] = (
        strategy.privacy.summary(proxy_rows=len(strategy.proxy_indices))
        if strategy.privacy is not None
        else {"mechanism": "none", "epsilon": None}
    )
    if spec.audit:
        from fedkd.apps.audit import run_audit

        summary["audit"] = run_audit(plan, grid, run_dir)
    summary["releases"] = strategy.ledger.entries()
    secagg = plan.assets.secagg
    if secagg.enabled:  # what the server saw of the summable payloads: their sum only
        summary["secure_aggregation"] = {
            "enabled": True,
            "max_dropouts": secagg.max_dropouts,
            "degree": secagg.degree,
            "frac_bits": secagg.frac_bits,
            "noise": secagg.noise,
            "server_learns": "the sum over each round's surviving clients of what they share",
        }
    if spec.enabled:
        # what left the clients in the clear because the user allowed it (nothing else can)
        summary["unprotected"] = strategy.ledger.unprotected()
        summary["allow_unprotected"] = list(spec.allow_unprotected)
    summary["client_test_predictions"] = plan.assets.client_test_predictions
    return summary


def student_binary_scores(assets: RunAssets) -> dict[str, float | None]:
    """``student_balanced_accuracy`` and ``student_auc`` (ROC-AUC of the class-1
    probability; None when the test set holds one class) of the student on the server test
    set, for a binary task's metrics row."""
    probs = predict_probs(assets.student, assets.data.test_x, device=assets.device)
    scores = binary_scores(assets.data.test_y, probs)
    return {
        "student_balanced_accuracy": scores["balanced_accuracy"],
        "student_auc": scores["auc"],
    }


def majority_class_baseline(data: FederatedData) -> dict[str, Any]:
    """``summary.json``'s ``majority_baseline``: always predicting the most frequent class
    of the clients' training splits pooled, scored on the server test set."""
    train_labels = np.concatenate([data.client_data(p).train_y for p in range(data.num_clients)])
    return majority_baseline(train_labels, data.test_y, num_classes=data.num_classes)


def validation_set(data: FederatedData) -> tuple[np.ndarray, np.ndarray]:
    """The clients' local test splits pooled: a simulation-only validation set.

    It is disjoint from the server test set and from all training data, so settings can be
    chosen on ``student_validation_accuracy`` without looking at the test set.
    """
    splits = [data.client_data(p) for p in range(data.num_clients)]
    return (
        np.concatenate([s.test_x for s in splits]),
        np.concatenate([s.test_y for s in splits]),
    )


def make_server_app(
    plan: RunPlan,
    run_dir: Path,
    *,
    show_progress: bool = True,
    resume: bool = False,
    defer_summary: bool = False,
) -> ServerApp:
    """A ServerApp bound to an already validated plan (the simulation runner's path);
    ``defer_summary``: the caller prints the results table (:func:`run_federation`)."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(
            grid,
            plan,
            run_dir,
            show_progress=show_progress,
            resume=resume,
            defer_summary=defer_summary,
        )

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point under ``flwr run``: config from the run config's ``overrides``, run
    directory ``out-dir`` (default :func:`default_run_dir`). As a normal run, it writes
    ``run.log`` and checkpoints there and prints the results table at the end (unless a
    fedkd launcher prints it: :data:`fedkd.apps.flwr_run.LAUNCHER_VAR`)."""
    quiet_flwr_run_warnings()
    overrides = str(context.run_config.get("overrides", ""))
    out_dir = str(context.run_config.get("out-dir", ""))
    cfg = compose_config(overrides)
    if cfg.get("resume"):
        raise ConfigError(
            "resume: continue a run with `python -m simulations.run resume=<run dir>`; under "
            "flwr run, start a new run (out-dir) instead"
        )
    run_dir = (Path(out_dir) if out_dir else default_run_dir(cfg)).absolute()
    check_fresh_run_dir(run_dir)  # before run.log is opened in it
    try:
        with run_log(run_dir):
            plan = prepare_run(cfg)
            run_federation(grid, plan, run_dir, show_progress=False)
    finally:
        summary_file = run_dir / SUMMARY_FILE
        if cfg.get("progress", True) and launcher() is None and summary_file.is_file():
            print_summary(json.loads(summary_file.read_text()), run_dir)
        if (hint := superlink_hint()) is not None:
            print(hint, file=sys.stderr)
