"""Local supervised training, prediction and evaluation on numpy arrays."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedkd.errors import ConfigError
from fedkd.setup import TrainSettings

logger = logging.getLogger(__name__)

OPTIMIZER_NAMES: tuple[str, ...] = ("sgd", "adam")


@dataclass(frozen=True)
class TrainReport:
    """Result of :func:`train_local`.

    Attributes
    ----------
    loss : float
        Mean cross-entropy over the examples of the last epoch (training mode).
    num_examples : int
        Number of training examples (``len(x)``).
    steps : int
        Optimizer steps taken over all epochs.
    """

    loss: float
    num_examples: int
    steps: int


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    settings: TrainSettings | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    proximal_mu: float = 0.0,
    gradient_correction: Sequence[Tensor] | None = None,
    **hparams: Any,
) -> TrainReport:
    """Train ``model`` in place with cross-entropy on ``(x, y)`` (plus FedProx's proximal
    term when ``proximal_mu > 0``).

    YAML (keys named in errors): ``client: {epochs: 1, batch_size: 32, lr: 0.01,
    optimizer: sgd, momentum: 0.9, weight_decay: 0.0}``.

    Parameters
    ----------
    model : nn.Module
        Model returning logits; moved to ``device`` in place. Its train/eval mode is
        restored afterwards.
    x : np.ndarray
        Inputs ``(N, *input_shape)``, converted to float32.
    y : np.ndarray
        Integer labels ``(N,)``.
    settings : TrainSettings
        Epochs, batch size and optimizer (a run's ``setup.local``); SGD uses ``momentum``,
        Adam ignores it.
    seed : int
        Seeds the shuffling generator and (via a forked RNG) dropout; the global RNG state
        is left untouched.
    device : str or torch.device
        Device to train on.
    proximal_mu : float
        FedProx (Li et al., 2020): with ``mu > 0`` each batch loss gains
        ``mu / 2 * ||w - w_0||^2`` over the parameters, ``w_0`` their values at the call
        (the global weights); 0 (default) trains exactly as without the term.
    gradient_correction : sequence of Tensor, optional
        SCAFFOLD (Karimireddy et al., 2020): one tensor per trainable parameter (in
        ``model.parameters()`` order, same shapes), added to that parameter's mini-batch
        gradient before every optimizer step (``g(y) + (c - c_i)``); with momentum or
        weight decay the optimizer then treats the corrected gradient as the gradient.
        None (default) registers nothing.
    **hparams
        :class:`TrainSettings` fields one by one (``epochs=5, batch_size=32, lr=0.05``):
        they replace those of ``settings``, or make the settings when none are given.

    Returns
    -------
    TrainReport

    Raises
    ------
    ValueError
        If ``x`` is empty or ``x``/``y`` lengths differ.
    ConfigError
        For invalid hyper-parameters (``client.<key>``).
    """
    settings = as_settings(settings, hparams)
    check_settings(settings)
    n = _check_xy(x, y)
    dev = torch.device(device)
    model.to(dev)
    xt = as_float_tensor(x, dev)
    yt = as_label_tensor(y, dev)
    if not (math.isfinite(proximal_mu) and proximal_mu >= 0):
        raise ValueError(f"proximal_mu must be a finite number >= 0, got {proximal_mu}")
    opt = settings_optimizer(settings, model.parameters())

    def cross_entropy(idx: Tensor) -> Tensor:
        return F.cross_entropy(model(xt[idx]), yt[idx])

    batch_loss = (
        _with_proximal_term(cross_entropy, model, proximal_mu) if proximal_mu > 0 else cross_entropy
    )
    with _corrected_gradients(model, gradient_correction, dev):
        epoch_losses, steps = run_epochs(
            model,
            opt,
            num_examples=n,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            seed=seed,
            device=dev,
            batch_loss=batch_loss,
        )
    last_loss = epoch_losses[-1] if epoch_losses else math.nan
    logger.debug("train_local: %d examples, %d steps, last-epoch loss %.4f", n, steps, last_loss)
    return TrainReport(loss=last_loss, num_examples=n, steps=steps)


def _with_proximal_term(
    batch_loss: Callable[[Tensor], Tensor], model: nn.Module, mu: float
) -> Callable[[Tensor], Tensor]:
    """``batch_loss`` plus ``mu / 2 * ||w - w_0||^2`` (Li et al. 2020, FedProx), ``w_0`` the
    parameters now (the global weights the client starts from)."""
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params]

    def proximal_loss(idx: Tensor) -> Tensor:
        drift = sum((p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True))
        return batch_loss(idx) + 0.5 * mu * drift

    return proximal_loss


@contextlib.contextmanager
def _corrected_gradients(
    model: nn.Module, correction: Sequence[Tensor] | None, device: torch.device
) -> Iterator[None]:
    """Within the block, every trainable parameter's gradient gains its ``correction``
    tensor as backward computes it (a tensor hook, removed on exit); None: nothing."""
    if correction is None:
        yield
        return
    params = [p for p in model.parameters() if p.requires_grad]
    if len(correction) != len(params) or any(
        tuple(c.shape) != tuple(p.shape) for c, p in zip(correction, params, strict=False)
    ):
        raise ValueError("gradient_correction must hold one tensor per trainable parameter")
    handles = []
    for param, term in zip(params, correction, strict=True):
        term = term.detach().to(device=device, dtype=param.dtype)
        handles.append(param.register_hook(lambda grad, term=term: grad + term))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    num_examples: int,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    batch_loss: Callable[[Tensor], Tensor],
    after_epoch: Callable[[int], bool] | None = None,
    before_epoch: Callable[[int], None] | None = None,
) -> tuple[list[float], int]:
    """Seeded mini-batch epochs shared by local training and distillation.

    ``batch_loss(indices)`` computes the loss of one mini-batch (indices into tensors the
    caller already placed on ``device``). Returns the example-weighted mean loss of each
    epoch and the number of optimizer steps; the model's train/eval mode is restored.
    ``after_epoch(epoch_index)`` runs after every epoch and stops training by returning True;
    ``before_epoch(epoch_index)`` runs before every epoch (schedules).
    """
    generator = torch.Generator().manual_seed(seed)
    epoch_losses: list[float] = []
    steps = 0
    was_training = model.training
    model.train()
    try:
        with seeded_rng(seed, device):
            for epoch in range(epochs):
                if before_epoch is not None:
                    before_epoch(epoch)
                total = torch.zeros((), device=device)
                for idx in minibatches(
                    num_examples, batch_size, generator=generator, device=device
                ):
                    optimizer.zero_grad(set_to_none=True)
                    loss = batch_loss(idx)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach() * idx.numel()
                    steps += 1
                epoch_losses.append(float(total) / num_examples)
                if after_epoch is not None and after_epoch(len(epoch_losses) - 1):
                    break
    finally:
        model.train(was_training)
    return epoch_losses, steps


def predict_probs(
    model: nn.Module,
    x: np.ndarray,
    *,
    batch_size: int = 2048,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Return softmax probabilities of ``model`` on ``x`` as float32 ``(N, num_classes)``.

    Runs in eval mode under :func:`torch.inference_mode`; the model's previous train/eval
    mode is restored.
    """
    check_hparams("predict", batch_size=batch_size)
    dev = torch.device(device)
    model.to(dev)
    logits = _logits(model, as_float_tensor(x, dev), batch_size=batch_size)
    with torch.inference_mode():
        probs = torch.softmax(logits.float(), dim=1)
    return probs.cpu().numpy().astype(np.float32, copy=False)


def predict_logits(
    model: nn.Module,
    x: np.ndarray,
    *,
    batch_size: int = 2048,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Return the raw logits of ``model`` on ``x`` as float32 ``(N, num_classes)`` (eval mode)."""
    check_hparams("predict", batch_size=batch_size)
    dev = torch.device(device)
    model.to(dev)
    logits = _logits(model, as_float_tensor(x, dev), batch_size=batch_size)
    return logits.float().cpu().numpy().astype(np.float32, copy=False)


def evaluate(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 2048,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Return ``(mean cross-entropy, accuracy)`` of ``model`` on ``(x, y)`` in eval mode.

    Raises
    ------
    ValueError
        If ``x`` is empty or ``x``/``y`` lengths differ.
    """
    check_hparams("evaluate", batch_size=batch_size)
    n = _check_xy(x, y)
    dev = torch.device(device)
    model.to(dev)
    yt = as_label_tensor(y, dev)
    logits = _logits(model, as_float_tensor(x, dev), batch_size=batch_size)
    with torch.inference_mode():
        loss = F.cross_entropy(logits.float(), yt, reduction="sum")
        correct = (logits.argmax(dim=1) == yt).sum()
    return float(loss) / n, float(correct) / n


# ----------------------------------------------------------------------------- helpers
# Shared with fedkd.distill.loop.


def as_float_tensor(x: np.ndarray, device: torch.device) -> Tensor:
    """Convert ``x`` to a float32 tensor on ``device`` (zero-copy on CPU when possible)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)


def as_label_tensor(y: np.ndarray, device: torch.device) -> Tensor:
    """Convert integer labels ``y`` to an int64 tensor on ``device``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64)).to(device)


