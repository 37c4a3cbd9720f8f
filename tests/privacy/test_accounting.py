"""(epsilon, delta) from the ledger equals dp-accounting called directly; budget stops."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from fedkd.privacy import PrivacyBudgetExhausted, PrivacyController, PrivacySpec
from fedkd.privacy.accounting import PrivacyLedger, gaussian, poisson_gaussian


def _direct(event, count: int, delta: float) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))


def test_gaussian_composition_matches_dp_accounting() -> None:
    ledger = PrivacyLedger(1e-5)
    for _ in range(10):
        ledger.add("federation", gaussian(1.0))
    assert ledger.epsilon("federation") == pytest.approx(
        _direct(dp_accounting.GaussianDpEvent(1.0), 10, 1e-5), rel=1e-12
    )
    assert ledger.epsilon("federation") == pytest.approx(19.0536, abs=1e-3)  # FLOWER_FACTS 28


def test_poisson_sampled_steps_match_dp_accounting() -> None:
    ledger = PrivacyLedger(1e-6)
    ledger.add("client-0", poisson_gaussian(0.1, 1.2), 30)
    ledger.add("client-0", poisson_gaussian(0.1, 1.2), 20)
    event = dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.2))
    assert ledger.epsilon("client-0") == pytest.approx(_direct(event, 50, 1e-6), rel=1e-12)


def test_projection_does_not_charge() -> None:
    ledger = PrivacyLedger(1e-5)
    ledger.add("u", gaussian(2.0), 3)
    before = ledger.epsilon("u")
    projected = ledger.epsilon("u", [(gaussian(2.0), 1)])
    assert projected > before
    assert ledger.epsilon("u") == before
    ledger.add("u", gaussian(2.0))
    assert ledger.epsilon("u") == pytest.approx(projected)


def _charge(controller: PrivacyController, server_round: int, partitions=(0, 1, 2)) -> None:
    controller.charge_round(
        server_round,
        list(partitions),
        proxy_rows=50,
        client_examples={p: 100 for p in partitions},
        local_epochs=2,
        batch_size=10,
    )


def test_budget_stops_before_the_round_that_would_exceed_it() -> None:
    delta = 1e-5
    # epsilon after r rounds of Gaussian(z=2) composed, per client (local logit_dp)
    eps = [_direct(dp_accounting.GaussianDpEvent(2.0), r, delta) for r in range(1, 8)]
    budget = (eps[3] + eps[4]) / 2  # rounds 1..4 fit, round 5 would exceed
    spec = PrivacySpec.from_config(
        {"name": "logit_dp", "noise_multiplier": 2.0, "max_epsilon": budget, "delta": delta}
    )
    controller = PrivacyController(spec, seed=0)
    for server_round in range(1, 5):
        _charge(controller, server_round)
        assert controller.round_metrics(server_round)["epsilon"] == pytest.approx(
            eps[server_round - 1]
        )
    with pytest.raises(PrivacyBudgetExhausted, match="before round 5"):
        _charge(controller, 5)
    assert controller.ledger.max_epsilon() == pytest.approx(eps[3])  # round 5 not charged
    summary = controller.summary(proxy_rows=50)
    assert summary["stopped_by_budget"] and "round 5" in summary["stopped_reason"]
    assert summary["rounds_accounted"] == 4


def test_local_logit_dp_charges_only_sampled_clients() -> None:
    spec = PrivacySpec.from_config({"name": "logit_dp"})
    controller = PrivacyController(spec, seed=0)
    _charge(controller, 1, partitions=(0, 1))
    _charge(controller, 2, partitions=(1, 2))
    per_unit = controller.ledger.per_unit()
    assert per_unit["client-1"] > per_unit["client-0"] == pytest.approx(per_unit["client-2"])


def test_dpsgd_charges_the_opacus_schedule_per_client() -> None:
    from fedkd.privacy.dpsgd import dpsgd_schedule

    spec = PrivacySpec.from_config({"name": "dpsgd", "noise_multiplier": 1.1})
    controller = PrivacyController(spec, seed=0)
    controller.charge_round(
        1, [0, 1], proxy_rows=0, client_examples={0: 95, 1: 40}, local_epochs=3, batch_size=16
    )
    for partition, n in ((0, 95), (1, 40)):
        rate, steps = dpsgd_schedule(n, 16, 3)
        event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(1.1))
        assert controller.ledger.epsilon(f"client-{partition}") == pytest.approx(
            _direct(event, steps, 1e-5), rel=1e-12
        )


def test_central_logit_dp_is_charged_at_release() -> None:
    spec = PrivacySpec.from_config({"name": "logit_dp", "mode": "central", "clip": 0.5})
    controller = PrivacyController(spec, seed=0)
    _charge(controller, 1)
    assert controller.ledger.max_epsilon() == 0.0  # nothing released yet
    shared = np.full((3, 50, 4), 0.25)
    release = controller.release(1, shared)
    assert release.targets.shape == (50, 4)
    np.testing.assert_allclose(release.targets.sum(axis=1), 1.0, rtol=1e-5)
    assert controller.ledger.epsilon("federation") == pytest.approx(
        _direct(dp_accounting.GaussianDpEvent(1.0), 1, 1e-5)
    )
    assert release.details["sensitivity"] == pytest.approx(0.5 * np.sqrt(50))


def test_pate_charges_answers_and_threshold_checks() -> None:
    spec = PrivacySpec.from_config(
        {
            "name": "pate",
            "sigma": 4.0,
            "threshold": 5.0,
            "sigma_threshold": 3.0,
            "reproducible_noise": True,
        }
    )
    controller = PrivacyController(spec, seed=0)
    votes = np.zeros((6, 20, 3))
    votes[:, :10, 0] = 1  # 10 unanimous queries
    votes[:2, 10:, 0] = 1  # 10 split 2/2/2 queries
    votes[2:4, 10:, 1] = 1
    votes[4:, 10:, 2] = 1
    release = controller.release(1, votes)
    answered = len(release.rows)
    assert 0 < answered < 20
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(4.0 / np.sqrt(2)), answered)
    accountant.compose(dp_accounting.GaussianDpEvent(3.0), 20)
    assert controller.ledger.epsilon("federation") == pytest.approx(
        accountant.get_epsilon(1e-5), rel=1e-12
    )
    assert controller.round_metrics(1)["pate_answered"] == answered
