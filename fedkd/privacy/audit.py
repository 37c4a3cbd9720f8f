"""Membership-inference audit: how well an attacker can tell training members from non-members.

What it measures
----------------
A membership-inference attack scores each candidate record; a high score means "this record
was in the training set". The audit reports how well the scores separate members from
non-members: the ROC AUC, and the true-positive rate at a 1% false-positive rate, the
low-FPR metric that Carlini et al. (2022) argue reflects real privacy risk (an attack that
confidently identifies a few records matters more than one that is slightly better than
chance on all of them). AUC 0.5 and TPR@1%FPR 0.01 mean no measurable leakage.

Threat model
------------
The attacker holds the released model (the distilled student, or a client model) with
black-box access to its logits, and a set of candidate records with their true labels.

- ``"loss"`` (Yeom et al. 2018): score = minus the per-example cross-entropy of the
  released model. Needs nothing else.
- ``"lira"`` (online LiRA, Carlini et al. 2022): the attacker can additionally train
  shadow models of the same architecture with the same recipe on data from the same
  distribution, here the candidate pool itself: each shadow trains on a random half of it.
  Each candidate gets a per-example likelihood ratio between "trained on" and "not trained
  on", which calibrates away how hard the example is.

Members and non-members in fedkd
--------------------------------
Members are the clients' private training records (for a client model, that client's
partition; for the student, the union of the partitions it learned from indirectly through
the clients' soft labels). Non-members are held-out records from the same distribution that
no client or server ever trained on (e.g. the test split, not the public proxy set). Use
:func:`balanced_non_members` to draw as many non-members as there are members.

References
----------
- S. Yeom, I. Giacomelli, M. Fredrikson, S. Jha. "Privacy Risk in Machine Learning:
  Analyzing the Connection to Overfitting." IEEE CSF 2018.
- N. Carlini, S. Chien, M. Nasr, S. Song, A. Terzis, F. Tramèr. "Membership Inference
  Attacks From First Principles." IEEE S&P 2022.

Modules
-------
:mod:`fedkd.privacy.audit_metrics` (results, ROC metrics), :mod:`fedkd.privacy.audit_lira`
(LiRA) and :mod:`fedkd.privacy.audit_plot` (ROC plot); their public names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd.errors import ConfigError
from fedkd.privacy.audit_lira import ModelFactory as ModelFactory
from fedkd.privacy.audit_lira import TrainFn as TrainFn
from fedkd.privacy.audit_lira import _check_num_shadows
from fedkd.privacy.audit_lira import lira_attack as lira_attack
from fedkd.privacy.audit_metrics import LOW_FPR as LOW_FPR
from fedkd.privacy.audit_metrics import MAX_CURVE_POINTS as MAX_CURVE_POINTS
from fedkd.privacy.audit_metrics import ArrayPair as ArrayPair
from fedkd.privacy.audit_metrics import AttackResult as AttackResult
from fedkd.privacy.audit_metrics import _check_pair, _check_seed, _labels, _pool, _result
from fedkd.privacy.audit_metrics import roc_metrics as roc_metrics
from fedkd.privacy.audit_plot import plot_roc as plot_roc
from fedkd.train import predict_logits

ATTACKS: tuple[str, ...] = ("loss", "lira")


# ----------------------------------------------------------------------------- loss attack


def loss_scores(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Per-example membership score ``-cross_entropy(model(x), y)`` (higher = member).

    Parameters
    ----------
    model : nn.Module
        Model returning logits; run in eval mode without gradients (its mode is restored, but
        it is moved to ``device``).
    x : np.ndarray
        Inputs ``(N, *input_shape)``.
    y : np.ndarray
        Integer labels ``(N,)`` in ``[0, num_classes)``.
    device : str or torch.device
        Device to run the model on.

    Returns
    -------
    np.ndarray
        float64 scores ``(N,)``, equal to ``log p_y``.
    """
    _check_pair((x, y), "x/y")
    logits = torch.from_numpy(predict_logits(model, x, device=device)).double()
    labels = torch.from_numpy(_labels(y, logits.shape[1]))
    losses = F.cross_entropy(logits, labels, reduction="none")
    return (-losses).numpy()


def loss_threshold_attack(
    model: nn.Module,
    members: ArrayPair,
    non_members: ArrayPair,
    *,
    target: str,
    device: str | torch.device = "cpu",
) -> AttackResult:
    """Loss-threshold attack of Yeom et al. (2018), evaluated threshold-free by its ROC.

    The attacker predicts "member" when the model's loss on a record is below a threshold;
    sweeping the threshold gives the ROC of the scores from :func:`loss_scores`.

    Parameters
    ----------
    model : nn.Module
        The released model.
    members, non_members : tuple of np.ndarray
        ``(x, y)`` of records known to be in, and known not to be in, the training data.
    target : str
        Name of the audited model, stored in the result.
    device : str or torch.device
        Device to run the model on.

    Returns
    -------
    AttackResult
        With ``attack="loss"``.
    """
    pool_x, pool_y, is_member = _pool(members, non_members)
    scores = loss_scores(model, pool_x, pool_y, device=device)
    return _result("loss", target, scores, is_member)


