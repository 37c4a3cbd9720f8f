"""Configs that cannot work are refused before any client runs (``prepare_run``, and the
CLI in one line with exit code 2), naming the key as the user typed it."""

from __future__ import annotations

import pytest

from fedkd.apps.server import prepare_run
from fedkd.config import check_overrides, compose_config
from fedkd.errors import ConfigError

SMALL = ["num_clients=3", "num_rounds=1", "backend=inline"]


def _prepare(*overrides: str) -> None:
    prepare_run(compose_config([*SMALL, *overrides]))


@pytest.mark.parametrize("strategy", ["fedavg", "local_only", "centralized"])
def test_teacher_rule_without_a_teacher_ensemble_is_refused(strategy):
    with pytest.raises(ConfigError, match=f"aggregation=median .* strategy {strategy} forms no"):
        _prepare(f"strategy={strategy}", "aggregation=median")


@pytest.mark.parametrize("strategy", ["feddf", "fedmd", "dsfl"])
def test_teacher_rule_of_an_ensemble_method_is_kept(strategy):
    space = ["strategy.teacher_space=probs"]  # the robust rules average probabilities
    plan = prepare_run(
        compose_config([*SMALL, f"strategy={strategy}", "aggregation=median", *space])
    )
    assert plan.strategy.target_rule["name"] == "median"


def test_min_train_replies_above_the_sampled_clients_is_refused():
    with pytest.raises(ConfigError, match=r"strategy\.min_train_replies=100 .* the 3 client"):
        _prepare("strategy=fedavg", "strategy.min_train_replies=100")
    # round(0.5 * 3) = 2 sampled per round: 3 cannot be met, 2 can
    with pytest.raises(ConfigError, match=r"strategy\.min_train_replies=3 .* the 2 client"):
        _prepare("strategy.fraction_train=0.5", "strategy.min_train_replies=3")
    _prepare("strategy.fraction_train=0.5", "strategy.min_train_replies=2")


def test_unknown_top_level_key_is_refused():
    with pytest.raises(
        ConfigError, match=r"unknown top-level key\(s\) \['foo'\]; valid keys: .*seed"
    ):
        _prepare("+foo=1")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy.distill_lr=abc", "strategy.distill_lr must be a number, got 'abc'"),
        ("strategy.distill_epochs=1.5", "strategy.distill_epochs must be an integer, got 1.5"),
        ("strategy.fraction_train=abc", "strategy.fraction_train must be a number, got 'abc'"),
        ("strategy.min_train_replies=true", "strategy.min_train_replies must be an integer"),
        ("strategy.distill_lr=0", "strategy.distill_lr must be > 0"),
        ("strategy.distill_optimizer=rmsprop", "strategy.distill_optimizer must be one of"),
        # options the strategy passes on to its clients' payloads, typed under their keys
        ("strategy=fedmd strategy.digest_lr=abc", "strategy.digest_lr must be a number"),
        ("strategy=fedmd strategy.digest_lr=0", "strategy.digest_lr must be > 0"),
        ("strategy=dsfl strategy.digest_epochs=1.5", "strategy.digest_epochs must be an integer"),
        ("strategy=dsfl strategy.digest_temperature=x", "strategy.digest_temperature must be a"),
        ("strategy=fedet strategy.digest_batch_size=0", "strategy.digest_batch_size must be >= 1"),
        ("strategy=fd strategy.beta=abc", "strategy.beta must be a number, got 'abc'"),
        ("strategy=fd strategy.temperature=inf", "strategy.temperature must be a finite number"),
        # the client block and the setup every client receives
        ("client.epochs=abc", "client.epochs must be an integer, got 'abc'"),
        ("client.lr=abc", "client.lr must be a number, got 'abc'"),
        ("client.momentum=abc", "client.momentum must be a number, got 'abc'"),
        ("client.weight_decay=-1", "client.weight_decay must be >= 0"),
        ("client.optimizer=3", "client.optimizer must be a string"),
        ("data.proxy_labeled=abc", "data.proxy_labeled must be true or false, got 'abc'"),
        ("backend.torch_threads=abc", "backend.torch_threads must be an integer, got 'abc'"),
        ("backend.torch_threads=-1", "backend.torch_threads must be >= 0"),
    ],
)
def test_numbers_are_checked_at_construction_under_their_keys(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        _prepare(*override.split())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["dataset=nope"],
            r"dataset=nope: dataset has no option 'nope'; choose one of \[.*'digits'",
        ),
        (["strategy=fedavg,nope"], r"strategy=fedavg,nope: strategy has no option 'nope'"),
        (["foo=1"], r"foo=1: unknown key 'foo'; valid keys: .*num_rounds"),
        (["+foo=1"], r"\+foo=1: unknown key 'foo'"),
        # a nested key the chosen option does not have, with the keys it has
        (["aggregation.trim=0.1"], r"aggregation.trim=0.1: aggregation has no key 'trim'; valid"),
        (
            ["strategy=fedproto", "strategy.lambda_proto=1"],
            r"strategy has no key 'lambda_proto'; valid keys: .*proto_weight",
        ),
        (["client.lrr=0.1"], r"client.lrr=0.1: client has no key 'lrr'; valid keys: .*lr"),
    ],
)
def test_command_line_overrides_are_checked_against_groups_and_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_overrides(overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy=fedavg,feddf", "aggregation=glob(*)"],  # -m sweeps
        ["strategy.distill_lr=0.01", "+strategy.extra=1", "++seed=3", "~resume"],
        ["hydra.run.dir=/tmp/x", "hydra/sweeper=basic", "experiment=finance", "experiment=null"],
        ["num_rounds=range(1,3)", "dataset=choice(digits,mnist1d)"],
        ["aggregation=trimmed_mean", "aggregation.trim=0.1", "dataset=synthetic"],
        ["dataset=synthetic", "dataset.num_samples=50", "+aggregation.extra=1"],
        ["experiment=finance", "privacy.target_epsilon=2"],
        ["strategy=fedavg,feddf", "strategy.fraction_train=0.5"],
    ],
)
def test_valid_command_line_overrides_pass(overrides):
    check_overrides(overrides)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["dataset=nope"], "digits"),
        (["foo=1"], "num_rounds"),
        (["+foo=1"], "num_rounds"),
        (["-m", "strategy=fedavg,nope"], "feddf"),
        (["strategy=fedavg", "aggregation=median"], "aggregation=median"),
        (["strategy.min_train_replies=100", "num_clients=3"], "strategy.min_train_replies=100"),
        (["strategy.distill_lr=abc"], "strategy.distill_lr must be a number, got 'abc'"),
        (["aggregation.trim=0.1"], "aggregation has no key 'trim'"),
        (["strategy=fedmd", "strategy.digest_lr=abc"], "strategy.digest_lr must be a number"),
    ],
)
def test_cli_refuses_in_at_most_three_lines_with_exit_code_2(args, named, tmp_path, simulation_cli):
    run_dir = tmp_path / "never"
    proc = simulation_cli(
        *args,
        "backend=inline",
        f"hydra.run.dir={run_dir}",
        timeout=120,
        env={"HYDRA_FULL_ERROR": "0"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3, proc.stderr
    assert lines[-1].startswith("fedkd: invalid configuration: ") and named in lines[-1]
    assert not run_dir.exists()
