"""Low-rank factorization of Linear and Conv layers by truncated SVD."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def max_saving_rank(layer: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d) -> int:
    """Largest rank whose factorization of ``layer`` stores fewer parameters (0 if none).

    A weight of ``out`` rows and ``fan_in = in_features`` (or ``in_channels * prod(kernel)``)
    columns has ``out * fan_in`` elements; rank ``r`` factors have ``r * (fan_in + out)``.
    Biases are the same on both sides.
    """
    out = layer.weight.shape[0]
    fan_in = layer.weight[0].numel()
    return (out * fan_in - 1) // (fan_in + out)


def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Return ``Sequential(Linear(in, rank, bias=False), Linear(rank, out))`` from a truncated SVD.

    With ``W = U S V^T``, the first layer's weight is ``V_r^T`` and the second's ``U_r S_r``
    (plus the original bias), so the product is the best rank-``rank`` approximation of ``W``
    in Frobenius norm. ``rank = min(in, out)`` reproduces the layer up to float error.

    Raises
    ------
    ValueError
        If ``rank`` is not in ``[1, min(in_features, out_features)]``.
    """
    r = _check_rank(rank, limit=min(layer.weight.shape))
    left, right = _truncated_svd(layer.weight, r)
    first = nn.Linear(layer.in_features, r, bias=False)
    second = nn.Linear(r, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(right)
        second.weight.copy_(left)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def factorize_conv(layer: nn.Conv1d | nn.Conv2d | nn.Conv3d, rank: int) -> nn.Sequential:
    """Return a conv with ``rank`` output channels followed by a 1x1 conv, from a truncated SVD.

    The weight ``(out, in, *kernel)`` is reshaped to ``(out, in * prod(kernel))`` and
    factorized as in :func:`factorize_linear`: the first conv keeps the kernel, stride,
    padding and dilation with weight ``V_r^T`` reshaped to ``(rank, in, *kernel)``; the
    second is a 1x1 conv with weight ``U_r S_r`` and the original bias.

    Raises
    ------
    ValueError
        If ``rank`` is not in ``[1, min(out, in * prod(kernel))]`` or the conv is grouped.
    """
    if layer.groups != 1:
        raise ValueError(f"factorize_conv: grouped convs are not supported, got {layer}")
    out, in_channels, *kernel = layer.weight.shape
    matrix = layer.weight.reshape(out, -1)
    r = _check_rank(rank, limit=min(matrix.shape))
    left, right = _truncated_svd(matrix, r)
    conv_type = type(layer)
    first = conv_type(
        in_channels,
        r,
        kernel_size=layer.kernel_size,  # type: ignore[arg-type]
        stride=layer.stride,  # type: ignore[arg-type]
        padding=layer.padding,  # type: ignore[arg-type]
        dilation=layer.dilation,  # type: ignore[arg-type]
        bias=False,
        padding_mode=layer.padding_mode,
    )
    second = conv_type(r, out, kernel_size=1, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(right.reshape(r, in_channels, *kernel))
        second.weight.copy_(left.reshape(out, r, *([1] * len(kernel))))
        if layer.bias is not None and second.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def _truncated_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Return ``(U_r S_r, V_r^T)`` of ``matrix`` (computed in float64, cast back)."""
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    left = u[:, :rank] * s[:rank]
    return left.to(matrix.dtype), vh[:rank].to(matrix.dtype)


def _check_rank(rank: Any, *, limit: int | None = None) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    if limit is not None and rank > limit:
        raise ValueError(f"rank must be <= {limit} (the smaller weight dimension), got {rank}")
    return rank
