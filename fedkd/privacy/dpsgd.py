"""DP-SGD local training with Opacus, with a privacy accountant that persists across rounds.

A client trains with Opacus's DP-SGD (per-example clipping, Gaussian noise, Poisson-sampled
batches) and accounts with Opacus's RDP accountant. One federated client runs many rounds,
each a separate :func:`train_dpsgd` call; a fresh ``PrivacyEngine`` per round would start
from zero and under-report epsilon, so the accountant history of every call is returned and
passed back into the next one (and the server can predict it with :func:`dpsgd_schedule`).

Randomness: the Gaussian noise, the Poisson sampling of batches and dropout each come from
a ``torch.Generator`` derived from one root seed. With ``noise_seed=None`` the root is drawn
from :mod:`secrets` (a cryptographically strong source); an integer ``noise_seed`` makes the
run reproducible, which is meant for research reruns only: a known seed lets anyone
regenerate the noise and subtract it, so reproducible seeds are unsafe for real deployments.
Even with a secret seed, noise comes from torch's Mersenne Twister in Opacus's non-secure
mode (``secure_mode=False``), which Opacus itself recommends only for experimentation.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import secrets
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedkd.errors import ConfigError
from fedkd.setup import TrainSettings
from fedkd.train import (
    as_float_tensor,
    as_label_tensor,
    check_hparams,
    check_settings,
    seeded_rng,
    settings_optimizer,
)

logger = logging.getLogger(__name__)

HistoryEntry = tuple[float, float, int]
"""One Opacus RDP accountant entry: ``(noise_multiplier, sample_rate, steps)``."""

# Harmless in our setting: we ask for secure_mode=False on purpose (and say so in the module
# docstring), and torch warns on every backward through the first layer because the inputs
# do not require gradients, which Opacus's per-example hooks do not need.
_QUIET_WARNINGS: tuple[str, ...] = (
    r"Secure RNG turned off",
    r"Full backward hook is firing",
)


@dataclass(frozen=True)
class DPSGDReport:
    """Result of :func:`train_dpsgd`.

    Attributes
    ----------
    loss : float
        Mean cross-entropy over the examples drawn in the last epoch's Poisson batches
        (training mode); ``nan`` if every batch of that epoch was empty.
    epsilon : float
        Epsilon of this client's accountant after this call, at ``delta``.
    history : list of (float, float, int)
        The whole persisted Opacus RDP accountant history
        ``(noise_multiplier, sample_rate, steps)``, including this call; pass it as
        ``history`` to the next call.
    steps : int
        Optimizer steps (noised updates) taken in this call.
    sample_rate : float
        Sampling rate the accountant charges per step (see :func:`dpsgd_schedule`).
    """

    loss: float
    epsilon: float
    history: list[HistoryEntry]
    steps: int
    sample_rate: float


def dpsgd_schedule(num_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """Return ``(sample_rate, steps)`` exactly as :func:`train_dpsgd` (Opacus) will run them.

    Opacus's ``make_private`` replaces a ``DataLoader`` of ``num_examples`` and
    ``batch_size`` (``k = ceil(num_examples / batch_size)`` batches) by a Poisson
    ``DPDataLoader`` that includes each example with probability ``1 / k`` and runs
    ``int(1 / (1 / k))`` batches per epoch, then accounts every step at
    ``1 / len(DPDataLoader)``. Floating point makes ``int(1 / (1 / k))`` equal ``k - 1`` for
    some ``k`` (93, 99, 105, ...): Opacus then runs ``k - 1`` steps and accounts them at
    ``1 / (k - 1)``, slightly above the true rate ``1 / k`` (conservative). This mirrors
    Opacus exactly, so the server can account for a client in advance and predict the
    history entry the client will record.

    Parameters
    ----------
    num_examples : int
        Number of training examples of the client (>= 1).
    batch_size : int
        Configured batch size (the expected Poisson batch is about this size).
    epochs : int
        Number of passes.

    Returns
    -------
    tuple of (float, int)
        Accounted sample rate and total number of steps over all epochs.

    Raises
    ------
    ValueError
        If ``num_examples`` < 1.
    ConfigError
        For an invalid ``client.batch_size`` or ``client.epochs``.
    """
    check_hparams("client", epochs=epochs, batch_size=batch_size)
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
    poisson_rate = 1 / math.ceil(num_examples / batch_size)  # DPDataLoader's sampling
    steps_per_epoch = int(1 / poisson_rate)  # UniformWithReplacementSampler's own formula
    return 1 / steps_per_epoch, steps_per_epoch * epochs


def train_dpsgd(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    settings: TrainSettings,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    history: Sequence[HistoryEntry] = (),
    noise_seed: int | None = None,
    device: str | torch.device = "cpu",
) -> DPSGDReport:
    """Train ``model`` with DP-SGD on ``(x, y)``, continuing the accountant ``history``.

    Opacus wraps a deep copy of ``model`` (``PrivacyEngine(accountant="rdp")``,
    ``make_private`` with Poisson sampling and flat clipping); the trained weights are then
    copied into ``model`` with ``load_state_dict``. ``model`` itself never carries Opacus
    hooks, wrappers or ``grad_sample`` attributes, so cached models can be shared, and it
    stays on its device in its train/eval mode. Every step, empty Poisson batches included,
    adds noise and is accounted, so the recorded steps always equal :func:`dpsgd_schedule`.

    YAML (keys named in errors): ``client: {epochs, batch_size, lr, optimizer, momentum,
    weight_decay}`` and ``privacy: {noise_multiplier, max_grad_norm, delta, noise_seed}``.

    Parameters
    ----------
    model : nn.Module
        Model returning logits; must be Opacus-compatible (no BatchNorm).
    x : np.ndarray
        Inputs ``(N, *input_shape)``, converted to float32.
    y : np.ndarray
        Integer labels ``(N,)``.
    settings : TrainSettings
        Passes, configured batch size (see :func:`dpsgd_schedule`) and optimizer, which
        Opacus's ``DPOptimizer`` wraps (SGD uses ``momentum``); a client's ``setup.local``
        for this round's epochs.
    noise_multiplier : float
        Noise standard deviation over ``max_grad_norm`` (> 0).
    max_grad_norm : float
        Per-example L2 clipping bound (> 0).
    delta : float
        Target delta in ``(0, 1)`` for the reported epsilon.
    history : sequence of (float, float, int)
        This client's accountant history from its previous call (``DPSGDReport.history``);
        empty for the first round.
    noise_seed : int or None
        None (deployments) seeds the generators from :mod:`secrets`; an integer >= 0 makes
        noise, batch sampling and dropout reproducible (research only, unsafe in deployment).
    device : str or torch.device
        Device to train on.

    Returns
    -------
    DPSGDReport

    Raises
    ------
    ValueError
        If ``x`` is empty, ``x``/``y`` lengths differ, or ``history`` is malformed.
    ConfigError
        For invalid hyper-parameters (``client.<key>``, ``privacy.<key>``) or a model
        that Opacus cannot train privately.
    """
    check_settings(settings)
    _check_privacy(noise_multiplier, max_grad_norm, delta, noise_seed)
    restored_history = _restore_history(history)
    num_examples = len(x)
    if num_examples == 0:
        raise ValueError("x is empty: need at least one example")
    if len(y) != num_examples:
        raise ValueError(f"x and y lengths differ: {num_examples} vs {len(y)}")

    dev = torch.device(device)
    noise_gen, sampling_gen, dropout_seed = _generators(noise_seed, dev)
    private_copy = copy.deepcopy(model).to(dev).train()
    _check_opacus_compatible(private_copy)
    cpu = torch.device("cpu")
    dataset = TensorDataset(as_float_tensor(x, cpu), as_label_tensor(y, cpu))
    base_optimizer = settings_optimizer(
        settings, [p for p in private_copy.parameters() if p.requires_grad]
    )

    with _quiet_opacus_warnings():
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        engine.accountant.history = restored_history
        # make_private builds the Poisson DPDataLoader with `secure_rng` (None outside
        # secure mode), so it falls back to this loader's generator: passing ours here is
        # what keeps batch sampling off the global RNG. `noise_generator` only drives noise.
        private_module, dp_optimizer, poisson_loader = engine.make_private(
            module=private_copy,
            optimizer=base_optimizer,
            data_loader=DataLoader(
                dataset, batch_size=settings.batch_size, shuffle=False, generator=sampling_gen
            ),
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=float(max_grad_norm),
            poisson_sampling=True,
            noise_generator=noise_gen,
        )
        # Opacus truncates int(N * sample_rate), which is 0 for e.g. N=49, batch_size=1 and
        # would divide the noised gradient by zero; the scale is post-processing, not privacy.
        dp_optimizer.expected_batch_size = max(dp_optimizer.expected_batch_size, 1)
        try:
            with seeded_rng(dropout_seed, dev):
                last_loss, steps = _private_epochs(
                    private_module, dp_optimizer, poisson_loader, epochs=settings.epochs, device=dev
                )
            epsilon = float(engine.accountant.get_epsilon(delta=delta))
        finally:
            trained = private_module.to_standard_module()  # removes hooks and grad_sample
    model.load_state_dict(trained.state_dict())
    new_history = [_as_entry(entry) for entry in engine.accountant.history]
    sample_rate = 1 / len(poisson_loader)  # what make_private gave the accountant
    logger.debug(
        "train_dpsgd: %d examples, %d steps at q=%.4g, sigma=%s, epsilon=%.4g (delta=%s)",
        num_examples,
        steps,
        sample_rate,
        noise_multiplier,
        epsilon,
        delta,
    )
    return DPSGDReport(
        loss=last_loss,
        epsilon=epsilon,
        history=new_history,
        steps=steps,
        sample_rate=sample_rate,
    )


def opacus_epsilon(history: Sequence[HistoryEntry], delta: float) -> float:
    """Epsilon of an accountant ``history`` at ``delta`` through Opacus's ``RDPAccountant``.

    Gives the same value :func:`train_dpsgd` reports; 0.0 for an empty history.

    Raises
    ------
    ValueError
        If ``history`` is malformed.
    ConfigError
        If ``delta`` is not in ``(0, 1)`` (``privacy.delta``).
    """
    _check_delta(delta)
    accountant = RDPAccountant()
    accountant.history = _restore_history(history)
    return float(accountant.get_epsilon(delta=delta))


# ----------------------------------------------------------------------------- helpers


def _private_epochs(
    module: nn.Module,
    dp_optimizer: torch.optim.Optimizer,
    poisson_loader: DataLoader,
    *,
    epochs: int,
    device: torch.device,
) -> tuple[float, int]:
    """Run DP-SGD epochs; return the last epoch's mean loss and the number of steps."""
    steps = 0
    last_loss = math.nan
    for _ in range(epochs):
        loss_sum = torch.zeros((), device=device)
        drawn = 0
        for xb, yb in poisson_loader:
            xb, yb = xb.to(device), yb.to(device)
            dp_optimizer.zero_grad(set_to_none=True)
            # Sum over max(|B|, 1) equals the mean on non-empty batches and is 0, not nan,
            # on an empty one; the step must still run so noise and accounting happen.
            batch_loss_sum = F.cross_entropy(module(xb), yb, reduction="sum")
            (batch_loss_sum / max(len(yb), 1)).backward()
            dp_optimizer.step()
            steps += 1
            loss_sum += batch_loss_sum.detach()
            drawn += len(yb)
        last_loss = float(loss_sum) / drawn if drawn else math.nan
    return last_loss, steps


