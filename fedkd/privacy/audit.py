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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd.errors import ConfigError
from fedkd.train import predict_logits

logger = logging.getLogger(__name__)

ATTACKS: tuple[str, ...] = ("loss", "lira")

#: False-positive rate at which :attr:`AttackResult.tpr_at_1pct_fpr` is read off the ROC.
LOW_FPR = 0.01
#: Most points of the ROC curve kept in an :class:`AttackResult` (for plots and JSON).
MAX_CURVE_POINTS = 200
# LiRA's Gaussians get at least this standard deviation (in log-odds units): an example
# whose shadow statistics barely vary would otherwise yield near-infinite likelihood ratios.
_MIN_STD = 1e-2

ArrayPair = tuple[np.ndarray, np.ndarray]
ModelFactory = Callable[[int], nn.Module]
TrainFn = Callable[[nn.Module, np.ndarray, np.ndarray, int], None]


@dataclass(frozen=True)
class AttackResult:
    """Outcome of one membership-inference attack on one model.

    Attributes
    ----------
    attack : str
        Attack name, one of :data:`ATTACKS`.
    target : str
        Name of the audited model, given by the caller (``"student"``, ``"client-0"``).
    auc : float
        ROC AUC of the member-vs-non-member scores (0.5 = chance).
    tpr_at_1pct_fpr : float
        True-positive rate at a false-positive rate of 1%, linearly interpolated on the ROC
        curve (chance = 0.01).
    members, non_members : int
        Number of member and non-member records scored.
    fpr, tpr : list of float
        The ROC curve, downsampled to at most :data:`MAX_CURVE_POINTS` points (first and last
        kept), for plots.
    """

    attack: str
    target: str
    auc: float
    tpr_at_1pct_fpr: float
    members: int
    non_members: int
    fpr: list[float]
    tpr: list[float]

    def summary(self) -> dict[str, float | int]:
        """Return ``{"auc", "tpr_at_1pct_fpr", "members", "non_members"}`` (JSON-ready)."""
        return {
            "auc": float(self.auc),
            "tpr_at_1pct_fpr": float(self.tpr_at_1pct_fpr),
            "members": int(self.members),
            "non_members": int(self.non_members),
        }


# ----------------------------------------------------------------------------- metrics


def roc_metrics(
    scores: np.ndarray, is_member: np.ndarray
) -> tuple[float, float, np.ndarray, np.ndarray]:
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
    tpr_at_1pct_fpr : float
        TPR of the piecewise-linear ROC curve at FPR = :data:`LOW_FPR`; where the curve has a
        vertical step at exactly that FPR, the highest TPR of the step.
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
    return auc, _tpr_at_fpr(fpr, tpr, LOW_FPR), fpr, tpr


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
        "membership audit %s/%s: AUC %.3f, TPR@1%%FPR %.3f (%d members, %d non-members)",
        target,
        attack,
        auc,
        tpr_low,
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
    _check_pair(members, "members")
    _check_pair(non_members, "non_members")
    pool_x, pool_y, is_member = _pool(members, non_members)
    scores = loss_scores(model, pool_x, pool_y, device=device)
    return _result("loss", target, scores, is_member)


# ----------------------------------------------------------------------------- LiRA


