"""``verify``: two backends on the same images, every message value of every stage compared.

The simulator writes each stage's messages per image and window step to memory-mapped files
(``StageCounters(record_dir=...)``); the torch reference computes the same tensors one image at a
time. Images go through in chunks (one compiled network per chunk), and each chunk's recordings
are deleted once compared, so memory and disk stay bounded whatever the number of images.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterator

import numpy as np

from lava_allnet.verify import ValueComparison
from netx import format as nf

SOURCES = ("torch", "sim", "sim-stock", "sim-float")


def torch_stage_values(net, images_uint8: np.ndarray, stages: list[str]) -> Iterator[tuple[dict, np.ndarray, int]]:
    """Per image: (stage → (T, neurons) values in Lava's (W, H, C) order, output neurons, range overflows)."""
    import torch

    with torch.inference_mode():
        for img in images_uint8:
            x = net.frontend.apply(np.ascontiguousarray(img[None]))
            out = net(net.encode(torch.from_numpy(x)), record=True, keep=tuple(stages))
            values = {}
            for name in stages:
                t = out.activations[name][0].numpy()  # (T, C, H, W) or (T, n)
                if t.ndim == 4:
                    t = np.swapaxes(t, -1, -3)
                values[name] = t.reshape(t.shape[0], -1)
            yield values, out.output_neurons[0].numpy(), int(out.overflow)


def recorded_stage_values(recorded: dict[str, tuple[str, tuple[int, ...]]], n: int) -> Iterator[dict]:
    """Per image: stage → (T, neurons) values read from a recording simulator run's files."""
    maps = {name: np.load(path, mmap_mode="r") for name, (path, _shape) in recorded.items()}
    for i in range(n):
        yield {name: m[i] for name, m in maps.items()}


def _sim(source: str, spec: nf.NetworkSpec, images: np.ndarray, record_dir: str):
    from hw_targets import sim

    return sim.run(spec, images, fast=source != "sim-stock", float_mode=source == "sim-float", record_dir=record_dir)


def verify(
    spec: nf.NetworkSpec,
    images_uint8: np.ndarray,
    *,
    reference: str = "torch",
    candidate: str = "sim",
    chunk: int = 8,
    progress: Callable[[int], None] | None = None,
    tamper: Callable[[dict[str, tuple[str, tuple[int, ...]]], int], None] | None = None,
) -> dict:
    """Compare ``reference`` and ``candidate`` (each one of :data:`SOURCES`) on every value.

    tamper: for tests, called with a chunk's candidate recording (stage → (file, shape)) and the
    chunk's first image index before it is compared, to change a recorded value.
    """
    chunk = max(1, chunk)
    return verify_chunks(spec, (images_uint8[i : i + chunk] for i in range(0, len(images_uint8), chunk)),
                         reference=reference, candidate=candidate, progress=progress, tamper=tamper)


def verify_files(spec: nf.NetworkSpec, paths: list, *, chunk: int = 8, **kw) -> tuple[dict, list]:
    """:func:`verify` on image files, loaded a chunk at a time; returns (report, skipped)."""
    from lava_allnet.data import images as di

    skipped: list = []

    def chunks():
        for i in range(0, len(paths), chunk):
            loaded = di.load_images(paths[i : i + chunk], spec.input.shape[1])
            skipped.extend(loaded.skipped)
            if len(loaded.images):
                yield loaded.images

    report = verify_chunks(spec, chunks(), **kw)
    report["skipped"] = [{"path": str(p), "reason": why} for p, why in skipped]
    return report, skipped


def verify_chunks(spec: nf.NetworkSpec, chunks, *, reference: str = "torch", candidate: str = "sim",
                  progress: Callable[[int], None] | None = None, tamper=None) -> dict:
    from netx.export import network_from_spec

    for s in (reference, candidate):
        if s not in SOURCES:
            raise ValueError(f"unknown source {s!r}; one of {', '.join(SOURCES)}")
    if reference != "torch" and candidate == "torch":
        reference, candidate = candidate, reference
    stages = spec.stage_names()
    net = network_from_spec(spec) if "torch" in (reference, candidate) else None
    cmp: ValueComparison | None = None
    predictions, overflows = [], [0]
    k = spec.layers[-1].shape[0] // spec.population
    start = 0
    for imgs in chunks:
        with tempfile.TemporaryDirectory(prefix="lava-allnet-verify-") as tmp:
            runs = {}
            for role, source in (("reference", reference), ("candidate", candidate)):
                if source != "torch":
                    d = os.path.join(tmp, role)
                    os.makedirs(d)
                    runs[role] = _sim(source, spec, imgs, d)
            shapes = next(iter(runs.values())).recorded if runs else None
            if cmp is None:
                cmp = ValueComparison({name: shapes[name][1] for name in stages}, spec.time_steps)
            if tamper is not None and "candidate" in runs:
                tamper(runs["candidate"].recorded, start)
            if reference == "torch":
                ref_stream = _torch_stream(net, imgs, stages, overflows)
            else:
                ref_stream = ((v, runs["reference"].output_neurons[i]) for i, v in
                              enumerate(recorded_stage_values(runs["reference"].recorded, len(imgs))))
            cand_run = runs["candidate"]
            cand_stream = recorded_stage_values(cand_run.recorded, len(imgs))
            for i, ((ref_values, ref_out), cand_values) in enumerate(zip(ref_stream, cand_stream)):
                cmp.add(start + i, ref_values, cand_values)
                predictions.append((_predict(ref_out, k, spec.population), _predict(cand_run.output_neurons[i], k,
                                                                                    spec.population)))
        start += len(imgs)
        if progress is not None:
            progress(start)
    report = cmp.report() if cmp is not None else {"n_images": 0, "identical": False, "layers": [],
                                                    "first_difference": None}
    names = spec.class_names
    report.update({
        "reference": reference,
        "candidate": candidate,
        "predictions_equal": all(a == b for a, b in predictions),
        "predictions": [{"reference": names[a], "candidate": names[b]} for a, b in predictions],
        "overflow": overflows[0],
    })
    report["identical"] = report["identical"] and report["predictions_equal"]
    return report


def _torch_stream(net, imgs, stages, overflows: list[int]):
    for values, out, ovf in torch_stage_values(net, imgs, stages):
        overflows[0] += ovf
        yield values, out


def _predict(output_neurons: np.ndarray, k: int, population: int) -> int:
    return int(np.argmax(np.asarray(output_neurons).reshape(k, population).sum(-1)))
