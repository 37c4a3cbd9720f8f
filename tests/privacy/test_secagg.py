"""Secure aggregation core (fedkd.privacy.secagg): sums, dropouts, masking, refusals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedkd.privacy.secagg import (
    DoubleMaskingViolation,
    FixedPointEncoding,
    MaskedInput,
    ProtocolError,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    TooManyDropouts,
    UnmaskReply,
    UnmaskRequest,
    keys,
    neighbour_graph,
    shamir,
)
from fedkd.privacy.secagg.protocol import pairwise_mask

SESSION = bytes(range(32))
P_FLOOR = 1e-6  # chi-square p-values below this reject uniformity (fixed seeds: no flakes)


def byte_source(seed: int) -> Callable[[int], bytes]:
    generator = np.random.default_rng(seed)
    return lambda n: generator.bytes(n)


def make_params(n: int, length: int, *, degree: int, bound: float = 1.0) -> SecAggParams:
    encoding = FixedPointEncoding(bound=bound, num_clients=n, frac_bits=24)
    return SecAggParams(vector_length=length, encoding=encoding, degree=degree, session=SESSION)


@dataclass
class Run:
    result: np.ndarray
    server: SecAggServer
    clients: dict[int, SecAggClient]
    masked: dict[int, MaskedInput]  # every y computed, sent or withheld
    replies: list[UnmaskReply]


def run_protocol(
    values: dict[int, np.ndarray],
    params: SecAggParams,
    *,
    drop_after_sharing: frozenset[int] = frozenset(),
    drop_after_masking: frozenset[int] = frozenset(),
    seed: int = 0,
) -> Run:
    """All four rounds in memory; ``drop_after_sharing`` compute y but never send it,
    ``drop_after_masking`` send y but never answer round 3."""
    clients = {u: SecAggClient(u, params, rng=byte_source(seed * 1000 + u)) for u in values}
    server = SecAggServer(params)
    broadcasts = server.collect_keys([c.advertise_keys() for c in clients.values()])
    routed = server.route_shares([clients[u].share_keys(b) for u, b in broadcasts.items()])
    masked = {u: clients[u].masked_input(values[u], r) for u, r in routed.items()}
    request = server.collect_masked_inputs(
        [m for u, m in masked.items() if u not in drop_after_sharing]
    )
    replies = [clients[u].unmask(request) for u in sorted(request.survivors - drop_after_masking)]
    result = server.unmask(replies)
    return Run(result, server, clients, masked, replies)


def random_values(
    n: int, length: int, *, bound: float = 1.0, seed: int = 0
) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.uniform(-bound, bound, size=length).astype(np.float32) for u in range(n)}


def chi2_uniform_pvalue(masked: np.ndarray, modulus_bits: int, *, top_bits: int = 4) -> float:
    """p-value of 'the top bits of these values mod 2**b are uniform'."""
    bins = (masked >> np.uint64(modulus_bits - top_bits)).astype(np.int64)
    counts = np.bincount(bins, minlength=1 << top_bits)
    return float(stats.chisquare(counts).pvalue)


# ---- the sum ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 10])
@pytest.mark.parametrize("stage", ["after_sharing", "after_masking"])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3])
def test_unmasked_sum_equals_the_float_sum_of_survivors(
    n: int, stage: str, fraction: float
) -> None:
    params = make_params(n, 64, degree=n)
    values = random_values(n, 64, seed=n)
    dropped = frozenset(range(1, 1 + round(n * fraction)))
    run = run_protocol(
        values,
        params,
        drop_after_sharing=dropped if stage == "after_sharing" else frozenset(),
        drop_after_masking=dropped if stage == "after_masking" else frozenset(),
    )
    # dropped before y: absent; dropped after y: their y is in the sum
    counted = set(values) - dropped if stage == "after_sharing" else set(values)
    expected = np.sum([values[u].astype(np.float64) for u in counted], axis=0)
    assert run.result is not None
    assert run.server.survivors == frozenset(counted)
    np.testing.assert_allclose(run.result, expected, rtol=0, atol=params.encoding.max_sum_error)
    if stage == "after_sharing" and dropped:
        everyone = np.sum([values[u].astype(np.float64) for u in values], axis=0)
        assert not np.allclose(run.result, everyone, atol=1e-3)


@pytest.mark.parametrize(("n", "degree"), [(10, 4), (30, 20)])
def test_sparse_graph_sum_with_dropouts_at_both_stages(n: int, degree: int) -> None:
    params = make_params(n, 32, degree=degree, bound=5.0)
    values = random_values(n, 32, bound=5.0, seed=1)
    after_sharing = frozenset({3}) if n == 10 else frozenset({0, 11, 22})
    after_masking = frozenset({7}) if n == 10 else frozenset({4, 9, 15, 19, 25, 28})
    run = run_protocol(
        values, params, drop_after_sharing=after_sharing, drop_after_masking=after_masking
    )
    assert run.server.graph is not None and not run.server.graph.is_complete
    expected = np.sum([values[u].astype(np.float64) for u in set(values) - after_sharing], axis=0)
    np.testing.assert_allclose(run.result, expected, rtol=0, atol=params.encoding.max_sum_error)


def test_more_dropouts_than_the_threshold_allows_release_nothing() -> None:
    n = 10  # complete graph: 10 holders, t = 6, at most 4 may drop
    params = make_params(n, 8, degree=n)
    values = random_values(n, 8)
    with pytest.raises(TooManyDropouts, match="share holders"):
        run_protocol(values, params, drop_after_sharing=frozenset(range(5)))
    with pytest.raises(TooManyDropouts, match="6 needed"):
        run_protocol(values, params, drop_after_masking=frozenset(range(5)))
    assert run_protocol(values, params, drop_after_masking=frozenset(range(4))).result is not None


# ---- what the server sees -----------------------------------------------------------------


def test_masked_inputs_look_uniform_whatever_the_input() -> None:
    n, length = 5, 20_000
    params = make_params(n, length, degree=n)
    b = params.encoding.modulus_bits
    values = {u: np.zeros(length, dtype=np.float32) for u in range(n)}
    values[1] = np.full(length, params.encoding.bound, dtype=np.float32)
    run = run_protocol(values, params)
    zeros_y, max_y = run.masked[0].masked, run.masked[1].masked
    assert chi2_uniform_pvalue(zeros_y, b) > P_FLOOR
    assert chi2_uniform_pvalue(max_y, b) > P_FLOOR
    top = [(y >> np.uint64(b - 4)).astype(np.int64) for y in (zeros_y, max_y)]
    table = np.stack([np.bincount(t, minlength=16) for t in top])
    assert stats.chi2_contingency(table).pvalue > P_FLOOR
    # the same check catches unmasked inputs: it is not a test that cannot fail
    for unmasked in (params.encoding.encode(values[0]), params.encoding.encode(values[1])):
        assert chi2_uniform_pvalue(unmasked, b) < P_FLOOR
    weak = params.encoding.encode(np.random.default_rng(0).uniform(-1, 1, length))
    assert chi2_uniform_pvalue(weak, b) < P_FLOOR


def test_a_late_reply_of_a_dropped_client_cannot_be_unmasked() -> None:
    n, length, late = 6, 20_000, 2
    params = make_params(n, length, degree=n)
    values = {u: np.zeros(length, dtype=np.float32) for u in range(n)}
    run = run_protocol(values, params, drop_after_sharing=frozenset({late}))
    server = run.server
    assert late in server.dropped
    # the server holds the dropped client's mask key, never a share of its self-mask seed
    assert late in server.recovered_mask_keys
    assert all(late not in reply.self_mask_shares for reply in run.replies)
    assert any(late in reply.mask_key_shares for reply in run.replies)
    # y arrives late: remove every pairwise mask the server can compute ...
    late_y = run.masked[late].masked
    assert server.graph is not None
    remainder = late_y.copy()
    for u in server.graph.neighbours[late]:
        public = server.public_keys[u].mask_public
        own = pairwise_mask(late, server.recovered_mask_keys[late], u, public, params)
        remainder = params.encoding.reduce(remainder - own)
    # ... and what is left is x + PRG(b): still uniform, nowhere near x = 0
    assert chi2_uniform_pvalue(remainder, params.encoding.modulus_bits) > P_FLOOR
    assert np.abs(params.encoding.decode_sum(remainder)).mean() > 0.1 * params.encoding.bound * n
    with pytest.raises(ProtocolError, match="out of order"):
        server.collect_masked_inputs([run.masked[late]])


def test_a_client_asked_for_both_shares_of_one_neighbour_refuses() -> None:
    n = 4
    params = make_params(n, 4, degree=n)
    clients = {u: SecAggClient(u, params, rng=byte_source(u)) for u in range(n)}
    server = SecAggServer(params)
    broadcasts = server.collect_keys([c.advertise_keys() for c in clients.values()])
    routed = server.route_shares([clients[u].share_keys(b) for u, b in broadcasts.items()])
    for u, r in routed.items():
        clients[u].masked_input(np.zeros(4, dtype=np.float32), r)
    everyone = frozenset(range(n))
    with pytest.raises(DoubleMaskingViolation, match=r"\[2\] named both"):
        clients[0].unmask(UnmaskRequest(survivors=everyone, dropped=frozenset({2})))
    first = clients[1].unmask(UnmaskRequest(survivors=everyone, dropped=frozenset()))
    assert set(first.self_mask_shares) == everyone and not first.mask_key_shares
    with pytest.raises(DoubleMaskingViolation, match="earlier request"):
        clients[1].unmask(UnmaskRequest(survivors=everyone - {3}, dropped=frozenset({3})))
    with pytest.raises(DoubleMaskingViolation, match="not a survivor"):
        clients[3].unmask(UnmaskRequest(survivors=everyone - {3}, dropped=frozenset({3})))


def test_the_server_cannot_readdress_encrypted_shares() -> None:
    params = make_params(3, 4, degree=3)
    clients = {u: SecAggClient(u, params, rng=byte_source(u)) for u in range(3)}
    server = SecAggServer(params)
    broadcasts = server.collect_keys([c.advertise_keys() for c in clients.values()])
    routed = server.route_shares([clients[u].share_keys(b) for u, b in broadcasts.items()])
    swapped = dict(routed[0].ciphertexts)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    with pytest.raises(ProtocolError, match="does not authenticate"):
        clients[0].masked_input(np.zeros(4, dtype=np.float32), type(routed[0])(0, swapped))


# ---- building blocks ------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(2, 12),
    data=st.data(),
)
def test_shamir_any_t_shares_reconstruct_and_fewer_raise(
    secret: bytes, n: int, data: st.DataObject
) -> None:
    t = data.draw(st.integers(1, n))
    shares = shamir.split(secret, range(1, n + 1), t, rng=byte_source(n))
    assert set(shares) == set(range(1, n + 1))
    assert all(0 <= s.y < shamir.PRIME for s in shares.values())
    subset = data.draw(
        st.lists(st.sampled_from(sorted(shares)), min_size=t, max_size=n, unique=True)
    )
    assert shamir.reconstruct([shares[x] for x in subset], t) == secret
    with pytest.raises(shamir.NotEnoughShares, match=f"needs {t}"):
        shamir.reconstruct([shares[x] for x in subset[: t - 1]], t)


def test_shamir_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        shamir.split(b"short", [1, 2], 1)
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(bytes(32), [1, 2], 3)
    with pytest.raises(ValueError, match="share ids"):
        shamir.split(bytes(32), [0, 1], 1)


def test_pairwise_seeds_agree_and_depend_on_purpose_and_session() -> None:
    a, b = keys.KeyPair.generate(byte_source(1)), keys.KeyPair.generate(byte_source(2))
    ab = keys.agree(a.private_bytes, b.public_bytes, purpose=keys.MASK_PURPOSE, session=SESSION)
    ba = keys.agree(b.private_bytes, a.public_bytes, purpose=keys.MASK_PURPOSE, session=SESSION)
    assert ab == ba and len(ab) == 32
    other = keys.agree(
        a.private_bytes, b.public_bytes, purpose=keys.CIPHER_PURPOSE, session=SESSION
    )
    assert other != ab
    assert (
        keys.agree(a.private_bytes, b.public_bytes, purpose=keys.MASK_PURPOSE, session=bytes(32))
        != ab
    )


@pytest.mark.parametrize(("n", "degree"), [(7, 7), (12, 4)])
def test_pairwise_masks_cancel_over_the_graph(n: int, degree: int) -> None:
    params = make_params(n, 256, degree=degree)
    graph = neighbour_graph(range(n), degree, seed=SESSION)
    assert graph.is_complete == (degree >= n - 1)
    pairs = {u: keys.KeyPair.generate(byte_source(u)) for u in range(n)}
    total = np.zeros(256, dtype=np.uint64)
    for u in range(n):
        for v in graph.neighbours[u]:
            total = total + pairwise_mask(
                u, pairs[u].private_bytes, v, pairs[v].public_bytes, params
            )
    assert not np.any(params.encoding.reduce(total))
    one = pairwise_mask(0, pairs[0].private_bytes, 1, pairs[1].public_bytes, params)
    assert np.any(one)


@pytest.mark.parametrize(("n", "degree"), [(10, 4), (11, 5), (30, 20), (5, 4), (5, 9)])
def test_the_graph_is_symmetric_regular_and_seeded(n: int, degree: int) -> None:
    graph = neighbour_graph(range(n), degree, seed=SESSION)
    expected_degree = min(2 * -(-degree // 2), n - 1)
    assert graph.degree == expected_degree
    for u, vs in graph.neighbours.items():
        assert u not in vs and len(vs) == expected_degree
        assert all(u in graph.neighbours[v] for v in vs)
    assert graph == neighbour_graph(reversed(range(n)), degree, seed=SESSION)
    assert graph.threshold == (expected_degree + 1) // 2 + 1
    if not graph.is_complete:
        assert graph != neighbour_graph(range(n), degree, seed=bytes(32))


# ---- fixed point ----------------------------------------------------------------------------


def test_fixed_point_refuses_values_and_sums_beyond_the_bound() -> None:
    encoding = FixedPointEncoding(bound=2.0, num_clients=10)
    with pytest.raises(ValueError, match=r"bound=2\.0"):
        encoding.encode(np.array([0.5, -2.5], dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        encoding.encode(np.array([np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="float arrays"):
        encoding.encode(np.array([1, 2]))
    with pytest.raises(
        ValueError, match=r"num_clients=1000 values of \|value\| <= bound=1000000000\.0 .*2\*\*65"
    ):
        FixedPointEncoding(bound=1e9, num_clients=1000, frac_bits=24)
    with pytest.raises(ValueError, match="bound must be finite"):
        FixedPointEncoding(bound=float("inf"), num_clients=2)
    assert encoding.modulus_bits <= 62 and encoding.modulus > 2 * encoding.max_abs_sum


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 100),
    frac_bits=st.integers(4, 30),
    bound=st.floats(0.01, 1000.0),
    seed=st.integers(0, 2**16),
)
def test_fixed_point_sum_within_the_documented_error(
    n: int, frac_bits: int, bound: float, seed: int
) -> None:
    encoding = FixedPointEncoding(bound=bound, num_clients=n, frac_bits=frac_bits)
    rng = np.random.default_rng(seed)
    edge = np.float32(bound)
    if float(edge) > bound:  # float32 rounding may step past the bound
        edge = np.nextafter(edge, np.float32(0))
    values = np.clip((rng.uniform(-1, 1, size=(n, 16)) * edge).astype(np.float32), -edge, edge)
    values[0, :2] = [edge, -edge]  # the extremes are accepted
    total = np.zeros(16, dtype=np.uint64)
    for row in values:
        total = encoding.reduce(total + encoding.encode(row))
    exact = values.astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(
        encoding.decode_sum(total), exact, rtol=1e-12, atol=encoding.max_sum_error
    )
