"""Teacher spaces (issue 19): the logit mean of FedDF and FedMD, the tempered-probability
mean, and today's probability mean, checked against formulas computed from the clients'
logits themselves; and the settings each space refuses."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedkd.apps.server import prepare_run
from fedkd.config import compose_config
from fedkd.distill import KDLoss, mean_targets
from fedkd.distill.spaces import check_teacher_space, space_targets
from fedkd.errors import ConfigError

RNG = np.random.default_rng(0)
#: Three clients' logits on 5 examples of 4 classes, far apart (label skew makes them so).
LOGITS = RNG.normal(scale=4.0, size=(3, 5, 4))


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


PROBS = _softmax(LOGITS).astype(np.float32)


def test_logits_space_is_the_softmax_of_the_mean_logit() -> None:
    expected = _softmax(LOGITS.mean(axis=0))
    got = space_targets(PROBS, space="logits")
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)


def test_logits_space_weights_clients_by_size() -> None:
    sizes = np.array([10.0, 30.0, 60.0])
    expected = _softmax(np.einsum("k,knc->nc", sizes / sizes.sum(), LOGITS))
    got = space_targets(PROBS, space="logits", num_examples=sizes)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_tempered_space_is_the_mean_of_softened_probabilities() -> None:
    expected = _softmax(LOGITS / 3.0).mean(axis=0)
    got = space_targets(PROBS, space="tempered_probs", temperature=3.0)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_probs_space_is_todays_mean() -> None:
    np.testing.assert_allclose(space_targets(PROBS, space="probs"), mean_targets(PROBS), atol=1e-6)


def test_the_spaces_disagree_where_clients_disagree() -> None:
    # one client for class 0, the other all but rules it out: the probability mean keeps
    # class 0 on top, the logit mean (a geometric mean) picks the class both find likely
    probs = np.array([[[0.8999, 0.1, 0.0001]], [[0.001, 0.5, 0.499]]])
    assert space_targets(probs, space="probs").argmax() == 0
    assert space_targets(probs, space="logits").argmax() == 1


def test_kd_reads_tempered_targets_without_softening_them_twice() -> None:
    temperature = 3.0
    teacher = torch.tensor(space_targets(PROBS, space="tempered_probs", temperature=temperature))
    student = torch.tensor(RNG.normal(size=(5, 4)), dtype=torch.float32)
    loss = KDLoss(temperature=temperature, eps=0.0)
    loss.teacher_temperature = temperature
    expected = (
        F.kl_div(F.log_softmax(student / temperature, 1), teacher, reduction="batchmean")
        * temperature**2
    )
    torch.testing.assert_close(loss.soft_term(student, teacher), expected, rtol=1e-4, atol=1e-6)
    # read as T = 1 targets (the default), the same rows would be softened again
    loss.teacher_temperature = 1.0
    assert not torch.isclose(loss.soft_term(student, teacher), expected, rtol=1e-2)


def test_kd_on_the_logit_mean_is_the_papers_loss() -> None:
    temperature = 3.0
    teacher = torch.tensor(space_targets(PROBS, space="logits"))
    student = torch.tensor(RNG.normal(size=(5, 4)), dtype=torch.float32)
    paper_teacher = torch.tensor(_softmax(LOGITS.mean(axis=0) / temperature), dtype=torch.float32)
    expected = (
        F.kl_div(F.log_softmax(student / temperature, 1), paper_teacher, reduction="batchmean")
        * temperature**2
    )
    loss = KDLoss(temperature=temperature, eps=0.0)
    torch.testing.assert_close(loss.soft_term(student, teacher), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("space", "rule", "message"),
    [
        ("logits", "median", r"aggregation=median combines probabilities.*teacher_space=probs"),
        ("tempered_probs", "era", r"aggregation=era"),
        ("geometric", "mean", r"strategy.teacher_space must be one of"),
    ],
)
def test_spaces_refuse_what_they_cannot_average(space, rule, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_teacher_space(space, rule)


# ------------------------------------------------------------------ in the methods
@pytest.fixture
def tiny(small_overrides) -> list[str]:
    return small_overrides(
        3, "model.hidden=[8]", "student.hidden=[8]", "++strategy.distill_epochs=1"
    )


def _replies(sizes):
    return [SimpleNamespace(partition_id=i, num_examples=n) for i, n in enumerate(sizes)]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], _softmax(LOGITS.mean(axis=0))),  # FedDF's default: the paper's logit mean
        (["strategy.teacher_space=probs"], PROBS.mean(axis=0)),
        (["strategy=fedmd"], _softmax(LOGITS.mean(axis=0))),
        (["strategy=dsfl", "strategy.era_temperature=1e9"], None),  # ERA of the probability mean
    ],
)
def test_each_method_averages_in_its_papers_space(tiny, overrides, expected) -> None:
    strategy = prepare_run(compose_config([*tiny, *overrides])).strategy
    targets = strategy.teacher_targets(PROBS, _replies([10, 10, 10]))
    if expected is None:  # DS-FL keeps averaging probabilities; ERA sharpens afterwards
        assert strategy.teacher_space == "probs"
        expected = PROBS.mean(axis=0)
    np.testing.assert_allclose(targets, expected, atol=1e-5)


def test_tempered_feddf_tells_the_loss_its_targets_are_softened(tiny) -> None:
    plan = prepare_run(
        compose_config(
            [
                *tiny,
                "strategy=feddf",
                "strategy.teacher_space=tempered_probs",
                "distill.temperature=3",
            ]
        )
    )
    assert plan.assets.distill_loss.teacher_temperature == 3.0
    targets = plan.strategy.teacher_targets(PROBS, _replies([10, 10, 10]))
    np.testing.assert_allclose(targets, _softmax(LOGITS / 3.0).mean(axis=0), atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy=feddf", "aggregation=median"], r"set strategy.teacher_space=probs"),
        (["strategy=fedmd", "aggregation=trimmed_mean"], r"set strategy.teacher_space=probs"),
        (["strategy=fedmd", "encoding.name=int8"], r"encoding=int8 sends zeros"),
        (
            ["strategy=feddf", "strategy.teacher_from=predictions", "encoding.name=topk"],
            r"encoding=topk sends zeros",
        ),
        (["strategy=fedmd", "strategy.teacher_space=tempered_probs"], r"must be one of"),
        (
            [
                "strategy=feddf",
                "strategy.teacher_space=tempered_probs",
                "distill.temperature_end=1",
            ],
            r"needs distill=kd without temperature_end",
        ),
    ],
)
def test_settings_a_space_cannot_serve_fail_before_any_client(tiny, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        prepare_run(compose_config([*tiny, *overrides]))


def test_robust_rules_and_quantised_uploads_still_work_in_probability_space(tiny) -> None:
    for extra in (
        ["strategy=feddf", "aggregation=median"],
        ["strategy=fedmd", "encoding.name=int8"],
    ):
        strategy = prepare_run(
            compose_config([*tiny, *extra, "strategy.teacher_space=probs"])
        ).strategy
        assert strategy.teacher_space == "probs"
