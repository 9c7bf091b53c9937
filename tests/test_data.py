"""Image loading: every odd input gives a clear error naming the file, or is converted sensibly."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lava_allnet.data import images as di
from lava_allnet.errors import DataError


def _save(path, arr, mode=None, **kw):
    Image.fromarray(arr, mode=mode).save(path, **kw)
    return path


def test_modes_are_converted_to_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    gray = _save(tmp_path / "g.png", rgb[..., 0])
    rgba = tmp_path / "a.png"
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 0, np.uint8)]), "RGBA").save(rgba)
    pal = tmp_path / "p.png"
    Image.fromarray(rgb).convert("P").save(pal)
    i16 = tmp_path / "i16.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(i16)  # 16-bit grayscale PNG
    for p in (gray, rgba, pal, i16):
        a = di.load_image(p, 32)
        assert a.shape == (3, 32, 32) and a.dtype == np.uint8, p
    # a fully transparent image is white, not black
    assert di.load_image(rgba, 32).min() == 255
    # 16-bit is scaled, not clipped: 257*v → v
    np.testing.assert_array_equal(di.load_image(i16, 50)[0, :40], np.asarray(Image.fromarray(rgb[..., 0]).resize((50, 50), Image.BILINEAR))[:40])


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "tiny", "huge_header", "folder", "missing"])
def test_bad_files_name_the_file(tmp_path, kind):
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    p = tmp_path / f"{kind}.jpg"
    if kind == "truncated":
        _save(p, rgb, quality=90)
        p.write_bytes(p.read_bytes()[:300])
    elif kind == "text":
        p.write_text("not an image")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "tiny":
        _save(p, rgb[:3, :3])
    elif kind == "huge_header":
        p = tmp_path / "huge.png"
        Image.new("1", (20000, 20000)).save(p)  # 400 Mpx, a few kB on disk
    elif kind == "folder":
        p.mkdir()
    with pytest.raises(DataError) as info:
        di.load_image(p, 32)
    assert p.name in str(info.value)
    assert "\n" not in str(info.value)


def test_a_bad_file_in_a_folder_is_skipped_and_reported(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    good = [_save(tmp_path / f"ok{i}.png", rgb) for i in range(3)]
    bad = tmp_path / "bad.png"
    bad.write_text("x")
    paths = sorted(good + [bad])
    loaded = di.load_images(paths, 32)
    assert len(loaded.paths) == 3 and loaded.images.shape == (3, 3, 32, 32)
    assert [p for p, _ in loaded.skipped] == [bad]
    with pytest.raises(DataError, match="bad.png"):
        di.load_images(paths, 32, strict=True)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        di.scan_image_folder(tmp_path / "nope")
    (tmp_path / "A").mkdir()
    with pytest.raises(DataError, match="class folder has no images"):
        di.scan_image_folder(tmp_path)
    rgb = np.zeros((16, 16, 3), np.uint8)
    _save(tmp_path / "A" / "x.png", rgb)
    (tmp_path / "Zebra").mkdir()
    _save(tmp_path / "Zebra" / "y.png", rgb)
    with pytest.raises(DataError, match=r"class folder\(s\) \['Zebra'\] are not classes of the model"):
        di.scan_image_folder(tmp_path, class_names=("A", "B"))
    ds = di.scan_image_folder(tmp_path)
    assert ds.class_names == ("A", "Zebra") and list(ds.labels) == [0, 1]


def test_split_is_stratified_seeded_and_reloadable(synth_dir, tmp_path):
    ds = di.scan_image_folder(synth_dir)
    a = di.stratified_split(ds.labels, 0.25, 0.25, seed=5)
    b = di.stratified_split(ds.labels, 0.25, 0.25, seed=5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    allidx = np.concatenate(list(a.values()))
    assert sorted(allidx.tolist()) == list(range(len(ds.labels)))
    for k in ("val", "test"):  # every class present in each part
        assert set(ds.labels[a[k]].tolist()) == set(range(4))
    di.save_split(tmp_path / "split.json", ds, a, 5)
    again = di.load_split(tmp_path / "split.json", ds)
    for k in a:
        np.testing.assert_array_equal(a[k], again[k])


def test_normalize_exposure_undoes_a_dimmer_exposure():
    from lava_allnet.data.images import normalize_exposure

    rng = np.random.default_rng(0)
    img = rng.integers(40, 256, (3, 3, 16, 16)).astype(np.uint8)
    img[:, 0, 0, 0] = 255  # every ALL smear image has a pixel at 255
    assert np.array_equal(normalize_exposure(img), img)
    dim = np.round(img * 0.5).astype(np.uint8)
    back = normalize_exposure(dim)
    assert np.abs(back.astype(int) - img).max() <= 2  # the dimmed image's rounding, times the gain of 2
    assert np.abs(dim.astype(int) - img).max() > 60
    black = np.zeros((1, 3, 4, 4), np.uint8)
    assert np.array_equal(normalize_exposure(black), black)
    with pytest.raises(ValueError, match="uint8"):
        normalize_exposure(img.astype(np.float32))
