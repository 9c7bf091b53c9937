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

from lava_allnet.config import NORM_MEANS
from lava_allnet.errors import AllnetError

# typer offers an option's choices from an Enum
NormMeans = enum.Enum("NormMeans", {m: m for m in NORM_MEANS}, type=str)

app = typer.Typer(
    add_completion=False,
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

BACKEND_HELP = "sim: Lava Loihi2SimCfg fixed point (bit-accurate); sim-float: Lava floating point; torch: SLAYER fixed-point reference; loihi2: Loihi 2 hardware (needs lava-loihi)."
EXPOSURE_HELP = ("Scale each image so its brightest pixel is 255 before encoding (undoes a dimmer exposure; "
                 "the identity on the ALL smear set, where every image reaches 255).")


def _progress(total: int, label: str, enabled: bool = True):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=True, disable=not enabled)
    task = prog.add_task(label, total=total)
    return prog, (lambda done, *_: prog.update(task, completed=done))


def _quiet_lava() -> None:
    # Lava and lava-dl warn about unused process-model search paths and old APIs.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"lava(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*CUDA.*")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    _state["debug"] = debug
    _quiet_lava()


def _read_spec(path: Path):
    from netx import format as nf

    return nf.read(path)


def _resolve_model(first: list[str], model: Optional[Path]) -> tuple[Path, list[str]]:
    """`run [MODEL.net] PATH...`: the model is optional (then the shipped one is used)."""
    from hw_targets.inference import DEFAULT_MODEL

    if model is not None:
        return model, first
    if first and first[0].endswith((".net", ".h5", ".hdf5")):
        return Path(first[0]), first[1:]
    if not DEFAULT_MODEL.exists():
        raise AllnetError(f"no model given and the shipped model {DEFAULT_MODEL} is missing")
    return DEFAULT_MODEL, first


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
    data: Optional[Path] = typer.Option(None, "--data", help="ImageFolder of training images (default: fresh synthetic smears)."),
    epochs: int = typer.Option(10, "--epochs", min=1, help="Training epochs."),
    out_dir: Path = typer.Option(Path("runs/neurallnet"), "--out", help="Run directory to create."),
    seed: int = typer.Option(0, "--seed", help="Seed of init, split, shuffling and augmentation."),
    model: str = typer.Option("neurallnet", "--model", help="Model config name (see `lava-allnet models`)."),
    no_se: bool = typer.Option(False, "--no-se", help="The same network without SE gates (ablation)."),
    se_layers: Optional[str] = typer.Option(None, "--se-layers", help="Conv layers (1-based, comma-separated, e.g. 1,2,3,4,5) followed by an SE gate, instead of the model config's."),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=16, help="Override the input side in pixels."),
    time_steps: Optional[int] = typer.Option(None, "--time-steps", min=1, help="Override T."),
    threshold_gains: Optional[str] = typer.Option(None, "--threshold-gains", help="Integer gain per weight layer, comma-separated (conv1..convN, fc; e.g. 1,8,8,1,1,1): the layer's threshold, weights, bias and states scale by it, a finer weight grid at a larger state range. With --init, the init model's weights are rescaled to match."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per training step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (one-cycle schedule; default 3e-3 with --data, 1e-2 on synthetic smears)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.0, max=0.5, help="Stratified validation share."),
    test_fraction: float = typer.Option(0.0, "--test-fraction", min=0.0, max=0.5, help="Stratified test share, held out and saved in split.json."),
    per_class: int = typer.Option(150, "--per-class", min=3, help="Synthetic images per class (without --data)."),
    threads: int = typer.Option(0, "--threads", min=0, help="torch threads (0: default)."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Disable flips and 90-degree rotations."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run directory."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this best.pt or exported .net model (fine-tuning; same model config)."),
    split: Optional[Path] = typer.Option(None, "--split", exists=True, dir_okay=False, help="Reuse this saved split.json (e.g. models/neurallnet-aria.split.json) instead of drawing one."),
    range_weight: float = typer.Option(1e-3, "--range-weight", min=0.0, help="Weight of the penalty that keeps neuron states in Loihi's 24-bit range."),
    distill: float = typer.Option(0.0, "--distill", min=0.0, max=1.0, help="Share of the loss taken by distillation from an ANN teacher of the same shape (trained first into the run directory; 0: off)."),
    distill_temperature: float = typer.Option(2.0, "--distill-temperature", min=0.1, help="Softmax temperature of the distillation term."),
    teacher_epochs: int = typer.Option(12, "--teacher-epochs", min=1, help="Training epochs of the ANN teacher."),
    color_jitter: float = typer.Option(0.0, "--color-jitter", min=0.0, max=5.0, help="Strength of the brightness / stain / contrast jitter added to the augmentation (1: gain and contrast ±12%%, stain ±5%% per channel; 0: off)."),
    average_from: int = typer.Option(0, "--average-from", min=0, help="From this epoch on, validate (and keep as best.pt) the running mean of the weights of every epoch end (weight averaging; 0: off)."),
    norm_means: NormMeans = typer.Option("batch", "--norm-means", help="The batch-norm means (the biases Lava and Loihi deploy) in training: batch (per-batch means, re-estimated from 128 training images after each epoch); fixed (set once at their inference values over all training images, layer by layer, then held, so training runs the network as Lava does; for fine-tuning with --init); keep (with --init: held at the initial model's own values)."),
    hint: float = typer.Option(0.0, "--hint", min=0.0, help="Weight of the hint loss: the student's spike rates after --hint-layers, through a 1x1 adapter, against the ANN teacher's features there (FitNets; the teacher is trained or reused as for --distill). 0: off."),
    hint_layers: str = typer.Option("3", "--hint-layers", help="Conv layers (1-based, comma-separated) that --hint guides."),
    adam_eps: float = typer.Option(1e-8, "--adam-eps", min=0.0, help="Adam's epsilon. Surrogate gradients shrink towards the input layers, below the default 1e-8 there, so those layers take only |g|/eps of Adam's step (see metrics.json adam_step_share); e.g. 1e-20 gives every layer its full step (on real smears that broke training at peak rates: see models/experiments.md)."),
    learn_biases: bool = typer.Option(False, "--learn-biases", help="With --norm-means fixed or keep: the held means start there and are then trained by gradient, like the weights (on the Lava bias grid)."),
    bias_adam_eps: Optional[float] = typer.Option(None, "--bias-adam-eps", min=0.0, help="With --learn-biases: Adam's epsilon for the biases alone (default: --adam-eps). Their gradients sit below 1e-8 too, so e.g. 1e-20 lets the biases train while the weights keep the default's brake."),
    freeze_weights: bool = typer.Option(False, "--freeze-weights", help="With --learn-biases: train the biases only; the weights and SE gates stay as loaded (--init)."),
    gain_lr: bool = typer.Option(False, "--gain-lr", help="Train each layer's weights at the learning rate times its --threshold-gains value (Adam steps do not grow with the weights' scale): the dynamics of gain 1 on a finer weight grid."),
    device: Optional[str] = typer.Option(None, "--device", help="Train on cpu (default) or cuda[:N]; with --resume, moves the run to that device."),
    freeze_through: int = typer.Option(0, "--freeze-through", min=0, help="Fine-tuning (with --init and --norm-means fixed or keep): conv1..conv K stay as loaded, weights and biases, and their output spikes are computed once per training image and flip/rotation view, so a training step runs only the layers after them (~5x faster on the CPU); --hint-layers must then be after K. 0: off."),
) -> None:
    """Train NeurALLNet with SLAYER (CUBA neurons, SE gates): progress bar, validation each epoch, best checkpoint."""
    from lava_allnet.config import SYNTH_LR, TrainConfig, get_model_config
    from training.loop import train as run_train

    if resume is not None:
        metrics = run_train(resume, resume=True, console=err, device=device)
        run_dir = resume
    else:
        overrides = {}
        if input_size is not None:
            overrides["input_size"] = input_size
        if time_steps is not None:
            overrides["time_steps"] = time_steps
        if threshold_gains is not None:
            try:
                overrides["threshold_gains"] = tuple(int(g) for g in threshold_gains.split(","))
            except ValueError as exc:
                raise AllnetError(f"--threshold-gains {threshold_gains!r}: comma-separated integers, e.g. 1,8,8,1,1,1") from exc
        try:
            cfg = get_model_config(model, **overrides)
        except ValueError as exc:
            raise AllnetError(f"model config: {exc}") from exc
        if no_se and se_layers is not None:
            raise AllnetError("--no-se and --se-layers exclude each other (--no-se is --se-layers with no layer)")
        if no_se:
            cfg = cfg.without_se()
        if se_layers is not None:
            try:
                layers = [int(x) for x in se_layers.split(",")]
            except ValueError as exc:
                raise AllnetError(f"--se-layers {se_layers!r}: comma-separated conv layer numbers, e.g. 1,2,3,4,5") from exc
            try:
                cfg = cfg.with_se(layers)
            except ValueError as exc:
                raise AllnetError(f"--se-layers {se_layers!r}: {exc}") from exc
        if lr is None:
            # measured, 2 epochs: synthetic val 0.42 at 3e-3 vs 0.50 at 1e-2; real smears are steadier at 3e-3
            lr = SYNTH_LR if data is None else TrainConfig.lr
        try:
            hint_at = tuple(int(x) for x in hint_layers.split(","))
        except ValueError as exc:
            raise AllnetError(f"--hint-layers {hint_layers!r}: comma-separated conv layer numbers, e.g. 3 or 2,3") from exc
        try:
            tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_fraction=val_fraction,
                               test_fraction=test_fraction, augment=not no_augment, threads=threads,
                               init_from=str(init) if init else "", split_from=str(split) if split else "", range_weight=range_weight,
                               distill_weight=distill, distill_temperature=distill_temperature,
                               teacher_epochs=teacher_epochs, color_jitter=color_jitter, average_from=average_from,
                               norm_means=norm_means.value, learn_biases=learn_biases, adam_eps=adam_eps,
                               bias_adam_eps=bias_adam_eps, freeze_weights=freeze_weights, gain_lr=gain_lr, hint_weight=hint, hint_layers=hint_at,
                               freeze_through=freeze_through, device=device or "cpu")
        except ValueError as exc:
            raise AllnetError(f"training options: {exc}") from exc
        metrics = run_train(out_dir, cfg, tcfg, data_dir=data, synth_per_class=per_class, console=err)
        run_dir = out_dir
    best = metrics.get("best") or {}
    out.print(f"best epoch {best.get('epoch')}: validation accuracy {best.get('val_accuracy', float('nan')):.4f} "
              f"({metrics['parameters']:,} parameters) → {run_dir}/best.pt")


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
    from training.loop import load_trained

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
    for r in run.results:
        mark = "" if r.label is None else (" ✓" if r.correct else " ✗")
        t.add_row(r.path, r.prediction + mark, r.label or "-", *[str(r.class_counts[c]) for c in spec.class_names])
    out.print(t)
    n = len(run.results)
    for start in range(0, n, max_columns):
        chunk = run.results[start:start + max_columns]
        lt = Table(title="spikes / messages per layer" + (f" (images {start + 1}-{start + len(chunk)})" if n > max_columns else ""))
        lt.add_column("layer")
        for i, _ in enumerate(chunk, start=start + 1):
            lt.add_column(f"#{i}", justify="right")
        for name in run.stage_names:
            lt.add_row(name, *[f"{r.layer_counts[name]:,}" for r in chunk])
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
        "results": [r.to_dict() for r in run.results],
        "skipped": [{"path": p, "reason": why} for p, why in run.skipped],
        "timing": run.timing,
        "state_range_violations": run.overflow,
    }


