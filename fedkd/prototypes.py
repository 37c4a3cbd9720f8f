"""Class prototypes (FedProto) and per-class soft predictions (FedHKD): compute, aggregate, train.

A client summarizes its private data per class ``c`` by the mean embedding ``p_c`` (the
vector fed to the classification head, ``forward_features(x)[1]["embedding"]``), the mean
softmax output ``s_c`` and the count ``n_c``; the server averages them per class, weighted
by the counts; clients then train with a pull toward the global statistics of each
example's class. No proxy data and no weights are involved.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedkd.models import FedKDModel
from fedkd.setup import TrainSettings
from fedkd.train import (
    as_float_tensor,
    as_label_tensor,
    check_hparams,
    check_settings,
    run_epochs,
    settings_optimizer,
)

logger = logging.getLogger(__name__)

# Floor for log(s) when a global soft prediction has an exact zero entry.
_LOG_FLOOR = 1e-12


def class_prototypes(
    model: FedKDModel,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class mean embedding, per-class mean softmax output, and per-class counts.

    For each class ``c`` with ``n_c = |{i : y_i = c}| > 0``::

        p_c = (1 / n_c) sum_{i : y_i = c} e(x_i)              (prototype, D values)
        s_c = (1 / n_c) sum_{i : y_i = c} softmax(f(x_i))     (soft prediction, C values)

    where ``e`` is the model's ``"embedding"`` feature and ``f`` its logits, both in eval
    mode without gradients. Classes without examples get zero rows and ``n_c = 0``.

    Parameters
    ----------
    model : FedKDModel
        The client's model; its train/eval mode is restored afterwards.
    x : np.ndarray
        Inputs ``(N, *input_shape)``.
    y : np.ndarray
        Integer labels ``(N,)`` in ``[0, num_classes)``.
    num_classes : int
        Number of classes ``C``.
    device : str or torch.device
        Where inference runs.
    batch_size : int
        Inference batch size (default 1024).

    Returns
    -------
    prototypes : np.ndarray
        float32 ``(C, D)``.
    soft : np.ndarray
        float32 ``(C, C)``; row ``c`` is the mean predicted distribution on class ``c``.
    counts : np.ndarray
        float32 ``(C,)``.
    """
    check_hparams("prototypes", batch_size=batch_size)
    labels = np.asarray(y)
    if len(x) != len(labels):
        raise ValueError(f"x and y lengths differ: {len(x)} vs {len(labels)}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    dev = torch.device(device)
    model.to(dev)
    xt = as_float_tensor(x, dev)
    yt = as_label_tensor(labels, dev)
    counts = torch.bincount(yt, minlength=num_classes).to(torch.float64)
    proto_sums: Tensor | None = None
    soft_sums = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=dev)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(labels), batch_size):
                logits, features = model.forward_features(xt[start : start + batch_size])
                embedding = features["embedding"].flatten(1).to(torch.float64)
                if proto_sums is None:
                    proto_sums = torch.zeros(
                        num_classes, embedding.shape[1], dtype=torch.float64, device=dev
                    )
                batch_labels = yt[start : start + batch_size]
                proto_sums.index_add_(0, batch_labels, embedding)
                soft_sums.index_add_(0, batch_labels, torch.softmax(logits.double(), dim=1))
            if proto_sums is None:  # no examples: ask the model for its embedding width
                _, features = model.forward_features(xt.new_zeros((1, *model.input_shape)))
                width = features["embedding"].flatten(1).shape[1]
                proto_sums = torch.zeros(num_classes, width, dtype=torch.float64, device=dev)
    finally:
        model.train(was_training)
    denominator = counts.clamp_min(1.0)[:, None]  # classes without examples: 0 / 1 = 0
    prototypes = (proto_sums / denominator).cpu().numpy().astype(np.float32)
    soft = (soft_sums / denominator).cpu().numpy().astype(np.float32)
    return prototypes, soft, counts.cpu().numpy().astype(np.float32)


