"""The ``lava-allnet`` command line: thin typer commands over the library.

Expected failures (bad files, bad data, missing backends) print one line on
stderr and exit 2; ``--debug`` shows the traceback. Progress and tables go to
stderr/stdout for people; ``--json`` prints only JSON on stdout.
"""
from __future__ import annotations

import enum
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from lava_allnet import __version__, api
from lava_allnet.errors import AllnetError


def _choices(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    """An option's accepted values as an Enum: typer lists them in --help and completes them."""
    return enum.Enum(name, {v: v for v in values}, type=str)


RunBackend = _choices("RunBackend", api.RUN_BACKENDS)
EvaluateBackend = _choices("EvaluateBackend", api.EVALUATE_BACKENDS)
RobustnessBackend = _choices("RobustnessBackend", api.ROBUSTNESS_BACKENDS)
ProfileBackend = _choices("ProfileBackend", api.PROFILE_BACKENDS)
Target = _choices("Target", api.TARGETS)
Subset = _choices("Subset", api.SUBSETS)

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode=None,
    help=(
        "NeurALLNet on Lava: train a CUBA spiking CNN with SE gating (lava-dl SLAYER), export it "
        "to NetX HDF5, run it on the Lava simulator (bit-accurate fixed point) or Loihi, and "
        "measure it."
    ),
)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: the embedded synthetic smear generator.")
app.add_typer(data_app, name="data")

# wide tables when piped (rich assumes 80 columns without a terminal)
out = Console(width=None if sys.stdout.isatty() else 160)  # tables, results
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)  # progress, notes, errors
_state = {"debug": False}

# measured once: `run` on 8 synthetic 128x128 images with the shipped model, 2 CPU cores:
# torch 0.8-2.1 s in all; sim 7.8 s (2.3 s compile, 445 ms/image)
SPEED_HELP = "torch is the faster (~4x on 8 images of the shipped model: ~2 s against ~8 s for sim, which first compiles the network for ~2 s)."
BACKEND_HELP = ("sim: Lava Loihi2SimCfg fixed point (bit-accurate); sim-float: Lava floating point; torch: SLAYER fixed-point "
                "reference (the same spikes as sim); loihi2: Loihi 2 hardware (needs lava-loihi). " + SPEED_HELP)
EXPOSURE_HELP = ("Scale each image so its brightest pixel is 255 before encoding (undoes a dimmer exposure; "
                 "the identity on the ALL smear set, where every image reaches 255).")


def _progress(total: int, label: str, enabled: bool = True):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=True, disable=not enabled)
    task = prog.add_task(label, total=total)
    return prog, (lambda done, *_: prog.update(task, completed=done))


class _Bars:
    """The API's progress(stage, done, total) as one transient bar per stage (loading images, backend)."""

    def __init__(self) -> None:
        self._prog, self._stage = None, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._prog, _ = _progress(total, stage)
            self._prog.start()
            self._stage = stage
        self._prog.update(self._prog.task_ids[0], completed=done, total=total)

    def close(self) -> None:
        if self._prog is not None:
            self._prog.stop()
        self._prog, self._stage = None, None

    def __enter__(self) -> "_Bars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _quiet_lava() -> None:
    # Lava and lava-dl warn about unused process-model search paths and old APIs.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"lava(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*CUDA.*")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"lava-allnet {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version (lava-allnet X.Y.Z) and exit."),
) -> None:
    _state["debug"] = debug
    _quiet_lava()


def _read_spec(path: Path):
    from netx import format as nf

    return nf.read(path)


def _resolve_model(first: list[str], model: Optional[Path]) -> tuple[Path, list[str]]:
    """`run [MODEL] PATH...`: the model (a .net file or a shipped model's name) is optional (then
    the shipped default is used)."""
    from lava_allnet.shipped import named_model, require_default_model

    if model is not None:
        return model, first
    if first and first[0].endswith((".net", ".h5", ".hdf5")):
        return Path(first[0]), first[1:]
    if first and (named := named_model(first[0])):
        return named, first[1:]
    return require_default_model(), first


def _emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


# ------------------------------------------------------------------- data


@data_app.command("synth")
def data_synth(
    out_dir: Path = typer.Option(..., "--out", help="Folder to write (ImageFolder: one sub-folder per class)."),
    per_class: int = typer.Option(100, "--per-class", min=1, help="Images per class."),
    size: int = typer.Option(224, "--size", min=32, help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same files)."),
) -> None:
    """Generate seeded synthetic blood-smear fields for the four ALL subtypes (Benign / Early / Pre / Pro)."""
    from lava_allnet.data import synth

    prog, update = _progress(per_class * len(synth.CLASS_NAMES), "generating")
    with prog:
        summary = synth.generate_dataset(out_dir, per_class, size=size, seed=seed, progress=update)
    err.print(f"wrote {summary['total']} images ({per_class} per class, {size}x{size}, seed {seed}) to {out_dir}")


# ------------------------------------------------------------------ train


