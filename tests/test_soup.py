"""training/soup.py: the uniform weight average of runs, and the checks that keep it meaningful."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lava_allnet.errors import AllnetError


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny fine-tunes of one start (seeds 5 and 6) on the start's saved split."""
    from lava_allnet.config import get_model_config
    from training.config import TrainConfig
    from lava_allnet.data import synth
    from training.trainer import train

    root = tmp_path_factory.mktemp("soup")
    data = root / "data"
    synth.generate_dataset(data, 12, size=32, seed=11)
    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    train(root / "start", cfg, TrainConfig(epochs=1, batch_size=8, seed=3), data_dir=data, show_progress=False)
    split = str(root / "start" / "split.json")
    for seed in (5, 6):
        tc = TrainConfig(epochs=1, batch_size=8, seed=seed, lr=0.05, init_from=str(root / "start" / "best.pt"),
                         split_from=split)
        train(root / f"r{seed}", cfg, tc, data_dir=data, show_progress=False)
    return root, data, cfg


def test_soup_is_the_mean_of_the_runs_and_exports_like_a_run(two_runs, tmp_path):
    from lava_allnet.data import images as di
    from netx.export import export
    from training.checkpoint import load_torch
    from training.trainer import load_trained
    from training.soup import soup

    root, data, cfg = two_runs
    a, b = (load_torch(root / f"r{s}" / "best.pt")["model"] for s in (5, 6))
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert moved, "the two fine-tunes must differ, or the mean proves nothing"
    summary = soup([root / "r5", root / "r6"], tmp_path / "s")
    mean = load_torch(tmp_path / "s" / "best.pt")["model"]
    for k in moved:
        assert torch.allclose(mean[k], (a[k].double() + b[k].double()).div(2).float(), atol=1e-7), k
    assert [Path(r["run"]).name for r in summary["runs"]] == ["r5", "r6"]
    assert json.loads((tmp_path / "s" / "soup.json").read_text())["runs"] == summary["runs"]
    assert (tmp_path / "s" / "split.json").read_bytes() == (root / "r5" / "split.json").read_bytes()
    # the soup directory is a run directory: it exports and runs like one
    net = load_trained(tmp_path / "s")
    spec = export(net, tmp_path / "s.net")
    assert spec.class_names == tuple(cfg.class_names)
    x = torch.from_numpy(di.load_images(di.scan_image_folder(data).paths[:8], 32).images)
    with torch.no_grad():
        counts = net(net.encode(x)).class_counts
    assert counts.shape == (8, cfg.num_classes) and counts.sum() > 0


def test_soup_refuses_runs_that_cannot_be_averaged(two_runs, tmp_path):
    from lava_allnet.config import get_model_config
    from training.config import TrainConfig
    from training.trainer import train
    from training.soup import soup

    root, data, cfg = two_runs
    with pytest.raises(AllnetError, match="at least two"):
        soup([root / "r5"], tmp_path / "x")
    with pytest.raises(AllnetError, match="given twice"):
        soup([root / "r5", root / "r5"], tmp_path / "x")
    with pytest.raises(AllnetError, match="is one of the runs"):
        soup([root / "r5", root / "r6"], root / "r6")
    with pytest.raises(AllnetError, match="no such run directory"):
        soup([root / "r5", root / "nope"], tmp_path / "x")
    # another seed without --split draws another split: its validation images were r5's training images
    train(tmp_path / "other", cfg, TrainConfig(epochs=1, batch_size=8, seed=9), data_dir=data, show_progress=False)
    with pytest.raises(AllnetError, match="split.json differs"):
        soup([root / "r5", tmp_path / "other"], tmp_path / "x")
    # another model config (T) means the same tensors do something else
    t6 = get_model_config("neurallnet-tiny", input_size=32, time_steps=6)
    tc = TrainConfig(epochs=1, batch_size=8, seed=5, split_from=str(root / "start" / "split.json"))
    train(tmp_path / "t6", t6, tc, data_dir=data, show_progress=False)
    with pytest.raises(AllnetError, match="model config differs .* time_steps"):
        soup([root / "r5", tmp_path / "t6"], tmp_path / "x")
    assert not (tmp_path / "x" / "best.pt").exists()
    # an existing soup is not overwritten
    soup([root / "r5", root / "r6"], tmp_path / "s")
    with pytest.raises(AllnetError, match="exists"):
        soup([root / "r5", root / "r6"], tmp_path / "s")


def test_average_states_keeps_equal_integers_and_refuses_unequal_ones():
    from training.soup import average_states

    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(3)}
    out = average_states([a, b], ["a", "b"])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and out["n"].item() == 3
    with pytest.raises(AllnetError, match="non-float n differs"):
        average_states([a, {**b, "n": torch.tensor(4)}], ["a", "b"])
    with pytest.raises(AllnetError, match="shape"):
        average_states([a, {**b, "w": torch.zeros(3)}], ["a", "b"])
    with pytest.raises(AllnetError, match="parameters differ"):
        average_states([a, {"w": b["w"]}], ["a", "b"])
