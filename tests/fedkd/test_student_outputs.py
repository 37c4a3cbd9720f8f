"""The final student's export and the compression comparison, end to end in a tiny run."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from fedkd.apps.server import prepare_run
from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.run.checkpoint import load_checkpoint
from fedkd.run.compression import ROW_KEYS
from fedkd.run.report import ReportSpec
from simulations.run import run

TINY = [
    "strategy=fedavg",
    "dataset=digits",
    "num_clients=3",
    "num_rounds=1",
    "client.epochs=1",
    "backend=inline",
    "progress=false",
    "report.compression=true",
    "report.teacher_epochs=2",
    "report.sparsities=[0.5,0.9]",
    "report.ranks=[4]",
    "report.latency_repeats=2",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("run")
    summary = run(compose_config(TINY), run_dir)
    return run_dir, summary


def test_the_comparison_has_one_row_per_compressed_teacher(tiny_run) -> None:
    run_dir, summary = tiny_run
    rows = summary["compression"]
    assert [r["method"] for r in rows] == [
        "student",
        "teacher",
        "teacher_int8",
        "teacher_pruned_50",
        "teacher_pruned_90",
        "teacher_low_rank_4",
    ]
    assert all(set(r) == set(ROW_KEYS) for r in rows)
    by = {r["method"]: r for r in rows}
    assert by["student"]["parameters"] == summary["parameters"]
    assert by["teacher_pruned_90"]["parameters"] < by["teacher_pruned_50"]["parameters"]
    assert by["teacher_pruned_50"]["parameters"] < by["teacher"]["parameters"]
    assert by["teacher_int8"]["size_bytes"] < by["teacher"]["size_bytes"] / 2
    assert by["teacher_low_rank_4"]["parameters"] < by["teacher"]["parameters"]
    assert all(0 <= r["accuracy"] <= 1 and r["latency_ms_batch64"] > 0 for r in rows)
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["compression"] == rows
    page = (run_dir / "report.html").read_text()
    assert "teacher_pruned_90" in page and 'alt="The student against the teacher' in page
    assert (run_dir / "compression.png").stat().st_size > 0


def test_the_exported_student_reproduces_the_final_student(tiny_run) -> None:
    run_dir, summary = tiny_run
    assert summary["export"]["torchscript"]["max_abs_diff"] <= 1e-5
    # relative to the run directory, so a copied or moved run still points at its files
    assert summary["export"]["torchscript"]["path"] == "student.torchscript.pt"
    state = load_checkpoint(run_dir)["student"]  # the final round's student
    student = prepare_run(compose_config(TINY)).assets.student  # same architecture
    student.load_state_dict(state)
    student.eval()
    scripted = torch.jit.load(str(run_dir / "student.torchscript.pt"))
    shape = tuple(prepare_run(compose_config(TINY)).assets.data.input_shape)
    x = torch.as_tensor(np.random.default_rng(1).normal(size=(7, *shape)), dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), student(x), atol=1e-5)
    if "path" in summary["export"].get("onnx", {}):
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(run_dir / "student.onnx"))
        (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        np.testing.assert_allclose(output, student(x).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"sparsities": [0.5, 1.5]}, "report.sparsities"),
        ({"ranks": [0]}, "report.ranks"),
        ({"ranks": "4"}, "report.ranks"),
        ({"teacher_epochs": 0}, "report.teacher_epochs"),
        ({"compression": "yes"}, "report.compression"),
        ({"shrink": True}, "shrink"),
    ],
)
def test_bad_report_settings_are_config_errors(block, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        ReportSpec.from_config(block)
