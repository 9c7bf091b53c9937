"""Seeded procedural generator of peripheral-blood-smear fields for ALL subtypes.

Real smear images cannot be shipped, so the embedded default dataset is drawn
here. Each field imitates a Wright/Giemsa-stained peripheral blood smear seen
through a 100x objective: pale erythrocytes (biconcave discs, central pallor)
on plasma, a few platelets, and one (sometimes two) lymphoid cells whose
morphology depends on the class.

Rendering is physical enough to mix colours correctly where things overlap:
every structure deposits stain *concentration* into a few maps, which are
turned into colour with Beer-Lambert absorbance (``I = I0 * exp(-OD)``).

Nuisance factors (stain hue/strength, illumination, vignetting, focus, noise,
red-cell density, magnification) are drawn from one distribution for every
class, so global colour statistics do not identify the class; only the
leukocyte morphology does, and its per-class distributions overlap.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")

# Red-cell diameter as a fraction of the field side; fixes the magnification
# (RBC ~7.5 um) so that every length below scales with the image size.
RBC_DIAMETER_FRAC = 0.15
MIN_SIZE = 32


@dataclass(frozen=True)
class Dist:
    """Normal distribution clipped to ``[lo, hi]`` (clipping keeps draws physical)."""

    mean: float
    sd: float
    lo: float
    hi: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(np.clip(rng.normal(self.mean, self.sd), self.lo, self.hi))


@dataclass(frozen=True)
class Morphology:
    """Per-class distribution of leukocyte morphology.

    Distributions deliberately overlap between classes: no single feature
    separates them, as in real smears where subtype calls need several cues.
    """

    diameter: Dist  # cell diameter, in red-cell diameters
    nc_ratio: Dist  # nucleus diameter / cell diameter
    chromatin_density: Dist  # mean stain in the nucleus: condensed (high) vs dispersed
    chromatin_grain: Dist  # texture correlation length / nucleus radius: fine (small) vs coarse
    chromatin_contrast: Dist  # texture amplitude: homogeneous (low) vs clumped/granular
    contour_irregularity: Dist  # low-order harmonics of the nuclear outline / radius
    cleft_prob: float  # chance of a nuclear indentation / cleft
    cleft_depth: Dist  # depth of the cleft / nucleus radius
    nucleoli_probs: tuple[float, ...]  # P(0 nucleoli), P(1), ...
    nucleolus_visibility: Dist  # how strongly a nucleolus clears the chromatin
    vacuole_prob: float  # chance of cytoplasmic vacuoles
    max_vacuoles: int
    basophilia: Dist  # cytoplasm colour: 0 pale lilac-grey, 1 deep blue


# Spreads are narrow enough that a small network learns the classes from a few hundred
# fields in a few epochs (the demo), wide enough that they overlap.
MORPHOLOGY: dict[str, Morphology] = {
    # Hematogones: small-to-medium cells, very high N:C with scant cytoplasm,
    # homogeneous condensed dark chromatin, smooth round nucleus, no nucleoli.
    "Benign": Morphology(
        diameter=Dist(1.25, 0.178, 1.1, 1.9),
        nc_ratio=Dist(0.9, 0.03, 0.78, 0.95),
        chromatin_density=Dist(1.15, 0.087, 0.7, 1.4),
        chromatin_grain=Dist(0.15, 0.034, 0.05, 0.3),
        chromatin_contrast=Dist(0.15, 0.048, 0.05, 0.4),
        contour_irregularity=Dist(0.02, 0.009, 0.0, 0.06),
        cleft_prob=0.05,
        cleft_depth=Dist(0.12, 0.039, 0.05, 0.3),
        nucleoli_probs=(0.92, 0.08),
        nucleolus_visibility=Dist(0.25, 0.078, 0.05, 0.5),
        vacuole_prob=0.03,
        max_vacuoles=2,
        basophilia=Dist(0.2, 0.126, 0.0, 1.0),
    ),
    # Early pre-B blasts: medium-large, fine dispersed chromatin, 1-2 faint
    # nucleoli, regular to slightly indented nucleus, scant-moderate cytoplasm.
    "Early": Morphology(
        diameter=Dist(1.65, 0.214, 1.3, 2.3),
        nc_ratio=Dist(0.84, 0.039, 0.7, 0.93),
        chromatin_density=Dist(0.72, 0.087, 0.45, 1.0),
        chromatin_grain=Dist(0.05, 0.018, 0.02, 0.15),
        chromatin_contrast=Dist(0.3, 0.066, 0.1, 0.6),
        contour_irregularity=Dist(0.035, 0.014, 0.0, 0.09),
        cleft_prob=0.15,
        cleft_depth=Dist(0.15, 0.048, 0.05, 0.3),
        nucleoli_probs=(0.1, 0.5, 0.35, 0.05),
        nucleolus_visibility=Dist(0.45, 0.096, 0.15, 0.8),
        vacuole_prob=0.1,
        max_vacuoles=3,
        basophilia=Dist(0.45, 0.126, 0.0, 1.0),
    ),
    # Pre-B blasts: larger, more and more basophilic cytoplasm, vacuoles
    # common, some nucleoli, mildly irregular nuclear contour.
    "Pre": Morphology(
        diameter=Dist(2.05, 0.245, 1.5, 2.7),
        nc_ratio=Dist(0.66, 0.043, 0.55, 0.85),
        chromatin_density=Dist(0.88, 0.096, 0.5, 1.15),
        chromatin_grain=Dist(0.08, 0.023, 0.02, 0.2),
        chromatin_contrast=Dist(0.28, 0.078, 0.1, 0.6),
        contour_irregularity=Dist(0.06, 0.018, 0.0, 0.12),
        cleft_prob=0.25,
        cleft_depth=Dist(0.18, 0.057, 0.05, 0.35),
        nucleoli_probs=(0.35, 0.4, 0.2, 0.05),
        nucleolus_visibility=Dist(0.4, 0.096, 0.1, 0.75),
        vacuole_prob=0.75,
        max_vacuoles=6,
        basophilia=Dist(0.85, 0.096, 0.3, 1.0),
    ),
    # Pro-B blasts: large, irregular/cleaved nucleus, 2-3 prominent nucleoli,
    # fine chromatin, moderate cytoplasm.
    "Pro": Morphology(
        diameter=Dist(2.45, 0.26, 1.6, 2.9),
        nc_ratio=Dist(0.76, 0.043, 0.62, 0.9),
        chromatin_density=Dist(0.58, 0.087, 0.4, 1.0),
        chromatin_grain=Dist(0.05, 0.018, 0.02, 0.15),
        chromatin_contrast=Dist(0.36, 0.078, 0.12, 0.7),
        contour_irregularity=Dist(0.1, 0.023, 0.03, 0.18),
        cleft_prob=0.75,
        cleft_depth=Dist(0.32, 0.066, 0.12, 0.5),
        nucleoli_probs=(0.0, 0.1, 0.45, 0.45),
        nucleolus_visibility=Dist(0.7, 0.096, 0.35, 0.95),
        vacuole_prob=0.2,
        max_vacuoles=3,
        basophilia=Dist(0.6, 0.126, 0.0, 1.0),
    ),
}


@dataclass(frozen=True)
class CellParams:
    """The morphology actually sampled for one leukocyte of a field."""

    center: tuple[float, float]  # (y, x) in pixels
    diameter_px: float
    nc_ratio: float
    chromatin_density: float
    chromatin_grain: float
    chromatin_contrast: float
    contour_irregularity: float
    cleft_depth: float  # 0.0 when the nucleus has no cleft
    n_nucleoli: int
    nucleolus_visibility: float
    n_vacuoles: int
    basophilia: float


@dataclass(frozen=True)
class FieldInfo:
    """What :func:`render_field_with_info` drew (ground truth for tests/analysis)."""

    cls: str
    size: int
    rbc_diameter_px: float
    n_rbc: int
    cells: tuple[CellParams, ...]


# Absorbance (OD per unit concentration) of each stained structure, RGB.
# Eosinophilic red cells absorb green/blue (pink); real smears range towards a
# grey-lavender tint, which the per-image mix below covers.
_OD_RBC_PINK = np.array([0.08, 0.34, 0.24], np.float32)
_OD_RBC_LAVENDER = np.array([0.22, 0.22, 0.10], np.float32)
_OD_PLASMA = np.array([0.03, 0.05, 0.03], np.float32)
_OD_CYTO_PALE = np.array([0.24, 0.27, 0.10], np.float32)  # lilac-grey cytoplasm
_OD_CYTO_BASO = np.array([0.62, 0.40, 0.10], np.float32)  # basophilic (RNA-rich) blue
_OD_CHROMATIN = np.array([0.85, 1.35, 0.32], np.float32)  # azure-eosin purple
# Planes of the (5, H, W) stain-concentration stack, in the order of the OD rows.
_PLASMA, _RBC, _CYTO_PALE, _CYTO_BASO, _NUCLEUS = range(5)


def _soft(signed_dist: np.ndarray, aa: float) -> np.ndarray:
    """Anti-aliased mask from a signed distance (positive inside), ~aa px ramp."""
    return np.clip(signed_dist / aa + 0.5, 0.0, 1.0)


def _window(
    size: int, cy: float, cx: float, half: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Image slice around (cy, cx) clipped to the field, with local coordinates."""
    y0, y1 = max(int(cy - half), 0), min(int(math.ceil(cy + half)) + 1, size)
    x0, x1 = max(int(cx - half), 0), min(int(math.ceil(cx + half)) + 1, size)
    if y0 >= y1 or x0 >= x1:
        return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit std: a cheap texture of given grain."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0.3:
        noise = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return noise / max(float(noise.std()), 1e-6)


