"""The per-run report: plots, report.html, partitions.json, the ``report`` config block."""

from __future__ import annotations

import base64
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
from fedkd.run import names
from fedkd.run.report import (
    ACCURACY_PLOT,
    BYTES_PLOT,
    CLIENT_ACCURACY_PLOT,
    FAILURES_PLOT,
    LABEL_DISTRIBUTION_PLOT,
    LOSS_PLOT,
    PRIVACY_PLOT,
    REPORT_HTML,
    TENSORBOARD_DIR,
    ReportSpec,
    plot_failures,
    plot_privacy,
    report_html,
    summary_rows,
    write_report,
)
from fedkd.run.report_plots import (
    EVALUATED_LABEL,
    draw_accuracy,
    draw_bytes,
    draw_failures,
    draw_loss,
    draw_privacy,
    legend_texts,
)
from fedkd.run.results import PARTITIONS_FILE, RunWriter, read_metrics, read_partitions

TINY = ["dataset=synthetic", "dataset.num_samples=300", "num_clients=4", "num_rounds=2",
        "client.epochs=1"]  # fmt: skip
ALWAYS = {ACCURACY_PLOT, BYTES_PLOT, CLIENT_ACCURACY_PLOT, LABEL_DISTRIBUTION_PLOT, LOSS_PLOT}
DATA_URI = "data:image/png;base64,"


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


def _embedded(page: str, run_dir: Path) -> list[str]:
    """The PNG files of ``run_dir`` whose bytes the page embeds, in page order; fails on an
    image that is not a ``data:`` URI or matches no file."""
    by_bytes = {p.read_bytes(): p.name for p in run_dir.glob("*.png")}
    found = []
    for src in _tags(page).images:
        assert src.startswith(DATA_URI), src[:60]
        png = base64.b64decode(src.removeprefix(DATA_URI), validate=True)
        assert png in by_bytes, "an embedded image that is not one of the run's PNG files"
        found.append(by_bytes[png])
    return found


def _figure() -> Any:
    from matplotlib.figure import Figure

    return Figure()


def test_tiny_run_writes_every_plot_and_a_self_contained_page(tmp_path, in_process_run) -> None:
    settings = ["partition.alpha=0.3", "client.lr=0.07", "distill.temperature=2.5"]
    summary = in_process_run([*TINY, *settings], tmp_path)
    assert _pngs(tmp_path) == ALWAYS  # no privacy mechanism, no failures
    for name in ALWAYS:
        assert (tmp_path / name).stat().st_size > 1000, name
    assert "report_error" not in summary
    page = (tmp_path / REPORT_HTML).read_text()
    tags = _tags(page)
    # Every plot is in the page itself (its bytes, as a data: URI), once; nothing else is.
    assert sorted(_embedded(page, tmp_path)) == sorted(ALWAYS)
    assert [src for src in re.findall(r"""\bsrc\s*=\s*["']?([^"' >]*)""", page)
            if not src.startswith("data:")] == []  # fmt: skip
    assert not tags.tags & {"script", "link", "iframe", "object"}  # no JS, nothing fetched
    assert "http://" not in page and "https://" not in page
    # The links left point at the files beside the page, and the page says so.
    assert {"metrics.jsonl", "summary.json", "config.yaml"} <= set(tags.links)
    for link in tags.links:
        assert (tmp_path / link).is_file(), link
    assert "files beside it" in page
    # The header and the end-of-run table's numbers are on the page.
    assert "<dt>method</dt><dd>feddf</dd>" in page
    final = names.canonical(summary)["final"][names.GLOBAL_TEST]
    assert f"{100 * final:.1f}%" in page
    # The settings, read from the run's config.yaml.
    assert "<dt>partition</dt><dd>dirichlet (alpha = 0.3," in page
    training = re.search(r"<dt>client training</dt><dd>([^<]*)</dd>", page)
    assert training is not None
    assert "epochs = 1," in training[1] and "lr = 0.07," in training[1]
    loss = re.search(r"<dt>distillation loss</dt><dd>([^<]*)</dd>", page)
    assert loss is not None and "temperature = 2.5," in loss[1]
    assert "<dt>federation</dt><dd>4 clients, 2 rounds</dd>" in page
    config_text = (tmp_path / "config.yaml").read_text()
    assert f"<pre>{html_escape(config_text)}</pre>" in page
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


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
    assert PRIVACY_PLOT in _embedded((tmp_path / REPORT_HTML).read_text(), tmp_path)


