"""Private runs end to end on the in-process grid: accounting in metrics.jsonl and
summary.json, the budget stop, PATE, DP-SGD's persistent accountant and the audit."""

from __future__ import annotations

import json

import dp_accounting
import pytest
from dp_accounting import rdp

from fedkd.run.results import read_metrics

BASE = ["num_clients=3", "num_rounds=2", "client.epochs=1"]
DISTILL = "strategy.distill_epochs=2"


def _gaussian_epsilon(z: float, count: int, delta: float = 1e-5) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(z), count)
    return float(accountant.get_epsilon(delta))


def test_local_logit_dp_reports_epsilon_per_round(in_process_run, tmp_path) -> None:
    summary = in_process_run(
        [*BASE, "strategy=dsfl", DISTILL, "privacy=logit_dp", "privacy.noise_multiplier=2"],
        tmp_path,
    )
    assert summary["status"] == "completed"
    rows = read_metrics(tmp_path)
    for row in rows[1:]:
        assert row["epsilon"] == pytest.approx(_gaussian_epsilon(2.0, row["round"]))
        assert row["delta"] == 1e-5
        assert row["clients_ok"] == 3  # noisy rows pass reply validation
    privacy = summary["privacy"]
    assert privacy["mechanism"] == "logit_dp" and privacy["unit"].startswith("record")
    # the final guarantee: the tighter of RDP and PLD, named
    assert 0.9 * _gaussian_epsilon(2.0, 2) < privacy["epsilon"] <= _gaussian_epsilon(2.0, 2)
    assert privacy["accountant"].startswith("dp-accounting")
    assert privacy["epsilon_client"] == pytest.approx(privacy["epsilon"])  # local: the same
    rows_per_release = privacy["rows_per_release"]
    assert privacy["sensitivity"] == pytest.approx(2**0.5 * rows_per_release**0.5)
    assert privacy["noise_std"] == pytest.approx(2 * privacy["sensitivity"])
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["privacy"]["epsilon"] == pytest.approx(privacy["epsilon"])


def test_noise_is_reproducible_only_when_asked(in_process_run, tmp_path) -> None:
    args = [
        *BASE,
        "num_rounds=1",
        "strategy=fedmd",
        DISTILL,
        "privacy=logit_dp",
        "privacy.mode=central",
    ]
    losses = []
    for name, extra in (("a", "true"), ("b", "true"), ("c", "false")):
        in_process_run([*args, f"privacy.reproducible_noise={extra}"], tmp_path / name)
        losses.append(read_metrics(tmp_path / name)[1]["distill_loss"])
    assert losses[0] == losses[1]
    assert losses[2] != losses[0]


