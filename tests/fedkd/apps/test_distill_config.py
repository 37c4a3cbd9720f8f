"""Distillation settings are checked in prepare_run, before Ray starts, with clear errors."""

from __future__ import annotations

import pytest

from fedkd.apps.server import prepare_run
from fedkd.config import compose_config
from fedkd.errors import ConfigError

SMALL = ["num_clients=3"]


def _prepare(*overrides: str) -> object:
    return prepare_run(compose_config([*SMALL, *overrides]))


def test_feature_losses_need_a_strategy_with_teacher_models() -> None:
    for loss in ("hint", "feature", "combo"):
        with pytest.raises(ConfigError, match="teacher_from=weights"):
            _prepare(f"distill={loss}", "strategy=fedmd")
        with pytest.raises(ConfigError, match="teacher_from=weights"):
            _prepare(f"distill={loss}", "strategy=feddf", "strategy.teacher_from=predictions")
    plan = _prepare("distill=hint", "strategy=feddf")
    assert plan.assets.distill_loss.needs_teacher_features  # type: ignore[attr-defined]


def test_missing_hint_layer_is_named() -> None:
    with pytest.raises(ConfigError, match="hidden7") as info:
        _prepare("distill=hint", "distill.student_layer=hidden7")
    assert "hidden1" in str(info.value)  # the layers that do exist
    with pytest.raises(ConfigError, match="conv9"):
        _prepare("distill=hint", "model=cnn", "distill.teacher_layer=conv9")


def test_attention_needs_feature_maps() -> None:
    with pytest.raises(ConfigError, match="attention"):
        _prepare("distill=attention")  # MLP client models and student have no maps
    plan = _prepare("distill=attention", "model=cnn", "student=cnn")
    assert len(list(plan.assets.distill_loss.parameters())) == 0  # type: ignore[attr-defined]


def test_temperature_must_be_positive() -> None:
    for loss in ("kd", "self"):
        with pytest.raises(ConfigError, match=r"distill\.temperature"):
            _prepare(f"distill={loss}", "distill.temperature=0")
    with pytest.raises(ConfigError, match=r"distill\.temperature"):
        _prepare("distill.temperature=-1")
    with pytest.raises(ConfigError, match=r"distill\.terms\[0\]\.temperature"):
        _prepare("distill=combo", "distill.terms=[{name:kd,weight:1.0,temperature:0}]")


def test_unknown_loss_and_option_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"distill\.name"):
        _prepare("distill.name=fitnets")
    with pytest.raises(ConfigError, match=r"distill\.tempreature"):
        _prepare("+distill.tempreature=2")


def test_hint_adapters_are_created_before_training_and_seeded() -> None:
    a = _prepare("distill=hint", "model=cnn")
    b = _prepare("distill=hint", "model=cnn")
    params_a = [p.detach().clone() for p in a.assets.distill_loss.parameters()]  # type: ignore[attr-defined]
    params_b = list(b.assets.distill_loss.parameters())  # type: ignore[attr-defined]
    assert params_a and all((x == y).all() for x, y in zip(params_a, params_b, strict=True))


def test_client_self_distillation_and_born_again_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"client\.self_distill"):
        _prepare("client.self_distill={temperature:0}")
    with pytest.raises(ConfigError, match=r"client\.self_distill"):
        _prepare("client.self_distill={}", "model.hidden=[]")  # no early exit to supervise
    with pytest.raises(ConfigError, match=r"client\.born_again\.alpha"):
        _prepare("client.born_again={generations:1,alpha:2}")
    _prepare("client.self_distill={}", "client.born_again={generations:1}")


def test_augmentation_must_fit_the_input() -> None:
    with pytest.raises(ConfigError, match=r"augment\.transforms\[0\]"):
        _prepare("augment=image", "dataset=synthetic", "dataset.num_samples=300")


def test_null_distill_options_take_the_loss_defaults() -> None:
    plan = _prepare("distill=self", "distill.temperature=null")
    assert "temperature" not in plan.config["distill"]
    assert plan.assets.distill_loss.temperature == 3.0  # type: ignore[attr-defined]


def test_fedmd_digests_with_the_papers_l1_and_dsfl_follows_the_loss() -> None:
    from fedkd.wire import keys

    fedmd = _prepare("strategy=fedmd").strategy
    assert fedmd.train_config(1)[keys.DIGEST_SOFT_LOSS] == "mae"
    dsfl = _prepare("strategy=dsfl").strategy
    assert keys.DIGEST_SOFT_LOSS not in dsfl.train_config(1)
    with pytest.raises(ConfigError, match=r"strategy\.digest_soft_loss"):
        _prepare("strategy=fedmd", "strategy.digest_soft_loss=l1")


def test_client_digest_loss_follows_the_run_and_the_strategy_overrides() -> None:
    from fedkd.wire.payloads.proxy import DigestOptions
    from fedkd.wire.payloads.proxy import digest_loss as _digest_loss

    def digest(temperature: float | None = None, soft_loss: str | None = None) -> DigestOptions:
        return DigestOptions(2, 1e-3, 32, temperature, soft_loss, 0)

    setup = _prepare("distill.temperature=2.5", "distill.soft_loss=mse").assets.setup
    plain = _digest_loss(setup, digest())
    assert (plain.temperature, plain.soft_loss) == (2.5, "mse")  # type: ignore[attr-defined]
    overridden = _digest_loss(setup, digest(temperature=4.0, soft_loss="mae"))
    assert (overridden.temperature, overridden.soft_loss) == (4.0, "mae")  # type: ignore[attr-defined]
    assert _digest_loss(setup, digest()) is not plain  # fresh per digest
    self_setup = _prepare("distill=self").assets.setup
    assert _digest_loss(self_setup, digest(soft_loss="mae")).loss_name == "self"


def test_digest_options_travel_as_sent_and_clients_keep_no_defaults() -> None:
    """The strategy's DigestOptions (from its YAML) is what a client reads back from the
    round config; a round config without the digest keys has no digest, and one that lacks
    a key the strategy sends fails naming it."""
    from flwr.app import ConfigRecord

    from fedkd.wire import keys
    from fedkd.wire.payloads.proxy import DigestOptions

    strategy = _prepare(
        "strategy=fedmd", "strategy.digest_lr=0.002", "strategy.digest_temperature=3"
    ).strategy
    config = ConfigRecord(strategy.train_config(1))
    sent = DigestOptions.from_config(config)
    assert sent == DigestOptions(1, 0.002, 256, 3.0, "mae", 0) == strategy.digest  # type: ignore[attr-defined]
    assert DigestOptions.from_config(ConfigRecord({})) is None
    del config[keys.DIGEST_BATCH_SIZE]
    with pytest.raises(ConfigError, match="digest-batch-size"):
        DigestOptions.from_config(config)
    dsfl = DigestOptions.from_config(
        ConfigRecord(_prepare("strategy=dsfl").strategy.train_config(1))
    )
    assert dsfl is not None and (dsfl.temperature, dsfl.soft_loss) == (None, None)


def test_self_distillation_with_a_regularizing_method_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="fedkd.apps.plan"):
        _prepare("strategy=fd", "data.proxy_labeled=true", "client.self_distill={}")
    assert "no effect with strategy 'fd'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fedkd.apps.plan"):
        _prepare("strategy=fedmd", "client.self_distill={}")
    assert "no effect" not in caplog.text
