"""The release ledger: each key's protection under every mechanism, derived from what
replies carried, and written into summary.json for every run."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedkd.privacy import PrivacySpec
from fedkd.wire import keys
from fedkd.wire.ledger import ReleaseLedger


def _reply(**records) -> RecordDict:
    return RecordDict(records)


def _arrays(*names: str) -> ArrayRecord:
    return ArrayRecord({name: Array(np.zeros(2, np.float32)) for name in names})


TRAIN = _reply(
    **{
        keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 3, keys.PARTITION_ID: 0}),
        keys.ARRAYS: _arrays("layer.weight", "layer.bias"),
        keys.PREDICTIONS: _arrays(keys.PROXY_PROBS, keys.LABEL_LOGITS),
        keys.EVALUATION: _arrays(keys.TEST_PROBS),
    }
)


def _protections(spec: PrivacySpec, content: RecordDict = TRAIN, message: str = "train"):
    ledger = ReleaseLedger(spec)
    ledger.record(message, content)
    return {row["key"]: row["protection"] for row in ledger.entries()}


@pytest.mark.parametrize(
    ("spec", "proxy", "weights", "test_probs"),
    [
        (PrivacySpec(), "none", "none", "none"),
        (PrivacySpec(name="logit_dp", mode="local"), "dp", "none", "none"),
        (PrivacySpec(name="logit_dp", mode="central"), "central_dp", "none", "none"),
        (PrivacySpec(name="pate"), "central_dp", "none", "none"),
        (PrivacySpec(name="dpsgd"), "dp", "dp", "dp"),
    ],
)
def test_each_key_gets_its_payloads_protection(spec, proxy, weights, test_probs) -> None:
    found = _protections(spec)
    assert found["predictions/proxy-probs"] == proxy
    assert found["arrays/*"] == weights  # the whole state dict, one row
    assert found["evaluation/test-probs"] == test_probs
    # statistics computed on private records: no mechanism covers them
    assert found["predictions/label-logits"] == "none"
    # counts are exact without a mechanism, a public bound under one
    assert found["metrics/num-examples"] == ("public" if spec.enabled else "none")
    assert found["metrics/partition-id"] == "public"


def test_discovery_and_simulation_only_messages() -> None:
    ledger = ReleaseLedger(PrivacySpec(name="dpsgd"))
    histogram = MetricRecord({keys.PARTITION_ID: 1, keys.LABEL_HISTOGRAM: [1, 2]})
    ledger.record("discovery", _reply(**{keys.METRICS: histogram}))
    state = _reply(**{keys.STATE_PREFIX + keys.STATE_MODEL: _arrays("a", "b")})
    ledger.record("state-export", state, simulation_only=True)
    rows = {(r["message"], r["key"]): r["protection"] for r in ledger.entries()}
    assert rows == {
        ("discovery", "metrics/label-histogram"): "none",
        ("discovery", "metrics/partition-id"): "public",
        ("state-export", f"{keys.STATE_PREFIX}{keys.STATE_MODEL}/*"): "simulation_only",
    }


def test_a_key_seen_under_two_protections_keeps_the_weaker() -> None:
    ledger = ReleaseLedger(PrivacySpec(name="dpsgd"))
    ledger.record("train", _reply(**{keys.ARRAYS: _arrays("w")}))
    ledger.record("train", _reply(**{keys.ARRAYS: _arrays("w")}), simulation_only=True)
    assert ledger.entries() == [
        {"message": "train", "key": "arrays/*", "protection": "simulation_only"}
    ]


SMALL = [
    "dataset=synthetic",
    "dataset.num_samples=300",
    "dataset.num_features=6",
    "dataset.num_classes=3",
    "partition=iid",
    "num_clients=3",
    "model.hidden=[8]",
    "student.hidden=[8]",
    "client.epochs=1",
    "num_rounds=2",
    "strategy=fedmd",
]


def test_a_run_reports_what_its_clients_actually_sent(in_process_run, tmp_path) -> None:
    central = ["privacy=logit_dp", "privacy.mode=central", "privacy.delta=1e-3"]
    summary = in_process_run([*SMALL, *central, "encoding.name=int8"], tmp_path / "private")
    rows = {(r["message"], r["key"]): r["protection"] for r in summary["privacy"]["releases"]}
    # int8 sends the quantized rows and their scales, not proxy-probs: read off the replies
    assert rows[("train", "predictions/proxy-probs-q")] == "central_dp"
    assert rows[("train", "predictions/proxy-probs-scale")] == "central_dp"
    assert ("train", "predictions/proxy-probs") not in rows
    # under a mechanism nothing unprotected leaves a client: withheld, not sent
    assert ("train", "evaluation/test-probs") not in rows
    assert ("discovery", "metrics/label-histogram") not in rows
    assert ("train", "metrics/train-loss") not in rows
    assert rows[("train", "metrics/num-examples")] == "public"
    assert "none" not in set(rows.values())
    assert (
        summary["privacy"]["unprotected"] == []
        and not summary["privacy"]["client_test_predictions"]
    )
    plain = in_process_run(SMALL, tmp_path / "plain")
    assert plain["privacy"]["mechanism"] == "none" and plain["privacy"]["epsilon"] is None
    plain_rows = {(r["message"], r["key"]): r["protection"] for r in plain["privacy"]["releases"]}
    assert plain_rows[("train", "predictions/proxy-probs")] == "none"
    assert ("state-export", "state/fedkd-model/*") in plain_rows  # checkpoints fetch states
