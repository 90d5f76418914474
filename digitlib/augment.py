"""Data augmentation done on whole batches with tensor ops (no per-image Python).

Covers how people draw: rotation, scale, shear, translation, elastic distortion and stroke
thickness. Everything is one random warp per image (a single grid_sample) plus a soft
dilation or erosion for ink thickness, so it runs on the training device at any batch size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Ranges of random transforms; zeros mean off."""

    rotation: float = 0.0  # degrees, +/-
    scale: float = 0.0  # relative, 1 +/- scale
    shear: float = 0.0  # degrees, +/-
    translate: float = 0.0  # fraction of the image, +/-
    elastic: float = 0.0  # displacement amplitude in pixels
    thickness: float = 0.0  # 0..1: how far towards one pixel thinner/thicker ink
    # Probability of turning a 0 into a slashed zero or a 1 into a flagged (continental) one:
    # common ways of writing that MNIST, written by Americans, almost lacks.
    variants: float = 0.0

    @property
    def enabled(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "none": Augmentation(),
    # Kaggle-style MNIST augmentation (rotation 10, zoom 0.1, shift 0.1).
    "light": Augmentation(rotation=10, scale=0.1, translate=0.1),
    # Digits drawn on a canvas: wider warps, wobbly strokes, thinner and thicker ink.
    "draw": Augmentation(rotation=10, scale=0.1, shear=8, translate=0.1, elastic=0.6, thickness=0.3, variants=0.3),
    "pen": Augmentation(rotation=10, scale=0.1, translate=0.1, thickness=0.3, variants=0.3),
}


def get_augmentation(spec: str | dict | Augmentation | None) -> Augmentation:
    """A preset name, a dict of fields, an Augmentation, or a string such as
    "pen,elastic=1.0" or "rotation=15,thickness=0.5" (a preset, then fields changed; the
    form the CLI's --augment and the notebooks' `augment` parameter take)."""
    if spec is None:
        return PRESETS["none"]
    if isinstance(spec, Augmentation):
        return spec
    if isinstance(spec, dict):
        return _with_fields(PRESETS["none"], spec)
    base, changes = PRESETS["none"], {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            if part not in PRESETS:
                raise ValueError(f"unknown augmentation {part!r}; choose from {sorted(PRESETS)}")
            base = PRESETS[part]
            continue
        name, value = (x.strip() for x in part.split("=", 1))
        try:
            changes[name] = float(value)
        except ValueError:
            raise ValueError(f"augmentation {name}: {value!r} is not a number") from None
    return _with_fields(base, changes)


def _with_fields(base: Augmentation, changes: dict) -> Augmentation:
    known = {f.name for f in fields(Augmentation)}
    unknown = set(changes) - known
    if unknown:
        raise ValueError(f"unknown augmentation field(s) {sorted(unknown)}; known: {sorted(known)}")
    return replace(base, **changes)


def _uniform(n: int, half_range: float, generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=generator, device=device) * 2 - 1) * half_range


def random_warp_grid(n: int, size: int, aug: Augmentation, generator=None, device="cpu") -> torch.Tensor:
    """Sampling grids (n, size, size, 2) combining a random affine map and elastic noise."""
    rot = torch.deg2rad(_uniform(n, aug.rotation, generator, device))
    shear = torch.deg2rad(_uniform(n, aug.shear, generator, device))
    scale = 1 + _uniform(n, aug.scale, generator, device)
    tx, ty = (_uniform(n, 2 * aug.translate, generator, device) for _ in range(2))  # grid spans 2
    cos, sin, tan = torch.cos(rot), torch.sin(rot), torch.tan(shear)
    # Inverse map (output -> input coordinates): rotation @ shear, divided by scale.
    theta = torch.stack(
        [
            torch.stack([cos, cos * tan - sin, tx], 1),
            torch.stack([sin, sin * tan + cos, ty], 1),
        ],
        1,
    ) / torch.stack([scale, scale, torch.ones_like(scale)], 1).unsqueeze(1)
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    if aug.elastic:
        # Smooth random displacement: coarse noise upsampled, in pixels -> grid units.
        coarse = torch.randn(n, 2, 3, 3, generator=generator, device=device)
        field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1) * (aug.elastic * 2 / size)
    return grid


