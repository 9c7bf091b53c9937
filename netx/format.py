"""The lava-allnet NetX HDF5 format: schema, version, reading with validation, writing.

Layout (NetX-compatible where NetX has the layer; field names as lava-dl's
``export_hdf5`` writes them)::

    /                attrs: format="lava-allnet-netx", format_version=1 to 7,
                            class_names (JSON), time_steps, population,
                            model_config (JSON, optional: the training config),
                            frontend (JSON, version 2; its offset_bound, version 5; its impulse, version 6;
                            its exclude_black, version 7),
                            calibration (JSON, version 3)
    /layer/0         type="input"   shape=(C,H,W) messageBits pixelShift
    /layer/i         type="conv"    shape=(C,H,W) inChannels outChannels kernelSize(2)
                                    stride(2) padding(2) dilation(2) groups
                                    weight(out,in/groups,kH,kW) inputMessageBits [bias(out)]
                                    neuron/{type="CUBA",iDecay,vDecay,vThMant,refDelay,gradedSpike}
    /layer/i         type="se"      shape=(C,H,W) hidden weight1(hidden,C) bias1(hidden)
                                    weight2(C,hidden) bias2(C) squeezeExp exciteExp
                                    bias1Exp bias2Exp gateLevels
    /layer/i         type="flatten"
    /layer/i         type="dense"   shape=(out,) weight(out,in) inputMessageBits [bias(out)] neuron/{...}

A graded network (version 4, ``lava_allnet.graded``) has the same conv and dense layers with
``neuron/{type="GRADED", shift, vth, relu}`` and a ``bias`` added to the accumulator as is
(|bias| < 2**23); its input is 8-bit pixels sent once, T = 1, population 1, and no se layer.

Weights and biases are the integer mantissas Lava receives (a neuron bias is
added to v as bias << 6 every step, as NetX does). Stock NetX
silently skips layer types it does not know; :func:`read` refuses any unknown
type or missing / inconsistent field with :class:`ModelFileError` naming the
layer index and type.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import h5py
import numpy as np

from lava_allnet import fixed_point as fx
from lava_allnet.calibration import Calibration
from lava_allnet.frontend import FrontEnd
from lava_allnet.errors import ModelFileError

FORMAT_NAME = "lava-allnet-netx"
FORMAT_VERSION = 7  # the newest version this lava-allnet writes when a file needs it; it reads 1 to 7
READ_VERSIONS = (1, 2, 3, 4, 5, 6, 7)
# version 2 adds: the input layer's sendOnce (the image is sent at the first step of each window only,
# into a first layer whose current holds it) and the root attribute frontend (JSON: the input front
# end every backend applies before encoding, lava_allnet.frontend); a file without version-2 fields
# is written as version 1. Version 3 adds the root attribute calibration (JSON: temperature,
# abstention threshold and out-of-distribution reference, lava_allnet.calibration); a file is written
# with the lowest version its fields need. Version 4 adds graded neurons (neuron type "GRADED": shift,
# vth, relu; the layer's bias added to the accumulator as is): a graded network, lava_allnet.graded.
# Version 5 adds the front end's offset_bound (grey levels; absent: 256, the bound of every earlier
# file), so a front end can be exact Reinhard (lava_allnet.frontend.EXACT_OFFSET_BOUND). Version 6 adds
# the front end's impulse (grey levels; absent: 0, no impulse correction): the switching 3x3 median
# applied before the statistics (lava_allnet.frontend). Version 7 adds the front end's exclude_black
# (absent: false): black pixels left out of the statistics and sent as 0 (lava_allnet.frontend).
FRONTEND_FIELD_VERSIONS = {"offset_bound": 5, "impulse": 6, "exclude_black": 7}  # front-end fields stored only when needed
LAYER_TYPES = ("input", "conv", "se", "flatten", "dense")


@dataclass(frozen=True)
class NeuronSpec:
    i_decay: int
    v_decay: int
    vth_mant: int
    ref_delay: int = 1

    @property
    def threshold(self) -> float:
        """The threshold in SLAYER's units (the inverse of fixed_point.threshold_mantissa)."""
        return self.vth_mant / fx.WEIGHT_SCALE


