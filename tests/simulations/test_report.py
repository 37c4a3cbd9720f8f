"""The comparison report over a set of run directories."""

from __future__ import annotations

import statistics

import pytest

from simulations.report import find_runs, load_run, main, markdown_table

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
    values = [summaries[("fedavg", s)]["final"]["student_accuracy"] for s in (0, 1)]
    expected = f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"
    assert f"| 2 | {expected} |" in fedavg_row
    local_row = next(line for line in table.splitlines() if line.startswith("| local_only |"))
    clients = [summaries[("local_only", s)]["final"]["client_accuracy_mean"] for s in (0, 1)]
    headline = f"{100 * statistics.fmean(clients):.1f} ± {100 * statistics.stdev(clients):.1f}"
    # the paper's metric of a method without a global model is the clients' mean; no student
    assert f"| 2 | {headline} (clients) | – |" in local_row
    assert f"| 2 | {expected} | {expected} |" in fedavg_row  # FedAvg's is the student
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
        "final": final,
        "majority_baseline": baseline,
        "communication": {"uplink_bytes": 0},
        "config": {},
        "run_dir": f"/runs/{method}-{seed}",
    }


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
    assert (
        "| paper's metric | student | ensemble | clients (global test) | clients (own test) "
        in header
    )
    assert "| student bal. acc | student AUC | uplink / client / round |" in header
    majority = next(line for line in lines if line.startswith("| majority class |"))
    expected = (
        "| majority class | 2 | 78.0 ± 0.0 | – | – | – | – | 50.0 ± 0.0 | 0.500 ± 0.000 | – |"
    )
    assert majority == expected
    fedavg = next(line for line in lines if line.startswith("| fedavg |"))
    assert "| 80.0 ± 0.0 | – | – | – | 65.0 ± 7.1 | 0.720 ± 0.028 |" in fedavg
    assert lines.index(majority) < lines.index(fedavg)


def test_multiclass_setting_has_the_majority_row_and_no_binary_columns() -> None:
    runs = [_fake_run("fedavg", 0, {"student_accuracy": 0.9}, {"class": 1, "accuracy": 0.1})]
    table = markdown_table(runs)
    assert "bal. acc" not in table and "AUC" not in table
    assert "| majority class | 1 | 10.0 | – | – | – | – |" in table


def test_the_majority_row_counts_data_seeds_not_seeds() -> None:
    # a seed sweep under one data_seed has one federation: one baseline value, not three
    runs = [
        {
            **_fake_run("fedavg", seed, {"student_accuracy": 0.9}, {"class": 1, "accuracy": 0.1}),
            "data_seed": 5,
        }
        for seed in (0, 1, 2)
    ]
    assert "| majority class | 1 | 10.0 | – | – | – | – |" in markdown_table(runs)


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
    assert images == ["index.png"] and (page_path.parent / "index.png").stat().st_size > 0
    assert "fedavg &lt;run&gt;" in page and "<run>" not in page  # run names are escaped
    assert "<script" not in page and "https://" not in page
    table = (tmp_path / "t.md").read_text()
    fedavg_row = next(line for line in table.splitlines() if line.startswith("| fedavg |"))
    assert '<td>fedavg</td><td class="num">1</td>' in page
    cells = [c.strip() for c in fedavg_row.strip("|").split("|")]
    assert "".join(f'<td class="num">{c}</td>' for c in cells[1:]) in page