def _sample_cell(
    rng: np.random.Generator, m: Morphology, rbc_d: float, center: tuple[float, float]
) -> CellParams:
    """Draw one leukocyte's morphology from the class distribution ``m``."""
    n_nucleoli = int(rng.choice(len(m.nucleoli_probs), p=m.nucleoli_probs))
    n_vac = int(rng.integers(1, m.max_vacuoles + 1)) if rng.random() < m.vacuole_prob else 0
    cleft = m.cleft_depth.sample(rng) if rng.random() < m.cleft_prob else 0.0
    return CellParams(
        center=center,
        diameter_px=m.diameter.sample(rng) * rbc_d,
        nc_ratio=m.nc_ratio.sample(rng),
        chromatin_density=m.chromatin_density.sample(rng),
        chromatin_grain=m.chromatin_grain.sample(rng),
        chromatin_contrast=m.chromatin_contrast.sample(rng),
        contour_irregularity=m.contour_irregularity.sample(rng),
        cleft_depth=cleft,
        n_nucleoli=n_nucleoli,
        nucleolus_visibility=m.nucleolus_visibility.sample(rng),
        n_vacuoles=n_vac,
        basophilia=m.basophilia.sample(rng),
    )


def _harmonic_radius(
    rng: np.random.Generator, theta: np.ndarray, amplitude: float, kmax: int
) -> np.ndarray:
    """Relative radius 1 + random harmonics 2..kmax (weaker at higher order): a lumpy outline."""
    ks = np.arange(2, kmax + 1)
    amps = rng.normal(0.0, amplitude / math.sqrt(len(ks) / 2), len(ks)) / np.sqrt(ks / 2)
    phases = rng.uniform(0, 2 * np.pi, len(ks))
    out = np.ones_like(theta)
    for k, a, p in zip(ks, amps, phases):
        out += np.float32(a) * np.cos(k * theta + p)
    return out