def test_budget_stop_keeps_the_finished_rounds(in_process_run, tmp_path) -> None:
    # the budget bounds the record-level epsilon: central noise z=1 is z/sqrt(2) per record
    budget = (_gaussian_epsilon(0.5**0.5, 2) + _gaussian_epsilon(0.5**0.5, 3)) / 2
    summary = in_process_run(
        [
            *BASE,
            "num_rounds=5",
            "strategy=fedmd",
            DISTILL,
            "privacy=logit_dp",
            "privacy.mode=central",
            f"privacy.max_epsilon={budget}",
        ],
        tmp_path,
    )
    assert summary["status"] == "stopped"
    assert summary["rounds_completed"] == 2
    assert "before round 3" in summary["stopped_reason"]
    assert summary["privacy"]["stopped_by_budget"]
    assert read_metrics(tmp_path)[-1]["epsilon"] == pytest.approx(_gaussian_epsilon(0.5**0.5, 2))
    assert read_metrics(tmp_path)[-1]["epsilon_client"] == pytest.approx(_gaussian_epsilon(1.0, 2))
    assert summary["privacy"]["epsilon"] <= budget
    assert [r["round"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    assert (tmp_path / "summary.json").exists()


def test_pate_releases_noisy_labels_on_answered_queries(in_process_run, tmp_path) -> None:
    summary = in_process_run(
        [
            *BASE,
            "strategy=dsfl",
            DISTILL,
            "client.epochs=5",
            "partition=iid",
            "strategy.proxy_round_size=40",
            "privacy=pate",
            "privacy.sigma=0.5",
            "privacy.threshold=2",
            "privacy.sigma_threshold=0.5",
            # RDP only: a PLD of GNMax at sigma 0.5 takes dp-accounting about a minute to build
            "privacy.accountant=rdp",
        ],
        tmp_path,
    )
    assert summary["status"] == "completed"
    row = read_metrics(tmp_path)[2]
    assert row["pate_queries"] == 40 and 0 < row["pate_answered"] <= 40
    assert row["student_accuracy"] > row["student_accuracy_before_distill"] - 0.2
    assert summary["privacy"]["accounting"].startswith("data-dependent in the count")
    assert summary["privacy"]["worst_case_epsilon"] >= summary["privacy"]["epsilon"]


def test_dpsgd_accountant_persists_across_rounds(in_process_run, tmp_path) -> None:
    summary = in_process_run(
        [*BASE, "strategy=fedavg", "privacy=dpsgd", "privacy.noise_multiplier=1.5"], tmp_path
    )
    assert summary["status"] == "completed"
    rows = read_metrics(tmp_path)
    assert rows[2]["epsilon"] > rows[1]["epsilon"] > 0
    # each client's own Opacus accountant (restored from context.state each round) agrees
    # with the server's dp-accounting ledger for the same schedule
    for row in rows[1:]:
        assert row["client_epsilon_max"] == pytest.approx(row["epsilon"], rel=0.05)
    assert summary["privacy"]["unit"].startswith("record")
    assert set(summary["privacy"]["epsilon_per_client"]) == {"client-0", "client-1", "client-2"}


def test_audit_reports_auc_per_attack_and_target(in_process_run, tmp_path) -> None:
    summary = in_process_run(
        [
            *BASE,
            "strategy=fedmd",
            DISTILL,
            "privacy=none",
            "privacy.audit=true",
            "privacy.audit_shadows=2",
            "privacy.audit_clients=1",
            "privacy.audit_epochs=2",
        ],
        tmp_path,
    )
    audit = summary["privacy"]["audit"]
    assert set(audit["targets"]) == {"student", "client-0"}
    for attacks in audit["targets"].values():
        assert set(attacks) == {"loss", "lira"}
        for result in attacks.values():
            assert 0.0 <= result["auc"] <= 1.0
            assert result["members"] >= result["non_members"] > 0
            # TPR at 1% FPR only where 100 or more non-members resolve it, else a note.
            if result["non_members"] >= 100:
                assert 0.0 <= result["tpr_at_1pct_fpr"] <= 1.0
            else:
                assert result["tpr_at_1pct_fpr"] is None and result["tpr_at_1pct_fpr_note"]
    assert (tmp_path / audit["plot"]).stat().st_size > 0


@pytest.mark.ray
def test_dpsgd_on_ray_matches_the_in_process_engine(tmp_path, in_process_run) -> None:
    """Under Ray each client's accountant history lives in its node context between rounds
    like in process; with reproducible noise every number, epsilon included, is the same."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    args = [
        "dataset=synthetic",
        "dataset.num_samples=300",
        "num_clients=3",
        "num_rounds=2",
        "client.epochs=1",
        "strategy=fedavg",
        "privacy=dpsgd",
        "privacy.reproducible_noise=true",
    ]
    run_dir = tmp_path / "ray"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations.run",
            *args,
            "backend.total_cpus=2",
            "progress=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    in_process_run(args, tmp_path / "inproc")
    drop = ("seconds",)
    ray_rows, inproc_rows = read_metrics(run_dir), read_metrics(tmp_path / "inproc")
    assert ray_rows[2]["epsilon"] > ray_rows[1]["epsilon"]
    assert [{k: v for k, v in r.items() if k not in drop} for r in ray_rows] == [
        {k: v for k, v in r.items() if k not in drop} for r in inproc_rows
    ]


def test_allowed_keys_are_sent_and_said_everything_else_is_withheld(
    in_process_run, tmp_path
) -> None:
    summary = in_process_run(
        [
            *BASE,
            "strategy=dsfl",
            DISTILL,
            "privacy=logit_dp",
            "privacy.allow_unprotected=[train-loss]",
            "strategy.fraction_evaluate=1.0",  # evaluation rounds: withheld, so not run
        ],
        tmp_path,
    )
    privacy = summary["privacy"]
    rows = {(r["message"], r["key"]): r for r in privacy["releases"]}
    assert rows[("train", "metrics/train-loss")] == {
        "message": "train",
        "key": "metrics/train-loss",
        "protection": "none",
        "allowed": True,
    }
    assert privacy["unprotected"] == ["train:metrics/train-loss"]
    assert ("train", "metrics/local-accuracy") not in rows  # not named: withheld
    assert not any(message == "evaluate" for message, _ in rows)
    last = read_metrics(tmp_path)[-1]
    assert "train_loss" in last and "client_accuracy" not in last
    assert "ensemble_accuracy" not in last  # needs the clients' raw test predictions


def test_poisson_client_sampling_is_credited(in_process_run, tmp_path) -> None:
    summary = in_process_run(
        [
            "num_clients=6",
            "num_rounds=4",
            "client.epochs=1",
            "strategy=dsfl",
            DISTILL,
            "strategy.fraction_train=0.5",
            "privacy=logit_dp",
            "privacy.mode=central",
            "privacy.client_sampling=poisson",
            "privacy.reproducible_noise=true",
        ],
        tmp_path,
    )
    assert summary["status"] == "completed"
    rows = read_metrics(tmp_path)[1:]
    assert len({r["clients_sampled"] for r in rows}) > 1  # Poisson: the count varies
    sampled = dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(1.0))
    accountant = rdp.RdpAccountant()
    accountant.compose(sampled, 4)
    assert rows[-1]["epsilon_client"] == pytest.approx(accountant.get_epsilon(1e-5))
    assert summary["privacy"]["client_sampling"].startswith("poisson (q=0.5")


def test_per_client_budget_retires_clients_and_the_federation_goes_on(
    in_process_run, tmp_path
) -> None:
    one, two = _gaussian_epsilon(2.0, 1, 1e-3), _gaussian_epsilon(2.0, 2, 1e-3)
    summary = in_process_run(
        [
            "num_clients=4",
            "num_rounds=4",
            "client.epochs=1",
            "strategy=dsfl",
            DISTILL,
            "strategy.fraction_train=0.5",
            "privacy=logit_dp",
            "privacy.noise_multiplier=2",
            "privacy.budget=client",
            f"privacy.max_epsilon={(one + two) / 2}",
            "privacy.delta=1e-3",
        ],
        tmp_path,
    )
    rows = read_metrics(tmp_path)[1:]
    # every client can afford one round: two a round (half of 4), so rounds 1-2 run
    assert [r["clients_sampled"] for r in rows] == [2, 2]
    assert (
        summary["status"] == "stopped"
        and "every client's budget is spent" in summary["stopped_reason"]
    )
    assert sorted(summary["privacy"]["clients_exhausted"]) == [0, 1, 2, 3]
    assert all(e <= (one + two) / 2 for e in summary["privacy"]["epsilon_per_client"].values())
