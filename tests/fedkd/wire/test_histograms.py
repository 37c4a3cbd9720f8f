"""Label histograms sum to the declared example count: exactly without a privacy
mechanism, within the public bound's stated slack under one, and an honest private client
is never rejected (one case per mechanism)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedkd.privacy import PrivacySpec
from fedkd.privacy.config import public_examples
from fedkd.wire import keys
from fedkd.wire.ledger import withhold
from fedkd.wire.payloads import ClientMetrics, Discovery, Expectation, LabelLogits, Prototypes
from fedkd.wire.payloads.base import DPSGD_COUNT_SLACK_BATCHES, Reporting

C, BATCH = 3, 16
LABELS = np.array([0] * 20 + [1] * 9 + [2] * 8)  # 37 records: not a multiple of the batch
MECHANISMS = {
    "none": {"name": "none"},
    "logit_dp local": {"name": "logit_dp", "mode": "local"},
    "logit_dp central": {"name": "logit_dp", "mode": "central"},
    "pate": {"name": "pate"},
    "dpsgd": {"name": "dpsgd"},
}


def _discovery(spec: PrivacySpec) -> RecordDict:
    """What an honest client answers to the discovery query under ``spec``."""
    record = Discovery.compute(
        partition_id=0,
        train_y=LABELS,
        num_classes=C,
        architecture=0,
        num_examples=public_examples(spec, len(LABELS), BATCH),
    )
    content = RecordDict({keys.METRICS: record})
    withhold("discovery", content, spec)
    return content


@pytest.mark.parametrize("allowed", [False, True], ids=["withheld", "allowed"])
@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_an_honest_private_client_is_never_rejected(mechanism, allowed) -> None:
    options = dict(MECHANISMS[mechanism])
    if allowed and options["name"] != "none":
        options["allow_unprotected"] = [keys.LABEL_HISTOGRAM]
    spec = PrivacySpec.from_config(options)
    reporting = Reporting(spec, BATCH)
    found = Discovery.decode(
        _discovery(spec),
        num_classes=C,
        require_histogram=spec.sends_unprotected(keys.LABEL_HISTOGRAM),
        reporting=reporting,
    )
    reported = public_examples(spec, len(LABELS), BATCH)
    assert found.num_examples == reported  # the count train replies repeat
    if spec.sends_unprotected(keys.LABEL_HISTOGRAM):
        assert found.label_histogram == (20, 9, 8)
    # its train replies report the same public count, within the declared one
    metrics = MetricRecord({keys.NUM_EXAMPLES: reported, keys.SERVER_ROUND: 1})
    expect = Expectation(
        num_classes=C, declared_examples=found.num_examples, server_round=1, reporting=reporting
    )
    assert ClientMetrics().validate(RecordDict({keys.METRICS: metrics}), expect) is None


def test_dpsgd_caps_use_the_public_bound_with_its_slack() -> None:
    """Regression: under dpsgd with label-histogram allowed, discovery declared the exact
    sum while train replies report batch * ceil(n / batch), so an honest client whose n is
    not a multiple of the batch was rejected (implausible num-examples) every round."""
    spec = PrivacySpec.from_config({"name": "dpsgd", "allow_unprotected": [keys.LABEL_HISTOGRAM]})
    reporting = Reporting(spec, BATCH)
    reported = public_examples(spec, 37, BATCH)
    assert reported == 48
    slack = DPSGD_COUNT_SLACK_BATCHES * BATCH
    assert reporting.histogram_problem(37, reported) is None
    assert reporting.histogram_problem(reported - slack + 1, reported) is None
    assert reporting.histogram_problem(reported - slack, reported) == "fall short of"
    assert reporting.histogram_problem(reported + 1, reported) == "exceed"
    # per-label counts of a train reply: the same rule
    expect = Expectation(num_classes=C, num_examples=reported, reporting=reporting)
    assert LabelLogits().validate(_label_logits([20, 9, 8]), expect) is None
    assert LabelLogits().validate(_label_logits([20, 9, 80]), expect) == (
        "label logits: counts exceed num-examples"
    )


def test_without_privacy_histograms_sum_exactly_to_the_count() -> None:
    exact = Expectation(num_classes=C, num_examples=37)
    assert LabelLogits().validate(_label_logits([20, 9, 8]), exact) is None
    assert LabelLogits().validate(_label_logits([20, 9, 7]), exact) == (
        "label logits: counts fall short of num-examples"
    )
    short = RecordDict(
        {
            keys.METRICS: MetricRecord(
                {keys.PARTITION_ID: 0, keys.NUM_EXAMPLES: 37, keys.LABEL_HISTOGRAM: [20, 9, 7]}
            )
        }
    )
    with pytest.raises(ValueError, match="fall short of num-examples"):
        Discovery.decode(short, num_classes=C)
    # under logit_dp/pate the public count (1) bounds nothing: the histogram is not capped
    pate = Reporting(PrivacySpec.from_config({"name": "pate"}), BATCH)
    assert pate.histogram_problem(10**6, 1) is None


def test_prototype_counts_are_integral_and_sum_to_the_count() -> None:
    """Regression: FedProto's counts could be fractional, and soft rows of classes the
    client does not hold could carry any value (1e30 was accepted)."""
    expect = Expectation(num_classes=C, num_examples=37, options={"embedding_width": 2})

    def content(counts, soft=None) -> RecordDict:
        arrays = {
            keys.PROTOTYPES: np.zeros((C, 2), np.float32),
            keys.PROTOTYPE_SOFT: np.eye(C, dtype=np.float32) if soft is None else soft,
            keys.PROTOTYPE_COUNTS: np.asarray(counts, np.float32),
        }
        return RecordDict({keys.PREDICTIONS: ArrayRecord({k: Array(v) for k, v in arrays.items()})})

    assert Prototypes().validate(content([20, 9, 8]), expect) is None
    assert Prototypes().validate(content([20, 9, 7.5]), expect) == "prototypes: counts not integral"
    soft = np.eye(C, dtype=np.float32)
    soft[2, 0] = 1e30
    assert Prototypes().validate(content([28, 9, 0], soft), expect) == (
        "prototypes: soft rows are not probability vectors"
    )


def _label_logits(counts) -> RecordDict:
    arrays = {
        keys.LABEL_LOGITS: Array(np.zeros((C, C), np.float32)),
        keys.LABEL_COUNTS: Array(np.asarray(counts, np.float32)),
    }
    return RecordDict({keys.PREDICTIONS: ArrayRecord(arrays)})
