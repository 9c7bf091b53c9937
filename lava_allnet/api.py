"""The Python API: load a model, classify images, evaluate on a dataset, profile activity.

::

    import lava_allnet

    model = lava_allnet.load()                      # the shipped model
    model.predict(["smear.png", folder, array])     # one dict per image, as `run --json` "results"
    lava_allnet.evaluate(model, "data/", backend="torch")   # = `evaluate --json`
    lava_allnet.profile(model, ["smear.png"])       # = `profile --json`
    lava_allnet.report(model, "data/", "out/")      # = `report`: out/report.html

The command line calls these functions and prints what they return, so the dicts are exactly
the JSON of the matching commands (without ``written``, the files a command's ``--out`` wrote).
Failures the user can fix raise :class:`~lava_allnet.errors.AllnetError` (the CLI's one-line
``error: ...``).

Nothing heavy is imported here at module level: torch, lava and the backends load on first use.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Union

from lava_allnet.errors import AllnetError

if TYPE_CHECKING:
    import numpy as np

    from hw_targets.inference import Inputs
    from lava_allnet.result import Run

__all__ = ["Model", "load", "evaluate", "profile", "calibrate", "robustness", "report", "dataset_entries", "dataset_inputs",
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

    def entries(self, items) -> list:
        """Image files, folders (searched recursively), uint8 arrays and PIL images → the
        :class:`~hw_targets.inference.Entry` list a run streams (files are read chunk by chunk).

        A path's label comes from a parent folder named like a class (as in ``run``); an array's
        path is ``<array K>`` (``<array K[J]>`` for image J of a 4-D batch K), without a label.
        """
        import numpy as np
        from PIL import Image

        from hw_targets.inference import Entry
        from lava_allnet.data import images as di
        from lava_allnet.errors import DataError

        if isinstance(items, (str, os.PathLike, np.ndarray, Image.Image)):
            items = [items]
        out: list = []
        size = self.input_size
        for k, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                out += [Entry(str(f), di.label_from_path(f, self.spec.class_names), Path(f))
                        for f in di.collect_image_paths([item])]  # a missing path fails, as in `run`
                continue
            if isinstance(item, np.ndarray) and item.ndim == 4:
                batch = [(f"<array {k}[{j}]>", a) for j, a in enumerate(item)]
            elif isinstance(item, (np.ndarray, Image.Image)):
                batch = [(f"<array {k}>", item)]
            else:
                raise DataError(f"input {k}: a {type(item).__name__}; give image paths, folders or uint8 arrays")
            out += [Entry(name, None, di.image_from_array(a, size, name)) for name, a in batch]
        if not out:
            raise DataError("no input images given")
        return out

    # -------------------------------------------------------------- run

    def run(self, items, backend: str = "torch", workers: int = 1, strict: bool = True,
            normalize_exposure: bool = False, progress: Progress | None = None, out: PathLike | None = None,
            resume: bool = False, fast: bool = True, fanouts=None) -> "Run":
        """Classify images; the :class:`~lava_allnet.result.Run` with Results, timing and per-step counts.

        Files are streamed: loaded, run and reduced to their Results chunk by chunk, so memory does
        not grow with their number. ``strict=False`` skips unreadable files (listed in the run's
        ``skipped``). ``out``: a results file (``.jsonl``: every field; else CSV, the predictions
        table) that each chunk is appended to as soon as it is done; ``resume`` skips the images it
        already holds and returns them with the new ones.
        """
        from hw_targets.backends import check_backend
        from lava_allnet.data.images import normalize_exposure as normalize
        from lava_allnet.errors import DataError
        from lava_allnet.results_file import ResultsFile

        backend = _choice("backend", backend, RUN_BACKENDS)
        check_backend(backend, self.spec)
        if resume and out is None:
            raise AllnetError("resume needs the results file (out) of the run to continue")
        entries = self.entries(items)
        journal = None if out is None else ResultsFile(out, self.class_names, resume=resume)
        run = _stream_journalled(self.spec, entries, backend, journal, progress, workers=workers, fast=fast,
                                 strict=strict, fanouts=fanouts, transform=normalize if normalize_exposure else None)
        if not run.results:
            detail = f" ({run.skipped[0][1]})" if run.skipped else ""
            raise DataError(f"no readable images among the inputs{detail}")
        return run

    def predict(self, items, backend: str = "torch", workers: int = 1, strict: bool = True,
                normalize_exposure: bool = False) -> list[dict[str, Any]]:
        """One dict per image, as in ``lava-allnet run --json`` "results".

        ``items``: image paths (files or folders) and/or uint8 arrays, (H, W, 3) of any size
        (resized like image files) or (3, S, S) at the model's input size. backend: ``torch``
        (the fixed-point reference, fast) or ``sim`` (the Lava simulator: the same spikes, slower),
        ``sim-float``, ``loihi2``. Keys: path, prediction, predicted_index, class_counts (output
        spikes per class), layer_counts (messages per layer), label (from a class-named parent
        folder, else None), correct; for a calibrated model (``lava-allnet calibrate``; the shipped
        one is) probabilities (per class), confidence, abstain, out_of_distribution and
        ood_score, else None.
        """
        run = self.run(items, backend=backend, workers=workers, strict=strict, normalize_exposure=normalize_exposure)
        return [r.to_dict() for r in run.results]


def _stream_journalled(spec, entries: list, backend: str, journal, progress: Progress | None, **kwargs) -> "Run":
    """:func:`~hw_targets.inference.stream` with a results file (or None): the images it already
    holds are skipped, each new chunk is appended to it, and the run's results are its own first."""
    from hw_targets.inference import stream

    done = [] if journal is None else journal.done
    seen = {r.path for r in done}
    todo = [e for e in entries if e.name not in seen]
    run = stream(spec, todo, backend, progress=_stage(progress, backend, len(todo)),
                 on_chunk=None if journal is None else (lambda results, _skipped: journal.append(results)), **kwargs)
    run.results = done + run.results
    return run