@app.command()
def train(
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="Recipe file (TOML; see recipes/README.md), e.g. recipes/demo.toml."),
    sets: List[str] = typer.Option([], "--set", help="Override a recipe key for every stage: section.key=value (e.g. schedule.epochs=3); stages.N.section.key=value for stage N (number or name). Repeatable."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory to create (default: runs/<recipe name>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run directory (its recipe.toml); the stage and batch it reached."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default) or cuda[:N]: same integer neuron arithmetic; with --resume, moves the run there."),
    print_recipe: bool = typer.Option(False, "--print-recipe", help="Print the resolved recipe (every stage, every key) and exit."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel training (DDP) in N processes on this machine: gloo on CPU, NCCL with --device cuda (one GPU each). The recipe's batch is the global batch; results match one process. Several machines: torchrun (README)."),
) -> None:
    """Train a model from a recipe file: every stage in order, each exported; the last one is RUN_DIR/model.net."""
    from training import distributed
    from training import recipe as rc

    if resume is not None:
        if recipe is not None or sets:
            raise AllnetError("--resume continues the run's own recipe.toml: give no --recipe or --set")
        # a single-stage run directory (config.json, no recipe.toml) resumes as it is
        single = not (resume / "recipe.toml").exists() and (resume / "config.json").exists()
        resolved, run_dir = (None if single else rc.read_run_recipe(resume)), resume
    else:
        if recipe is None:
            raise AllnetError("give --recipe FILE (e.g. recipes/demo.toml) or --resume RUN_DIR")
        single, resolved = False, rc.load(recipe, sets)  # a bad recipe is refused here, before any rank starts
        run_dir = out_dir or Path("runs") / resolved["name"]
    if print_recipe:
        if resolved is None:
            raise AllnetError(f"{resume}: a single-stage run directory has no recipe.toml to print")
        sys.stdout.write(rc.to_toml(resolved))
        return
    graded = [st["name"] for st in (resolved or {}).get("stages", []) if st["model"]["family"] == "graded"]
    if graded and (nproc > 1 or distributed.launched()):
        from training.graded import ONE_PROCESS

        raise AllnetError(f"stage {graded[0]!r} is graded: {ONE_PROCESS}")
    if nproc > 1:
        args = (["--resume", str(resume)] if resume is not None else
                ["--recipe", str(recipe), *[a for s in sets for a in ("--set", s)], "--out", str(run_dir)])
        distributed.launch(nproc, args + (["--device", device] if device else []))
        err.print(f"trained in {nproc} processes: {run_dir}")
        return
    ranked = distributed.launched()  # one rank of --nproc or torchrun: rank 0 reports, the others stay quiet
    finished = False  # every rank ended normally: leave the process group in step
    try:
        console = err
        if ranked:
            distributed.init(device or "cpu")
            console = err if distributed.is_main() else Console(file=open(os.devnull, "w"))
        if single:
            from training.trainer import train as train_stage

            metrics = train_stage(resume, resume=True, console=console, device=device)
            best = metrics.get("best") or {}
            if distributed.is_main():
                out.print(f"best epoch {best.get('epoch')}: validation accuracy "
                          f"{best.get('val_accuracy', float('nan')):.4f} → {resume}/best.pt")
            finished = True
            return
        summary = rc.run(resolved, run_dir, resume=resume is not None, device=device, console=console)
        if distributed.is_main():
            for s in summary["stages"]:
                best = s["best"] or {}
                out.print(f"stage {s['name']}: best epoch {best.get('epoch')}, validation accuracy "
                          f"{best.get('val_accuracy', float('nan')):.4f}")
            out.print(f"model → {summary['model']}")
        finished = True
    except BaseException as exc:
        if not ranked:
            raise
        distributed.record_failure(exc)  # the launcher reads the cause there and names the rank
        if os.environ.get(distributed.LAUNCHER_ENV):
            raise typer.Exit(2)  # `train --nproc` prints the cause, with the rank, in one line
        if isinstance(exc, AllnetError):
            raise AllnetError(f"rank {distributed.rank()}: {exc}") from exc
        raise
    finally:
        if ranked:
            distributed.shutdown(sync=finished)


@app.command()
def models() -> None:
    """List the named model configs."""
    from lava_allnet.config import MODELS

    t = Table("name", "input", "T", "channels", "SE", "population")
    for name, c in MODELS.items():
        t.add_row(name, str(c.input_size), str(c.time_steps), str(list(c.channels)),
                  str([i + 1 for i, s in enumerate(c.se) if s]), str(c.population))
    out.print(t)


# ----------------------------------------------------------------- export


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="Training run directory (holds best.pt)."),
    out_file: Path = typer.Option(..., "--out", help="Model file to write (NetX HDF5, .net)."),
) -> None:
    """Export the best checkpoint of a run to the (extended) NetX HDF5 format."""
    from netx.export import export as do_export
    from training.trainer import load_trained

    net = load_trained(run_dir)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    spec = do_export(net, out_file)
    err.print(f"wrote {out_file} ({out_file.stat().st_size / 1e6:.3f} MB, {len(spec.layers)} layers, "
              f"T={spec.time_steps}, classes {list(spec.class_names)})")


