"""One compiled network streaming many images equals a fresh network per image (stock models)."""
from __future__ import annotations

import numpy as np

from hw_targets import sim
from netx import format as nf


def test_streamed_equals_fresh_network_per_image(se_model_file, synth_images):
    spec = nf.read(se_model_file)
    images = synth_images[0][:6]
    streamed = sim.run(spec, images, fast=True)
    # N*T steps plus the pipeline's depth: one conv or dense hop per weight layer, three per SE gate
    hops = sum(1 for l in spec.layers if isinstance(l, (nf.ConvSpec, nf.DenseSpec))) + 3 * sum(
        1 for l in spec.layers if isinstance(l, nf.SESpec))
    assert streamed.timing["steps"] == 6 * spec.time_steps + hops
    for i in range(len(images)):
        fresh = sim.run(spec, images[i : i + 1], fast=False)
        for name, counts in fresh.counts.items():
            np.testing.assert_array_equal(streamed.counts[name][i], counts[0], err_msg=f"image {i}, {name}")
        np.testing.assert_array_equal(streamed.output_neurons[i], fresh.output_neurons[0])
        for name, act in fresh.active.items():
            assert streamed.active[name][i] == act[0], (i, name)
    # not vacuous: neighbouring images differ, so a leak of state would show
    assert any(not np.array_equal(streamed.counts["conv1"][0], streamed.counts["conv1"][k]) for k in range(1, 6))


def test_workers_shard_the_images_identically(se_model_file, synth_images):
    spec = nf.read(se_model_file)
    images = synth_images[0][:4]
    one = sim.run(spec, images)
    two = sim.run_sharded(spec, images, workers=2)
    assert two.timing["workers"] == 2
    for name in one.counts:
        np.testing.assert_array_equal(one.counts[name], two.counts[name])
    np.testing.assert_array_equal(one.output_neurons, two.output_neurons)
