"""The papers' metrics first (issue 19, item 2): methods whose paper has no global model
(FedMD, DS-FL, FD, FedProto, local-only) lead with the clients' own models; the server
student is reported as fedkd's addition."""

from __future__ import annotations

import pytest

from fedkd.config import compose_config, strategy_class
from fedkd.run.progress import summary_table
from fedkd.run.report_page import summary_rows

CLIENT_METHODS = ("fedmd", "dsfl", "fd", "fedproto", "local_only")


@pytest.mark.parametrize(
    "strategy",
    ["fedavg", "feddf", "fedmd", "dsfl", "fedet", "fd", "fedproto", "fedgkt", "local_only"],
)
def test_each_method_names_its_papers_metric(strategy) -> None:
    cls = strategy_class(compose_config([f"strategy={strategy}"])["strategy"])
    expected = (
        "local_on_global_test_accuracy_mean"
        if strategy in CLIENT_METHODS
        else "global_on_global_test_accuracy"
    )
    assert cls.headline_metric == expected


def test_a_fedmd_run_leads_with_the_clients_models(in_process_run, tmp_path, small_overrides):
    overrides = small_overrides(3, "model.hidden=[8]", "student.hidden=[8]", "num_rounds=2")
    summary = in_process_run([*overrides, "strategy=fedmd"], tmp_path / "fedmd")
    assert summary["headline"] == {
        "metric": "local_on_global_test_accuracy_mean",
        "value": summary["final"]["local_on_global_test_accuracy_mean"],
        "label": "clients' own models, global test set (mean)",
    }
    assert summary["headline"]["value"] is not None
    # the fedkd 0.1 key is still written, as an alias with the same value
    assert summary["final"]["client_accuracy_mean"] == summary["headline"]["value"]
    assert summary["best"]["local_on_global_test_accuracy_mean"]["round"] in (1, 2)
    _, _, rows = summary_rows(summary)
    labels = [row[0] for row in rows]
    assert labels[0:3] == [
        "clients' own models, global test set (mean)",
        "clients' own models, own test splits (mean)",
        "global model, global test set (fedkd's addition)",
    ]
    assert rows[0][1] == f"{100 * summary['final']['local_on_global_test_accuracy_mean']:.1f}%"

    fedavg = in_process_run([*overrides, "strategy=fedavg"], tmp_path / "fedavg")
    assert fedavg["headline"]["metric"] == "global_on_global_test_accuracy"
    table = summary_table(fedavg)
    assert next(iter(table.columns[0].cells)) == "global model, global test set"
