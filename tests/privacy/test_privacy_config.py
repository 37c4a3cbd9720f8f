"""Bad privacy input fails in prepare_run (before Ray) with a ConfigError naming the key."""

from __future__ import annotations

import pytest

from fedkd.apps.server import prepare_run
from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.privacy import PrivacySpec

DIGITS = ["num_clients=4", "num_rounds=1", "backend=inline"]


def _prepare(overrides: list[str]) -> None:
    prepare_run(compose_config([*DIGITS, *overrides]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["privacy=logit_dp", "privacy.noise_multiplier=0"],
            "privacy.noise_multiplier must be > 0",
        ),
        (["privacy=dpsgd", "privacy.noise_multiplier=-1"], "privacy.noise_multiplier must be > 0"),
        (["privacy=logit_dp", "privacy.clip=0"], "privacy.clip must be > 0"),
        (["privacy=dpsgd", "privacy.max_grad_norm=0"], "privacy.max_grad_norm must be > 0"),
        (["privacy=pate", "privacy.max_epsilon=0"], "privacy.max_epsilon must be > 0"),
        (["privacy=pate", "privacy.sigma=0"], "privacy.sigma must be > 0"),
        (["privacy=pate", "privacy.delta=1.5"], r"privacy.delta must be in \(0, 1\)"),
        (["privacy=logit_dp", "privacy.mode=global"], "privacy.mode must be one of"),
        (["privacy=pate", "privacy.threshold=5"], "privacy.threshold and privacy.sigma_threshold"),
        (["privacy=logit_dp", "+privacy.sigmaa=1"], r"unknown option\(s\) \['privacy.sigmaa'\]"),
        (["privacy=none", "privacy.name=laplace"], "privacy.name must be one of"),
        (["privacy=none", "privacy.audit_shadows=1"], "privacy.audit_shadows must be"),
        (["privacy=none", "privacy.audit_attacks=[loss,mystery]"], "privacy.audit_attacks"),
        (
            ["privacy=logit_dp", "privacy.allow_unprotected=[train-loss,secret-sauce]"],
            r"privacy.allow_unprotected names \['secret-sauce'\], which no client sends",
        ),
        (["privacy=logit_dp", "privacy.budget=hospital"], "privacy.budget must be one of"),
        (["privacy=logit_dp", "privacy.accountant=moments"], "privacy.accountant must be one of"),
        (["privacy=pate", "privacy.client_sampling=bernoulli"], "privacy.client_sampling must be"),
        (["privacy=pate", "privacy.target_epsilon=-1"], "privacy.target_epsilon must be > 0"),
        (
            ["privacy=pate", "privacy.target_epsilon=9", "privacy.max_epsilon=8"],
            "privacy.target_epsilon=9 exceeds privacy.max_epsilon=8",
        ),
        (
            ["privacy=pate", "diagnostics.client_test_predictions=true"],
            "diagnostics.client_test_predictions=true sends every client's raw predictions",
        ),
        (["diagnostics.client_test_predictions=maybe"], "diagnostics.client_test_predictions must"),
        (
            [
                "privacy=pate",
                "privacy.target_epsilon=0.5",
                "privacy.threshold=5",
                "privacy.sigma_threshold=0.3",
            ],
            r"privacy.target_epsilon=0.5 cannot be reached over 1 rounds",
        ),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _prepare(["strategy=dsfl", *overrides])


def test_delta_must_be_below_one_over_the_number_of_units() -> None:
    # client-level unit: 4 clients, so delta must be < 0.25
    with pytest.raises(ConfigError, match=r"privacy.delta=0.3 must be < 1/num_clients = 1/4"):
        _prepare(["strategy=dsfl", "privacy=logit_dp", "privacy.delta=0.3"])
    # example-level unit (DP-SGD): 1/n of the smallest client's training set
    with pytest.raises(ConfigError, match=r"privacy.delta=0.1 must be < 1/n = 1/\d+"):
        _prepare(["strategy=fedavg", "privacy=dpsgd", "privacy.delta=0.1"])
    _prepare(["strategy=dsfl", "privacy=logit_dp", "privacy.delta=0.2"])  # fine


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy=fedavg", "privacy=logit_dp"], "shares weights; use strategy=fedmd"),
        (["strategy=feddf", "privacy=pate"], "shares weights"),
        (
            ["strategy=feddf", "strategy.teacher_from=predictions", "privacy=logit_dp"],
            "shares weights",
        ),
        (["strategy=fd", "data.proxy_labeled=true", "privacy=logit_dp"], "shares no proxy"),
        (
            ["strategy=fd", "data.proxy_labeled=true", "privacy=dpsgd"],
            r"private data \(label-logits\)",
        ),
        (["strategy=fedproto", "privacy=dpsgd"], r"private data \(prototypes\)"),
        (["strategy=centralized", "privacy=dpsgd"], "trains centrally"),
        (["strategy=dsfl", "privacy=logit_dp", "aggregation=confidence"], "use aggregation=mean"),
        (["strategy=fedavg", "privacy=dpsgd", "client.born_again={}"], "client.born_again"),
    ],
)
def test_a_mechanism_with_a_method_it_cannot_protect_is_refused(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _prepare(overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy=fedmd", "privacy=logit_dp", "privacy.mode=central"],
        ["strategy=fedet", "privacy=pate"],
        ["strategy=feddf", "privacy=dpsgd"],
        ["strategy=local_only", "privacy=dpsgd"],
        ["strategy=centralized", "privacy=none", "privacy.audit=true"],
    ],
)
def test_valid_combinations_prepare(overrides: list[str]) -> None:
    _prepare(overrides)


