"""Metric names (issue 21, item 2): one name per measurement, the same in every output,
with the fedkd 0.1 keys kept as aliases for one release."""

from __future__ import annotations

import json

import pytest

from fedkd.run import names
from fedkd.run.progress import accuracy_rows, summary_table
from fedkd.run.results import read_metrics


def test_every_renamed_key_keeps_its_old_name_as_an_alias_with_the_same_value() -> None:
    row = {"round": 3, "student_accuracy": 0.9, "personalized_accuracy_mean": 0.8, "x": 1}
    out = names.with_aliases(row)
    assert out["global_on_global_test_accuracy"] == out["student_accuracy"] == 0.9
    assert out["local_on_local_test_accuracy_mean"] == out["personalized_accuracy_mean"] == 0.8
    assert out["x"] == 1 and out["round"] == 3
    # a row written with the new names only gets the old ones too
    back = names.with_aliases({"global_on_local_test_accuracy": 0.7})
    assert back["student_validation_accuracy"] == 0.7
    # the new name takes its alias's place; the aliases follow at the end
    assert list(out)[:2] == ["round", "global_on_global_test_accuracy"]
    assert list(out)[-2:] == ["student_accuracy", "personalized_accuracy_mean"]


def test_a_new_key_already_in_the_row_is_never_overwritten_by_its_alias() -> None:
    out = names.with_aliases({"student_accuracy": 0.1, "global_on_global_test_accuracy": 0.2})
    assert out["global_on_global_test_accuracy"] == 0.2


def test_every_new_name_says_which_model_on_which_test_data() -> None:
    for new in [*names.ALIASES, names.GLOBAL_EVALUATED, names.LOCAL_EVALUATED]:
        model, _, data = new.partition("_on_")
        assert model in ("global", "local"), new
        assert data.startswith(("global_test", "local_test")), new
    assert len(set(names.ALIASES.values())) == len(names.ALIASES)  # one old key per new


@pytest.mark.parametrize(
    ("sends", "key"), [(True, names.GLOBAL_EVALUATED), (False, names.LOCAL_EVALUATED)]
)
def test_federated_evaluation_is_named_by_the_model_it_evaluated(sends, key) -> None:
    assert names.evaluated(0.5, sends) == {"client_accuracy": 0.5, key: 0.5}


def _old_summary() -> dict:
    """A summary.json as fedkd 0.1 wrote it (old keys only)."""
    final = {
        "round": 2,
        "student_accuracy": 0.91,
        "ensemble_accuracy": 0.9,
        "student_validation_accuracy": 0.88,
        "client_accuracy": 0.88,
        "client_accuracy_mean": 0.7,
        "personalized_accuracy_mean": 0.95,
    }
    return {
        "status": "completed", "strategy": "feddf", "dataset": "digits", "num_clients": 3,
        "num_rounds": 2, "rounds_completed": 2, "final": final,
        "best": {"student_accuracy": {"value": 0.92, "round": 1}},
        "headline": {"metric": "student_accuracy", "value": 0.91},
        "communication": {}, "wall_seconds": 1.0, "parameters": 10, "size_bytes": 40,
    }  # fmt: skip


def test_a_summary_of_fedkd_0_1_reads_by_the_new_names_and_shows_the_new_labels() -> None:
    summary = names.canonical(_old_summary())
    assert summary["final"]["global_on_global_test_accuracy"] == 0.91
    assert summary["best"]["global_on_global_test_accuracy"] == {"value": 0.92, "round": 1}
    assert summary["headline"]["metric"] == names.GLOBAL_TEST
    table = summary_table(_old_summary())
    labels = list(table.columns[0].cells)
    assert labels[:5] == [
        "global model, global test set",
        "teacher ensemble, global test set",
        "global model, clients' test splits",  # the pooled one, not the evaluated duplicate
        "clients' own models, global test set (mean)",
        "clients' own models, own test splits (mean)",
    ]
    assert list(table.columns[1].cells)[:5] == ["91.0%", "90.0%", "88.0%", "70.0%", "95.0%"]
    assert next(iter(table.columns[2].cells)) == "92.0% (1)"


def test_without_the_pooled_number_the_table_shows_the_federated_evaluation() -> None:
    summary = _old_summary()
    del summary["final"]["student_validation_accuracy"]
    summary["final"][names.GLOBAL_EVALUATED] = 0.88
    rows = accuracy_rows(names.canonical(summary))
    assert names.GLOBAL_EVALUATED in rows and names.GLOBAL_LOCAL_TEST not in rows
    del summary["final"][names.GLOBAL_EVALUATED]  # fedkd 0.1: which model it was is unknown
    assert names.EVALUATED_ALIAS in accuracy_rows(names.canonical(summary))


def test_a_runs_rows_and_summary_carry_both_names(
    in_process_run, tmp_path, small_overrides
) -> None:
    run_dir = tmp_path / "run"
    summary = in_process_run(small_overrides(3, "strategy=fedavg", "num_rounds=1"), run_dir)
    (row,) = [r for r in read_metrics(run_dir) if r["round"] == 1]
    for new, old in names.ALIASES.items():
        if old in row:
            assert row[new] == row[old], new
    assert row["global_on_global_test_accuracy"] is not None
    assert row[names.GLOBAL_EVALUATED] == row["client_accuracy"]  # FedAvg sends its model
    assert names.LOCAL_EVALUATED not in row
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert (
        on_disk["final"]["global_on_global_test_accuracy"] == summary["final"]["student_accuracy"]
    )
    assert on_disk["best"]["global_on_global_test_accuracy"] == on_disk["best"]["student_accuracy"]
    assert on_disk["headline"]["metric"] == "global_on_global_test_accuracy"


def test_a_method_whose_clients_keep_their_models_names_their_evaluation_so(
    in_process_run, tmp_path, small_overrides
) -> None:
    overrides = small_overrides(
        3, "strategy=fedmd", "num_rounds=1", "strategy.fraction_evaluate=1.0"
    )
    in_process_run(overrides, tmp_path / "run")
    (row,) = [r for r in read_metrics(tmp_path / "run") if r["round"] == 1]
    assert row[names.LOCAL_EVALUATED] == row["client_accuracy"]
    assert names.GLOBAL_EVALUATED not in row
