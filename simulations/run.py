"""``python -m simulations.run [hydra overrides]``: one federated run (``-m`` for sweeps)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedkd.apps.client import app as client_app
from fedkd.apps.server import make_server_app, prepare_run
from fedkd.config import to_plain
from fedkd.errors import ConfigError
from fedkd.results import RESULT_FILES, SUMMARY_FILE
from simulations.engine import backend_config, run_inline, run_on_ray

logger = logging.getLogger(__name__)


def run(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Validate, then simulate the federation on Ray; returns ``summary.json``'s content.

    A config error is raised before Ray starts, and the run directory Hydra created for it
    is removed again so nothing is left that looks like a result.
    """
    try:
        backend_config(cfg.get("backend", {}))
        plan = prepare_run(cfg)
    except ConfigError:
        _remove_empty_run_dir(run_dir)
        raise
    server_app = make_server_app(plan, run_dir, show_progress=bool(cfg.get("progress", True)))
    if cfg["backend"]["name"] == "inline":
        run_inline(server_app, client_app, num_clients=cfg["num_clients"])
    else:
        run_on_ray(
            server_app,
            client_app,
            num_clients=cfg["num_clients"],
            backend=cfg["backend"],
            verbose=bool(cfg.get("verbose", False)),
        )
    summary: dict[str, Any] = json.loads((run_dir / SUMMARY_FILE).read_text())
    return summary


def _remove_empty_run_dir(run_dir: Path) -> None:
    """Delete a run directory that holds only Hydra's bookkeeping (no result files)."""
    if not run_dir.is_dir() or any((run_dir / name).exists() for name in RESULT_FILES):
        return
    leftovers = [p for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if not leftovers:
        shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the final student accuracy (for sweepers)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run(to_plain(cfg), run_dir)
    except ConfigError as exc:
        _remove_empty_run_dir(run_dir)  # a user's mistake: one clear line, no traceback
        print(f"fedkd: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    final = summary.get("final", {})
    accuracy = final.get("student_accuracy")
    return float(accuracy) if accuracy is not None else None


if __name__ == "__main__":
    main()