def test_spec_round_trips_through_the_client_setup() -> None:
    spec = PrivacySpec.from_config({"name": "pate", "threshold": 3.0, "sigma_threshold": 1.0})
    assert PrivacySpec.from_dict(spec.to_dict()) == spec
    assert spec.confident and spec.enabled and "client" in spec.unit
    assert not PrivacySpec.from_dict(None).enabled


def test_options_of_another_mechanism_left_by_a_preset_are_ignored(caplog) -> None:
    _prepare(["experiment=healthcare", "privacy=pate", "strategy=dsfl", "num_clients=5"])
    assert "privacy=pate ignores ['privacy.max_grad_norm', 'privacy.noise_multiplier']" in (
        caplog.text
    )


def test_label_histograms_are_withheld_so_label_aware_rules_are_refused() -> None:
    overrides = [
        "strategy=feddf",
        "strategy.teacher_space=probs",
        "privacy=dpsgd",
        "aggregation=label_aware",
        "privacy.delta=1e-3",
    ]
    with pytest.raises(ConfigError, match="aggregation=label_aware weighs clients by their label"):
        _prepare(overrides)
    _prepare([*overrides, "privacy.allow_unprotected=[label-histogram]"])  # named: allowed


def test_target_epsilon_sets_the_noise_the_clients_receive() -> None:
    plan = prepare_run(
        compose_config([*DIGITS, "strategy=dsfl", "privacy=logit_dp", "privacy.target_epsilon=3"])
    )
    spec = plan.assets.privacy
    assert spec.noise_multiplier != 1.0 and spec.target_epsilon == 3.0
    # what travels to the clients is the calibrated mechanism
    assert PrivacySpec.from_dict(plan.assets.setup.privacy) == spec
    assert plan.strategy.privacy.spec == spec
    assert plan.strategy.privacy.worst_case_epsilon == pytest.approx(3.0, rel=1e-3)


def test_diagnostics_follow_the_mechanism() -> None:
    def switch(*overrides: str) -> bool:
        plan = prepare_run(compose_config([*DIGITS, "strategy=dsfl", *overrides]))
        return plan.assets.client_test_predictions

    assert switch()  # no mechanism: on
    assert not switch("privacy=logit_dp")  # unprotected under logit_dp: off
    assert switch("privacy=dpsgd", "privacy.delta=1e-3")  # DP-SGD model outputs: on
    assert switch(
        "privacy=logit_dp",
        "diagnostics.client_test_predictions=true",
        "privacy.allow_unprotected=[test-probs]",
    )
    assert not switch("diagnostics.client_test_predictions=false")


def test_evaluation_rounds_need_both_evaluation_keys_allowed() -> None:
    from strategies.core.private_rounds import evaluation_withheld

    assert not evaluation_withheld(PrivacySpec())  # no mechanism: evaluate as configured
    spec = PrivacySpec.from_config({"name": "pate"})
    assert evaluation_withheld(spec)
    partly = PrivacySpec.from_config({"name": "pate", "allow_unprotected": ["accuracy"]})
    assert evaluation_withheld(partly)
    both = PrivacySpec.from_config(
        {"name": "pate", "allow_unprotected": ["accuracy", "num-examples"]}
    )
    assert not evaluation_withheld(both)
