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
    expected = "client_accuracy_mean" if strategy in CLIENT_METHODS else "student_accuracy"
    assert cls.headline_metric == expected


def test_a_fedmd_run_leads_with_the_clients_models(in_process_run, tmp_path, small_overrides):
    overrides = small_overrides(3, "model.hidden=[8]", "student.hidden=[8]", "num_rounds=2")
    summary = in_process_run([*overrides, "strategy=fedmd"], tmp_path / "fedmd")
    assert summary["headline"] == {
        "metric": "client_accuracy_mean",
        "value": summary["final"]["client_accuracy_mean"],
    }
    assert summary["headline"]["value"] is not None
    assert summary["best"]["client_accuracy_mean"]["round"] in (1, 2)
    _, _, rows = summary_rows(summary)
    labels = [row[0] for row in rows]
    assert labels[0] == "clients' models, test (mean)"
    assert labels[0:3] == [
        "clients' models, test (mean)",
        "clients' models, own splits (mean)",
        "student test accuracy (fedkd's addition)",
    ]
    assert rows[0][1] == f"{100 * summary['final']['client_accuracy_mean']:.1f}%"

    fedavg = in_process_run([*overrides, "strategy=fedavg"], tmp_path / "fedavg")
    assert fedavg["headline"]["metric"] == "student_accuracy"
    table = summary_table(fedavg)
    assert next(iter(table.columns[0].cells)) == "student test accuracy"