def lira_attack(
    model: nn.Module,
    members: ArrayPair,
    non_members: ArrayPair,
    *,
    target: str,
    model_factory: ModelFactory,
    train_fn: TrainFn,
    num_shadows: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> AttackResult:
    """Online likelihood-ratio attack (LiRA) of Carlini et al. (2022).

    The audit pool is ``members ∪ non_members``. Each of ``num_shadows`` shadow models is
    trained on a random half of the pool; the assignment is balanced so that every record is
    IN for ``num_shadows // 2`` shadows (for odd ``num_shadows``, one more for a random half
    of the records) and OUT for the rest. For every record the statistic

    .. math:: \\phi = \\log p_y - \\log(1 - p_y)
                    = z_y - \\operatorname{logsumexp}_{j \\ne y} z_j

    (logit-scaled confidence of the true class, computed stably from the logits ``z``) is
    collected from the IN and OUT shadows, a Gaussian is fitted to each side (mean and
    population std, floored at 0.01; with fewer than two IN or OUT observations the pooled
    std of that side over all records is used), and the score of the target model's
    :math:`\\phi` is

    .. math:: \\log \\mathcal{N}(\\phi; \\mu_{in}, \\sigma_{in})
              - \\log \\mathcal{N}(\\phi; \\mu_{out}, \\sigma_{out}).

    Parameters
    ----------
    model : nn.Module
        The released model.
    members, non_members : tuple of np.ndarray
        ``(x, y)`` of records known to be in, and known not to be in, the training data.
    target : str
        Name of the audited model, stored in the result.
    model_factory : callable
        ``model_factory(shadow_index) -> nn.Module``: a fresh, untrained model of the target's
        architecture (the factory chooses its initialisation, e.g. seeded by the index).
    train_fn : callable
        ``train_fn(shadow, x_in, y_in, seed)`` trains ``shadow`` in place on its IN records
        with the target's recipe (e.g. :func:`fedkd.train.train_local` with the client
        hyper-parameters) on whatever device it chooses; its return value is ignored. It is
        not called for a shadow that drew no IN record (only possible for tiny pools).
    num_shadows : int
        Number of shadow models, at least 2 (``privacy.audit_shadows``). Carlini et al. use
        64 or more; a handful already beats the loss attack.
    seed : int
        Seeds the IN/OUT assignment and the ``seed`` passed to ``train_fn``; shadow ``i``
        gets the same seed whatever ``num_shadows`` is.
    device : str or torch.device
        Device on which the target and shadow models are queried.

    Returns
    -------
    AttackResult
        With ``attack="lira"``.

    Raises
    ------
    ConfigError
        If ``num_shadows < 2`` or ``seed`` is not a non-negative integer.
    ValueError
        For empty or mismatched ``members`` / ``non_members``.
    """
    _check_num_shadows(num_shadows)
    _check_seed(seed)
    _check_pair(members, "members")
    _check_pair(non_members, "non_members")
    pool_x, pool_y, is_member = _pool(members, non_members)
    target_logits = predict_logits(model, pool_x, device=device)
    labels = _labels(pool_y, target_logits.shape[1])
    target_phi = _logit_confidence(target_logits, labels)

    seeds = np.random.SeedSequence(seed).spawn(num_shadows + 1)
    keep = _shadow_membership(len(pool_y), num_shadows, np.random.default_rng(seeds[0]))
    shadow_phi = np.empty((num_shadows, len(pool_y)), dtype=np.float64)
    for index in range(num_shadows):
        shadow = model_factory(index)
        shadow_seed = int(seeds[index + 1].generate_state(1)[0])
        in_idx = np.flatnonzero(keep[index])
        if in_idx.size:
            train_fn(shadow, pool_x[in_idx], pool_y[in_idx], shadow_seed)
        else:
            logger.warning("LiRA shadow %d drew no IN record; it stays untrained", index)
        shadow_phi[index] = _logit_confidence(predict_logits(shadow, pool_x, device=device), labels)
        logger.debug("LiRA shadow %d/%d trained on %d records", index + 1, num_shadows, in_idx.size)

    scores = _lira_scores(target_phi, shadow_phi, keep)
    return _result("lira", target, scores, is_member)


def _shadow_membership(num_examples: int, num_shadows: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``(num_shadows, num_examples)``: which records each shadow trains on.

    Every record is IN for ``num_shadows // 2`` shadows chosen at random (one more for a
    random half of the records when ``num_shadows`` is odd), so each has IN and OUT
    observations and each shadow trains on about half of the pool.
    """
    ranks = rng.random((num_shadows, num_examples)).argsort(axis=0).argsort(axis=0)
    in_count = np.full(num_examples, num_shadows // 2)
    if num_shadows % 2:
        in_count += rng.random(num_examples) < 0.5
    return ranks < in_count[None, :]


def _logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``log p_y - log(1 - p_y)`` per row, as ``z_y - logsumexp_{j != y} z_j`` (float64)."""
    z = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"LiRA needs logits of shape (N, C) with C >= 2, got {tuple(z.shape)}")
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    true_logit = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return (true_logit - torch.logsumexp(others, dim=1)).numpy()


