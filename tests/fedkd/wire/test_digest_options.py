"""The digest's optimizer is a strategy option (FedMD's paper digests with SGD): sent only
when it is not Adam, read back by clients, and used by the client's digest."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord

import fedkd.wire.payloads.proxy as proxy
from fedkd.errors import ConfigError
from fedkd.wire import keys
from fedkd.wire.payloads.proxy import DigestOptions

BASE = dict(epochs=1, lr=0.05, batch_size=8, temperature=None, soft_loss=None)


def test_adam_digests_send_the_round_config_of_before() -> None:
    config = DigestOptions(**BASE, warmup_public_epochs=0).to_config()
    assert keys.DIGEST_OPTIMIZER not in config and keys.DIGEST_MOMENTUM not in config
    read = DigestOptions.from_config(ConfigRecord(config))
    assert read is not None and (read.optimizer, read.momentum) == ("adam", 0.9)


def test_an_sgd_digest_travels_to_the_client() -> None:
    sent = DigestOptions(**BASE, warmup_public_epochs=0, optimizer="sgd", momentum=0.5)
    config = sent.to_config()
    assert config[keys.DIGEST_OPTIMIZER] == "sgd" and config[keys.DIGEST_MOMENTUM] == 0.5
    assert DigestOptions.from_config(ConfigRecord(config)) == sent


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer": "rmsprop"}, "strategy.digest_optimizer must be one of"),
        ({"momentum": -0.1}, "strategy.digest_momentum must be >= 0"),
        ({"momentum": "x"}, "strategy.digest_momentum must be a number"),
    ],
)
def test_bad_digest_optimizers_are_refused_under_their_keys(changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        DigestOptions(**BASE, warmup_public_epochs=0, **changes)


def test_the_clients_digest_uses_the_configured_optimizer(
    in_process_run, small_overrides, tmp_path, monkeypatch
) -> None:
    used: list[tuple[str, float, float]] = []
    real = proxy.distill

    def recording(*args, **kwargs):
        used.append((kwargs["optimizer"], kwargs["momentum"], kwargs["lr"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(proxy, "distill", recording)
    overrides = small_overrides(2, "model.hidden=[8]", "student.hidden=[8]", "num_rounds=2")
    overrides += ["strategy=fedmd", "strategy.digest_optimizer=sgd"]
    overrides += ["strategy.digest_momentum=0.5", "strategy.digest_lr=0.05"]
    summary = in_process_run(overrides, tmp_path)
    assert summary["status"] == "completed"
    assert used and set(used) == {("sgd", 0.5, 0.05)}  # round 2: both clients digest
