"""The comparison report over a set of run directories."""

from __future__ import annotations

import base64
import html
import statistics
from pathlib import Path

import pytest

from fedkd.run import names
from simulations.report import find_runs, html_page, load_run, main, markdown_table

SMALL = ["dataset=synthetic", "dataset.num_samples=300", "num_clients=3", "num_rounds=2",
         "client.epochs=1"]  # fmt: skip


def _runs(tmp_path, in_process_run):
    summaries = {}
    for method in ("fedavg", "local_only"):
        for seed in (0, 1):
            run_dir = tmp_path / f"{method}-{seed}"
            summaries[(method, seed)] = in_process_run(
                [*SMALL, f"strategy={method}", f"seed={seed}"], run_dir
            )
    return summaries


def test_table_aggregates_seeds_per_method(tmp_path, in_process_run, capsys) -> None:
    summaries = _runs(tmp_path, in_process_run)
    runs = [load_run(d) for d in find_runs([tmp_path])]
    assert len(runs) == 4
    table = markdown_table(runs)
    assert "synthetic, dirichlet alpha=0.5, 3 clients, mlp clients" in table
    fedavg_row = next(line for line in table.splitlines() if line.startswith("| fedavg |"))
    final = {key: names.canonical(summary)["final"] for key, summary in summaries.items()}
    values = [final[("fedavg", s)][names.GLOBAL_TEST] for s in (0, 1)]
    expected = f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"
    assert f"| 2 | 2/2 | {expected} |" in fedavg_row  # seeds, rounds, the paper's metric
    local_row = next(line for line in table.splitlines() if line.startswith("| local_only |"))
    clients = [final[("local_only", s)][names.LOCAL_GLOBAL_TEST] for s in (0, 1)]
    headline = f"{100 * statistics.fmean(clients):.1f} ± {100 * statistics.stdev(clients):.1f}"
    # the paper's metric of a method without a global model is the clients' mean; no student
    assert f"| 2 | 2/2 | {headline} (clients) | – |" in local_row
    assert f"| 2 | 2/2 | {expected} | {expected} |" in fedavg_row  # FedAvg's: the global model
    assert local_row.endswith("| 0 B |")  # nothing uploaded
    # local_only is listed before fedavg (floor first)
    assert table.index("| local_only |") < table.index("| fedavg |")
    assert (
        main([str(tmp_path), "--out", str(tmp_path / "t.md"), "--plot", str(tmp_path / "p.png")])
        == 0
    )
    assert (tmp_path / "t.md").read_text() == table
    assert (tmp_path / "p.png").stat().st_size > 0


def _fake_run(method: str, seed: int, final: dict, baseline: dict) -> dict:
    return {
        "status": "completed",
        "strategy": method,
        "dataset": "credit",
        "partition": "iid",
        "model": "mlp",
        "num_clients": 2,
        "seed": seed,
        "rounds_completed": 1,
        "num_rounds": 1,
        "final": final,
        "majority_baseline": baseline,
        "communication": {"uplink_bytes": 0},
        "config": {},
        "run_dir": f"/runs/{method}-{seed}",
    }


def test_columns_are_named_by_which_model_on_which_test_data() -> None:
    run = _fake_run("fedavg", 0, {"student_accuracy": 0.9}, {"class": 1, "accuracy": 0.1})
    header = next(line for line in markdown_table([run]).splitlines() if "| method |" in line)
    labels = [names.LABELS[key] for key in (names.GLOBAL_TEST, names.ENSEMBLE_TEST,
              names.LOCAL_GLOBAL_TEST, names.LOCAL_LOCAL_TEST)]  # fmt: skip
    assert header == (
        "| method | seeds | rounds | paper's metric | " + " | ".join(labels)
        + " | uplink / client / round |"
    )  # fmt: skip


def test_new_and_old_metric_names_give_the_same_table() -> None:
    old = _fake_run("fedavg", 0, {"student_accuracy": 0.9, "client_accuracy_mean": 0.4}, {})
    new = {
        **old,
        "final": {names.GLOBAL_TEST: 0.9, names.LOCAL_GLOBAL_TEST: 0.4},
        "headline": {"metric": names.GLOBAL_TEST, "value": 0.9},
    }
    assert markdown_table([old]) == markdown_table([new])
    assert "| fedavg | 1 | 1/1 | 90.0 | 90.0 | – | 40.0 | – |" in markdown_table([new])