def test_failure_plot_appears_when_clients_fail(tmp_path, in_process_run) -> None:
    in_process_run([*TINY, "faults.crash_fraction=0.5"], tmp_path)
    assert read_metrics(tmp_path)[-1]["clients_failed"] == 2
    assert FAILURES_PLOT in _pngs(tmp_path) and PRIVACY_PLOT not in _pngs(tmp_path)
    assert (tmp_path / FAILURES_PLOT).stat().st_size > 1000
    assert FAILURES_PLOT in _embedded((tmp_path / REPORT_HTML).read_text(), tmp_path)


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
    assert set(_embedded(page, tmp_path)) == ALWAYS - {CLIENT_ACCURACY_PLOT}


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


PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")


def test_page_escapes_every_text() -> None:
    summary = _summary(
        strategy="<script>alert('x')</script>",
        dataset='a "quoted" & <b>bold</b> set',
        status="failed",
        error="ValueError: <img src=x onerror=alert(1)>",
        provenance={"fedkd_version": "<i>1</i>", "commit": None, "date": None, "host": "<h>"},
    )
    config = "strategy: {name: '<script>x</script>', distill_lr: 0.1}\nnum_clients: 3\n"
    page = report_html(summary, {"a&b.png": PNG}, errors=["x.png: <oops>"], config_yaml=config)
    tags = _tags(page)
    assert not tags.tags & {"script", "b", "i", "h"}
    assert tags.images == [DATA_URI + base64.b64encode(PNG).decode()]
    assert "<figcaption>a&amp;b.png</figcaption>" in page  # an unknown plot: its file name
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "a &quot;quoted&quot; &amp; &lt;b&gt;bold&lt;/b&gt; set" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;oops&gt;" in page
    assert "<dd>&lt;script&gt;x&lt;/script&gt;</dd>" in page  # the settings too
    assert "fedkd &lt;i&gt;1&lt;/i&gt;" in page and "<dd>&lt;h&gt;</dd>" in page


def test_page_table_is_the_end_of_run_table() -> None:
    title, headers, rows = summary_rows(_summary())
    assert headers == ["metric", "final", "best (round)"]
    assert rows[0] == [names.LABELS[names.GLOBAL_TEST], "25.0%", "50.0% (1)"]
    assert ["uplink, all rounds", "2.0 KB", ""] in rows
    assert title == "fedkd: feddf on digits (3 clients, 2/2 rounds, completed)"
    page = report_html(_summary(), {})
    assert '<td class="num">25.0%</td><td class="num">50.0% (1)</td>' in page
    for row in rows:
        assert "<tr><td>" + '</td><td class="num">'.join(map(html_escape, row)) in page


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
        [names.LABELS[names.GLOBAL_TEST], "80.0%", "80.0% (2)"],
        [names.LABELS["global_on_global_test_balanced_accuracy"], "70.0%", "75.0% (1)"],
        [names.LABELS["global_on_global_test_auc"], "0.812", "0.812 (2)"],
        ["majority class (0) baseline", "78.0% (bal. 50.0%, AUC 0.500)", ""],
    ]
    assert html_escape(names.LABELS["global_on_global_test_auc"]) in report_html(summary, {})


def test_multiclass_table_has_the_majority_class_without_binary_scores() -> None:
    _, _, rows = summary_rows(_summary(majority_baseline={"class": 3, "accuracy": 0.1}))
    labels = [row[0] for row in rows]
    assert names.LABELS["global_on_global_test_balanced_accuracy"] not in labels
    assert names.LABELS["global_on_global_test_auc"] not in labels
    assert rows[1] == ["majority class (3) baseline", "10.0%", ""]


def test_page_shows_the_provenance_and_unknown_for_older_runs() -> None:
    record = {"fedkd_version": "9.9.9", "commit": "abc1234", "dirty": False,
              "date": "2026-01-31T12:00:05+00:00", "host": "lab-1"}  # fmt: skip
    page = report_html(_summary(provenance=record), {})
    assert "<dt>code</dt><dd>fedkd 9.9.9 (commit abc1234)</dd>" in page
    assert "<dt>date</dt><dd>2026-01-31 12:00 UTC</dd>" in page
    assert "<dt>host</dt><dd>lab-1</dd>" in page
    dirty = report_html(_summary(provenance={**record, "dirty": True}), {})
    assert "(commit abc1234, with uncommitted changes)" in dirty
    old = report_html(_summary(environment={"host": "old-host"}), {})  # before provenance
    assert "<dt>code</dt><dd>fedkd unknown (commit unknown)</dd>" in old
    assert "<dt>date</dt><dd>unknown</dd>" in old and "<dt>host</dt><dd>old-host</dd>" in old


