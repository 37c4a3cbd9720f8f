"""L2 sensitivity of every privacy mechanism, as properties (Hypothesis).

Neighbouring inputs are built per the relation the code declares
(:func:`fedkd.privacy.guarantees.neighbouring`), and the clean quantity each mechanism's
noise is calibrated to (a client's clipped rows, the server's sum of clipped rows, the PATE
vote histogram, a DP-SGD step's sum of clipped per-example gradients) must never move by
more than the sensitivity the code claims (:meth:`PrivacyController.sensitivity`,
:func:`logit_dp_sensitivity`, and the noise multiplier the controller charges). Tightness
tests pin each bound from below, so nobody "tightens" a claim into a false one.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedkd.models import model_from_config
from fedkd.privacy import PrivacySpec
from fedkd.privacy.controller import (
    FEDERATION,
    PrivacyController,
    RoundPlan,
    client_unit,
    record_unit,
)
from fedkd.privacy.guarantees import neighbouring
from fedkd.privacy.mechanisms import (
    central_sum,
    clip_rows,
    local_release,
    logit_dp_noise_std,
    logit_dp_sensitivity,
    one_hot_votes,
    pate_labels,
)
from fedkd.train import predict_probs, train_local
from fedkd.wire.payloads.proxy import protect

TOLERANCE = 1e-9  # float64 rounding of norms and sums, nothing more
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROW_KINDS = ("softmax", "one_hot", "uniform", "ties", "mixed")


class NoNoise:
    """A ``NormalSource`` drawing zeros: a mechanism run through it releases its clean
    quantity exactly."""

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Any = None) -> np.ndarray:
        return np.zeros(() if size is None else size) + loc


def _logit_spec(mode: str, clip: float) -> PrivacySpec:
    return PrivacySpec.from_config({"name": "logit_dp", "mode": mode, "clip": clip})


PATE_SPEC = PrivacySpec.from_config(
    {"name": "pate", "sigma": 4.0, "threshold": 3.0, "sigma_threshold": 2.0}
)


def _claimed(spec: PrivacySpec, proxy_rows: int, relation: str) -> float:
    sensitivity = PrivacyController(spec, seed=0).sensitivity(proxy_rows, relation)
    assert sensitivity is not None
    return sensitivity


def _l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


# ----------------------------------------------------------------------------- inputs


def _rows(kind: str, n: int, c: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, c)`` probability rows of one kind (``mixed``: a kind per row)."""
    if kind == "mixed":
        kinds = rng.choice(ROW_KINDS[:-1], size=n)
        return np.concatenate([_rows(str(k), 1, c, rng) for k in kinds])
    if kind == "softmax":
        logits = rng.normal(size=(n, c)) * rng.uniform(0.1, 20.0)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if kind == "one_hot":
        return np.eye(c)[rng.integers(c, size=n)]
    if kind == "uniform":
        return np.full((n, c), 1.0 / c)
    # ties: two classes share the top mass, the rest share what is left
    rows = np.full((n, c), 0.2 / max(c - 2, 1) if c > 2 else 0.0)
    for row in rows:
        row[rng.choice(c, size=2, replace=False)] = 0.4 if c > 2 else 0.5
    return rows


def _hostile(n: int, c: int, rng: np.random.Generator) -> np.ndarray:
    """Rows a hostile client may send (finite float32, as the wire decodes them): negative,
    huge, tiny, or all equal."""
    scale = 10.0 ** rng.uniform(-6, 30)
    values = rng.normal(size=(n, c)) * scale
    pick = rng.integers(4)
    if pick == 1:
        values = -np.abs(values)
    elif pick == 2:
        values = np.abs(values)
    elif pick == 3:
        values = np.full((n, c), scale)
    return values.astype(np.float32).astype(np.float64)


@st.composite
def client_rows(draw: st.DrawFn, n: int, c: int) -> np.ndarray:
    kind = draw(st.sampled_from(ROW_KINDS))
    return _rows(kind, n, c, np.random.default_rng(draw(st.integers(0, 2**32 - 1))))


