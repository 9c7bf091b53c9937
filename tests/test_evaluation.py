"""Clinical evaluation: metrics and CIs, robustness distortions, Grad-CAM — on real smears read in place."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REAL_DATA, REPO, real_images
from lava_allnet import evaluation as ev

EXE = str(Path(sys.executable).parent / "lava-allnet")
SHIPPED = REPO / "models" / "neurallnet-aria.net"
needs_real = pytest.mark.skipif(not (REAL_DATA / "original").is_dir(), reason="../shared/data/all-aria not present")


def test_bootstrap_ci_is_seeded_and_sensible():
    ok = np.r_[np.ones(90), np.zeros(10)]
    a = ev.bootstrap_ci(ok, 2000, seed=1)
    assert a == ev.bootstrap_ci(ok, 2000, seed=1)
    assert a[0] < 0.9 < a[1] and 0.82 < a[0] and a[1] < 0.97
    assert ev.bootstrap_ci(np.ones(50)) == (1.0, 1.0)


def test_report_per_class_and_confusion():
    rep = ev.classification_report([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], ("a", "b", "c"), resamples=1000)
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert rep["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert rep["per_class"]["c"]["recall"] == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ev.DISTORTIONS)
def test_distortions_change_images_increasingly(kind):
    rng = np.random.default_rng(0)
    img = rng.integers(60, 200, (2, 3, 48, 48), dtype=np.uint8)
    diffs = [np.abs(ev.distort(img, kind, s, seed=1).astype(int) - img).mean() for s in ev.SEVERITIES[kind]]
    assert all(d > 0 for d in diffs)
    if kind not in ("illumination", "rotation"):
        assert diffs == sorted(diffs), diffs
    assert ev.distort(img, kind, ev.SEVERITIES[kind][0], seed=1).dtype == np.uint8


def _split_of_real(tmp_path: Path, n: int = 2) -> Path:
    files = real_images(n)
    root = REAL_DATA / "original"
    doc = {"root": str(root), "seed": 0, "class_names": ["Benign", "Early", "Pre", "Pro"],
           "test": [str(p.relative_to(root)) for p in files], "train": [], "val": []}
    path = tmp_path / "split.json"
    path.write_text(json.dumps(doc))
    return path


@needs_real
def test_evaluate_on_real_images(se_model_file, tmp_path):
    split = _split_of_real(tmp_path)
    r = subprocess.run([EXE, "evaluate", str(se_model_file), str(REAL_DATA / "original"), "--split", str(split),
                        "--backend", "sim", "--json", "--out", str(tmp_path / "ev")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["n_images"] == 8 and len(rep["accuracy_ci95"]) == 2 and rep["bootstrap"]["resamples"] >= 1000
    assert set(rep["per_class"]) == {"Benign", "Early", "Pre", "Pro"}
    assert np.sum(rep["confusion_matrix"]) == 8
    for f in ("predictions.csv", "metrics.json", "confusion_matrix.png"):
        assert (tmp_path / "ev" / f).stat().st_size > 0
    lines = (tmp_path / "ev" / "predictions.csv").read_text().splitlines()
    assert len(lines) == 9 and lines[0].startswith("path,label,prediction")


@needs_real
def test_evaluate_refuses_foreign_classes(se_model_file, tmp_path):
    (tmp_path / "Mature").mkdir()
    src = real_images(1)[0]
    (tmp_path / "Mature" / "a.jpg").write_bytes(src.read_bytes())  # a temporary copy, outside the repo
    r = subprocess.run([EXE, "evaluate", str(se_model_file), str(tmp_path), "--backend", "torch"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not classes of the model" in r.stderr


@needs_real
def test_robustness_on_real_images(se_model_file, tmp_path):
    split = _split_of_real(tmp_path, 1)
    r = subprocess.run([EXE, "robustness", str(se_model_file), str(REAL_DATA / "original"), "--split", str(split),
                        "--json", "--out", str(tmp_path / "rob")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(rep["distortions"]) == set(ev.DISTORTIONS)
    assert all(len(rows) >= 3 for rows in rep["distortions"].values())
    for kind in ev.DISTORTIONS:
        assert (tmp_path / "rob" / f"robustness_{kind}.png").stat().st_size > 0


@needs_real
def test_explain_writes_a_heat_map(se_model_file, tmp_path):
    img = real_images(1)[0]
    out = tmp_path / "cam.png"
    r = subprocess.run([EXE, "explain", str(se_model_file), str(img), "--out", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 10_000


@needs_real
@pytest.mark.skipif(not SHIPPED.exists(), reason="shipped model not built yet")
def test_grad_cam_of_the_shipped_model_highlights_cells():
    """The heat map (default layer) is stronger on leukocytes (dark, stained) than elsewhere.

    Measured for the shipped model (models/README.md): median 1.25 at conv3, the default.
    """
    from lava_allnet.data.images import load_image
    from netx import format as nf
    from netx.export import network_from_spec

    spec = nf.read(SHIPPED)
    net = network_from_spec(spec)
    ratios = []
    for path in real_images(2):
        img = load_image(path, spec.input.shape[1])
        cam = ev.grad_cam(net, img)["cam"]
        grey = img.mean(0)
        cells = grey < np.percentile(grey, 20)  # the darkest fifth: stained nuclei
        ratios.append(cam[cells].mean() / max(cam[~cells].mean(), 1e-6))
    assert np.median(ratios) > 1.2, ratios


@needs_real
@pytest.mark.skipif(not SHIPPED.exists(), reason="shipped model not built yet")
def test_exposure_normalisation_restores_dimmed_smears(tmp_path):
    """Real smears reach 255 (so normalising changes nothing); dimmed ones are scaled back."""
    import torch

    from lava_allnet.data.images import load_images, normalize_exposure
    from netx import format as nf
    from netx.export import network_from_spec

    spec = nf.read(SHIPPED)
    net = network_from_spec(spec)
    images = load_images(real_images(2), spec.input.shape[1]).images
    assert np.array_equal(normalize_exposure(images), images)

    def predict(x):
        with torch.no_grad():
            return net(net.encode(torch.from_numpy(x))).predictions().numpy()

    clean = predict(images)
    dim = ev.distort(images, "illumination", 0.5)
    assert (predict(normalize_exposure(dim)) == clean).sum() >= 7
    assert (predict(dim) == clean).sum() <= 4  # measured: the raw model reads dim smears as one class
    r = subprocess.run([EXE, "run", str(SHIPPED), str(real_images(1)[0]), "--backend", "torch", "--normalize-exposure",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_robustness_does_not_depend_on_the_chunking(se_model_file, synth_images):
    """Each image draws its distortion from its own seed: one batch or chunks of 5, the same report."""
    from hw_targets.backends import TorchBackend
    from lava_allnet.result import make_results
    from netx import format as nf

    spec = nf.read(se_model_file)
    be = TorchBackend(spec)

    def predict(x):
        raw = be.run(x)
        res = make_results([str(i) for i in range(len(x))], spec.class_names, spec.population, raw.stage_steps,
                           raw.output_neurons)
        return np.asarray([r.predicted_index for r in res])

    images = synth_images[0]
    labels = np.arange(len(images)) % 4
    whole = ev.robustness(predict, images, labels, seed=3)
    chunked = ev.robustness(predict, ((images[i:i + 5], labels[i:i + 5]) for i in range(0, len(images), 5)), seed=3)
    assert whole == chunked
    noisy = ev.distort(images, "gaussian_noise", 16.0, seed=4)
    assert np.array_equal(noisy[7:], ev.distort(images[7:], "gaussian_noise", 16.0, seed=4, offset=7))
    assert not np.array_equal(noisy[7:], ev.distort(images[7:], "gaussian_noise", 16.0, seed=4))