def test_binary_setting_adds_balanced_accuracy_auc_and_the_majority_row() -> None:
    baseline = {"class": 0, "accuracy": 0.78, "balanced_accuracy": 0.5, "auc": 0.5}
    runs = [
        _fake_run(
            "fedavg",
            seed,
            {"student_accuracy": 0.8, "student_balanced_accuracy": bal, "student_auc": auc},
            baseline,
        )
        for seed, bal, auc in ((0, 0.6, 0.70), (1, 0.7, 0.74))
    ]
    lines = markdown_table(runs).splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    balanced = names.LABELS["global_on_global_test_balanced_accuracy"]
    auc = names.LABELS["global_on_global_test_auc"]
    assert f"| {balanced} | {auc} | uplink / client / round |" in header
    majority = next(line for line in lines if line.startswith("| majority class |"))
    expected = (
        "| majority class | 2 | – | 78.0 ± 0.0 | – | – | – | – | 50.0 ± 0.0 | 0.500 ± 0.000 | – |"
    )
    assert majority == expected
    fedavg = next(line for line in lines if line.startswith("| fedavg |"))
    assert (
        "| 2 | 1/1 | 80.0 ± 0.0 | 80.0 ± 0.0 | – | – | – | 65.0 ± 7.1 | 0.720 ± 0.028 |" in fedavg
    )
    assert lines.index(majority) < lines.index(fedavg)


def test_multiclass_setting_has_the_majority_row_and_no_binary_columns() -> None:
    runs = [_fake_run("fedavg", 0, {"student_accuracy": 0.9}, {"class": 1, "accuracy": 0.1})]
    table = markdown_table(runs)
    assert "balanced" not in table and "AUC" not in table
    assert "| majority class | 1 | – | 10.0 | – | – | – | – |" in table


def test_the_majority_row_counts_data_seeds_not_seeds() -> None:
    # a seed sweep under one data_seed has one federation: one baseline value, not three
    runs = [
        {
            **_fake_run("fedavg", seed, {"student_accuracy": 0.9}, {"class": 1, "accuracy": 0.1}),
            "data_seed": 5,
        }
        for seed in (0, 1, 2)
    ]
    assert "| majority class | 1 | – | 10.0 | – | – | – | – |" in markdown_table(runs)


def test_report_rejects_paths_without_runs(tmp_path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])


def test_proxy_only_centralized_runs_are_their_own_method() -> None:
    from simulations.report import method_of

    run = {"strategy": "centralized", "config": {"strategy": {"train_on": "proxy"}}}
    assert method_of(run) == "proxy_only"
    assert method_of({"strategy": "centralized", "config": {"strategy": {}}}) == "centralized"
    assert method_of({"strategy": "fedmd", "config": {}}) == "fedmd"


def test_method_label_names_the_loss_and_a_different_student() -> None:
    from simulations.report import _method_key, method_of

    config = {
        "distill": {"name": "hint"},
        "model": {"name": "cnn1d"},
        "student": {"name": "mlp"},
    }
    label = method_of({"strategy": "feddf", "config": config})
    assert label == "feddf+hint (mlp student)"
    same = {"distill": {"name": "kd"}, "model": {"name": "mlp"}, "student": {"name": "mlp"}}
    assert method_of({"strategy": "feddf", "config": same}) == "feddf"
    assert _method_key(label)[0] == _method_key("feddf")[0]


def test_method_label_names_the_privacy_mechanism() -> None:
    from simulations.report import _method_key, method_of

    config = {"privacy": {"name": "dpsgd"}}
    assert method_of({"strategy": "feddf", "config": config}) == "feddf [dpsgd]"
    assert method_of({"strategy": "feddf", "config": {"privacy": {"name": "none"}}}) == "feddf"
    assert _method_key("feddf [dpsgd]")[0] == _method_key("feddf")[0]


