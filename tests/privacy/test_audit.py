"""Tests for fedkd.privacy.audit: ROC metrics, the loss attack, LiRA and the audit helpers."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fedkd.errors import ConfigError
from fedkd.models import build_model
from fedkd.privacy.audit import (
    ATTACKS,
    AttackResult,
    audit_model,
    balanced_non_members,
    lira_attack,
    loss_scores,
    loss_threshold_attack,
    plot_roc,
    roc_metrics,
)
from fedkd.privacy.audit_lira import _lira_scores, _logit_confidence, _shadow_membership
from fedkd.privacy.audit_metrics import LOW_FPR, MIN_NON_MEMBERS, _downsample_curve, _tpr_at_fpr
from fedkd.train import train_local

NUM_FEATURES = 20
NUM_CLASSES = 4

Records = tuple[np.ndarray, np.ndarray]
Audited = tuple[nn.Module, Records, Records]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models: thread start-up costs more than it saves on a 2-core runner.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _random_records(n: int, seed: int) -> Records:
    """Gaussian inputs with labels independent of them: a model can only memorise them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, NUM_FEATURES)).astype(np.float32)
    return x, rng.integers(0, NUM_CLASSES, size=n)


def _factory(index: int) -> nn.Module:
    return build_model(
        "mlp", input_shape=(NUM_FEATURES,), num_classes=NUM_CLASSES, hidden=[128], seed=index
    )


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> None:
    train_local(model, x, y, epochs=40, batch_size=25, lr=0.01, optimizer="adam", seed=seed)


#: The shadow models of LiRA: built and trained like the audited model.
SHADOWS = {"model_factory": _factory, "train_fn": _train}


@pytest.fixture(scope="module")
def overfit() -> Audited:
    """A model that memorised 100 randomly labelled members; 100 fresh non-members."""
    members = _random_records(100, seed=1)
    non_members = _random_records(100, seed=2)
    model = _factory(1000)
    _train(model, *members, seed=0)
    return model, members, non_members


# ----------------------------------------------------------------------------- roc_metrics


def test_roc_metrics_perfect_separation() -> None:
    scores = np.array([5.0, 4.0, 3.0, 0.0, -1.0, -2.0])
    is_member = np.array([1, 1, 1, 0, 0, 0])
    auc, tpr_low, fpr, tpr = roc_metrics(scores, is_member)
    assert auc == 1.0
    assert tpr_low is None  # 3 non-members cannot resolve a 1% FPR
    assert _tpr_at_fpr(fpr, tpr, LOW_FPR) == 1.0
    assert fpr[0] == 0.0 and tpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0


def test_roc_metrics_identical_scores_are_chance() -> None:
    is_member = np.array([True, False] * 10)
    auc, tpr_low, fpr, tpr = roc_metrics(np.zeros(20), is_member)
    assert auc == 0.5 and tpr_low is None
    # One diagonal segment from (0, 0) to (1, 1): interpolated TPR equals the FPR.
    assert _tpr_at_fpr(fpr, tpr, LOW_FPR) == pytest.approx(0.01)
    _, tpr_low, _, _ = roc_metrics(np.zeros(200), np.array([True, False] * 100))
    assert tpr_low == pytest.approx(0.01)  # 100 non-members: reported


