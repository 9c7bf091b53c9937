"""Hints (FitNets, Romero et al. 2015): the teacher's hidden features as targets for the student's.

Why: linear probes on the shipped student's time-summed spikes reach 0.88-0.92 validation
accuracy at conv3 and at most 0.96 at conv5, while the same probes on the ANN teacher's
ReLU outputs reach 0.98-0.99 from conv3 on (models/experiments.md). The gap opens in the early layers,
and the class loss reaches them only through several surrogate gradients, far below Adam's
epsilon. A hint puts a target right after the layer: its gradient is one layer deep.

The student's spike rates of a hinted layer go through a 1x1 conv (the adapter, trained with the
student and never exported) and are compared with the teacher's ReLU output of the same layer,
each channel divided by its RMS (fixed once), by mean squared error. The adapter starts at the
ridge-regression fit on training images, so the hint begins at its optimum for the current
features and pushes them only where the teacher's are not yet predictable from them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lava_allnet.config import ModelConfig
from lava_allnet.model import Network


def stage_name(cfg: ModelConfig, layer: int) -> str:
    """The student stage whose spikes the next layer receives: the SE gate's output if gated."""
    if not 1 <= layer <= len(cfg.channels):
        raise ValueError(f"hint layer {layer}: {cfg.name} has conv layers 1..{len(cfg.channels)}")
    return f"se{layer}.scale" if cfg.se[layer - 1] else f"conv{layer}"


def student_rates(activations: dict[str, torch.Tensor], net: Network, name: str) -> torch.Tensor:
    """(N, T, C, H, W) messages of a stage → (N, C, H, W) mean message per step."""
    return activations[name].sum(1) / net.time_steps


class Hint(torch.nn.Module):
    """One adapter and one target scale per hinted conv layer."""

    def __init__(self, cfg: ModelConfig, layers: tuple[int, ...]) -> None:
        super().__init__()
        if not layers:
            raise ValueError("hints need at least one layer")
        self.layers = tuple(sorted(set(int(k) for k in layers)))
        self.stages = {k: stage_name(cfg, k) for k in self.layers}
        self.adapters = torch.nn.ModuleDict({str(k): torch.nn.Conv2d(cfg.channels[k - 1], cfg.channels[k - 1], 1)
                                             for k in self.layers})
        for k in self.layers:
            self.register_buffer(f"scale{k}", torch.ones(cfg.channels[k - 1]))

    def keep(self) -> tuple[str, ...]:
        return tuple(self.stages.values())

    def loss(self, activations: dict[str, torch.Tensor], net: Network, targets: dict[int, torch.Tensor]) -> torch.Tensor:
        """Mean over hinted layers of the MSE between adapted student rates and scaled teacher features."""
        total = 0.0
        for k in self.layers:
            s = student_rates(activations, net, self.stages[k])
            pred = self.adapters[str(k)](s.float())
            target = targets[k] / getattr(self, f"scale{k}").view(1, -1, 1, 1)
            total = total + F.mse_loss(pred, target.to(pred.dtype))
        return total / len(self.layers)

    @torch.no_grad()
    def fit(self, net: Network, teacher, images: torch.Tensor, batch: int = 32, ridge: float = 1e-3) -> dict[int, float]:
        """Target scales (per-channel RMS of the teacher's features) and ridge-regression adapters
        from these uint8 images (N, 3, H, W); returns each layer's hint loss after the fit."""
        was = net.training
        net.eval()
        dev = next(net.parameters()).device
        xs: dict[int, list[torch.Tensor]] = {k: [] for k in self.layers}
        ys: dict[int, list[torch.Tensor]] = {k: [] for k in self.layers}
        for i in range(0, len(images), batch):
            x = images[i:i + batch].to(dev)
            out = net(net.encode(x), keep=self.keep())
            _, feats = teacher.forward_features(x, self.layers)
            for k in self.layers:
                xs[k].append(student_rates(out.activations, net, self.stages[k]).movedim(1, -1).reshape(-1, feats[k].shape[1]).double())
                ys[k].append(feats[k].movedim(1, -1).reshape(-1, feats[k].shape[1]).double())
        net.train(was)
        residual = {}
        for k in self.layers:
            x, y = torch.cat(xs[k]), torch.cat(ys[k])
            scale = y.pow(2).mean(0).sqrt().clamp_min(1e-6)
            y = y / scale
            xm, ym = x.mean(0), y.mean(0)
            xc, yc = x - xm, y - ym
            # ridge relative to each input's variance, so silent channels stay at zero weight
            gram = xc.T @ xc
            gram += ridge * torch.diag(gram.diagonal().clamp_min(1e-12))
            w = torch.linalg.solve(gram, xc.T @ yc)  # (C_in, C_out)
            conv = self.adapters[str(k)]
            conv.weight.copy_(w.T.reshape(conv.weight.shape).to(conv.weight.dtype))
            conv.bias.copy_((ym - xm @ w).to(conv.bias.dtype))
            getattr(self, f"scale{k}").copy_(scale.to(torch.float32))
            residual[k] = float(((xc @ w - yc) ** 2).mean())
        return residual


__all__ = ["Hint", "stage_name", "student_rates"]