# ----------------------------------------------------------------------------- entry points


def audit_model(
    model: nn.Module,
    members: ArrayPair,
    non_members: ArrayPair,
    *,
    target: str,
    attacks: Sequence[str] = ATTACKS,
    model_factory: ModelFactory | None = None,
    train_fn: TrainFn | None = None,
    num_shadows: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[AttackResult]:
    """Run the requested membership-inference attacks against one model.

    YAML (keys named in errors): ``privacy: {audit_attacks: [loss, lira], audit_shadows: 8}``.

    Parameters
    ----------
    model : nn.Module
        The released model.
    members, non_members : tuple of np.ndarray
        Non-empty ``(x, y)`` with matching lengths; see the module docstring.
    target : str
        Name of the audited model, stored in every result.
    attacks : sequence of str
        Subset of :data:`ATTACKS`, run in this order (duplicates run once); a single string
        names one attack.
    model_factory, train_fn : callable, optional
        Required for ``"lira"``; see :func:`lira_attack`.
    num_shadows, seed : int
        LiRA shadow count (>= 2) and seed.
    device : str or torch.device
        Device to query the models on.

    Returns
    -------
    list of AttackResult
        One per requested attack.

    Raises
    ------
    ConfigError
        Unknown or no attack (``privacy.audit_attacks``), or ``num_shadows < 2``
        (``privacy.audit_shadows``) when LiRA is requested.
    ValueError
        Empty or mismatched ``members`` / ``non_members``, or LiRA requested without
        ``model_factory`` and ``train_fn``.
    """
    names = _check_attacks(attacks)
    _check_pair(members, "members")
    _check_pair(non_members, "non_members")
    if "lira" in names:
        # Validate everything before the (cheap) loss attack so a bad LiRA setting fails fast.
        _check_num_shadows(num_shadows)
        _check_seed(seed)
        if model_factory is None or train_fn is None:
            raise ValueError("the 'lira' attack needs both model_factory and train_fn")
    results: list[AttackResult] = []
    for name in names:
        if name == "loss":
            results.append(
                loss_threshold_attack(model, members, non_members, target=target, device=device)
            )
        else:
            assert model_factory is not None and train_fn is not None  # checked above
            results.append(
                lira_attack(
                    model,
                    members,
                    non_members,
                    target=target,
                    model_factory=model_factory,
                    train_fn=train_fn,
                    num_shadows=num_shadows,
                    seed=seed,
                    device=device,
                )
            )
    return results


def balanced_non_members(
    members_count: int, pool_x: np.ndarray, pool_y: np.ndarray, *, seed: int
) -> ArrayPair:
    """Draw ``min(members_count, len(pool))`` held-out records, without replacement.

    Balancing members and non-members keeps the ROC (and TPR at low FPR) from being
    dominated by whichever class is larger.

    Parameters
    ----------
    members_count : int
        Number of members to match, >= 1.
    pool_x, pool_y : np.ndarray
        Held-out records never trained on, non-empty with matching lengths.
    seed : int
        Seeds the draw; the same seed gives the same subset.

    Returns
    -------
    tuple of np.ndarray
        ``(x, y)`` subset, in the pool's original order.
    """
    if isinstance(members_count, bool) or not isinstance(members_count, int) or members_count < 1:
        raise ValueError(f"members_count must be a positive integer, got {members_count!r}")
    _check_pair((pool_x, pool_y), "pool")
    _check_seed(seed)
    size = min(members_count, len(pool_y))
    chosen = np.sort(np.random.default_rng(seed).choice(len(pool_y), size=size, replace=False))
    return np.asarray(pool_x)[chosen], np.asarray(pool_y)[chosen]


def _check_attacks(attacks: Sequence[str] | str) -> list[str]:
    names = [attacks] if isinstance(attacks, str) else list(attacks)
    if not names:
        raise ConfigError(f"privacy.audit_attacks must name at least one of {list(ATTACKS)}")
    unknown = [name for name in names if name not in ATTACKS]
    if unknown:
        raise ConfigError(
            f"privacy.audit_attacks: unknown attack(s) {unknown}; allowed: {list(ATTACKS)}"
        )
    return list(dict.fromkeys(names))