@dataclass(frozen=True)
class GradedNeuronSpec:
    """A stateless graded neuron (version 4, ``lava_allnet.graded``): per image
    q = (W · m + bias) >> shift; it sends q if q >= vth (relu), or q as is (the read-out, vth 0)."""

    shift: int
    vth: int
    relu: bool = True


GRADED_BIAS_LIMIT = 1 << 23  # a graded layer's bias is a 24-bit signed accumulator value
GRADED_NO_FLOAT = ("a graded model is integer arithmetic throughout: the floating-point simulator does not run it "
                   "(use the fixed-point simulator 'sim', or 'torch')")


@dataclass
class InputSpec:
    shape: tuple[int, int, int]  # (C, H, W)
    message_bits: int
    type: str = "input"
    # version 2: the image is sent once per sample, at the first step of its window (zeros after),
    # into a first layer with current decay 0, whose current then holds W·x for every step
    send_once: bool = False

    @property
    def pixel_shift(self) -> int:
        return 8 - self.message_bits


@dataclass
class ConvSpec:
    shape: tuple[int, int, int]  # output (C, H, W)
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    weight: np.ndarray  # int32 (out, in/groups, kH, kW)
    neuron: NeuronSpec | GradedNeuronSpec
    input_message_bits: int
    name: str = ""
    type: str = "conv"
    bias: np.ndarray | None = None  # (out,) neuron bias mantissas (v += bias << 6 every step)


@dataclass
class SESpec:
    shape: tuple[int, int, int]
    hidden: int
    weight1: np.ndarray  # (hidden, C)
    bias1: np.ndarray  # (hidden,)
    weight2: np.ndarray  # (C, hidden)
    bias2: np.ndarray  # (C,)
    squeeze_exp: int
    excite_exp: int
    bias1_exp: int
    bias2_exp: int
    gate_levels: int
    name: str = ""
    type: str = "se"

    def fixed(self) -> fx.SEFixedPoint:
        c, h, w = self.shape
        return fx.SEFixedPoint(c, self.hidden, h, w, self.gate_levels)


@dataclass
class FlattenSpec:
    type: str = "flatten"
    name: str = ""


@dataclass
class DenseSpec:
    shape: tuple[int]
    weight: np.ndarray  # (out, in)
    neuron: NeuronSpec | GradedNeuronSpec
    input_message_bits: int
    name: str = ""
    type: str = "dense"
    bias: np.ndarray | None = None  # (out,)


LayerSpec = Union[InputSpec, ConvSpec, SESpec, FlattenSpec, DenseSpec]


@dataclass
class NetworkSpec:
    layers: list[LayerSpec]
    class_names: tuple[str, ...]
    time_steps: int
    population: int
    model_config: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    source: str = ""  # file it was read from
    frontend: FrontEnd = field(default_factory=FrontEnd)  # version 2: applied before encoding
    calibration: Calibration | None = None  # version 3: probabilities, abstention, OOD warning

    @property
    def input(self) -> InputSpec:
        return self.layers[0]  # type: ignore[return-value]

    @property
    def graded(self) -> bool:
        """A graded network (``lava_allnet.graded``), not a spiking one."""
        return any(isinstance(getattr(l, "neuron", None), GradedNeuronSpec) for l in self.layers)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def named_layers(self) -> list[tuple[str, LayerSpec]]:
        """(name, spec) for layers with neurons or gates, in order."""
        return [(l.name, l) for l in self.layers if isinstance(l, (ConvSpec, SESpec, DenseSpec))]

    def stage_names(self) -> list[str]:
        names: list[str] = ["input"]
        for name, layer in self.named_layers():
            names += [f"{name}.{s}" for s in ("squeeze", "excite", "scale")] if isinstance(layer, SESpec) else [name]
        return names


# ------------------------------------------------------------------ reading


