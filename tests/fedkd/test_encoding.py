"""Encodings of shared proxy predictions: round trips, exact bytes, config checks, reply
validation of encoded predictions, and whole runs with each encoding (in-process engine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedkd.apps.server import prepare_run
from fedkd.config import compose_config
from fedkd.errors import ConfigError
from fedkd.run.results import read_metrics
from fedkd.setup import FederationSetup
from fedkd.wire import keys
from fedkd.wire.encoding import EncodingSpec, MalformedEncoding, index_dtype
from simulations.run import run

ROWS = np.array(
    [[0.7, 0.2, 0.1, 0.0], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 1.0, 0.0], [0.1, 0.5, 0.15, 0.25]],
    dtype=np.float32,
)


def _round_trip(spec: EncodingSpec, values: np.ndarray) -> np.ndarray:
    return spec.decode(spec.encode(values), shape=values.shape)


# ------------------------------------------------------------------ round trips
def test_float32_is_the_rows_themselves() -> None:
    spec = EncodingSpec()
    encoded = spec.encode(ROWS.astype(np.float64))
    assert list(encoded) == [keys.PROXY_PROBS]
    # the same bytes as the upload before encodings existed
    before = Array(np.ascontiguousarray(ROWS.astype(np.float64), dtype=np.float32))
    assert Array(encoded[keys.PROXY_PROBS]).data == before.data
    np.testing.assert_array_equal(_round_trip(spec, ROWS), ROWS)


def test_float16_rounds_each_entry_by_at_most_its_unit_roundoff() -> None:
    spec = EncodingSpec("float16")
    encoded = spec.encode(ROWS)
    assert encoded[keys.PROXY_PROBS].dtype == np.float16
    decoded = _round_trip(spec, ROWS)
    assert decoded.dtype == np.float32
    assert (np.abs(decoded - ROWS) <= 2.0**-11 * np.abs(ROWS)).all()
    # 0.7 is not a float16: its neighbours are 0.69970703125 and 0.7001953125
    assert decoded[0, 0] == np.float32(0.7001953125)
    np.testing.assert_array_equal(decoded[1:3], ROWS[1:3])  # 0.25, 0 and 1 are exact


def test_int8_quantizes_each_row_on_its_own_scale() -> None:
    spec = EncodingSpec("int8")
    values = np.array([[0.7, 0.2, 0.1, 0.0], [-2.54, 1.0, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0]])
    encoded = spec.encode(values)
    quantized, scale = encoded[keys.PROXY_PROBS_Q], encoded[keys.PROXY_PROBS_SCALE]
    assert quantized.dtype == np.int8 and scale.dtype == np.float32
    np.testing.assert_allclose(scale, [0.7 / 127, 2.54 / 127, 1.0], rtol=1e-6)  # zero row: 1
    # 0.2 / (0.7/127) = 36.29, 0.1 / (0.7/127) = 18.14; 1.0 / 0.02 = 50, 0.3 / 0.02 = 15
    np.testing.assert_array_equal(quantized, [[127, 36, 18, 0], [-127, 50, 15, 0], [0, 0, 0, 0]])
    decoded = spec.decode(encoded, shape=(3, 4))
    np.testing.assert_allclose(decoded[0], [0.7, 36 * 0.7 / 127, 18 * 0.7 / 127, 0], rtol=1e-6)
    np.testing.assert_allclose(decoded[1], values[1], rtol=1e-5)
    np.testing.assert_array_equal(decoded[2], 0.0)
    half_step = scale[:, None] / 2
    assert (np.abs(decoded - values) <= half_step * (1 + 1e-5)).all()


def test_topk_keeps_the_k_largest_entries_and_zeros_the_rest() -> None:
    encoded = EncodingSpec("topk", k=2).encode(ROWS)
    indices, kept = encoded[keys.PROXY_PROBS_IDX], encoded[keys.PROXY_PROBS_VAL]
    assert indices.dtype == np.uint8 and kept.dtype == np.float16
    # largest first; ties broken by class index
    np.testing.assert_array_equal(indices, [[0, 1], [0, 1], [2, 0], [1, 3]])
    np.testing.assert_array_equal(kept[3], [0.5, 0.25])
    decoded = EncodingSpec("topk", k=2).decode(encoded, shape=ROWS.shape)
    np.testing.assert_array_equal(decoded[3], [0.0, 0.5, 0.0, 0.25])
    np.testing.assert_array_equal(decoded[2], ROWS[2])  # a one-hot row survives whole
    np.testing.assert_allclose(decoded[0], [0.7, 0.2, 0.0, 0.0], rtol=2.0**-11)
    one = _round_trip(EncodingSpec("topk", k=1), ROWS)
    np.testing.assert_allclose(one.sum(axis=1), [0.7, 0.25, 1.0, 0.5], rtol=2.0**-11)


def test_decoding_names_the_array_that_is_wrong() -> None:
    spec = EncodingSpec("topk", k=2)
    encoded = spec.encode(ROWS)
    with pytest.raises(MalformedEncoding, match=r"^proxy-probs-val: missing$"):
        spec.decode({keys.PROXY_PROBS_IDX: encoded[keys.PROXY_PROBS_IDX]}, shape=ROWS.shape)
    with pytest.raises(MalformedEncoding, match=r"^proxy-probs-idx: shape \(4, 2\), expected"):
        spec.decode(encoded, shape=(5, 4))
    # a client whose rows are not finite cannot hide it behind the encoding
    broken = ROWS.copy()
    broken[1, 3] = np.nan
    for name in ("float16", "int8", "topk"):
        with pytest.raises(MalformedEncoding, match="not finite"):
            EncodingSpec(name, k=2).decode(EncodingSpec(name, k=2).encode(broken), shape=(4, 4))


def test_index_dtype_is_the_smallest_that_holds_every_class() -> None:
    assert index_dtype(2) == np.uint8 and index_dtype(256) == np.uint8
    assert index_dtype(257) == np.uint16 and index_dtype(65536) == np.uint16
    assert index_dtype(65537) == np.uint32


@pytest.mark.parametrize("name", ["float16", "int8", "topk"])
def test_rounding_error_bounds_the_actual_error(name: str) -> None:
    rng = np.random.default_rng(0)
    values = rng.dirichlet(np.full(10, 0.3), size=500).astype(np.float32)
    spec = EncodingSpec(name, k=4)
    decoded = _round_trip(spec, values)
    error = np.abs(decoded - values)
    if name == "topk":  # dropped entries are not rounding: compare the kept ones only
        error = np.where(decoded != 0, error, 0.0)
        kept_mass = decoded.sum(axis=1)
        assert (kept_mass >= spec.min_row_mass(10) - spec.rounding_error(decoded)).all()
    assert (error.sum(axis=1) <= spec.rounding_error(decoded)).all()
    assert (error.sum(axis=1) > 0).any()  # the bound is not vacuous: rounding happened


# ------------------------------------------------------------------ exact bytes
@pytest.mark.parametrize(
    ("name", "payload_bytes"),
    [("float32", 4000), ("float16", 2000), ("int8", 1000 + 400), ("topk", 300 + 600)],
)
def test_encoded_records_count_exactly_their_payload(name: str, payload_bytes: int) -> None:
    """100 rows x 10 classes: count_bytes() grows by exactly the payload (the .npy header and
    the key names are the same for 0 rows)."""
    rows = np.random.default_rng(1).dirichlet(np.ones(10), size=100)
    spec = EncodingSpec(name, k=3)
    full = ArrayRecord({n: Array(v) for n, v in spec.encode(rows).items()})
    empty = ArrayRecord({n: Array(v) for n, v in spec.encode(rows[:0]).items()})
    assert full.count_bytes() - empty.count_bytes() == payload_bytes
    assert sum(a.numpy().nbytes for a in full.values()) == payload_bytes
    names = sum(len(n) for n in full)
    assert empty.count_bytes() == names + 128 * len(full)  # one 128-byte .npy header each


# ------------------------------------------------------------------ config
TINY = [
    "dataset=synthetic",
    "dataset.num_samples=300",
    "partition=iid",
    "num_clients=4",
    "model.hidden=[8]",
    "student.hidden=[8]",
    "client.epochs=1",
    "progress=false",
]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["encoding.name=bfloat16"], r"encoding\.name must be one of"),
        (["encoding.name=topk", "encoding.k=0"], r"encoding\.k must be an integer >= 1"),
        (["encoding.k=0"], r"encoding\.k must be an integer >= 1"),
        (["encoding.name=topk", "encoding.k=5"], r"encoding\.k=5 must be in 1\.\.4"),
        (["+encoding.bits=4"], r"encoding: unknown keys \['bits'\]"),
    ],
)
def test_bad_encoding_config_is_a_config_error_naming_the_key(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        prepare_run(compose_config([*TINY, "strategy=dsfl", *overrides]))


def test_the_encoding_travels_to_clients_in_the_setup() -> None:
    plan = prepare_run(
        compose_config([*TINY, "strategy=dsfl", "encoding.name=topk", "encoding.k=4"])
    )
    text = plan.assets.setup.to_json()
    assert '"encoding": {"k": 4, "name": "topk"}' in text  # canonical: sorted keys
    assert FederationSetup.from_json(text).encoding == {"name": "topk", "k": 4}
    assert plan.strategy.encoding == EncodingSpec("topk", k=4)
    # k beyond the classes only matters for topk
    prepare_run(compose_config([*TINY, "strategy=dsfl", "encoding.k=9"]))


# ------------------------------------------------------------------ reply validation
def _strategy(*extra: str):  # needs the task_identity fixture
    strategy = prepare_run(compose_config([*TINY, "strategy=dsfl", *extra])).strategy
    strategy.node_of_partition = {0: 11, 1: 22, 2: 33, 3: 44}
    strategy.label_histograms = {p: [10, 10, 10, 10] for p in range(4)}
    requests = list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), None))
    return strategy, requests


def _reply(request: Message, arrays: dict[str, np.ndarray]) -> Message:
    metrics = MetricRecord({keys.NUM_EXAMPLES: 40, keys.TRAIN_LOSS: 0.5, keys.SERVER_ROUND: 2})
    predictions = ArrayRecord({name: Array(np.ascontiguousarray(v)) for name, v in arrays.items()})
    return Message(
        RecordDict({keys.METRICS: metrics, keys.PREDICTIONS: predictions}), reply_to=request
    )


def _probs(rows: int) -> np.ndarray:
    return np.random.default_rng(2).dirichlet(np.ones(4), size=rows).astype(np.float32)


def _with(arrays: dict[str, np.ndarray], name: str, value: np.ndarray | None) -> dict:
    changed = dict(arrays)
    if value is None:
        del changed[name]
    else:
        changed[name] = value
    return changed


def test_malformed_int8_replies_are_counted_with_their_reason(task_identity) -> None:
    strategy, requests = _strategy("encoding.name=int8")
    spec = strategy.encoding
    rows = len(strategy.proxy_indices)
    good = spec.encode(_probs(rows))
    infinite = good[keys.PROXY_PROBS_SCALE].copy()
    infinite[0] = np.inf
    cases = [
        (good, None),
        (_with(good, keys.PROXY_PROBS_SCALE, None), "proxy-probs-scale: missing"),
        (
            _with(good, keys.PROXY_PROBS_Q, good[keys.PROXY_PROBS_Q].astype(np.int16)),
            "proxy-probs-q: wrong dtype int16",
        ),
        (
            _with(good, keys.PROXY_PROBS_SCALE, infinite),
            "proxy-probs-scale: not finite positive floats",
        ),
        (
            _with(good, keys.PROXY_PROBS_Q, good[keys.PROXY_PROBS_Q][:-1]),
            f"proxy-probs-q: shape ({rows - 1}, 4), expected ({rows}, 4)",
        ),
        # the scale attack: rows summing to ~10 quantize to rows summing to ~10
        (spec.encode(10 * _probs(rows)), "proxy-probs: rows are not probability vectors"),
        ({keys.PROXY_PROBS: _probs(rows)}, "proxy-probs-q: missing"),  # float32 sent
    ]
    for arrays, reason in cases:
        assert strategy.check_reply(_reply(requests[0], arrays)) == reason
    # counted per reason in the round's metrics
    replies = [_reply(r, arrays) for r, (arrays, _) in zip(requests, cases[:4], strict=True)]
    strategy.aggregate_train(2, replies)
    assert strategy.round_metrics[2]["failure_reasons"] == {
        "proxy-probs-scale: missing": 1,
        "proxy-probs-q: wrong dtype int16": 1,
        "proxy-probs-scale: not finite positive floats": 1,
    }
    assert strategy.round_metrics[2]["clients_ok"] == 1


def test_malformed_topk_and_float16_replies_are_rejected(task_identity) -> None:
    strategy, requests = _strategy("encoding.name=topk", "encoding.k=2")
    rows = len(strategy.proxy_indices)
    good = strategy.encoding.encode(_probs(rows))
    indices, kept = good[keys.PROXY_PROBS_IDX], good[keys.PROXY_PROBS_VAL]
    out_of_range, repeated, nan = indices.copy(), indices.copy(), kept.copy()
    out_of_range[0, 0] = 4
    repeated[0, 1] = repeated[0, 0]
    nan[0, 0] = np.nan
    cases = [
        (good, None),
        (
            _with(good, keys.PROXY_PROBS_IDX, out_of_range),
            "proxy-probs-idx: class index out of range",
        ),
        (
            _with(good, keys.PROXY_PROBS_IDX, repeated),
            "proxy-probs-idx: a class repeated in a row",
        ),
        (
            _with(good, keys.PROXY_PROBS_IDX, indices.astype(np.int64)),
            "proxy-probs-idx: wrong dtype int64",
        ),
        (_with(good, keys.PROXY_PROBS_VAL, nan), "proxy-probs-val: not finite floats"),
        (
            _with(good, keys.PROXY_PROBS_VAL, kept.astype(np.float32)),
            "proxy-probs-val: wrong dtype float32",
        ),
        (
            strategy.encoding.encode(10 * _probs(rows)),
            "proxy-probs: rows are not probability vectors",
        ),
        # two entries of a 4-class row hold at least half its mass: 0.3 + 0.1 cannot be a top-2
        (
            _with(good, keys.PROXY_PROBS_VAL, np.tile(np.float16([0.3, 0.1]), (rows, 1))),
            "proxy-probs: rows are not probability vectors",
        ),
    ]
    for arrays, reason in cases:
        assert strategy.check_reply(_reply(requests[0], arrays)) == reason

    strategy, requests = _strategy("encoding.name=float16")
    probs = _probs(len(strategy.proxy_indices))
    assert strategy.check_reply(_reply(requests[0], {keys.PROXY_PROBS: probs})) == (
        "proxy-probs: wrong dtype float32"
    )
    assert strategy.check_reply(_reply(requests[0], strategy.encoding.encode(probs))) is None


def test_decoded_rows_are_renormalized_unless_exact(task_identity) -> None:
    for name, renormalized in (("int8", True), ("topk", True), ("float32", False)):
        strategy, requests = _strategy(f"encoding.name={name}")
        probs = _probs(len(strategy.proxy_indices))
        probs[:, 0] += 5e-4  # within the sum tolerance; float32 keeps it
        replies = [_reply(requests[0], strategy.encoding.encode(probs))]
        assert strategy.check_reply(replies[0]) is None
        sums = strategy.proxy_probs(strategy.decode(replies))[0].sum(axis=1)
        if renormalized:
            np.testing.assert_allclose(sums, 1.0, atol=1e-6)
        else:
            np.testing.assert_array_equal(strategy.proxy_probs(strategy.decode(replies))[0], probs)


def test_clipped_logit_dp_rows_pass_with_the_encodings_rounding(task_identity) -> None:
    """Central logit_dp: rows at the clipping norm stay valid after int8 rounding (which may
    lengthen them), rows past it are rejected, and noisy rows are not renormalized."""
    strategy, requests = _strategy(
        "privacy=logit_dp", "privacy.mode=central", "privacy.delta=1e-3", "encoding.name=int8"
    )
    rows = len(strategy.proxy_indices)
    raw = np.random.default_rng(3).normal(size=(rows, 4))
    at_clip = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
    reply = _reply(requests[0], strategy.encoding.encode(at_clip))
    assert strategy.check_reply(reply) is None
    decoded = strategy.proxy_probs(strategy.decode([reply]))[0]
    np.testing.assert_allclose(decoded, at_clip, atol=1 / 254 + 1e-6)  # not renormalized
    too_long = _reply(requests[1], strategy.encoding.encode(2 * at_clip))
    assert strategy.check_reply(too_long) == (
        "proxy-probs: rows exceed the clipping bound privacy.clip=1"
    )


# ------------------------------------------------------------------ whole runs
RUN = [*TINY, "num_rounds=2", "backend=inline", "dataset.num_classes=10"]


def _rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without timings."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(run_dir)]


def test_float32_encoding_is_bit_identical_to_a_run_without_the_block(tmp_path) -> None:
    explicit = compose_config([*RUN, "strategy=fedmd", "encoding.name=float32"])
    absent = compose_config([*RUN, "strategy=fedmd"])
    del absent["encoding"]  # a config from before encodings existed
    run(explicit, tmp_path / "explicit")
    run(absent, tmp_path / "absent")
    assert _rows(tmp_path / "explicit") == _rows(tmp_path / "absent")
    assert _rows(tmp_path / "explicit")[1]["uplink_bytes"] > 0


#: The arrays of one reply's predictions record per encoding: (key, payload bytes per row),
#: for 10 classes and k=3.
ARRAYS_PER_ROW = {
    "float32": [("proxy-probs", 10 * 4)],
    "float16": [("proxy-probs", 10 * 2)],
    "int8": [("proxy-probs-q", 10), ("proxy-probs-scale", 4)],
    "topk": [("proxy-probs-idx", 3), ("proxy-probs-val", 3 * 2)],
}


@pytest.mark.slow
def test_each_encoding_runs_end_to_end_with_its_exact_uplink(tmp_path) -> None:
    """Every reply is valid, and uplink_bytes is exactly what the encoded records hold: per
    array a 128-byte .npy header, its key name and the payload; so the payloads compare as
    the encodings' sizes do (1/2, 14/40, 9/40 of float32's)."""
    rows = len(prepare_run(compose_config([*RUN, "strategy=dsfl"])).strategy.proxy_indices)
    payload: dict[str, int] = {}
    for name, arrays in ARRAYS_PER_ROW.items():
        summary = run(
            compose_config([*RUN, "strategy=dsfl", f"encoding.name={name}"]), tmp_path / name
        )
        assert summary["status"] == "completed"
        overhead = sum(128 + len(key) for key, _ in arrays)
        reply_bytes = overhead + rows * sum(size for _, size in arrays)
        for row in _rows(tmp_path / name)[1:]:
            assert row["clients_ok"] == 4 and "failure_reasons" not in row, row
            assert row["uplink_bytes"] == 4 * reply_bytes
            assert row["student_accuracy"] is not None
        replies = 4 * summary["rounds_completed"]
        payload[name] = summary["communication"]["uplink_bytes"] - replies * overhead
    assert payload["float16"] / payload["float32"] == 1 / 2
    assert payload["int8"] / payload["float32"] == (10 + 4) / 40
    assert payload["topk"] / payload["float32"] == (3 + 6) / 40
