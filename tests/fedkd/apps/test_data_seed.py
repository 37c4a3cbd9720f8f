"""``data_seed`` fixes the federation's data (test/proxy split, proxy cap, partition, local
splits) while ``seed`` keeps initialisation, sampling and batch order; ``null`` follows
``seed``, which leaves every random stream as it was before the key existed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from fedkd.apps.plan import build_setup
from fedkd.apps.runtime import _client_data
from fedkd.config import check_top_level, compose_config
from fedkd.data import build_federated_data, get_federated_data, partition_indices, write_local_data
from fedkd.errors import ConfigError
from fedkd.privacy.config import PrivacySpec
from fedkd.run.checkpoint import check_resumable
from fedkd.run.results import PARTITIONS_FILE, read_metrics
from fedkd.setup import FederationSetup

# digits, 5 clients, Dirichlet label skew and a capped proxy: every data-side stream is used
TASK = [
    "dataset=digits",
    "partition=dirichlet",
    "partition.alpha=0.5",
    "num_clients=5",
    "data.proxy_size=100",
]


def _data(*overrides: str):
    setup = build_setup(compose_config([*TASK, *overrides]))
    return setup, get_federated_data(**setup.data_kwargs())


def _same_data(a, b) -> bool:
    arrays = ("train_y", "test_x", "test_y", "proxy_x", "proxy_labels_for_diagnostics")
    return all(np.array_equal(getattr(a, name), getattr(b, name)) for name in arrays) and all(
        np.array_equal(p, q) for p, q in zip(a.partitions, b.partitions, strict=True)
    )


def _local_splits(data) -> list[np.ndarray]:
    return [data.client_data(pid).test_y for pid in range(data.num_clients)]


def test_null_data_seed_follows_seed_and_is_the_old_split() -> None:
    setup, data = _data("seed=3")
    assert setup.data_seed is None and setup.federation_seed == 3
    _, explicit = _data("seed=3", "data_seed=3")
    assert _same_data(data, explicit)
    # the old way: the builder and the partitioner called with the seed itself
    old = build_federated_data(
        {"name": "digits"},
        {"name": "dirichlet", "alpha": 0.5},
        num_clients=5,
        seed=3,
        proxy_size=100,
    )
    assert _same_data(data, old) and len(old.proxy_x) == 100
    options = {k: v for k, v in setup.partition.items() if k != "name"}
    direct = partition_indices(
        data.train_y, num_partitions=5, name="dirichlet", seed=3, features=data.train_x, **options
    )
    assert all(np.array_equal(p, q) for p, q in zip(data.partitions, direct, strict=True))
    for mine, theirs in zip(_local_splits(data), _local_splits(old), strict=True):
        assert np.array_equal(mine, theirs)
    # and the seed does reach the data when data_seed is null (this test can fail)
    _, other = _data("seed=4")
    assert not _same_data(data, other)


def test_data_seed_holds_the_data_while_seed_changes() -> None:
    setup_a, data_a = _data("seed=1", "data_seed=7")
    setup_b, data_b = _data("seed=2", "data_seed=7")
    assert setup_a.federation_seed == setup_b.federation_seed == 7
    assert _same_data(data_a, data_b)
    for a, b in zip(_local_splits(data_a), _local_splits(data_b), strict=True):
        assert np.array_equal(a, b)
    _, data_c = _data("seed=1", "data_seed=8")
    assert not _same_data(data_a, data_c)


def test_data_seed_travels_to_clients_in_the_setup() -> None:
    setup, _ = _data("seed=1", "data_seed=7")
    parsed = FederationSetup.from_json(setup.to_json())
    assert (parsed.seed, parsed.data_seed, parsed.federation_seed) == (1, 7, 7)
    assert parsed.data_kwargs()["seed"] == 7
    # a setup sent before the key existed parses to "follows seed"
    legacy = setup.to_json().replace('"data_seed": 7, ', "")
    assert FederationSetup.from_json(legacy).federation_seed == 1


def test_a_deployed_clients_own_file_is_split_by_the_data_seed(tmp_path: Path) -> None:
    setup_a, data = _data("seed=1", "data_seed=7")
    setup_b, _ = _data("seed=2", "data_seed=7")
    rows = data.partitions[2]
    path = write_local_data(tmp_path / "node2.npz", data.train_x[rows], data.train_y[rows])
    context = SimpleNamespace(node_config={"partition-id": 2, "data-file": str(path)})
    privacy = PrivacySpec.from_dict(None)
    own_a = _client_data(context, setup_a, data, 2, privacy)
    own_b = _client_data(context, setup_b, data, 2, privacy)
    simulated = data.client_data(2)
    for name in ("train_y", "test_y", "test_x"):
        assert np.array_equal(getattr(own_a, name), getattr(own_b, name))
        assert np.array_equal(getattr(own_a, name), getattr(simulated, name))


def _initial_student(*overrides: str) -> tuple[dict[str, torch.Tensor], Any]:
    from fedkd.apps.server import prepare_run

    plan = prepare_run(compose_config([*TASK, "num_rounds=1", "backend=inline", *overrides]))
    return {k: v.clone() for k, v in plan.assets.student.state_dict().items()}, plan.assets.data


def test_seed_still_sets_the_initial_weights_under_a_data_seed() -> None:
    weights_a, data_a = _initial_student("seed=1", "data_seed=7")
    weights_b, data_b = _initial_student("seed=2", "data_seed=7")
    assert _same_data(data_a, data_b)
    assert weights_a.keys() == weights_b.keys()
    assert any(not torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_a_seed_sweep_under_one_data_seed_keeps_the_federation(tmp_path, in_process_run) -> None:
    tiny = ["dataset=digits", "num_clients=4", "num_rounds=1", "client.epochs=1", "data_seed=5"]
    tiny += ["strategy=fedavg"]
    for name, seed in (("a", 1), ("b", 2), ("a_again", 1)):
        in_process_run([*tiny, f"seed={seed}"], tmp_path / name)
    partitions = {n: (tmp_path / n / PARTITIONS_FILE).read_text() for n in ("a", "b", "a_again")}
    assert partitions["a"] == partitions["b"] == partitions["a_again"]

    def rows(name: str) -> list[dict]:
        return [
            {k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(tmp_path / name)
        ]

    assert rows("a") == rows("a_again")  # nothing changed: the same run
    assert rows("a") != rows("b")  # another seed: other weights, other numbers
    assert rows("a")[0]["student_accuracy"] != rows("b")[0]["student_accuracy"]


@pytest.mark.parametrize("bad", ["-1", "abc", "true", "1.5"])
def test_a_bad_data_seed_is_refused(bad: str) -> None:
    cfg = compose_config([f"data_seed={bad}"])
    with pytest.raises(ConfigError, match=r"^data_seed must be null or an integer >= 0, got"):
        check_top_level(cfg)


def test_data_seed_cannot_change_on_resume(tmp_path: Path) -> None:
    saved = compose_config(["data_seed=5"])
    check_resumable(saved, compose_config(["data_seed=5", "num_rounds=30"]), tmp_path)
    with pytest.raises(ConfigError, match=r"data_seed differs from the checkpointed run"):
        check_resumable(saved, compose_config(["data_seed=6"]), tmp_path)


def test_the_audits_canaries_follow_the_data_seed_on_both_sides() -> None:
    from fedkd.apps.server import prepare_run
    from strategies.core.private_rounds import canary_recorder

    def canaries(*overrides: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        audit = ["num_rounds=1", "backend=inline", "privacy.audit=true"]
        plan = prepare_run(compose_config([*TASK, *audit, *overrides]))
        recorder = canary_recorder(plan.assets)
        assert recorder is not None
        server = recorder.plan
        # what a simulated client plants: its partition with the canaries it includes
        setup, data = plan.assets.setup, plan.assets.data
        context = SimpleNamespace(node_config={"partition-id": 0})
        client = _client_data(context, setup, data, 0, plan.assets.privacy)
        return server.proxy_index, server.included, client.train_y

    same_a = canaries("seed=1", "data_seed=7")
    same_b = canaries("seed=2", "data_seed=7")
    other = canaries("seed=1", "data_seed=8")
    assert all(np.array_equal(a, b) for a, b in zip(same_a, same_b, strict=True))
    assert not np.array_equal(same_a[1], other[1])
