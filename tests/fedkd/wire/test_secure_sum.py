"""Secure aggregation on the wire: the secagg block, summands in every teacher space, the
packed layout, the protocol's records (fuzzed), and the masked sum's checks."""

from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkd.distill.spaces import space_targets
from fedkd.errors import ConfigError
from fedkd.privacy.secagg import ProtocolError, neighbour_graph
from fedkd.prototypes import aggregate_prototypes
from fedkd.wire import keys, secagg_records
from fedkd.wire.payloads import Expectation, LabelLogits, Prototypes, ProxyPredictions
from fedkd.wire.payloads.diagnostics import TEST_VOTES, TestPredictions
from fedkd.wire.payloads.secure_sum import (
    LAYOUT_OPTION,
    MASKED,
    MODULUS_OPTION,
    SecureSum,
    SumLayout,
    pack,
    unpack,
)
from fedkd.wire.secure import SecAggSpec, SumRule, fit_encoding, tolerated
from strategies.fd import global_label_logits

RNG = np.random.default_rng(0)


def probability_rows(clients: int, rows: int, classes: int, rng=RNG) -> np.ndarray:
    logits = rng.normal(0.0, 3.0, size=(clients, rows, classes))
    out = np.exp(logits - logits.max(axis=2, keepdims=True))
    return out / out.sum(axis=2, keepdims=True)


