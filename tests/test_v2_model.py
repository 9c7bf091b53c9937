"""The v2 model (models/neurallnet-aria-v2.net, graded messages): its front end, its input paid
once, exact on Lava; and the spiking v2 (models/neurallnet-aria-v2-spiking.net) exact as well.

What the v2 issue checks on real images: predictions unchanged under global gains 0.6-1.4 (on 16
test images; beside it, what makes the dimmer half hold: the front end undoes dimmer exposures up
to rounding),
the input layer's synaptic operations for one image equal to one pass of the image, and `verify`
exact on at least 8 real images.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import REAL_DATA, real_images
from lava_allnet.shipped import model_path
from netx import format as nf

needs_real = pytest.mark.skipif(not (REAL_DATA / "original").is_dir(), reason="../shared/data/all-aria not present")
V2 = model_path("neurallnet-aria-v2")
V2_SPIKING = model_path("neurallnet-aria-v2-spiking")


def _load(paths) -> np.ndarray:
    from lava_allnet.data import images as di

    return di.load_images(paths, nf.read(V2).input.shape[1]).images


def _gain(images: np.ndarray, g: float) -> np.ndarray:
    """A global exposure change as the camera records it (scaled, rounded, clipped at 255): the
    `robustness` command's illumination distortion."""
    from lava_allnet.evaluation import distort

    return distort(images, "illumination", g)


def test_every_shipped_model_has_its_file_and_the_recipe_that_trained_it():
    from lava_allnet.errors import AllnetError
    from lava_allnet.shipped import MODELS, recipe_path

    for name, recipe in MODELS.items():
        assert model_path(name).is_file() and recipe_path(recipe).is_file(), name
    with pytest.raises(AllnetError, match="no shipped model 'neurallnet-v3'; shipped: neurallnet-aria, "):
        model_path("neurallnet-v3")


def test_v2_is_packaged_with_its_front_end_and_once_sent_input():
    spec = nf.read(V2)
    assert V2.stat().st_size <= 1.35e6
    assert spec.frontend.name == "reinhard" and len(spec.frontend.reference) == 6 and spec.frontend.exact_offset
    assert spec.frontend.impulse == 90  # dead- and hot-pixel correction: format version 6
    assert spec.frontend.exclude_black  # black pixels out of the statistics: format version 7
    assert spec.graded and spec.input.send_once and spec.time_steps == 1 and spec.format_version == 7
    assert spec.class_names == ("Benign", "Early", "Pre", "Pro")
    assert spec.calibration is not None
    spiking = nf.read(V2_SPIKING)
    assert not spiking.graded and spiking.input.send_once and spiking.time_steps == 8
    # fitted on the same training images (v2's after its impulse correction, which moves its statistics
    # by less than 0.01 grey levels); the spiking v2 keeps the bounded offset it was trained with
    assert np.allclose(spiking.frontend.reference, spec.frontend.reference, atol=0.01, rtol=0)
    assert spiking.frontend.reference != spec.frontend.reference and not spiking.frontend.exact_offset
    assert not spiking.frontend.impulse and spiking.format_version == 3


def _test_images() -> np.ndarray:
    """16 test-split images (4 per class) at the model's input size."""
    from lava_allnet.api import dataset_inputs

    return dataset_inputs(nf.read(V2), REAL_DATA / "original", V2.with_name("neurallnet-aria.split.json"), "test",
                          limit=16).images


def _predictions_under_gains(images: np.ndarray, gains) -> dict[float, list[str]]:
    """The predicted classes (torch) at gain 1 and at each gain."""
    import lava_allnet

    model = lava_allnet.load(V2)
    return {g: [r["prediction"] for r in model.predict(_gain(images, g), backend="torch")] for g in (1.0, *gains)}


@needs_real
@pytest.mark.realdata
def test_v2_front_end_maps_dimmer_exposures_back_onto_the_same_input():
    """Gains 0.6 and 0.8 on real images: after the colour map every pixel is within the rounding of
    the recorded (dimmer) image of its value at gain 1: at most 2 grey levels, 0.4 on average. The
    impulse correction before it decides on absolute differences (90 grey levels), so a pixel near
    that threshold can be corrected at one gain and not at the other: measured on these 16 images,
    15 of 786,432 values (0.002%) differ by more than 2."""
    from lava_allnet.frontend import FrontEnd

    images = _test_images()
    fe = nf.read(V2).frontend
    colour = FrontEnd(fe.name, reference=fe.reference, offset_bound=fe.offset_bound)  # without the correction
    for f, worst_share in ((colour, 0.0), (fe, 1e-4)):
        base = f.apply(images).astype(int)
        for g in (0.6, 0.8):
            diff = np.abs(f.apply(_gain(images, g)).astype(int) - base)
            assert (diff > 2).mean() <= worst_share and diff.mean() < 0.5, (g, diff.max(), diff.mean())
            raw = np.abs(_gain(images, g).astype(int) - images.astype(int))
            assert raw.mean() > 50 * diff.mean()  # what the network would see without the front end


