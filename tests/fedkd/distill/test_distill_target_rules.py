"""Tests for the teacher-target rules of fedkd.distill.targets on hand-built arrays.

Every expected value is computed by hand in the comments next to it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedkd.distill import (
    TARGET_RULES,
    confidence_targets,
    entropy_targets,
    era_targets,
    label_aware_targets,
    mean_targets,
    size_weighted_targets,
    target_rule_options,
    teacher_targets,
    validate_target_rule,
)
from fedkd.errors import ConfigError

# 2 clients x 2 examples x 3 classes (same as test_distill_targets.py).
PROBS = np.array(
    [
        [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]],
        [[0.4, 0.5, 0.1], [0.0, 0.9, 0.1]],
    ]
)
HIST = np.array([[5, 0, 1], [0, 3, 1]])


def _entropy(rows: np.ndarray) -> np.ndarray:
    safe = np.where(rows > 0, rows, 1.0)
    return -(rows * np.log(safe)).sum(axis=1)


def _check_rows(out: np.ndarray, shape: tuple[int, int]) -> None:
    assert out.dtype == np.float32
    assert out.shape == shape
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)


def test_registry_and_defaults() -> None:
    assert TARGET_RULES == (
        "mean",
        "size_weighted",
        "confidence",
        "entropy",
        "label_aware",
        "era",
        "median",
        "trimmed_mean",
        "robust_mean",
        "support_filter",
    )
    assert target_rule_options("mean") == {}
    assert target_rule_options("size_weighted") == {}
    assert target_rule_options("confidence") == {"power": 1.0}
    assert target_rule_options("entropy") == {"floor": 1e-6}
    assert target_rule_options("label_aware") == {"smoothing": 1.0}
    assert target_rule_options("era") == {"temperature": 0.1}
    assert target_rule_options("median") == {}
    assert target_rule_options("trimmed_mean") == {"trim": 0.2}
    assert target_rule_options("robust_mean") == {"threshold": 0.2}
    assert target_rule_options("support_filter") == {"threshold": 0.5}


@pytest.mark.parametrize("rule", TARGET_RULES)
def test_every_rule_gives_probability_rows(rule: str) -> None:
    out = teacher_targets(PROBS, rule=rule, num_examples=np.array([2, 5]), label_histograms=HIST)
    _check_rows(out, (2, 3))
    assert np.all(out >= 0)


def test_mean_rule_by_hand() -> None:
    # Row 0: ([0.6, 0.3, 0.1] + [0.4, 0.5, 0.1]) / 2 = [0.5, 0.4, 0.1]
    # Row 1: ([0.2, 0.2, 0.6] + [0.0, 0.9, 0.1]) / 2 = [0.1, 0.55, 0.35]
    expected = np.array([[0.5, 0.4, 0.1], [0.1, 0.55, 0.35]])
    out = teacher_targets(PROBS)  # default rule is "mean"
    _check_rows(out, (2, 3))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(teacher_targets(PROBS, rule="mean"), expected, atol=1e-6)
    np.testing.assert_allclose(mean_targets(PROBS), expected, atol=1e-6)


def test_size_weighted_by_hand() -> None:
    # Sizes [1, 3] -> weights [0.25, 0.75].
    # Row 0: 0.25*[0.6, 0.3, 0.1] + 0.75*[0.4, 0.5, 0.1] = [0.45, 0.45, 0.1]
    # Row 1: 0.25*[0.2, 0.2, 0.6] + 0.75*[0.0, 0.9, 0.1] = [0.05, 0.725, 0.225]
    expected = np.array([[0.45, 0.45, 0.1], [0.05, 0.725, 0.225]])
    out = teacher_targets(PROBS, rule="size_weighted", num_examples=np.array([1, 3]))
    _check_rows(out, (2, 3))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(
        size_weighted_targets(PROBS, num_examples=[1, 3]), expected, atol=1e-6
    )
    # Equal sizes give the plain mean; a zero-size client is ignored.
    np.testing.assert_allclose(
        teacher_targets(PROBS, rule="size_weighted", num_examples=np.array([7, 7])),
        mean_targets(PROBS),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        teacher_targets(PROBS, rule="size_weighted", num_examples=np.array([0, 4])),
        PROBS[1],
        atol=1e-6,
    )


# Client 0 is certain on example 0, client 1 is certain on example 1.
CONF = np.array(
    [
        [[1.0, 0.0], [0.5, 0.5]],
        [[0.5, 0.5], [0.0, 1.0]],
    ]
)


def test_confidence_confident_client_dominates() -> None:
    # power 1: row 0 weights ∝ [max(1, 0), max(0.5, 0.5)] = [1, 0.5] -> [2/3, 1/3]
    #   target = 2/3*[1, 0] + 1/3*[0.5, 0.5] = [5/6, 1/6]; row 1 is the mirror image.
    out = teacher_targets(CONF, rule="confidence")
    _check_rows(out, (2, 2))
    np.testing.assert_allclose(out, [[5 / 6, 1 / 6], [1 / 6, 5 / 6]], atol=1e-6)
    np.testing.assert_allclose(confidence_targets(CONF), out, atol=1e-6)
    # power 2: weights ∝ [1, 0.25] -> [0.8, 0.2]; target = [0.8 + 0.1, 0.1] = [0.9, 0.1]
    out2 = teacher_targets(CONF, rule="confidence", power=2.0)
    np.testing.assert_allclose(out2, [[0.9, 0.1], [0.1, 0.9]], atol=1e-6)
    # power 0: weights all 1 -> plain mean [0.75, 0.25]
    out0 = teacher_targets(CONF, rule="confidence", power=0.0)
    np.testing.assert_allclose(out0, [[0.75, 0.25], [0.25, 0.75]], atol=1e-6)
    # The confident client pulls further than the mean does.
    assert out[0, 0] > mean_targets(CONF)[0, 0]


# Example 0: client 0 certain [1, 0], client 1 uniform [0.5, 0.5].
# Example 1: client 0 [0.8, 0.2], client 1 certain [1, 0].
ENT = np.array(
    [
        [[1.0, 0.0], [0.8, 0.2]],
        [[0.5, 0.5], [1.0, 0.0]],
    ]
)
LN2 = math.log(2.0)  # 0.693147
# H([0.8, 0.2]) = -(0.8 ln 0.8 + 0.2 ln 0.2) = 0.178515 + 0.321888 = 0.500402
H82 = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))


def test_entropy_uniform_client_gets_floor_weight() -> None:
    # Example 0: weights [ln2 - 0, max(ln2 - ln2, 1e-6)] = [0.693147, 1e-6]
    #   w1 = 1e-6 / (ln2 + 1e-6) = 1.4427e-6; target[1] = 0.5 * w1 = 7.2135e-7
    # Example 1: weights [ln2 - 0.500402, ln2] = [0.192745, 0.693147], sum 0.885892
    #   -> [0.217574, 0.782426]; target = [0.217574*0.8 + 0.782426, 0.217574*0.2]
    #   = [0.956485, 0.043515]
    out = teacher_targets(ENT, rule="entropy")
    _check_rows(out, (2, 2))
    w1 = 1e-6 / (LN2 + 1e-6)
    assert out[0, 1] == pytest.approx(0.5 * w1, rel=1e-4)
    assert out[0, 1] == pytest.approx(7.2135e-7, rel=1e-4)
    assert out[0, 0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(out[1], [0.956485, 0.043515], atol=1e-6)
    np.testing.assert_allclose(entropy_targets(ENT), out, atol=1e-7)
    gap = LN2 - H82
    assert gap == pytest.approx(0.192745, abs=1e-6)


def test_entropy_floor_option() -> None:
    # floor 0.1, example 0: weights [0.693147, 0.1] -> w1 = 0.1 / 0.793147 = 0.126080
    #   target = [1 - 0.5*0.126080, 0.5*0.126080] = [0.936960, 0.063040]
    # Example 1 is unchanged: both weights exceed 0.1.
    out = teacher_targets(ENT, rule="entropy", floor=0.1)
    np.testing.assert_allclose(out, [[0.936960, 0.063040], [0.956485, 0.043515]], atol=1e-6)


# Client 0 saw only class 0, client 1 only class 1.
LAB = np.array(
    [
        [[0.9, 0.1], [0.6, 0.4]],
        [[0.3, 0.7], [0.2, 0.8]],
    ]
)
LAB_HIST = np.array([[5, 0], [0, 3]])


def test_label_aware_disjoint_labels_no_smoothing() -> None:
    # smoothing 0: class 0 weights [5, 0] -> client 0 only; class 1 weights [0, 3] -> client 1.
    # Row 0: [p_0[0], p_1[1]] = [0.9, 0.7] -> / 1.6 = [0.5625, 0.4375]
    # Row 1: [0.6, 0.8] -> / 1.4 = [0.428571, 0.571429]
    out = teacher_targets(LAB, rule="label_aware", label_histograms=LAB_HIST, smoothing=0.0)
    _check_rows(out, (2, 2))
    np.testing.assert_allclose(out, [[0.5625, 0.4375], [3 / 7, 4 / 7]], atol=1e-6)
    np.testing.assert_allclose(
        label_aware_targets(LAB, label_histograms=LAB_HIST, smoothing=0.0), out, atol=1e-7
    )


def test_label_aware_default_smoothing() -> None:
    # smoothing 1: class 0 weights [6, 1], class 1 weights [1, 4].
    # Row 0: c0 = (6*0.9 + 0.3)/7 = 0.814286, c1 = (0.1 + 4*0.7)/5 = 0.58, sum 1.394286
    #   -> [0.584016, 0.415984]
    # Row 1: c0 = (6*0.6 + 0.2)/7 = 0.542857, c1 = (0.4 + 4*0.8)/5 = 0.72, sum 1.262857
    #   -> [0.429864, 0.570136]
    out = teacher_targets(LAB, rule="label_aware", label_histograms=LAB_HIST)
    np.testing.assert_allclose(out, [[0.584016, 0.415984], [0.429864, 0.570136]], atol=1e-6)


def test_label_aware_unseen_class_and_empty_row_fallbacks() -> None:
    # No client saw class 1 and smoothing 0 -> class 1 uses equal weights.
    # Row 0: c0 = (5*0.9 + 3*0.3)/8 = 0.675, c1 = (0.1 + 0.7)/2 = 0.4, sum 1.075
    #   -> [0.627907, 0.372093]
    # Row 1: c0 = (5*0.6 + 3*0.2)/8 = 0.45, c1 = (0.4 + 0.8)/2 = 0.6, sum 1.05
    #   -> [0.428571, 0.571429]
    out = teacher_targets(
        LAB, rule="label_aware", label_histograms=np.array([[5, 0], [3, 0]]), smoothing=0.0
    )
    np.testing.assert_allclose(out, [[0.627907, 0.372093], [3 / 7, 4 / 7]], atol=1e-6)
    # Each client puts zero mass on the class it saw: per-class sums [0, 0] -> plain mean.
    zero = np.array([[[0.0, 1.0]], [[1.0, 0.0]]])
    out = teacher_targets(
        zero, rule="label_aware", label_histograms=np.array([[1, 0], [0, 1]]), smoothing=0.0
    )
    np.testing.assert_allclose(out, [[0.5, 0.5]], atol=1e-6)


# 2 clients x 2 examples x 3 classes; means [0.8, 0.2, 0.0] and [0.5, 0.3, 0.2].
ERA = np.array(
    [
        [[0.9, 0.1, 0.0], [0.6, 0.2, 0.2]],
        [[0.7, 0.3, 0.0], [0.4, 0.4, 0.2]],
    ]
)


def test_era_by_hand_and_sharper_than_mean() -> None:
    # T = 0.1, row 0: mean / T = [8, 2, 0] -> softmax = [1, e^-6, e^-8] / (1 + e^-6 + e^-8)
    #   e^-6 = 0.00247875, e^-8 = 0.00033546, sum 1.00281421
    #   -> [0.997194, 0.002472, 0.000335]
    # Row 1: mean / T = [5, 3, 2] -> [1, e^-2, e^-3] / (1 + 0.135335 + 0.049787)
    #   = [1, 0.135335, 0.049787] / 1.185122 -> [0.843795, 0.114195, 0.042010]
    out = teacher_targets(ERA, rule="era", temperature=0.1)
    _check_rows(out, (2, 3))
    expected = np.array([[0.997194, 0.002472, 0.000335], [0.843795, 0.114195, 0.042010]])
    np.testing.assert_allclose(out, expected, atol=2e-6)
    np.testing.assert_allclose(teacher_targets(ERA, rule="era"), out)  # default T = 0.1
    np.testing.assert_allclose(era_targets(ERA, temperature=0.1), out)
    mean = mean_targets(ERA).astype(np.float64)
    assert np.all(_entropy(out.astype(np.float64)) < _entropy(mean))


def test_era_is_softmax_of_probabilities_not_log_probabilities() -> None:
    # T = 1, row 0: softmax([0.8, 0.2, 0]) = [e^0.8, e^0.2, 1] / (2.225541 + 1.221403 + 1)
    #   = [0.500465, 0.274661, 0.224874] -- flatter than the mean, as the paper's formula
    #   implies (softmax(log p / 1) would give back [0.8, 0.2, 0]).
    out = teacher_targets(ERA, rule="era", temperature=1.0)
    np.testing.assert_allclose(out[0], [0.500465, 0.274661, 0.224874], atol=1e-6)


def test_unknown_rule() -> None:
    with pytest.raises(ConfigError, match=r"aggregation\.name") as exc:
        teacher_targets(PROBS, rule="mode")
    for rule in TARGET_RULES:
        assert rule in str(exc.value)
    with pytest.raises(ConfigError, match=r"aggregation\.name"):
        validate_target_rule("mode")
    with pytest.raises(ConfigError, match=r"aggregation\.name"):
        target_rule_options("mode")


def test_unknown_option() -> None:
    with pytest.raises(ConfigError, match=r"aggregation\.temperature"):
        teacher_targets(PROBS, rule="mean", temperature=0.1)
    with pytest.raises(ConfigError, match=r"aggregation\.power.*allowed options.*temperature"):
        validate_target_rule("era", power=2.0)
    with pytest.raises(ConfigError, match=r"aggregation\.smoothing"):
        teacher_targets(PROBS, rule="entropy", smoothing=1.0)


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf"), "0.1", True])
def test_era_bad_temperature(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"aggregation\.temperature"):
        teacher_targets(PROBS, rule="era", temperature=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"aggregation\.temperature"):
        validate_target_rule("era", temperature=bad)
    with pytest.raises(ConfigError, match=r"aggregation\.temperature"):
        era_targets(PROBS, temperature=bad)  # type: ignore[arg-type]


def test_other_option_ranges() -> None:
    with pytest.raises(ConfigError, match=r"aggregation\.power"):
        teacher_targets(PROBS, rule="confidence", power=-1.0)
    with pytest.raises(ConfigError, match=r"aggregation\.floor"):
        teacher_targets(PROBS, rule="entropy", floor=0.0)
    with pytest.raises(ConfigError, match=r"aggregation\.smoothing"):
        teacher_targets(PROBS, rule="label_aware", label_histograms=HIST, smoothing=-1.0)
    # Boundary values that are allowed.
    validate_target_rule("confidence", power=0.0)
    validate_target_rule("label_aware", smoothing=0)
    validate_target_rule("era", temperature=1e-3)
    validate_target_rule("entropy", floor=1e-12)
    validate_target_rule("mean")


def test_missing_sizes_and_histograms() -> None:
    with pytest.raises(ValueError, match="num_examples") as exc:
        teacher_targets(PROBS, rule="size_weighted")
    assert not isinstance(exc.value, ConfigError)
    with pytest.raises(ValueError, match="label_histograms") as exc:
        teacher_targets(PROBS, rule="label_aware")
    assert not isinstance(exc.value, ConfigError)


def test_shape_and_value_errors() -> None:
    with pytest.raises(ValueError, match="3-D"):
        teacher_targets(PROBS[0], rule="era")
    with pytest.raises(ValueError, match=r"num_examples must have shape \(2,\)"):
        teacher_targets(PROBS, rule="size_weighted", num_examples=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="non-negative"):
        teacher_targets(PROBS, rule="size_weighted", num_examples=np.array([1, -2]))
    with pytest.raises(ValueError, match="all zero"):
        teacher_targets(PROBS, rule="size_weighted", num_examples=np.array([0, 0]))
    with pytest.raises(ValueError, match=r"label_histograms must have shape \(2, 3\)"):
        teacher_targets(PROBS, rule="label_aware", label_histograms=np.ones((2, 2)))
    with pytest.raises(ValueError, match="label_histograms must be finite"):
        teacher_targets(
            PROBS, rule="label_aware", label_histograms=np.array([[1, 1, np.nan], [1, 1, 1]])
        )
    bad = PROBS.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        teacher_targets(bad, rule="confidence")
    with pytest.raises(ValueError, match="sum to 1"):
        teacher_targets(PROBS * 2.0, rule="entropy")