def load(path: PathLike | None = None) -> Model:
    """Read a model file; ``None``: the shipped default (``models/neurallnet-aria.net``); a shipped
    model's name (``"neurallnet-aria-v2"``, see ``lava_allnet.shipped.MODELS``): its packaged file."""
    from lava_allnet import shipped

    if path is None:
        path = shipped.require_default_model()
    return Model(shipped.named_model(path) or path)


def _model(model_or_path: Model | PathLike | None) -> Model:
    return model_or_path if isinstance(model_or_path, Model) else load(model_or_path)


# ------------------------------------------------------------- evaluation


def dataset_entries(spec, data_dir: PathLike, split: PathLike | None = None, subset: str = "test",
                    limit: int | None = None) -> list:
    """The labelled files of an ImageFolder (class folders must be the model's classes), optionally
    one subset of a saved split, as :class:`~hw_targets.inference.Entry` (nothing loaded yet).

    ``limit``: at most this many images, every k-th of the sorted list (deterministic, stratified).
    """
    from hw_targets.inference import file_entries
    from lava_allnet.data import images as di

    subset = _choice("subset", subset, SUBSETS)
    ds = di.scan_image_folder(Path(data_dir), class_names=spec.class_names, require_all=split is None)
    paths, labels = ds.paths, [int(v) for v in ds.labels]
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
    return file_entries(paths, labels)


def dataset_inputs(spec, data_dir: PathLike, split: PathLike | None = None, subset: str = "test",
                   limit: int | None = None, strict: bool = False,
                   progress: Progress | None = None) -> "Inputs":
    """:func:`dataset_entries` loaded into memory at once (for robustness, which distorts them all)."""
    from hw_targets.inference import Inputs
    from lava_allnet.data import images as di

    entries = dataset_entries(spec, data_dir, split, subset, limit)
    loaded = di.load_images([e.source for e in entries], spec.input.shape[1], labels=[e.label for e in entries],
                            strict=strict, progress=_stage(progress, "loading images", len(entries)))
    return Inputs(loaded.images, loaded.paths, [int(v) for v in loaded.labels], loaded.skipped)