def _draw_cell(
    rng: np.random.Generator,
    c: CellParams,
    size: int,
    conc: np.ndarray,
    cell_mask: np.ndarray,
) -> None:
    """Deposit one lymphoid cell's stains into ``conc`` and its outline into ``cell_mask``."""
    rc = c.diameter_px / 2
    rn = rc * c.nc_ratio
    aa = max(size / 224.0, 0.6)
    win = _window(size, c.center[0], c.center[1], rc * 1.12 + 2)
    if win is None:
        return
    sl, yy, xx = win

    # Cell (cytoplasm) outline: nearly round, slightly lumpy.
    r = np.sqrt(yy * yy + xx * xx)
    th = np.arctan2(yy, xx)
    cell = _soft(rc * _harmonic_radius(rng, th, 0.025, 4) - r, aa)

    # Nucleus: often eccentric, leaving a crescent of cytoplasm.
    off = (rc - rn) * rng.uniform(0.0, 0.8)
    phi = rng.uniform(0, 2 * np.pi)
    ny, nx = off * math.sin(phi), off * math.cos(phi)
    nyy, nxx = yy - np.float32(ny), xx - np.float32(nx)
    rr = np.sqrt(nyy * nyy + nxx * nxx)
    tn = np.arctan2(nyy, nxx)
    nuc_r = rn * _harmonic_radius(rng, tn, c.contour_irregularity, 6)
    if c.cleft_depth > 0:
        # Indentation/cleft: a notch in the outline (kidney-shaped or cleaved nucleus).
        dth = np.angle(np.exp(1j * (tn - rng.uniform(0, 2 * np.pi)))).astype(np.float32)
        width = rng.uniform(0.25, 0.5)
        nuc_r = nuc_r - np.float32(c.cleft_depth * rn) * np.exp(-((dth / width) ** 2))
    nsd = nuc_r - rr
    nuc = _soft(nsd, aa) * cell

    # Chromatin: filtered noise; grain sets fine-dispersed vs coarse-clumped,
    # contrast sets homogeneous vs granular. A thin denser rim mimics the
    # nuclear membrane with its marginated chromatin.
    tex = _smooth_noise(rng, nuc.shape, c.chromatin_grain * rn)
    chrom = c.chromatin_density * np.clip(1.0 + c.chromatin_contrast * tex, 0.15, None)
    rim = _soft(nsd, aa) - _soft(nsd - 1.5 * aa, aa)
    chrom = chrom * (1.0 + 0.25 * rim)

    cyto = 0.75 * rng.uniform(0.8, 1.2) * cell * (1.0 - nuc)
    # Basophilic cytoplasm is deepest at the cell margin.
    cyto = cyto * (0.8 + 0.35 * np.clip(r / rc, 0, 1) * c.basophilia)

    for _ in range(c.n_nucleoli):
        # Nucleoli: pale, bluish, round clearings in the chromatin with a darker ring.
        rho = max(rn * rng.uniform(0.1, 0.18), 0.8 * aa)
        a, d = rng.uniform(0, 2 * np.pi), rn * rng.uniform(0.0, 0.55)
        dist = np.sqrt((nyy - d * math.sin(a)) ** 2 + (nxx - d * math.cos(a)) ** 2)
        nm = _soft(rho - dist, aa)
        ring = _soft(rho + aa - dist, aa) - nm
        chrom = chrom * (1.0 - 0.75 * c.nucleolus_visibility * nm)
        chrom = chrom + 0.3 * c.nucleolus_visibility * ring
        cyto = cyto + c.nucleolus_visibility * nm * nuc

    for _ in range(c.n_vacuoles):
        # Vacuoles: unstained holes, mostly in the cytoplasm, sometimes over the nucleus.
        rho = max(rc * rng.uniform(0.05, 0.1), 0.8 * aa)
        a, d = rng.uniform(0, 2 * np.pi), rc * rng.uniform(0.35, 0.85)
        dist = np.sqrt((yy - d * math.sin(a)) ** 2 + (xx - d * math.cos(a)) ** 2)
        hole = 1.0 - 0.85 * _soft(rho - dist, aa)
        cyto, chrom = cyto * hole, chrom * hole

    conc[_NUCLEUS][sl] += nuc * chrom
    conc[_CYTO_PALE][sl] += cyto * (1.0 - c.basophilia)
    conc[_CYTO_BASO][sl] += cyto * c.basophilia
    np.maximum(cell_mask[sl], cell, out=cell_mask[sl])


