"""Many clients' local training as one batched computation (``backend=batched``).

:func:`train_batched` trains one model per client, all of the same architecture, with
:mod:`torch.func`: the clients' parameters are stacked along a leading client axis,
``vmap`` runs one mini-batch step of every client at once (``functional_call`` + ``grad``),
and the optimizer update is applied to the stacked tensors. It computes what
:func:`fedkd.train.train_local` computes client by client, to floating-point tolerance:

- each client's batch order is its own ``torch.randperm`` from a generator seeded with its
  seed, drawn per epoch exactly as :func:`fedkd.train.minibatches` draws it;
- ragged data: every client's records are padded to the largest client's count and every
  batch to ``batch_size``; padded rows carry weight 0 and a batch's loss is the mean over
  its real rows, so a short last batch weighs as it does sequentially;
- a client with fewer batches than the largest sits out the steps it does not have: its
  parameters and optimizer state stay as they are (the step is masked, not zero-graded);
- SGD (momentum, dampening 0, weight decay as L2 in the gradient) and Adam follow
  :mod:`torch.optim`'s single-tensor updates, with per-client step counts for Adam's bias
  correction; FedProx's proximal term is supported.

What cannot be reproduced this way is refused by :func:`batching_refusal` (randomness in
the forward pass, running statistics): the caller then trains sequentially.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fedkd.setup import TrainSettings
from fedkd.train import TrainReport, as_float_tensor, as_label_tensor, check_settings

#: Adam's defaults in :class:`torch.optim.Adam` (fedkd never changes them).
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


@dataclass
class BatchedJob:
    """One client's share of a batched training call."""

    state: dict[str, Tensor]
    """The client's starting ``state_dict`` (parameters and buffers)."""
    x: np.ndarray
    y: np.ndarray
    seed: int
    proximal_mu: float = 0.0


def batching_refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot be trained batched (None when it can): modules whose training
    forward pass draws random numbers or updates running statistics would not reproduce
    the sequential path's results."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return f"the model has dropout ({name or 'model'}: p={module.p})"
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            return f"the model tracks running statistics ({name}: {type(module).__name__})"
    if any(not p.requires_grad for p in model.parameters()):
        return "the model has frozen parameters"
    return None


