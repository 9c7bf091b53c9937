"""The data path as one function: files → images → encoding → backend → Results."""
from __future__ import annotations

import os
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


@dataclass
class Entry:
    """One image to classify: a file (loaded when its chunk comes) or a (3, S, S) uint8 array."""

    name: str
    label: int | None
    source: Path | np.ndarray


def entries_from_inputs(inputs: Inputs) -> list[Entry]:
    return [Entry(str(p), lab, img) for p, lab, img in zip(inputs.paths, inputs.labels, inputs.images)]


def file_entries(paths: Sequence[Path], labels: Sequence[int | None]) -> list[Entry]:
    return [Entry(str(p), lab, Path(p)) for p, lab in zip(paths, labels)]


# images per chunk: load, infer, reduce to Results, release; the simulator compiles once per chunk
# (~2.4 s for the shipped model), so its chunks are larger. LAVA_ALLNET_CHUNK overrides both.
CHUNK = {"torch": 64, "sim": 256, "sim-float": 256, "loihi2": 256}


def release_memory() -> None:
    """Hand freed heap back to the system (glibc): without it, the small arrays a long run keeps
    between the large per-batch tensors pin the heap and the resident size grows with the number
    of images (measured: ~3 MB per image on the torch backend)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def load_chunk(entries: Sequence[Entry], size: int, strict: bool) -> tuple[list[int], np.ndarray | None, list]:
    """(indices kept, images, skipped (name, reason)) of one chunk; a file that is unreadable or
    has vanished since it was listed is skipped (fatal with ``strict``)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(e: Entry):
        if isinstance(e.source, np.ndarray):
            return e.source, None
        try:
            return di.load_image(e.source, size), None
        except DataError as exc:
            if strict:
                raise
            return None, str(exc)

    with ThreadPoolExecutor(max_workers=2) as pool:
        loaded = list(pool.map(one, entries))
    kept = [i for i, (a, _) in enumerate(loaded) if a is not None]
    skipped = [(entries[i].name, why) for i, (a, why) in enumerate(loaded) if a is None]
    images = np.stack([loaded[i][0] for i in kept]) if kept else None
    return kept, images, skipped


