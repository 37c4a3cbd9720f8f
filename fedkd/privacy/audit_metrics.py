"""Membership-inference scoring: :class:`AttackResult`, ROC metrics and shared record checks."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

#: False-positive rate at which :attr:`AttackResult.tpr_at_1pct_fpr` is read off the ROC.
LOW_FPR = 0.01
#: Fewest non-members that resolve :data:`LOW_FPR`: with fewer, one false positive already
#: exceeds it and the "TPR at 1% FPR" is an interpolation between the ROC's first points.
MIN_NON_MEMBERS = math.ceil(round(1.0 / LOW_FPR, 9))
#: Most points of the ROC curve kept in an :class:`AttackResult` (for plots and JSON).
MAX_CURVE_POINTS = 200

ArrayPair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class AttackResult:
    """Outcome of one membership-inference attack on one model.

    Attributes
    ----------
    attack : str
        Attack name, one of :data:`fedkd.privacy.audit.ATTACKS`.
    target : str
        Name of the audited model, given by the caller (``"student"``, ``"client-0"``).
    auc : float
        ROC AUC of the member-vs-non-member scores (0.5 = chance).
    tpr_at_1pct_fpr : float or None
        True-positive rate at a false-positive rate of 1%, linearly interpolated on the ROC
        curve (chance = 0.01); ``None`` with fewer than :data:`MIN_NON_MEMBERS`
        non-members, which cannot resolve that rate (:attr:`tpr_at_1pct_fpr_note` says so).
    members, non_members : int
        Number of member and non-member records scored.
    fpr, tpr : list of float
        The ROC curve, downsampled to at most :data:`MAX_CURVE_POINTS` points (first and last
        kept), for plots.
    """

    attack: str
    target: str
    auc: float
    tpr_at_1pct_fpr: float | None
    members: int
    non_members: int
    fpr: list[float]
    tpr: list[float]

    @property
    def tpr_at_1pct_fpr_note(self) -> str | None:
        """Why :attr:`tpr_at_1pct_fpr` is ``None``; ``None`` when it is reported."""
        if self.tpr_at_1pct_fpr is not None:
            return None
        return (
            f"not resolvable: {self.non_members} non-members, FPR {LOW_FPR:g} needs at "
            f"least {MIN_NON_MEMBERS}"
        )

    def summary(self) -> dict[str, float | int | str | None]:
        """Return ``{"auc", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_note", "members",
        "non_members"}`` (JSON-ready; the TPR and its note are ``None`` when unset)."""
        tpr = self.tpr_at_1pct_fpr
        return {
            "auc": float(self.auc),
            "tpr_at_1pct_fpr": None if tpr is None else float(tpr),
            "tpr_at_1pct_fpr_note": self.tpr_at_1pct_fpr_note,
            "members": int(self.members),
            "non_members": int(self.non_members),
        }


# ----------------------------------------------------------------------------- metrics


def roc_metrics(
    scores: np.ndarray, is_member: np.ndarray
) -> tuple[float, float | None, np.ndarray, np.ndarray]:
    """ROC AUC, TPR at 1% FPR and the ROC curve of membership scores.

    Parameters
    ----------
    scores : np.ndarray
        Finite scores ``(N,)``; higher means "more likely a member".
    is_member : np.ndarray
        Ground truth ``(N,)``, booleans or 0/1.

    Returns
    -------
    auc : float
        :func:`sklearn.metrics.roc_auc_score` (ties count one half).
    tpr_at_1pct_fpr : float or None
        TPR of the piecewise-linear ROC curve at FPR = :data:`LOW_FPR`; where the curve has a
        vertical step at exactly that FPR, the highest TPR of the step. ``None`` with fewer
        than :data:`MIN_NON_MEMBERS` non-members: the smallest non-zero FPR they can
        measure is ``1 / non_members`` > :data:`LOW_FPR`.
    fpr, tpr : np.ndarray
        The full curve from :func:`sklearn.metrics.roc_curve`, from (0, 0) to (1, 1).

    Raises
    ------
    ValueError
        If the arrays are not 1-D of equal length, scores are not finite, labels are not
        0/1, or only one class (members or non-members) is present.
    """
    score_arr = np.asarray(scores, dtype=np.float64)
    label_arr = np.asarray(is_member)
    if score_arr.ndim != 1 or label_arr.ndim != 1:
        raise ValueError(
            f"scores and is_member must be 1-D, got shapes {score_arr.shape} and {label_arr.shape}"
        )
    if len(score_arr) != len(label_arr):
        raise ValueError(
            f"scores and is_member lengths differ: {len(score_arr)} vs {len(label_arr)}"
        )
    if not np.all(np.isfinite(score_arr)):
        raise ValueError("scores must be finite (found NaN or inf)")
    if label_arr.dtype != np.bool_:
        if not np.all(np.isin(label_arr, (0, 1))):
            raise ValueError("is_member must hold booleans or 0/1 values")
        label_arr = label_arr.astype(bool)
    num_members = int(label_arr.sum())
    if num_members == 0 or num_members == len(label_arr):
        raise ValueError(
            "roc_metrics needs both members and non-members, got "
            f"{num_members} members and {len(label_arr) - num_members} non-members"
        )
    from sklearn.metrics import roc_auc_score, roc_curve  # deferred: 4 s to import on 2 cores

    fpr, tpr, _ = roc_curve(label_arr, score_arr)
    auc = float(roc_auc_score(label_arr, score_arr))
    resolvable = len(label_arr) - num_members >= MIN_NON_MEMBERS
    return auc, _tpr_at_fpr(fpr, tpr, LOW_FPR) if resolvable else None, fpr, tpr


def _tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target_fpr: float) -> float:
    """TPR of the piecewise-linear curve through ``(fpr, tpr)`` at ``target_fpr``.

    ``np.interp`` is not used because ROC curves repeat FPR values (vertical steps), where
    it is ill-defined; both arrays are non-decreasing, so the last point at or left of
    ``target_fpr`` carries the best TPR there.
    """
    last = int(np.searchsorted(fpr, target_fpr, side="right")) - 1
    if last >= len(fpr) - 1 or fpr[last] == target_fpr:
        return float(tpr[last])
    fraction = (target_fpr - fpr[last]) / (fpr[last + 1] - fpr[last])
    return float(tpr[last] + fraction * (tpr[last + 1] - tpr[last]))


def _downsample_curve(
    fpr: np.ndarray, tpr: np.ndarray, max_points: int = MAX_CURVE_POINTS
) -> tuple[list[float], list[float]]:
    """Keep at most ``max_points`` ROC points, including both ends.

    Half of the points are spread evenly over the curve's points, half over log-spaced FPR
    values, so the low-FPR region that a log-log plot magnifies keeps its detail.
    """
    n = len(fpr)
    if n <= max_points:
        return [float(v) for v in fpr], [float(v) for v in tpr]
    by_index = np.linspace(0, n - 1, max_points // 2).round().astype(int)
    smallest = fpr[fpr > 0].min() if np.any(fpr > 0) else 1.0
    log_grid = np.geomspace(smallest, 1.0, max_points - max_points // 2 - 2)
    by_fpr = np.clip(np.searchsorted(fpr, log_grid, side="right") - 1, 0, n - 1)
    keep = np.unique(np.concatenate([[0, n - 1], by_index, by_fpr]))  # <= max_points
    return [float(v) for v in fpr[keep]], [float(v) for v in tpr[keep]]


def _result(attack: str, target: str, scores: np.ndarray, is_member: np.ndarray) -> AttackResult:
    auc, tpr_low, fpr, tpr = roc_metrics(scores, is_member)
    fpr_points, tpr_points = _downsample_curve(fpr, tpr)
    num_members = int(np.sum(is_member))
    logger.info(
        "membership audit %s/%s: AUC %.3f, TPR@1%%FPR %s (%d members, %d non-members)",
        target,
        attack,
        auc,
        "-" if tpr_low is None else f"{tpr_low:.3f}",
        num_members,
        len(is_member) - num_members,
    )
    return AttackResult(
        attack=attack,
        target=target,
        auc=auc,
        tpr_at_1pct_fpr=tpr_low,
        members=num_members,
        non_members=len(is_member) - num_members,
        fpr=fpr_points,
        tpr=tpr_points,
    )


# ----------------------------------------------------------------------------- validation


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def _check_pair(pair: ArrayPair, name: str) -> None:
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise ValueError(f"{name} must be an (x, y) tuple of arrays")
    x, y = pair
    if len(x) == 0:
        raise ValueError(f"{name} is empty: need at least one record")
    if len(x) != len(y):
        raise ValueError(f"{name}: x and y lengths differ: {len(x)} vs {len(y)}")


def _labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Validate integer labels in ``[0, num_classes)`` and return them as int64."""
    arr = np.asarray(y)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"labels must be 1-D integers, got shape {arr.shape}, dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for a {num_classes}-class model, "
            f"got range [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.int64)


def _pool(members: ArrayPair, non_members: ArrayPair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check both ``(x, y)`` pairs, then concatenate members and non-members.

    Returns ``(x, y, is_member)``.
    """
    _check_pair(members, "members")
    _check_pair(non_members, "non_members")
    pool_x = np.concatenate([np.asarray(members[0]), np.asarray(non_members[0])])
    pool_y = np.concatenate([np.asarray(members[1]), np.asarray(non_members[1])])
    is_member = np.zeros(len(pool_y), dtype=bool)
    is_member[: len(members[1])] = True
    return pool_x, pool_y, is_member
