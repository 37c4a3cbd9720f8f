"""``backend=batched``: the same run as ``backend=inline`` to floating-point tolerance, the
same messages and bytes, and the sequential path (said once) where training cannot be
batched."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from fedkd.config import compose_config
from fedkd.run.results import read_metrics
from simulations.run import run

#: The reference protocol, small: digits, the reference MLP, Dirichlet label skew.
REFERENCE = [
    "experiment=reference",
    "num_clients=6",
    "num_rounds=3",
    "partition.alpha=1.0",
    "checkpoint.every=0",
    "progress=false",
    "report.html=false",
    "report.export=false",
]
#: per round: compared to 1e-4 (accuracies, losses) or exactly (counts, bytes)
CLOSE = ("student_accuracy", "client_accuracy_mean", "train_loss", "student_loss")
EXACT = ("uplink_bytes", "downlink_bytes", "clients_ok", "clients_failed")


def _run(tmp_path: Path, name: str, *overrides: str) -> list[dict[str, Any]]:
    cfg = compose_config([*REFERENCE, *overrides])
    run(cfg, tmp_path / name)
    return read_metrics(tmp_path / name)


def _assert_same_run(batched: list[dict[str, Any]], inline: list[dict[str, Any]]) -> None:
    assert len(batched) == len(inline) == 4
    for got, want in zip(batched, inline, strict=True):
        for key in CLOSE:
            if want.get(key) is None:
                assert got.get(key) is None, key
            else:
                assert got[key] == pytest.approx(want[key], abs=1e-4), (got["round"], key)
        for key in EXACT:
            assert got.get(key) == want.get(key), (got["round"], key)
        for node, accuracy in (want.get("client_accuracies") or {}).items():
            assert got["client_accuracies"][node] == pytest.approx(accuracy, abs=1e-4)


@pytest.mark.parametrize("strategy", ["fedavg", "dsfl", "fedprox", "fedmd"])
def test_batched_training_matches_the_sequential_path(tmp_path, strategy, caplog) -> None:
    """FedAvg (weights), DS-FL (proxy predictions, server distillation), FedProx (the
    proximal term) and FedMD (clients keep their own models, digest the consensus first:
    each client's model must survive the shared model object): every round's accuracies
    within 1e-4 of the inline engine's, the same bytes, and no client trained
    sequentially."""
    with caplog.at_level(logging.INFO, logger="simulations.batched"):
        batched = _run(tmp_path, "batched", f"strategy={strategy}", "backend=batched")
    inline = _run(tmp_path, "inline", f"strategy={strategy}", "backend=inline")
    _assert_same_run(batched, inline)
    assert "train sequentially" not in caplog.text
    assert "18 client rounds trained batched, 0 sequentially" in caplog.text


def test_what_cannot_be_batched_trains_sequentially_and_says_so_once(tmp_path, caplog) -> None:
    """Dropout draws random numbers in training: the clients take the sequential path,
    which gives exactly the inline engine's numbers; the reason is logged once per run."""
    dropout = ["strategy=fedavg", "model.dropout=0.2", "student.dropout=0.2"]
    with caplog.at_level(logging.INFO, logger="simulations.batched"):
        batched = _run(tmp_path, "batched", *dropout, "backend=batched")
    inline = _run(tmp_path, "inline", *dropout, "backend=inline")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(batched) == strip(inline)
    warnings = [r for r in caplog.records if "train sequentially" in r.getMessage()]
    assert len(warnings) == 1 and "dropout" in warnings[0].getMessage()


def test_stragglers_miss_the_deadline_on_the_batched_engine(tmp_path) -> None:
    rows = _run(
        tmp_path,
        "slow",
        "strategy=fedavg",
        "backend=batched",
        "num_rounds=1",
        "faults.straggler_fraction=0.2",  # one of 6
        "faults.straggler_delay=3",
        "round_timeout=2.5",
    )
    assert rows[1]["clients_ok"] == 5
    assert rows[1]["failure_reasons"] == {"no reply (timeout)": 1}


def test_killing_an_actor_is_refused_without_actors(tmp_path) -> None:
    from fedkd.errors import ConfigError

    with pytest.raises(ConfigError, match="backend=batched runs clients in the server"):
        _run(tmp_path, "kill", "backend=batched", "faults.kill_actor_round=1")
