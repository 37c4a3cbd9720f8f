"""The per-run report: plots, report.html, partitions.json, the ``report`` config block."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedkd.run.report
import fedkd.run.results
from fedkd.errors import ConfigError
from fedkd.run.report import (
    ACCURACY_PLOT,
    BYTES_PLOT,
    CLIENT_ACCURACY_PLOT,
    FAILURES_PLOT,
    LABEL_DISTRIBUTION_PLOT,
    PRIVACY_PLOT,
    REPORT_HTML,
    TENSORBOARD_DIR,
    ReportSpec,
    plot_failures,
    plot_privacy,
    report_html,
    summary_rows,
    tensorboard_available,
)
from fedkd.run.results import PARTITIONS_FILE, RunWriter, read_metrics, read_partitions

TINY = ["dataset=synthetic", "dataset.num_samples=300", "num_clients=4", "num_rounds=2",
        "client.epochs=1"]  # fmt: skip
ALWAYS = {ACCURACY_PLOT, BYTES_PLOT, CLIENT_ACCURACY_PLOT, LABEL_DISTRIBUTION_PLOT}


class _Tags(HTMLParser):
    """Collects ``img src``, ``a href`` and whether any script or external URL appears."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(str(values["src"]))
        if tag == "a":
            self.links.append(str(values["href"]))


