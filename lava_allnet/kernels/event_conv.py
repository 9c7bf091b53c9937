"""Event-driven convolution for spiking inputs (C++ kernels in ``csrc/sparse_conv.cpp``).

A conv layer fed by spikes sees ~90% zeros; its forward pass and weight
gradient can skip them, adding ``x * w[kh, kw, i, :]`` only for the non-zero
inputs (as the chip does). Measured on this 2-core machine at 10% density,
256 frames: 32->64 channels 32x32: forward 15.4 -> 10.1 ms, weight gradient
20.5 -> 13.1 ms; 64->128 16x16: 14.0 -> 6.3 and 19.7 -> 8.1 ms; 128->128 8x8:
6.7 -> 2.9 and 11.2 -> 3.7 ms. With 16 input channels (a few events per pixel)
or at 30% density mkldnn's dense kernels are as fast or faster, hence
:func:`worthwhile`. The forward result is exact, so equal to ``F.conv2d``:
inputs are integers (spikes, gated spikes) and weights lie on SLAYER's 2^-5
grid, so every product and partial sum is an exact float32 in any order.
"""
from __future__ import annotations

import torch

from lava_allnet.kernels import fast_cuba

MIN_CHANNELS = 32  # fewer input channels: too few events per pixel to pay
MAX_DENSITY = 0.2  # denser inputs: the dense GEMM wins


def supported(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups: int) -> bool:
    """Shape/layout conditions of the kernels: channels-last CPU float32, square kernel, no groups/dilation."""
    return (
        x.dim() == 4
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and x.is_contiguous(memory_format=torch.channels_last)
        and groups == 1
        and tuple(dilation) == (1, 1)
        and w.shape[2] == w.shape[3]
        and stride[0] == stride[1]
        and padding[0] == padding[1]
        and fast_cuba.available()
    )


def worthwhile(x: torch.Tensor) -> bool:
    """Whether skipping zeros beats the dense kernels for this input (x: (F, C, H, W))."""
    if x.shape[1] < MIN_CHANNELS or x.numel() == 0:
        return False
    # A speed decision only: a strided sample of ~64k values is enough (a full
    # count_nonzero took 5 ms). The step is odd, so with power-of-two channel
    # counts the sample visits every channel.
    flat = x.permute(0, 2, 3, 1).reshape(-1)  # channels-last memory order: a view
    sample = flat[:: max(1, flat.numel() // 65536) | 1]
    return int(torch.count_nonzero(sample)) <= MAX_DENSITY * sample.numel()


def conv2d(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """``F.conv2d(x, w, None, stride, padding)`` for channels-last x; channels-last result."""
    k = w.shape[2]
    ho = (x.shape[2] + 2 * padding - k) // stride + 1
    wo = (x.shape[3] + 2 * padding - k) // stride + 1
    out = fast_cuba._ops.sparse_conv_fwd(
        x.permute(0, 2, 3, 1), w.permute(2, 3, 1, 0).contiguous(), stride, padding, ho, wo
    )
    return out.permute(0, 3, 1, 2)


def conv2d_weight(x: torch.Tensor, k: int, grad: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """Weight gradient (O, C, k, k) of :func:`conv2d` given the output gradient."""
    g = grad.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    gw = fast_cuba._ops.sparse_conv_wgrad(x.permute(0, 2, 3, 1), g, k, stride, padding)
    return gw.permute(3, 2, 0, 1)