@app.command()
def retime(
    model_file: Path = typer.Argument(..., help="Model file (.net) to read."),
    time_steps: int = typer.Option(..., "--time-steps", min=1, help="Steps per image in the new file."),
    out_file: Path = typer.Option(..., "--out", help="Model file to write (may not be the input)."),
) -> None:
    """Write a copy of a model that runs for another number of time steps per image (nothing retrained)."""
    from netx import format as nf

    if out_file.resolve() == model_file.resolve():
        raise AllnetError(f"retime: --out {out_file} is the input file; write a new one")
    spec = nf.read(model_file)
    old = spec.time_steps
    out_file.parent.mkdir(parents=True, exist_ok=True)
    nf.write(nf.retimed(spec, time_steps), out_file)
    err.print(f"wrote {out_file}: T {old} → {time_steps}, weights unchanged")


@app.command()
def soup(
    run_dirs: List[Path] = typer.Argument(..., help="Two or more run directories fine-tuned from one start (same model config and split)."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory to create (gets best.pt, for `lava-allnet export`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Average the best.pt weights of several runs into one run directory (a uniform "model soup")."""
    from training.soup import soup as do_soup

    summary = do_soup(run_dirs, out_dir)
    if as_json:
        _emit_json(summary)
        return
    t = Table(title=f"soup of {len(summary['runs'])} runs → {out_dir}/best.pt")
    for col in ("run", "epoch", "val acc", "val loss"):
        t.add_column(col)
    for r in summary["runs"]:
        t.add_row(r["run"], str(r["epoch"]), "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.3f}",
                  "-" if r["val_loss"] is None else f"{r['val_loss']:.3f}")
    out.print(t)


# -------------------------------------------------------------------- run


def _print_results(run, spec, max_columns: int = 8, max_images: int = 32) -> None:
    t = Table(title=f"predictions ({run.backend})")
    t.add_column("image", overflow="fold")
    t.add_column("prediction")
    t.add_column("label")
    for c in spec.class_names:
        t.add_column(c, justify="right")
    calibrated = spec.calibration is not None
    if calibrated:
        t.add_column("confidence", justify="right")
        t.add_column("warning")
    for r in run.results[:max_images]:
        mark = "" if r.label is None else (" ✓" if r.correct else " ✗")
        extra = []
        if calibrated:
            warn = ", ".join(w for w, on in (("out of distribution", r.out_of_distribution),
                                              ("abstain: refer to a human", r.abstain)) if on)
            extra = [f"{r.confidence:.3f}", warn or "-"]
        t.add_row(r.path, r.prediction + mark, r.label or "-", *[str(r.class_counts[c]) for c in spec.class_names], *extra)
    out.print(t)
    if len(run.results) > max_images:
        out.print(f"... {len(run.results) - max_images} more images: use --out FILE or --json")
    if not calibrated:
        err.print("note: this model has no calibration (no probabilities, abstention or out-of-distribution "
                  "warning): lava-allnet calibrate")
    n = len(run.results)
    for start in range(0, n, max_columns):
        chunk = run.results[start:start + max_columns]
        lt = Table(title="spikes / messages per layer" + (f" (images {start + 1}-{start + len(chunk)})" if n > max_columns else ""))
        lt.add_column("layer")
        for i, _ in enumerate(chunk, start=start + 1):
            lt.add_column(f"#{i}", justify="right")
        for name in run.stage_names:
            lt.add_row(name, *[f"{r.layer_counts[name]:,}" if name in r.layer_counts else "-" for r in chunk])
        out.print(lt)
        if start + max_columns >= max_images and n > max_images:
            out.print(f"... per-layer counts of {n - start - len(chunk)} more images: use --json")
            break


def _run_json(run, spec, model_path: Path) -> dict:
    return {
        "model": str(model_path),
        "backend": run.backend,
        "time_steps": spec.time_steps,
        "class_names": list(spec.class_names),
        "n_images": len(run.results),
        "accuracy": run.accuracy(),
        "calibrated": spec.calibration is not None,
        "results": [r.to_dict() for r in run.results],
        "skipped": [{"path": p, "reason": why} for p, why in run.skipped],
        "timing": run.timing,
        "state_range_violations": run.overflow,
    }


@app.command()
def run(
    paths: List[str] = typer.Argument(..., help="[MODEL] then image files and/or folders. MODEL: a .net file or a shipped model's name (neurallnet-aria-v2); without one, the shipped default (models/neurallnet-aria.net, packaged with lava-allnet) is used."),
    backend: RunBackend = typer.Option(RunBackend.sim, "--backend", "-b", help=BACKEND_HELP),
    model: Optional[Path] = typer.Option(None, "--model", help="Model file (alternative to giving it first)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (see README) instead of tables."),
    workers: int = typer.Option(1, "--workers", min=1, help="Simulator processes, each with its own compiled network."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first unreadable image instead of skipping it."),
    stock: bool = typer.Option(False, "--stock", help="Use Lava's stock process models (slow; for comparison)."),
    exposure: bool = typer.Option(False, "--normalize-exposure", help=EXPOSURE_HELP),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Also write the per-image results as they are computed: CSV (path, label, prediction, correct, confidence, abstain, out_of_distribution, ood_score, p_<class>, spikes_<class>) or, for a .jsonl name, JSON Lines with every field. An interrupted run keeps what was written."),
    resume: bool = typer.Option(False, "--resume", help="Continue the --out file of an interrupted run: skip the images it already holds, then report on all."),
) -> None:
    """Classify images: predicted class, output spikes per class (a graded model: its class scores) and spikes or messages per layer for each image; with a calibrated model, probabilities, confidence, abstention and the out-of-distribution warning."""
    from hw_targets.backends import check_backend

    backend = backend.value
    model_path, inputs = _resolve_model(paths, model)
    if not inputs:
        raise AllnetError("no images given (usage: lava-allnet run [MODEL.net] PATH...)")
    if resume and out_file is None:
        raise AllnetError("--resume continues the results file given with --out: give --out FILE")
    m = api.Model(model_path)
    spec = m.spec
    check_backend(backend, spec)
    with _Bars() as bars:
        result = m.run(inputs, backend, workers=workers, strict=strict, normalize_exposure=exposure, progress=bars,
                       out=out_file, resume=resume, fast=not stock)
    _print_skipped(result.skipped)
    if out_file is not None:
        err.print(f"wrote {out_file} ({len(result.results)} results)")
    if as_json:
        _emit_json(_run_json(result, spec, model_path))
        return
    _print_results(result, spec)
    acc = result.accuracy()
    tm = result.timing
    line = f"{len(result.results)} image(s) on {backend}: {tm.get('ms_per_image', 0):.1f} ms/image"
    if "compile_s" in tm:
        line += f", {tm['ms_per_step']:.2f} ms/step, compile {tm['compile_s']:.2f} s"
    if acc is not None:
        line += f"; accuracy {acc:.4f} on {sum(r.label is not None for r in result.results)} labelled"
    out.print(line)


# ------------------------------------------------------------------- info


@app.command()
def info(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Layers with shapes, parameters, bytes, neurons and synapses."""
    from netx.analysis import layer_stats, totals

    spec = _read_spec(model_file)
    rows = layer_stats(spec)
    tot = totals(rows)
    size = model_file.stat().st_size
    if as_json:
        _emit_json({"model": str(model_file), "file_bytes": size, "format_version": spec.format_version,
                    "class_names": list(spec.class_names), "time_steps": spec.time_steps,
                    "population": spec.population, "layers": [r.to_dict() for r in rows], "totals": tot})
        return
    t = Table(title=f"{model_file} (format v{spec.format_version}, T={spec.time_steps}, classes {', '.join(spec.class_names)})")
    for col in ("#", "layer", "type", "shape", "params", "bytes", "neurons", "synapses", "fan-in"):
        t.add_column(col, justify="right" if col not in ("layer", "type") else "left")
    for r in rows:
        t.add_row(str(r.index), r.name, r.type, "x".join(map(str, r.shape)), f"{r.parameters:,}", f"{r.weight_bytes:,}",
                  f"{r.neurons:,}", f"{r.synapses:,}", f"{r.max_fan_in:,}")
    t.add_row("", "total", "", "", f"{tot['parameters']:,}", f"{tot['weight_bytes']:,}", f"{tot['neurons']:,}",
              f"{tot['synapses']:,}", "")
    out.print(t)
    out.print(f"file size {size / 1e6:.3f} MB; {tot['parameters']:,} parameters")


# ----------------------------------------------------------------- verify


@app.command()
def verify(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    paths: List[str] = typer.Argument(..., help="Image files and/or folders."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (values_compared per layer, the first difference)."),
    float_mode: bool = typer.Option(False, "--sim-float", help="Compare against the floating-point simulator instead (not expected to match)."),
) -> None:
    """Run the torch fixed-point reference and the Lava simulator on the same images; compare every neuron's
    message (spike or graded value) of every layer at every step.

    Images go through in chunks of 8, so memory stays bounded. Exit status 1 on any difference; the first
    one is reported with its layer, image, step, neuron and both values.
    """
    from hw_targets.verify import verify_files
    from lava_allnet.data import images as di

    spec = _read_spec(model_file)
    files = di.collect_image_paths(paths)
    candidate = "sim-float" if float_mode else "sim"
    prog, update = _progress(len(files), f"torch vs {candidate}")
    with prog:
        report, skipped = verify_files(spec, files, candidate=candidate, progress=update)
    for p, why in skipped:
        err.print(f"[yellow]skipped[/] {why}")
    if as_json:
        _emit_json({"model": str(model_file), **report})
    else:
        t = Table(title=f"torch vs {candidate}: every message value, {report['n_images']} image(s)")
        for col in ("layer", "neurons", "values compared", "messages (torch)", f"messages ({candidate})", "equal"):
            t.add_column(col, justify="right" if col != "layer" else "left")
        for row in report["layers"]:
            t.add_row(row["layer"], f"{row['neurons']:,}", f"{row['values_compared']:,}",
                      f"{row['reference_messages']:,}", f"{row['candidate_messages']:,}",
                      "yes" if row["equal"] else "[red]NO[/]")
        out.print(t)
        out.print(f"predictions equal: {report['predictions_equal']}; overflow (24-bit) in torch: {report['overflow']}")
        first = report["first_difference"]
        if first is not None:
            out.print(f"first difference: {first['layer']}, image {first['image']}, step {first['step']}, neuron "
                      f"{first['neuron']} {tuple(first['index'])}: torch {first['reference']}, "
                      f"{candidate} {first['candidate']}")
        out.print("VERIFIED: identical" if report["identical"] else "[red]MISMATCH[/]")
    if not report["identical"]:
        raise typer.Exit(1)


# ---------------------------------------------------------- profile / map


@app.command()
def profile(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    paths: List[str] = typer.Argument(..., help="Image files and/or folders."),
    backend: ProfileBackend = typer.Option(ProfileBackend.sim, "--backend", "-b", help="sim: the Lava simulator; torch: the fixed-point reference (the counts are identical on sim and torch; torch is faster); loihi2: Loihi 2 hardware (needs lava-loihi)."),
    target: Target = typer.Option(Target.loihi1, "--target", help="Energy / limits table."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Also write profile.csv, profile.json and PNG plots here."),
    workers: int = typer.Option(1, "--workers", min=1, help="Simulator processes."),
) -> None:
    """Per image and layer: spikes, rate, synaptic ops, neuron updates, active neurons, timing and energy proxy."""
    from hw_targets import profile as hp

    backend, target = backend.value, target.value
    with _Bars() as bars:
        # per-image entries (every layer's per-step counts) only where they are printed or written
        model, report, _ = api.profile_run(model_file, paths, backend, target, workers, progress=bars,
                                           images=as_json or out_dir is not None)
    spec = model.spec
    written = hp.write_outputs(report, out_dir) if out_dir is not None else []
    if as_json:
        _emit_json({"model": str(model_file), **report, "written": [str(p) for p in written]})
        return
    t = Table(title=f"activity per image (mean of {report['n_images']}), {backend}, T={spec.time_steps}, target {target}")
    for col in ("layer", "neurons", "spikes/msgs", "rate /neuron/step", "synaptic ops", "neuron updates", "active", "energy (nJ)"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for l in report["means"]["layers"]:
        t.add_row(l["layer"], f"{l['neurons']:,}", f"{l['messages']:,.0f}", "-" if l["rate"] is None else f"{l['rate']:.4f}",
                  f"{l['synaptic_ops']:,.0f}", f"{l['neuron_updates']:,.0f}", f"{l['active_neurons']:,.0f}",
                  "-" if l["energy_pj"] is None else f"{l['energy_pj'] / 1e3:,.1f}")
    m = report["means"]["totals"]
    t.add_row("total", "", f"{m['messages']:,.0f}", "", f"{m['synaptic_ops']:,.0f}", f"{m['neuron_updates']:,.0f}",
              f"{m['active_neurons']:,.0f}", "-" if m["energy_pj"] is None else f"{m['energy_pj'] / 1e3:,.1f}")
    out.print(t)
    e = t2 = Table(title="energy proxy per image")
    e.add_column("model")
    e.add_column("operations", justify="right")
    e.add_column("energy (µJ)", justify="right")
    e.add_row("ANN, same network (MACs x 4.6 pJ)", f"{report['ann_macs_per_image']:,}", f"{m['ann_energy_pj'] / 1e6:.2f}")
    e.add_row("SNN (synaptic ops x 0.9 pJ)", f"{m['synaptic_ops']:,.0f}", f"{m['snn_synops_energy_pj'] / 1e6:.2f}")
    if m["energy_pj"] is not None:
        e.add_row(f"SNN on {target} (per-op energies)", "", f"{m['energy_pj'] / 1e6:.2f}")
    out.print(t2)
    out.print(f"synaptic ops per ANN MAC: {m['synaptic_ops_per_ann_mac']:.3f}")
    if m["energy_pj"] is None:
        out.print(report["energy_source"])
    tm = report["timing"]
    out.print(f"{tm['ms_per_image']:.1f} ms/image, {tm['ms_per_step']:.2f} ms/step on {backend}")
    for p in written:
        err.print(f"wrote {p}")


@app.command("map")
def map_cmd(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    target: Target = typer.Option(Target.loihi2, "--target", help="The chip whose per-core limits apply."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Per layer: neurons, synapses, fan-in, synaptic memory and cores needed under the target's per-core limits."""
    from hw_targets import profile as hp
    from hw_targets.mapping import map_network

    spec = _read_spec(model_file)
    report = map_network(spec, hp.load_target(target.value))
    if as_json:
        _emit_json({"model": str(model_file), **report})
        return
    t = Table(title=f"{model_file} on {report['target_title']}")
    for col in ("layer", "type", "neurons", "synapses", "fan-in", "syn. memory (B)", "graded", "cores", "limited by"):
        t.add_column(col, justify="left" if col in ("layer", "type", "limited by") else "right")
    for r in report["layers"]:
        t.add_row(r["layer"], r["type"], f"{r['neurons']:,}", f"{r['synapses']:,}", f"{r['max_fan_in']:,}",
                  f"{r['synaptic_memory_bytes']:,}", "yes" if r["graded_messages"] else "no", str(r["cores"]),
                  r["limiting"] or "-")
    out.print(t)
    verdict = "fits one chip" if report["fits_one_chip"] else "does NOT fit one chip: " + "; ".join(report["problems"])
    out.print(f"{report['total_cores']} of {report['chip_cores']} cores; {verdict}")
    if report["limits_not_published"]:
        out.print(f"not applied (unpublished per-core limits): {', '.join(report['limits_not_published'])}")
    for n in report["notes"]:
        out.print(f"note: {n}")


# ------------------------------------------------------------- evaluation


def _dataset_inputs(spec, data_dir: Path, split: Optional[Path], subset: str, limit: Optional[int], strict: bool = False):
    """An ImageFolder (classes must be the model's), optionally restricted to a saved split."""
    with _Bars() as bars:
        data = api.dataset_inputs(spec, data_dir, split, subset, limit, strict, progress=bars)
    _print_skipped(data.skipped)
    return data


def _print_skipped(skipped) -> None:
    for _, why in skipped:
        err.print(f"[yellow]skipped[/] {why}")


@app.command()
def evaluate(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    data_dir: Path = typer.Argument(..., help="ImageFolder whose class folders are the model's classes."),
    backend: EvaluateBackend = typer.Option(EvaluateBackend.sim, "--backend", "-b", help="sim: the Lava simulator (bit-accurate fixed point); torch: the fixed-point reference. Identical predictions; " + SPEED_HELP),
    split: Optional[Path] = typer.Option(None, "--split", help="A run's split.json: evaluate only its --subset files."),
    subset: Subset = typer.Option(Subset.test, "--subset", help="Which part of --split."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write predictions.csv (as images are done), then metrics.json and PNGs: confusion matrix, reliability and risk-coverage (a calibrated model)."),
    resamples: int = typer.Option(2000, "--resamples", min=1000, help="Bootstrap resamples for the 95% CI."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    workers: int = typer.Option(1, "--workers", min=1, help="Simulator processes."),
    strict: bool = typer.Option(False, "--strict", help="Fail on an unreadable image instead of skipping it."),
    exposure: bool = typer.Option(False, "--normalize-exposure", help=EXPOSURE_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted evaluation: --out's predictions.csv (written as images are done) keeps its images, the rest are run; the metrics equal an uninterrupted run's."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: evaluate only every n-th image from the i-th (0-based) into --out, e.g. on n machines; combine the n folders with --merge."),
    merge: Optional[List[Path]] = typer.Option(None, "--merge", help="The --out folders of all n `--shard i/n` runs (repeat the option): their predictions merged into the metrics of one run, bit for bit; nothing is run."),
) -> None:
    """Accuracy with a bootstrapped 95% CI, per-class precision/recall/F1, confusion matrix, per-image predictions."""
    from lava_allnet.evaluation import confusion_text, write_evaluation

    backend = backend.value
    if merge and (shard or resume):
        raise AllnetError("--merge combines finished shards: not with --shard or --resume")
    parsed = None
    if shard is not None:
        try:
            i, n = (int(v) for v in shard.split("/"))
        except ValueError:
            raise AllnetError(f"--shard {shard!r}: give i/n, e.g. 0/4") from None
        parsed = (i, n)
    with _Bars() as bars:
        if merge:
            report, result = api.merge_evaluations(model_file, data_dir, merge, split, subset.value, resamples, seed)
        else:
            report, result = api.evaluate_run(model_file, data_dir, split, subset.value, backend, resamples, seed,
                                              workers, strict, exposure, progress=bars, out_dir=out_dir, resume=resume,
                                              shard=parsed)
    _print_skipped(result.skipped)
    written = write_evaluation(report, result, out_dir) if out_dir is not None else []
    if as_json:
        _emit_json({**report, "written": [str(p) for p in written]})
        return
    lo, hi = report["accuracy_ci95"]
    out.print(f"accuracy {report['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f}, {resamples} bootstrap resamples) on "
              f"{report['n_images']} images, backend {backend}")
    t = Table("class", "precision", "recall", "F1", "support")
    for c, m in report["per_class"].items():
        t.add_row(c, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", str(m["support"]))
    out.print(t)
    out.print(confusion_text(report))
    for p in written:
        err.print(f"wrote {p}")


@app.command()
def calibrate(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    data_dir: Path = typer.Argument(..., help="The ImageFolder the model was trained on."),
    split: Path = typer.Option(..., "--split", help="The training run's split.json: its validation images fit the temperature and thresholds, its training images the out-of-distribution reference."),
    out_file: Path = typer.Option(..., "--out", help="The calibrated copy of the model file to write (format version 3 or later: the lowest that holds its fields)."),
    target_accuracy: float = typer.Option(0.99, "--target-accuracy", min=0.5, max=1.0, help="Abstain below the lowest confidence at which the accepted validation images reach this accuracy."),
    ood_quantile: float = typer.Option(0.98, "--ood-quantile", min=0.5, max=0.999, help="Flag images whose out-of-distribution score is above this quantile of the validation images' scores."),
    backend: EvaluateBackend = typer.Option(EvaluateBackend.torch, "--backend", "-b", help="torch or sim: identical counts, so identical calibrations; " + SPEED_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the calibration as JSON."),
) -> None:
    """Fit probabilities (a temperature on the output spike counts, or a graded model's class scores), an abstention threshold and an out-of-distribution warning; write them into a copy of the model."""
    with _Bars() as bars:
        report = api.calibrate(model_file, data_dir, split, out_file, target_accuracy, ood_quantile, backend.value,
                               progress=bars)
    if as_json:
        _emit_json(report)
        return
    f = report["fitted"]
    out.print(f"temperature {report['temperature']:.4g} (validation NLL {f['validation_nll']:.4f}, {f['validation_images']} images)")
    acc = f["validation_accepted_accuracy"]
    out.print(f"abstain below confidence {report['abstain_below']:.4f}: validation coverage {f['validation_coverage']:.3f}, "
              f"accuracy on accepted {'-' if acc is None else f'{acc:.4f}'} (target {report['target_accuracy']:g})")
    out.print(f"out of distribution above score {report['ood_threshold']:.3f} (validation quantile {report['ood_quantile']:g}; "
              f"reference: {f['training_images']} training images)")
    err.print(f"wrote {out_file}")


@app.command()
def robustness(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    data_dir: Path = typer.Argument(..., help="ImageFolder whose class folders are the model's classes."),
    backend: RobustnessBackend = typer.Option(RobustnessBackend.torch, "--backend", "-b", help="torch: the fixed-point reference; sim: the Lava simulator (identical predictions; sim compiles once per distortion level)."),
    split: Optional[Path] = typer.Option(None, "--split", help="A run's split.json: use only its --subset files."),
    subset: Subset = typer.Option(Subset.test, "--subset", help="Which part of --split."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use at most this many images (evenly spaced)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    out_dir: Path = typer.Option(Path("robustness-out"), "--out", help="Where robustness.json and one PNG curve per distortion go."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random distortions and the bootstrap."),
    exposure: bool = typer.Option(False, "--normalize-exposure", help=EXPOSURE_HELP + " In robustness, each distorted image."),
) -> None:
    """Accuracy under Gaussian noise, salt-and-pepper, blur, occlusion, rotation and illumination, 3 severities each."""
    from lava_allnet.evaluation import write_robustness

    with _Bars() as bars:
        report = api.robustness(model_file, data_dir, split, subset.value, backend.value, limit, seed, exposure,
                                progress=bars)
    backend = backend.value
    written = write_robustness(report, out_dir)
    if as_json:
        _emit_json({**report, "written": [str(p) for p in written]})
        return
    t = Table(title=f"accuracy under distortion ({report['n_images']} images, {backend}); clean {report['clean']['accuracy']:.4f}")
    t.add_column("distortion")
    for i in (1, 2, 3):
        t.add_column(f"severity {i}", justify="right")
    for kind, rows in report["distortions"].items():
        t.add_row(kind, *[f"{r['accuracy']:.4f} ({r['parameter']:g})" for r in rows])
    out.print(t)
    for p in written:
        err.print(f"wrote {p}")


@app.command()
def report(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    data_dir: Path = typer.Argument(..., help="ImageFolder whose class folders are the model's classes."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for report.html (one self-contained page: figures embedded, no network needed)."),
    split: Optional[Path] = typer.Option(None, "--split", help="A run's split.json: report on its --subset files."),
    subset: Subset = typer.Option(Subset.test, "--subset", help="Which part of --split."),
    backend: EvaluateBackend = typer.Option(EvaluateBackend.torch, "--backend", "-b", help="torch or sim: identical predictions and counts; " + SPEED_HELP),
    target: Target = typer.Option(Target.loihi1, "--target", help="Energy model of the activity section."),
    robustness_images: int = typer.Option(64, "--robustness-images", min=0, help="Images (evenly spaced) for the robustness curves, 19 passes each on torch; 0: no robustness section."),
    gallery: int = typer.Option(6, "--gallery", min=0, help="Grad-CAM images of errors, and as many of the most confident correct images."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and the distortions."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """A report a clinician can open: model facts, metrics with CIs, confusion matrix, reliability, risk-coverage, robustness, activity and energy, Grad-CAM gallery, in one self-contained report.html."""
    with _Bars() as bars:
        rep = api.report(model_file, data_dir, out_dir, split, subset.value, backend.value, target.value,
                         robustness_images, gallery, seed=seed, progress=bars)
    if as_json:
        _emit_json(rep)
        return
    lo, hi = rep["accuracy_ci95_wilson"]
    out.print(f"accuracy {rep['accuracy']:.4f} (95% Wilson {lo:.4f}-{hi:.4f}) on {rep['n_images']} images")
    for p in rep["written"]:
        err.print(f"wrote {p}")


@app.command()
def explain(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    image: Path = typer.Argument(..., help="One image file."),
    out_file: Path = typer.Option(..., "--out", help="PNG to write (input and Grad-CAM heat map)."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Conv layer for Grad-CAM (default: the deepest whose map keeps 1/8 of the image side, at least 8x8)."),
    class_name: Optional[str] = typer.Option(None, "--class", help="Explain this class instead of the predicted one."),
    exposure: bool = typer.Option(False, "--normalize-exposure", help=EXPOSURE_HELP),
) -> None:
    """Grad-CAM through the surrogate gradients (a graded model: straight through its rounding): where the network looked for the predicted class."""
    from lava_allnet.data.images import load_image, normalize_exposure
    from lava_allnet.evaluation import grad_cam, save_cam_png
    from netx.export import network_from_spec

    spec = _read_spec(model_file)
    net = network_from_spec(spec)
    img = load_image(image, spec.input.shape[1])
    if exposure:
        img = normalize_exposure(img[None])[0]
    k = None
    if class_name is not None:
        if class_name not in spec.class_names:
            raise AllnetError(f"unknown class {class_name!r}; the model's classes are {list(spec.class_names)}")
        k = spec.class_names.index(class_name)
    try:
        res = grad_cam(net, img, layer=layer, class_index=k)
    except ValueError as exc:
        raise AllnetError(str(exc)) from exc
    display = load_image(image, max(224, spec.input.shape[1]))
    import numpy as np
    from PIL import Image

    cam = np.asarray(Image.fromarray((res["cam"] * 255).astype(np.uint8)).resize(display.shape[1:][::-1], Image.BILINEAR)) / 255.0
    cls = spec.class_names[res["class_index"]]
    pred = spec.class_names[res["predicted_index"]]
    save_cam_png(display, cam, out_file, f"Grad-CAM for {cls} at {res['layer']} (predicted {pred})")
    out.print(f"{image}: predicted {pred}; Grad-CAM for {cls} at {res['layer']} → {out_file}")


# ------------------------------------------------------------------- demo


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo-out"), "--out", help="Working folder (run directory, held-out images)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe to train (default: the packaged recipes/demo.toml)."),
    held_out: int = typer.Option(8, "--held-out", min=1, help="Held-out images per class run on the simulator."),
) -> None:
    """The main job on the embedded default: train recipes/demo.toml on synthetic smears, export, run held-out images on the Lava simulator."""
    import shutil

    from lava_allnet import shipped
    from lava_allnet.data import synth
    from hw_targets.inference import load_dataset, run_backend
    from training import recipe as rc

    t0 = time.perf_counter()
    recipe = recipe or shipped.recipe_path("demo")
    resolved = rc.load(recipe)
    first = resolved["stages"][0]
    if first["data"]["root"] != "synthetic":
        raise AllnetError(f"{recipe}: the demo trains on synthetic smears (data.root = \"synthetic\")")
    per_class, size, seed = first["data"]["synthetic_per_class"], rc.model_config(first).input_size, first["schedule"]["seed"]
    run_dir, test_dir = out_dir / "run", out_dir / "held-out"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    err.print(f"[bold]1/3[/] training {recipe} ({len(resolved['stages'])} stage(s)) into {run_dir}")
    summary = rc.run(resolved, run_dir, console=err)
    model_file = Path(summary["model"])
    err.print(f"[bold]2/3[/] exported {model_file} ({model_file.stat().st_size / 1e3:.0f} kB)")
    if not test_dir.exists():
        tmp = out_dir / "held-out-src"
        synth.generate_dataset(tmp, per_class + held_out, size=size, seed=seed)
        # images per_class.. are never seen in training (same generator and seed, later indices)
        for c in synth.CLASS_NAMES:
            (test_dir / c).mkdir(parents=True, exist_ok=True)
            for f in sorted((tmp / c).iterdir())[per_class:]:
                shutil.move(str(f), test_dir / c / f.name)
        shutil.rmtree(tmp)
    err.print(f"[bold]3/3[/] running {held_out * 4} held-out images on the Lava simulator (Loihi2SimCfg fixed_pt)")
    spec = _read_spec(model_file)
    data = load_dataset(test_dir, spec.input.shape[1], spec.class_names)
    prog, update = _progress(len(data.paths), "sim")
    with prog:
        result = run_backend(spec, data, "sim", progress=update)
    _print_results(result, spec, max_images=8)
    best = summary["stages"][-1]["best"]
    out.print(f"validation accuracy (torch, best epoch {best['epoch']}): {best['val_accuracy']:.3f}")
    out.print(f"held-out accuracy on the Lava simulator: {result.accuracy():.3f} ({len(result.results)} images; chance 0.25)")
    out.print(f"simulator: {result.timing['ms_per_step']:.1f} ms/step, {result.timing['ms_per_image']:.0f} ms/image, "
              f"compile {result.timing['compile_s']:.1f} s; demo took {time.perf_counter() - t0:.0f} s")


# ------------------------------------------------------------------- main


def _bad_value_line(exc: Exception) -> Optional[str]:
    """A bad option value (typer's BadParameter) as one line; None for other errors.

    A choice: "unknown backend 'gpu' (--backend); choose one of sim, sim-float, torch, loihi2".
    """
    import re

    param = getattr(exc, "param", None)
    message = getattr(exc, "message", None)
    if (param is None or not isinstance(message, str) or not message.strip() or not hasattr(exc, "exit_code")
            or type(exc).__name__ == "MissingParameter"):  # a missing argument keeps typer's usage message
        return None
    opts = "/".join(getattr(param, "opts", None) or [str(getattr(param, "name", "?"))])
    message = re.sub(r"^Value error, ", "", message.strip()).rstrip(".")
    m = re.fullmatch(r"(.+?) is not one of (.+)", message)
    if m is not None:
        choices = ", ".join(c.strip().strip("'\"") for c in m.group(2).split(","))
        return f"unknown {param.name} {m.group(1)} ({opts}); choose one of {choices}"
    return f"invalid value for {opts}: {message}"


def main() -> None:
    """Console entry point with the error policy."""
    _quiet_lava()
    debug = "--debug" in sys.argv[1:]
    try:
        rc = app(standalone_mode=False, prog_name="lava-allnet")  # click returns the exit code of typer.Exit here
        sys.exit(rc or 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except (AllnetError, OSError) as exc:  # expected: bad inputs, files, folders
        if debug:
            raise
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:  # usage errors (typer's click) and the unexpected
        line = _bad_value_line(exc)
        if line is not None and not debug:  # e.g. --backend gpu: one line, exit 2, like the errors above
            err.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
            sys.exit(2)
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        err.print(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                  markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
