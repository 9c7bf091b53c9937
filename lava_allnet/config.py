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


NORM_MEANS = ("batch", "fixed", "keep")

# peak learning rate for the synthetic smears (few images, few steps: a higher rate learns faster)
SYNTH_LR = 1e-2


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    # Adam's epsilon. SLAYER's surrogate gradients shrink ~30-100x per layer towards the input: in
    # fine-tunes of the shipped model conv1-conv3's gradients (~1e-15..1e-12) sit far below 1e-8,
    # so Adam's step there is lr x |g| / eps, i.e. those layers barely train; 1e-20 restores Adam's
    # per-parameter scaling (measured: training/loop.adam_step_share). The default stays: with full
    # steps in every layer the 8-bit network broke at peak rates (models/experiments.md, runs M and N).
    adam_eps: float = 1e-8
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    loss_scale: float = 10.0  # logits = loss_scale * output spike rate
    augment: bool = True  # flips and 90-degree rotations
    color_jitter: float = 0.0  # strength of brightness / stain / contrast jitter (0: off)
    threads: int = 0  # 0: torch default
    range_weight: float = 1e-3  # weight of the 24-bit state-range penalty (fixed_point.state_range_penalty)
    init_from: str = ""  # a best.pt or exported .net to start from (fine-tuning) instead of a fresh initialisation
    split_from: str = ""  # a saved split.json to reuse instead of drawing one (e.g. the shipped model's)
    # knowledge distillation from an ANN of the same shape (training/distill.py); 0: off
    distill_weight: float = 0.0  # share of the distillation term in the loss (the rest: cross-entropy)
    distill_temperature: float = 2.0
    teacher_epochs: int = 12
    # hints (training/hint.py): weight of the loss between the student's and the teacher's
    # features after these conv layers (1-based); 0: off. Uses the distillation teacher.
    hint_weight: float = 0.0
    hint_layers: tuple[int, ...] = (3,)
    average_from: int = 0  # from this epoch on, validate and keep the running mean of the weights (0: off)
    # the batch-norm means (the biases Lava and Loihi deploy) in training, one of NORM_MEANS:
    # "batch": per-batch means, re-estimated after each epoch; "fixed": frozen at their inference
    # values, calibrated once over all training images; "keep": the --init model's own, frozen
    norm_means: str = "batch"
    # with "fixed" or "keep": the means start there and are trained by gradient like the weights
    learn_biases: bool = False
    # with learn_biases: Adam's epsilon for the biases alone (None: adam_eps). Their gradients sit
    # below 1e-8 too (run L moved 15 of its 400 bias steps), while the weights need that brake
    # (runs M and N broke without it): this unfreezes the biases only.
    bias_adam_eps: float | None = None
    # with learn_biases: train the biases only; the weights and SE gates stay as loaded
    freeze_weights: bool = False
    # Adam moves a weight by about lr per step whatever its scale, so a layer at threshold gain g
    # (weights g times larger) would learn g times slower; gain_lr gives its weights lr x g, which
    # keeps the training dynamics of gain 1 and leaves only the g-times finer 8-bit grid.
    gain_lr: bool = False
    device: str = "cpu"  # torch device: cpu, or cuda[:N] (same arithmetic, float32 without TF32)
    # fine-tuning: conv1..conv<k> (weights and biases) stay as loaded, and their output spikes are
    # computed once per training image and flip/rotation view (training/prefix_cache.py); 0: off
    freeze_through: int = 0

    def __post_init__(self) -> None:
        if self.norm_means not in NORM_MEANS:
            raise ValueError(f"norm_means {self.norm_means!r}: one of {', '.join(NORM_MEANS)}")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps {self.adam_eps}: must be above 0 (a parameter without gradient would divide 0 by 0)")
        if self.learn_biases and self.norm_means == "batch":
            raise ValueError("learned biases start from held means: norm_means 'fixed' or 'keep'")
        if (self.bias_adam_eps is not None or self.freeze_weights) and not self.learn_biases:
            raise ValueError("bias_adam_eps and freeze_weights act on learned biases: set learn_biases")
        if self.bias_adam_eps is not None and not self.bias_adam_eps > 0:
            raise ValueError(f"bias_adam_eps {self.bias_adam_eps}: must be above 0")
        if self.hint_weight < 0:
            raise ValueError(f"hint_weight {self.hint_weight}: must be 0 (off) or above")
        if self.hint_weight > 0 and not self.hint_layers:
            raise ValueError("hints need at least one conv layer")
        if self.freeze_through < 0:
            raise ValueError(f"freeze_through {self.freeze_through}: a number of conv layers, 0 (off) or above")
        if self.freeze_through:
            # the cached spikes must not depend on the batch, on jitter or on anything that trains
            if not self.init_from:
                raise ValueError("freeze_through keeps the first conv layers as loaded: give init_from")
            if self.norm_means == "batch":
                raise ValueError("freeze_through needs held biases (norm_means 'fixed' or 'keep'): a batch mean "
                                 "makes the frozen layers' spikes depend on the batch")
            if self.color_jitter > 0:
                raise ValueError("freeze_through caches the flip/rotation views only: color_jitter must be 0")
            if self.hint_weight > 0 and min(self.hint_layers) <= self.freeze_through:
                raise ValueError(f"hint_layers {list(self.hint_layers)}: a hint at conv1..conv{self.freeze_through} "
                                 "guides a frozen layer; hint the layers after freeze_through")

    @property
    def uses_teacher(self) -> bool:
        return self.distill_weight > 0 or self.hint_weight > 0

    @property
    def holds_norm_means(self) -> bool:
        """The batch-norm means are not re-estimated from batches (held, or trained as biases)."""
        return self.norm_means != "batch"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """A saved config, including those of runs from before ``norm_means`` (two booleans)."""
        d = dict(d)
        fixed, keep = d.pop("fixed_norm", False), d.pop("keep_norm", False)
        if fixed or keep:
            d.setdefault("norm_means", "fixed" if fixed else "keep")
        if "hint_layers" in d:
            d["hint_layers"] = tuple(d["hint_layers"])
        return cls(**d)


# A registry of named model configs (timm style).
MODELS: dict[str, ModelConfig] = {
    "neurallnet": ModelConfig(),
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