def evaluate_run(model_or_path: Model | PathLike | None, data_dir: PathLike, split: PathLike | None = None,
                 subset: str = "test", backend: str = "torch", resamples: int = 2000, seed: int = 0,
                 workers: int = 1, strict: bool = False, normalize_exposure: bool = False,
                 progress: Progress | None = None, out_dir: PathLike | None = None,
                 resume: bool = False, shard: tuple[int, int] | None = None) -> tuple[dict[str, Any], "Run"]:
    """:func:`evaluate`'s report and the run behind it (for ``write_evaluation``). Images are
    streamed; with ``out_dir``, ``predictions.csv`` there grows as they are done, and ``resume``
    continues it (the metrics then equal an uninterrupted run's). ``shard=(i, n)``: only every n-th
    image from the i-th (0-based), with ``shard.json`` in ``out_dir`` for :func:`merge_evaluations`."""
    from lava_allnet.data.images import normalize_exposure as normalize
    from lava_allnet.results_file import ResultsFile

    backend = _choice("backend", backend, EVALUATE_BACKENDS)
    if resamples < 1:
        raise AllnetError(f"resamples {resamples}: at least 1")
    if resume and out_dir is None:
        raise AllnetError("resume continues the predictions.csv of an --out folder: give it")
    model = _model(model_or_path)
    entries = dataset_entries(model.spec, data_dir, split, subset)
    if shard is not None:
        i, n = shard
        if not 0 <= i < n:
            raise AllnetError(f"shard {i}/{n}: i must be within 0..{n - 1}")
        if out_dir is None:
            raise AllnetError("a shard's predictions go to --out DIR (merged later with --merge)")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "shard.json").write_text(json.dumps(
            {"shard": i, "shards": n, "images": len(entries), "model": str(model.path), "data": str(data_dir),
             "split": None if split is None else str(split), "subset": subset, "backend": backend,
             "normalize_exposure": normalize_exposure, "paths": [e.name for e in entries[i::n]]}, indent=1))
        entries = entries[i::n]
    journal = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        journal = ResultsFile(Path(out_dir) / "predictions.csv", model.class_names, resume=resume)
    result = _stream_journalled(model.spec, entries, backend, journal, progress, workers=workers, strict=strict,
                                transform=normalize if normalize_exposure else None)
    report = run_report(model.spec, result, resamples, seed)
    report.update({"model": str(model.path), "data": str(data_dir), "backend": backend,
                   "normalize_exposure": normalize_exposure, "timing": result.timing,
                   "skipped": [{"path": p, "reason": w} for p, w in result.skipped]})
    return report, result


def merge_evaluations(model_or_path: Model | PathLike | None, data_dir: PathLike, shard_dirs: Iterable[PathLike],
                      split: PathLike | None = None, subset: str = "test", resamples: int = 2000,
                      seed: int = 0) -> tuple[dict[str, Any], "Run"]:
    """The report of a single ``evaluate`` from the ``--shard i/n`` runs' folders: every shard of
    the same model, data, split and subset must be there and complete. The results are put back
    in the dataset's order, so the metrics equal a single run's bit for bit."""
    import numpy as np

    from lava_allnet.errors import DataError
    from lava_allnet.result import Run
    from lava_allnet.results_file import ResultsFile

    model = _model(model_or_path)
    entries = dataset_entries(model.spec, data_dir, split, subset)
    order = {e.name: k for k, e in enumerate(entries)}
    docs, results, backends = {}, [], set()
    for d in map(Path, shard_dirs):
        meta = d / "shard.json"
        if not meta.is_file():
            raise DataError(f"{d}: no shard.json (not the --out folder of an `evaluate --shard` run)")
        doc = json.loads(meta.read_text())
        want = {"model": str(model.path), "data": str(data_dir), "split": None if split is None else str(split),
                "subset": subset}
        wrong = [k for k, v in want.items() if doc.get(k) != v]
        if wrong:
            raise DataError(f"{d}: a shard of another evaluation ({', '.join(f'{k} {doc.get(k)!r}' for k in wrong)})")
        if doc["shard"] in docs:
            raise DataError(f"{d}: shard {doc['shard']}/{doc['shards']} given twice")
        docs[doc["shard"]] = doc
        backends.add((doc["backend"], doc["normalize_exposure"]))
        got = ResultsFile(d / "predictions.csv", model.class_names, resume=True).done
        missing = set(doc["paths"]) - {r.path for r in got}
        if missing:
            raise DataError(f"{d}: shard {doc['shard']}/{doc['shards']} is incomplete ({len(missing)} of "
                            f"{len(doc['paths'])} images not done): finish it with --resume")
        results += got
    n = {doc["shards"] for doc in docs.values()}
    if len(n) != 1 or sorted(docs) != list(range(next(iter(n)))):
        raise DataError(f"shards {sorted(docs)} of {sorted(n)}: every shard 0..n-1 of one split is needed")
    if len(backends) != 1:
        raise DataError("the shards ran on different backends or exposure settings")
    unknown = [r.path for r in results if r.path not in order]
    if unknown:
        raise DataError(f"{unknown[0]}: in a shard but not in {data_dir}")
    results.sort(key=lambda r: order[r.path])
    backend, exposure = backends.pop()
    run = Run(backend=backend, results=results, stage_steps={}, output_neurons=np.zeros((0, 0)))
    report = run_report(model.spec, run, resamples, seed)
    report.update({"model": str(model.path), "data": str(data_dir), "backend": backend,
                   "normalize_exposure": exposure, "timing": {}, "skipped": [],
                   "merged": [str(d) for d in shard_dirs]})
    return report, run