@app.command()
def run(
    paths: List[str] = typer.Argument(..., help="[MODEL.net] then image files and/or folders. Without a .net first, the shipped models/neurallnet-aria.net is used."),
    backend: str = typer.Option("sim", "--backend", "-b", help=BACKEND_HELP),
    model: Optional[Path] = typer.Option(None, "--model", help="Model file (alternative to giving it first)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (see README) instead of tables."),
    workers: int = typer.Option(1, "--workers", min=1, help="Simulator processes, each with its own compiled network."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first unreadable image instead of skipping it."),
    stock: bool = typer.Option(False, "--stock", help="Use Lava's stock process models (slow; for comparison)."),
    exposure: bool = typer.Option(False, "--normalize-exposure", help=EXPOSURE_HELP),
) -> None:
    """Classify images: predicted class, output spikes per class and spikes per layer for each image."""
    from lava_allnet.data.images import normalize_exposure
    from hw_targets.inference import load_inputs, run_backend

    from hw_targets.backends import check_backend

    model_path, inputs = _resolve_model(paths, model)
    if not inputs:
        raise AllnetError("no images given (usage: lava-allnet run [MODEL.net] PATH...)")
    check_backend(backend)
    spec = _read_spec(model_path)
    prog, update = _progress(0, "loading images")
    with prog:
        data = load_inputs(inputs, spec.input.shape[1], spec.class_names, strict=strict,
                           progress=lambda k, n: (prog.update(prog.task_ids[0], total=n), update(k)))
    for p, why in data.skipped:
        err.print(f"[yellow]skipped[/] {why}")
    if exposure:
        data.images = normalize_exposure(data.images)
    prog, update = _progress(len(data.paths), f"{backend}")
    with prog:
        result = run_backend(spec, data, backend, workers=workers, fast=not stock, progress=update)
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
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    float_mode: bool = typer.Option(False, "--sim-float", help="Compare against the floating-point simulator instead (not expected to match)."),
) -> None:
    """Run the torch fixed-point reference and the Lava simulator on the same images; compare every layer's spikes.

    Exit status 1 when any layer's spike count differs at any time step.
    """
    from hw_targets.inference import load_inputs, run_backend
    from lava_allnet.verify import compare_runs

    spec = _read_spec(model_file)
    data = load_inputs(paths, spec.input.shape[1], spec.class_names)
    ref = run_backend(spec, data, "torch")
    prog, update = _progress(len(data.paths), "sim")
    with prog:
        sim = run_backend(spec, data, "sim-float" if float_mode else "sim", progress=update)
    report = compare_runs(ref, sim)
    if as_json:
        _emit_json({"model": str(model_file), **report})
    else:
        t = Table(title=f"torch vs {sim.backend}: spikes per layer, summed over {len(data.paths)} image(s)")
        for col in ("layer", "torch", sim.backend, "equal (every image and step)"):
            t.add_column(col, justify="right" if col != "layer" else "left")
        for row in report["layers"]:
            t.add_row(row["layer"], f"{row['reference']:,}", f"{row['candidate']:,}", "yes" if row["equal"] else "[red]NO[/]")
        out.print(t)
        out.print(f"predictions equal: {report['predictions_equal']}; overflow (24-bit) in torch: {report['overflow']}")
        out.print("VERIFIED: identical" if report["identical"] else "[red]MISMATCH[/]")
    if not report["identical"]:
        raise typer.Exit(1)


