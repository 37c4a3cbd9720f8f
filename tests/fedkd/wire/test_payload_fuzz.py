"""Hostile replies against every payload's checks (Hypothesis): whatever arrays a client
sends under a payload's keys (any dtype, shape, value, missing or extra keys), ``validate``
returns a reason or None and never raises, and what it accepts decodes."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedkd.models import model_from_config
from fedkd.wire.encoding import EncodingSpec
from fedkd.wire.payloads import PAYLOADS, ClientMetrics, Expectation, Payload
from fedkd.wire.payloads.secure_sum import (
    LAYOUT_OPTION,
    MASKED,
    MASKED_EVALUATION,
    MODULUS_OPTION,
    SumLayout,
)

C, ROWS, WIDTH = 3, 4, 2
DTYPES = ["float16", "float32", "float64", "int8", "int64", "uint8", "bool"]
REFERENCE = model_from_config(
    {"name": "mlp", "hidden": [WIDTH]}, input_shape=(3,), num_classes=C, seed=0
)
# names a weights reply uses: the reference's parameters, so shape and dtype checks are hit
WEIGHT_NAMES = tuple(REFERENCE.state_dict())
ARRAY_PAYLOADS = [p for p in PAYLOADS.values() if not isinstance(p, ClientMetrics)]
# the masked sum (secagg) of one proxy-predictions payload: ROWS * C summands and a weight
SECURE_LAYOUT = SumLayout.build([PAYLOADS["proxy-predictions"]], Expectation(C, proxy_rows=ROWS))
SECURE_OPTIONS = {LAYOUT_OPTION: SECURE_LAYOUT, MODULUS_OPTION: 20}


def _keys(payload: Payload) -> tuple[str, ...]:
    return WEIGHT_NAMES if payload.name == "weights" else payload.keys


# the shape and dtype each key should have: half the arrays drawn keep them, so the checks
# past shape and dtype (values, row sums, counts, ranges) are reached too
EXPECTED: dict[str, tuple[tuple[int, ...], str]] = {
    "proxy-probs": ((ROWS, C), "float32"),
    "proxy-probs-q": ((ROWS, C), "int8"),
    "proxy-probs-scale": ((ROWS,), "float32"),
    "proxy-probs-idx": ((ROWS, 2), "uint8"),
    "proxy-probs-val": ((ROWS, 2), "float16"),
    "test-probs": ((ROWS, C), "float32"),
    "label-logits": ((C, C), "float32"),
    "label-counts": ((C,), "float32"),
    "prototypes": ((C, WIDTH), "float32"),
    "prototype-soft": ((C, C), "float32"),
    "prototype-counts": ((C,), "float32"),
    "features": ((5, WIDTH), "float32"),
    "feature-logits": ((5, C), "float32"),
    "feature-labels": ((5,), "int64"),
    "test-features": ((ROWS, WIDTH), "float32"),
    "control-delta": ((sum(p.numel() for p in REFERENCE.parameters()),), "float32"),
    MASKED: ((SECURE_LAYOUT.method_length,), "uint32"),
    **{name: (tuple(v.shape), "float32") for name, v in REFERENCE.state_dict().items()},
}


@st.composite
def hostile_arrays(draw: st.DrawFn, name: str) -> np.ndarray:
    expected_shape, expected_dtype = EXPECTED.get(name, ((ROWS, C), "float32"))
    dtype = expected_dtype if draw(st.booleans()) else draw(st.sampled_from(DTYPES))
    if draw(st.booleans()):
        shape = expected_shape
    else:
        side = st.sampled_from([0, 1, 2, 3, 4, 5])
        shape = tuple(draw(st.lists(side, min_size=0, max_size=3)))
    if dtype.startswith("float"):
        big = 6e4 if dtype == "float16" else 1e5  # above the checks' 1e4, and representable
        # 3e38: finite, but overflows as soon as anything multiplies it (int8's scale)
        huge = 6e4 if dtype == "float16" else 3e38
        special = st.sampled_from([0.0, 1.0, -1.0, 0.5, big, huge, -1e-3, np.nan, np.inf, -np.inf])
        plain = st.floats(min_value=-2, max_value=2, width=16 if dtype == "float16" else 32)
        return draw(hnp.arrays(dtype, shape, elements=special | plain))
    return draw(hnp.arrays(dtype, shape))


@st.composite
def hostile_content(draw: st.DrawFn, payload: Payload) -> RecordDict:
    names = list(_keys(payload))
    if draw(st.booleans()):  # sometimes drop keys
        names = [n for n in names if draw(st.booleans())]
    if draw(st.booleans()):
        names.append("unexpected-key")
    arrays = {name: Array(np.ascontiguousarray(draw(hostile_arrays(name)))) for name in names}
    return RecordDict({payload.record: ArrayRecord(arrays)})


def _expectation(encoding: str, noisy: bool) -> Expectation:
    return Expectation(
        num_classes=C,
        proxy_rows=ROWS,
        test_rows=ROWS,
        num_examples=5,
        declared_examples=5,
        reference=REFERENCE,
        encoding=EncodingSpec.from_config({"name": encoding, "k": 2}),
        noisy=noisy,
        noisy_clip=1.0 if noisy else None,
        server_round=1,
        options={"embedding_width": WIDTH, "feature_width": WIDTH, **SECURE_OPTIONS},
    )


def _fuzz(payload: Payload, data) -> None:
    content = data.draw(hostile_content(payload))
    expect = _expectation(
        data.draw(st.sampled_from(["float32", "float16", "int8", "topk"])), data.draw(st.booleans())
    )
    reason = payload.validate(content, expect)
    assert reason is None or (isinstance(reason, str) and reason)
    if reason is None:
        values = payload.decode(content, expect)  # accepted means usable
        assert payload.uplink_bytes(content) >= 0
        for array in values if isinstance(values, tuple) else [values]:
            if isinstance(array, np.ndarray):
                assert np.isfinite(array).all()  # nothing non-finite gets past the checks


@pytest.mark.parametrize("payload", ARRAY_PAYLOADS, ids=lambda p: p.name)
@settings(settings.get_profile("fedkd-fast"))
@given(data=st.data())
def test_hostile_replies_get_a_reason_never_an_exception(payload: Payload, data) -> None:
    _fuzz(payload, data)


@pytest.mark.slow
@pytest.mark.parametrize("payload", ARRAY_PAYLOADS, ids=lambda p: p.name)
@settings(settings.get_profile("fedkd-full"))
@given(data=st.data())
def test_hostile_replies_get_a_reason_never_an_exception_full(payload: Payload, data) -> None:
    _fuzz(payload, data)


def test_the_fuzzer_reaches_acceptance() -> None:
    """The generator above can produce valid replies too (else the fuzz only tests rejection):
    a well-formed reply of each payload passes."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(C), size=ROWS).astype(np.float32)
    expect = _expectation("float32", noisy=False)
    valid = {
        "proxy-predictions": {"proxy-probs": probs},
        "test-predictions": {"test-probs": probs},
        "label-logits": {
            "label-logits": np.zeros((C, C), np.float32),
            "label-counts": np.array([2, 1, 2], np.float32),
        },
        "prototypes": {
            "prototypes": np.zeros((C, WIDTH), np.float32),
            "prototype-soft": np.eye(C, dtype=np.float32),
            "prototype-counts": np.array([2, 1, 2], np.float32),
        },
        "features": {
            "features": np.zeros((5, WIDTH), np.float32),
            "feature-logits": np.zeros((5, C), np.float32),
            "feature-labels": np.array([0, 1, 2, 0, 1]),
        },
        "test-features": {"test-features": np.zeros((ROWS, WIDTH), np.float32)},
        "weights": {k: v.numpy() for k, v in REFERENCE.state_dict().items()},
        "control": {"control-delta": np.zeros(EXPECTED["control-delta"][0], np.float32)},
        "secure-sum": {MASKED: np.full(SECURE_LAYOUT.method_length, 2**20 - 1, np.uint32)},
        "secure-sum-evaluation": {MASKED_EVALUATION: np.zeros(3, np.uint32)},
    }
    for payload in ARRAY_PAYLOADS:
        arrays = {k: Array(np.ascontiguousarray(v)) for k, v in valid[payload.name].items()}
        content = RecordDict({payload.record: ArrayRecord(arrays)})
        assert payload.validate(content, expect) is None, payload.name