def _lira_scores(target_phi: np.ndarray, shadow_phi: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per-record Gaussian log-likelihood ratio IN vs OUT of ``target_phi``.

    ``shadow_phi`` and ``keep`` are ``(num_shadows, N)``; ``keep`` marks IN observations.
    """
    mean_in, std_in = _gaussian_fit(shadow_phi, keep)
    mean_out, std_out = _gaussian_fit(shadow_phi, ~keep)
    return _log_normal(target_phi, mean_in, std_in) - _log_normal(target_phi, mean_out, std_out)


def _gaussian_fit(phi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and floored std of the ``mask``-ed entries of ``phi``.

    Columns with fewer than two observations use the pooled within-column std of the
    columns that have two or more, or, if none do, the std of all masked entries.
    """
    counts = mask.sum(axis=0)
    if np.any(counts == 0):
        raise ValueError("every record needs at least one IN and one OUT shadow observation")
    mean = np.where(mask, phi, 0.0).sum(axis=0) / counts
    squared_dev = np.where(mask, (phi - mean[None, :]) ** 2, 0.0).sum(axis=0)
    std = np.sqrt(squared_dev / counts)
    sparse = counts < 2
    if np.any(sparse):
        rich = ~sparse
        if np.any(rich):
            fallback = float(np.sqrt(squared_dev[rich].sum() / counts[rich].sum()))
        else:
            fallback = float(np.std(phi[mask]))
        std = np.where(sparse, fallback, std)
    return mean, np.maximum(std, _MIN_STD)


def _log_normal(value: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Gaussian log-density up to the shared ``-log(2 pi) / 2`` constant."""
    return -0.5 * ((value - mean) / std) ** 2 - np.log(std)


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


def plot_roc(results: Sequence[AttackResult], path: str | Path) -> Path:
    """Save log-log ROC curves, one line per (target, attack), to the PNG ``path``.

    The log-log axes are the presentation of Carlini et al. (2022): they show the low-FPR
    regime where an attack identifies members confidently. The legend gives each AUC; the
    dashed diagonal is a chance-level attack. Uses :class:`matplotlib.figure.Figure` with
    the Agg canvas, so no global pyplot state is touched. Parent folders are created.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``results`` is empty.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_roc needs at least one AttackResult")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Lower limit: below the smallest non-zero FPR any curve can reach.
    lowest = min(1e-3, 0.5 / max(max(r.non_members for r in results), 1))
    fig = Figure(figsize=(5.0, 5.0))
    FigureCanvasAgg(fig)
    ax: Any = fig.add_subplot(1, 1, 1)
    ax.plot([lowest, 1.0], [lowest, 1.0], linestyle="--", color="grey", label="chance")
    for result in results:
        fpr = np.clip(np.asarray(result.fpr, dtype=float), lowest, 1.0)
        tpr = np.clip(np.asarray(result.tpr, dtype=float), lowest, 1.0)
        ax.plot(fpr, tpr, label=f"{result.target} / {result.attack} (AUC {result.auc:.3f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lowest, 1.0)
    ax.set_ylim(lowest, 1.0)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title("Membership inference ROC")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)
    return out


# ----------------------------------------------------------------------------- validation


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


def _check_num_shadows(num_shadows: int) -> None:
    if isinstance(num_shadows, bool) or not isinstance(num_shadows, int) or num_shadows < 2:
        raise ConfigError(
            "privacy.audit_shadows must be an integer >= 2 (LiRA needs IN and OUT shadows "
            f"for every record), got {num_shadows!r}"
        )


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
    """Concatenate members then non-members; return ``(x, y, is_member)``."""
    pool_x = np.concatenate([np.asarray(members[0]), np.asarray(non_members[0])])
    pool_y = np.concatenate([np.asarray(members[1]), np.asarray(non_members[1])])
    is_member = np.zeros(len(pool_y), dtype=bool)
    is_member[: len(members[1])] = True
    return pool_x, pool_y, is_member
