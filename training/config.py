"""One training stage's configuration (what a recipe stage compiles to, and what a run directory keeps).

The fields are grouped by the recipe section that sets them (``recipes/README.md``). Each optional
training feature (``training/features.py``) checks its own fields; ``__post_init__`` runs those checks.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# peak learning rate for the synthetic smears (few images, few steps: a higher rate learns faster)
SYNTH_LR = 1e-2


@dataclass(frozen=True)
class TrainConfig:
    # [schedule]
    epochs: int = 10
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    # Adam's epsilon. SLAYER's surrogate gradients shrink ~30-100x per layer towards the input, so in
    # fine-tunes conv1-conv3 sit below 1e-8 and take little of Adam's step (metrics.json
    # adam_step_share); 1e-20 gives every layer its full step, which broke the 8-bit network at peak
    # rates on the real smears (research/experiments.md, runs M and N).
    adam_eps: float = 1e-8
    seed: int = 0
    threads: int = 0  # 0: torch default
    device: str = "cpu"  # torch device: cpu, or cuda[:N] (same arithmetic, float32 without TF32)
    init_from: str = ""  # a best.pt or exported .net to start from instead of a fresh initialisation
    init_teacher: bool = False  # start from the ANN teacher's features (training.distill.student_from_teacher)
    # [data]
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    split_from: str = ""  # a saved split.json to reuse instead of drawing one (e.g. the shipped model's)
    # [augment]
    augment: bool = True  # flips and 90-degree rotations
    color_jitter: float = 0.0  # strength of brightness / stain / contrast jitter (0: off)
    # photometric augmentation (training.augment.Photometric; all off by default)
    aug_gain: tuple[float, float] = (1.0, 1.0)
    aug_gamma: tuple[float, float] = (1.0, 1.0)
    aug_contrast: float = 0.0
    aug_stain: float = 0.0
    aug_hue: float = 0.0
    aug_noise: float = 0.0
    aug_blur: float = 0.0
    aug_occlusion: float = 0.0
    aug_background: float = 0.0
    aug_background_black: float = 0.5
    aug_background_recolour: float = 0.0
    # [losses]
    loss_scale: float = 10.0  # logits = loss_scale * output spike rate
    range_weight: float = 1e-3  # [losses.range]: the 24-bit state-range penalty (features.RangePenalty)
    distill_weight: float = 0.0  # [losses.distill]: share of the distillation term (features.Distillation); 0: off
    distill_temperature: float = 2.0
    activations_weight: float = 0.0  # [losses.activations]: graded students held to the teacher's hidden activations (graded.activation_loss); 0: off
    rate_weight: float = 0.0  # [losses.rate]: lava-dl's SparsityEnforcer on every spiking layer (features.RateLoss); 0: off
    rate_max: float = 0.01
    rate_layers: tuple[str, ...] = ()  # the layers that pay ([losses.rate] layers); (): every conv and dense layer
    # [teacher]: the ANN that distillation learns from
    teacher_epochs: int = 12
    teacher_seed: int | None = None  # None: the stage's seed
    teacher_consistency: float = 0.0  # weight of the Jensen-Shannon term between two photometric draws (distill.train_teacher); 0: off
    teacher_cells: float = 0.0  # weight of the term on the teacher's conv1-3 activations outside the stained cells (distill.outside_cells); 0: off
    teacher_path: str = ""  # where the teacher is kept (trained there if missing); "": the run directory's teacher.pt
    # [biases] (features.NormMeans): "batch", "fixed" or "keep" (the batch-norm means Lava deploys as biases)
    norm_means: str = "batch"
    learn_biases: bool = False
    bias_adam_eps: float | None = None  # None: adam_eps
    # [averaging] (features.WeightAveraging): from this epoch on, validate the running mean of the weights; 0: off
    average_from: int = 0
    # [model] family: "spiking" (the CUBA network) or "graded" (lava_allnet.graded: the ANN teacher fine-tuned
    # through graded messages, training/graded.py); [graded] threshold: each layer's message threshold in
    # units of its mean positive activation
    family: str = "spiking"
    graded_threshold: float = 1.0

    def __post_init__(self) -> None:
        from training import features

        if self.epochs < 1:
            raise ValueError(f"schedule.epochs {self.epochs}: at least 1")
        if self.batch_size < 1:
            raise ValueError(f"schedule.batch_size {self.batch_size}: at least 1")
        if not self.lr > 0:
            raise ValueError(f"schedule.lr {self.lr}: must be above 0")
        if not self.adam_eps > 0:
            raise ValueError(f"schedule.adam_eps {self.adam_eps}: must be above 0 (a parameter without gradient would divide 0 by 0)")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"data.val_fraction {self.val_fraction} and data.test_fraction {self.test_fraction}: shares in [0, 1) "
                             "that leave training images")
        if self.threads < 0:
            raise ValueError(f"schedule.threads {self.threads}: 0 (torch's default) or more")
        if self.color_jitter < 0:
            raise ValueError(f"augment.color_jitter {self.color_jitter}: 0 (off) or above")
        lo, hi = self.aug_gain
        if not 0 < lo <= hi:
            raise ValueError(f"augment.gain {list(self.aug_gain)}: 0 < low <= high")
        lo, hi = self.aug_gamma
        if not 0 < lo <= hi:
            raise ValueError(f"augment.gamma {list(self.aug_gamma)}: 0 < low <= high")
        for key in ("contrast", "stain", "noise", "blur"):
            if getattr(self, f"aug_{key}") < 0:
                raise ValueError(f"augment.{key} {getattr(self, f'aug_{key}')}: 0 (off) or above")
        for key in ("hue", "occlusion", "background", "background_black", "background_recolour"):
            if not 0 <= getattr(self, f"aug_{key}") <= 1:
                raise ValueError(f"augment.{key} {getattr(self, f'aug_{key}')}: a share in [0, 1]")
        if self.aug_background_recolour > 0 and self.aug_background == 0:
            raise ValueError(f"augment.background_recolour {self.aug_background_recolour}: recolours the background "
                             "replacements' cells, so it needs augment.background above 0")
        if not (math.isfinite(self.teacher_cells) and self.teacher_cells >= 0):
            raise ValueError(f"teacher.cells {self.teacher_cells}: 0 (off) or above")
        if not self.teacher_consistency >= 0:
            raise ValueError(f"teacher.consistency {self.teacher_consistency}: 0 (off) or above")
        if self.teacher_consistency > 0 and not self.photometric().active:
            raise ValueError(f"teacher.consistency {self.teacher_consistency}: compares two photometric draws of each "
                             "batch, so it needs [augment] draws")
        if self.loss_scale <= 0:
            raise ValueError(f"losses.logit_scale {self.loss_scale}: must be above 0")
        if self.family not in ("spiking", "graded"):
            raise ValueError(f"model.family {self.family!r}: \"spiking\" or \"graded\"")
        if not self.graded_threshold > 0:
            raise ValueError(f"graded.threshold {self.graded_threshold}: must be above 0")
        if not (math.isfinite(self.activations_weight) and self.activations_weight >= 0):
            raise ValueError(f"losses.activations.weight {self.activations_weight}: 0 (off) or above")
        if self.activations_weight > 0 and self.family != "graded":
            raise ValueError('losses.activations.weight: applies to model.family "graded" only')
        if self.family == "graded":
            if not self.init_teacher:
                raise ValueError('model.family "graded" starts from the ANN teacher: set schedule.init = "teacher"')
            spiking_only = {"losses.rate.weight": self.rate_weight > 0, "biases.means": self.norm_means != "batch",
                            "biases.learn": self.learn_biases}
            used = [k for k, v in spiking_only.items() if v]
            if used:
                raise ValueError(f'model.family "graded": {", ".join(used)} apply to the spiking network only')
        for feature in features.FEATURES:
            feature.check(self)

    def photometric(self):
        from training.augment import Photometric

        return Photometric(gain=tuple(self.aug_gain), gamma=tuple(self.aug_gamma), contrast=self.aug_contrast,
                           stain=self.aug_stain, hue=self.aug_hue, noise=self.aug_noise, blur=self.aug_blur,
                           occlusion=self.aug_occlusion, background=self.aug_background,
                           background_black=self.aug_background_black,
                           background_recolour=self.aug_background_recolour)

    @property
    def uses_teacher(self) -> bool:
        return self.distill_weight > 0

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
        known = {f.name for f in dataclasses.fields(cls)}
        retired = sorted(k for k in d if k not in known and d[k] not in (0, 0.0, False, None, "", [], (), [3], (3,)))
        if retired:
            raise ValueError(f"this run used training options that moved to research/ ({', '.join(retired)}); "
                             "resume it with lava-allnet 97121b9")
        for k in ("aug_gain", "aug_gamma", "rate_layers"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**{k: v for k, v in d.items() if k in known})