def aggregate_prototypes(
    prototypes: np.ndarray | Sequence[np.ndarray],
    soft: np.ndarray | Sequence[np.ndarray],
    counts: np.ndarray | Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count-weighted mean per class over the clients that hold the class.

    With ``n_kc`` the count of class ``c`` at client ``k`` and ``N_c = sum_k n_kc``::

        P_c = sum_k n_kc p_kc / N_c        S_c = sum_k n_kc s_kc / N_c

    Clients without class ``c`` (``n_kc = 0``) do not contribute; classes nobody holds
    (``N_c = 0``) get zero rows.

    Parameters
    ----------
    prototypes : array-like
        ``(K, C, D)`` per-client prototypes.
    soft : array-like
        ``(K, C, C)`` per-client mean soft predictions.
    counts : array-like
        ``(K, C)`` per-client class counts (>= 0).

    Returns
    -------
    global_prototypes : np.ndarray
        float64 ``(C, D)``.
    global_soft : np.ndarray
        float64 ``(C, C)``.
    global_counts : np.ndarray
        float64 ``(C,)``, ``N_c``.

    Raises
    ------
    ValueError
        If the shapes disagree or a count is negative.
    """
    protos = np.asarray(prototypes, dtype=np.float64)
    probs = np.asarray(soft, dtype=np.float64)
    weights = np.asarray(counts, dtype=np.float64)
    if protos.ndim != 3 or weights.shape != protos.shape[:2]:
        raise ValueError(
            f"need prototypes (K, C, D) and counts (K, C); got {protos.shape} and {weights.shape}"
        )
    num_clients, num_classes = weights.shape
    if probs.shape != (num_clients, num_classes, num_classes):
        raise ValueError(
            f"soft must be {(num_clients, num_classes, num_classes)}, got {probs.shape}"
        )
    if (weights < 0).any():
        raise ValueError("counts must be >= 0")
    totals = weights.sum(axis=0)
    denominator = np.maximum(totals, 1.0)[:, None]  # classes nobody holds: 0 / 1 = 0
    global_prototypes = np.einsum("kc,kcd->cd", weights, protos) / denominator
    global_soft = np.einsum("kc,kcj->cj", weights, probs) / denominator
    return global_prototypes, global_soft, totals


def train_with_prototypes(
    model: FedKDModel,
    x: np.ndarray,
    y: np.ndarray,
    *,
    prototypes: np.ndarray,
    soft: np.ndarray,
    counts: np.ndarray,
    settings: TrainSettings,
    proto_weight: float,
    soft_weight: float = 0.0,
    temperature: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> float:
    """Train ``model`` in place with cross-entropy plus a pull toward global class statistics.

    For a mini-batch ``B`` with logits ``z_i``, embeddings ``e_i`` and labels ``y_i``, and
    ``M = {i in B : N_{y_i} > 0}`` the examples whose class has a global prototype::

        loss = (1/|B|) sum_{i in B} CE(z_i, y_i)
             + proto_weight * (1/|M|) sum_{i in M} (1/D) ||e_i - P_{y_i}||_2^2
             + soft_weight * T^2 * (1/|M|) sum_{i in M}
                   KL(softmax(log(S_{y_i}) / T) || softmax(z_i / T))

    The prototype term is the mean squared error over the ``D`` embedding dimensions,
    averaged over the examples of ``M`` (a term is 0 when ``M`` is empty): FedProto's
    ``nn.MSELoss()``, so ``proto_weight`` is the paper's ``lambda``. The soft term is
    FedHKD's per-class soft-prediction distillation; ``softmax(log(S_c) / T)`` is ``S_c``
    sharpened (T < 1) or softened (T > 1), and equals ``S_c`` at ``T = 1``.

    Parameters
    ----------
    model : FedKDModel
        The client's model (``forward_features`` gives the ``"embedding"``).
    x, y : np.ndarray
        Private training data ``(N, *input_shape)`` and integer labels ``(N,)``.
    prototypes : np.ndarray
        Global prototypes ``P`` ``(C, D)``.
    soft : np.ndarray
        Global per-class soft predictions ``S`` ``(C, C)`` (rows are distributions where
        ``N_c > 0``).
    counts : np.ndarray
        Global class counts ``N`` ``(C,)``; classes with ``N_c = 0`` are trained on CE only.
    settings : TrainSettings
        Epochs, batch size and optimizer (a client's ``setup.local`` for this round's epochs).
    proto_weight : float
        Weight of the prototype term (>= 0; FedProto's ``lambda``, see above).
    soft_weight : float
        Weight of the soft-prediction term (>= 0; default 0: pure FedProto).
    temperature : float
        Softening ``T`` of the soft term (> 0; default 1).
    seed, device
        As in :func:`fedkd.train.train_local` (same seeded shuffling).

    Returns
    -------
    float
        Example-weighted mean loss of the last epoch (each batch's loss before its step).

    Raises
    ------
    ValueError
        For shapes that do not match the model or data, or invalid weights/temperature.
    ConfigError
        For invalid training hyper-parameters (``client.<key>``).
    """
    check_settings(settings)
    for name, value in (("proto_weight", proto_weight), ("soft_weight", soft_weight)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    num_classes = model.num_classes
    global_counts = np.asarray(counts)
    global_soft = np.asarray(soft)
    global_prototypes = np.asarray(prototypes)
    if global_counts.shape != (num_classes,) or global_soft.shape != (num_classes, num_classes):
        raise ValueError(
            f"counts must be ({num_classes},) and soft ({num_classes}, {num_classes}); "
            f"got {global_counts.shape} and {global_soft.shape}"
        )
    if global_prototypes.ndim != 2 or global_prototypes.shape[0] != num_classes:
        raise ValueError(f"prototypes must be ({num_classes}, D), got {global_prototypes.shape}")
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"need matching, non-empty x and y; got {len(x)} and {len(y)}")

    dev = torch.device(device)
    model.to(dev)
    xt = as_float_tensor(x, dev)
    yt = as_label_tensor(y, dev)
    proto_table = as_float_tensor(global_prototypes, dev)
    has_target = torch.from_numpy(global_counts > 0).to(dev)
    log_soft = torch.log(as_float_tensor(global_soft, dev).clamp_min(_LOG_FLOOR))
    soft_table = torch.softmax(log_soft / temperature, dim=1)  # the per-class KL targets
    opt = settings_optimizer(settings, model.parameters())

    def batch_loss(idx: Tensor) -> Tensor:
        logits, features = model.forward_features(xt[idx])
        labels = yt[idx]
        loss = F.cross_entropy(logits, labels)
        mask = has_target[labels]
        matched = mask.sum().clamp_min(1)  # an empty M contributes 0
        if proto_weight > 0:
            embedding = features["embedding"].flatten(1)
            if embedding.shape[1] != proto_table.shape[1]:
                raise ValueError(
                    f"prototypes have width {proto_table.shape[1]}, the model's embedding "
                    f"{embedding.shape[1]}"
                )
            distance = (embedding - proto_table[labels]).pow(2).mean(dim=1)
            loss = loss + proto_weight * (distance * mask).sum() / matched
        if soft_weight > 0:
            log_q = F.log_softmax(logits / temperature, dim=1)
            kl = F.kl_div(log_q, soft_table[labels], reduction="none").sum(dim=1)
            loss = loss + soft_weight * temperature**2 * (kl * mask).sum() / matched
        return loss

    epoch_losses, steps = run_epochs(
        model,
        opt,
        num_examples=len(yt),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        seed=seed,
        device=dev,
        batch_loss=batch_loss,
    )
    logger.debug("train_with_prototypes: %d steps, last-epoch loss %.4f", steps, epoch_losses[-1])
    return epoch_losses[-1]
