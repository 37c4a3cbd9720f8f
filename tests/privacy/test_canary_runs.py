"""The one-run canary audit on real runs: clearly positive where nothing protects the
release, never above the claimed record-level epsilon under a mechanism, and a missing
noise would be caught (the same setting without noise exceeds the claim)."""

from __future__ import annotations

import pytest

#: Clients that memorise their data (20 epochs a round) and share predictions on the whole
#: proxy every round: the canary audit's most sensitive setting.
LEAKY = [
    "strategy=dsfl",
    "num_clients=5",
    "num_rounds=3",
    "client.epochs=20",
    "strategy.distill_epochs=2",
    "privacy.audit=true",
    "privacy.audit_attacks=[loss]",
    "privacy.audit_clients=0",
    "privacy.audit_canaries=200",
]
PRIVATE = ["++privacy.reproducible_noise=true", "++privacy.delta=1e-5"]


def _canary(summary: dict) -> dict:
    return summary["privacy"]["audit"]["canary"]


def test_unprotected_release_shows_membership_and_local_noise_hides_it(
    in_process_run, tmp_path
) -> None:
    plain = _canary(in_process_run(LEAKY, tmp_path / "plain"))
    assert plain["canaries"] == 200 and 60 < plain["planted"] < 140
    released = plain["targets"]["released"]
    assert released["epsilon_lower_bound"] > 1.5  # the clients' raw rows reveal canaries
    assert released["correct"] > 0.9 * released["guesses"]
    # the same run with local noise z=5: epsilon 1.3 claimed for a record
    summary = in_process_run(
        [*LEAKY, "privacy=logit_dp", "privacy.mode=local", "privacy.noise_multiplier=5", *PRIVATE],
        tmp_path / "noised",
    )
    claim = summary["privacy"]["epsilon"]
    assert 0.5 < claim < plain["targets"]["released"]["epsilon_lower_bound"]
    noised = _canary(summary)
    assert noised["epsilon_lower_bound"] <= claim
    assert summary["privacy"]["audit"]["epsilon_lower_bound"] == noised["epsilon_lower_bound"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mechanism", "observed"),
    [
        (["privacy=logit_dp", "privacy.mode=central", "privacy.noise_multiplier=0.5"], "targets"),
        (["privacy=logit_dp", "privacy.mode=local", "privacy.noise_multiplier=0.3"], "client"),
        # RDP only: a PLD of GNMax at sigma 1 takes dp-accounting about a minute to build
        (["privacy=pate", "privacy.sigma=1", "privacy.accountant=rdp"], "targets"),
        (["privacy=dpsgd", "privacy.noise_multiplier=0.7"], "client"),
    ],
)
def test_the_lower_bound_never_exceeds_the_claim(
    in_process_run, tmp_path, mechanism, observed
) -> None:
    summary = in_process_run([*LEAKY, *mechanism, *PRIVATE], tmp_path)
    canary = _canary(summary)
    assert observed in canary["released"]
    assert 0.0 <= canary["epsilon_lower_bound"] <= summary["privacy"]["epsilon"]