def stream(
    spec,
    entries: Sequence[Entry],
    backend: str,
    workers: int = 1,
    fast: bool = True,
    fanouts: dict[str, np.ndarray] | None = None,
    progress: Callable[[int], None] | None = None,
    strict: bool = False,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    on_chunk: Callable[[list, list], None] | None = None,
    chunk: int | None = None,
) -> Run:
    """The data path for any number of images, in bounded memory: chunk by chunk, load the images,
    run them (``transform`` first, e.g. exposure normalisation), reduce them to Results and per-step
    counts, release the pixels. ``on_chunk(results, skipped)`` sees each chunk as soon as it is
    done (to append it to a file). ``progress(done)`` counts entries, skipped ones included."""
    from hw_targets.backends import get_backend

    be = get_backend(backend, spec, workers=workers, fast=fast)
    chunk = max(1, chunk or int(os.environ.get("LAVA_ALLNET_CHUNK", "0") or 0) or CHUNK.get(backend, 64))
    size = spec.input.shape[1]
    results: list = []
    skipped: list[tuple[str, str]] = []
    parts: dict[str, list] = {"steps": [], "weighted": [], "active": [], "neurons": []}
    timing = {"run_s": 0.0, "compile_s": 0.0}
    step_ms = 0.0  # the backend's ms per step (per worker), weighted by images
    overflow = 0
    t0 = time.perf_counter()
    for start in range(0, len(entries), chunk):
        batch = entries[start:start + chunk]
        kept, images, skip = load_chunk(batch, size, strict)
        skipped += skip
        new: list = []
        if images is not None:
            if transform is not None:
                images = transform(images)
            done0 = start + len(batch) - len(kept)  # the chunk's skipped files count as done
            raw = be.run(images, fanouts=fanouts,
                         progress=None if progress is None else (lambda k, d=done0: progress(d + k)))
            new = make_results([batch[i].name for i in kept], spec.class_names, spec.population, raw.stage_steps,
                               raw.output_neurons, [batch[i].label for i in kept], spec.calibration,
                               None if spec.calibration is None else input_features(spec.frontend, images))
            parts["steps"].append(raw.stage_steps)
            parts["weighted"].append(raw.stage_weighted)
            parts["active"].append(raw.stage_active)
            parts["neurons"].append(raw.output_neurons)
            for k in ("run_s", "compile_s"):
                timing[k] += float(raw.timing.get(k, 0.0))
            step_ms += float(raw.timing.get("ms_per_step", 0.0)) * len(kept)
            if "workers" in raw.timing:
                timing["workers"] = raw.timing["workers"]
            overflow += raw.overflow
            del raw, images
        results += new
        if on_chunk is not None:
            on_chunk(new, skip)
        if progress is not None:
            progress(start + len(batch))
        release_memory()
    n = len(results)
    T = spec.time_steps
    timing["total_s"] = time.perf_counter() - t0
    timing["ms_per_image"] = 1000 * timing["run_s"] / max(1, n)
    timing["ms_per_step"] = step_ms / max(1, n)
    if not timing["compile_s"]:
        del timing["compile_s"]

    def cat(key: str) -> dict[str, np.ndarray]:
        names = parts[key][0].keys() if parts[key] else ()
        return {k: np.concatenate([p[k] for p in parts[key]]) for k in names}

    if overflow:
        # one line, not an error: the torch result is still SLAYER's; Lava/Loihi would differ
        sys.stderr.write(
            f"warning: the torch reference left Loihi's 24-bit neuron current range {overflow} time(s) "
            f"(Lava wraps it): the sim backend and the chip disagree with this result\n"
        )
    steps = cat("steps") or {name: np.zeros((0, T), np.int64) for name in spec.stage_names()}
    neurons = (np.concatenate(parts["neurons"]) if parts["neurons"]
               else np.zeros((0, spec.num_classes * spec.population), np.int64))
    return Run(backend=backend, results=results, stage_steps=steps, output_neurons=neurons, timing=timing,
               stage_weighted=cat("weighted"), stage_active=cat("active"), skipped=skipped, overflow=overflow)


def run_backend(
    spec,
    inputs: Inputs,
    backend: str,
    workers: int = 1,
    fast: bool = True,
    fanouts: dict[str, np.ndarray] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Run:
    """Images already in memory (``Inputs``) through :func:`stream`; the inputs' skipped files are
    the run's."""
    run = stream(spec, entries_from_inputs(inputs), backend, workers=workers, fast=fast, fanouts=fanouts,
                 progress=progress, chunk=max(1, len(inputs.paths)))
    run.skipped = [(str(p), r) for p, r in inputs.skipped] + run.skipped
    return run


def input_features(frontend, images: np.ndarray) -> np.ndarray:
    """The out-of-distribution features (lava_allnet.calibration) of these images as the network
    receives them, after the model's front end; in chunks."""
    from lava_allnet.calibration import FEATURES, ood_features

    chunks = [ood_features(frontend.apply(np.ascontiguousarray(images[i:i + 64]))) for i in range(0, len(images), 64)]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(FEATURES)))


def stream_features(frontend, paths: Sequence[Path], size: int, chunk: int = 256,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
    """:func:`input_features` of image files, loaded chunk by chunk (unreadable files skipped)."""
    from lava_allnet.calibration import FEATURES

    out = []
    for start in range(0, len(paths), chunk):
        _, images, _ = load_chunk(file_entries(paths[start:start + chunk], [None] * len(paths[start:start + chunk])),
                                   size, strict=False)
        if images is not None:
            out.append(input_features(frontend, images))
        if progress is not None:
            progress(min(len(paths), start + chunk))
        del images
        release_memory()
    return np.concatenate(out) if out else np.zeros((0, len(FEATURES)))


def check_input_size(spec, images: np.ndarray) -> None:
    c, h, w = spec.input.shape
    if images.shape[1:] != (c, h, w):
        raise DataError(f"images are {images.shape[1:]}, the model expects {(c, h, w)}")