def run_report(spec, result: "Run", resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The metrics of a labelled run: :func:`~lava_allnet.evaluation.classification_report` on its
    probabilities (a calibrated model; else the output spike counts rank the ROC) and, for a
    calibrated model, the abstention and out-of-distribution figures."""
    import numpy as np

    from lava_allnet.evaluation import classification_report, selective_report

    rs, names = result.results, list(spec.class_names)
    labels = np.asarray([names.index(r.label) for r in rs], dtype=np.int64)
    calibrated = spec.calibration is not None
    scores = np.asarray([[(r.probabilities if calibrated else r.class_counts)[c] for c in names] for r in rs],
                        dtype=np.float64).reshape(len(rs), len(names))
    report = classification_report(labels, [r.predicted_index for r in rs], names, resamples, seed, scores, calibrated)
    report["calibrated"] = calibrated
    report["selective"] = None
    if calibrated and rs:
        report["selective"] = selective_report(
            np.asarray([r.confidence for r in rs]), np.asarray([bool(r.correct) for r in rs]),
            np.asarray([r.abstain for r in rs]), np.asarray([r.out_of_distribution for r in rs]))
    return report


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
                progress: Progress | None = None, images: bool = True) -> tuple[Model, dict[str, Any], "Run"]:
    """:func:`profile`'s model, report (without "model"; per-image entries with ``images``) and run."""
    from hw_targets import profile as hp
    from hw_targets.backends import check_backend
    from netx.analysis import stage_fanouts

    backend = _choice("backend", backend, PROFILE_BACKENDS)
    target = _choice("target", target, TARGETS)
    model = _model(model_or_path)
    check_backend(backend, model.spec)
    tgt = hp.load_target(target)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    result = model.run(list(paths), backend, workers=workers, strict=False, progress=progress,
                       fanouts=stage_fanouts(model.spec))
    return model, hp.profile(model.spec, result, tgt, images=images), result


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


# ------------------------------------------------------------- calibration


def calibrate(model_or_path: Model | PathLike | None, data_dir: PathLike, split: PathLike, out: PathLike,
              target_accuracy: float = 0.99, ood_quantile: float = 0.98, backend: str = "torch",
              workers: int = 1, progress: Progress | None = None) -> dict[str, Any]:
    """Fit the model's calibration and write a copy of the model file that holds it.

    The temperature and the abstention threshold (the lowest confidence at which the accepted
    validation images reach ``target_accuracy``) come from the split's validation images; the
    out-of-distribution reference from its training images' colour statistics (no network pass),
    and its threshold is the ``ood_quantile`` of the validation images' scores. Returns the
    calibration as stored, with ``model`` and ``written``.
    """
    import dataclasses

    import numpy as np

    from hw_targets.inference import input_features, stream, stream_features
    from lava_allnet import calibration as cal
    from netx import format as nf

    backend = _choice("backend", backend, EVALUATE_BACKENDS)
    model = _model(model_or_path)
    out = Path(out)
    if out.resolve() == model.path.resolve():
        raise AllnetError(f"{out}: would overwrite the model being calibrated; give another --out")
    if out.parent and not out.parent.exists():
        raise AllnetError(f"{out.parent}: no such folder")
    val = dataset_entries(model.spec, data_dir, split, "val")
    frontend = model.spec.frontend
    val_features: list = []

    def keep_features(images):  # the validation images' OOD features, read once with the run
        val_features.append(input_features(frontend, images))
        return images

    result = stream(model.spec, val, backend, workers=workers, progress=_stage(progress, backend, len(val)),
                    transform=keep_features)
    rs = result.results
    counts = np.array([[r.class_counts[c] for c in model.class_names] for r in rs])
    labels = np.array([model.class_names.index(r.label) for r in rs])
    train = [e.source for e in dataset_entries(model.spec, data_dir, split, "train")]
    try:
        fitted = cal.fit(counts, labels, np.concatenate(val_features) if val_features else np.zeros((0, 0)),
                         stream_features(frontend, train, model.input_size,
                                         progress=_stage(progress, "training images", len(train))),
                         target_accuracy, ood_quantile, {"data": str(data_dir), "split": str(split), "backend": backend})
    except ValueError as exc:
        raise AllnetError(str(exc)) from exc
    nf.write(dataclasses.replace(model.spec, calibration=fitted, source=""), out)
    return {"model": str(model.path), **fitted.to_dict(), "written": [str(out)]}


# -------------------------------------------------------------- robustness


def robustness(model_or_path: Model | PathLike | None, data_dir: PathLike, split: PathLike | None = None,
               subset: str = "test", backend: str = "torch", limit: int | None = None, seed: int = 0,
               normalize_exposure: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Accuracy under noise, salt-and-pepper, blur, occlusion, rotation and illumination, three
    severities each, and on the clean images: the dict ``lava-allnet robustness --json`` prints
    (without ``written``)."""
    import numpy as np

    from hw_targets.backends import check_backend, get_backend
    from hw_targets.inference import CHUNK, load_chunk, release_memory
    from lava_allnet.data.images import normalize_exposure as normalize
    from lava_allnet.evaluation import DISTORTIONS, robustness as rob
    from lava_allnet.result import make_results

    backend = _choice("backend", backend, ROBUSTNESS_BACKENDS)
    model = _model(model_or_path)
    spec = model.spec
    check_backend(backend, spec)
    entries = dataset_entries(spec, data_dir, split, subset, limit)
    be = get_backend(backend, spec)

    def predict(images):
        raw = be.run(normalize(images) if normalize_exposure else images)
        res = make_results([str(i) for i in range(len(images))], spec.class_names, spec.population,
                           raw.stage_steps, raw.output_neurons)
        return np.asarray([r.predicted_index for r in res])

    chunk = CHUNK.get(backend, 64) * 4  # each chunk runs 19 times (clean and 18 distortions)

    def chunks():
        """(images, labels) of ``chunk`` images at a time, unreadable files skipped; memory released between."""
        for start in range(0, len(entries), chunk):
            part = entries[start:start + chunk]
            kept, images, _ = load_chunk(part, spec.input.shape[1], strict=False)
            if images is not None:
                yield images, np.asarray([part[i].label for i in kept])
            release_memory()

    total, done = (1 + 3 * len(DISTORTIONS)) * max(1, -(-len(entries) // chunk)), [0]
    tick = _stage(progress, "robustness", total)

    def step(_label: str) -> None:
        done[0] += 1
        if tick is not None:
            tick(done[0])

    report = rob(predict, chunks(), seed=seed, progress=step)
    report.update({"model": str(model.path), "data": str(data_dir), "backend": backend,
                   "normalize_exposure": normalize_exposure})
    return report


# ------------------------------------------------------------------ report


def report(model_or_path: Model | PathLike | None, data_dir: PathLike, out_dir: PathLike,
           split: PathLike | None = None, subset: str = "test", backend: str = "torch", target: str = "loihi1",
           robustness_images: int = 64, gallery: int = 6, resamples: int = 2000, seed: int = 0, workers: int = 1,
           progress: Progress | None = None) -> dict[str, Any]:
    """Write ``OUT_DIR/report.html``: one self-contained page (figures embedded) with the model's
    facts, metrics with their intervals, confusion matrix, reliability and risk-coverage (a
    calibrated model), robustness curves (on ``robustness_images`` evenly spaced images; 0: none),
    per-layer activity and energy, a Grad-CAM gallery of up to ``gallery`` errors and as many most
    confident correct images, and the not-a-diagnostic-device notice. Returns the metrics with
    ``written``."""
    import datetime
    import tempfile

    import numpy as np

    from hw_targets import profile as hp
    from hw_targets.inference import stream
    from lava_allnet import __version__
    from lava_allnet import evaluation as ev
    from lava_allnet.data.images import load_image
    from lava_allnet.report import html_report
    from PIL import Image

    from netx.analysis import layer_stats, stage_fanouts, totals
    from netx.export import network_from_spec

    backend = _choice("backend", backend, EVALUATE_BACKENDS)
    target = _choice("target", target, TARGETS)
    if robustness_images < 0 or gallery < 0:
        raise AllnetError("robustness images and gallery size: 0 or more")
    model = _model(model_or_path)
    spec = model.spec
    out_dir = Path(out_dir)
    entries = dataset_entries(spec, data_dir, split, subset)
    run = stream(spec, entries, backend, workers=workers, fanouts=stage_fanouts(spec),
                 progress=_stage(progress, backend, len(entries)))
    metrics = run_report(spec, run, resamples, seed)
    metrics.update({"model": str(model.path), "data": str(data_dir), "backend": backend,
                    "split": None if split is None else str(split), "subset": subset if split is not None else None})
    prof = hp.profile(spec, run, hp.load_target(target), images=False)
    rob = None
    if robustness_images:
        rob = robustness(model, data_dir, split, subset, "torch", min(robustness_images, len(entries)), seed,
                         progress=progress)
    stats = totals(layer_stats(spec))
    cal = spec.calibration
    facts = {
        "title": f"NeurALLNet report: {model.path.name}",
        "generated": f"lava-allnet {__version__}, {datetime.datetime.now().isoformat(timespec='seconds')}",
        "data": str(data_dir) + ("" if split is None else f" ({subset} images of {split})"),
        "backend": backend,
        "model": {
            "file": str(model.path), "file bytes": model.path.stat().st_size, "format version": spec.format_version,
            "classes": ", ".join(spec.class_names), "input": f"3 x {model.input_size} x {model.input_size}",
            "time steps": spec.time_steps, "parameters": int(stats.get("parameters", 0)),
            "same-shaped ANN MACs": int(stats["ann_macs"]),
            "input front end": spec.frontend.name + (" (exact offset)" if spec.frontend.exact_offset else "")
            + (f"; impulse correction above {spec.frontend.impulse} grey levels" if spec.frontend.impulse else "")
            + ("; black pixels carry no image" if spec.frontend.exclude_black else ""),
            "calibration": "none" if cal is None else
            (f"temperature {cal.temperature:.4g}; abstain below confidence {cal.abstain_below:.4f} "
             f"(target accuracy {cal.target_accuracy:g} on accepted validation images); out of distribution "
             f"above {cal.ood_threshold:.3f} (validation quantile {cal.ood_quantile:g})"),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        figures = {"confusion": ev.plot_confusion(metrics, tmp / "confusion.png")}
        if metrics.get("reliability"):
            figures["reliability"] = ev.plot_reliability(metrics, tmp / "reliability.png")
        if metrics.get("selective"):
            figures["risk_coverage"] = ev.plot_risk_coverage(metrics, tmp / "risk_coverage.png")
        for p in hp.write_outputs(prof, tmp / "profile"):
            if p.name == "spikes_per_layer.png":
                figures["spikes"] = p
            elif p.name == "energy_snn_vs_ann.png":
                figures["energy"] = p
        rob_figs = [] if rob is None else [p for p in ev.write_robustness(rob, tmp / "robustness") if p.suffix == ".png"]
        rs = run.results
        conf = np.asarray([r.confidence if r.confidence is not None else
                           max(r.class_counts.values()) / max(1, sum(r.class_counts.values())) for r in rs])
        errors = sorted((i for i, r in enumerate(rs) if r.correct is False), key=lambda i: -conf[i])[:gallery]
        right = sorted((i for i, r in enumerate(rs) if r.correct), key=lambda i: -conf[i])[:gallery]
        net = network_from_spec(spec)
        items = []
        for kind, idx in (("error", errors), ("correct", right)):
            for i in idx:
                r = rs[i]
                cam = ev.grad_cam(net, load_image(r.path, model.input_size))
                display = load_image(r.path, max(224, model.input_size))
                heat = np.asarray(Image.fromarray((cam["cam"] * 255).astype(np.uint8)).resize(
                    display.shape[1:][::-1], Image.BILINEAR)) / 255.0
                png = tmp / f"cam_{kind}_{i}.png"
                title = f"true {r.label}, predicted {r.prediction}" + (
                    "" if r.confidence is None else f" ({r.confidence:.3f})")
                ev.save_cam_png(display, heat, png, title, dpi=72)
                items.append({"kind": kind, "png": png, "caption": f"{Path(r.path).name}: {title}; Grad-CAM at {cam['layer']}"})
        page = html_report(facts, metrics, rob, prof, figures, rob_figs, items)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    tmp_path = path.with_name(path.name + ".tmp")
    tmp_path.write_text(page, encoding="utf-8")
    tmp_path.replace(path)
    return {**metrics, "robustness": rob, "written": [str(path)]}
