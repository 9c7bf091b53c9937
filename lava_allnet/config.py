"""Configurations as dataclasses, and a registry of named model configs."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

CLASS_NAMES = ("Benign", "Early", "Pre", "Pro")


@dataclass(frozen=True)
class NeuronConfig:
    """SLAYER CUBA neuron parameters (for binary input; see fixed_point for scaling)."""

    threshold: float = 1.25
    current_decay: float = 0.25
    voltage_decay: float = 0.03
    # SLAYER multiplies tau_grad by 100 x threshold: a wide, nearly flat surrogate.
    # Measured on real smears: 0.03 / 3 (lava-dl's N-MNIST values) did not learn at
    # all; 1.0 / 0.5 fitted a 128-image subset to ~95% in 150 steps.
    tau_grad: float = 1.0
    scale_grad: float = 0.5


@dataclass(frozen=True)
class ModelConfig:
    """NeurALLNet: strided CUBA conv layers, optional SE gates, a dense readout.

    The image is the graded input of the first conv at every one of the
    ``time_steps`` steps; the class is the output population with the most
    spikes over those steps (ties go to the lowest class index).
    """

    name: str = "neurallnet"
    input_size: int = 128
    in_channels: int = 3
    time_steps: int = 16
    channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    strides: tuple[int, ...] = (2, 2, 2, 2, 2)
    kernel_size: int = 3
    se: tuple[bool, ...] = (False, False, True, True, True)
    se_reduction: int = 4
    gate_levels: int = 64
    input_bits: int = 6
    population: int = 8
    # mean-only batch norm on each CUBA layer: a per-channel neuron bias on Loihi
    # (measured: val accuracy 0.48 → 0.67 after 2 epochs on real smears at 64 px)
    norm: bool = True
    num_classes: int = 4
    class_names: tuple[str, ...] = CLASS_NAMES
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    # Integer gain per weight layer (conv1..convN, then fc; empty: all 1). A layer's threshold,
    # weights, bias and states all scale by its gain, so it computes the same function with its
    # 8-bit weight grid g times finer relative to the threshold, at g times the state range.
    # Measured on the shipped model: conv2 and conv3 used 11-13 weight levels and 2% of the range.
    threshold_gains: tuple[int, ...] = ()
    # A static image pays for its input once: it is sent at the first step of each image's window
    # only, into a conv1 whose current barely decays (1/4096 per step, Lava du = 0), so conv1's
    # current holds W·x for every step: one pass of synaptic ops instead of T (file format version 2).
    input_once: bool = False
    # The input front end (lava_allnet.frontend, JSON; "" = none): each image mapped to canonical
    # colour statistics before the encoding. Its reference statistics are fitted on the training images.
    frontend: str = ""

    def __post_init__(self) -> None:
        n = len(self.channels)
        if len(self.strides) != n or len(self.se) != n:
            raise ValueError("channels, strides and se must have the same length")
        if self.threshold_gains and len(self.threshold_gains) != n + 1:
            raise ValueError(f"threshold_gains needs {n + 1} values (conv1..conv{n}, fc), got {len(self.threshold_gains)}")
        if any(int(g) != g or g < 1 for g in self.threshold_gains):
            raise ValueError(f"threshold_gains must be positive integers, got {list(self.threshold_gains)}")
        from lava_allnet import fixed_point as fx  # lazy: fixed_point needs torch

        for name, thr in self.layer_thresholds().items():
            try:
                fx.threshold_mantissa(thr)
            except ValueError as exc:
                raise ValueError(f"{name}: threshold {thr:g} is outside Lava's 17-bit threshold range (lower its gain)") from exc
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for {self.num_classes} classes"
            )
        if self.time_steps < 1:
            raise ValueError("time_steps must be >= 1")

    def without_se(self) -> "ModelConfig":
        """No SE gate (the ablation); renamed (e.g. neurallnet-nose) unless it has none already."""
        if not any(self.se):
            return self
        return dataclasses.replace(self, se=tuple(False for _ in self.se), name=f"{self.name}-nose")

    def with_se(self, layers: Iterable[int]) -> "ModelConfig":
        """SE gates after exactly these conv layers (1-based); renamed (e.g. neurallnet-se12345) unless unchanged."""
        layers, n = set(layers), len(self.channels)
        if not layers or not layers <= set(range(1, n + 1)):
            raise ValueError(f"{self.name} has conv layers 1..{n}, got {sorted(layers)}")
        se = tuple(i + 1 in layers for i in range(n))
        if se == self.se:
            return self
        return dataclasses.replace(self, se=se, name=f"{self.name}-se{''.join(map(str, sorted(layers)))}")

    def gains(self) -> tuple[int, ...]:
        """threshold_gains with the default (1 per weight layer) filled in."""
        return tuple(int(g) for g in self.threshold_gains) or (1,) * (len(self.channels) + 1)

    def layer_thresholds(self) -> dict[str, float]:
        """Each weight layer's threshold: scaled to its input message ("1.0") and its gain."""
        from lava_allnet import fixed_point as fx

        scales = [1 << self.input_bits] + [self.gate_levels if se else 1 for se in self.se]
        names = [f"conv{i}" for i in range(1, len(self.channels) + 1)] + ["fc"]
        return {n: fx.scaled_threshold(self.neuron.threshold, s, g) for n, s, g in zip(names, scales, self.gains())}

    def feature_sizes(self) -> list[int]:
        """Spatial size after each conv (padding k//2)."""
        sizes, s = [], self.input_size
        pad = self.kernel_size // 2
        for stride in self.strides:
            s = (s + 2 * pad - self.kernel_size) // stride + 1
            sizes.append(s)
        return sizes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        if "neuron" in d and isinstance(d["neuron"], dict):
            d["neuron"] = NeuronConfig(**d["neuron"])
        for key in ("channels", "strides", "se", "class_names", "threshold_gains"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# A registry of named model configs (timm style).
MODELS: dict[str, ModelConfig] = {
    "neurallnet": ModelConfig(),
    # the SE ablation of the model card: the same network without SE gates
    "neurallnet-nose": ModelConfig().without_se(),
    # small and quick: `make demo` trains it in a few minutes on 2 CPU cores
    "neurallnet-demo": ModelConfig(
        name="neurallnet-demo",
        input_size=96,
        time_steps=8,
        channels=(16, 32, 64, 64),
        strides=(2, 2, 2, 2),
        se=(False, False, True, True),
        population=4,
    ),
    "neurallnet-tiny": ModelConfig(
        name="neurallnet-tiny",
        input_size=64,
        time_steps=8,
        channels=(8, 16, 32, 32),
        strides=(2, 2, 2, 2),
        se=(False, False, True, True),
        population=4,
    ),
}


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return dataclasses.replace(MODELS[name], **overrides) if overrides else MODELS[name]