def test_page_says_when_the_settings_cannot_be_read() -> None:
    assert "config.yaml was not found" in report_html(_summary(), {})
    assert "config.yaml could not be read" in report_html(_summary(), {}, config_yaml="a: [")
    assert "does not hold a mapping" in report_html(_summary(), {}, config_yaml="- 1\n")


def test_a_run_written_with_the_old_metric_names_still_renders(tmp_path) -> None:
    """fedkd 0.1 wrote student_accuracy, client_accuracies, student_loss, ... only."""
    rows = [{"round": 0, "student_accuracy": 0.1, "student_loss": 2.3}] + [
        {
            "round": r,
            "student_accuracy": 0.3 * r,
            "student_loss": 2.0 / r,
            "student_validation_accuracy": 0.25 * r,
            "client_accuracy": 0.25 * r,  # Flower's evaluation, equal to the pooled number
            "client_accuracy_mean": 0.2 * r,
            "client_accuracies": {"0": 0.1 * r, "1": 0.3 * r},
            "personalized_accuracy_mean": 0.35 * r,
            "train_loss": 1.0 / r,
            "uplink_bytes": 5000,
            "downlink_bytes": 5000,
        }
        for r in (1, 2)
    ]
    summary = _summary(headline={"metric": "client_accuracy_mean", "value": 0.4})
    (tmp_path / "config.yaml").write_text("partition: {name: dirichlet, alpha: 0.1}\n")
    result = write_report(tmp_path, rows, summary)
    assert result.errors == []
    drawn = {ACCURACY_PLOT, LOSS_PLOT, CLIENT_ACCURACY_PLOT, BYTES_PLOT}
    assert _pngs(tmp_path) == drawn
    page = (tmp_path / REPORT_HTML).read_text()
    assert set(_embedded(page, tmp_path)) == drawn
    assert "<dt>partition</dt><dd>dirichlet (alpha = 0.1)</dd>" in page
    label = html_escape(names.LABELS[names.LOCAL_GLOBAL_TEST])
    assert f"<dd>{label}: 40.0%</dd>" in page  # the paper's metric, by its new name
    assert "fedkd unknown (commit unknown)" in page


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


def _styles(lines: list[Any]) -> set[tuple[str, str]]:
    return {(str(line.get_linestyle()), str(line.get_marker())) for line in lines}


def test_bytes_plot_draws_equal_uplink_and_downlink_once_on_an_axis_from_zero() -> None:
    rows = [{"round": 0}] + [
        {"round": r, "uplink_bytes": 697_480, "downlink_bytes": 697_480} for r in (1, 2, 3)
    ]
    fig = _figure()
    assert draw_bytes(fig, rows)
    (ax,) = fig.axes
    (line,) = ax.get_lines()
    assert legend_texts(ax) == ["uplink = downlink"]
    assert list(line.get_ydata()) == pytest.approx([697.48] * 3)  # in KB
    assert ax.get_ylabel() == "KB per round (all clients)"
    bottom, top = ax.get_ylim()
    assert bottom == 0 and 697.48 < top < 1000  # a flat line looks flat


def test_bytes_plot_draws_different_series_in_styles_of_their_own() -> None:
    rows = [
        {"round": r, "uplink_bytes": 2e6 * r, "downlink_bytes": 4e6,
         "evaluation_downlink_bytes": 4e6}
        for r in (1, 2)
    ]  # fmt: skip
    fig = _figure()
    draw_bytes(fig, rows)
    (ax,) = fig.axes
    assert legend_texts(ax) == ["uplink", "downlink = downlink for evaluation"]
    assert ax.get_ylabel() == "MB per round (all clients)"
    assert len(_styles(ax.get_lines())) == 2  # they meet at round 2: both stay visible
    nothing = _figure()
    draw_bytes(nothing, [{"round": 1, "uplink_bytes": 0, "downlink_bytes": 0}])
    assert nothing.axes[0].get_ylim() == (0, 1) and nothing.axes[0].get_ylabel().startswith("B ")


def test_privacy_plot_draws_equal_epsilons_once() -> None:
    rows = [{"round": r, "epsilon": 0.5 * r, "epsilon_client": 0.5 * r, "delta": 1e-5}
            for r in (1, 2)]  # fmt: skip
    fig = _figure()
    assert draw_privacy(fig, rows, budget=3.0)
    (ax,) = fig.axes
    assert legend_texts(ax) == ["ε per record (δ = 1e-05) = ε per client", "budget ε = 3"]
    assert len(ax.get_lines()) == 2  # the merged line and the budget
    rows[1]["epsilon_client"] = 2.0
    fig = _figure()
    draw_privacy(fig, rows)
    ax = fig.axes[0]
    assert legend_texts(ax) == ["ε per record (δ = 1e-05)", "ε per client"]
    assert len(_styles(ax.get_lines())) == 2  # equal at round 1, both visible


