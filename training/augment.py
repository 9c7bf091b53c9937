"""Augmentation on uint8 images, seeded per batch so a resumed run repeats it exactly."""
from __future__ import annotations

import torch


def augment_batch(images: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Flips, 90° rotations (cells have no orientation) and mild illumination/stain jitter.

    images: (N, 3, H, W) uint8. Returns uint8 of the same shape.
    """
    n = images.shape[0]
    x = images.clone()
    flip_h = torch.rand(n, generator=gen) < 0.5
    flip_v = torch.rand(n, generator=gen) < 0.5
    rot = torch.randint(0, 4, (n,), generator=gen)
    for i in range(n):
        xi = x[i]
        if flip_h[i]:
            xi = xi.flip(-1)
        if flip_v[i]:
            xi = xi.flip(-2)
        if rot[i]:
            xi = torch.rot90(xi, int(rot[i]), dims=(-2, -1))
        x[i] = xi
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