def change_thickness(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Blend towards a 3x3 dilation (amount > 0, thicker) or erosion (amount < 0, thinner)."""
    thicker = F.max_pool2d(x, 3, stride=1, padding=1)
    thinner = -F.max_pool2d(-x, 3, stride=1, padding=1)
    a = amount.view(-1, 1, 1, 1)
    return torch.where(a >= 0, x + a * (thicker - x), x + (-a) * (thinner - x))


def ink_box(x: torch.Tensor, threshold: float = 0.3) -> tuple[torch.Tensor, ...]:
    """Per image: top, bottom, left, right of the ink (pixel indices, float)."""
    ink = x[:, 0] > threshold
    idx = torch.arange(x.shape[-1], device=x.device, dtype=x.dtype)
    rows, cols = ink.any(2), ink.any(1)
    big = x.shape[-1]

    def first(mask):
        return torch.where(mask, idx, big).amin(1)

    def last(mask):
        return torch.where(mask, idx, -1).amax(1)

    return first(rows), last(rows), first(cols), last(cols)


def draw_segments(x: torch.Tensor, start: torch.Tensor, end: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Add an anti-aliased line from start to end (n, 2 as x, y pixels) to each image."""
    size = x.shape[-1]
    coords = torch.arange(size, device=x.device, dtype=x.dtype)
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    p = torch.stack([px, py], -1).view(1, size, size, 2)
    a, b = start.view(-1, 1, 1, 2), end.view(-1, 1, 1, 2)
    ab = b - a
    t = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-6)).clamp(0, 1)
    dist = (p - (a + t.unsqueeze(-1) * ab)).norm(dim=-1)
    line = (width.view(-1, 1, 1) / 2 + 0.5 - dist).clamp(0, 1)
    return torch.maximum(x, line.unsqueeze(1))


def add_variants(x: torch.Tensor, labels: torch.Tensor, p: float, generator=None) -> torch.Tensor:
    """Slash some zeros (bottom-left to top-right, past the ring) and flag some ones."""
    chosen = torch.rand(len(x), generator=generator, device=x.device) < p
    zeros, ones = (chosen & (labels == 0)).nonzero().flatten(), (chosen & (labels == 1)).nonzero().flatten()
    if len(zeros) + len(ones) == 0:
        return x
    x = x.clone()
    for idx, kind in ((zeros, "slash"), (ones, "flag")):
        if not len(idx):
            continue
        top, bottom, left, right = ink_box(x[idx])
        jitter = (torch.rand(len(idx), 4, generator=generator, device=x.device) - 0.5) * 4
        width = 1.5 + torch.rand(len(idx), generator=generator, device=x.device) * 1.5
        if kind == "slash":
            start = torch.stack([left - 1 + jitter[:, 0], bottom + 1 + jitter[:, 1]], 1)
            end = torch.stack([right + 1 + jitter[:, 2], top - 1 + jitter[:, 3]], 1)
        else:  # a short flag from the top of the one, down and to the left
            height = (bottom - top).clamp_min(4)
            top_rows = x[idx, 0][torch.arange(len(idx), device=x.device), top.long().clamp(max=x.shape[-1] - 1)]
            start = torch.stack([top_rows.argmax(1).to(x.dtype), top], 1)
            # From a short flag to the long lead-in stroke some people start a one with.
            across = 0.15 + torch.rand(len(idx), generator=generator, device=x.device) * 0.35
            down = 0.15 + torch.rand(len(idx), generator=generator, device=x.device) * 0.55
            end = torch.stack([start[:, 0] - across * height, top + down * height], 1)
        x[idx] = draw_segments(x[idx], start, end, width)
    return x


def augment_batch(
    x: torch.Tensor, aug: Augmentation, generator: torch.Generator | None = None, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Augment a batch of images in [0, 1], shape (n, 1, h, w), black background.

    `labels` are needed for the written variants (slashed zeros, flagged ones).
    """
    if not aug.enabled:
        return x
    n, size = x.shape[0], x.shape[-1]
    if aug.variants and labels is not None:
        x = add_variants(x, labels, aug.variants, generator)
    if aug.thickness:
        x = change_thickness(x, _uniform(n, aug.thickness, generator, x.device))
    if any((aug.rotation, aug.scale, aug.shear, aug.translate, aug.elastic)):
        grid = random_warp_grid(n, size, aug, generator, x.device).to(x.dtype)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x


__all__ = ["Augmentation", "PRESETS", "augment_batch", "get_augmentation"]
