"""Augmentation on uint8 images, seeded per batch so a resumed run repeats it exactly.

:func:`augment_batch` (flips, 90° rotations, mild colour jitter) is what every recipe gets;
:class:`Photometric` adds what a model needs to survive another microscope (recipe ``[augment]``
keys): exposure with clipping, gamma, contrast, stain and hue, noise, blur, occlusion, and
background replacement (everything but the stained white cells replaced by one colour, black
in a chosen share, those cells rendered in other colours in a chosen share), each drawn per
image from the batch's generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def draw_views(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random flips and rotations :func:`augment_batch` applies: (flip_h, flip_v, rot) per image."""
    flip_h = torch.rand(n, generator=gen) < 0.5
    flip_v = torch.rand(n, generator=gen) < 0.5
    rot = torch.randint(0, 4, (n,), generator=gen)
    return flip_h, flip_v, rot


def _transform(x: torch.Tensor, flip_h: bool, flip_v: bool, rot: int) -> torch.Tensor:
    if flip_h:
        x = x.flip(-1)
    if flip_v:
        x = x.flip(-2)
    if rot:
        x = torch.rot90(x, rot, dims=(-2, -1))
    return x


def augment_batch(images: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Flips, 90° rotations (cells have no orientation) and mild illumination/stain jitter.

    images: (N, 3, H, W) uint8. Returns uint8 of the same shape.
    """
    n = images.shape[0]
    x = images.clone()
    flip_h, flip_v, rot = draw_views(n, gen)
    for i in range(n):
        x[i] = _transform(x[i], bool(flip_h[i]), bool(flip_v[i]), int(rot[i]))
    if strength <= 0:
        return x
    # brightness / per-channel gain (stain) / contrast, as in real smear variation
    gain = 1 + strength * 0.12 * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
    chan = 1 + strength * 0.05 * (2 * torch.rand(n, 3, 1, 1, generator=gen) - 1)
    contrast = 1 + strength * 0.12 * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
    f = x.float()
    mean = f.mean(dim=(1, 2, 3), keepdim=True)
    f = (f - mean) * contrast + mean
    f = f * gain * chan
    return f.round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class Photometric:
    """Per-image photometric augmentation (all off by default); see the recipe keys in recipes/README.md."""

    gain: tuple[float, float] = (1.0, 1.0)  # exposure: multiply, then clip to 0..255 (over-exposure clips)
    gamma: tuple[float, float] = (1.0, 1.0)
    contrast: float = 0.0  # ± around the image mean
    stain: float = 0.0  # ± per-channel gain
    hue: float = 0.0  # probability of a random mix of the colour channels (stain rendering, colour spaces)
    noise: float = 0.0  # maximum Gaussian noise sigma (grey levels)
    blur: float = 0.0  # maximum Gaussian blur sigma (pixels)
    occlusion: float = 0.0  # maximum occluded share of the image (one rectangle of a random grey)
    background: float = 0.0  # probability of replacing the background by one random colour
    background_black: float = 0.5  # share of those replacements that are black
    background_recolour: float = 0.0  # share of those replacements whose cells are rendered in other colours

    @property
    def active(self) -> bool:
        return self != Photometric()

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(N, 3, H, W) uint8 → uint8; every draw from ``gen`` (in a fixed order), so it repeats exactly."""
        n, _, h, w = images.shape
        u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
        f = images.float()
        if self.background > 0:
            keep = cell_mask(images)
            colour = torch.where(u(n, 1, 1, 1) < self.background_black, torch.zeros(n, 3, 1, 1), 255 * u(n, 3, 1, 1))
            chosen = u(n, 1, 1, 1) < self.background
            replace = chosen & ~keep
        if self.hue > 0:
            f = _mix(f, u(n) < self.hue, u)
        if self.background > 0 and self.background_recolour > 0:
            # the replaced images' cells in other colours (a segmented rendering): each channel
            # inverted with probability 0.5, then a random mix of the channels in half of them
            recolour = chosen & (u(n, 1, 1, 1) < self.background_recolour)
            f = torch.where(recolour & (u(n, 3, 1, 1) < 0.5), 255 - f, f)
            f = _mix(f, recolour.view(n) & (u(n) < 0.5), u)
        if self.background > 0:  # after the renderings, so the background is the colour drawn
            f = torch.where(replace, colour.expand(n, 3, h, w), f)
        lo, hi = self.gain
        f = f * (lo + (hi - lo) * u(n, 1, 1, 1))
        if self.stain > 0:
            f = f * (1 + self.stain * (2 * u(n, 3, 1, 1) - 1))
        if self.contrast > 0:
            mean = f.mean(dim=(1, 2, 3), keepdim=True)
            f = (f - mean) * (1 + self.contrast * (2 * u(n, 1, 1, 1) - 1)) + mean
        f = f.clamp(0, 255)
        glo, ghi = self.gamma
        if (glo, ghi) != (1.0, 1.0):
            f = 255 * (f / 255) ** (glo + (ghi - glo) * u(n, 1, 1, 1))
        if self.blur > 0:
            f = torch.stack([_blur(f[i], float(self.blur * u(1))) for i in range(n)])
        if self.noise > 0:
            f = f + self.noise * u(n, 1, 1, 1) * torch.randn(n, 3, h, w, generator=gen)
        if self.occlusion > 0:
            for i in range(n):
                share = self.occlusion * float(u(1))
                oh, ow = max(1, int(h * share ** 0.5)), max(1, int(w * share ** 0.5))
                y0, x0 = int(u(1) * (h - oh + 1)), int(u(1) * (w - ow + 1))
                f[i, :, y0:y0 + oh, x0:x0 + ow] = 255 * float(u(1))
        return f.round().clamp(0, 255).to(torch.uint8)


def _mix(f: torch.Tensor, pick: torch.Tensor, u) -> torch.Tensor:
    """The images ``pick`` with each channel a random convex mix of the three (rows drawn from ``u``)."""
    n = f.shape[0]
    mix = torch.eye(3).repeat(n, 1, 1)
    rnd = u(n, 3, 3)
    rnd = rnd / rnd.sum(2, keepdim=True)
    mix[pick] = rnd[pick]
    return torch.einsum("ncd,ndhw->nchw", mix, f)


def cell_mask(images: torch.Tensor, threshold: float = 40.0, grow: int = 2) -> torch.Tensor:
    """(N, 3, H, W) uint8 → (N, 1, H, W) bool: the Romanowsky-stained white cells (blue above green
    by ``threshold`` more than the image's median pixel: nuclei and blast cytoplasm; red cells and
    the background are near its median), grown by ``grow`` pixels. Used to replace everything else
    (:class:`Photometric` ``background``)."""
    f = images.float()
    bg = (f[:, 2:3] - f[:, 1:2])
    stained = (bg - bg.flatten(1).median(1).values.view(-1, 1, 1, 1)) > threshold
    k = 2 * grow + 1
    return torch.nn.functional.max_pool2d(stained.float(), k, stride=1, padding=grow) > 0


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma < 0.3:
        return x
    r = max(1, int(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[0]
    y = torch.nn.functional.conv2d(x[None], k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
    y = torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)
    return y[0]
