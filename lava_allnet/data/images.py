"""Image files and ImageFolder datasets → uint8 (N, 3, S, S) arrays, with clear errors."""
from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from lava_allnet.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
MIN_SIDE = 8  # smaller than this holds no cell morphology
MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding


def is_image_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL mode → HxWx3 uint8 RGB (16-bit scaled, alpha composited on white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(np.round(a * (255.0 / hi)), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(np.round(a * (255.0 if a.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """One image as (3, size, size) uint8 RGB, or :class:`DataError` naming the file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise DataError(f"{p}: image too large ({w}x{h} pixels, limit {MAX_PIXELS:,})")
                if min(w, h) < MIN_SIDE:
                    raise DataError(f"{p}: image too small ({w}x{h}; at least {MIN_SIDE}x{MIN_SIDE})")
                img.load()
                rgb = _to_rgb_array(img)
    except DataError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{p}: not a readable image ({type(exc).__name__})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"{p}: corrupt or truncated image ({exc})") from exc
    return _fit(rgb, size)


def _fit(rgb: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 → (3, size, size): bilinear resize when the size differs."""
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def image_from_array(array, size: int, name: str = "array") -> np.ndarray:
    """An image given in memory as (3, size, size) uint8, resized exactly as :func:`load_image` does.

    Accepts uint8 RGB (H, W, 3), grey (H, W), (3, H, W) and PIL images; ``name`` appears in errors.
    """
    if isinstance(array, Image.Image):
        array = _to_rgb_array(array)
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise DataError(f"{name}: {a.dtype} pixels; give uint8 (0-255) RGB")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[2] != 3:
        if a.shape[1:] == (size, size):
            return np.ascontiguousarray(a)
        a = a.transpose(1, 2, 0)
    if a.ndim != 3 or a.shape[2] != 3:
        raise DataError(f"{name}: shape {a.shape}; give (H, W, 3), (H, W) or (3, H, W) uint8")
    h, w = a.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise DataError(f"{name}: image too small ({w}x{h}; at least {MIN_SIDE}x{MIN_SIDE})")
    return _fit(np.ascontiguousarray(a), size)


@dataclass
class LoadedImages:
    images: np.ndarray  # (N, 3, S, S) uint8
    paths: list[Path]
    labels: np.ndarray | None = None  # (N,) class indices, when known
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def load_images(
    paths: Sequence[Path],
    size: int,
    labels: Sequence[int] | None = None,
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
    workers: int = 2,
) -> LoadedImages:
    """Load many images; a bad file is skipped and reported (or fatal with ``strict``)."""

    def one(p: Path):
        try:
            return load_image(p, size), None
        except DataError as exc:
            if strict:
                raise
            return None, str(exc)

    arrays, kept, kept_labels, skipped = [], [], [], []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, (p, (arr, err)) in enumerate(zip(paths, pool.map(one, paths))):
            if arr is None:
                skipped.append((Path(p), err))
            else:
                arrays.append(arr)
                kept.append(Path(p))
                if labels is not None:
                    kept_labels.append(labels[i])
            if progress is not None:
                progress(i + 1)
    if not arrays:
        detail = f" ({skipped[0][1]})" if skipped else ""
        raise DataError(f"no readable images among {len(paths)} file(s){detail}")
    images = np.stack(arrays)
    return LoadedImages(images, kept, None if labels is None else np.asarray(kept_labels, dtype=np.int64), skipped)


def normalize_exposure(images: np.ndarray, white: int = 255) -> np.ndarray:
    """Scale each uint8 image (N, C, H, W) so that its brightest pixel is ``white``.

    Every image of the ALL smear set already has a pixel at 255, so this is the identity on the
    data the shipped model was trained and tested on, while a dimmer exposure is scaled back:
    measured on the validation images, 0.5x brightness took the shipped model from 0.967 to 0.29
    accuracy and, normalised, back to 0.95. A brighter exposure has already clipped at 255 and
    cannot be undone; one saturated pixel (e.g. salt noise) also stops the correction.
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {images.shape}")
    top = images.reshape(len(images), -1).max(axis=1).astype(np.float32)
    gain = np.where(top > 0, white / np.maximum(top, 1), 1.0)[:, None, None, None]
    return np.clip(np.round(images * gain), 0, 255).astype(np.uint8)


@dataclass
class Dataset:
    """An ImageFolder: one sub-folder per class."""

    root: Path
    class_names: tuple[str, ...]
    paths: list[Path]
    labels: np.ndarray  # (N,) indices into class_names

    def relative(self) -> list[str]:
        return [str(p.relative_to(self.root)) for p in self.paths]


def scan_image_folder(
    root: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    require_all: bool = False,
) -> Dataset:
    """Scan an ImageFolder. With ``class_names`` (a model's), every folder must be one of
    them (and, with ``require_all``, all of them must be present)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one sub-folder per class)")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class sub-folders (expected ImageFolder layout: {root}/<class>/<images>)")
    names = tuple(d.name for d in folders)
    if class_names is not None:
        known = tuple(class_names)
        extra = [n for n in names if n not in known]
        if extra:
            raise DataError(
                f"{root}: class folder(s) {extra} are not classes of the model {list(known)}"
            )
        missing = [n for n in known if n not in names]
        if require_all and missing:
            raise DataError(f"{root}: missing class folder(s) {missing} of the model's classes {list(known)}")
        index = {n: known.index(n) for n in names}
        out_names = known
    else:
        index = {n: i for i, n in enumerate(names)}
        out_names = names
    paths: list[Path] = []
    labels: list[int] = []
    for d in folders:
        files = sorted(p for p in d.rglob("*") if is_image_file(p))
        if not files:
            raise DataError(f"{d}: class folder has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        paths += files
        labels += [index[d.name]] * len(files)
    return Dataset(root, out_names, paths, np.asarray(labels, dtype=np.int64))


def collect_image_paths(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, folders searched recursively for images (sorted)."""
    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if is_image_file(q))
            if not found:
                raise DataError(f"{p}: folder has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            out += found
        else:
            out.append(p)
    if not out:
        raise DataError("no input images given")
    return out


def label_from_path(path: Path, class_names: Sequence[str]) -> int | None:
    """The class of an image in an ImageFolder (its parent folder name), if it is one."""
    name = path.parent.name
    return list(class_names).index(name) if name in class_names else None


# ----------------------------------------------------------------- splits

def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Seeded stratified train/val/test indices (sklearn)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    out: dict[str, np.ndarray] = {}
    rest = idx
    if test_fraction > 0:
        rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
        out["test"] = np.sort(test)
    if val_fraction > 0:
        frac = val_fraction / (1.0 - test_fraction)
        train, val = train_test_split(rest, test_size=frac, stratify=labels[rest], random_state=seed + 1)
        out["val"] = np.sort(val)
    else:
        train = rest
    out["train"] = np.sort(train)
    return out


def save_split(path: Path, dataset: Dataset, split: dict[str, np.ndarray], seed: int) -> None:
    rel = dataset.relative()
    doc = {
        "root": str(dataset.root.resolve()),
        "seed": seed,
        "class_names": list(dataset.class_names),
        **{k: [rel[i] for i in v] for k, v in split.items()},
    }
    path.write_text(json.dumps(doc, indent=1))


def load_split(path: Path, dataset: Dataset) -> dict[str, np.ndarray]:
    """Indices of a saved split in ``dataset`` (files must all still be there)."""
    return split_indices(json.loads(Path(path).read_text()), dataset, path)


def split_indices(doc: dict, dataset: Dataset, path: Path | str = "split") -> dict[str, np.ndarray]:
    """Indices in ``dataset`` of a parsed split document; ``path`` names it in errors."""
    pos = {r: i for i, r in enumerate(dataset.relative())}
    out = {}
    for key in ("train", "val", "test"):
        if key in doc:
            missing = [r for r in doc[key] if r not in pos]
            if missing:
                raise DataError(f"{path}: {len(missing)} file(s) of the saved '{key}' split are gone, e.g. {missing[0]}")
            out[key] = np.asarray([pos[r] for r in doc[key]], dtype=np.int64)
    return out
