"""What each accuracy measures, named once: which model, on which test data.

A federated run evaluates two kinds of model on two kinds of test data:

============================================  ===========================================
key (``metrics.jsonl``, ``summary.json``)     what it measures
============================================  ===========================================
``global_on_global_test_accuracy``            the global model (FedAvg's average, the
                                              distilled student, ...) on the global test set
``global_on_local_test_accuracy``             the global model on every client's own test
                                              split, pooled (the tuning objective)
``local_on_global_test_accuracy_mean``        each client's own model on the global test
                                              set, mean over the round's clients
``local_on_local_test_accuracy_mean``         each client's own model on its own test
                                              split, mean over the round's clients
============================================  ===========================================

Flower's federated evaluation (``strategy.fraction_evaluate``) is one of the two "on local
test" numbers, depending on what it sends: the global model (weight methods) or nothing
(methods whose clients keep their own models); the strategy writes it under
``global_on_local_test_accuracy_evaluated`` or ``local_on_local_test_accuracy_evaluated``
(example-weighted over the clients it sampled).

The keys of fedkd 0.1 (``student_accuracy``, ``client_accuracy_mean``, ...) are still
written beside the new ones, as aliases with the same values, through fedkd 0.2 (one
release; they go in 0.3) (:data:`ALIASES`); readers accept runs that have only the old keys
(:func:`canonical`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: new key -> the key fedkd 0.1 wrote (still written as an alias for one release)
ALIASES: dict[str, str] = {
    "global_on_global_test_accuracy": "student_accuracy",
    "global_on_global_test_loss": "student_loss",
    "global_on_global_test_balanced_accuracy": "student_balanced_accuracy",
    "global_on_global_test_auc": "student_auc",
    "global_on_global_test_accuracy_before_distill": "student_accuracy_before_distill",
    "global_on_local_test_accuracy": "student_validation_accuracy",
    "local_on_global_test_accuracy_mean": "client_accuracy_mean",
    "local_on_global_test_accuracy_min": "client_accuracy_min",
    "local_on_global_test_accuracy_max": "client_accuracy_max",
    "local_on_global_test_accuracies": "client_accuracies",
    "local_on_local_test_accuracy_mean": "personalized_accuracy_mean",
}
#: the fedkd 0.1 key of Flower's federated evaluation; its new name depends on what the
#: strategy sent (:func:`evaluated_key`)
EVALUATED_ALIAS = "client_accuracy"
GLOBAL_EVALUATED = "global_on_local_test_accuracy_evaluated"
LOCAL_EVALUATED = "local_on_local_test_accuracy_evaluated"

GLOBAL_TEST = "global_on_global_test_accuracy"
GLOBAL_LOCAL_TEST = "global_on_local_test_accuracy"
LOCAL_GLOBAL_TEST = "local_on_global_test_accuracy_mean"
LOCAL_LOCAL_TEST = "local_on_local_test_accuracy_mean"
ENSEMBLE_TEST = "ensemble_accuracy"

#: How each accuracy is labelled in the results table, the report and the plots.
LABELS: dict[str, str] = {
    GLOBAL_TEST: "global model, global test set",
    "global_on_global_test_balanced_accuracy": "global model, global test set (balanced)",
    "global_on_global_test_auc": "global model, global test set (ROC-AUC)",
    GLOBAL_LOCAL_TEST: "global model, clients' test splits",
    GLOBAL_EVALUATED: "global model, sampled clients' test splits (federated evaluation)",
    ENSEMBLE_TEST: "teacher ensemble, global test set",
    LOCAL_GLOBAL_TEST: "clients' own models, global test set (mean)",
    LOCAL_LOCAL_TEST: "clients' own models, own test splits (mean)",
    LOCAL_EVALUATED: "clients' own models, own test splits (federated evaluation)",
    EVALUATED_ALIAS: "clients' test splits (federated evaluation)",  # fedkd 0.1 runs
}
#: The short forms of the progress line.
SHORT: dict[str, str] = {
    GLOBAL_TEST: "global",
    ENSEMBLE_TEST: "ensemble",
    LOCAL_GLOBAL_TEST: "clients",
}


def evaluated_key(*, sends_global_model: bool) -> str:
    """The name of Flower's federated evaluation: the global model on the sampled clients'
    test splits, or (a method whose clients keep their own models) those models."""
    return GLOBAL_EVALUATED if sends_global_model else LOCAL_EVALUATED


def evaluated(accuracy: float, sends_global_model: bool) -> dict[str, float]:
    """The round-metric keys of Flower's federated evaluation: :func:`evaluated_key` and
    its fedkd 0.1 alias ``client_accuracy``."""
    return {
        EVALUATED_ALIAS: accuracy,
        evaluated_key(sends_global_model=sends_global_model): accuracy,
    }


def new_name(key: str) -> str:
    """The new name of a fedkd 0.1 key (``student_accuracy`` ->
    ``global_on_global_test_accuracy``); any other key unchanged."""
    return _NEW.get(key, key)


def with_aliases(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` by the new names, each where its old key stood, then every renamed key's
    fedkd 0.1 alias at the end with the same value; a row that already has a new key keeps
    its value."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        new = _NEW.get(key)
        if new is None:
            out.setdefault(key, value)
        elif new not in out:
            out[new] = row.get(new, value)
    for new, old in ALIASES.items():
        if new in out:
            out[old] = out[new]
    return out


def canonical(summary_or_row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``summary.json`` (its ``final``, ``best`` and ``headline``) or a row, readable by
    the new names whichever fedkd wrote it (runs of 0.1 have only the old keys)."""
    out = with_aliases(summary_or_row)
    for part in ("final", "best"):
        if isinstance(out.get(part), Mapping):
            out[part] = with_aliases(out[part])
    headline = out.get("headline")
    if isinstance(headline, Mapping) and headline.get("metric") in _NEW:
        out["headline"] = {**headline, "metric": _NEW[headline["metric"]]}
    return out


_NEW = {old: new for new, old in ALIASES.items()}
