"""Parameter counting and numpy weight exchange for models."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Return the number of parameter elements of ``model``.

    Parameters
    ----------
    model : nn.Module
        Any torch module.
    trainable_only : bool, optional
        Count only parameters with ``requires_grad`` (default: count all).
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_size_bytes(model: nn.Module) -> int:
    """Return the size in bytes of the tensors in ``model.state_dict()`` (params + buffers)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Return copies of the state-dict tensors as numpy arrays, in state-dict order.

    Floating-point tensors are returned as float32; other dtypes (e.g. integer
    BatchNorm counters) keep their dtype.
    """
    out: list[np.ndarray] = []
    for t in model.state_dict().values():
        t = t.detach().cpu()
        if t.is_floating_point():
            out.append(t.to(torch.float32).numpy().copy())
        else:
            out.append(t.numpy().copy())
    return out


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load ``weights`` (as returned by :func:`get_weights`) into ``model`` in place.

    Arrays are cast to each state-dict entry's dtype and device.

    Raises
    ------
    ValueError
        If the number of arrays or any shape differs from the model's state dict.
    """
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"expected {len(state)} weight arrays for this model, got {len(weights)}")
    new_state: dict[str, torch.Tensor] = {}
    for (key, ref), w in zip(state.items(), weights, strict=True):
        arr = np.asarray(w)
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(
                f"shape mismatch for {key!r}: model has {tuple(ref.shape)}, got {tuple(arr.shape)}"
            )
        new_state[key] = torch.as_tensor(arr).to(device=ref.device, dtype=ref.dtype)
    model.load_state_dict(new_state, strict=True)