def train_batched(
    model: nn.Module,
    jobs: Sequence[BatchedJob],
    *,
    settings: TrainSettings,
    device: str | torch.device = "cpu",
) -> list[tuple[dict[str, Tensor], TrainReport]]:
    """Train one copy of ``model`` per job, all in one batched computation.

    ``model`` only supplies the architecture (its own weights are neither used nor
    changed). Returns, per job and in order, the trained ``state_dict`` and the
    :class:`TrainReport` :func:`fedkd.train.train_local` would have returned.

    Raises
    ------
    ValueError
        If a job has no records or ``x``/``y`` lengths differ, or the model cannot be
        batched (:func:`batching_refusal`).
    ConfigError
        For invalid hyper-parameters (``client.<key>``).
    """
    check_settings(settings)
    refusal = batching_refusal(model)
    if refusal is not None:
        raise ValueError(f"cannot train batched: {refusal}")
    if not jobs:
        return []
    dev = torch.device(device)
    model.to(dev)
    sizes = [len(job.y) for job in jobs]
    for job, n in zip(jobs, sizes, strict=True):
        if n == 0 or len(job.x) != n:
            raise ValueError(f"a client's data is empty or ragged: {len(job.x)} inputs, {n} labels")
    param_names = [name for name, _ in model.named_parameters()]
    buffer_names = [name for name, _ in model.named_buffers()]
    params = {n: torch.stack([job.state[n] for job in jobs]).to(dev) for n in param_names}
    buffers = {n: torch.stack([job.state[n] for job in jobs]).to(dev) for n in buffer_names}
    x, y = _padded_data(jobs, dev)
    mu = torch.tensor([job.proximal_mu for job in jobs], dtype=torch.float32, device=dev)
    anchors = {n: p.clone() for n, p in params.items()} if bool((mu > 0).any()) else None
    step = _optimizer_step(settings, params)
    loss_and_grad = vmap(
        grad(_client_loss(model, with_anchor=anchors is not None), has_aux=True),
        randomness="same",
    )
    generators = [torch.Generator().manual_seed(job.seed) for job in jobs]
    rows = torch.arange(len(jobs), device=dev)[:, None]
    steps = torch.zeros(len(jobs), dtype=torch.long, device=dev)
    totals = torch.zeros(len(jobs), device=dev)
    was_training = model.training
    model.train()
    try:
        for _ in range(settings.epochs):
            order, weight = _epoch_batches(sizes, settings.batch_size, generators, dev)
            totals.zero_()
            for s in range(order.shape[1]):
                idx, w = order[:, s], weight[:, s]
                count = w.sum(dim=1)
                active = count > 0
                args = [params, buffers, x[rows, idx], y[rows, idx], w]
                if anchors is not None:
                    args += [anchors, mu]
                grads, loss = loss_and_grad(*args)
                steps += active.long()
                step(params, grads, active, steps)
                totals += torch.where(active, loss.detach() * count, 0.0)
    finally:
        model.train(was_training)
    last = (totals / torch.tensor(sizes, dtype=totals.dtype, device=dev)).tolist()
    per_epoch = [math.ceil(n / settings.batch_size) for n in sizes]
    results = []
    for c, n in enumerate(sizes):
        state = {name: params[name][c] for name in param_names}
        state.update({name: buffers[name][c] for name in buffer_names})
        loss = last[c] if settings.epochs > 0 else math.nan
        results.append((state, TrainReport(loss, n, per_epoch[c] * settings.epochs)))
    return results


def predict_batched(
    model: nn.Module,
    states: Sequence[dict[str, Tensor]],
    x: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    max_rows: int = 2**15,
) -> list[np.ndarray]:
    """Every state's softmax on the same inputs ``x``, as :func:`fedkd.train.predict_probs`
    returns it for one model (float32 ``(N, classes)``, eval mode), computed for many
    clients at once; at most ``max_rows`` input rows (clients times ``len(x)``) per call."""
    dev = torch.device(device)
    model.to(dev)
    inputs = as_float_tensor(x, dev)
    param_names = [name for name, _ in model.named_parameters()]
    buffer_names = [name for name, _ in model.named_buffers()]
    forward = vmap(lambda p, b: functional_call(model, (p, b), (inputs,)), randomness="same")
    per_call = max(1, max_rows // max(1, len(x)))
    out: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(states), per_call):
                chunk = states[start : start + per_call]
                params = {n: torch.stack([s[n] for s in chunk]).to(dev) for n in param_names}
                buffers = {n: torch.stack([s[n] for s in chunk]).to(dev) for n in buffer_names}
                probs = torch.softmax(forward(params, buffers).float(), dim=-1).cpu().numpy()
                out.extend(np.ascontiguousarray(p, dtype=np.float32) for p in probs)
    finally:
        model.train(was_training)
    return out


def _padded_data(jobs: Sequence[BatchedJob], device: torch.device) -> tuple[Tensor, Tensor]:
    """Every client's records in one tensor ``(clients, max records, *input)``, zero-padded."""
    longest = max(len(job.y) for job in jobs)
    first = as_float_tensor(jobs[0].x, device)
    x = torch.zeros((len(jobs), longest, *first.shape[1:]), dtype=first.dtype, device=device)
    y = torch.zeros((len(jobs), longest), dtype=torch.long, device=device)
    for c, job in enumerate(jobs):
        n = len(job.y)
        x[c, :n] = as_float_tensor(job.x, device)
        y[c, :n] = as_label_tensor(job.y, device)
    return x, y