def _generators(
    noise_seed: int | None, device: torch.device
) -> tuple[torch.Generator, torch.Generator, int]:
    """Noise generator (on ``device``), CPU sampling generator, and a dropout seed."""
    root = secrets.randbits(63) if noise_seed is None else noise_seed
    noise_state, sampling_state, dropout_state = (
        int(s) for s in np.random.SeedSequence(root).generate_state(3, dtype=np.uint64)
    )
    noise_gen = torch.Generator(device=device).manual_seed(noise_state)
    sampling_gen = torch.Generator().manual_seed(sampling_state)
    return noise_gen, sampling_gen, dropout_state % 2**63


def _check_privacy(
    noise_multiplier: float, max_grad_norm: float, delta: float, noise_seed: int | None
) -> None:
    if not (_is_number(noise_multiplier) and math.isfinite(noise_multiplier)) or not (
        noise_multiplier > 0
    ):
        raise ConfigError(
            f"privacy.noise_multiplier must be > 0 and finite, got {noise_multiplier!r}"
        )
    if not (_is_number(max_grad_norm) and math.isfinite(max_grad_norm)) or not (max_grad_norm > 0):
        raise ConfigError(f"privacy.max_grad_norm must be > 0 and finite, got {max_grad_norm!r}")
    _check_delta(delta)
    if noise_seed is not None and (
        isinstance(noise_seed, bool) or not isinstance(noise_seed, int) or noise_seed < 0
    ):
        raise ConfigError(f"privacy.noise_seed must be null or an integer >= 0, got {noise_seed!r}")


