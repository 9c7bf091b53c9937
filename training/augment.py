"""Augmentation on uint8 images, seeded per batch so a resumed run repeats it exactly."""
from __future__ import annotations

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


# The 16 (flip_h, flip_v, rot) draws give the 8 symmetries of the square, each twice. VIEWS
# lists one draw per symmetry (the canonical views a cache holds); VIEW_OF maps every draw to it.
VIEWS: tuple[tuple[bool, bool, int], ...] = tuple((fh, False, r) for fh in (False, True) for r in range(4))


def _view_table() -> dict[tuple[bool, bool, int], int]:
    probe = torch.arange(9).reshape(3, 3)  # no symmetry of its own: each view moves it differently
    canon = [_transform(probe, *v) for v in VIEWS]
    table = {}
    for fh in (False, True):
        for fv in (False, True):
            for r in range(4):
                moved = _transform(probe, fh, fv, r)
                table[(fh, fv, r)] = next(i for i, c in enumerate(canon) if torch.equal(c, moved))
    return table


VIEW_OF = _view_table()


def view_indices(n: int, gen: torch.Generator) -> torch.Tensor:
    """Which of :data:`VIEWS` :func:`augment_batch` with the same generator state gives each image
    (it must be called with ``strength`` 0: jitter is not a view)."""
    flip_h, flip_v, rot = draw_views(n, gen)
    return torch.tensor([VIEW_OF[(bool(h), bool(v), int(r))] for h, v, r in zip(flip_h, flip_v, rot)], dtype=torch.long)


def view(images: torch.Tensor, index: int) -> torch.Tensor:
    """All images (..., H, W) in canonical view ``index`` of :data:`VIEWS`."""
    return _transform(images, *VIEWS[index])


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
