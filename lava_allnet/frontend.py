"""Input front ends: each image mapped to canonical colour statistics before the graded encoding.

A front end is fitted once on training images (its reference statistics) and then applied per
image, with integer arithmetic: per channel, an affine map ``y = (x * gain + offset) >> 12``
(rounded, clipped to 0..255) whose integer gain and offset come from the image's own statistics
and the reference, the gain bounded to 0..``GAIN_BOUND`` and the offset to ±``offset_bound`` grey
levels. The offset bound is part of the map a model was trained with. Its default, ``OFFSET_BOUND``
(256), is the map of every model stored before format version 5: there a nearly flat channel (one
that clipped at 255, as most of the blue channel does from an exposure gain of about 1.2) needs a
larger offset, and its output lands near 255 instead of on the reference mean
(``research/saturation_probe.py``). ``EXACT_OFFSET_BOUND`` never binds (no offset that the gain
bound allows reaches it), so the map is exact Reinhard up to rounding; a bound other than the
default is stored in the model file (format version 5). The same uint8 image gives the same uint8 result on every
machine, and both backends see exactly what the other sees. Stored in the model file (``netx.format``), so every
command applies it without a flag.

Before the statistics, a front end can correct impulse noise (``impulse`` T > 0, model file format
version 6): each pixel whose value in a channel differs from the median of its 3×3 neighbourhood in
that channel (edges replicated) by more than T grey levels takes that median. This is a camera's
dead- and hot-pixel correction (a switching median): salt-and-pepper pixels never reach the
statistics or the network, while a clean image keeps almost every pixel (T = 90: 0.01% of the
validation images' pixels change; the model card's twenty-second amendment).

A front end can treat black as no image (``exclude_black``, model file format version 7): a pixel
whose every channel is at most ``BLACK`` grey levels (after the impulse correction) is left out of
the statistics and sent as 0. A segmented or masked image (cells on black) is then mapped by its
cells' statistics, not by a background that is most of the image and would push the cells to
white; a smear, which has no such pixels, maps exactly as without it.

- ``none``: the identity (after the impulse correction, if any).
- ``reinhard``: each channel's mean and standard deviation set to the reference's (Reinhard et
  al. 2001, in RGB). Undoes a global gain, offset or stain tint exactly while nothing clips.
- ``anchor``: each channel scaled so that its ``percentile``-th percentile over pixels that are
  neither near-black nor saturated lands on the reference's. A pure gain anchored on the dark,
  stained nuclei: a clipped bright background or a black one does not move it.
- ``stretch``: each channel's ``percentile``-th and (100 - ``percentile``)-th percentiles over the
  same pixels mapped to the reference's: undoes any per-channel gain and offset (Reinhard's
  equalisation included) while the statistics' pixels do not clip.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

SHIFT = 12  # fixed-point bits of the per-image gain and offset
NAMES = ("none", "reinhard", "anchor", "stretch")
GAIN_BOUND, OFFSET_BOUND = 64, 256  # of the per-channel map, in units of 1 and of grey levels (module doc)
# |offset| = |reference mean - gain x mean| <= 255 + GAIN_BOUND x 255 < this: a bound that never binds
EXACT_OFFSET_BOUND = (GAIN_BOUND + 1) * 256
BLACK, SATURATED = 16, 250  # pixels excluded from the anchor's statistics (segmented backgrounds, clipping)


@dataclass
class FrontEnd:
    name: str = "none"
    reference: list[float] = field(default_factory=list)  # per-channel reference statistics (fitted)
    percentile: float = 5.0  # anchor
    offset_bound: int = OFFSET_BOUND  # grey levels (module doc); stored only when not the default
    impulse: int = 0  # switching-median threshold in grey levels (module doc); 0: off, stored only when on
    exclude_black: bool = False  # black pixels carry no image (module doc); stored only when on

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise ValueError(f"front end {self.name!r}: one of {', '.join(NAMES)}")
        b = self.offset_bound
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= EXACT_OFFSET_BOUND:
            raise ValueError(f"front end offset bound {b!r}: an integer in 1..{EXACT_OFFSET_BOUND} "
                             f"(grey levels; {OFFSET_BOUND}: the map before format version 5, "
                             f"{EXACT_OFFSET_BOUND}: never binds)")
        self.offset_bound = int(b)
        t = self.impulse
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t <= 254:
            raise ValueError(f"front end impulse threshold {t!r}: an integer in 0..254 (grey levels; 0: off)")
        self.impulse = int(t)
        if not isinstance(self.exclude_black, (bool, np.bool_)):
            raise ValueError(f"front end exclude_black {self.exclude_black!r}: true or false")
        self.exclude_black = bool(self.exclude_black)
        if self.exclude_black and self.name == "none":
            raise ValueError("front end exclude_black needs a colour map (reinhard, anchor or stretch), not 'none'")

    @property
    def identity(self) -> bool:
        """Maps every image to itself (no colour map, no impulse correction)."""
        return self.name == "none" and not self.impulse

    @property
    def exact_offset(self) -> bool:
        """The offset bound never binds: Reinhard is exact up to rounding."""
        return self.offset_bound >= EXACT_OFFSET_BOUND

    # --------------------------------------------------------------- statistics
    @staticmethod
    def image_pixels(images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) uint8 → (N, H, W) bool: the pixels that are not black (some channel above BLACK)."""
        return np.asarray(images).max(1) > BLACK

    def _stats(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) uint8 → (N, k) per-image statistics the map needs."""
        x = images.reshape(len(images), images.shape[1], -1)
        if self.name == "reinhard":
            s = x.astype(np.int64)
            if self.exclude_black:  # over the image's non-black pixels (all of them if it has none)
                keep = self.image_pixels(images).reshape(len(x), 1, -1)
                keep = keep | ~keep.any(-1, keepdims=True)
                n = keep.sum(-1)
                s = s * keep
            else:
                n = s.shape[-1]
            mean = s.sum(-1) / n
            var = (s * s).sum(-1) / n - mean * mean
            return np.concatenate([mean, np.sqrt(np.maximum(var, 0.0))], axis=1)
        if self.name in ("anchor", "stretch"):
            qs = [self.percentile] if self.name == "anchor" else [self.percentile, 100 - self.percentile]
            out = np.empty((len(x), x.shape[1] * len(qs)))
            valid = (images.max(1) > BLACK).reshape(len(x), -1)
            for i in range(len(x)):
                for c in range(x.shape[1]):
                    v = x[i, c][valid[i] & (x[i, c] < SATURATED)]
                    for k, q in enumerate(qs):
                        out[i, k * x.shape[1] + c] = _percentile(v if v.size else x[i, c], q)
            return out
        return np.zeros((len(x), 0))

    def fit(self, images: np.ndarray) -> "FrontEnd":
        """Reference statistics: the mean of the training images' own (per channel)."""
        if self.name != "none":
            self.reference = [round(float(v), 4) for v in self._stats(self.correct_impulses(images)).mean(0)]
        return self

    def correct_impulses(self, images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) uint8 → the same with the switching median applied (module doc); as is when off."""
        images = np.asarray(images)
        if not self.impulse or len(images) == 0:
            return images
        import cv2

        out = images.copy()
        for i in range(len(images)):
            for c in range(images.shape[1]):
                x = np.ascontiguousarray(images[i, c])
                med = cv2.medianBlur(x, 3)  # uint8, 3x3, edges replicated: exact on every machine
                bad = np.abs(x.astype(np.int16) - med) > self.impulse
                out[i, c][bad] = med[bad]
        return out

    # --------------------------------------------------------------- the map
    def coefficients(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per image and channel: integer gain and offset, y = (x * gain + offset) >> SHIFT, from the
        statistics of ``images`` as given (:meth:`apply` passes them impulse-corrected)."""
        n, c = images.shape[:2]
        one = 1 << SHIFT
        if self.name == "none":
            return np.full((n, c), one, np.int64), np.zeros((n, c), np.int64)
        if not self.reference:
            raise ValueError(f"front end {self.name!r} has no reference statistics (fit it first)")
        st = self._stats(images)
        ref = np.asarray(self.reference, dtype=np.float64)
        if self.name == "reinhard":
            mean, std = st[:, :c], np.maximum(st[:, c:], 1.0)
            rmean, rstd = ref[:c], ref[c:]
            gain = rstd / std
            offset = rmean - gain * mean
        elif self.name == "anchor":
            gain = ref[None, :] / np.maximum(st, 1.0)
            offset = np.zeros_like(gain)
        else:  # stretch: lo → ref_lo, hi → ref_hi
            lo, hi = st[:, :c], np.maximum(st[:, c:], st[:, :c] + 1.0)
            gain = (ref[c:] - ref[:c]) / (hi - lo)
            offset = ref[:c] - gain * lo
        g = np.clip(np.round(gain * one), 0, GAIN_BOUND * one).astype(np.int64)
        o = np.clip(np.round(offset * one), -self.offset_bound * one, self.offset_bound * one).astype(np.int64)
        return g, o

    def apply(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) uint8 → uint8 of the same shape."""
        images = self.correct_impulses(np.asarray(images))
        if self.name == "none" or len(images) == 0:
            return images
        g, o = self.coefficients(images)
        y = images.astype(np.int64) * g[:, :, None, None] + o[:, :, None, None] + (1 << (SHIFT - 1))
        y = np.clip(y >> SHIFT, 0, 255).astype(np.uint8)
        if self.exclude_black:
            y *= self.image_pixels(images)[:, None].astype(np.uint8)  # no image stays black
        return y

    def to_dict(self) -> dict:
        """The stored fields; ``offset_bound`` only when it is not the default (files before version 5),
        ``impulse`` only when on (files before version 6), ``exclude_black`` only when on (before 7)."""
        d = asdict(self)
        if d["offset_bound"] == OFFSET_BOUND:
            del d["offset_bound"]
        if not d["impulse"]:
            del d["impulse"]
        if not d["exclude_black"]:
            del d["exclude_black"]
        return d

    def to_json(self) -> str:
        """"" for the identity (what ``ModelConfig.frontend`` holds), else the JSON of :meth:`to_dict`."""
        import json

        return "" if self.identity else json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FrontEnd":
        import json

        return cls.from_dict(json.loads(text)) if text else cls()

    def apply_torch(self, images):
        """:meth:`apply` on a uint8 torch tensor (on any device); returns a tensor there."""
        if self.identity:
            return images
        import torch

        return torch.from_numpy(self.apply(images.cpu().numpy())).to(images.device)

    @classmethod
    def from_dict(cls, d: dict | None) -> "FrontEnd":
        if not d:
            return cls()
        known = {"name", "reference", "percentile", "offset_bound", "impulse", "exclude_black"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"front end: unknown fields {sorted(unknown)}")
        return cls(name=str(d.get("name", "none")), reference=[float(v) for v in d.get("reference", [])],
                   percentile=float(d.get("percentile", 5.0)), offset_bound=d.get("offset_bound", OFFSET_BOUND), impulse=d.get("impulse", 0),
                   exclude_black=d.get("exclude_black", False))


def _percentile(v: np.ndarray, q: float) -> float:
    """The q-th percentile of integer values by their histogram (the lower value at ties)."""
    counts = np.bincount(v.astype(np.int64).ravel(), minlength=256)
    k = int(np.ceil(q / 100 * max(1, v.size)))
    return float(np.searchsorted(np.cumsum(counts), max(1, k)))