# ---- the secagg block -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"enabled": "yes"}, "secagg.enabled must be true or false"),
        ({"max_dropouts": -1}, "secagg.max_dropouts must be an integer >= 0"),
        ({"degree": 0}, "secagg.degree must be an integer >= 1"),
        ({"frac_bits": 4}, "secagg.frac_bits must be an integer >= 8"),
        ({"noise": "local"}, "secagg.noise must be one of"),
        ({"treshold": 3}, "unknown option(s) ['secagg.treshold']"),
    ],
)
def test_bad_secagg_blocks_are_refused_by_name(block, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        SecAggSpec.from_config(block)


def test_default_dropouts_and_degree() -> None:
    spec = SecAggSpec(enabled=True)
    assert spec.dropouts_for(10) == 3 and spec.degree_for(10) == 6
    assert spec.dropouts_for(100) == 33 and spec.degree_for(100) == 66
    assert SecAggSpec(enabled=True, max_dropouts=10).degree_for(100) == 20
    with pytest.raises(ConfigError, match="exceeds what 10 sampled clients can tolerate"):
        SecAggSpec(enabled=True, max_dropouts=5).degree_for(10)
    with pytest.raises(ConfigError, match=r"secagg\.degree=4 tolerates 2"):
        SecAggSpec(enabled=True, degree=4, max_dropouts=3).degree_for(20)


@given(st.integers(2, 60), st.integers(1, 70))
@settings(max_examples=60, deadline=None)
def test_tolerated_matches_the_protocol_graph(clients: int, degree: int) -> None:
    graph = neighbour_graph(range(clients), degree, seed=b"\0" * 32)
    assert tolerated(degree, clients) == graph.tolerated_dropouts


# ---- summands in every space ------------------------------------------------------------


@pytest.mark.parametrize("space", ["probs", "logits", "tempered_probs"])
@pytest.mark.parametrize("sized", [False, True])
def test_one_reply_from_the_sum_gives_the_teacher_of_all(space: str, sized: bool) -> None:
    """The value a method reads under secure aggregation (one reply built from the sum)
    yields, through the method's own mean rule, the teacher of all clients' rows."""
    probs = probability_rows(5, 12, 4)
    sizes = np.array([3.0, 50.0, 7.0, 20.0, 1.0])
    rule = SumRule(space=space, temperature=3.0, size_weighted=sized)
    weights = sizes if sized else np.ones(5)
    total = sum(rule.to_space(p) * w for p, w in zip(probs, weights, strict=True))
    standing = rule.from_space(total / weights.sum())
    expected = space_targets(
        probs, space=space, num_examples=sizes if sized else None, temperature=3.0
    )
    got = space_targets(
        standing[None],
        space=space,
        num_examples=[weights.sum()] if sized else None,
        temperature=3.0,
    )
    np.testing.assert_allclose(got, expected, atol=1e-6)


def _expect(**options) -> Expectation:
    return Expectation(num_classes=3, proxy_rows=5, test_rows=4, options=options)


def test_packed_sums_give_each_payload_its_plain_aggregate() -> None:
    """Pack K clients' payloads, add the vectors (as unmasking does), unpack: FD's global
    logits, FedProto's prototypes, the proxy mean and the test votes equal the plain ones."""
    payloads = [ProxyPredictions(), LabelLogits(), Prototypes(), TestPredictions()]
    expect = _expect(embedding_width=2)
    layout = SumLayout.build(payloads, expect)
    assert [s.payload for s in layout.evaluation] == [TestPredictions.name] * 2
    rule = SumRule(space="probs")
    k = 4
    proxy, test = probability_rows(k, 5, 3), probability_rows(k, 4, 3)
    logits = RNG.normal(size=(k, 3, 3))
    counts = RNG.integers(0, 5, size=(k, 3)).astype(np.float64)
    counts[:, 2] = 0  # a class nobody holds
    protos, soft = RNG.normal(size=(k, 3, 2)), probability_rows(k, 3, 3)
    total = np.zeros(layout.length)
    for i in range(k):
        arrays = {
            ProxyPredictions.name: {keys.PROXY_PROBS: proxy[i]},
            LabelLogits.name: {keys.LABEL_LOGITS: logits[i], keys.LABEL_COUNTS: counts[i]},
            Prototypes.name: {
                keys.PROTOTYPES: protos[i],
                keys.PROTOTYPE_SOFT: soft[i],
                keys.PROTOTYPE_COUNTS: counts[i],
            },
            TestPredictions.name: {keys.TEST_PROBS: test[i]},
        }
        total += pack(layout, payloads, arrays, rule, weight=1.0, client=None)  # type: ignore[arg-type]
    values, sums, weight = unpack(layout, payloads, total, rule, k)
    assert weight == k
    np.testing.assert_allclose(values[ProxyPredictions.name], proxy.mean(axis=0), atol=1e-6)
    plain_logits, plain_counts = global_label_logits(logits, counts)
    np.testing.assert_allclose(values[LabelLogits.name][0], plain_logits, atol=1e-12)
    np.testing.assert_array_equal(values[LabelLogits.name][1], plain_counts)
    for got, plain in zip(
        values[Prototypes.name], aggregate_prototypes(protos, soft, counts), strict=True
    ):
        np.testing.assert_allclose(got, plain, atol=1e-12)
    summed = values[TestPredictions.name]
    labels = np.array([0, 1, 2, 1])
    per_client = (test.argmax(axis=2) == labels).mean(axis=1)
    assert summed.mean_accuracy(labels) == pytest.approx(per_client.mean())
    np.testing.assert_array_equal(sums[TestPredictions.name][TEST_VOTES].sum(axis=1), k)


def test_pack_refuses_a_shape_the_server_did_not_announce() -> None:
    layout = SumLayout.build([ProxyPredictions()], _expect())
    arrays = {ProxyPredictions.name: {keys.PROXY_PROBS: np.full((6, 3), 1 / 3)}}
    with pytest.raises(ValueError, match=r"proxy-probs must have shape \(5, 3\)"):
        pack(layout, [ProxyPredictions()], arrays, SumRule(), weight=1.0, client=None)  # type: ignore[arg-type]


def test_the_encoding_narrows_its_fractional_bits_to_fit() -> None:
    assert fit_encoding(1.0, 10, 24).frac_bits == 24
    narrowed = fit_encoding(1e10, 100, 24)
    assert 8 <= narrowed.frac_bits < 24 and narrowed.modulus_bits <= 62
    with pytest.raises(ConfigError, match="cannot encode"):
        fit_encoding(1e15, 1000, 24)


# ---- the masked sum's checks ----------------------------------------------------------------


def _masked_content(values: np.ndarray) -> RecordDict:
    return RecordDict({keys.PREDICTIONS: ArrayRecord({MASKED: Array(values)})})


def test_secure_sum_checks_dtype_length_and_reduction() -> None:
    layout = SumLayout.build([ProxyPredictions()], _expect())
    expect = _expect(**{LAYOUT_OPTION: layout, MODULUS_OPTION: 20})
    payload = SecureSum()
    good = RNG.integers(0, 2**20, size=layout.length).astype(np.uint32)
    assert payload.validate(_masked_content(good), expect) is None
    np.testing.assert_array_equal(payload.decode(_masked_content(good), expect), good)
    assert "must be uint32" in payload.validate(_masked_content(good.astype(np.uint64)), expect)
    assert "must be uint32" in payload.validate(_masked_content(good[:-1]), expect)
    high = good.copy()
    high[3] = 2**20
    assert "not reduced" in payload.validate(_masked_content(high), expect)
    assert "missing" in payload.validate(RecordDict(), expect)


@given(
    st.sampled_from([np.uint8, np.int64, np.uint32, np.uint64, np.float32]),
    st.lists(st.integers(0, 2**31), max_size=20),
)
@settings(max_examples=80, deadline=None)
def test_secure_sum_never_crashes_on_any_array(dtype, values) -> None:
    layout = SumLayout.build([ProxyPredictions()], _expect())
    expect = _expect(**{LAYOUT_OPTION: layout, MODULUS_OPTION: 20})
    array = np.array(values, dtype=np.int64).astype(dtype)
    reason = SecureSum().validate(_masked_content(array), expect)
    assert reason is not None  # never the right length: always refused, never raised


# ---- the protocol's records, fuzzed ---------------------------------------------------------

_READERS = [
    lambda content: secagg_records.advertise_from(content, 3),
    secagg_records.broadcast_from,
    lambda content: secagg_records.shares_from(content, 3),
    secagg_records.request_from,
    lambda content: secagg_records.unmask_from(content, 3),
]
_KEYS = [
    secagg_records.PUBLIC_KEYS,
    secagg_records.ROSTER,
    secagg_records.PEERS,
    secagg_records.PEER_KEYS,
    secagg_records.CIPHERTEXTS,
    secagg_records.SURVIVORS,
    secagg_records.DROPPED,
    secagg_records.SELF_OWNERS,
    secagg_records.SELF_SHARES,
    secagg_records.KEY_OWNERS,
    secagg_records.KEY_SHARES,
]


@given(
    st.integers(0, len(_READERS) - 1),
    st.dictionaries(
        st.sampled_from(_KEYS),
        st.tuples(
            st.sampled_from([np.uint8, np.int64, np.float64]),
            st.lists(st.integers(-5, 300), max_size=140),
            st.integers(1, 3),
        ),
        max_size=6,
    ),
)
@settings(max_examples=200, deadline=None)
def test_protocol_records_are_read_or_refused_never_crash(reader, entries) -> None:
    record = ArrayRecord()
    for key, (dtype, values, ndim) in entries.items():
        array = np.array(values, dtype=np.int64).astype(dtype)
        if ndim > 1 and array.size % 2 == 0:
            array = array.reshape(2, -1) if ndim == 2 else array.reshape(2, 1, -1)
        record[key] = Array(array)
    content = RecordDict({secagg_records.SECAGG: record})
    with contextlib.suppress(ProtocolError):  # refused, naming the problem
        _READERS[reader](content)


def test_records_round_trip_the_protocol_messages() -> None:
    from fedkd.privacy.secagg import FixedPointEncoding, SecAggClient, SecAggParams, SecAggServer

    params = SecAggParams(4, FixedPointEncoding(1.0, 3), degree=2, session=b"s" * 32)
    clients = {u: SecAggClient(u, params) for u in (0, 1, 2)}
    server = SecAggServer(params)
    adverts = [
        secagg_records.advertise_from(
            RecordDict(
                {secagg_records.SECAGG: secagg_records.advertise_record(c.advertise_keys())}
            ),
            u,
        )
        for u, c in clients.items()
    ]
    broadcasts = server.collect_keys(adverts)
    bundles = []
    for u, c in clients.items():
        sent = RecordDict({secagg_records.SECAGG: secagg_records.broadcast_record(broadcasts[u])})
        bundle = c.share_keys(secagg_records.broadcast_from(sent))
        wire = RecordDict({secagg_records.SECAGG: secagg_records.shares_record(bundle)})
        bundles.append(secagg_records.shares_from(wire, u))
    routed = server.route_shares(bundles)
    inputs = {u: np.full(4, 0.25 * (u + 1)) for u in clients}
    masked = []
    for u, c in clients.items():
        wire = RecordDict({secagg_records.SECAGG: secagg_records.shares_record(routed[u])})
        masked.append(c.masked_input(inputs[u], secagg_records.routed_from(wire, u)))
    request = server.collect_masked_inputs(masked)
    wire_request = RecordDict({secagg_records.SECAGG: secagg_records.request_record(request)})
    replies = []
    for u, c in clients.items():
        reply = c.unmask(secagg_records.request_from(wire_request))
        wire = RecordDict({secagg_records.SECAGG: secagg_records.unmask_record(reply)})
        replies.append(secagg_records.unmask_from(wire, u))
    np.testing.assert_allclose(server.unmask(replies), np.full(4, 1.5), atol=1e-6)


def test_distributed_noise_shares_add_up_to_the_central_noise() -> None:
    """Under ``secagg.noise=distributed`` every client adds ``sigma / sqrt(K - m)``: any
    ``K - m`` survivors together carry noise of std ``sigma``, none alone does."""
    from types import SimpleNamespace

    from fedkd.privacy import PrivacySpec

    sigma, sampled, dropouts = 0.5, 10, 3
    rule = SumRule(space="identity", noise_std=sigma / np.sqrt(sampled - dropouts))
    spec = PrivacySpec(name="logit_dp", mode="central", reproducible_noise=True)
    zeros = {keys.PROXY_PROBS: np.zeros((400, 10))}
    shares = [
        ProxyPredictions().summands(
            zeros,
            rule,
            weight=1.0,
            client=SimpleNamespace(  # type: ignore[arg-type]
                privacy=spec, setup=SimpleNamespace(seed=0), server_round=1, partition_id=p
            ),
        )[keys.PROXY_PROBS]
        for p in range(sampled - dropouts)  # the survivors
    ]
    assert np.std(shares[0]) == pytest.approx(sigma / np.sqrt(7), rel=0.05)
    assert np.std(np.sum(shares, axis=0)) == pytest.approx(sigma, rel=0.05)
    assert not np.allclose(shares[0], shares[1])  # every client draws its own share
