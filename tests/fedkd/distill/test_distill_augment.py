"""Tests for fedkd.distill.augment: transforms checked against hand-built batches."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from fedkd.config import config_dir
from fedkd.distill.augment import AUGMENTATIONS, Augmentation, build_augmentation
from fedkd.errors import ConfigError

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]
IMAGE = (2, 8, 8)
SEQUENCE = (2, 40)
TABULAR = (16,)
# One spec per kind, with the input shape it fits.
ONE_OF_EACH: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("noise", {"kind": "noise", "std": 0.3}, TABULAR),
    ("mixup", {"kind": "mixup", "alpha": 0.4}, TABULAR),
    ("shift-seq", {"kind": "shift", "max_shift": 3}, SEQUENCE),
    ("shift-img", {"kind": "shift", "max_shift": 2}, IMAGE),
    ("crop", {"kind": "crop", "padding": 2}, IMAGE),
    ("flip", {"kind": "flip", "p": 0.5}, IMAGE),
]
ALL_IMAGE = [
    {"kind": "crop", "padding": 1},
    {"kind": "shift", "max_shift": 1},
    {"kind": "flip"},
    {"kind": "noise"},
    {"kind": "mixup"},
]


def _build(transforms: list[dict[str, Any]], shape: tuple[int, ...]) -> Augmentation:
    aug = build_augmentation({"name": "test", "transforms": transforms}, shape)
    assert aug is not None
    return aug


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(
    shape: tuple[int, ...], batch: int = 32, classes: int = 5, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(123)
    x = torch.randn((batch, *shape), generator=g).to(dtype)
    targets = torch.softmax(torch.randn((batch, classes), generator=g), dim=1).to(dtype)
    return x, targets


def _translate_np(image: np.ndarray, dh: int, dw: int) -> np.ndarray:
    """Reference translation by slicing: out[h, w] = image[h - dh, w - dw], zero outside."""
    out = np.zeros_like(image)
    height, width = image.shape[-2:]
    dst_h = slice(max(dh, 0), height + min(dh, 0))
    src_h = slice(max(-dh, 0), height + min(-dh, 0))
    dst_w = slice(max(dw, 0), width + min(dw, 0))
    src_w = slice(max(-dw, 0), width + min(-dw, 0))
    out[..., dst_h, dst_w] = image[..., src_h, src_w]
    return out


def test_empty_specs_build_nothing() -> None:
    assert build_augmentation(None, TABULAR) is None
    assert build_augmentation({}, TABULAR) is None
    assert build_augmentation({"name": "none", "transforms": []}, TABULAR) is None
    assert build_augmentation({"name": "none", "transforms": None}, TABULAR) is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("label", "transform", "shape"), ONE_OF_EACH)
def test_outputs_match_input_shapes_dtypes_devices(
    label: str, transform: dict[str, Any], shape: tuple[int, ...], dtype: torch.dtype, device: str
) -> None:
    aug = _build([transform], shape)
    x, targets = _batch(shape, dtype=dtype)
    x, targets = x.to(device), targets.to(device)
    out_x, out_targets = aug(x, targets, _gen())
    for before, after in ((x, out_x), (targets, out_targets)):
        assert after.shape == before.shape
        assert after.dtype == before.dtype
        assert after.device == before.device
    assert aug.changes_targets == (label == "mixup")
    if label != "mixup":
        torch.testing.assert_close(out_targets, targets, rtol=0, atol=0)
    torch.testing.assert_close(
        out_targets.sum(dim=1).double().cpu(), torch.ones(32, dtype=torch.float64)
    )


def test_inputs_are_not_modified_and_outputs_are_new_tensors() -> None:
    aug = _build(ALL_IMAGE, IMAGE)
    x, targets = _batch(IMAGE)
    x_before, targets_before = x.clone(), targets.clone()
    out_x, out_targets = aug(x, targets, _gen())
    assert torch.equal(x, x_before)
    assert torch.equal(targets, targets_before)
    assert not torch.equal(out_x, x)
    assert out_x.data_ptr() != x.data_ptr()
    assert out_targets.data_ptr() != targets.data_ptr()
    # Without mixup the targets come back as an equal copy, not the caller's tensor.
    out_x, out_targets = _build([{"kind": "noise"}], IMAGE)(x, targets, _gen())
    assert torch.equal(out_targets, targets)
    assert out_targets.data_ptr() != targets.data_ptr()


def test_same_seed_same_batches_different_seed_different() -> None:
    aug = _build(ALL_IMAGE, IMAGE)
    x, targets = _batch(IMAGE)
    first = aug(x, targets, _gen(7))
    again = aug(x, targets, _gen(7))
    other = aug(x, targets, _gen(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[1], other[1])
    # One generator carries on: consecutive batches differ.
    g = _gen(7)
    assert not torch.equal(aug(x, targets, g)[0], aug(x, targets, g)[0])


def test_noise_has_the_configured_std_and_keeps_targets() -> None:
    aug = _build([{"kind": "noise", "std": 0.25}], (64,))
    x = torch.full((1024, 64), 3.0)
    targets = torch.eye(4).repeat(256, 1)
    out_x, out_targets = aug(x, targets, _gen())
    noise = (out_x - x).double()
    assert abs(noise.mean().item()) < 0.005
    assert noise.std().item() == pytest.approx(0.25, rel=0.01)
    assert torch.equal(out_targets, targets)


def test_mixup_mixes_inputs_and_targets_with_the_same_lambda() -> None:
    batch, alpha = 512, 0.2
    aug = _build([{"kind": "mixup", "alpha": alpha}], (batch,))
    # Row b of x and of the targets is the one-hot e_b, so every mixed row reads
    # lam_b at b and 1 - lam_b at its partner pi(b).
    x = torch.eye(batch, dtype=torch.float64)
    targets = torch.eye(batch, dtype=torch.float64)
    out_x, out_targets = aug(x, targets, _gen(3))
    torch.testing.assert_close(out_x, out_targets, rtol=0, atol=1e-12)
    torch.testing.assert_close(out_targets.sum(dim=1), torch.ones(batch, dtype=torch.float64))
    assert (out_targets >= 0).all()
    assert ((out_targets > 0).sum(dim=1) <= 2).all()
    lam = out_targets.diagonal()
    off_diagonal = out_targets - torch.diag(lam)
    has_partner = off_diagonal.sum(dim=1) > 0
    # Partners form a permutation: no example is the partner of two rows.
    partners = off_diagonal.argmax(dim=1)[has_partner]
    assert len(set(partners.tolist())) == len(partners)
    # Rows whose partner is itself (pi(b) = b) read 1; the rest recover lam ~ Beta(alpha, alpha).
    fixed = ~has_partner
    torch.testing.assert_close(lam[fixed], torch.ones(int(fixed.sum()), dtype=torch.float64))
    recovered = lam[has_partner].numpy()
    assert len(recovered) > 400
    assert recovered.mean() == pytest.approx(0.5, abs=0.05)
    assert recovered.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), abs=0.03)


def test_mixup_of_probability_targets_keeps_rows_summing_to_one() -> None:
    aug = _build([{"kind": "noise", "std": 0.1}, {"kind": "mixup", "alpha": 1.0}], TABULAR)
    x, targets = _batch(TABULAR, batch=64, classes=10)
    out_x, out_targets = aug(x, targets, _gen())
    torch.testing.assert_close(out_targets.sum(dim=1), torch.ones(64))
    assert not torch.allclose(out_targets, targets)
    assert not torch.allclose(out_x, x)


@pytest.mark.parametrize("spike_at", [0, 39])
def test_shift_moves_a_sequence_spike_with_zero_fill(spike_at: int) -> None:
    max_shift, length, batch = 2, 40, 256
    aug = _build([{"kind": "shift", "max_shift": max_shift}], (2, length))
    x = torch.zeros((batch, 2, length))
    x[:, 0, spike_at] = 1.0
    x[:, 1, spike_at] = -1.0
    out_x, _ = aug(x, torch.full((batch, 1), 1.0), _gen())
    # Both channels move together.
    torch.testing.assert_close(out_x[:, 1], -out_x[:, 0])
    seen = set()
    for row in out_x[:, 0]:
        where = torch.nonzero(row).flatten().tolist()
        assert len(where) <= 1
        if where:
            assert row[where[0]] == 1.0
            assert abs(where[0] - spike_at) <= max_shift
            seen.add(where[0] - spike_at)
        else:
            seen.add(None)  # shifted out of view
    # Zero fill: the spike never wraps around to the far end.
    far_end = slice(length - max_shift, length) if spike_at == 0 else slice(0, max_shift)
    assert not out_x[:, :, far_end].any()
    inside = [s for s in range(-max_shift, max_shift + 1) if 0 <= spike_at + s < length]
    assert seen == {*inside, None}


@pytest.mark.parametrize(
    ("transform", "reach"),
    [({"kind": "shift", "max_shift": 2}, 2), ({"kind": "crop", "padding": 1}, 1)],
)
def test_shift_and_crop_translate_images_by_at_most_their_reach(
    transform: dict[str, Any], reach: int
) -> None:
    aug = _build([transform], IMAGE)
    x, targets = _batch(IMAGE, batch=256)
    out_x, _ = aug(x, targets, _gen())
    assert out_x.shape == x.shape
    offsets = list(itertools.product(range(-reach, reach + 1), repeat=2))
    seen = set()
    for image, result in zip(x.numpy(), out_x.numpy(), strict=True):
        matches = [o for o in offsets if np.array_equal(_translate_np(image, *o), result)]
        assert len(matches) == 1, "output is not a zero-filled translation within reach"
        seen.add(matches[0])
    assert seen == set(offsets)


def test_flip_with_p_one_and_zero() -> None:
    x, targets = _batch(IMAGE)
    out_x, _ = _build([{"kind": "flip", "p": 1.0}], IMAGE)(x, targets, _gen())
    assert torch.equal(out_x, torch.flip(x, dims=(-1,)))
    out_x, _ = _build([{"kind": "flip", "p": 0.0}], IMAGE)(x, targets, _gen())
    assert torch.equal(out_x, x)


def test_flip_flips_whole_examples_about_p_of_the_time() -> None:
    x, targets = _batch(IMAGE, batch=400)
    out_x, _ = _build([{"kind": "flip", "p": 0.25}], IMAGE)(x, targets, _gen())
    flipped = (out_x == torch.flip(x, dims=(-1,))).flatten(1).all(dim=1)
    kept = (out_x == x).flatten(1).all(dim=1)
    assert (flipped ^ kept).all()
    assert flipped.float().mean().item() == pytest.approx(0.25, abs=0.07)


def test_call_checks_the_batch() -> None:
    aug = _build([{"kind": "noise"}], IMAGE)
    x, targets = _batch(IMAGE)
    with pytest.raises(ValueError, match="shape"):
        aug(x[:, :1], targets, _gen())
    with pytest.raises(ValueError, match="targets"):
        aug(x, targets[:3], _gen())


@pytest.mark.parametrize(
    ("transforms", "shape", "key", "fragment"),
    [
        ([{"kind": "blur"}], IMAGE, r"augment\.transforms\[0\]\.kind", "allowed kinds"),
        ([{"std": 0.1}], IMAGE, r"augment\.transforms\[0\]\.kind", "None"),
        (
            [{"kind": "noise"}, {"kind": "noise", "sigma": 0.1}],
            IMAGE,
            r"augment\.transforms\[1\]\.sigma",
            r"allowed options: \['std'\]",
        ),
        ([{"kind": "flip", "max_shift": 1}], IMAGE, r"augment\.transforms\[0\]\.max_shift", "'p'"),
        ([{"kind": "noise", "std": 0}], TABULAR, r"augment\.transforms\[0\]\.std", "> 0"),
        ([{"kind": "noise", "std": -0.1}], TABULAR, r"augment\.transforms\[0\]\.std", "-0.1"),
        (
            [{"kind": "noise", "std": float("nan")}],
            TABULAR,
            r"augment\.transforms\[0\]\.std",
            "nan",
        ),
        (
            [{"kind": "noise", "std": float("inf")}],
            TABULAR,
            r"augment\.transforms\[0\]\.std",
            "finite",
        ),
        ([{"kind": "noise", "std": "0.1"}], TABULAR, r"augment\.transforms\[0\]\.std", "'0.1'"),
        ([{"kind": "mixup", "alpha": 0.0}], TABULAR, r"augment\.transforms\[0\]\.alpha", "> 0"),
        ([{"kind": "mixup", "alpha": -1}], TABULAR, r"augment\.transforms\[0\]\.alpha", "-1"),
        (
            [{"kind": "shift", "max_shift": 0}],
            SEQUENCE,
            r"augment\.transforms\[0\]\.max_shift",
            ">= 1",
        ),
        (
            [{"kind": "shift", "max_shift": 1.5}],
            SEQUENCE,
            r"augment\.transforms\[0\]\.max_shift",
            "1.5",
        ),
        (
            [{"kind": "shift", "max_shift": True}],
            SEQUENCE,
            r"augment\.transforms\[0\]\.max_shift",
            "integer",
        ),
        ([{"kind": "crop", "padding": 0}], IMAGE, r"augment\.transforms\[0\]\.padding", ">= 1"),
        (
            [{"kind": "crop", "padding": 2.0}],
            IMAGE,
            r"augment\.transforms\[0\]\.padding",
            "integer",
        ),
        ([{"kind": "flip", "p": 1.5}], IMAGE, r"augment\.transforms\[0\]\.p", r"\[0, 1\]"),
        ([{"kind": "flip", "p": -0.1}], IMAGE, r"augment\.transforms\[0\]\.p", r"\[0, 1\]"),
        (
            [{"kind": "flip"}],
            TABULAR,
            r"augment\.transforms\[0\]\.kind",
            r"\(16,\).*noise or mixup",
        ),
        (
            [{"kind": "crop"}],
            TABULAR,
            r"augment\.transforms\[0\]\.kind",
            r"\(16,\).*noise or mixup",
        ),
        (
            [{"kind": "noise"}, {"kind": "shift"}],
            TABULAR,
            r"augment\.transforms\[1\]\.kind",
            r"\(16,\).*noise or mixup",
        ),
        ([{"kind": "flip"}], SEQUENCE, r"augment\.transforms\[0\]\.kind", r"image \(C, H, W\)"),
        ([{"kind": "crop"}], SEQUENCE, r"augment\.transforms\[0\]\.kind", r"\(2, 40\)"),
        (["noise"], IMAGE, r"augment\.transforms\[0\]", "mapping"),
    ],
)
def test_invalid_transforms_are_config_errors_naming_the_key(
    transforms: list[Any], shape: tuple[int, ...], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        build_augmentation({"name": "bad", "transforms": transforms}, shape)
    assert isinstance(info.value, ValueError)
    assert info.match(fragment)


def test_invalid_spec_layout_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"augment\.transform: unknown key"):
        build_augmentation({"name": "x", "transform": []}, IMAGE)
    with pytest.raises(ConfigError, match=r"augment\.transforms: expected a list"):
        build_augmentation({"name": "x", "transforms": {"kind": "noise"}}, IMAGE)


def test_unknown_kind_message_lists_every_kind() -> None:
    with pytest.raises(ConfigError) as info:
        build_augmentation({"transforms": [{"kind": "blur"}]}, IMAGE)
    assert all(kind in str(info.value) for kind in AUGMENTATIONS)
    assert "'blur'" in str(info.value)


def test_defaults_apply_for_omitted_options() -> None:
    aug = _build([{"kind": k} for k in AUGMENTATIONS], IMAGE)
    assert [t.__dict__ for t in aug.transforms] == [
        {"std": 0.1},
        {"alpha": 0.2},
        {"max_shift": 2},
        {"padding": 2},
        {"p": 0.5},
    ]


@pytest.mark.parametrize(
    ("option", "shape", "kinds", "changes_targets"),
    [
        ("none", (64,), None, False),
        ("tabular", (64,), ["noise", "mixup"], True),
        ("image", (1, 8, 8), ["crop", "noise"], False),
        ("sequence", (1, 40), ["shift", "noise"], False),
    ],
)
def test_shipped_configs_build_for_their_inputs(
    option: str, shape: tuple[int, ...], kinds: list[str] | None, changes_targets: bool
) -> None:
    spec = yaml.safe_load((config_dir() / "augment" / f"{option}.yaml").read_text())
    assert spec["name"] == option
    aug = build_augmentation(spec, shape)
    if kinds is None:
        assert aug is None
        return
    assert aug is not None
    assert [type(t).__name__.strip("_").lower() for t in aug.transforms] == kinds
    assert aug.changes_targets == changes_targets
    x, targets = _batch(shape, batch=16)
    out_x, out_targets = aug(x, targets, _gen())
    assert out_x.shape == x.shape and not torch.equal(out_x, x)
    torch.testing.assert_close(out_targets.sum(dim=1), torch.ones(16))


def test_shipped_configs_cover_the_config_group() -> None:
    options = sorted(p.stem for p in (config_dir() / "augment").glob("*.yaml"))
    assert options == ["image", "none", "sequence", "tabular"]
