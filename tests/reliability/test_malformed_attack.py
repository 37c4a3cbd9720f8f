"""``attack.kind=malformed`` end to end: the malicious clients of a real run (inline engine)
send malformed replies, every one is rejected with a reason, and the run completes on the
honest clients' replies."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.reliability.attacks import ATTACK_KINDS, MALFORMED, malform_arrays, malform_metrics
from fedkd.run.results import read_metrics


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dsfl", "fedavg"])  # prediction- and weight-sharing
def test_malformed_clients_are_rejected_and_the_honest_ones_used(
    method, in_process_run, two_round_overrides, tmp_path
) -> None:
    overrides = two_round_overrides(
        f"strategy={method}", "attack.kind=malformed", "attack.fraction=0.5", "seed=3"
    )
    summary = in_process_run(overrides, tmp_path)
    assert summary["status"] == "completed"
    rows = read_metrics(tmp_path)
    assert [r["round"] for r in rows if r["round"] > 0] == [1, 2]
    for row in (r for r in rows if r["round"] > 0):
        assert row["clients_ok"] == 2 and row["clients_failed"] == 2  # 2 of 4 malicious
        reasons = row["failure_reasons"]
        assert sum(reasons.values()) == 2
        assert not any(r.startswith(("client error", "no reply")) for r in reasons)
        assert "skipped" not in row
    assert summary["final"]["student_accuracy"] is not None


def test_malformed_draws_are_seeded_and_always_break_something() -> None:
    assert MALFORMED in ATTACK_KINDS
    metrics = {"num-examples": 30, "server-round": 2, "train-loss": 0.5}
    arrays = {"a": np.ones((3, 2), np.float32), "b": np.arange(3)}
    for seed in range(50):
        first = malform_metrics(metrics, sendable=metrics, rng=np.random.default_rng(seed))
        again = malform_metrics(metrics, sendable=metrics, rng=np.random.default_rng(seed))
        assert repr(first) == repr(again) and repr(first) != repr(metrics)
        broken = malform_arrays(arrays, sendable=arrays, rng=np.random.default_rng(seed))
        assert broken.keys() != arrays.keys() or any(
            broken[k].shape != arrays[k].shape
            or broken[k].dtype != arrays[k].dtype
            or not np.array_equal(broken[k], arrays[k])
            for k in arrays
        )
    # only keys that leave the client are broken (a withheld train-loss would vanish)
    for seed in range(20):
        kept = malform_metrics(
            metrics, sendable=["num-examples", "server-round"], rng=np.random.default_rng(seed)
        )
        assert kept.get("train-loss") == 0.5
