"""``python -m simulations.run [hydra overrides]``: one federated run (``-m`` for sweeps)."""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

import hydra
import yaml
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from fedkd.apps.client import app as client_app
from fedkd.apps.plan import RunPlan
from fedkd.apps.server import make_server_app, prepare_run
from fedkd.config import check_overrides, config_dir, to_plain
from fedkd.devices import set_torch_threads
from fedkd.errors import ConfigError
from fedkd.run import names
from fedkd.run.checkpoint import RESUMABLE_KEYS, check_resumable, load_checkpoint
from fedkd.run.console import phase, quiet_third_party_warnings, results_console
from fedkd.run.interrupt import exit_code, sigterm_raises
from fedkd.run.progress import RoundProgress, print_summary
from fedkd.run.results import (
    CONFIG_FILE,
    RESULT_FILES,
    check_fresh_run_dir,
    record_outputs_seconds,
)
from fedkd.run.timing import start_run
from simulations.batched import run_batched
from simulations.engine import IN_PROCESS_BACKENDS, backend_config, run_inline, run_on_ray
from simulations.pool import keep_pool, run_on_pool

logger = logging.getLogger(__name__)


def run(cfg: dict[str, Any], run_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Validate, then simulate the federation on Ray; returns ``summary.json``'s content.

    A config error is raised before Ray starts, and the run directory Hydra created for it
    is removed again so nothing is left that looks like a result. An existing run's results
    are never overwritten; ``resume`` continues the run in ``run_dir`` from its checkpoint.
    """
    start_run()  # summary.json's startup_seconds counts from here, or the process's start
    show_progress = bool(cfg.get("progress", True))
    # one live display from here to the table: the phases before the rounds, then the rounds
    with RoundProgress(int(cfg.get("num_rounds", 0)), enabled=show_progress):
        plan = _checked_plan(cfg, run_dir, resume=resume)
        server_app = make_server_app(
            plan, run_dir, show_progress=show_progress, resume=resume, defer_summary=True
        )
        _run_engine(cfg, plan, server_app)
    summary = record_outputs_seconds(run_dir)  # now with the engine's shutdown
    if show_progress:
        print_summary(summary, run_dir)
    return summary


def _checked_plan(cfg: dict[str, Any], run_dir: Path, *, resume: bool) -> RunPlan:
    """The validated plan, with the data built (:func:`prepare_run`); a config error leaves
    no run directory behind (unless resuming one)."""
    try:
        backend_config(cfg.get("backend", {}))
        checkpoint = load_checkpoint(run_dir) if resume else None
        if not resume:
            check_fresh_run_dir(run_dir)
        phase("checking the config and building the data")
        plan = prepare_run(cfg)  # resolves the config as the checkpointed run's was
        if checkpoint is not None:
            check_resumable(checkpoint["config"], plan.config, run_dir)
            if checkpoint["round"] >= cfg["num_rounds"]:
                raise ConfigError(
                    f"resume={run_dir}: its checkpoint is at round {checkpoint['round']} and "
                    f"num_rounds={cfg['num_rounds']}: nothing left to run (raise num_rounds "
                    "to continue it)"
                )
    except ConfigError:
        if not resume:
            _remove_empty_run_dir(run_dir)
        raise
    return plan


def _run_engine(cfg: dict[str, Any], plan: RunPlan, server_app: Any) -> None:
    """Run the apps on the configured backend (:mod:`simulations.engine`)."""
    name = cfg["backend"]["name"]
    if name in IN_PROCESS_BACKENDS:
        # everything runs in this process: the server's own training and evaluation take
        # backend.torch_threads too, not only the clients (``centralized`` has none)
        set_torch_threads(plan.assets.setup.torch_threads)
        phase("starting the clients in this process")
        if name == "batched":
            threads = int(cfg["backend"].get("compute_threads", 1))
            run_batched(
                server_app, client_app, num_clients=cfg["num_clients"], compute_threads=threads
            )
        else:
            run_inline(server_app, client_app, num_clients=cfg["num_clients"])
        return
    phase("starting Ray and the client actors")
    engine = run_on_pool if cfg["backend"].get("engine", "fedkd") == "fedkd" else run_on_ray
    engine(
        server_app,
        client_app,
        num_clients=cfg["num_clients"],
        backend=cfg["backend"],
        verbose=bool(cfg.get("verbose", False)),
    )


def validation_objective(summary: dict[str, Any]) -> float | None:
    """What a sweeper should maximize: the final round's accuracy on the validation set.

    ``global_on_local_test_accuracy`` is the global model on the clients' pooled local test
    splits, disjoint from the server test set, so tuning never looks at the test set. The
    final round counts, not the best one: the run keeps no best-round weights, so the final
    model is the one a user gets. Methods without a global model (``local_only``,
    ``fedproto``) fall back to Flower's federated evaluation on the same local test splits
    (when ``strategy.fraction_evaluate > 0``), then to ``local_on_local_test_accuracy_mean``
    (each client's model on its own local test split). Never an accuracy on the server test
    set; ``None`` when the run has none of these. Summaries of fedkd 0.1 are read by their
    old keys (:func:`fedkd.run.names.canonical`).
    """
    final = names.canonical(summary).get("final", {})
    for key in (
        names.GLOBAL_LOCAL_TEST,
        names.GLOBAL_EVALUATED,
        names.LOCAL_EVALUATED,
        names.EVALUATED_ALIAS,
        names.LOCAL_LOCAL_TEST,
    ):
        value = final.get(key)
        if isinstance(value, int | float):
            return float(value)
    return None


def _remove_empty_run_dir(run_dir: Path) -> None:
    """Delete a run directory that holds only Hydra's bookkeeping (no result files)."""
    if not run_dir.is_dir() or any((run_dir / name).exists() for name in RESULT_FILES):
        return
    leftovers = [p for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if not leftovers:
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # Hydra's date folder, when nothing else is in it
            run_dir.parent.rmdir()


def resume_config(run_dir: Path, composed: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The config of a resumed run: the saved ``config.yaml``, with only the command line's
    overrides of :data:`RESUMABLE_KEYS` applied (taken from the freshly composed config);
    ``progress`` and ``verbose`` always come from this invocation.

    Raises
    ------
    ConfigError
        The run directory has no readable config, or another key is overridden.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"resume={run_dir}: no {CONFIG_FILE} there (not a fedkd run directory)")
    saved = yaml.safe_load(path.read_text())
    if not isinstance(saved, dict):
        raise ConfigError(f"resume={run_dir}: {CONFIG_FILE} is not a mapping")
    config = copy.deepcopy(saved)
    for key in ("progress", "verbose"):  # how this invocation displays, not what it computes
        if key in composed:
            config[key] = composed[key]
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        top = key.split(".", 1)[0]
        if top == "resume":
            continue
        if top not in RESUMABLE_KEYS:
            raise ConfigError(
                f"resume: {override!r} would change what the run computes; a resumed run "
                f"keeps {run_dir}/{CONFIG_FILE} and may only change {', '.join(RESUMABLE_KEYS)}"
            )
        config[top] = copy.deepcopy(composed[top])
    config["resume"] = str(run_dir)
    return config


def _configs_root() -> Path:
    """``FEDKD_CONFIG_DIR``, else the checkout's ``configs/`` (:func:`fedkd.config.config_dir`);
    an absolute path, so the installed ``fedkd-run`` script finds it from any directory."""
    try:
        return config_dir().resolve()
    except ConfigError:  # Hydra then says what is missing
        return Path(__file__).resolve().parent.parent / "configs"


#: The configs the Hydra main composes (its ``config_path``). Absolute: Hydra reads a
#: relative one against the calling file only under ``python -m``; from the console script
#: it would look for a Python package named ``configs``.
CONFIGS = _configs_root()


class SweepEnd(Callback):
    """At the end of a sweep (``-m``), print the command that compares its runs
    (``hydra.callbacks.fedkd_sweep_end`` in ``configs/config.yaml``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        results_console().print(
            f"sweep finished: runs in {sweep_dir}\ncompare them: python -m simulations.report "
            f"{sweep_dir} --html {sweep_dir / 'compare.html'}",
            highlight=False,
            soft_wrap=True,
        )


class _UnparsedArguments(Exception):
    """The command line does not parse; Hydra's own parser will say why."""


def main() -> None:
    """``python -m simulations.run`` and ``fedkd-run``: overrides that name no option of a
    config group or an unknown top-level key end the command with one line and exit code 2
    (:func:`fedkd.config.check_overrides`) instead of Hydra's several-line report; then
    :func:`hydra_main` runs."""
    quiet_third_party_warnings()
    try:
        _check_command_line(sys.argv[1:])
    except ConfigError as exc:
        print(f"fedkd: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    hydra_main()


def _check_command_line(argv: list[str]) -> None:
    """:func:`fedkd.config.check_overrides` on the overrides of ``argv``, read by Hydra's
    own argument parser. Left to Hydra: a command line that does not parse, ``--version``,
    and another config folder (``--config-path``, ``--config-dir``, or none beside an
    installed copy), whose options differ."""
    if "--version" in argv or not (CONFIGS / "config.yaml").is_file():
        return
    parser = get_args_parser()

    def refuse(message: str) -> NoReturn:
        raise _UnparsedArguments(message)

    parser.error = refuse  # type: ignore[method-assign]
    try:
        args = parser.parse_args(argv)
    except _UnparsedArguments:
        return
    if not (args.config_path or args.config_dir):
        check_overrides(args.overrides, root=CONFIGS, config_name=args.config_name or "config")


@hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns :func:`validation_objective` (what sweepers optimize).

    ``resume=<run dir>`` continues that run from its checkpoint, in that directory. SIGINT
    and SIGTERM stop the run cleanly (finished rounds kept, ``summary.json`` says
    ``interrupted``) and the command exits with 130 or 143."""
    hydra_config = HydraConfig.get()
    if hydra_config.mode == RunMode.MULTIRUN:
        keep_pool()  # a sweep's jobs in this process share one Ray and actor pool
    run_dir = Path(hydra_config.runtime.output_dir)
    plain: dict[str, Any] = {}
    try:
        with sigterm_raises():  # SIGTERM stops like Ctrl-C; the Ray engines handle both
            plain = to_plain(cfg)
            if plain.get("resume"):
                hydra_dir, run_dir = run_dir, Path(str(plain["resume"]))
                _remove_empty_run_dir(hydra_dir)
                plain = resume_config(run_dir, plain, list(hydra_config.overrides.task))
                summary = run(plain, run_dir, resume=True)
            else:
                summary = run(plain, run_dir)
    except ConfigError as exc:
        if not plain.get("resume"):
            _remove_empty_run_dir(run_dir)
        if hydra_config.mode == RunMode.MULTIRUN:
            # One job of a sweep: raising (not SystemExit) lets the sweeper record this job
            # as failed and keep the others (the Optuna sweeper marks the trial FAIL).
            raise
        print(f"fedkd: invalid configuration: {exc}", file=sys.stderr)  # one line, no traceback
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:  # SIGINT, or RunInterrupted: finished rounds are on disk
        print(f"fedkd: interrupted; finished rounds are in {run_dir}", file=sys.stderr)
        raise SystemExit(exit_code(exc)) from None
    objective = validation_objective(summary)
    if hydra_config.mode == RunMode.MULTIRUN:  # what the sweeper compares jobs by
        logger.info(
            "job %s: objective %s (the global model on the clients' test splits)",
            hydra_config.job.num,
            "none" if objective is None else f"{objective:.4f}",
        )
    return objective


if __name__ == "__main__":
    main()