def _rbc_templates(rng: np.random.Generator, radius: float, aa: float, k: int) -> np.ndarray:
    """``k`` red-cell stamps (k, 2h+1, 2h+1) of varied size, ovality, pallor and subpixel phase."""
    h = int(math.ceil(1.15 * radius)) + 1
    g = np.arange(-h, h + 1, dtype=np.float32)
    rad = (radius * rng.uniform(0.88, 1.12, k)).astype(np.float32)[:, None, None]
    ecc = rng.uniform(0.0, 0.12, k).astype(np.float32)[:, None, None]
    ang = rng.uniform(0, np.pi, k)
    ca = np.cos(ang).astype(np.float32)[:, None, None]
    sa = np.sin(ang).astype(np.float32)[:, None, None]
    sub = rng.uniform(-0.5, 0.5, (2, k)).astype(np.float32)
    yy = g[None, :, None] - sub[0][:, None, None]
    xx = g[None, None, :] - sub[1][:, None, None]
    u = (xx * ca + yy * sa) / (1 + ecc)
    v = (yy * ca - xx * sa) / (1 - ecc)
    rr = np.sqrt(u * u + v * v)
    # Biconcave disc: thick rim, thin centre (the central pallor).
    pallor = rng.uniform(0.45, 0.8, k).astype(np.float32)[:, None, None]
    thick = 1.0 - pallor * np.clip(1.0 - (rr / rad) ** 2, 0.0, 1.0) ** 2
    return _soft(rad - rr, aa) * thick