# ---------------------------------------------------------- profile / map


@app.command()
def profile(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    paths: List[str] = typer.Argument(..., help="Image files and/or folders."),
    backend: str = typer.Option("sim", "--backend", "-b", help="sim | torch | loihi2 (the counts are identical on sim and torch)."),
    target: str = typer.Option("loihi1", "--target", help="Energy / limits table: loihi1 | loihi2."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Also write profile.csv, profile.json and PNG plots here."),
    workers: int = typer.Option(1, "--workers", min=1, help="Simulator processes."),
) -> None:
    """Per image and layer: spikes, rate, synaptic ops, neuron updates, active neurons, timing and energy proxy."""
    from hw_targets import profile as hp
    from hw_targets.backends import check_backend
    from hw_targets.inference import load_inputs, run_backend
    from netx.analysis import stage_fanouts

    check_backend(backend)
    spec = _read_spec(model_file)
    tgt = hp.load_target(target)
    data = load_inputs(paths, spec.input.shape[1], spec.class_names)
    prog, update = _progress(len(data.paths), backend)
    with prog:
        result = run_backend(spec, data, backend, workers=workers, fanouts=stage_fanouts(spec), progress=update)
    report = hp.profile(spec, result, tgt)
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
    if m["energy_pj"] is None:
        out.print(report["energy_source"])
    tm = report["timing"]
    out.print(f"{tm['ms_per_image']:.1f} ms/image, {tm['ms_per_step']:.2f} ms/step on {backend}")
    for p in written:
        err.print(f"wrote {p}")


@app.command("map")
def map_cmd(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    target: str = typer.Option("loihi2", "--target", help="loihi1 | loihi2."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Per layer: neurons, synapses, fan-in, synaptic memory and cores needed under the target's per-core limits."""
    from hw_targets import profile as hp
    from hw_targets.mapping import map_network

    spec = _read_spec(model_file)
    report = map_network(spec, hp.load_target(target))
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
    from lava_allnet.data import images as di
    from hw_targets.inference import Inputs

    ds = di.scan_image_folder(data_dir, class_names=spec.class_names, require_all=split is None)
    paths, labels = ds.paths, list(ds.labels)
    if split is not None:
        if not split.exists():
            raise AllnetError(f"{split}: no such split file")
        idx = di.load_split(split, ds).get(subset)
        if idx is None:
            raise AllnetError(f"{split}: has no '{subset}' subset")
        paths, labels = [ds.paths[i] for i in idx], [int(ds.labels[i]) for i in idx]
    if limit is not None:
        # a stratified, deterministic subset: every k-th image of the sorted list
        step = max(1, len(paths) // limit)
        paths, labels = paths[::step][:limit], labels[::step][:limit]
    prog, update = _progress(len(paths), "loading images")
    with prog:
        loaded = di.load_images(paths, spec.input.shape[1], labels=labels, strict=strict, progress=update)
    for p, why in loaded.skipped:
        err.print(f"[yellow]skipped[/] {why}")
    return Inputs(loaded.images, loaded.paths, [int(v) for v in loaded.labels], loaded.skipped)


@app.command()
def evaluate(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    data_dir: Path = typer.Argument(..., help="ImageFolder whose class folders are the model's classes."),
    backend: str = typer.Option("sim", "--backend", "-b", help="sim | torch (identical predictions; torch is faster)."),
    split: Optional[Path] = typer.Option(None, "--split", help="A run's split.json: evaluate only its --subset files."),
    subset: str = typer.Option("test", "--subset", help="Which part of --split: test | val | train."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write metrics.json, predictions.csv and confusion_matrix.png."),
    resamples: int = typer.Option(2000, "--resamples", min=1000, help="Bootstrap resamples for the 95% CI."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    workers: int = typer.Option(1, "--workers", min=1, help="Simulator processes."),
    strict: bool = typer.Option(False, "--strict", help="Fail on an unreadable image instead of skipping it."),
    exposure: bool = typer.Option(False, "--normalize-exposure", help=EXPOSURE_HELP),
) -> None:
    """Accuracy with a bootstrapped 95% CI, per-class precision/recall/F1, confusion matrix, per-image predictions."""
    from hw_targets.backends import check_backend
    from lava_allnet.data.images import normalize_exposure
    from lava_allnet.evaluation import classification_report, confusion_text, write_evaluation
    from hw_targets.inference import run_backend

    check_backend(backend)
    spec = _read_spec(model_file)
    data = _dataset_inputs(spec, data_dir, split, subset, None, strict)
    if exposure:
        data.images = normalize_exposure(data.images)
    prog, update = _progress(len(data.paths), backend)
    with prog:
        result = run_backend(spec, data, backend, workers=workers, progress=update)
    report = classification_report(data.labels, [r.predicted_index for r in result.results], spec.class_names, resamples, seed)
    report.update({"model": str(model_file), "data": str(data_dir), "backend": backend, "normalize_exposure": exposure,
                   "timing": result.timing,
                   "skipped": [{"path": p, "reason": w} for p, w in result.skipped]})
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
def robustness(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    data_dir: Path = typer.Argument(..., help="ImageFolder whose class folders are the model's classes."),
    backend: str = typer.Option("torch", "--backend", "-b", help="torch | sim (identical predictions; sim compiles once per distortion level)."),
    split: Optional[Path] = typer.Option(None, "--split", help="A run's split.json: use only its --subset files."),
    subset: str = typer.Option("test", "--subset", help="Which part of --split."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use at most this many images (evenly spaced)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    out_dir: Path = typer.Option(Path("robustness-out"), "--out", help="Where robustness.json and one PNG curve per distortion go."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random distortions and the bootstrap."),
    exposure: bool = typer.Option(False, "--normalize-exposure", help=EXPOSURE_HELP + " In robustness, each distorted image."),
) -> None:
    """Accuracy under Gaussian noise, salt-and-pepper, blur, occlusion, rotation and illumination, 3 severities each."""
    import numpy as np

    from hw_targets.backends import check_backend, get_backend
    from lava_allnet.data.images import normalize_exposure
    from lava_allnet.evaluation import robustness as rob
    from lava_allnet.evaluation import write_robustness
    from lava_allnet.result import make_results

    check_backend(backend)
    spec = _read_spec(model_file)
    data = _dataset_inputs(spec, data_dir, split, subset, limit)
    be = get_backend(backend, spec)

    def predict(images):
        raw = be.run(normalize_exposure(images) if exposure else images)
        res = make_results([str(i) for i in range(len(images))], spec.class_names, spec.population,
                           raw.stage_steps, raw.output_neurons)
        return np.asarray([r.predicted_index for r in res])

    prog, update = _progress(1 + 18, "robustness")
    done = [0]

    def step(_label: str) -> None:
        done[0] += 1
        update(done[0])

    with prog:
        report = rob(predict, data.images, np.asarray(data.labels), seed=seed, progress=step)
    report.update({"model": str(model_file), "data": str(data_dir), "backend": backend, "normalize_exposure": exposure})
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
def explain(
    model_file: Path = typer.Argument(..., help="Model file (.net)."),
    image: Path = typer.Argument(..., help="One image file."),
    out_file: Path = typer.Option(..., "--out", help="PNG to write (input and Grad-CAM heat map)."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Conv layer for Grad-CAM (default: the deepest whose map keeps 1/8 of the image side, at least 8x8)."),
    class_name: Optional[str] = typer.Option(None, "--class", help="Explain this class instead of the predicted one."),
    exposure: bool = typer.Option(False, "--normalize-exposure", help=EXPOSURE_HELP),
) -> None:
    """Grad-CAM through the surrogate gradients: where the network looked for the predicted class."""
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
    out_dir: Path = typer.Option(Path("demo-out"), "--out", help="Working folder (data, run, model)."),
    per_class: int = typer.Option(300, "--per-class", min=5, help="Synthetic images per class."),
    epochs: int = typer.Option(8, "--epochs", min=1, help="Training epochs."),
    held_out: int = typer.Option(8, "--held-out", min=1, help="Held-out images per class run on the simulator."),
) -> None:
    """The main job on the embedded default: synthesise smears, train, export, run on the Lava simulator."""
    import dataclasses
    import shutil

    from lava_allnet.config import SYNTH_LR, TrainConfig, get_model_config
    from lava_allnet.data import synth
    from hw_targets.inference import load_dataset, run_backend
    from netx.export import export as do_export
    from training.loop import load_trained
    from training.loop import train as run_train

    t0 = time.perf_counter()
    cfg = get_model_config("neurallnet-demo")
    data_dir, test_dir, run_dir = out_dir / "data", out_dir / "held-out", out_dir / "run"
    model_file = out_dir / "neurallnet-demo.net"
    if not data_dir.exists():
        err.print(f"[bold]1/4[/] synthetic smears: {per_class} per class for training/validation")
        synth.generate_dataset(data_dir, per_class, size=cfg.input_size, seed=0)
    if not test_dir.exists():
        tmp = out_dir / "held-out-src"
        synth.generate_dataset(tmp, per_class + held_out, size=cfg.input_size, seed=0)
        # images per_class.. are never seen in training (same generator, later indices)
        for c in synth.CLASS_NAMES:
            (test_dir / c).mkdir(parents=True, exist_ok=True)
            for f in sorted((tmp / c).iterdir())[per_class:]:
                shutil.move(str(f), test_dir / c / f.name)
        shutil.rmtree(tmp)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    err.print(f"[bold]2/4[/] training {cfg.name} ({epochs} epochs)")
    metrics = run_train(run_dir, cfg, TrainConfig(epochs=epochs, seed=0, lr=SYNTH_LR), data_dir=data_dir, console=err)
    net = load_trained(run_dir)
    spec = do_export(net, model_file)
    err.print(f"[bold]3/4[/] exported {model_file} ({model_file.stat().st_size / 1e3:.0f} kB)")
    err.print(f"[bold]4/4[/] running {held_out * 4} held-out images on the Lava simulator (Loihi2SimCfg fixed_pt)")
    data = load_dataset(test_dir, spec.input.shape[1], spec.class_names)
    prog, update = _progress(len(data.paths), "sim")
    with prog:
        result = run_backend(spec, data, "sim", progress=update)
    _print_results(result, spec, max_images=8)
    best = metrics["best"]
    out.print(f"validation accuracy (torch, best epoch {best['epoch']}): {best['val_accuracy']:.3f}")
    out.print(f"held-out accuracy on the Lava simulator: {result.accuracy():.3f} ({len(result.results)} images; chance 0.25)")
    out.print(f"simulator: {result.timing['ms_per_step']:.1f} ms/step, {result.timing['ms_per_image']:.0f} ms/image, "
              f"compile {result.timing['compile_s']:.1f} s; demo took {time.perf_counter() - t0:.0f} s")


# ------------------------------------------------------------------- main


def main() -> None:
    """Console entry point with the error policy."""
    _quiet_lava()
    debug = "--debug" in sys.argv[1:]
    try:
        rc = app(standalone_mode=False)  # click returns the exit code of typer.Exit here
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
