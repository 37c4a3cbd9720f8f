"""Online LiRA (Carlini et al. 2022): shadow models and per-record Gaussian likelihood ratios."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedkd.errors import ConfigError
from fedkd.privacy.audit_metrics import (
    ArrayPair,
    AttackResult,
    _check_seed,
    _labels,
    _pool,
    _result,
)
from fedkd.train import predict_logits

logger = logging.getLogger(__name__)

# LiRA's Gaussians get at least this standard deviation (in log-odds units): an example
# whose shadow statistics barely vary would otherwise yield near-infinite likelihood ratios.
_MIN_STD = 1e-2

ModelFactory = Callable[[int], nn.Module]
TrainFn = Callable[[nn.Module, np.ndarray, np.ndarray, int], None]


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
    model, members, non_members, target
        As for :func:`fedkd.privacy.audit.loss_threshold_attack`.
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


def _check_num_shadows(num_shadows: int) -> None:
    if isinstance(num_shadows, bool) or not isinstance(num_shadows, int) or num_shadows < 2:
        raise ConfigError(
            "privacy.audit_shadows must be an integer >= 2 (LiRA needs IN and OUT shadows "
            f"for every record), got {num_shadows!r}"
        )