def _tags(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


def _pngs(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.glob("*.png")}


def test_tiny_run_writes_every_plot_and_a_page_linking_them(tmp_path, in_process_run) -> None:
    summary = in_process_run(TINY, tmp_path)
    assert _pngs(tmp_path) == ALWAYS  # no privacy mechanism, no failures
    for name in ALWAYS:
        assert (tmp_path / name).stat().st_size > 1000, name
    assert "report_error" not in summary
    page = (tmp_path / REPORT_HTML).read_text()
    tags = _tags(page)
    assert set(tags.images) == ALWAYS and len(tags.images) == len(ALWAYS)
    for src in tags.images:
        assert (tmp_path / src).is_file()
    assert not tags.tags & {"script", "link", "iframe", "object"}  # no JS, nothing fetched
    assert "http://" not in page and "https://" not in page
    # The header and the end-of-run table's numbers are on the page.
    assert "<dt>method</dt><dd>feddf</dd>" in page
    final = summary["final"]["student_accuracy"]
    assert f"{100 * final:.1f}%" in page
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_rows_carry_each_clients_accuracy(tmp_path, in_process_run) -> None:
    in_process_run(TINY, tmp_path)
    for row in read_metrics(tmp_path)[1:]:
        per_client = row["client_accuracies"]
        assert sorted(per_client) == ["0", "1", "2", "3"]  # every sampled partition
        values = list(per_client.values())
        assert np.mean(values) == pytest.approx(row["client_accuracy_mean"])
        assert min(values) == row["client_accuracy_min"]
        assert max(values) == row["client_accuracy_max"]


def test_partitions_file_holds_each_clients_training_labels(tmp_path, in_process_run) -> None:
    from fedkd.apps.server import prepare_run
    from fedkd.config import compose_config

    in_process_run(TINY, tmp_path)
    histograms = read_partitions(tmp_path)
    data = prepare_run(compose_config([*TINY, "progress=false"])).assets.data
    assert sorted(histograms) == [0, 1, 2, 3]
    for partition_id, counts in histograms.items():
        labels = data.client_data(partition_id).train_y
        assert counts == np.bincount(labels, minlength=data.num_classes).tolist()
    on_disk = json.loads((tmp_path / PARTITIONS_FILE).read_text())
    assert set(on_disk) == {"label_histograms"}


def test_privacy_plot_appears_with_a_privacy_mechanism(tmp_path, in_process_run) -> None:
    in_process_run([*TINY, "strategy=fedmd", "privacy=logit_dp"], tmp_path)
    assert PRIVACY_PLOT in _pngs(tmp_path) and FAILURES_PLOT not in _pngs(tmp_path)
    assert (tmp_path / PRIVACY_PLOT).stat().st_size > 1000
    assert PRIVACY_PLOT in _tags((tmp_path / REPORT_HTML).read_text()).images


def test_failure_plot_appears_when_clients_fail(tmp_path, in_process_run) -> None:
    in_process_run([*TINY, "faults.crash_fraction=0.5"], tmp_path)
    assert read_metrics(tmp_path)[-1]["clients_failed"] == 2
    assert FAILURES_PLOT in _pngs(tmp_path) and PRIVACY_PLOT not in _pngs(tmp_path)
    assert (tmp_path / FAILURES_PLOT).stat().st_size > 1000
    assert FAILURES_PLOT in _tags((tmp_path / REPORT_HTML).read_text()).images


def test_privacy_and_failure_plots_only_draw_when_there_is_something(tmp_path) -> None:
    plain = [{"round": 0}, {"round": 1, "clients_ok": 3, "clients_failed": 0}]
    assert plot_privacy(plain, tmp_path / "p.png") is False
    assert plot_failures(plain, tmp_path / "f.png") is False
    assert not list(tmp_path.iterdir())
    assert plot_privacy([{"round": 1, "epsilon": 2.0, "delta": 1e-5}], tmp_path / "p.png")
    assert plot_failures([{"round": 1, "clients_ok": 2, "skipped": "too few"}], tmp_path / "f.png")
    assert plot_failures([{"round": 1, "faults_injected": {"crash": 1}}], tmp_path / "g.png")


def test_a_failing_plot_keeps_the_results_and_is_recorded(
    tmp_path, in_process_run, monkeypatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("no ink <left>")

    monkeypatch.setattr(fedkd.run.report, "plot_client_accuracies", broken)
    summary = in_process_run(TINY, tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["round"] for r in rows] == [0, 1, 2]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary and on_disk["final"] == rows[-1]
    assert on_disk["report_error"] == f"{CLIENT_ACCURACY_PLOT}: RuntimeError: no ink <left>"
    assert _pngs(tmp_path) == ALWAYS - {CLIENT_ACCURACY_PLOT}  # the others are still drawn
    page = (tmp_path / REPORT_HTML).read_text()
    assert "no ink &lt;left&gt;" in page
    assert set(_tags(page).images) == ALWAYS - {CLIENT_ACCURACY_PLOT}


def test_a_failing_report_never_loses_the_summary(tmp_path, monkeypatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError("out of memory drawing")

    monkeypatch.setattr(fedkd.run.results, "write_report", broken)
    writer = RunWriter(tmp_path / "run")
    writer.start({"seed": 0})
    writer.append({"round": 1, "student_accuracy": 0.5})
    written = writer.finish({"status": "completed", "final": {"round": 1}})
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == written
    assert on_disk["report_error"] == "MemoryError: out of memory drawing"
    assert on_disk["final"] == {"round": 1}
    assert read_metrics(tmp_path / "run") == [{"round": 1, "student_accuracy": 0.5}]


def _summary(**changes: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "status": "completed",
        "strategy": "feddf",
        "dataset": "digits",
        "partition": "iid",
        "model": "mlp",
        "student": "mlp",
        "num_clients": 3,
        "num_rounds": 2,
        "rounds_completed": 2,
        "seed": 0,
        "final": {"round": 2, "student_accuracy": 0.25},
        "best": {"student_accuracy": {"value": 0.5, "round": 1}},
        "communication": {"uplink_bytes": 2000, "downlink_bytes": 0},
        "wall_seconds": 1.5,
        "parameters": 10,
        "size_bytes": 40,
    }
    summary.update(changes)
    return summary


def test_page_escapes_every_text() -> None:
    summary = _summary(
        strategy="<script>alert('x')</script>",
        dataset='a "quoted" & <b>bold</b> set',
        status="failed",
        error="ValueError: <img src=x onerror=alert(1)>",
    )
    page = report_html(summary, ["a&b.png"], errors=["x.png: <oops>"])
    tags = _tags(page)
    assert "script" not in tags.tags and "b" not in tags.tags
    assert tags.images == ["a&b.png"]  # the attribute is escaped, and parses back
    assert 'src="a&amp;b.png"' in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "a &quot;quoted&quot; &amp; &lt;b&gt;bold&lt;/b&gt; set" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;oops&gt;" in page


def test_page_table_is_the_end_of_run_table() -> None:
    title, headers, rows = summary_rows(_summary())
    assert headers == ["metric", "final", "best (round)"]
    assert rows[0] == ["student test accuracy", "25.0%", "50.0% (1)"]
    assert ["uplink, all rounds", "2.0 KB", ""] in rows
    assert title == "fedkd: feddf on digits (3 clients, 2/2 rounds, completed)"
    page = report_html(_summary(), [])
    assert '<td class="num">25.0%</td><td class="num">50.0% (1)</td>' in page


def test_binary_task_table_shows_balanced_accuracy_auc_and_the_majority_class() -> None:
    summary = _summary(
        final={
            "round": 2,
            "student_accuracy": 0.8,
            "student_balanced_accuracy": 0.7,
            "student_auc": 0.8125,
        },
        best={
            "student_accuracy": {"value": 0.8, "round": 2},
            "student_balanced_accuracy": {"value": 0.75, "round": 1},
            "student_auc": {"value": 0.8125, "round": 2},
        },
        majority_baseline={"class": 0, "accuracy": 0.78, "balanced_accuracy": 0.5, "auc": 0.5},
    )
    _, _, rows = summary_rows(summary)
    assert rows[:4] == [
        ["student test accuracy", "80.0%", "80.0% (2)"],
        ["student balanced accuracy", "70.0%", "75.0% (1)"],
        ["student ROC-AUC", "0.812", "0.812 (2)"],
        ["majority class (0) baseline", "78.0% (bal. 50.0%, AUC 0.500)", ""],
    ]
    assert "student ROC-AUC" in report_html(summary, [])


def test_multiclass_table_has_the_majority_class_without_binary_scores() -> None:
    _, _, rows = summary_rows(_summary(majority_baseline={"class": 3, "accuracy": 0.1}))
    labels = [row[0] for row in rows]
    assert "student balanced accuracy" not in labels and "student ROC-AUC" not in labels
    assert rows[1] == ["majority class (3) baseline", "10.0%", ""]


def test_html_off_writes_plots_but_no_page(tmp_path) -> None:
    writer = RunWriter(tmp_path, report=ReportSpec(html=False))
    writer.start({"seed": 0})
    writer.append({"round": 0, "student_accuracy": 0.1})
    writer.append({"round": 1, "student_accuracy": 0.5, "uplink_bytes": 10})
    summary = writer.finish(_summary(), label_histograms={1: [3, 0], 0: [1, 2]})
    assert "report_error" not in summary
    assert not (tmp_path / REPORT_HTML).exists()
    assert _pngs(tmp_path) == {ACCURACY_PLOT, BYTES_PLOT, LABEL_DISTRIBUTION_PLOT}
    assert read_partitions(tmp_path) == {0: [1, 2], 1: [3, 0]}


@pytest.mark.parametrize(
    ("block", "key"),
    [
        ({"html": "yes"}, "report.html"),
        ({"tensorboard": 1}, "report.tensorboard"),
        ({"colour": True}, "colour"),
        ("html", "report"),
    ],
)
def test_bad_report_block_is_a_config_error(block: Any, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        ReportSpec.from_config(block)


def test_report_block_defaults() -> None:
    assert ReportSpec.from_config(None) == ReportSpec(html=True, tensorboard=False)
    assert ReportSpec.from_config({"html": False}) == ReportSpec(html=False)


def test_bad_report_block_fails_before_the_run() -> None:
    from fedkd.apps.server import prepare_run
    from fedkd.config import compose_config

    with pytest.raises(ConfigError, match=re.escape("report.html")):
        prepare_run(compose_config([*TINY, "report.html=maybe"]))


def test_tensorboard_without_the_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(fedkd.run.report, "tensorboard_available", lambda: False)
    with pytest.raises(ConfigError, match=re.escape("pip install tensorboard")):
        ReportSpec.from_config({"tensorboard": True})


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_events_are_written(tmp_path, in_process_run) -> None:
    pytest.importorskip("tensorboard")
    in_process_run([*TINY, "report.tensorboard=true"], tmp_path)
    events = list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_tensorboard_log_maps_rows_to_tags(tmp_path, monkeypatch) -> None:
    """The row-to-event mapping, with a recording stand-in for torch's SummaryWriter (the
    real one is exercised above when tensorboard is installed)."""
    import sys
    import types

    calls: list[tuple[str, str, Any, int]] = []

    class RecordingWriter:
        def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
            calls.append(("open", log_dir, purge_step, 0))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append(("scalar", tag, value, step))

        def add_histogram(self, tag: str, values: np.ndarray, step: int) -> None:
            calls.append(("histogram", tag, sorted(values.tolist()), step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            calls.append(("close", "", None, 0))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = RecordingWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    writer = RunWriter(tmp_path, report=ReportSpec(html=False, tensorboard=True))
    writer.start({"seed": 0})
    writer.append(
        {
            "round": 2,
            "student_accuracy": 0.5,
            "skipped": "text",
            "distill_curve": [1.0, 0.5],
            "faults_injected": {"crash": 1},
            "failure_reasons": {"client error": 1},
            "client_accuracies": {0: 0.75, 1: 0.25},
            "ensemble_accuracy": None,
        }
    )
    writer.finish(_summary())
    assert calls == [
        ("open", str(tmp_path / TENSORBOARD_DIR), None, 0),
        ("scalar", "student_accuracy", 0.5, 2),
        ("scalar", "faults_injected/crash", 1, 2),
        ("histogram", "client_accuracies", [0.25, 0.75], 2),
        ("close", "", None, 0),
    ]
