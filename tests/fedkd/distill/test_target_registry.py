"""Tests for the teacher-target rule registry: one TargetRule is all a new rule needs."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from fedkd.distill import (
    TARGET_RULE_REGISTRY,
    TARGET_RULES,
    RuleOption,
    TargetRule,
    target_rule_names,
    target_rule_options,
    teacher_targets,
    validate_target_rule,
)
from fedkd.distill import targets as targets_module
from fedkd.errors import ConfigError

TOY = "largest_client"

# 3 clients x 2 examples x 2 classes.
PROBS = np.array(
    [
        [[0.5, 0.5], [0.9, 0.1]],
        [[0.8, 0.2], [0.2, 0.8]],
        [[0.3, 0.7], [0.6, 0.4]],
    ]
)


def _largest_client(probs: np.ndarray, num_examples: np.ndarray, power: float) -> np.ndarray:
    """The largest client's probabilities raised to ``power`` and renormalised."""
    sharpened = probs[int(np.argmax(num_examples))] ** power
    return (sharpened / sharpened.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def toy(target_rule_registration) -> Iterator[TargetRule]:
    """Register a test rule (one entry, nothing else) and remove it afterwards."""
    rule = TargetRule(
        name=TOY,
        fn=_largest_client,
        options={"power": RuleOption(2.0, low=0.0, low_inclusive=False, high=10.0)},
        needs_num_examples=True,
        summary="the largest client, sharpened (tests only)",
    )
    with target_rule_registration.registered(rule) as registered:
        yield registered


def test_builtin_snapshot_matches_the_registry() -> None:
    assert target_rule_names() == TARGET_RULES == tuple(TARGET_RULE_REGISTRY)
    needs = {
        name: (rule.needs_num_examples, rule.needs_label_histograms)
        for name, rule in TARGET_RULE_REGISTRY.items()
        if rule.needs_num_examples or rule.needs_label_histograms
    }
    assert needs == {
        "size_weighted": (True, False),
        "label_aware": (False, True),
        "support_filter": (False, True),
    }


@pytest.mark.parametrize("rule", TARGET_RULES)
def test_public_functions_share_the_registry_defaults(rule: str) -> None:
    fn = getattr(targets_module, f"{rule}_targets")
    defaults = {
        name: param.default
        for name, param in inspect.signature(fn).parameters.items()
        if param.kind is param.KEYWORD_ONLY and param.default is not param.empty
    }
    assert defaults == target_rule_options(rule)
    data: dict[str, Any] = {}
    if rule == "size_weighted":
        data["num_examples"] = [1, 2, 3]
    elif rule in ("label_aware", "support_filter"):
        data["label_histograms"] = np.ones((3, 2))
    np.testing.assert_array_equal(fn(PROBS, **data), teacher_targets(PROBS, rule=rule, **data))


def test_registered_rule_is_validated_and_dispatched(toy: TargetRule) -> None:
    assert target_rule_names()[-1] == TOY and TARGET_RULE_REGISTRY[TOY] is toy
    # Validation: options, defaults and ranges come from the entry.
    assert target_rule_options(TOY) == {"power": 2.0}
    validate_target_rule(TOY, power=9.5)
    with pytest.raises(
        ConfigError,
        match=rf"aggregation\.power must be a finite number > 0 and < 10 for "
        rf"aggregation\.name='{TOY}', got 0",
    ):
        validate_target_rule(TOY, power=0)
    with pytest.raises(ConfigError, match=r"aggregation\.trim: .*allowed options: \['power'\]"):
        validate_target_rule(TOY, trim=0.1)
    with pytest.raises(ConfigError, match=rf"aggregation\.name must be one of \[.*'{TOY}'\]"):
        validate_target_rule("nope")
    # Dispatch: teacher_targets validates the probabilities and the data the entry needs.
    sizes = np.array([5.0, 20.0, 1.0])
    expected = _largest_client(PROBS, sizes, 2.0)
    np.testing.assert_array_equal(teacher_targets(PROBS, rule=TOY, num_examples=sizes), expected)
    np.testing.assert_array_equal(
        teacher_targets(list(PROBS), rule=TOY, num_examples=[5, 20, 1], power=1.0),
        PROBS[1].astype(np.float32),
    )
    with pytest.raises(ValueError, match=rf"rule '{TOY}' needs num_examples"):
        teacher_targets(PROBS, rule=TOY)
    with pytest.raises(ValueError, match=r"num_examples must have shape \(3,\)"):
        teacher_targets(PROBS, rule=TOY, num_examples=[1, 2])
    with pytest.raises(ValueError, match="rows must sum to 1"):
        teacher_targets(PROBS * 2, rule=TOY, num_examples=sizes)


def test_unregistered_rule_is_gone(toy: TargetRule, target_rule_registration) -> None:
    with (
        target_rule_registration.unregistered(toy),
        pytest.raises(ConfigError, match=r"aggregation\.name"),
    ):
        teacher_targets(PROBS, rule=TOY, num_examples=[1, 2, 3])


def test_registry_rejects_bad_entries(toy: TargetRule, target_rule_registration) -> None:
    target_rule_registration.check_misuse(toy, "target rule")
    with pytest.raises(ValueError, match="outside its own range"):
        RuleOption(0.0, low=0.0, low_inclusive=False)
    with pytest.raises(ValueError, match="must accept probs and the keywords"):
        TargetRule(name="bad", fn=_largest_client, options={"power": RuleOption(1.0)})
    with pytest.raises(ValueError, match="reserved"):
        TargetRule(name="bad", fn=_largest_client, options={"num_examples": RuleOption(1.0)})
    with pytest.raises(ValueError, match="non-empty string"):
        TargetRule(name="", fn=_largest_client)
    with pytest.raises(TypeError):
        toy.options["power"] = RuleOption(3.0)  # type: ignore[index]