def minibatches(
    n: int, batch_size: int, *, generator: torch.Generator, device: torch.device
) -> Iterator[Tensor]:
    """Yield index tensors of a fresh permutation of ``range(n)`` drawn from ``generator``."""
    perm = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Fork the global torch RNG (CPU, plus ``device`` if CUDA) and seed it with ``seed``.

    Makes dropout deterministic without changing the caller's RNG state.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def as_settings(settings: TrainSettings | None, hparams: dict[str, Any]) -> TrainSettings:
    """``settings`` with the loose ``hparams`` applied (the settings themselves when none are
    given); ``TypeError`` for an unknown field, or a missing one when there are no settings."""
    if settings is None:
        return TrainSettings(**hparams)
    return settings.train_settings(**hparams) if hparams else settings


def check_settings(settings: TrainSettings, prefix: str = "client") -> None:
    """Raise ConfigError naming ``<prefix>.<key>`` for invalid :class:`TrainSettings`."""
    check_hparams(
        prefix,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
    )
    momentum = settings.momentum
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or momentum < 0:
        raise ConfigError(f"{prefix}.momentum must be a number >= 0, got {momentum!r}")


def settings_optimizer(
    settings: TrainSettings, params: Iterable[nn.Parameter], *, key: str = "client.optimizer"
) -> torch.optim.Optimizer:
    """The optimizer ``settings`` name over ``params`` (:func:`make_optimizer`)."""
    return make_optimizer(
        settings.optimizer,
        params,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        key=key,
    )


