"""The data path as one function: files → images → encoding → backend → Results."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lava_allnet.data import images as di
from lava_allnet.errors import DataError
from lava_allnet.result import Run, make_results
from lava_allnet.shipped import default_model

DEFAULT_MODEL = default_model()  # the shipped model (packaged; models/neurallnet-aria.net in the repository)


@dataclass
class Inputs:
    images: np.ndarray
    paths: list[Path]
    labels: list[int | None]
    skipped: list[tuple[Path, str]]


def load_inputs(
    inputs: Sequence[str | Path],
    size: int,
    class_names: Sequence[str],
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Inputs:
    """Image files and folders; a label comes from a parent folder named like a class."""
    paths = di.collect_image_paths(inputs)
    total = len(paths)
    loaded = di.load_images(paths, size, strict=strict,
                            progress=None if progress is None else (lambda k: progress(k, total)))
    labels = [di.label_from_path(p, class_names) for p in loaded.paths]
    return Inputs(loaded.images, loaded.paths, labels, loaded.skipped)


def load_dataset(
    root: str | Path,
    size: int,
    class_names: Sequence[str],
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Inputs:
    """An ImageFolder whose class folders must all be classes of the model."""
    ds = di.scan_image_folder(root, class_names=class_names)
    total = len(ds.paths)
    loaded = di.load_images(ds.paths, size, labels=list(ds.labels), strict=strict,
                            progress=None if progress is None else (lambda k: progress(k, total)))
    return Inputs(loaded.images, loaded.paths, [int(v) for v in loaded.labels], loaded.skipped)


def run_backend(
    spec,
    inputs: Inputs,
    backend: str,
    workers: int = 1,
    fast: bool = True,
    fanouts: dict[str, np.ndarray] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Run:
    from hw_targets.backends import get_backend

    be = get_backend(backend, spec, workers=workers, fast=fast)
    t0 = time.perf_counter()
    raw = be.run(inputs.images, fanouts=fanouts, progress=progress)
    timing = dict(raw.timing)
    timing["total_s"] = time.perf_counter() - t0
    results = make_results(
        [str(p) for p in inputs.paths], spec.class_names, spec.population, raw.stage_steps, raw.output_neurons,
        inputs.labels, spec.calibration,
        None if spec.calibration is None else input_features(spec.frontend, inputs.images),
    )
    if raw.overflow:
        # one line, not an error: the torch result is still SLAYER's; Lava/Loihi would differ
        sys.stderr.write(
            f"warning: the torch reference left Loihi's 24-bit neuron current range {raw.overflow} time(s) "
            f"(Lava wraps it): the sim backend and the chip disagree with this result\n"
        )
    return Run(
        backend=backend, results=results, stage_steps=raw.stage_steps, output_neurons=raw.output_neurons,
        timing=timing, stage_weighted=raw.stage_weighted, stage_active=raw.stage_active,
        skipped=[(str(p), r) for p, r in inputs.skipped], overflow=raw.overflow,
    )


def input_features(frontend, images: np.ndarray) -> np.ndarray:
    """The out-of-distribution features (lava_allnet.calibration) of these images as the network
    receives them, after the model's front end; in chunks."""
    from lava_allnet.calibration import FEATURES, ood_features

    chunks = [ood_features(frontend.apply(np.ascontiguousarray(images[i:i + 64]))) for i in range(0, len(images), 64)]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(FEATURES)))


def check_input_size(spec, images: np.ndarray) -> None:
    c, h, w = spec.input.shape
    if images.shape[1:] != (c, h, w):
        raise DataError(f"images are {images.shape[1:]}, the model expects {(c, h, w)}")