def test_roc_metrics_small_case_by_hand() -> None:
    # Members score 1.0 and 0.5, non-members 1.0 and 0.0. Pairs (member, non-member):
    # (1, 1) tie -> 1/2, (1, 0) -> 1, (0.5, 1) -> 0, (0.5, 0) -> 1: AUC = 2.5 / 4.
    # The ROC goes (0, 0) -> (0.5, 0.5) (the tie at 1.0) -> (0.5, 1) -> (1, 1), so at
    # FPR 0.01 the interpolated TPR is 0.01 (a step rule would give 0).
    scores = np.array([1.0, 0.5, 1.0, 0.0])
    is_member = np.array([1, 1, 0, 0])
    auc, _, fpr, tpr = roc_metrics(scores, is_member)
    assert auc == pytest.approx(0.625)
    assert _tpr_at_fpr(fpr, tpr, LOW_FPR) == pytest.approx(0.01)
    # sklearn's classic example: AUC 0.75, and half the members lie above every non-member.
    auc, _, fpr, tpr = roc_metrics(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert auc == pytest.approx(0.75)
    assert _tpr_at_fpr(fpr, tpr, LOW_FPR) == pytest.approx(0.5)


def test_tpr_at_low_fpr_needs_enough_non_members() -> None:
    assert MIN_NON_MEMBERS == 100  # ceil(1 / 1%)
    # Members score 1..50; non-members 0, except one at 100: the first false positive, at
    # FPR 1/n. With 100 non-members the ROC steps from (0.01, 0) up to (0.01, 1), so the
    # TPR at 1% FPR is 1; with 99 the first step is past 1% FPR and the value would be an
    # interpolation inside the first segment (0 here): not reported.
    for non_members, expected in ((99, None), (100, 1.0)):
        scores = np.concatenate([np.arange(1.0, 51.0), [100.0], np.zeros(non_members - 1)])
        is_member = np.arange(50 + non_members) < 50
        _, tpr_low, fpr, tpr = roc_metrics(scores, is_member)
        assert tpr_low == expected
        result = AttackResult("loss", "s", 0.99, tpr_low, 50, non_members, [], [])
        if expected is None:
            assert _tpr_at_fpr(fpr, tpr, LOW_FPR) == 0.0
            assert result.summary()["tpr_at_1pct_fpr_note"] == (
                "not resolvable: 99 non-members, FPR 0.01 needs at least 100"
            )
        else:
            assert result.summary()["tpr_at_1pct_fpr"] == 1.0
            assert result.tpr_at_1pct_fpr_note is None


def test_roc_metrics_errors() -> None:
    with pytest.raises(ValueError, match="both members and non-members"):
        roc_metrics(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="both members and non-members"):
        roc_metrics(np.array([0.1, 0.2]), np.array([False, False]))
    with pytest.raises(ValueError, match="lengths differ"):
        roc_metrics(np.array([0.1, 0.2, 0.3]), np.array([1, 0]))
    with pytest.raises(ValueError, match="finite"):
        roc_metrics(np.array([0.1, np.nan]), np.array([1, 0]))
    with pytest.raises(ValueError, match="0/1"):
        roc_metrics(np.array([0.1, 0.2]), np.array([2, 0]))


def test_downsample_curve_keeps_ends_and_order() -> None:
    rng = np.random.default_rng(0)
    is_member = rng.random(5000) < 0.5
    scores = rng.normal(size=5000) + is_member
    _, _, fpr, tpr = roc_metrics(scores, is_member)
    assert len(fpr) > 200
    small_fpr, small_tpr = _downsample_curve(fpr, tpr)
    assert 100 <= len(small_fpr) <= 200 and len(small_fpr) == len(small_tpr)
    assert (small_fpr[0], small_tpr[0]) == (0.0, 0.0)
    assert (small_fpr[-1], small_tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(small_fpr) >= 0) and np.all(np.diff(small_tpr) >= 0)
    # Log-spaced FPR points keep detail in the low-FPR region: 41 of the 2004 points lie
    # below FPR 0.01; sampling 200 points evenly by index would keep only 5 of them.
    assert sum(f < 0.01 for f in small_fpr) >= 15


# ----------------------------------------------------------------------------- statistics


class _FixedLogits(nn.Module):
    """Returns preset logits for inputs that are row indices; has dropout to catch train mode."""

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits, dtype=torch.float32))
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.logits[x[:, 0].long()])


