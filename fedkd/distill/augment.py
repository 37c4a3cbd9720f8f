"""Random augmentation of proxy (transfer-data) batches during distillation.

An :class:`Augmentation` is an ordered composition of transforms from :data:`AUGMENTATIONS`,
built and validated from the ``augment`` config group by :func:`build_augmentation` before
any training starts. It maps a batch ``(x, teacher_targets)`` to augmented copies; only
``mixup`` changes the targets (see :attr:`Augmentation.changes_targets`). Every random number
is drawn on the CPU from the caller's ``torch.Generator`` and then moved to the batch's
device, so one seed gives the same batches on every device.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from fedkd.errors import ConfigError
from fedkd.registry import check_option_names

logger = logging.getLogger(__name__)

AUGMENTATIONS: tuple[str, ...] = ("noise", "mixup", "shift", "crop", "flip")

# Per kind: option name -> default value.
_DEFAULTS: dict[str, dict[str, float | int]] = {
    "noise": {"std": 0.1},
    "mixup": {"alpha": 0.2},
    "shift": {"max_shift": 2},
    "crop": {"padding": 2},
    "flip": {"p": 0.5},
}
_SPEC_KEYS = ("name", "transforms")


class _Transform:
    """One transform of a batch ``(x, targets)``, drawing from the caller's generator.

    Subclasses implement :meth:`apply`, which returns a new ``x``; the targets pass through
    unchanged unless a subclass sets :attr:`changes_targets` and overrides ``__call__``.
    """

    changes_targets: ClassVar[bool] = False

    def __call__(
        self, x: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        return self.apply(x, generator), targets

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The transformed copy of the batch ``x``."""
        raise NotImplementedError


@dataclass(frozen=True)
class _Noise(_Transform):
    """Additive Gaussian noise ``x + std * N(0, 1)`` per element; targets unchanged."""

    std: float

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        # Drawn in float32 so the noise for one seed does not depend on x's dtype.
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)
        return x + self.std * noise.to(device=x.device, dtype=x.dtype)


