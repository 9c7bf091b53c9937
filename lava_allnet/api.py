"""The Python API: load a model, classify images, evaluate on a dataset, profile activity.

::

    import lava_allnet

    model = lava_allnet.load()                      # the shipped model
    model.predict(["smear.png", folder, array])     # one dict per image, as `run --json` "results"
    lava_allnet.evaluate(model, "data/", backend="torch")   # = `evaluate --json`
    lava_allnet.profile(model, ["smear.png"])       # = `profile --json`

The command line calls these functions and prints what they return, so the dicts are exactly
the JSON of the matching commands (without ``written``, the files a command's ``--out`` wrote).
Failures the user can fix raise :class:`~lava_allnet.errors.AllnetError` (the CLI's one-line
``error: ...``).

Nothing heavy is imported here at module level: torch, lava and the backends load on first use.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Union

from lava_allnet.errors import AllnetError

if TYPE_CHECKING:
    import numpy as np

    from hw_targets.inference import Inputs
    from lava_allnet.result import Run

__all__ = ["Model", "load", "evaluate", "profile", "dataset_inputs",
           "RUN_BACKENDS", "EVALUATE_BACKENDS", "ROBUSTNESS_BACKENDS", "PROFILE_BACKENDS", "TARGETS", "SUBSETS"]

# the accepted values (the CLI offers them as choices, in this order; the first of EVALUATE/PROFILE is the CLI default)
RUN_BACKENDS = ("sim", "sim-float", "torch", "loihi2")
EVALUATE_BACKENDS = ("sim", "torch")
ROBUSTNESS_BACKENDS = ("torch", "sim")
PROFILE_BACKENDS = ("sim", "torch", "loihi2")
TARGETS = ("loihi1", "loihi2")
SUBSETS = ("test", "val", "train")

# progress(stage, done, total): stage is "loading images" or the backend's name
Progress = Callable[[str, int, int], None]
PathLike = Union[str, "os.PathLike[str]"]


def _choice(what: str, value: str, allowed: tuple[str, ...]) -> str:
    value = getattr(value, "value", value)  # a CLI enum member
    if value not in allowed:
        raise AllnetError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    return value


def _stage(progress: Progress | None, stage: str, total: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    progress(stage, 0, total)
    return lambda done, *_: progress(stage, done, total)


class Model:
    """A model file (NetX HDF5 ``.net``) read once, ready to run on any backend."""

    def __init__(self, path: PathLike) -> None:
        from netx import format as nf

        self.path = Path(path)
        self.spec = nf.read(self.path)

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    @property
    def time_steps(self) -> int:
        return int(self.spec.time_steps)

    @property
    def input_size(self) -> int:
        """Side of the (square) input image in pixels; other sizes are resized to it."""
        return int(self.spec.input.shape[1])

    def __repr__(self) -> str:
        return (f"Model({str(self.path)!r}, classes={self.class_names}, T={self.time_steps}, "
                f"input=3x{self.input_size}x{self.input_size})")

    # ----------------------------------------------------------- inputs

    def inputs(self, items, strict: bool = True, progress: Progress | None = None) -> "Inputs":
        """Image files, folders (searched recursively), uint8 arrays and PIL images → one batch.

        A path's label comes from a parent folder named like a class (as in ``run``); an array's
        path is ``<array K>`` (``<array K[J]>`` for image J of a 4-D batch K), without a label.
        ``strict=False`` skips unreadable files (listed in the run's ``skipped``) instead of failing.
        """
        import numpy as np
        from PIL import Image

        from hw_targets.inference import Inputs
        from lava_allnet.data import images as di
        from lava_allnet.errors import DataError

        if isinstance(items, (str, os.PathLike, np.ndarray, Image.Image)):
            items = [items]
        items = list(items)
        size = self.input_size
        images: list[np.ndarray] = []
        paths: list[Any] = []
        labels: list[int | None] = []
        skipped: list = []
        pending: list = []

        def flush() -> None:
            if not pending:
                return
            files = di.collect_image_paths(pending)  # a missing path fails, as in `run`
            pending.clear()
            try:
                loaded = di.load_images(files, size, strict=strict, progress=_stage(progress, "loading images", len(files)))
            except DataError:
                if strict:
                    raise
                for f in files:  # none of these was readable; other inputs may be
                    try:
                        di.load_image(f, size)
                    except DataError as exc:
                        skipped.append((f, str(exc)))
                return
            images.extend(loaded.images)
            paths.extend(loaded.paths)
            labels.extend(di.label_from_path(f, self.spec.class_names) for f in loaded.paths)
            skipped.extend(loaded.skipped)

        for k, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                pending.append(item)
                continue
            flush()
            if isinstance(item, np.ndarray) and item.ndim == 4:
                batch = [(f"<array {k}[{j}]>", a) for j, a in enumerate(item)]
            elif isinstance(item, (np.ndarray, Image.Image)):
                batch = [(f"<array {k}>", item)]
            else:
                raise DataError(f"input {k}: a {type(item).__name__}; give image paths, folders or uint8 arrays")
            for name, a in batch:
                images.append(di.image_from_array(a, size, name))
                paths.append(name)
                labels.append(None)
        flush()
        if not images:
            detail = f" ({skipped[0][1]})" if skipped else ""
            raise DataError(f"no readable images among the inputs{detail}" if skipped else "no input images given")
        return Inputs(np.stack(images), paths, labels, skipped)

    # -------------------------------------------------------------- run

    def run(self, items, backend: str = "torch", workers: int = 1, strict: bool = True,
            normalize_exposure: bool = False, progress: Progress | None = None) -> "Run":
        """Classify images; the :class:`~lava_allnet.result.Run` with Results, timing and per-step counts."""
        from hw_targets.backends import check_backend
        from hw_targets.inference import run_backend
        from lava_allnet.data.images import normalize_exposure as normalize

        backend = _choice("backend", backend, RUN_BACKENDS)
        check_backend(backend)
        data = self.inputs(items, strict=strict, progress=progress)
        if normalize_exposure:
            data.images = normalize(data.images)
        return run_backend(self.spec, data, backend, workers=workers,
                           progress=_stage(progress, backend, len(data.paths)))

    def predict(self, items, backend: str = "torch", workers: int = 1, strict: bool = True,
                normalize_exposure: bool = False) -> list[dict[str, Any]]:
        """One dict per image, as in ``lava-allnet run --json`` "results".

        ``items``: image paths (files or folders) and/or uint8 arrays, (H, W, 3) of any size
        (resized like image files) or (3, S, S) at the model's input size. backend: ``torch``
        (the fixed-point reference, fast) or ``sim`` (the Lava simulator: the same spikes, slower),
        ``sim-float``, ``loihi2``. Keys: path, prediction, predicted_index, class_counts (output
        spikes per class), layer_counts (messages per layer), label (from a class-named parent
        folder, else None), correct.
        """
        run = self.run(items, backend=backend, workers=workers, strict=strict, normalize_exposure=normalize_exposure)
        return [r.to_dict() for r in run.results]


def load(path: PathLike | None = None) -> Model:
    """Read a model file; ``None``: the shipped model (``models/neurallnet-aria.net``)."""
    if path is None:
        from lava_allnet.shipped import require_default_model

        path = require_default_model()
    return Model(path)


def _model(model_or_path: Model | PathLike | None) -> Model:
    return model_or_path if isinstance(model_or_path, Model) else load(model_or_path)


# ------------------------------------------------------------- evaluation


def dataset_inputs(spec, data_dir: PathLike, split: PathLike | None = None, subset: str = "test",
                   limit: int | None = None, strict: bool = False,
                   progress: Progress | None = None) -> "Inputs":
    """An ImageFolder (class folders must be the model's classes), optionally one subset of a saved split.

    ``limit``: at most this many images, every k-th of the sorted list (deterministic, stratified).
    """
    from hw_targets.inference import Inputs
    from lava_allnet.data import images as di

    subset = _choice("subset", subset, SUBSETS)
    ds = di.scan_image_folder(Path(data_dir), class_names=spec.class_names, require_all=split is None)
    paths, labels = ds.paths, list(ds.labels)
    if split is not None:
        split = Path(split)
        if not split.exists():
            raise AllnetError(f"{split}: no such split file")
        idx = di.load_split(split, ds).get(subset)
        if idx is None:
            raise AllnetError(f"{split}: has no '{subset}' subset")
        paths, labels = [ds.paths[i] for i in idx], [int(ds.labels[i]) for i in idx]
    if limit is not None:
        step = max(1, len(paths) // limit)
        paths, labels = paths[::step][:limit], labels[::step][:limit]
    loaded = di.load_images(paths, spec.input.shape[1], labels=labels, strict=strict,
                            progress=_stage(progress, "loading images", len(paths)))
    return Inputs(loaded.images, loaded.paths, [int(v) for v in loaded.labels], loaded.skipped)


def evaluate_run(model_or_path: Model | PathLike | None, data_dir: PathLike, split: PathLike | None = None,
                 subset: str = "test", backend: str = "torch", resamples: int = 2000, seed: int = 0,
                 workers: int = 1, strict: bool = False, normalize_exposure: bool = False,
                 progress: Progress | None = None) -> tuple[dict[str, Any], "Run"]:
    """:func:`evaluate`'s report and the run behind it (for ``write_evaluation``)."""
    from hw_targets.inference import run_backend
    from lava_allnet.data.images import normalize_exposure as normalize
    from lava_allnet.evaluation import classification_report

    backend = _choice("backend", backend, EVALUATE_BACKENDS)
    if resamples < 1:
        raise AllnetError(f"resamples {resamples}: at least 1")
    model = _model(model_or_path)
    data = dataset_inputs(model.spec, data_dir, split, subset, None, strict, progress)
    if normalize_exposure:
        data.images = normalize(data.images)
    result = run_backend(model.spec, data, backend, workers=workers, progress=_stage(progress, backend, len(data.paths)))
    report = classification_report(data.labels, [r.predicted_index for r in result.results], model.spec.class_names,
                                   resamples, seed)
    report.update({"model": str(model.path), "data": str(data_dir), "backend": backend,
                   "normalize_exposure": normalize_exposure, "timing": result.timing,
                   "skipped": [{"path": p, "reason": w} for p, w in result.skipped]})
    return report, result


def evaluate(model_or_path: Model | PathLike | None, data_dir: PathLike, split: PathLike | None = None,
             subset: str = "test", backend: str = "torch", resamples: int = 2000, seed: int = 0,
             workers: int = 1, strict: bool = False, normalize_exposure: bool = False,
             progress: Progress | None = None) -> dict[str, Any]:
    """Accuracy with a bootstrapped 95% CI, per-class metrics and the confusion matrix on an ImageFolder.

    The dict ``lava-allnet evaluate --json`` prints (without ``written``). ``split``: a run's
    split.json, then only its ``subset`` (test, val, train) is evaluated. backend: ``torch``
    or ``sim`` (identical predictions; torch is faster).
    """
    return evaluate_run(model_or_path, data_dir, split, subset, backend, resamples, seed, workers, strict,
                        normalize_exposure, progress)[0]


# --------------------------------------------------------------- profile


def profile_run(model_or_path: Model | PathLike | None, paths: Iterable[PathLike] | PathLike,
                backend: str = "torch", target: str = "loihi1", workers: int = 1,
                progress: Progress | None = None) -> tuple[Model, dict[str, Any], "Run"]:
    """:func:`profile`'s model, report (without "model") and run."""
    from hw_targets import profile as hp
    from hw_targets.backends import check_backend
    from hw_targets.inference import load_inputs, run_backend
    from netx.analysis import stage_fanouts

    backend = _choice("backend", backend, PROFILE_BACKENDS)
    target = _choice("target", target, TARGETS)
    check_backend(backend)
    model = _model(model_or_path)
    tgt = hp.load_target(target)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    data = load_inputs(list(paths), model.input_size, model.spec.class_names,
                       progress=None if progress is None else (lambda k, n: progress("loading images", k, n)))
    result = run_backend(model.spec, data, backend, workers=workers, fanouts=stage_fanouts(model.spec),
                         progress=_stage(progress, backend, len(data.paths)))
    return model, hp.profile(model.spec, result, tgt), result


def profile(model_or_path: Model | PathLike | None, paths: Iterable[PathLike] | PathLike,
            backend: str = "torch", target: str = "loihi1", workers: int = 1,
            progress: Progress | None = None) -> dict[str, Any]:
    """Per image and layer: spikes, rates, synaptic ops, neuron updates, timing and the energy proxy.

    The dict ``lava-allnet profile --json`` prints (without ``written``). ``paths``: image files
    and/or folders. backend: ``torch``, ``sim`` (identical counts) or ``loihi2``; target: the
    energy / limits table, ``loihi1`` or ``loihi2``.
    """
    model, report, _ = profile_run(model_or_path, paths, backend, target, workers, progress)
    return {"model": str(model.path), **report}
