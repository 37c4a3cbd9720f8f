"""Secure aggregation in whole runs (the real ClientApp and ServerApp on an in-process grid):
the unmasked sum equals plain aggregation, dropouts included; what the server receives from
each client is uniform in the modulus; the ledger, the refusals, the client's session."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from scipy import stats

from fedkd.apps.client import app as client_app
from fedkd.apps.secure_client import STATE
from fedkd.apps.server import prepare_run, run_federation
from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.privacy.secagg import UnmaskReply, UnmaskRequest
from fedkd.privacy.secagg.shamir import Share
from fedkd.run.progress import summary_table
from fedkd.wire import keys, secagg_records
from fedkd.wire.payloads.secure_sum import MASKED, MASKED_EVALUATION

pytestmark = pytest.mark.usefixtures("task_identity")


def federation(*extra: str) -> list[str]:
    """6 clients of 50 synthetic records, 2 rounds of FedMD (the paper's logit space)."""
    method = [e for e in extra if e.startswith("strategy=")]
    fedmd = [] if method else ["strategy=fedmd", "strategy.distill_epochs=2"]
    return [
        "dataset=synthetic",
        "dataset.num_samples=300",
        "num_clients=6",
        "num_rounds=2",
        "client.epochs=1",
        *fedmd,
        "model.hidden=[8]",
        "student.hidden=[8]",
        "report.html=false",
        "report.export=false",
        "checkpoint.every=0",
        "progress=false",
        *extra,
    ]


def run(grid_type, tmp_path: Path, name: str, *extra: str, capture: list | None = None) -> Any:
    plan = prepare_run(compose_config(federation(*extra)))
    strategy = plan.strategy
    if capture is not None:  # every train reply the server receives
        aggregate = strategy.aggregate_train

        def recording(server_round: int, replies: Iterable[Message]) -> Any:
            replies = list(replies)
            capture.extend(replies)
            return aggregate(server_round, replies)

        strategy.aggregate_train = recording  # type: ignore[method-assign]
    grid = grid_type(client_app, plan.config["num_clients"])
    summary = run_federation(grid, plan, tmp_path / name, show_progress=False)
    return strategy, grid, summary


def plain_and_secure(grid_type, tmp_path: Path, *extra: str) -> tuple[Any, Any]:
    """The same run without and with secure aggregation, checked to end at the same teacher
    targets (to fixed-point precision); each as (strategy, summary)."""
    plain, _, plain_summary = run(grid_type, tmp_path, "plain", *extra)
    secure, _, secure_summary = run(grid_type, tmp_path, "secure", *extra, "secagg.enabled=true")
    np.testing.assert_allclose(
        secure.round_targets[keys.PROXY_PROBS].numpy(),
        plain.round_targets[keys.PROXY_PROBS].numpy(),
        atol=1e-5,
    )
    return (plain, plain_summary), (secure, secure_summary)


@pytest.mark.parametrize(
    "extra",
    [
        (),  # logits space, equal weights
        ("aggregation=size_weighted", "strategy.teacher_space=probs"),
        ("faults.crash_fraction=0.34",),  # two of six clients drop out after sharing keys
    ],
    ids=["mean-logits", "size-weighted-probs", "dropouts"],
)
def test_the_unmasked_sum_equals_plain_aggregation(in_process_grid, tmp_path, extra) -> None:
    (plain, plain_summary), (secure, secure_summary) = plain_and_secure(
        in_process_grid, tmp_path, *extra
    )
    for server_round in (1, 2):
        row_plain, row_secure = (
            plain.round_metrics[server_round],
            secure.round_metrics[server_round],
        )
        assert row_secure["secagg_survivors"] == row_plain["clients_ok"]
        for key in ("local_on_global_test_accuracy_mean", "ensemble_accuracy"):
            assert row_secure.get(key, "absent") == pytest.approx(row_plain.get(key, "absent"))
    if extra:
        dropped = secure.round_metrics[1].get("secagg_dropouts")
        assert dropped == (2 if "crash" in str(extra) else 0)
    assert secure_summary["final"]["global_on_global_test_accuracy"] == pytest.approx(
        plain_summary["final"]["global_on_global_test_accuracy"], abs=0.02
    )


def test_what_the_server_receives_is_uniform_in_the_modulus(in_process_grid, tmp_path) -> None:
    """Each client's masked words look uniform in [0, 2**b) (Kolmogorov-Smirnov), while the
    same test tells its fixed-point rows apart from uniform at once."""
    replies: list[Message] = []
    strategy, _, _ = run(in_process_grid, tmp_path, "s", "secagg.enabled=true", capture=replies)
    bits = strategy.round_metrics[1]["secagg_modulus_bits"]
    assert replies and all(MASKED in r.content.array_records[keys.PREDICTIONS] for r in replies)
    for reply in replies:
        assert keys.PROXY_PROBS not in reply.content.array_records[keys.PREDICTIONS]
        assert keys.EVALUATION not in reply.content.array_records or (
            keys.TEST_PROBS not in reply.content.array_records[keys.EVALUATION]
        )
        words = reply.content.array_records[keys.PREDICTIONS][MASKED].numpy()
        if MASKED_EVALUATION in reply.content.array_records.get(keys.EVALUATION, {}):
            evaluation = reply.content.array_records[keys.EVALUATION][MASKED_EVALUATION]
            words = np.concatenate([words, evaluation.numpy()])
        assert words.size > 500
        uniform = words.astype(np.float64) / float(1 << bits)
        assert stats.kstest(uniform, "uniform").pvalue > 1e-6
    # the test has power: unmasked fixed-point probabilities are nowhere near uniform
    rows = np.random.default_rng(0).dirichlet(np.ones(10), size=100).ravel()
    encoded = np.rint(rows * 2**24) / float(1 << bits)
    assert stats.kstest(encoded, "uniform").pvalue < 1e-6


def test_the_ledger_marks_the_masked_sum_and_nothing_in_the_clear(
    in_process_grid, tmp_path
) -> None:
    strategy, _, summary = run(in_process_grid, tmp_path, "s", "secagg.enabled=true")
    privacy = summary["privacy"]
    rows = {(r["message"], r["key"]): r["protection"] for r in privacy["releases"]}
    assert privacy["secure_aggregation"]["enabled"] is True
    assert rows[("train", f"{keys.PREDICTIONS}/{MASKED}")] == "secure_aggregation"
    assert rows[("query", "secagg/ciphertexts")] == "secure_aggregation"
    assert rows[("query", "secagg/public-keys")] == "public"
    assert not [k for (m, k) in rows if k.endswith(keys.PROXY_PROBS) or k.endswith(keys.TEST_PROBS)]
    # the protocol's own bytes are reported beside the method's, and in the results table
    sent = summary["communication"]["secagg_uplink_bytes"]
    assert sent == sum(strategy.round_metrics[r]["secagg_uplink_bytes"] for r in (1, 2)) > 0
    labels = list(summary_table(summary).columns[0].cells)
    assert "secure aggregation messages" in labels


def test_too_many_dropouts_release_nothing_and_skip_the_round(in_process_grid, tmp_path) -> None:
    strategy, _, summary = run(
        in_process_grid,
        tmp_path,
        "s",
        "secagg.enabled=true",
        "secagg.max_dropouts=1",
        "faults.crash_fraction=0.34",
    )
    row = strategy.round_metrics[1]
    assert "more than secagg.max_dropouts=1" in row["secagg_failed"]
    assert "skipped" in row and strategy.round_targets is None
    assert summary["status"] == "completed"


def test_a_hostile_unmask_share_stops_the_round_not_the_server(
    in_process_grid, tmp_path, monkeypatch
) -> None:
    """Client 0 answers the unmask request with random field elements instead of its
    shares: the secrets no longer reconstruct, the round releases nothing and is skipped,
    and the run goes on (the server never raises)."""
    honest = secagg_records.unmask_record
    rng = np.random.default_rng(0)

    def hostile(reply: UnmaskReply) -> Any:
        if reply.client_id == 0:
            forged = {
                owner: Share(share.x, int(rng.integers(1, 2**62)) << 400)
                for owner, share in reply.self_mask_shares.items()
            }
            reply = UnmaskReply(reply.client_id, forged, reply.mask_key_shares)
        return honest(reply)

    monkeypatch.setattr(secagg_records, "unmask_record", hostile)
    strategy, _, summary = run(in_process_grid, tmp_path, "s", "secagg.enabled=true")
    assert summary["status"] == "completed"
    for server_round in (1, 2):
        row = strategy.round_metrics[server_round]
        assert "secagg_failed" in row and "skipped" in row
    assert strategy.round_targets is None


def test_client_sessions_never_leave_and_are_answered_once(in_process_grid, tmp_path) -> None:
    strategy, grid, _ = run(
        in_process_grid, tmp_path, "s", "secagg.enabled=true", "faults.crash_fraction=0.34"
    )
    # clients that crashed still hold their session (they never unmasked); exports skip it
    held = [c for c in grid.contexts.values() if STATE in c.state.config_records]
    assert len(held) == 2
    exported = strategy.export_client_states(grid)
    assert exported and all(STATE not in state for state in exported.values())
    # a replayed unmask request finds no session on a client that already answered
    answered = next(n for n, c in grid.contexts.items() if STATE not in c.state.config_records)
    request = UnmaskRequest(frozenset({0, 1}), frozenset())
    config = {
        keys.SETUP: strategy._setup_json,
        **secagg_records.stage_config(secagg_records.UNMASK, b"r" * 32),
    }
    content = RecordDict(
        {
            keys.CONFIG: ConfigRecord(config),
            secagg_records.SECAGG: secagg_records.request_record(request),
        }
    )
    message = Message(content, message_type=MessageType.QUERY, dst_node_id=answered)
    (reply,) = grid.send_and_receive([message])
    assert reply.has_error() and "no secure-aggregation session" in reply.error.reason


@pytest.mark.parametrize(
    "extra",
    [
        ("privacy=logit_dp", "privacy.mode=central"),
        ("privacy=pate",),
    ],
    ids=["central-logit-dp", "pate"],
)
def test_mechanisms_release_the_sum_as_they_release_the_rows(
    in_process_grid, tmp_path, extra
) -> None:
    common = (*extra, "strategy.teacher_space=probs", "privacy.reproducible_noise=true")
    (_, plain_summary), (_, secure_summary) = plain_and_secure(in_process_grid, tmp_path, *common)
    assert secure_summary["privacy"]["epsilon"] == plain_summary["privacy"]["epsilon"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("strategy=fedavg",), "also sends ['weights']"),
        (("encoding.name=int8", "strategy.teacher_space=probs"), "needs encoding.name=float32"),
        (("aggregation=median", "strategy.teacher_space=probs"), "the teacher rule 'median'"),
        (("secagg.noise=distributed",), "secagg.noise=distributed splits central logit_dp"),
        (("secagg.max_dropouts=3",), "exceeds what 6 sampled clients can tolerate"),
        (("strategy=local_only",), "shares nothing to sum"),
    ],
)
def test_what_secure_aggregation_cannot_do_is_refused_before_clients_run(extra, message) -> None:
    cfg = compose_config(federation("secagg.enabled=true", *extra))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        prepare_run(cfg)