@dataclass(frozen=True)
class _Mixup(_Transform):
    """Mixup (Zhang et al. 2018): convex combinations of example pairs and their targets."""

    alpha: float
    changes_targets: ClassVar[bool] = True

    def __call__(
        self, x: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        batch = x.shape[0]
        # torch's Beta sampler takes no generator: seed numpy's from the torch generator.
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
        lam = torch.from_numpy(np.random.default_rng(seed).beta(self.alpha, self.alpha, batch))
        perm = torch.randperm(batch, generator=generator)
        lam_x = lam.to(device=x.device, dtype=x.dtype).reshape(batch, *([1] * (x.ndim - 1)))
        lam_t = lam.to(device=targets.device, dtype=targets.dtype).reshape(batch, 1)
        perm_x = perm.to(x.device)
        perm_t = perm.to(targets.device)
        mixed_x = lam_x * x + (1 - lam_x) * x[perm_x]
        mixed_targets = lam_t * targets + (1 - lam_t) * targets[perm_t]
        return mixed_x, mixed_targets


def _translate(x: Tensor, offsets: Tensor, dim: int) -> Tensor:
    """Move each example's content by ``offsets[b]`` positions along ``dim``, zero fill.

    ``out[b, ..., i, ...] = x[b, ..., i - offsets[b], ...]`` where that index is in range,
    else 0 (no wrap-around).
    """
    length = x.shape[dim]
    view = [1] * x.ndim
    view[0] = x.shape[0]
    view[dim] = length
    source = (
        torch.arange(length, device=x.device).reshape(1, length) - offsets.to(x.device)[:, None]
    )
    inside = ((source >= 0) & (source < length)).reshape(view).expand_as(x)
    index = source.clamp(0, length - 1).reshape(view).expand_as(x)
    moved = torch.gather(x, dim, index)
    return torch.where(inside, moved, torch.zeros((), dtype=x.dtype, device=x.device))


@dataclass(frozen=True)
class _Shift(_Transform):
    """Random integer translation by up to ``max_shift`` along each spatial axis, zero fill."""

    max_shift: int

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        spatial_dims = range(2, x.ndim)  # L for (B, C, L); H and W for (B, C, H, W)
        offsets = torch.randint(
            -self.max_shift,
            self.max_shift + 1,
            (x.shape[0], len(spatial_dims)),
            generator=generator,
        )
        for axis, dim in enumerate(spatial_dims):
            x = _translate(x, offsets[:, axis], dim)
        return x


@dataclass(frozen=True)
class _Crop(_Transform):
    """Zero-pad H and W by ``padding`` on each side, then crop a random (H, W) window."""

    padding: int

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        # Window corner c in [0, 2 * padding] of the padded image: out[i] = x[i + c - padding],
        # a translation by padding - c with zero fill, done without materialising the padding.
        corners = torch.randint(0, 2 * self.padding + 1, (x.shape[0], 2), generator=generator)
        offsets = self.padding - corners
        x = _translate(x, offsets[:, 0], x.ndim - 2)
        return _translate(x, offsets[:, 1], x.ndim - 1)


@dataclass(frozen=True)
class _Flip(_Transform):
    """Horizontal flip (last axis) of each example with probability ``p``."""

    p: float

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        flip = torch.rand(x.shape[0], generator=generator) < self.p
        flip = flip.to(x.device).reshape(x.shape[0], *([1] * (x.ndim - 1)))
        return torch.where(flip, torch.flip(x, dims=(-1,)), x)


class Augmentation:
    r"""An ordered composition of proxy-batch transforms; build it with :func:`build_augmentation`.

    Transforms (options and defaults; config ``augment.transforms``):

    - ``noise`` (``std=0.1``): :math:`x' = x + \sigma \epsilon`, :math:`\epsilon \sim
      N(0, 1)` per element. Targets stay the teacher's targets of the clean example (a
      label-preserving perturbation).
    - ``mixup`` (``alpha=0.2``): Zhang et al. 2018, "mixup: Beyond Empirical Risk
      Minimization", arXiv:1710.09412. With :math:`\lambda_b \sim
      \mathrm{Beta}(\alpha, \alpha)` per example and a random permutation :math:`\pi` of
      the batch, :math:`x'_b = \lambda_b x_b + (1 - \lambda_b) x_{\pi(b)}` and
      :math:`t'_b = \lambda_b t_b + (1 - \lambda_b) t_{\pi(b)}` (rows still sum to 1).
    - ``shift`` (``max_shift=2``): translate each example by a random integer in
      ``[-max_shift, max_shift]`` along L of sequences ``(C, L)``, or independently along H and
      W of images ``(C, H, W)``; vacated positions are zero (no wrap-around).
    - ``crop`` (``padding=2``): zero-pad H and W of images by ``padding`` per side and crop a
      random window of the original size (a random translation by up to ``padding``).
    - ``flip`` (``p=0.5``): flip images horizontally (last axis) with probability ``p``.
      Suits natural images, not digits or text, whose class a mirror image can change.

    Example config (``configs/augment/tabular.yaml``)::

        name: tabular
        transforms:
          - {kind: noise, std: 0.05}
          - {kind: mixup, alpha: 0.2}

    Parameters
    ----------
    transforms : sequence of transforms
        Validated transforms, applied in order.
    input_shape : tuple of int
        Shape of one example, ``x.shape[1:]``.
    """

    def __init__(self, transforms: Sequence[_Transform], input_shape: tuple[int, ...]) -> None:
        if not transforms:
            raise ValueError("an Augmentation needs at least one transform")
        self.transforms: tuple[_Transform, ...] = tuple(transforms)
        self.input_shape = tuple(input_shape)

    @property
    def changes_targets(self) -> bool:
        """True when a transform (mixup) mixes the targets, so hard labels no longer apply."""
        return any(t.changes_targets for t in self.transforms)

    def __call__(
        self, x: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Augment one batch.

        Parameters
        ----------
        x : Tensor
            ``(B, *input_shape)`` floating-point inputs, on any device.
        targets : Tensor
            ``(B, C)`` teacher probabilities (rows summing to 1), on any device.
        generator : torch.Generator
            CPU generator, the only source of randomness.

        Returns
        -------
        tuple of Tensor
            New augmented ``x`` and targets, same shapes, dtypes and devices as the inputs;
            the inputs are never modified.

        Raises
        ------
        ValueError
            ``x`` does not match ``input_shape`` or is not floating point, ``targets`` is not
            ``(B, C)``, or ``generator`` is not a CPU generator.
        """
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x must have shape (B, *{self.input_shape}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be floating point, got dtype {x.dtype}")
        if targets.ndim != 2 or targets.shape[0] != x.shape[0]:
            raise ValueError(
                f"targets must have shape ({x.shape[0]}, C), got {tuple(targets.shape)}"
            )
        if generator.device.type != "cpu":
            raise ValueError(
                f"generator must be a CPU torch.Generator, got one on {generator.device}"
            )
        out_x, out_targets = x, targets
        for transform in self.transforms:
            out_x, out_targets = transform(out_x, out_targets, generator)
        # Every transform builds a new x; targets pass through unchanged except for mixup.
        if out_targets is targets:
            out_targets = targets.clone()
        return out_x, out_targets

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Augmentation([{inner}], input_shape={self.input_shape})"


def build_augmentation(
    spec: Mapping[str, Any] | None, input_shape: tuple[int, ...]
) -> Augmentation | None:
    """Validate the ``augment`` config and build its :class:`Augmentation`.

    Parameters
    ----------
    spec : mapping or None
        The config group value, e.g. ``{"name": "tabular", "transforms": [{"kind": "noise",
        "std": 0.1}, {"kind": "mixup", "alpha": 0.2}]}``. Each transform is a mapping with
        ``kind`` (one of :data:`AUGMENTATIONS`) and that kind's options (see
        :class:`Augmentation`); omitted options take their defaults.
    input_shape : tuple of int
        Shape of one example: ``(F,)`` tabular, ``(C, L)`` sequence, ``(C, H, W)`` image.

    Returns
    -------
    Augmentation or None
        None when ``spec`` is None or its ``transforms`` list is missing or empty.

    Raises
    ------
    ConfigError
        Unknown top-level key ``augment.<key>``; a transform that is not a mapping, has an
        unknown ``augment.transforms[i].kind`` (the message lists :data:`AUGMENTATIONS`), an
        unknown option ``augment.transforms[i].<option>`` (the message lists the allowed
        ones) or an out-of-range value; or a transform that does not fit ``input_shape``
        (``flip``/``crop`` need images, ``shift`` sequences or images).
    ValueError
        ``input_shape`` is not a non-empty tuple of positive ints.
    """
    shape = _check_input_shape(input_shape)
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"augment: expected a mapping with keys {list(_SPEC_KEYS)}, got {spec!r}")
    unknown = sorted(str(key) for key in spec if key not in _SPEC_KEYS)
    if unknown:
        raise ConfigError(
            f"augment.{unknown[0]}: unknown key(s) {unknown}; allowed keys: {list(_SPEC_KEYS)}"
        )
    entries = spec.get("transforms")
    if entries is None:
        return None
    if isinstance(entries, str | bytes | Mapping) or not isinstance(entries, Sequence):
        raise ConfigError(f"augment.transforms: expected a list of transforms, got {entries!r}")
    if len(entries) == 0:
        return None
    transforms = [_build_transform(i, entry, shape) for i, entry in enumerate(entries)]
    return Augmentation(transforms, shape)


def _check_input_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1 for n in shape
    ):
        raise ValueError(
            f"input_shape must be a non-empty tuple of positive ints, got {input_shape!r}"
        )
    return tuple(int(n) for n in shape)


def _build_transform(index: int, entry: Any, shape: tuple[int, ...]) -> _Transform:
    key = f"augment.transforms[{index}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"{key}: expected a mapping like {{kind: noise, std: 0.1}}, got {entry!r}"
        )
    kind = entry.get("kind")
    if kind not in AUGMENTATIONS:
        raise ConfigError(
            f"{key}.kind: unknown kind {kind!r}; allowed kinds: {list(AUGMENTATIONS)}"
        )
    defaults = _DEFAULTS[kind]
    options = {str(k): v for k, v in entry.items() if k != "kind"}
    check_option_names(options, defaults, key=key, owner=f"kind {kind!r}")
    _check_fits(key, kind, shape)
    resolved = {**defaults, **options}
    if kind == "noise":
        return _Noise(std=_positive_float(f"{key}.std", resolved["std"]))
    if kind == "mixup":
        return _Mixup(alpha=_positive_float(f"{key}.alpha", resolved["alpha"]))
    if kind == "shift":
        max_shift = _positive_int(f"{key}.max_shift", resolved["max_shift"])
        _warn_if_everything_moves_out(f"{key}.max_shift", max_shift, shape[1:])
        return _Shift(max_shift=max_shift)
    if kind == "crop":
        padding = _positive_int(f"{key}.padding", resolved["padding"])
        _warn_if_everything_moves_out(f"{key}.padding", padding, shape[1:])
        return _Crop(padding=padding)
    return _Flip(p=_probability(f"{key}.p", resolved["p"]))


def _fitting_kinds(shape: tuple[int, ...]) -> list[str]:
    """The transform kinds that apply to inputs of one example's ``shape``."""
    if len(shape) == 3:
        return list(AUGMENTATIONS)
    if len(shape) == 2:
        return ["noise", "mixup", "shift"]
    return ["noise", "mixup"]


def _check_fits(key: str, kind: str, shape: tuple[int, ...]) -> None:
    """Refuse spatial transforms on inputs that have no such axes."""
    allowed = _fitting_kinds(shape)
    if kind in allowed:
        return
    needs = "image (C, H, W)" if kind in ("crop", "flip") else "sequence (C, L) or image (C, H, W)"
    if len(shape) == 1:
        raise ConfigError(
            f"{key}.kind: {kind!r} needs {needs} inputs, but the input shape is {shape} "
            "(tabular features); use noise or mixup for tabular inputs"
        )
    raise ConfigError(
        f"{key}.kind: {kind!r} needs {needs} inputs, but the input shape is {shape}; "
        f"allowed kinds for this input: {allowed}"
    )


def _warn_if_everything_moves_out(key: str, value: int, spatial: tuple[int, ...]) -> None:
    if any(value >= length for length in spatial):
        logger.warning(
            "%s=%s is at least a spatial size of the input %s: some examples will be moved "
            "entirely out of view (all zeros)",
            key,
            value,
            spatial,
        )


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_float(key: str, value: Any) -> float:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}: got {value!r}; must be a finite number > 0")
    return float(value)


def _positive_int(key: str, value: Any) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}: got {value!r}; must be an integer >= 1")
    return int(value)


def _probability(key: str, value: Any) -> float:
    if not _is_real(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key}: got {value!r}; must be a number in [0, 1]")
    return float(value)
