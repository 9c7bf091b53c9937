"""The input front end (fitted, integer, stored in the model file, applied by every backend), the
photometric augmentation, and the rate loss, as a recipe uses them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lava_allnet.frontend import EXACT_OFFSET_BOUND, OFFSET_BOUND, SHIFT, FrontEnd
from netx import format as nf

EXE = str(Path(sys.executable).parent / "lava-allnet")


def _gain(x: np.ndarray, g: float) -> np.ndarray:
    return np.clip(np.round(x.astype(np.float64) * g), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["reinhard", "anchor", "stretch"])
def test_front_ends_are_deterministic_integer_maps_that_undo_a_global_gain(name, synth_images):
    images = synth_images[0]
    fe = FrontEnd(name).fit(images)
    assert fe.reference and FrontEnd.from_json(fe.to_json()) == fe
    out = fe.apply(images)
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert np.array_equal(out, fe.apply(images.copy()))
    # a dimmer exposure (nothing clips) maps to (almost) the same image: rounding of the gain only
    dim = fe.apply(_gain(images, 0.6))
    assert np.abs(dim.astype(int) - out.astype(int)).mean() < 2.0, name
    # and the map really moves images towards the reference (not the identity)
    assert not np.array_equal(out, images)


def test_stretch_undoes_a_per_channel_gain_and_offset():
    rng = np.random.default_rng(0)
    x = rng.integers(40, 200, size=(2, 3, 32, 32)).astype(np.uint8)
    fe = FrontEnd("stretch").fit(x)
    y = np.clip(x.astype(int) * np.array([0.8, 1.0, 1.1])[None, :, None, None] + np.array([10, -5, 3])[None, :, None, None],
                0, 255).astype(np.uint8)
    assert np.abs(fe.apply(y).astype(int) - fe.apply(x).astype(int)).mean() < 1.5


def test_reinhard_bounds_its_offset_so_a_clipped_flat_channel_lands_near_white():
    fe = FrontEnd("reinhard", reference=[200.0, 200.0, 239.0, 30.0, 30.0, 11.0])
    rng = np.random.default_rng(0)
    img = rng.integers(120, 250, size=(1, 3, 32, 32)).astype(np.uint8)
    img[0, 2] = np.where(rng.random((32, 32)) < 0.05, 240, 255)  # blue clipped: std about 3
    out = fe.apply(img).astype(np.float64)
    for c in (0, 1):  # offsets within ±256: Reinhard exactly (to rounding)
        assert abs(out[0, c].mean() - 200) < 1 and abs(out[0, c].std() - 30) < 1
    _, o = fe.coefficients(img)
    assert o[0, 2] == -256 << SHIFT  # blue needs about -615 grey levels: bounded (module doc)
    assert out[0, 2].mean() > 250
    # the exact offset (format version 5) sets blue's mean and std to the reference's too, and leaves
    # the channels whose offsets were within the bound as they were
    exact = FrontEnd("reinhard", reference=fe.reference, offset_bound=EXACT_OFFSET_BOUND)
    _, oe = exact.coefficients(img)
    assert exact.exact_offset and not fe.exact_offset and oe[0, 2] < -500 << SHIFT
    out_e = exact.apply(img).astype(np.float64)
    assert np.array_equal(out_e[0, :2], out[0, :2])
    assert abs(out_e[0, 2].mean() - 239) < 1 and abs(out_e[0, 2].std() - 11) < 1


def _stored_in_and_refused_below(plain, fe: FrontEnd, field: str, version: int, tmp_path: Path) -> None:
    """A model file with front end ``fe`` is written in ``version`` and reads back equal; marked one
    version older, it is refused, naming ``field``."""
    import dataclasses

    import h5py

    from lava_allnet.errors import ModelFileError

    nf.write(dataclasses.replace(plain, frontend=fe), tmp_path / "fe.net")
    spec = nf.read(tmp_path / "fe.net")
    assert spec.format_version == version and spec.frontend == fe and FrontEnd.from_json(fe.to_json()) == fe
    with h5py.File(tmp_path / "fe.net", "r+") as f:
        f.attrs["format_version"] = version - 1
    with pytest.raises(ModelFileError, match=f"'{field}' needs format version {version}"):
        nf.read(tmp_path / "fe.net")


def test_an_offset_bound_is_stored_in_format_version_5_and_refused_in_an_older_file(se_model_file, tmp_path):
    import dataclasses

    ref = [200.0, 200.0, 239.0, 30.0, 30.0, 11.0]
    plain = nf.read(se_model_file)
    # the default bound is not stored: such a file is what it was before version 5
    assert "offset_bound" not in FrontEnd("reinhard", reference=ref).to_dict()
    nf.write(dataclasses.replace(plain, frontend=FrontEnd("reinhard", reference=ref)), tmp_path / "old.net")
    assert nf.read(tmp_path / "old.net").format_version == 2
    _stored_in_and_refused_below(plain, FrontEnd("reinhard", reference=ref, offset_bound=EXACT_OFFSET_BOUND),
                                 "offset_bound", 5, tmp_path)
    for bad in (0, EXACT_OFFSET_BOUND + 1, 2.5, True):
        with pytest.raises(ValueError, match="offset bound"):
            FrontEnd("reinhard", reference=ref, offset_bound=bad)
    assert FrontEnd("reinhard").offset_bound == OFFSET_BOUND


def _switching_median(images: np.ndarray, t: int) -> np.ndarray:
    """Reference: every pixel's 3x3 neighbourhood (edges replicated), sorted; the fifth value replaces
    a pixel further than t from it."""
    n, c, h, w = images.shape
    p = np.pad(images.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    med = np.sort(np.stack([p[:, :, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]), axis=0)[4]
    return np.where(np.abs(images - med) > t, med, images).astype(np.uint8)


def test_impulse_correction_is_the_switching_median_and_removes_salt_and_pepper(synth_images):
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    @settings(max_examples=40, deadline=None)
    @given(arrays(np.uint8, st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9))),
           st.integers(0, 254))
    def same_as_reference(x, t):
        got = FrontEnd("none", impulse=t).correct_impulses(x) if t else x
        assert np.array_equal(got, _switching_median(x, t) if t else x)

    same_as_reference()
    # a flat mid-grey image with 3% of its pixels set to 0 or 255 (all channels, as `robustness` does)
    # comes back exactly; a smooth image keeps every pixel; off, nothing changes
    rng = np.random.default_rng(0)
    flat = np.broadcast_to(np.array([120, 128, 110], np.uint8)[None, :, None, None], (2, 3, 64, 64)).copy()
    mask = rng.random((2, 1, 64, 64)) < 0.03
    noisy = np.where(mask, np.where(rng.random((2, 1, 64, 64)) < 0.5, 255, 0), flat).astype(np.uint8)
    fe = FrontEnd("none", impulse=90)
    assert not np.array_equal(noisy, flat) and np.array_equal(fe.correct_impulses(noisy), flat)
    ramp = np.broadcast_to(np.arange(64, dtype=np.uint8)[None, None, None, :] * 3, (1, 3, 64, 64)).copy()
    assert np.array_equal(fe.correct_impulses(ramp), ramp)
    assert np.array_equal(FrontEnd("none").correct_impulses(noisy), noisy) and np.array_equal(FrontEnd().apply(noisy), noisy)
    # an impulse within T of its neighbourhood stays (salt on a near-white background changes little)
    bright = flat + 100
    salted = np.where(mask, 255, bright).astype(np.uint8)
    assert np.array_equal(fe.correct_impulses(salted), salted)
    # in a colour front end it comes first: the statistics no longer see the impulses
    images = synth_images[0]
    plain = FrontEnd("reinhard").fit(images)
    fixed = FrontEnd("reinhard", reference=plain.reference, impulse=90)
    sp = images.copy()
    m = rng.random((len(sp), 1) + sp.shape[2:]) < 0.03
    sp = np.where(m, np.where(rng.random(m.shape) < 0.5, 255, 0), sp).astype(np.uint8)
    g_sp, _ = fixed.coefficients(fixed.correct_impulses(sp))
    g_clean, _ = fixed.coefficients(fixed.correct_impulses(images))
    g_plain, _ = plain.coefficients(sp)
    assert np.abs(g_sp / g_clean - 1).max() < np.abs(g_plain / g_clean - 1).max()
    assert np.array_equal(fixed.apply(sp), plain.apply(fixed.correct_impulses(sp)))
    for bad in (-1, 255, 2.5, True):
        with pytest.raises(ValueError, match="impulse threshold"):
            FrontEnd("reinhard", impulse=bad)


def test_an_impulse_threshold_is_stored_in_format_version_6_and_refused_in_an_older_file(se_model_file, tmp_path):
    plain = nf.read(se_model_file)
    ref = [200.0, 200.0, 239.0, 30.0, 30.0, 11.0]
    assert "impulse" not in FrontEnd("reinhard", reference=ref).to_dict()
    for fe in (FrontEnd("reinhard", reference=ref, offset_bound=EXACT_OFFSET_BOUND, impulse=90),
               FrontEnd("none", impulse=40)):
        _stored_in_and_refused_below(plain, fe, "impulse", 6, tmp_path)


def _on_black(cells: np.ndarray, side: int) -> np.ndarray:
    """(N, 3, h, w) cells pasted in the middle of a black (N, 3, side, side) image."""
    n, c, h, w = cells.shape
    out = np.zeros((n, c, side, side), np.uint8)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[:, :, y0:y0 + h, x0:x0 + w] = cells
    return out


def test_excluded_black_pixels_leave_the_statistics_and_stay_black(synth_images):
    images = synth_images[0][:4]
    assert FrontEnd.image_pixels(images).all()  # a smear has no black pixel
    plain = FrontEnd("reinhard", offset_bound=EXACT_OFFSET_BOUND).fit(images)
    fe = FrontEnd("reinhard", reference=plain.reference, offset_bound=EXACT_OFFSET_BOUND, exclude_black=True)
    assert np.array_equal(fe.apply(images), plain.apply(images))  # on smears: the same map, every value
    # cells (a 12x12 patch of each smear, every pixel above black) on black canvases of two sizes: with
    # the exclusion, the cells map by their own statistics, however much black surrounds them
    cells = np.maximum(images[:, :, 10:22, 10:22], 17)
    small, large = fe.apply(_on_black(cells, 16)), fe.apply(_on_black(cells, 48))
    assert np.array_equal(small[:, :, 2:14, 2:14], large[:, :, 18:30, 18:30])
    assert small[:, :, :2].max() == 0 and large[:, :, :18].max() == 0  # no image stays black
    # ... and that map is Reinhard on the cells alone (float reference, within the map's rounding)
    f = cells.astype(np.float64)
    mean, std = f.mean((2, 3), keepdims=True), f.std((2, 3), keepdims=True)
    ref = np.asarray(fe.reference)
    want = np.clip(ref[None, :3, None, None] + ref[None, 3:, None, None] * (f - mean) / std, 0, 255)
    assert np.abs(large[:, :, 18:30, 18:30] - want).max() <= 1.0
    # without it the black decides the statistics, and the cells move with the canvas's size
    lost = plain.apply(_on_black(cells, 48))[:, :, 18:30, 18:30]
    assert not np.array_equal(lost, large[:, :, 18:30, 18:30]) and (lost == 255).mean() > 0.5
    assert np.array_equal(fe.apply(np.zeros((1, 3, 8, 8), np.uint8)), np.zeros((1, 3, 8, 8), np.uint8))
    for bad, message in (({"exclude_black": 1}, "true or false"), ({"exclude_black": True, "name": "none"},
                                                                    "needs a colour map")):
        with pytest.raises(ValueError, match=message):
            FrontEnd(**{"name": "reinhard", **bad})


def test_excluded_black_is_stored_in_format_version_7_and_refused_in_an_older_file(se_model_file, tmp_path):
    plain = nf.read(se_model_file)
    ref = [200.0, 200.0, 239.0, 30.0, 30.0, 11.0]
    assert "exclude_black" not in FrontEnd("reinhard", reference=ref).to_dict()
    _stored_in_and_refused_below(plain, FrontEnd("reinhard", reference=ref, offset_bound=EXACT_OFFSET_BOUND,
                                                 impulse=90, exclude_black=True), "exclude_black", 7, tmp_path)


def test_an_unknown_or_unfitted_front_end_is_refused(synth_images):
    with pytest.raises(ValueError, match="one of none, reinhard, anchor, stretch"):
        FrontEnd("grey")
    with pytest.raises(ValueError, match="no reference statistics"):
        FrontEnd("anchor").apply(synth_images[0][:1])


@pytest.mark.parametrize("impulse, exclude_black", [(0, False), (90, False), (0, True)])
def test_the_model_file_carries_the_front_end_and_every_backend_applies_it(se_model_file, synth_images, tmp_path,
                                                                           impulse, exclude_black):
    from hw_targets.inference import Inputs, run_backend

    images = synth_images[0][:3]
    if impulse:  # salt-and-pepper, which the front end removes before anything else
        rng = np.random.default_rng(1)
        m = rng.random((3, 1) + images.shape[2:]) < 0.05
        images = np.where(m, np.where(rng.random(m.shape) < 0.5, 255, 0), images).astype(np.uint8)
    if exclude_black:  # cells on black: the left half of each image blacked out
        images = images.copy()
        images[..., : images.shape[-1] // 2] = 0
    plain = nf.read(se_model_file)
    fe = FrontEnd("reinhard" if exclude_black else "stretch", impulse=impulse,
                  exclude_black=exclude_black).fit(synth_images[0])
    import dataclasses

    nf.write(dataclasses.replace(plain, frontend=fe), tmp_path / "fe.net")
    spec = nf.read(tmp_path / "fe.net")
    assert spec.frontend == fe and spec.format_version == (7 if exclude_black else 6 if impulse else 2)
    if impulse or exclude_black:  # the correction or the exclusion acts on these images
        without = FrontEnd(fe.name, reference=fe.reference)
        assert not np.array_equal(fe.apply(images), without.apply(images))
    ids = [str(i) for i in range(3)]
    for backend in ("torch", "sim"):
        got = run_backend(spec, Inputs(images, ids, [None] * 3, []), backend)
        want = run_backend(plain, Inputs(fe.apply(images), ids, [None] * 3, []), backend)
        assert np.array_equal(got.output_neurons, want.output_neurons), backend
        assert all(np.array_equal(got.stage_steps[k], want.stage_steps[k]) for k in want.stage_steps), backend
    from hw_targets.verify import verify

    assert verify(spec, images)["identical"]


def test_photometric_augmentation_is_seeded_and_each_part_acts(synth_images):
    from training.augment import Photometric, cell_mask

    x = torch.from_numpy(synth_images[0][:4])
    full = Photometric(gain=(0.5, 1.4), gamma=(0.8, 1.25), contrast=0.2, stain=0.1, hue=0.5, noise=10.0, blur=1.2,
                       occlusion=0.2, background=1.0)
    a = full(x, torch.Generator().manual_seed(1))
    b = full(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and not torch.equal(a, x)
    assert not Photometric().active and torch.equal(Photometric()(x, torch.Generator().manual_seed(1)), x)
    for part in (dict(gain=(1.3, 1.3)), dict(gamma=(1.2, 1.2)), dict(contrast=0.3), dict(stain=0.2), dict(hue=1.0),
                 dict(noise=8.0), dict(blur=1.5), dict(occlusion=0.3), dict(background=1.0)):
        y = Photometric(**part)(x, torch.Generator().manual_seed(2))
        assert not torch.equal(y, x), part
    # over-exposure clips: the bright background saturates
    assert (Photometric(gain=(1.4, 1.4))(x, torch.Generator()) == 255).float().mean() > (x == 255).float().mean()
    m = cell_mask(x)
    assert m.shape == (4, 1, *x.shape[2:]) and 0 < m.float().mean() < 1
    # every replaced background black, or none; the cells kept as they were
    black = Photometric(background=1.0, background_black=1.0)(x, torch.Generator().manual_seed(3))
    assert black[~m.expand_as(x)].max() == 0 and torch.equal(black[m.expand_as(x)], x[m.expand_as(x)])
    coloured = Photometric(background=1.0, background_black=0.0)(x, torch.Generator().manual_seed(3))
    assert (coloured[~m.expand_as(x)] > 0).any() and torch.equal(coloured[m.expand_as(x)], x[m.expand_as(x)])
    # recoloured cells on black: the background black, the cells in other colours; none without a replacement
    re = Photometric(background=1.0, background_black=1.0, background_recolour=1.0)(x, torch.Generator().manual_seed(4))
    assert re[~m.expand_as(x)].max() == 0 and not torch.equal(re[m.expand_as(x)], x[m.expand_as(x)])
    assert torch.equal(Photometric(background_recolour=1.0)(x, torch.Generator().manual_seed(4)), x)


def test_a_recipe_with_front_end_augmentation_rate_loss_and_input_once_trains_and_exports(synth_dir, tmp_path):
    recipe = tmp_path / "v2.toml"
    recipe.write_text(f"""
[data]
root = "{synth_dir}"
[model]
name = "neurallnet-tiny"
input_size = 32
time_steps = 4
input_once = true
[frontend]
name = "stretch"
[augment]
gain = [0.6, 1.3]
background = 0.5
noise = 5.0
[losses.rate]
weight = 1.0
max_rate = 0.01
[schedule]
epochs = 1
batch_size = 8
seed = 3
""")
    r = subprocess.run([EXE, "train", "--recipe", str(recipe), "--out", str(tmp_path / "run")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "input front end stretch: reference" in r.stderr
    row = json.loads((tmp_path / "run" / "1-train" / "metrics.json").read_text())["history"][0]
    assert row["rate_loss"] > 0
    spec = nf.read(tmp_path / "run" / "model.net")
    assert spec.frontend.name == "stretch" and len(spec.frontend.reference) == 6 and spec.input.send_once
    cfg = json.loads((tmp_path / "run" / "1-train" / "config.json").read_text())
    assert json.loads(cfg["model"]["frontend"])["reference"] == spec.frontend.reference
    from hw_targets.verify import verify
    from lava_allnet.data import images as di

    imgs = di.load_images(di.collect_image_paths([synth_dir])[:3], 32).images
    assert verify(spec, imgs)["identical"]