def _epoch_batches(
    sizes: Sequence[int],
    batch_size: int,
    generators: Sequence[torch.Generator],
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """One epoch's batches of every client: indices ``(clients, steps, batch_size)`` into
    its records and the rows' weights (1 real, 0 padding). Each client's permutation is
    drawn from its own generator as :func:`fedkd.train.minibatches` draws it."""
    most = max(math.ceil(n / batch_size) for n in sizes)
    order = torch.zeros((len(sizes), most * batch_size), dtype=torch.long)
    weight = torch.zeros((len(sizes), most * batch_size))
    for c, (n, generator) in enumerate(zip(sizes, generators, strict=True)):
        order[c, :n] = torch.randperm(n, generator=generator)
        weight[c, :n] = 1.0
    shape = (len(sizes), most, batch_size)
    return order.view(shape).to(device), weight.view(shape).to(device)


def _client_loss(model: nn.Module, *, with_anchor: bool) -> Callable[..., tuple[Tensor, Tensor]]:
    """One client's mini-batch loss as a function of its parameters (for ``grad``): the
    mean cross-entropy over the batch's real rows, plus ``mu / 2 * ||w - w_0||^2``."""

    def loss(
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
        weight: Tensor,
        anchors: dict[str, Tensor] | None = None,
        mu: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        logits = functional_call(model, (params, buffers), (x,))
        per_row = F.cross_entropy(logits, y, reduction="none")
        value = (per_row * weight).sum() / weight.sum().clamp(min=1.0)
        if anchors is not None and mu is not None:
            drift = sum((params[n] - anchors[n]).pow(2).sum() for n in params)
            value = value + 0.5 * mu * drift
        return value, value.detach()

    return loss if with_anchor else lambda p, b, x, y, w: loss(p, b, x, y, w)


def _optimizer_step(
    settings: TrainSettings, params: dict[str, Tensor]
) -> Callable[[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor], None]:
    """The optimizer of ``settings`` over stacked parameters: ``step(params, grads, active,
    steps)`` updates the active clients' rows in place (``steps``: each client's step count
    including this one)."""
    lr, wd = settings.lr, settings.weight_decay
    state = {n: torch.zeros_like(p) for n, p in params.items()}
    if settings.optimizer == "adam":
        second = {n: torch.zeros_like(p) for n, p in params.items()}
        beta1, beta2 = _ADAM_BETAS

        def adam(p: dict[str, Tensor], g: dict[str, Tensor], active: Tensor, steps: Tensor) -> None:
            t = steps.to(torch.float64).clamp(min=1)
            step_size = (lr / (1 - beta1**t)).to(torch.float32)
            correction = ((1 - beta2**t) ** 0.5).to(torch.float32)
            for n, value in p.items():
                gradient = g[n] + wd * value if wd else g[n]
                mask = _expand(active, value)
                m = torch.where(mask, torch.lerp(state[n], gradient, 1 - beta1), state[n])
                v = torch.where(
                    mask, second[n] * beta2 + (1 - beta2) * gradient * gradient, second[n]
                )
                state[n], second[n] = m, v
                denom = v.sqrt() / _expand(correction, value) + _ADAM_EPS
                update = _expand(step_size, value) * m / denom
                p[n] = torch.where(mask, value - update, value)

        return adam
    momentum = settings.momentum

    def sgd(p: dict[str, Tensor], g: dict[str, Tensor], active: Tensor, steps: Tensor) -> None:
        first = steps == 1
        for n, value in p.items():
            gradient = g[n] + wd * value if wd else g[n]
            mask = _expand(active, value)
            if momentum:
                buffer = torch.where(
                    _expand(first, value), gradient, state[n] * momentum + gradient
                )
                state[n] = torch.where(mask, buffer, state[n])
                gradient = state[n]
            p[n] = torch.where(mask, value - lr * gradient, value)

    return sgd


def _expand(per_client: Tensor, like: Tensor) -> Tensor:
    """A ``(clients,)`` tensor shaped to broadcast over ``like``'s ``(clients, ...)``."""
    return per_client.view(-1, *([1] * (like.dim() - 1)))