def _check_delta(delta: float) -> None:
    if not (_is_number(delta) and 0 < delta < 1):
        raise ConfigError(f"privacy.delta must be in (0, 1), got {delta!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_opacus_compatible(module: nn.Module) -> None:
    """Raise ConfigError with Opacus's reasons if DP-SGD cannot train ``module``."""
    errors = ModuleValidator.validate(module, strict=False)
    if errors:
        reasons = "; ".join(str(e) for e in errors)
        raise ConfigError(
            f"model is not compatible with DP-SGD (privacy): {reasons}. Hint: use a model "
            "without BatchNorm (fedkd's mlp and cnn have none), or replace BatchNorm by "
            "GroupNorm (opacus.validators.ModuleValidator.fix)."
        )


def _restore_history(history: Sequence[HistoryEntry]) -> list[HistoryEntry]:
    """Validate a persisted history (tuples or JSON lists) into fresh Opacus entries."""
    restored: list[HistoryEntry] = []
    for i, entry in enumerate(history):
        try:
            restored.append(_as_entry(entry))
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"history[{i}] must be (noise_multiplier > 0, sample_rate in (0, 1], "
                f"steps >= 1), got {entry!r}"
            ) from e
    return restored


def _as_entry(entry: Sequence[float]) -> HistoryEntry:
    noise_multiplier, sample_rate, steps = entry
    result = (float(noise_multiplier), float(sample_rate), int(steps))
    if not (result[0] > 0 and 0 < result[1] <= 1 and result[2] >= 1 and result[2] == steps):
        raise ValueError(f"invalid accountant entry {entry!r}")
    return result


@contextlib.contextmanager
def _quiet_opacus_warnings() -> Iterator[None]:
    """Silence the known-harmless Opacus/torch warnings here only, not process-wide."""
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
        yield