def test_accuracy_plot_labels_which_model_on_which_test_data() -> None:
    old = [
        {"round": 1, "student_accuracy": 0.5, "ensemble_accuracy": 0.52,
         "client_accuracy_mean": 0.4, "student_validation_accuracy": 0.55,
         "client_accuracy": 0.55, "personalized_accuracy_mean": 0.6},
        {"round": 2, "student_accuracy": 0.6, "ensemble_accuracy": 0.62,
         "client_accuracy_mean": 0.5, "student_validation_accuracy": 0.65,
         "client_accuracy": 0.65, "personalized_accuracy_mean": 0.7},
    ]  # fmt: skip
    fig = _figure()
    draw_accuracy(fig, old)
    ax = fig.axes[0]
    keys = [names.GLOBAL_TEST, names.ENSEMBLE_TEST, names.LOCAL_GLOBAL_TEST,
            names.GLOBAL_LOCAL_TEST, names.LOCAL_LOCAL_TEST]  # fmt: skip
    # the pooled number, not Flower's evaluation of the same model on fewer clients
    assert legend_texts(ax) == [names.LABELS[key] for key in keys]
    assert len(_styles(ax.get_lines())) == len(keys)
    assert ax.get_ylim() == (0, 1.02)
    evaluated = [{"round": r, names.GLOBAL_TEST: 0.5, names.GLOBAL_EVALUATED: 0.1 * r}
                 for r in (1, 2)]  # fmt: skip
    fig = _figure()
    draw_accuracy(fig, evaluated)
    assert legend_texts(fig.axes[0]) == [
        names.LABELS[names.GLOBAL_TEST],
        names.LABELS[names.GLOBAL_EVALUATED],
    ]
    fig = _figure()
    draw_accuracy(fig, [{"round": 1, "student_accuracy": 0.5, "client_accuracy": 0.4}])
    assert legend_texts(fig.axes[0]) == [names.LABELS[names.GLOBAL_TEST], EVALUATED_LABEL]


def test_accuracy_plot_merges_series_equal_at_every_round() -> None:
    rows = [{"round": r, names.GLOBAL_TEST: 0.1 * r, names.ENSEMBLE_TEST: 0.1 * r}
            for r in (1, 2, 3)]  # fmt: skip
    fig = _figure()
    draw_accuracy(fig, rows)
    assert len(fig.axes[0].get_lines()) == 1
    label = f"{names.LABELS[names.GLOBAL_TEST]} = {names.LABELS[names.ENSEMBLE_TEST]}"
    assert legend_texts(fig.axes[0]) == [label]


def test_loss_plot_shows_training_test_and_distillation_loss() -> None:
    rows = [{"round": 0, "student_loss": 2.3}] + [
        {"round": r, "train_loss": 1.0 / r, "global_on_global_test_loss": 1.5 / r,
         "distill_loss": 1e-4 * r}
        for r in (1, 2)
    ]  # fmt: skip
    fig = _figure()
    assert draw_loss(fig, rows)
    losses, distill = fig.axes
    assert legend_texts(losses) == [
        "clients' local training (mean)",
        "global model, global test set",
    ]
    assert losses.get_ylim()[0] == 0 and distill.get_ylim()[0] == 0
    test_line = losses.get_lines()[1]
    assert list(test_line.get_xdata()) == [0, 1, 2]  # round 0 from the old key student_loss
    assert list(test_line.get_ydata()) == pytest.approx([2.3, 1.5, 0.75])
    assert legend_texts(distill) == ["server distillation (last epoch)"]
    assert draw_loss(_figure(), [{"round": 1, "student_accuracy": 0.5}]) is False


def test_failure_plot_merges_equal_fault_counts() -> None:
    rows = [{"round": r, "clients_ok": 2, "clients_failed": 2,
             "faults_injected": {"crash": 1, "straggler": 1}} for r in (1, 2)]  # fmt: skip
    fig = _figure()
    assert draw_failures(fig, rows)
    texts = legend_texts(fig.axes[0])
    assert "injected: crash = injected: straggler" in texts
    assert len(fig.axes[0].get_lines()) == 1


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