@needs_real
@pytest.mark.realdata
def test_v2_predictions_barely_move_under_dimmer_exposure():
    """Measured on the 16 images: gains 0.6 and 0.8 move no prediction (the spiking v2 moved one at
    0.8: the rounding above changes up to 10% of the input messages, so one is allowed)."""
    pred = _predictions_under_gains(_test_images(), (0.6, 0.8))
    for g in (0.6, 0.8):
        assert sum(a != b for a, b in zip(pred[g], pred[1.0])) <= 1, g


@needs_real
@pytest.mark.realdata
def test_v2_predictions_do_not_move_under_global_gains_0_6_to_1_4():
    """The v2 issue's check: predictions unchanged under global gains 0.6-1.4 (measured on these 16
    images: 0 / 0 / 0 / 0 changed at 0.6 / 0.8 / 1.2 / 1.4 by run 150, the first v2 to pass it, though
    brighter exposures still clip the background and most of the blue channel at 255, and on the
    whole test split it keeps 0.949 at gain 1.3 (models/README.md, v2); run 135, the v2 before it:
    0 / 0 / 1 / 0; run 128, the v2 before run 135, and run 90: 0 / 0 / 0 / 1; run 76: 0 / 0 /
    0 / 2; run 73: 0 / 0 / 1 / 2; run 67: 0 / 0 / 0 / 2; run 46: 0 / 0 / 1 / 3; run 21: 0 / 0 / 1 / 1; run 15, with the bounded offset: 0 / 0 / 3 / 4;
    the spiking v2: 0 / 1 / 4 / 6)."""
    pred = _predictions_under_gains(_test_images(), (0.6, 0.8, 1.2, 1.4))
    assert all(pred[g] == pred[1.0] for g in (0.6, 0.8, 1.2, 1.4))


@needs_real
def test_v2_input_layer_pays_for_one_image_once():
    """The input layer's synaptic ops for one real image are one pass of its non-zero pixels
    through conv1's fan-out (the spiking v2: not T passes)."""
    from hw_targets import profile as hp
    from hw_targets.inference import Inputs, run_backend
    from netx.analysis import stage_fanouts

    image = _load(real_images(1)[:1])
    for path in (V2, V2_SPIKING):
        spec = nf.read(path)
        fan = stage_fanouts(spec)
        run = run_backend(spec, Inputs(image, ["0"], [None], []), "torch", fanouts=fan)
        rows = {l["layer"]: l for l in hp.profile(spec, run, hp.load_target("loihi1"))["means"]["layers"]}
        x = spec.frontend.apply(image)[0] >> (8 - spec.input.message_bits)
        one_pass = int((fan["input"] * (x != 0)).sum())
        assert rows["input"]["synaptic_ops"] == one_pass, path.name


@needs_real
@pytest.mark.realdata
@pytest.mark.parametrize("path", [V2, V2_SPIKING], ids=["graded", "spiking"])
def test_v2_verify_is_exact_on_8_real_images(path):
    from hw_targets.verify import verify_files

    spec = nf.read(path)
    report, skipped = verify_files(spec, [str(p) for p in real_images(2)])
    assert not skipped and report["n_images"] == 8
    assert report["identical"], report["first_difference"]
    for layer in report["layers"]:
        assert layer["equal"] and layer["values_compared"] == layer["neurons"] * spec.time_steps * 8, layer
        assert layer["reference_messages"] > 0, layer  # every layer sends


@needs_real
def test_run_takes_a_shipped_models_name():
    import json
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "lava-allnet")
    img = str(real_images(1)[0])
    r = subprocess.run([exe, "run", "neurallnet-aria-v2", img, "--backend", "torch", "--json"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert Path(report["model"]).resolve() == V2.resolve() and report["n_images"] == 1
    assert report["results"][0]["probabilities"] is not None  # calibrated
