"""lava_allnet.data.synth: the embedded synthetic blood-smear dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from lava_allnet.data.synth import (
    CLASS_NAMES,
    MORPHOLOGY,
    FieldInfo,
    generate_dataset,
    image_rng,
    render_field,
    render_field_with_info,
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    summary = generate_dataset(
        tmp_path, per_class=3, size=64, seed=7, progress=lambda *a: calls.append(a)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CLASS_NAMES)
    for c in CLASS_NAMES:
        names = sorted(p.name for p in (tmp_path / c).iterdir())
        assert names == [f"{c}_{i:05d}.png" for i in range(3)]
        for name in names:
            with Image.open(tmp_path / c / name) as im:
                assert im.mode == "RGB" and im.size == (64, 64)
                a = np.asarray(im)
            assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert summary["counts"] == {c: 3 for c in CLASS_NAMES}
    assert (summary["size"], summary["seed"], summary["total"]) == (64, 7, 12)
    assert calls[-1] == (12, 12) and len(calls) == 12


def test_written_png_is_the_rendered_image(tmp_path: Path) -> None:
    generate_dataset(tmp_path, per_class=1, size=64, seed=3, classes=("Pre",))
    written = np.asarray(Image.open(tmp_path / "Pre" / "Pre_00000.png"))
    expected = render_field(image_rng(3, CLASS_NAMES.index("Pre"), 0), "Pre", 64)
    np.testing.assert_array_equal(written, expected)


def test_determinism_and_prefix(tmp_path: Path) -> None:
    a, b, c, d = (tmp_path / k for k in "abcd")
    generate_dataset(a, per_class=2, size=64, seed=0)
    generate_dataset(b, per_class=2, size=64, seed=0)
    generate_dataset(c, per_class=2, size=64, seed=1)
    generate_dataset(d, per_class=4, size=64, seed=0)
    fa, fb, fc, fd = map(_files, (a, b, c, d))
    assert fa == fb  # byte-identical
    assert fa.keys() == fc.keys() and all(fa[k] != fc[k] for k in fa)
    assert len(fd) == 16 and all(fd[k] == v for k, v in fa.items())
    # Images within a class differ too (per-image RNG streams).
    assert fd["Pro/Pro_00000.png"] != fd["Pro/Pro_00001.png"]


def test_class_subset_reproduces_full_dataset(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "all", per_class=1, size=64)
    generate_dataset(tmp_path / "sub", per_class=1, size=64, classes=("Pro",))
    assert _files(tmp_path / "sub") == {
        k: v for k, v in _files(tmp_path / "all").items() if k.startswith("Pro/")
    }


@pytest.mark.parametrize("size", [32, 64, 128, 224, 256])
def test_sizes(size: int) -> None:
    img, info = render_field_with_info(np.random.default_rng(size), "Early", size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    # Morphology scales with the field: cell of interest near the centre, sized in RBC units.
    (cy, cx) = info.cells[0].center
    assert abs(cy - size / 2) < 0.25 * size and abs(cx - size / 2) < 0.25 * size
    assert 0.12 * size < info.rbc_diameter_px < 0.19 * size
    assert info.n_rbc > 10
    assert 30 < img.mean() < 250 and img.std() > 5


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        render_field(np.random.default_rng(0), "Mature", 64)
    with pytest.raises(ValueError):
        render_field(np.random.default_rng(0), "Pro", 16)
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, per_class=1, classes=("Benign", "Other"))


def test_background_is_a_pale_pink_smear_with_purple_nucleus() -> None:
    """Colour sanity: light background, and the central nucleus is purple/blue (B > G)."""
    for ci, c in enumerate(CLASS_NAMES):
        img, info = render_field_with_info(image_rng(0, ci, 0), c, 128)
        f = img.astype(np.float32)
        assert np.percentile(f.mean(-1), 90) > 170  # bright plasma between cells
        cy, cx = (int(round(v)) for v in info.cells[0].center)
        r = max(int(info.cells[0].diameter_px * info.cells[0].nc_ratio / 4), 1)
        core = f[cy - r : cy + r + 1, cx - r : cx + r + 1].reshape(-1, 3).mean(0)
        assert core[2] > core[1] + 30 and core.mean() < np.percentile(f.mean(-1), 90) - 40  # darker than plasma


# ---------------------------------------------------------------------------
# Class information: in the morphology, not in global colour statistics.

_N, _SIZE = 40, 64


def _nucleus_features(img: np.ndarray, info: FieldInfo) -> list[float]:
    """Crude image morphometry of the cell of interest: nucleus size, stain density, cytoplasm.

    Optical density against the field's own background undoes illumination; the
    nucleus is where the red channel is strongly absorbed (red cells barely absorb red).
    """
    f = img.astype(np.float32) + 1.0
    od = np.log(np.percentile(f.reshape(-1, 3), 97, axis=0) / f).clip(0, None)
    cy, cx = info.cells[0].center
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    rbc = info.rbc_diameter_px
    roi = (yy - cy) ** 2 + (xx - cx) ** 2 < (1.35 * rbc) ** 2
    nuc = roi & (od[..., 0] > 0.35)
    cyto = roi & ~nuc & (od[..., 0] > 0.12) & (od[..., 0] > 0.9 * od[..., 1])
    od_n = od[..., 0][nuc] if nuc.any() else np.zeros(1)
    size, cyto_size = np.sqrt(nuc.sum()) / rbc, np.sqrt(cyto.sum()) / rbc
    return [size, float(od_n.mean()), float(od_n.std()), cyto_size]


@pytest.fixture(scope="module")
def small_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    colour, morph, y = [], [], []
    for ci, c in enumerate(CLASS_NAMES):
        for i in range(_N):
            img, info = render_field_with_info(image_rng(0, ci, i), c, _SIZE)
            px = img.reshape(-1, 3).astype(np.float64)
            colour.append(np.r_[px.mean(0), px.std(0)])
            morph.append(_nucleus_features(img, info))
            y.append(ci)
    return np.array(colour), np.array(morph), np.array(y)


def _cv_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(clf, x, y, cv=cv).mean())


def test_global_colour_statistics_do_not_identify_class(small_set) -> None:
    colour, morph, y = small_set
    acc_colour = _cv_accuracy(colour, y)
    assert acc_colour < 0.45  # chance is 0.25
    # The same simple classifier on a few morphology measurements does far better.
    assert _cv_accuracy(morph, y) > acc_colour + 0.15
    bp = (y == 0) | (y == 3)
    assert _cv_accuracy(colour[bp], y[bp]) < 0.7
    assert _cv_accuracy(morph[bp], y[bp]) > 0.8


def test_image_morphology_follows_haematology(small_set) -> None:
    _, morph, y = small_set
    size, density = morph[:, 0], morph[:, 1]
    benign, pro = y == 0, y == 3
    # Hematogones: smaller nucleus with denser (more condensed) chromatin than Pro-B blasts.
    assert size[pro].mean() > size[benign].mean() + 0.15
    assert density[benign].mean() > density[pro].mean() + 0.1


def test_sampled_morphology_overlaps_but_combines() -> None:
    """No single sampled feature separates the classes (each < 0.8 of 4 classes); together they do."""
    feats, y = [], []
    for ci, c in enumerate(CLASS_NAMES):
        for i in range(100):
            _, info = render_field_with_info(image_rng(1, ci, i), c, 32)
            p = info.cells[0]
            feats.append([
                p.diameter_px / info.rbc_diameter_px, p.nc_ratio, p.chromatin_density,
                p.chromatin_grain, p.chromatin_contrast, p.contour_irregularity, p.cleft_depth,
                p.n_nucleoli, p.nucleolus_visibility, p.n_vacuoles, p.basophilia,
            ])
            y.append(ci)
    x, y = np.array(feats), np.array(y)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    for j in range(x.shape[1]):
        tree = DecisionTreeClassifier(max_depth=3, random_state=0)
        assert cross_val_score(tree, x[:, [j]], y, cv=cv).mean() < 0.8, j
    assert _cv_accuracy(x, y) > 0.8
    means = {c: x[y == i].mean(0) for i, c in enumerate(CLASS_NAMES)}
    assert means["Benign"][0] < means["Early"][0] < means["Pre"][0] < means["Pro"][0]  # size
    assert means["Benign"][1] > means["Pre"][1]  # N:C ratio
    assert means["Pro"][7] > means["Early"][7] > means["Benign"][7]  # nucleoli
    assert means["Pre"][9] == max(m[9] for m in means.values())  # vacuoles
    assert means["Pre"][10] == max(m[10] for m in means.values())  # basophilia
    assert set(MORPHOLOGY) == set(CLASS_NAMES)