@st.composite
def federations(draw: st.DrawFn) -> tuple[list[np.ndarray], float]:
    """1-8 clients' ``(N, C)`` probability rows, N in 1..50, C in 2..10, and a clip."""
    n, c = draw(st.integers(1, 50)), draw(st.integers(2, 10))
    clients = draw(st.lists(client_rows(n, c), min_size=1, max_size=8))
    clip = draw(st.floats(0.1, 5.0))
    return clients, clip


@st.composite
def changed_rows(draw: st.DrawFn, rows: np.ndarray, *, hostile: bool = False) -> np.ndarray:
    """What one client's rows become when its data change: other probability rows, the
    adversarial "every class moved by one" flip, one-hot <-> uniform, a single row changed,
    or (``hostile``) anything a client could send."""
    n, c = rows.shape
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kinds = ["fresh", "flip", "one_hot_or_uniform", "one_row"] + (["hostile"] if hostile else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "fresh":
        return draw(client_rows(n, c))
    if kind == "flip":  # all mass on another class than the old argmax
        return np.eye(c)[(rows.argmax(axis=1) + 1 + rng.integers(c - 1, size=n)) % c]
    if kind == "one_hot_or_uniform":
        one_hot = np.isclose(rows.max(axis=1), 1.0)
        return np.where(one_hot[:, None], 1.0 / c, np.eye(c)[rows.argmax(axis=1)])
    if kind == "one_row":
        changed = rows.copy()
        row = int(rng.integers(n))
        changed[row] = np.eye(c)[(int(rows[row].argmax()) + 1) % c]
        return changed
    return _hostile(n, c, rng)


# ----------------------------------------------------------------------------- releases


def _local_clean(rows: np.ndarray, clip: float) -> np.ndarray:
    """A local ``logit_dp`` release without its noise (float64): :func:`local_release`'s
    clamped and clipped rows (tied to it by the test below)."""
    return clip_rows(np.clip(np.asarray(rows, np.float64), 0.0, None), clip)


def _central_clean(clients: list[np.ndarray], clip: float, shape: tuple[int, int]) -> np.ndarray:
    """The server's sum of clipped rows, through :func:`central_sum` itself, without noise."""
    stacked = np.stack(clients) if clients else np.zeros((0, *shape))
    total, _ = central_sum(stacked, clip=clip, noise_multiplier=1.0, rng=NoNoise())
    return total


def _histogram(clients: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The ``(N, C)`` vote counts :func:`pate_labels` builds: one-hot argmax per client row
    (tied to it by the test below)."""
    if not clients:
        return np.zeros(shape)
    return sum(one_hot_votes(rows).astype(np.float64) for rows in clients)


def test_local_release_is_the_clean_rows_plus_noise_of_the_stated_std() -> None:
    rng = np.random.default_rng(0)
    for rows in (_rows("mixed", 30, 5, rng), _hostile(30, 5, rng)):
        released, used = local_release(rows, clip=0.7, noise_multiplier=1.3, rng=NoNoise())
        np.testing.assert_allclose(released, _local_clean(rows, 0.7), rtol=1e-6, atol=1e-7)
        assert used.sensitivity == logit_dp_sensitivity(30, 0.7, "local")
        assert used.noise_std == pytest.approx(1.3 * used.sensitivity)


@PROPERTY
@given(data=st.data())
def test_pate_labels_answer_from_the_rederived_vote_histogram(data: st.DataObject) -> None:
    (clients, _), threshold = data.draw(federations()), data.draw(st.floats(0.0, 9.0))
    n, c = clients[0].shape
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    clients = [rows if data.draw(st.booleans()) else _hostile(n, c, rng) for rows in clients]
    histogram = _histogram(clients, (n, c))
    answer = pate_labels(np.stack(clients), sigma=1.0, rng=NoNoise())
    np.testing.assert_array_equal(answer.labels, histogram.argmax(axis=1))
    confident = pate_labels(
        np.stack(clients), sigma=1.0, rng=NoNoise(), threshold=threshold, sigma_threshold=1.0
    )
    np.testing.assert_array_equal(confident.answered, np.flatnonzero(histogram.max(1) >= threshold))


def test_accounting_charges_the_stated_sensitivity() -> None:
    """The multiplier each event is charged at is the noise std over the stated sensitivity."""
    n, z = 40, 1.7
    plan = RoundPlan([0, 1], n, {0: 100, 1: 100}, local_epochs=1, batch_size=10)
    for mode in ("local", "central"):
        spec = PrivacySpec.from_config(
            {"name": "logit_dp", "mode": mode, "clip": 0.8, "noise_multiplier": z}
        )
        controller = PrivacyController(spec, seed=0)
        std = logit_dp_noise_std(n, 0.8, mode, z)
        events = controller.round_events(plan)
        client_level = FEDERATION if mode == "central" else client_unit(0)
        for relation, unit in (("record", record_unit(0)), ("client", client_level)):
            [((kind, multiplier), _)] = events[unit]
            assert kind == "gaussian"
            assert std / multiplier == pytest.approx(controller.sensitivity(n, relation))
    controller = PrivacyController(PATE_SPEC, seed=0)
    (answer, queries), (check, checks) = controller.round_events(plan)[record_unit(0)]
    assert queries == checks == n
    assert PATE_SPEC.sigma / answer[1] == pytest.approx(controller.sensitivity(n, "record"))
    assert PATE_SPEC.sigma_threshold / check[1] == pytest.approx(1.0)  # the max count's
    spec = PrivacySpec.from_config({"name": "dpsgd", "noise_multiplier": z, "max_grad_norm": 0.3})
    controller = PrivacyController(spec, seed=0)
    [(event, _)] = controller.round_events(plan)[record_unit(0)]
    # Opacus adds noise of std noise_multiplier * max_grad_norm to the clipped gradient sum
    assert z * 0.3 / event[2] == pytest.approx(controller.sensitivity(n, "record"))


# ----------------------------------------------------------------------------- logit_dp


@PROPERTY
@given(data=st.data())
def test_local_release_moves_at_most_its_sensitivity(data: st.DataObject) -> None:
    clients, clip = data.draw(federations())
    rows = clients[0]
    changed = data.draw(changed_rows(rows, hostile=True))
    spec = _logit_spec("local", clip)
    # local mode: every relation is a change of the client's own rows
    assert neighbouring(spec, "client") == neighbouring(spec, "record") == "replace"
    bound = min(_claimed(spec, len(rows), r) for r in ("record", "client"))
    moved = _l2(_local_clean(rows, clip), _local_clean(changed, clip))
    assert moved <= bound * (1 + TOLERANCE)


@PROPERTY
@given(data=st.data())
def test_central_sum_moves_at_most_the_record_level_sensitivity(data: st.DataObject) -> None:
    """One record of one client changed: that client's rows change arbitrarily (a hostile
    client's too: the server clamps and clips them)."""
    clients, clip = data.draw(federations())
    n, c = clients[0].shape
    who = data.draw(st.integers(0, len(clients) - 1))
    neighbour = list(clients)
    neighbour[who] = data.draw(changed_rows(clients[who], hostile=True))
    spec = _logit_spec("central", clip)
    assert neighbouring(spec, "record") == "replace"
    moved = _l2(_central_clean(clients, clip, (n, c)), _central_clean(neighbour, clip, (n, c)))
    assert moved <= _claimed(spec, n, "record") * (1 + TOLERANCE)


@PROPERTY
@given(data=st.data())
def test_central_sum_moves_at_most_the_client_level_sensitivity(data: st.DataObject) -> None:
    """One client added or removed, honest or hostile (negative, huge, unclipped rows)."""
    clients, clip = data.draw(federations())
    n, c = clients[0].shape
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    extra = data.draw(st.sampled_from(["honest", "hostile"]))
    added = _hostile(n, c, rng) if extra == "hostile" else data.draw(client_rows(n, c))
    spec = _logit_spec("central", clip)
    assert neighbouring(spec, "client") == "add_remove"
    bound = _claimed(spec, n, "client") * (1 + TOLERANCE)
    full = [*clients, added]
    at = data.draw(st.integers(0, len(clients)))
    full.insert(at, full.pop())  # the added client anywhere in the order
    assert _l2(_central_clean(clients, clip, (n, c)), _central_clean(full, clip, (n, c))) <= bound
    removed = data.draw(st.integers(0, len(clients) - 1))
    without = clients[:removed] + clients[removed + 1 :]
    assert (
        _l2(_central_clean(clients, clip, (n, c)), _central_clean(without, clip, (n, c))) <= bound
    )


def test_a_record_moves_the_central_sum_beyond_the_client_level_bound() -> None:
    """Why record level is not the client-level ``clip * sqrt(N)`` (the old claim): a record
    that flips a client's rows from one-hot class 0 to one-hot class 1 moves the sum by
    ``sqrt(2) * clip * sqrt(N)``, exactly the record-level bound."""
    n, c, clip = 40, 3, 1.0
    others = [np.full((n, c), 1 / c), np.eye(c)[np.arange(n) % c]]
    before = _central_clean([*others, np.eye(c)[np.zeros(n, int)]], clip, (n, c))
    after = _central_clean([*others, np.eye(c)[np.ones(n, int)]], clip, (n, c))
    spec = _logit_spec("central", clip)
    moved = _l2(before, after)
    assert moved == pytest.approx(math.sqrt(2) * math.sqrt(n), rel=TOLERANCE)  # 8.94
    assert moved > _claimed(spec, n, "client") * 1.4  # 6.32
    assert moved == pytest.approx(_claimed(spec, n, "record"), rel=TOLERANCE)


@pytest.mark.parametrize("clip", [0.1, 1.0, 5.0])
def test_logit_dp_bounds_are_attained(clip: float) -> None:
    """One-hot rows on different classes attain the bounds. Probability rows have norm <= 1,
    so with ``clip > 1`` only larger non-negative rows do (the mechanisms accept any rows,
    and a hostile client in central mode sends what it likes)."""
    n, c, scale = 17, 4, max(clip, 1.0)
    zeros, ones = scale * np.eye(c)[np.zeros(n, int)], scale * np.eye(c)[np.ones(n, int)]
    local = _logit_spec("local", clip)
    moved = _l2(_local_clean(zeros, clip), _local_clean(ones, clip))
    for relation in ("record", "client"):
        assert moved == pytest.approx(_claimed(local, n, relation), rel=TOLERANCE)
    central = _logit_spec("central", clip)
    removed = _l2(_central_clean([ones, zeros], clip, (n, c)), _central_clean([ones], clip, (n, c)))
    assert removed == pytest.approx(_claimed(central, n, "client"), rel=TOLERANCE)


# ----------------------------------------------------------------------------- pate


def _pate_moves(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the L2 move of the histogram row and the move of its max count."""
    return (
        np.linalg.norm(before - after, axis=1),
        np.abs(before.max(axis=1) - after.max(axis=1)),
    )


@PROPERTY
@given(data=st.data())
def test_one_clients_votes_move_each_query_at_most_sqrt2(data: st.DataObject) -> None:
    """Any change of one client's data (record or client level: its votes replaced), honest
    or hostile rows, ties included: each query's counts move by <= sqrt(2), its top count
    by <= 1."""
    clients, _ = data.draw(federations())
    n, c = clients[0].shape
    who = data.draw(st.integers(0, len(clients) - 1))
    neighbour = list(clients)
    neighbour[who] = data.draw(changed_rows(clients[who], hostile=True))
    assert neighbouring(PATE_SPEC, "record") == neighbouring(PATE_SPEC, "client") == "replace"
    bound = min(_claimed(PATE_SPEC, n, r) for r in ("record", "client"))
    counts, top = _pate_moves(_histogram(clients, (n, c)), _histogram(neighbour, (n, c)))
    assert (counts <= bound * (1 + TOLERANCE)).all()
    assert (top <= 1.0).all()


def test_pate_bounds_are_attained_and_a_hostile_client_casts_one_vote() -> None:
    n, c = 6, 3
    honest = np.eye(c)[np.full(n, 2)]
    before = _histogram([honest, np.eye(c)[np.zeros(n, int)]], (n, c))
    after = _histogram([honest, np.eye(c)[np.ones(n, int)]], (n, c))
    counts, top = _pate_moves(before, after)
    np.testing.assert_allclose(counts, _claimed(PATE_SPEC, n, "record"), rtol=TOLERANCE)
    solo_before, solo_after = _histogram([honest], (n, c)), _histogram([], (n, c))
    np.testing.assert_array_equal(_pate_moves(solo_before, solo_after)[1], 1.0)
    # A client sending all ones (or huge rows) still counts once: its argmax, class 0.
    # Were the rows summed as sent, class 2 would lead with 2 and every query would pass.
    for hostile in (np.ones((n, c)), np.full((n, c), 1e6)):
        shared = np.stack([honest, hostile])
        assert (pate_labels(shared, sigma=1.0, rng=NoNoise()).labels == 0).all()
        confident = pate_labels(shared, sigma=1.0, rng=NoNoise(), threshold=1.5, sigma_threshold=1)
        assert len(confident.answered) == 0  # top count 1: one vote each
        counts, top = _pate_moves(_histogram([honest], (n, c)), _histogram(list(shared), (n, c)))
        assert (counts <= _claimed(PATE_SPEC, n, "client")).all() and (top <= 1).all()


# ----------------------------------------------------------------------------- real models

X_TRAIN = np.random.default_rng(1).normal(size=(24, 4)).astype(np.float32)
Y_TRAIN = (X_TRAIN[:, 0] > 0).astype(np.int64) + (X_TRAIN[:, 1] > 0.5).astype(np.int64)
PROXY = np.random.default_rng(2).normal(size=(30, 4)).astype(np.float32)


def _trained_probs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    model = model_from_config({"name": "mlp", "hidden": [16]}, input_shape=(4,), num_classes=3)
    train_local(model, x, y, seed=0, epochs=15, batch_size=8, lr=0.05, optimizer="adam")
    return predict_probs(model, PROXY)


@functools.cache
def _base_probs() -> np.ndarray:
    return _trained_probs(X_TRAIN, Y_TRAIN)


OTHER_CLIENTS = [np.eye(3)[np.arange(len(PROXY)) % 3], np.full((len(PROXY), 3), 1 / 3)]


@pytest.mark.slow  # trains a model per example: ~0.1-0.3 s each
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    change=st.sampled_from(["add", "remove", "flip"]),
    index=st.integers(0, len(X_TRAIN) - 1),
    record=st.lists(st.sampled_from([0.0, 1.0, -3.0, 50.0, -1e3]), min_size=4, max_size=4),
    label=st.integers(0, 2),
    clip=st.floats(0.1, 5.0),
)
def test_a_trained_models_release_moves_at_most_the_record_level_bound(
    change: str, index: int, record: list[float], label: int, clip: float
) -> None:
    """fedkd's own MLP trained with ``train_local`` on a dataset and on it with one record
    added, removed or relabelled; every mechanism's clean release on a fixed proxy."""
    if change == "add":
        x, y = np.vstack([X_TRAIN, np.float32([record])]), np.append(Y_TRAIN, label)
    elif change == "remove":
        x, y = np.delete(X_TRAIN, index, axis=0), np.delete(Y_TRAIN, index)
    else:
        x, y = X_TRAIN, Y_TRAIN.copy()
        y[index] = (y[index] + 1) % 3
    probs = _trained_probs(x, y)
    n, c = probs.shape

    local = _logit_spec("local", clip)
    moved = _l2(_local_clean(_base_probs(), clip), _local_clean(probs, clip))
    assert moved <= _claimed(local, n, "record") * (1 + TOLERANCE)

    central = _logit_spec("central", clip)
    sent = {
        name: protect(p, central, seed=0, server_round=1, partition_id=0)
        for name, p in (("before", _base_probs()), ("after", probs))
    }
    before = _central_clean([*OTHER_CLIENTS, sent["before"]], clip, (n, c))
    after = _central_clean([*OTHER_CLIENTS, sent["after"]], clip, (n, c))
    assert _l2(before, after) <= _claimed(central, n, "record") * (1 + TOLERANCE)

    votes = {
        name: protect(p, PATE_SPEC, seed=0, server_round=1, partition_id=0)
        for name, p in (("before", _base_probs()), ("after", probs))
    }
    counts, top = _pate_moves(
        _histogram([*OTHER_CLIENTS, votes["before"]], (n, c)),
        _histogram([*OTHER_CLIENTS, votes["after"]], (n, c)),
    )
    assert (counts <= _claimed(PATE_SPEC, n, "record") * (1 + TOLERANCE)).all()
    assert (top <= 1).all()


# ----------------------------------------------------------------------------- dpsgd

DPSGD_MODEL = model_from_config(
    {"name": "mlp", "hidden": [16]}, input_shape=(4,), num_classes=3
).double()
DPSGD_PARAMS = {k: v.detach() for k, v in DPSGD_MODEL.named_parameters()}


def _clipped_gradient_sum(x: np.ndarray, y: np.ndarray, max_grad_norm: float) -> torch.Tensor:
    """The sum over examples of per-example cross-entropy gradients, each clipped as
    Opacus's flat clipping does: ``min(1, C / (norm + 1e-6))`` (float64)."""
    if len(x) == 0:
        return torch.zeros(sum(p.numel() for p in DPSGD_PARAMS.values()), dtype=torch.float64)

    def loss(params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(DPSGD_MODEL, params, (xi[None],))
        return F.cross_entropy(logits, yi[None])

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(
        DPSGD_PARAMS, torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)
    )
    flat = torch.cat([g.reshape(len(x), -1) for g in grads.values()], dim=1)
    factor = (max_grad_norm / (flat.norm(dim=1) + 1e-6)).clamp(max=1.0)
    return (flat * factor[:, None]).sum(dim=0)


FEATURES = st.floats(-1e6, 1e6) | st.sampled_from([0.0, 1e6, -1e6, 1e-6])
EXAMPLES = st.tuples(st.lists(FEATURES, min_size=4, max_size=4), st.integers(0, 2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.lists(EXAMPLES, min_size=0, max_size=10),
    record=EXAMPLES,
    max_grad_norm=st.floats(0.01, 10.0),
)
def test_dpsgd_step_moves_at_most_max_grad_norm(
    batch: list[tuple[list[float], int]], record: tuple[list[float], int], max_grad_norm: float
) -> None:
    """One record added to (or removed from) a batch: the clipped gradient sum moves by
    <= ``max_grad_norm`` (add/remove is DP-SGD's relation: a replaced record moves it up to 2x)."""
    spec = PrivacySpec.from_config(
        {"name": "dpsgd", "noise_multiplier": 1.0, "max_grad_norm": max_grad_norm}
    )
    assert neighbouring(spec, "record") == "add_remove"
    x = np.array([f for f, _ in batch], dtype=np.float64).reshape(-1, 4)
    y = np.array([label for _, label in batch], dtype=np.int64)
    at = len(batch) // 2  # the record anywhere in the batch
    x_added = np.insert(x, at, record[0], axis=0)
    y_added = np.insert(y, at, record[1])
    moved = float(
        (
            _clipped_gradient_sum(x, y, max_grad_norm)
            - _clipped_gradient_sum(x_added, y_added, max_grad_norm)
        ).norm()
    )
    assert moved <= _claimed(spec, 1, "record") * (1 + 1e-6)


def test_dpsgd_bound_is_attained_and_a_replaced_record_moves_more() -> None:
    x = np.array([[1e6, -1e6, 1e6, 0.0], [-1e6, 1e6, -1e6, 0.0]])
    with torch.no_grad():  # labels the model gets wrong: huge gradients, clipped to C
        y = (DPSGD_MODEL(torch.as_tensor(x)).argmax(dim=1).numpy() + 1) % 3
    total = _clipped_gradient_sum(x, y, 1.0)
    alone = _clipped_gradient_sum(x[:1], y[:1], 1.0)
    assert float((total - alone).norm()) == pytest.approx(1.0, rel=1e-6)
    # why the relation is add/remove: relabelling a record moves the sum by up to 2 C
    x, max_grad_norm = np.zeros((1, 4)), 1e-3
    relabelled = _clipped_gradient_sum(x, np.array([0]), max_grad_norm) - _clipped_gradient_sum(
        x, np.array([2]), max_grad_norm
    )
    assert float(relabelled.norm()) > 1.5 * max_grad_norm