def _draw_rbcs(
    rng: np.random.Generator,
    size: int,
    rbc_d: float,
    cells: Iterable[CellParams],
) -> tuple[np.ndarray, int]:
    """Eosin concentration of the red-cell layer and the number of red cells."""
    R = rbc_d / 2
    coverage = rng.uniform(0.35, 1.15)  # thin vs thick part of the smear
    n = int(round(coverage * (size + rbc_d) ** 2 / (math.pi * R * R)))
    cand = rng.uniform(-R, size + R, (3 * n + 8, 2))
    # Red cells are pushed aside by leukocytes (only rim overlap remains).
    keep = np.ones(len(cand), bool)
    for c in cells:
        d = np.hypot(cand[:, 0] - c.center[0], cand[:, 1] - c.center[1])
        keep &= d > c.diameter_px / 2 + 0.6 * R
    pos = np.rint(cand[keep][:n]).astype(np.int64)
    n = len(pos)

    tmpl = _rbc_templates(rng, R, max(size / 224.0, 0.6), 8)
    w = tmpl.shape[1]
    # Stamp onto a padded canvas (no border clipping); overlaps add up like the
    # absorbance of stacked cells.
    pad = w // 2 + int(math.ceil(R)) + 1
    canvas = np.zeros((size + 2 * pad, size + 2 * pad), np.float32)
    kinds = rng.integers(0, len(tmpl), n)
    gains = rng.uniform(0.85, 1.15, n).astype(np.float32)
    for (y, x), k, gain in zip(pos + (pad - w // 2), kinds, gains):
        canvas[y : y + w, x : x + w] += tmpl[k] * gain
    return canvas[pad : pad + size, pad : pad + size], n


def render_field_with_info(
    rng: np.random.Generator, cls: str, size: int = 224
) -> tuple[np.ndarray, FieldInfo]:
    """Render one smear field of class ``cls``; also return the sampled morphology."""
    if cls not in MORPHOLOGY:
        raise ValueError(f"unknown class {cls!r}; expected one of {CLASS_NAMES}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    m = MORPHOLOGY[cls]
    s = size
    rbc_d = RBC_DIAMETER_FRAC * s * math.exp(rng.normal(0.0, 0.06))  # magnification jitter

    # --- leukocytes: the cell of interest near the centre, sometimes a second one.
    jitter = rng.normal(0.0, 0.05 * s, 2)
    cells = [_sample_cell(rng, m, rbc_d, (s / 2 + jitter[0], s / 2 + jitter[1]))]
    if rng.random() < 0.2:
        # Same patient, so same class; placed beside the first, maybe cut by the border.
        c0, c1 = cells[0], _sample_cell(rng, m, rbc_d, (0.0, 0.0))
        a = rng.uniform(0, 2 * np.pi)
        d = (c0.diameter_px + c1.diameter_px) / 2 * rng.uniform(1.15, 1.8)
        centre = (c0.center[0] + d * math.sin(a), c0.center[1] + d * math.cos(a))
        cells.append(replace(c1, center=centre))

    conc = np.empty((5, s, s), np.float32)
    conc[_CYTO_PALE:] = 0.0
    cell_mask = np.zeros((s, s), np.float32)
    for c in cells:
        _draw_cell(rng, c, s, conc, cell_mask)
    # Smear thickness (plasma and red-cell layer) varies slowly across the field.
    coarse = rng.standard_normal((5, 5)).astype(np.float32)
    conc[_PLASMA] = 1.0 + 0.15 * cv2.resize(coarse, (s, s), interpolation=cv2.INTER_CUBIC)
    rbc, n_rbc = _draw_rbcs(rng, s, rbc_d, cells)
    # The leukocyte lies over / displaces the red cells.
    conc[_RBC] = rbc * conc[_PLASMA] * (1.0 - 0.7 * cell_mask)

    # Platelets: small purple granular fragments, same for every class.
    aa = max(s / 224.0, 0.6)
    for _ in range(int(rng.integers(0, 5))):
        win = _window(s, rng.uniform(0, s), rng.uniform(0, s), 0.2 * rbc_d + 2)
        if win is not None:
            sl, yy, xx = win
            pr = 0.12 * rbc_d * rng.uniform(0.6, 1.3)
            dist = np.sqrt(yy * yy / rng.uniform(0.6, 1.0) + xx * xx)
            conc[_NUCLEUS][sl] += 0.45 * _soft(pr - dist, aa)

    # --- stain: per-image strength and hue of each dye (same law for all classes).
    def jitter_od(od: np.ndarray) -> np.ndarray:
        return od * np.exp(rng.normal(0.0, 0.1, 3)).astype(np.float32)

    lav = rng.uniform(0.0, 0.5)
    od_rbc = (1 - lav) * _OD_RBC_PINK + lav * _OD_RBC_LAVENDER
    stains = np.stack(
        [
            jitter_od(_OD_PLASMA) * rng.uniform(0.3, 2.0),
            jitter_od(od_rbc) * rng.uniform(0.8, 1.25),
            jitter_od(_OD_CYTO_PALE),
            jitter_od(_OD_CYTO_BASO),
            jitter_od(_OD_CHROMATIN),
        ]
    ) * np.float32(math.exp(rng.normal(0.0, 0.15)))
    od = stains.T.astype(np.float32) @ conc.reshape(5, -1)  # (3, H*W)

    # --- illumination: lamp brightness/colour, vignetting and a tilt gradient.
    yy = np.arange(s, dtype=np.float32)[:, None] / np.float32(s) - 0.5
    xx = yy.reshape(1, s)
    g, ga = rng.uniform(0.0, 0.15), rng.uniform(0, 2 * np.pi)
    light = (1.0 - rng.uniform(0.0, 0.35) * (xx * xx + yy * yy) * 2) * (
        1.0 + g * (xx * math.cos(ga) + yy * math.sin(ga))
    )
    white = 255.0 * rng.uniform(0.84, 1.0) * np.exp(rng.normal(0.0, 0.035, 3))
    trans = cv2.exp(-od)
    img = cv2.merge([trans[i].reshape(s, s) * (light * np.float32(white[i])) for i in range(3)])

    # --- optics and sensor: focus blur, saturation response, noise.
    sigma = rng.uniform(0.35, 1.1) * s / 224.0
    if sigma > 0.25:
        img = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
    img = grey + np.float32(rng.uniform(0.8, 1.2)) * (img - grey)
    # Luminance-only sensor noise: a third of the cost of per-channel noise.
    img += np.float32(rng.uniform(1.0, 3.5)) * rng.standard_normal((s, s, 1), dtype=np.float32)
    out = cv2.convertScaleAbs(cv2.max(img, 0.0))  # rounds and saturates at 255
    return out, FieldInfo(cls, s, rbc_d, n_rbc, tuple(cells))


def render_field(rng: np.random.Generator, cls: str, size: int = 224) -> np.ndarray:
    """Render one ``size`` x ``size`` RGB uint8 smear field of class ``cls``."""
    return render_field_with_info(rng, cls, size)[0]


def image_rng(seed: int, class_idx: int, index: int) -> np.random.Generator:
    """RNG of one image, so any image can be regenerated independently of the others."""
    return np.random.default_rng([seed, class_idx, index])


def generate_dataset(
    out_dir: str | Path,
    per_class: int,
    size: int = 224,
    seed: int = 0,
    classes: Iterable[str] = CLASS_NAMES,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write an ImageFolder ``out_dir/<class>/<class>_<index:05d>.png``.

    Image ``i`` of class ``c`` depends only on ``(seed, CLASS_NAMES.index(c), i)``,
    so a larger ``per_class`` or a subset of ``classes`` reproduces the same files.
    ``progress(n_done, n_total)`` is called after every image.
    """
    classes = tuple(classes)
    for c in classes:
        if c not in MORPHOLOGY:
            raise ValueError(f"unknown class {c!r}; expected one of {CLASS_NAMES}")
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    out = Path(out_dir)
    total, done = per_class * len(classes), 0
    for c in classes:
        cdir = out / c
        cdir.mkdir(parents=True, exist_ok=True)
        ci = CLASS_NAMES.index(c)
        for i in range(per_class):
            img = render_field(image_rng(seed, ci, i), c, size)
            ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            if not ok:
                raise RuntimeError(f"PNG encoding failed for {c} #{i}")
            (cdir / f"{c}_{i:05d}.png").write_bytes(buf.tobytes())
            done += 1
            if progress is not None:
                progress(done, total)
    return {
        "out_dir": str(out),
        "classes": list(classes),
        "counts": {c: per_class for c in classes},
        "total": total,
        "per_class": per_class,
        "size": size,
        "seed": seed,
    }
