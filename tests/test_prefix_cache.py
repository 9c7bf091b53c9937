"""Frozen-prefix fine-tuning (train --freeze-through): the cached spikes are the prefix's, the
augmentation views are augment_batch's, and a step from the cache is the full network's step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training import augment


def test_view_indices_name_the_view_augment_batch_draws():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    for seed in range(3):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        got = augment.augment_batch(x, g1, strength=0)
        views = augment.view_indices(len(x), g2)
        assert torch.equal(got, torch.stack([augment.view(x[i], int(v)) for i, v in enumerate(views)]))
        assert len(set(views.tolist())) == 8  # 64 draws reach every symmetry of the square
    # the 16 draws cover the 8 symmetries twice each, so the cache's views are as likely as augment_batch's
    assert sorted(np.bincount(list(augment.VIEW_OF.values()))) == [2] * 8


def _net(synth_images):
    from lava_allnet.config import get_model_config
    from lava_allnet.model import build_model
    from training import loop

    torch.manual_seed(0)
    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=6)
    net = build_model(cfg)
    imgs = torch.from_numpy(np.ascontiguousarray(synth_images[0][:12]))
    net.calibrate(net.encode(imgs))
    net.train()
    net(net.encode(imgs))  # batch means into the running means
    loop.fix_norm_means(net)
    loop.learn_norm_means(net)
    return net, imgs


def test_a_step_from_the_cache_is_the_full_networks_step(synth_images):
    from training.prefix_cache import PrefixCache, freeze

    net, imgs = _net(synth_images)
    frozen = freeze(net, "conv2")
    assert frozen == sum(p.numel() for n in ("conv1", "conv2") for p in net.blocks[n].parameters())
    cache = PrefixCache(net, "conv2", imgs, batch=5)
    assert cache.nbytes == len(imgs) * 8 * int(np.ceil(np.prod(cache.shape) / 8))
    rows, views = torch.tensor([3, 0, 7, 11]), torch.tensor([5, 0, 2, 7])
    trained = [p for p in net.parameters() if p.requires_grad]

    def step(out):
        net.zero_grad(set_to_none=True)
        (out.class_counts.square().sum() + out.range_penalty).backward()
        return out.class_counts.detach(), [p.grad.clone() for p in trained]

    x = torch.stack([augment.view(imgs[r], int(v)) for r, v in zip(rows, views)])
    full = step(net(net.encode(x), range_penalty=True))
    cached = step(net(cache.get(rows, views), range_penalty=True, start_after="conv2"))
    assert full[0].sum() > 0 and torch.equal(full[0], cached[0])
    assert all(g.abs().sum() > 0 for g in full[1][:1])
    for a, b in zip(full[1], cached[1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert all(p.grad is None for p in net.blocks["conv1"].parameters())


def test_prefix_errors_are_clear(synth_images):
    from training.prefix_cache import PrefixCache, freeze

    net, imgs = _net(synth_images)
    with pytest.raises(ValueError, match="not a conv layer"):
        freeze(net, "se3")
    with pytest.raises(ValueError, match="not a conv layer"):
        freeze(net, "conv9")
    cache = PrefixCache(net, "conv1", imgs[:2], views=1)
    with pytest.raises(ValueError, match="the cache holds 1"):
        cache.get(torch.tensor([0]), torch.tensor([1]))


@pytest.fixture(scope="module")
def tiny_start(tmp_path_factory):
    """Synthetic smears and a tiny model trained one epoch on them, to fine-tune from."""
    from lava_allnet.config import TrainConfig, get_model_config
    from lava_allnet.data import synth
    from training.loop import train

    d = tmp_path_factory.mktemp("prefix")
    synth.generate_dataset(d / "data", 12, size=32, seed=11)
    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    train(d / "a", cfg, TrainConfig(epochs=1, batch_size=8, seed=3), data_dir=d / "data", show_progress=False)
    return cfg, d / "data", str(d / "a" / "best.pt")


def _timeless(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_freeze_through_trains_only_the_layers_after_it_and_resumes_exactly(tiny_start, tmp_path):
    from lava_allnet.config import TrainConfig
    from training.checkpoint import load_torch
    from training.loop import train

    cfg, data, init = tiny_start
    start = load_torch(init)["model"]
    tc = TrainConfig(epochs=2, batch_size=8, seed=3, lr=0.05, init_from=init, norm_means="keep", learn_biases=True,
                     bias_adam_eps=1e-20, freeze_through=2)
    ref = train(tmp_path / "ref", cfg, tc, data_dir=data, show_progress=False)
    trained = load_torch(tmp_path / "ref" / "checkpoint.pt")["model"]
    frozen = [k for k in start if k.startswith(("blocks.conv1.", "blocks.conv2."))]
    assert frozen and all(torch.equal(start[k], trained[k]) for k in frozen)
    assert not torch.equal(start["blocks.conv3.synapse.weight"], trained["blocks.conv3.synapse.weight"])
    assert not torch.equal(start["blocks.fc.synapse.weight"], trained["blocks.fc.synapse.weight"])
    assert set(ref["history"][-1]["adam_step_share"]) >= {"conv3.weight", "fc.weight"}
    assert not any(k.startswith(("conv1.", "conv2.")) for k in ref["history"][-1]["adam_step_share"])
    run = tmp_path / "killed"
    train(run, cfg, tc, data_dir=data, show_progress=False, stop_after_batches=5)
    resumed = train(run, resume=True, show_progress=False)  # the cache is rebuilt, to the same spikes
    assert _timeless(resumed["history"]) == _timeless(ref["history"])


def test_hints_after_the_frozen_prefix_train_from_the_cache(tiny_start, tmp_path):
    from lava_allnet.config import TrainConfig
    from training.checkpoint import load_torch
    from training.loop import train

    cfg, data, init = tiny_start
    start = load_torch(init)["model"]
    base = dict(epochs=1, batch_size=8, seed=3, lr=0.05, init_from=init, norm_means="keep", learn_biases=True,
                bias_adam_eps=1e-20, freeze_through=2, distill_weight=0.5, teacher_epochs=1)
    plain = train(tmp_path / "plain", cfg, TrainConfig(**base), data_dir=data, show_progress=False)
    hinted = train(tmp_path / "hinted", cfg, TrainConfig(**base, hint_weight=1.0, hint_layers=(3,)),
                   data_dir=data, show_progress=False)
    assert hinted["history"][0]["hint_loss"] > 0 and "hint_loss" not in plain["history"][0]
    got = {n: load_torch(tmp_path / n / "checkpoint.pt")["model"] for n in ("plain", "hinted")}
    frozen = [k for k in start if k.startswith(("blocks.conv1.", "blocks.conv2."))]
    assert frozen and all(torch.equal(start[k], got["hinted"][k]) for k in frozen)
    # the hint's gradient reaches conv3 through the cached path: same seed, different weights
    assert not torch.equal(got["plain"]["blocks.conv3.synapse.weight"], got["hinted"]["blocks.conv3.synapse.weight"])


def test_freeze_through_options_are_checked(tiny_start, tmp_path):
    from lava_allnet.config import TrainConfig
    from lava_allnet.errors import AllnetError
    from training.loop import train

    cfg, data, init = tiny_start
    for bad, match in [(dict(), "give init_from"), (dict(init_from=init), "held biases"),
                       (dict(init_from=init, norm_means="keep", color_jitter=1.0), "color_jitter must be 0"),
                       (dict(init_from=init, norm_means="keep", hint_weight=1.0, hint_layers=(3, 2)), "guides a frozen layer")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(freeze_through=2, **bad)
    with pytest.raises(AllnetError, match="conv5.*not a conv layer"):
        train(tmp_path / "x", cfg, TrainConfig(epochs=1, init_from=init, norm_means="keep", freeze_through=5),
              data_dir=data, show_progress=False)