def make_optimizer(
    name: str,
    params: Iterable[nn.Parameter],
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    key: str = "client.optimizer",
) -> torch.optim.Optimizer:
    """Build ``"sgd"`` (with ``momentum``) or ``"adam"``; else ConfigError naming ``key``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"{key} must be one of {list(OPTIMIZER_NAMES)}, got {name!r}")


def check_hparams(
    prefix: str,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
) -> None:
    """Raise ConfigError naming ``<prefix>.<key>`` for invalid training hyper-parameters."""
    for key, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"{prefix}.{key} must be a positive integer, got {value!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"{prefix}.lr must be a finite number > 0, got {lr!r}")
    if weight_decay is not None and not (
        isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0
    ):
        raise ConfigError(
            f"{prefix}.weight_decay must be a finite number >= 0, got {weight_decay!r}"
        )


def _check_xy(x: np.ndarray, y: np.ndarray) -> int:
    n = len(x)
    if n == 0:
        raise ValueError("x is empty: need at least one example")
    if len(y) != n:
        raise ValueError(f"x and y lengths differ: {n} vs {len(y)}")
    return n


def _logits(model: nn.Module, xt: Tensor, *, batch_size: int) -> Tensor:
    """Eval-mode logits of ``model`` on ``xt`` in batches, restoring the previous mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if xt.shape[0] <= batch_size:
                return model(xt)
            return torch.cat(
                [model(xt[i : i + batch_size]) for i in range(0, xt.shape[0], batch_size)]
            )
    finally:
        model.train(was_training)