class _Layer:
    """Typed access to one /layer/i group with errors that name the layer."""

    def __init__(self, group: h5py.Group, index: int, type_: str) -> None:
        self.g, self.index, self.type = group, index, type_

    def fail(self, msg: str) -> ModelFileError:
        return ModelFileError(f"layer {self.index} ({self.type}): {msg}")

    def _raw(self, key: str, group: h5py.Group | None = None) -> np.ndarray:
        g = self.g if group is None else group
        if key not in g:
            where = "" if group is None else "neuron/"
            raise self.fail(f"missing field '{where}{key}'")
        obj = g[key]
        if not isinstance(obj, h5py.Dataset):
            raise self.fail(f"field '{key}' is not a dataset")
        try:
            kind, size = obj.dtype.kind, obj.size
        except Exception as exc:
            raise self.fail(f"field '{key}' cannot be read ({exc})") from exc
        if kind not in "iufbS":
            raise self.fail(f"field '{key}' has an unsupported type ({obj.dtype})")
        if size > MAX_FIELD_ELEMENTS:
            raise self.fail(f"field '{key}' is implausibly large ({size} values)")
        try:
            return np.asarray(obj[()])
        except Exception as exc:  # corrupt chunk, unreadable dtype
            raise self.fail(f"field '{key}' cannot be read ({exc})") from exc

    def ints(self, key: str, shape: tuple[int, ...] | None = None, group: h5py.Group | None = None) -> np.ndarray:
        a = self._raw(key, group)
        integral_float = (
            a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)) and np.all(np.abs(a) < 2**31)
        )
        if a.dtype.kind not in "iub" and not integral_float:
            raise self.fail(f"field '{key}' must hold integers, found {a.dtype}")
        if a.dtype.kind == "u" and a.size and a.max() > 2**31 - 1:
            raise self.fail(f"field '{key}' has values outside int32")
        a = a.astype(np.int64)
        if np.any(np.abs(a) > 2**31 - 1):
            raise self.fail(f"field '{key}' has values outside int32")
        if shape is not None and a.shape != shape:
            raise self.fail(f"field '{key}' has shape {a.shape}, expected {shape}")
        return a.astype(np.int32)

    def int_(self, key: str, lo: int | None = None, hi: int | None = None, group: h5py.Group | None = None) -> int:
        a = self.ints(key, group=group)
        if a.size != 1:
            raise self.fail(f"field '{key}' must be a scalar, found shape {a.shape}")
        v = int(a.reshape(()))
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.fail(f"field '{key}'={v} outside [{lo}, {hi}]")
        return v

    def pair(self, key: str, lo: int = 0, hi: int = 64) -> tuple[int, int]:
        a = self.ints(key).reshape(-1)
        if a.size == 1:
            a = np.repeat(a, 2)
        if a.size != 2:
            raise self.fail(f"field '{key}' must have 2 values, found {a.size}")
        if np.any(a < lo) or np.any(a > hi):
            raise self.fail(f"field '{key}'={a.tolist()} outside [{lo}, {hi}]")
        return int(a[0]), int(a[1])

    def shape(self, ndim: int) -> tuple[int, ...]:
        a = self.ints("shape").reshape(-1)
        if a.size != ndim or np.any(a <= 0) or np.any(a > 1 << 20):
            raise self.fail(f"field 'shape'={a.tolist()} must be {ndim} positive sizes")
        return tuple(int(v) for v in a)

    def weights(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        w = self.ints(key, shape)
        if w.size and (w.min() < fx.WEIGHT_MIN or w.max() > fx.WEIGHT_MAX):
            raise self.fail(f"field '{key}' has mantissas outside [{fx.WEIGHT_MIN}, {fx.WEIGHT_MAX}]")
        if np.any(w % 2):
            raise self.fail(f"field '{key}' has odd mantissas (8-bit signed Loihi weights are even)")
        return w

    def bias(self, n: int, graded: bool = False) -> np.ndarray | None:
        """Optional per-channel bias: CUBA neuron bias mantissas (13-bit signed, exponent 6 as in
        NetX), or a graded layer's accumulator bias (24-bit signed)."""
        if "bias" not in self.g:
            return None
        b = self.ints("bias", (n,))
        lo, hi = (-GRADED_BIAS_LIMIT + 1, GRADED_BIAS_LIMIT - 1) if graded else (fx.BIAS_MIN, fx.BIAS_MAX)
        if b.size and (b.min() < lo or b.max() > hi):
            raise self.fail(f"field 'bias' has {'values' if graded else 'mantissas'} outside [{lo}, {hi}]")
        return b

    def neuron(self, version: int) -> NeuronSpec | GradedNeuronSpec:
        if "neuron" not in self.g or not isinstance(self.g["neuron"], h5py.Group):
            raise self.fail("missing group 'neuron'")
        ng = self.g["neuron"]
        ntype = _string(self, ng, "type")
        if ntype == "GRADED":
            if version < 4:
                raise self.fail("neuron type 'GRADED' needs format version 4")
            relu = bool(self.int_("relu", 0, 1, group=ng))
            return GradedNeuronSpec(self.int_("shift", 0, 23, group=ng),
                                    self.int_("vth", 1 if relu else 0, GRADED_BIAS_LIMIT - 1, group=ng), relu)
        if ntype != "CUBA":
            raise self.fail(f"neuron type {ntype!r} is not supported (CUBA or GRADED)")
        return NeuronSpec(
            i_decay=self.int_("iDecay", 1, 4096, group=ng),
            v_decay=self.int_("vDecay", 0, 4095, group=ng),
            vth_mant=self.int_("vThMant", 1, fx.VTH_MAX, group=ng),
            ref_delay=self.int_("refDelay", 0, 64, group=ng) if "refDelay" in ng else 1,
        )


def _string(layer: _Layer, group: h5py.Group, key: str) -> str:
    raw = layer._raw(key, group if group is not layer.g else None)
    v = raw.reshape(-1)[0] if raw.shape else raw[()]
    if isinstance(v, bytes):
        try:
            return v.decode("ascii")
        except UnicodeDecodeError as exc:
            raise layer.fail(f"field '{key}' is not ASCII") from exc
    if isinstance(v, str):
        return v
    raise layer.fail(f"field '{key}' must be a string")


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# Variable-length strings live in HDF5's global heap, and a damaged heap can send the
# HDF5 library into an endless loop (found by the fuzz test); our files hold only
# fixed-size values, checked (type and size) before anything is read.
MAX_FIELD_ELEMENTS = 1 << 24
MAX_ATTR_BYTES = 1 << 16


def _attr(f: h5py.File, key: str) -> Any:
    if key not in f.attrs:
        raise ModelFileError(f"missing root attribute '{key}'")
    try:
        aid = f.attrs.get_id(key)
        kind, size, nbytes = aid.dtype.kind, aid.get_storage_size(), aid.dtype.itemsize
    except Exception as exc:
        raise ModelFileError(f"root attribute '{key}' cannot be read ({exc})") from exc
    if kind not in "iufbS" or size > MAX_ATTR_BYTES or nbytes > MAX_ATTR_BYTES:
        raise ModelFileError(f"root attribute '{key}' must be a number or a fixed-length string")
    v = f.attrs[key]
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.reshape(-1)[0]
    if isinstance(v, (bytes, np.bytes_)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFileError(f"root attribute '{key}' is not UTF-8 text") from exc
    return v


def _int_attr(f: h5py.File, key: str, lo: int, hi: int) -> int:
    v = _attr(f, key)
    try:
        iv = int(np.asarray(v).reshape(()))
    except Exception as exc:
        raise ModelFileError(f"root attribute '{key}' must be an integer") from exc
    if not lo <= iv <= hi:
        raise ModelFileError(f"root attribute '{key}'={iv} outside [{lo}, {hi}]")
    return iv


def read(path: str | os.PathLike) -> NetworkSpec:
    """Read and validate a model file; any problem is a :class:`ModelFileError`."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, expected a .net model file")
    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable HDF5 model file (truncated or corrupt?)") from exc
    try:
        with f:
            return _read(f, str(path))
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    except Exception as exc:  # h5py / numpy surprises in a damaged file
        raise ModelFileError(f"{path}: unreadable model file ({type(exc).__name__}: {exc})") from exc


def _read(f: h5py.File, source: str) -> NetworkSpec:
    fmt = _attr(f, "format") if "format" in f.attrs else None
    if not (isinstance(fmt, str) and fmt == FORMAT_NAME):
        raise ModelFileError(
            f"not a lava-allnet model (root attribute 'format' is {fmt!r}, expected {FORMAT_NAME!r})"
        )
    version = _int_attr(f, "format_version", 0, 1 << 30)
    if version not in READ_VERSIONS:
        raise ModelFileError(
            f"format version {version} is not supported (this lava-allnet reads versions "
            f"{', '.join(map(str, READ_VERSIONS))})"
        )
    try:
        class_names = tuple(json.loads(_attr(f, "class_names")))
        if not class_names or not all(isinstance(c, str) and c for c in class_names):
            raise ValueError
    except (ValueError, TypeError) as exc:
        raise ModelFileError("root attribute 'class_names' must be a JSON list of names") from exc
    time_steps = _int_attr(f, "time_steps", 1, 100_000)
    population = _int_attr(f, "population", 1, 1 << 16)
    config = None
    frontend = FrontEnd()
    if "frontend" in f.attrs:
        if version < 2:
            raise ModelFileError("root attribute 'frontend' needs format version 2")
        try:
            fields = json.loads(_attr(f, "frontend"))
            for name, need in FRONTEND_FIELD_VERSIONS.items():
                if isinstance(fields, dict) and name in fields and version < need:
                    raise ModelFileError(f"front-end field '{name}' needs format version {need}")
            frontend = FrontEnd.from_dict(fields)
            if frontend.name != "none" and len(frontend.reference) not in (3, 6):
                raise ValueError(f"front end {frontend.name!r}: {len(frontend.reference)} reference values")
        except (ValueError, TypeError) as exc:
            raise ModelFileError(f"root attribute 'frontend' is not a valid front end ({exc})") from exc
    calibration = None
    if "calibration" in f.attrs:
        if version < 3:
            raise ModelFileError("root attribute 'calibration' needs format version 3")
        try:
            calibration = Calibration.from_dict(json.loads(_attr(f, "calibration")))
        except (ValueError, TypeError) as exc:
            raise ModelFileError(f"root attribute 'calibration' is not a valid calibration ({exc})") from exc
    if "model_config" in f.attrs:
        try:
            config = json.loads(_attr(f, "model_config"))
        except (ValueError, TypeError) as exc:
            raise ModelFileError("root attribute 'model_config' is not valid JSON") from exc

    if "layer" not in f or not isinstance(f["layer"], h5py.Group):
        raise ModelFileError("missing group 'layer'")
    lg = f["layer"]
    keys = list(lg.keys())
    if not keys:
        raise ModelFileError("group 'layer' is empty")
    try:
        order = sorted(int(k) for k in keys)
    except ValueError as exc:
        raise ModelFileError(f"layer names must be 0..N-1, found {sorted(keys)}") from exc
    if order != list(range(len(order))):
        raise ModelFileError(f"layer names must be 0..N-1, found {sorted(keys)}")

    layers: list[LayerSpec] = []
    shape: tuple[int, ...] | None = None  # current activation shape
    counters = {"conv": 0, "dense": 0}
    last_conv = 0
    for i in order:
        g = lg[str(i)]
        if not isinstance(g, h5py.Group):
            raise ModelFileError(f"layer {i}: is not a group")
        probe = _Layer(g, i, "?")
        ltype = _string(probe, g, "type")
        L = _Layer(g, i, ltype)
        if ltype not in LAYER_TYPES:
            raise L.fail(f"unknown layer type {ltype!r} (known: {', '.join(LAYER_TYPES)})")
        if (i == 0) != (ltype == "input"):
            raise L.fail("the first layer, and only the first, must be 'input'")
        if ltype == "input":
            c, h, w = L.shape(3)
            bits = L.int_("messageBits", 1, 8)
            once = False
            if "sendOnce" in g:
                if version < 2:
                    raise L.fail("field 'sendOnce' needs format version 2")
                once = bool(L.int_("sendOnce", 0, 1))
            layers.append(InputSpec((c, h, w), bits, send_once=once))
            shape = (c, h, w)
        elif ltype == "conv":
            if shape is None or len(shape) != 3:
                raise L.fail("a conv layer needs a (C, H, W) input")
            cin, hin, win = shape
            out_shape = L.shape(3)
            in_ch = L.int_("inChannels", 1, 1 << 16)
            out_ch = L.int_("outChannels", 1, 1 << 16)
            k = L.pair("kernelSize", 1, 64)
            stride = L.pair("stride", 1, 64)
            pad = L.pair("padding", 0, 64)
            dil = L.pair("dilation", 1, 64)
            groups = L.int_("groups", 1, 1 << 16)
            if in_ch != cin:
                raise L.fail(f"inChannels={in_ch} but the previous layer has {cin} channels")
            if in_ch % groups or out_ch % groups:
                raise L.fail(f"groups={groups} does not divide {in_ch} -> {out_ch} channels")
            expect = (
                out_ch,
                _conv_out(hin, k[0], stride[0], pad[0], dil[0]),
                _conv_out(win, k[1], stride[1], pad[1], dil[1]),
            )
            if out_shape != expect:
                raise L.fail(f"shape {list(out_shape)} inconsistent with its input {list(shape)}: expected {list(expect)}")
            weight = L.weights("weight", (out_ch, in_ch // groups, k[0], k[1]))
            counters["conv"] += 1
            last_conv = counters["conv"]
            neuron = L.neuron(version)
            layers.append(
                ConvSpec(
                    out_shape, in_ch, out_ch, k, stride, pad, dil, groups, weight, neuron,
                    L.int_("inputMessageBits", 0, 24), name=f"conv{last_conv}",
                    bias=L.bias(out_ch, isinstance(neuron, GradedNeuronSpec)),
                )
            )
            shape = out_shape
        elif ltype == "se":
            if shape is None or len(shape) != 3:
                raise L.fail("an se layer needs a (C, H, W) input")
            sh = L.shape(3)
            if sh != shape:
                raise L.fail(f"shape {list(sh)} differs from its input {list(shape)}")
            if not isinstance(layers[-1], ConvSpec):
                raise L.fail("an se layer must follow a conv layer")
            c = sh[0]
            hidden = L.int_("hidden", 1, 1 << 16)
            gate = L.int_("gateLevels", 2, 1 << 16)
            spec = SESpec(
                sh, hidden,
                L.weights("weight1", (hidden, c)), L.ints("bias1", (hidden,)),
                L.weights("weight2", (c, hidden)), L.ints("bias2", (c,)),
                L.int_("squeezeExp", 0, 31), L.int_("exciteExp", 0, 31),
                L.int_("bias1Exp", 0, 31), L.int_("bias2Exp", 0, 31), gate,
                name=f"se{last_conv}",
            )
            try:
                fxp = spec.fixed()
                expected = (fxp.squeeze_exp, fxp.excite_exp, fxp.bias1_exp, fxp.bias2_exp)
            except ValueError as exc:
                raise L.fail(str(exc)) from exc
            got = (spec.squeeze_exp, spec.excite_exp, spec.bias1_exp, spec.bias2_exp)
            if got != expected:
                raise L.fail(f"exponents {got} do not match the SE quantisation rules {expected}")
            for key, b, (lo, hi) in (
                ("bias1", spec.bias1, (fx.WEIGHT_MIN, fx.WEIGHT_MAX)),
                ("bias2", spec.bias2, fxp.bias2_limits()),
            ):
                if b.size and (b.min() < lo or b.max() > hi):
                    raise L.fail(f"field '{key}' has mantissas outside [{lo}, {hi}]")
                if np.any(b % 2):
                    raise L.fail(f"field '{key}' has odd mantissas (they must be even)")
            layers.append(spec)
        elif ltype == "flatten":
            if shape is None:
                raise L.fail("nothing to flatten")
            layers.append(FlattenSpec(name="flatten"))
            shape = (int(np.prod(shape)),)
        elif ltype == "dense":
            if shape is None or len(shape) != 1:
                raise L.fail("a dense layer needs a flat input (add a 'flatten' layer)")
            out = L.shape(1)
            weight = L.weights("weight", (out[0], shape[0]))
            counters["dense"] += 1
            neuron = L.neuron(version)
            layers.append(DenseSpec(out, weight, neuron, L.int_("inputMessageBits", 0, 24), name="fc",
                                    bias=L.bias(out[0], isinstance(neuron, GradedNeuronSpec))))
            shape = out
    if not isinstance(layers[-1], DenseSpec):
        raise ModelFileError(f"layer {len(layers) - 1} ({layers[-1].type}): the last layer must be 'dense'")
    if layers[-1].shape[0] != len(class_names) * population:
        raise ModelFileError(
            f"layer {len(layers) - 1} (dense): {layers[-1].shape[0]} output neurons for "
            f"{len(class_names)} classes x population {population}"
        )
    dense = [l for l in layers if isinstance(l, DenseSpec)]
    if len(dense) > 1:
        for k, l in enumerate(dense, start=1):
            l.name = f"fc{k}"
    _check_graded(layers, time_steps, population)
    return NetworkSpec(layers, class_names, time_steps, population, config, version, source, frontend, calibration)


def _check_graded(layers: list[LayerSpec], time_steps: int, population: int) -> None:
    """A graded network is graded throughout: every conv and dense layer's neuron graded (relu but
    the read-out's), no se layer, 8-bit pixels sent once, T = 1 and population 1."""
    neurons = [(i, l) for i, l in enumerate(layers) if isinstance(l, (ConvSpec, DenseSpec))]
    graded = [isinstance(l.neuron, GradedNeuronSpec) for _, l in neurons]
    if not any(graded):
        return
    where = lambda i: f"layer {i} ({layers[i].type})"  # noqa: E731
    for (i, l), g in zip(neurons, graded):
        if not g:
            raise ModelFileError(f"{where(i)}: a CUBA neuron in a graded network")
        if l.neuron.relu != (l is not neurons[-1][1]):
            raise ModelFileError(f"{where(i)}: in a graded network every layer but the read-out has relu = 1")
    se = [i for i, l in enumerate(layers) if isinstance(l, SESpec)]
    if se:
        raise ModelFileError(f"{where(se[0])}: a graded network has no se layer")
    inp = layers[0]
    if inp.message_bits != 8 or not inp.send_once:  # type: ignore[union-attr]
        raise ModelFileError("layer 0 (input): a graded network sends 8-bit pixels once (messageBits 8, sendOnce 1)")
    if time_steps != 1 or population != 1:
        raise ModelFileError(f"a graded network has time_steps 1 and population 1, not {time_steps} and {population}")


def retimed(spec: NetworkSpec, time_steps: int) -> NetworkSpec:
    """The same network run for ``time_steps`` steps per image (weights, biases, gates unchanged).

    The input is held constant and every gate is computed per step, so T is a run-time choice:
    a longer T gives the output counts more settled steps, at a cost in time per image.
    """
    if not 1 <= int(time_steps) <= 100_000:
        raise ModelFileError(f"time_steps {time_steps}: must be within 1..100000")
    if spec.graded and int(time_steps) != 1:
        raise ModelFileError("a graded network runs one step per image: its time steps cannot be changed")
    config = None if spec.model_config is None else {**spec.model_config, "time_steps": int(time_steps)}
    # the calibration was fitted on T steps' counts: another T needs its own (lava-allnet calibrate)
    return dataclasses.replace(spec, time_steps=int(time_steps), model_config=config, source="", calibration=None)


# ------------------------------------------------------------------ writing


def write(spec: NetworkSpec, path: str | os.PathLike) -> None:
    """Write atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        # np.bytes_: fixed-length strings (see MAX_ATTR_BYTES)
        f.attrs["format"] = np.bytes_(FORMAT_NAME)
        f.attrs["format_version"] = required_version(spec)
        f.attrs["class_names"] = np.bytes_(json.dumps(list(spec.class_names)).encode())
        f.attrs["time_steps"] = int(spec.time_steps)
        f.attrs["population"] = int(spec.population)
        if not spec.frontend.identity:
            f.attrs["frontend"] = np.bytes_(json.dumps(spec.frontend.to_dict(), sort_keys=True).encode())
        if spec.calibration is not None:
            f.attrs["calibration"] = np.bytes_(json.dumps(spec.calibration.to_dict(), sort_keys=True).encode())
        if spec.model_config is not None:
            f.attrs["model_config"] = np.bytes_(json.dumps(spec.model_config, sort_keys=True).encode())
        lg = f.create_group("layer")
        for i, layer in enumerate(spec.layers):
            g = lg.create_group(str(i))
            g.create_dataset("type", (1,), "S10", [layer.type.encode("ascii")])
            _write_layer(g, layer)
    os.replace(tmp, path)


def _i(g: h5py.Group, key: str, value: Any) -> None:
    g.create_dataset(key, data=np.asarray(value, dtype=np.int32 if np.asarray(value).size > 1 else np.int64))


def _w(g: h5py.Group, key: str, value: np.ndarray) -> None:
    a = np.asarray(value)
    dtype = np.int16 if a.size and a.min() >= -32768 and a.max() <= 32767 else np.int32
    g.create_dataset(key, data=a.astype(dtype), compression="gzip" if a.size > 256 else None)


def _neuron(g: h5py.Group, n: NeuronSpec | GradedNeuronSpec) -> None:
    ng = g.create_group("neuron")
    if isinstance(n, GradedNeuronSpec):
        ng.create_dataset("type", (1,), "S10", [b"GRADED"])
        for key, v in (("shift", n.shift), ("vth", n.vth), ("relu", int(n.relu))):
            ng.create_dataset(key, data=np.int64(v))
        ng.create_dataset("gradedSpike", data=True)
        return
    ng.create_dataset("type", (1,), "S10", [b"CUBA"])
    for key, v in (("iDecay", n.i_decay), ("vDecay", n.v_decay), ("vThMant", n.vth_mant), ("refDelay", n.ref_delay)):
        ng.create_dataset(key, data=np.int64(v))
    ng.create_dataset("gradedSpike", data=False)


def required_version(spec: "NetworkSpec") -> int:
    """The oldest format version that holds this network (version-1 readers can load it then)."""
    stored = spec.frontend.to_dict()
    needs = [v for name, v in FRONTEND_FIELD_VERSIONS.items() if name in stored]
    if needs:
        return max(needs)
    if spec.graded:
        return 4
    if spec.calibration is not None:
        return 3
    return 2 if spec.input.send_once or not spec.frontend.identity else 1


def _write_layer(g: h5py.Group, layer: LayerSpec) -> None:
    if isinstance(layer, InputSpec):
        _i(g, "shape", layer.shape)
        _i(g, "messageBits", layer.message_bits)
        _i(g, "pixelShift", layer.pixel_shift)
        if layer.send_once:
            _i(g, "sendOnce", 1)
    elif isinstance(layer, ConvSpec):
        _i(g, "shape", layer.shape)
        _i(g, "inChannels", layer.in_channels)
        _i(g, "outChannels", layer.out_channels)
        for key, v in (("kernelSize", layer.kernel_size), ("stride", layer.stride), ("padding", layer.padding), ("dilation", layer.dilation)):
            g.create_dataset(key, data=np.asarray(v, dtype=np.int64))
        _i(g, "groups", layer.groups)
        _w(g, "weight", layer.weight)
        _i(g, "inputMessageBits", layer.input_message_bits)
        _neuron(g, layer.neuron)
        if layer.bias is not None:
            _w(g, "bias", layer.bias)
    elif isinstance(layer, SESpec):
        _i(g, "shape", layer.shape)
        _i(g, "hidden", layer.hidden)
        for key in ("weight1", "bias1", "weight2", "bias2"):
            _w(g, key, getattr(layer, key))
        for key, v in (("squeezeExp", layer.squeeze_exp), ("exciteExp", layer.excite_exp), ("bias1Exp", layer.bias1_exp), ("bias2Exp", layer.bias2_exp), ("gateLevels", layer.gate_levels)):
            _i(g, key, v)
    elif isinstance(layer, DenseSpec):
        _i(g, "shape", layer.shape)
        _w(g, "weight", layer.weight)
        _i(g, "inputMessageBits", layer.input_message_bits)
        _neuron(g, layer.neuron)
        if layer.bias is not None:
            _w(g, "bias", layer.bias)
    elif isinstance(layer, FlattenSpec):
        pass
    else:  # pragma: no cover - programming error
        raise TypeError(f"cannot write {type(layer).__name__}")
