"""A frozen prefix's output spikes, computed once per training image and view.

Why: fine-tunes of the shipped model leave conv1-conv3 where they are (their gradients sit
far below Adam's epsilon; models/experiments.md, run L), yet those three layers hold most of the
neurons and cost ~80% of a training step on the CPU (measured: 0.35 s full against 0.07 s
from conv3 on, 16 images, one thread). With the prefix frozen, its output depends only on the
image and on which of the 8 flip/rotation views the augmentation drew, so it is computed once
per (image, view) and packed to one bit per spike (binary spikes): 2,185 images x 8 views of
conv3's 16 x 64 x 16 x 16 spikes take 573 MB.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from lava_allnet.model import ConvBlock, Network
from training import augment


def frozen_blocks(net: Network, through: str) -> list[str]:
    """The block names up to and including ``through``, a conv block (the read-out always follows)."""
    names = list(net.blocks)
    if through not in net.blocks or not isinstance(net.blocks[through], ConvBlock):
        convs = [n for n in names if isinstance(net.blocks[n], ConvBlock)]
        raise ValueError(f"{through!r}: not a conv layer of this network ({', '.join(convs)})")
    return names[: names.index(through) + 1]


def freeze(net: Network, through: str) -> int:
    """No gradient for the blocks up to ``through`` (weights, learned biases); returns their parameter count."""
    count = 0
    for name in frozen_blocks(net, through):
        for p in net.blocks[name].parameters():
            p.requires_grad_(False)
            count += p.numel()
    return count


@torch.no_grad()
def prefix_spikes(net: Network, encoded: torch.Tensor, through: str) -> torch.Tensor:
    """The output spikes (N, T, C, H, W) of block ``through`` for encoded images."""
    x = encoded
    for name in frozen_blocks(net, through):
        block = net.blocks[name]
        x = block(x, net.time_steps)[0] if isinstance(block, ConvBlock) else block(x)[0]
    return x


class PrefixCache:
    """Packed output spikes of a frozen prefix for every image and canonical view (augment.VIEWS)."""

    def __init__(self, net: Network, through: str, images: torch.Tensor, views: int = len(augment.VIEWS),
                 batch: int = 16, device: torch.device | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
        """images: (N, 3, H, W) uint8, the images in cache-row order; views: 8, or 1 without augmentation."""
        self.through = through
        self.views = views
        packed: list[np.ndarray] = []
        shape = None
        for i in range(0, len(images), batch):
            x = images[i : i + batch]
            rows = []
            for v in range(views):
                s = prefix_spikes(net, net.encode(augment.view(x, v).to(device)), through).cpu()
                if shape is None:
                    shape = tuple(s.shape[1:])
                if not bool(((s == 0) | (s == 1)).all()):
                    raise ValueError(f"{through}: its output is not binary spikes, which the cache packs to bits")
                rows.append(np.packbits(s.to(torch.uint8).reshape(len(x), -1).numpy(), axis=1))
            packed.append(np.stack(rows, axis=1))  # (n, views, bytes)
            if progress is not None:
                progress(len(x))
        self.shape: tuple[int, ...] = shape or ()
        self.bits = np.concatenate(packed) if packed else np.empty((0, views, 0), np.uint8)

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)

    def get(self, rows: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Spikes (B, T, C, H, W) float32 of cache rows ``rows`` in views ``views``."""
        if views.numel() and int(views.max()) >= self.views:
            raise ValueError(f"view {int(views.max())}: the cache holds {self.views}")
        sel = self.bits[rows.numpy(), views.numpy()]
        n = int(np.prod(self.shape))
        flat = np.unpackbits(sel, axis=1, count=n)
        return torch.from_numpy(flat).reshape(len(rows), *self.shape).float()


__all__ = ["PrefixCache", "freeze", "frozen_blocks", "prefix_spikes"]