def test_loss_scores_match_log_softmax_in_eval_mode() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-3.0, 5.0, 1.0]])
    y = np.array([0, 2, 0])
    model = _FixedLogits(logits)
    model.train()
    x = np.arange(3, dtype=np.float32)[:, None]
    scores = loss_scores(model, x, y)
    expected = [
        2.0 - math.log(math.exp(2) + 1 + math.exp(-1)),
        -math.log(3.0),
        -3.0 - math.log(math.exp(-3) + math.exp(5) + math.exp(1)),
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss_scores(model, x, np.array([0, 1, 3]))


def test_logit_confidence_is_log_odds_and_stable() -> None:
    logits = np.array([[1.0, 2.0, 0.5], [0.3, -0.2, 0.1]])
    y = np.array([1, 2])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p_true = probs[np.arange(2), y]
    np.testing.assert_allclose(_logit_confidence(logits, y), np.log(p_true / (1 - p_true)))
    # p_y rounds to 1 in floating point here, yet the statistic stays finite and exact.
    phi = _logit_confidence(np.array([[100.0, 0.0], [0.0, 100.0]]), np.array([0, 0]))
    np.testing.assert_allclose(phi, [100.0, -100.0])


def test_shadow_membership_is_balanced_and_seeded() -> None:
    keep = _shadow_membership(500, 8, np.random.default_rng(0))
    assert keep.shape == (8, 500)
    assert np.all(keep.sum(axis=0) == 4)  # every record IN for exactly half the shadows
    assert np.all(np.abs(keep.sum(axis=1) - 250) < 60)  # each shadow trains on about half
    again = _shadow_membership(500, 8, np.random.default_rng(0))
    assert np.array_equal(keep, again)
    odd = _shadow_membership(500, 3, np.random.default_rng(1)).sum(axis=0)
    assert set(np.unique(odd)) == {1, 2}


def test_lira_scores_by_hand() -> None:
    # Record 0: IN phis 2, 4 (mean 3, std 1); OUT phis -1, 1 (mean 0, std 1); target phi 3:
    # log N(3; 3, 1) - log N(3; 0, 1) = 0 - (-9 / 2) = 4.5.
    # Record 1: IN 0, 0 and OUT 5, 5 (std floored at 0.01 on both sides); target 5 -> OUT.
    shadow_phi = np.array([[2.0, 0.0], [4.0, 0.0], [-1.0, 5.0], [1.0, 5.0]])
    keep = np.array([[True, True], [True, True], [False, False], [False, False]])
    scores = _lira_scores(np.array([3.0, 5.0]), shadow_phi, keep)
    assert scores[0] == pytest.approx(4.5)
    assert scores[1] == pytest.approx(-0.5 * (5.0 / 0.01) ** 2)
    # One IN and one OUT observation per record: both sides fall back to the pooled std
    # (no record has two observations, so the std of all IN resp. OUT phis).
    keep2 = np.array([[True, False], [False, True]])
    phi2 = np.array([[1.0, 0.0], [0.0, 3.0]])  # IN phis {1, 3}, OUT phis {0, 0}
    scores2 = _lira_scores(np.array([1.0, 0.0]), phi2, keep2)
    # Record 0: mu_in 1, s_in 1; mu_out 0, s_out 0.01 (floor). Target 1.
    assert scores2[0] == pytest.approx(0.0 - (-0.5 * (1 / 0.01) ** 2 - math.log(0.01)))


def test_lira_trains_each_shadow_on_a_balanced_seeded_half() -> None:
    n = 60
    x = np.zeros((n, 2), dtype=np.float32)
    x[:, 0] = np.arange(n)  # the record's id, read back by the recording train_fn
    y = np.zeros(n, dtype=np.int64)
    calls: list[tuple[int, list[int]]] = []

    def record(model: nn.Module, x_in: np.ndarray, y_in: np.ndarray, seed: int) -> None:
        assert len(x_in) == len(y_in)
        calls.append((seed, [int(v) for v in x_in[:, 0]]))

    def factory(index: int) -> nn.Module:
        return _FixedLogits(np.random.default_rng(index).normal(size=(n, 3)))

    target = _FixedLogits(np.zeros((n, 3)))

    def attack() -> AttackResult:  # run twice: the same seed must repeat every call
        return lira_attack(
            target,
            (x[:20], y[:20]),
            (x[20:], y[20:]),
            target="client-3",
            model_factory=factory,
            train_fn=record,
            num_shadows=6,
            seed=7,
        )

    result = attack()
    assert len(calls) == 6
    assert len({seed for seed, _ in calls}) == 6
    in_counts = np.bincount(np.concatenate([ids for _, ids in calls]), minlength=n)
    assert np.all(in_counts == 3)
    assert (result.attack, result.target, result.members, result.non_members) == (
        "lira",
        "client-3",
        20,
        40,
    )
    first_calls = list(calls)
    calls.clear()
    attack()
    assert calls == first_calls  # same seed, same assignment and shadow seeds


# ----------------------------------------------------------------------------- attacks


def test_attacks_detect_an_overfit_model(overfit: Audited) -> None:
    model, members, non_members = overfit
    loss = loss_threshold_attack(model, members, non_members, target="student")
    lira = lira_attack(
        model, members, non_members, target="student", num_shadows=8, seed=0, **SHADOWS
    )
    assert loss.auc > 0.8
    assert lira.auc > 0.8
    # Some members are found at low FPR (chance would be 0.01; TPR at 1% FPR rests on one
    # non-member here, so the bound is loose: 0.28 to 0.85 across seeds of this setup).
    assert lira.tpr_at_1pct_fpr > 0.1
    assert (loss.members, loss.non_members) == (100, 100)


def test_attacks_find_nothing_when_neither_set_was_trained_on(overfit: Audited) -> None:
    model, _, _ = overfit
    # The model never saw these records; "members" are an arbitrary half of them.
    x, y = _random_records(400, seed=3)
    order = np.random.default_rng(5).permutation(400)
    members = (x[order[:200]], y[order[:200]])
    non_members = (x[order[200:]], y[order[200:]])
    results = audit_model(
        model, members, non_members, target="student", num_shadows=4, seed=1, **SHADOWS
    )
    assert [r.attack for r in results] == ["loss", "lira"]
    for result in results:
        assert abs(result.auc - 0.5) < 0.15, result.summary()


# ----------------------------------------------------------------------------- audit_model


def _quick_setup() -> Audited:
    return _factory(0), _random_records(12, seed=10), _random_records(9, seed=11)


def _no_training(model: nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> None:
    return None


def test_audit_model_results_and_summary() -> None:
    model, members, non_members = _quick_setup()
    results = audit_model(
        model,
        members,
        non_members,
        target="client-0",
        attacks=ATTACKS,
        model_factory=_factory,
        train_fn=_no_training,
        num_shadows=2,
    )
    assert [(r.attack, r.target) for r in results] == [("loss", "client-0"), ("lira", "client-0")]
    for result in results:
        assert isinstance(result, AttackResult)
        assert (result.members, result.non_members) == (12, 9)
        summary = result.summary()
        assert set(summary) == {
            "auc",
            "tpr_at_1pct_fpr",
            "tpr_at_1pct_fpr_note",
            "members",
            "non_members",
        }
        # 9 non-members cannot resolve a 1% FPR: no value, and the note says why.
        assert summary["tpr_at_1pct_fpr"] is None and result.tpr_at_1pct_fpr is None
        assert "9 non-members" in str(summary["tpr_at_1pct_fpr_note"])
        assert "100" in str(summary["tpr_at_1pct_fpr_note"])
        assert isinstance(summary["auc"], float) and isinstance(summary["members"], int)
        assert 0.0 <= summary["auc"] <= 1.0
        assert len(result.fpr) == len(result.tpr) <= 200
    only_loss = audit_model(model, members, non_members, target="s", attacks="loss")
    assert [r.attack for r in only_loss] == ["loss"]
    # The loss attack needs neither a factory nor a train_fn and gives the same AUC.
    assert only_loss[0].auc == results[0].auc


def test_audit_model_validation() -> None:
    model, members, non_members = _quick_setup()
    with pytest.raises(ConfigError, match=r"privacy\.audit_attacks.*'loss', 'lira'"):
        audit_model(model, members, non_members, target="s", attacks=["loss", "gradient"])
    with pytest.raises(ConfigError, match=r"privacy\.audit_attacks"):
        audit_model(model, members, non_members, target="s", attacks=[])
    for attack in (audit_model, lira_attack):
        with pytest.raises(ConfigError, match=r"privacy\.audit_shadows"):
            attack(
                model,
                members,
                non_members,
                target="s",
                model_factory=_factory,
                train_fn=_no_training,
                num_shadows=1,
            )
    with pytest.raises(ValueError, match="model_factory and train_fn"):
        audit_model(model, members, non_members, target="s", attacks=["lira"])
    with pytest.raises(ValueError, match="non_members is empty"):
        audit_model(model, members, (non_members[0][:0], non_members[1][:0]), target="s")
    with pytest.raises(ValueError, match="members: x and y lengths differ"):
        audit_model(model, (members[0], members[1][:-1]), non_members, target="s")


# ----------------------------------------------------------------------------- helpers


def test_balanced_non_members_size_and_determinism() -> None:
    pool_x = np.arange(50, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)
    pool_y = np.arange(50) % 4
    x, y = balanced_non_members(20, pool_x, pool_y, seed=3)
    assert x.shape == (20, 3) and y.shape == (20,)
    ids = x[:, 0].astype(int)
    assert len(set(ids)) == 20  # without replacement
    assert np.array_equal(y, pool_y[ids])  # x and y stay paired
    x_again, _ = balanced_non_members(20, pool_x, pool_y, seed=3)
    assert np.array_equal(x, x_again)
    x_other, _ = balanced_non_members(20, pool_x, pool_y, seed=4)
    assert not np.array_equal(x, x_other)
    x_all, _ = balanced_non_members(80, pool_x, pool_y, seed=3)
    assert len(x_all) == 50  # capped at the pool size
    with pytest.raises(ValueError, match="lengths differ"):
        balanced_non_members(5, pool_x, pool_y[:-1], seed=0)


def test_plot_roc_writes_png(tmp_path: Path) -> None:
    scores = np.array([3.0, 2.0, 1.5, 1.0, 0.5, 0.0])
    is_member = np.array([1, 1, 0, 1, 0, 0])
    auc, tpr_low, fpr, tpr = roc_metrics(scores, is_member)
    result = AttackResult("loss", "student", auc, tpr_low, 3, 3, list(fpr), list(tpr))
    out = plot_roc(
        [result, AttackResult("lira", "client-0", 0.5, 0.01, 3, 3, [0, 1], [0, 1])],
        tmp_path / "plots" / "roc.png",
    )
    assert out == tmp_path / "plots" / "roc.png"
    data = out.read_bytes()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one"):
        plot_roc([], tmp_path / "empty.png")