def test_html_page_links_every_runs_report(tmp_path, in_process_run) -> None:
    from html.parser import HTMLParser

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.attrs: list[tuple[str, str]] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.attrs += [(f"{tag}.{k}", str(v)) for k, v in attrs if k in ("src", "href")]

    runs = tmp_path / "runs"
    for method in ("fedavg", "local_only"):
        in_process_run([*SMALL, f"strategy={method}"], runs / f"{method} <run>")
    page_path = tmp_path / "pages" / "index.html"
    page_path.parent.mkdir()
    assert main([str(runs), "--html", str(page_path), "--out", str(tmp_path / "t.md")]) == 0
    page = page_path.read_text()
    tags = Tags()
    tags.feed(page)
    links = [v for k, v in tags.attrs if k == "a.href"]
    images = [v for k, v in tags.attrs if k == "img.src"]
    # Relative links, resolved from the page's folder, to each run's own report.
    assert sorted((page_path.parent / link).resolve() for link in links) == sorted(
        (runs / f"{m} <run>" / "report.html").resolve() for m in ("fedavg", "local_only")
    )
    # The chart is written beside the page and embedded in it.
    chart = (page_path.parent / "index.png").read_bytes()
    assert images == ["data:image/png;base64," + base64.b64encode(chart).decode()]
    assert "fedavg &lt;run&gt;" in page and "<run>" not in page  # run names are escaped
    assert "<script" not in page and "https://" not in page
    table = (tmp_path / "t.md").read_text()
    fedavg_row = next(line for line in table.splitlines() if line.startswith("| fedavg |"))
    assert '<td>fedavg</td><td class="num">1</td><td class="num">2/2</td>' in page
    cells = [c.strip() for c in fedavg_row.strip("|").split("|")]
    assert "".join(f'<td class="num">{c}</td>' for c in cells[1:]) in page
    # Per run: its rounds, the key settings where it differs, its provenance.
    for method in ("fedavg", "local_only"):
        run = load_run(runs / f"{method} <run>")
        row = next(r for r in page.split("<tr>") if f"{method} &lt;run&gt;" in r)
        assert "<td>2/2</td>" in row
        assert f"<b>method</b>: {method}" in row  # the methods differ
        assert html.escape(_provenance_line(run)) in row
    # What every run shares is shown once.
    shared = page[page.index("Settings every run shares") : page.index("<h2>Runs</h2>")]
    assert "<dt>partition</dt><dd>dirichlet (alpha = 0.5," in shared
    assert "<dt>federation</dt><dd>3 clients, 2 rounds</dd>" in shared
    assert "<b>partition</b>" not in page


def _provenance_line(run: dict) -> str:
    """The provenance line of a run (fedkd.run.provenance.describe)."""
    from fedkd.run.provenance import describe

    return describe(run)


def test_html_page_shows_provenance_rounds_and_differing_settings(tmp_path) -> None:
    record = {"fedkd_version": "9.9.9", "commit": "abc1234", "dirty": False,
              "date": "2026-01-31T12:00:00+00:00", "host": "lab-1"}  # fmt: skip
    base = {"num_clients": 2, "num_rounds": 5, "client": {"epochs": 1, "lr": 0.1}}
    runs = []
    for seed, lr in ((0, 0.1), (1, 0.2)):
        run = _fake_run("fedavg", seed, {"student_accuracy": 0.9}, {})
        run_dir = tmp_path / f"run-{seed}"
        run_dir.mkdir()
        (run_dir / "report.html").write_text("")
        run.update(
            run_dir=str(run_dir),
            num_rounds=5,
            rounds_completed=5,
            config={**base, "client": {"epochs": 1, "lr": lr}},
            provenance=record if seed == 0 else None,  # run 1 was written before provenance
        )
        runs.append(run)
    page = html_page(runs, tmp_path / "out" / "compare.html", plot_path=None)
    assert "<dt>federation</dt><dd>2 clients, 5 rounds</dd>" in page  # shared
    assert "<b>client training</b>: epochs = 1, lr = 0.1" in page  # differs
    assert "<b>client training</b>: epochs = 1, lr = 0.2" in page
    assert "<td>fedkd 9.9.9 (commit abc1234), 2026-01-31 12:00 UTC, host lab-1</td>" in page
    assert "<td>fedkd unknown (commit unknown), date unknown, host unknown</td>" in page
    assert page.count("<td>5/5</td>") == 2
    assert '<a href="../run-0/report.html">' in page


def test_help_names_the_command_and_says_what_it_does(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m simulations.report ")
    description = out.split("\n\n")[1]
    assert description.startswith("Compare finished fedkd runs.")
    assert "report.html" in description and "rounds" in description
    assert Path(__file__).name not in out and "report.py" not in out
