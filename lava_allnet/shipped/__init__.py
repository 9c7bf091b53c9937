"""Files shipped inside the package: the models (the default first), their split and the recipes.

In the repository these are symlinks to ``models/`` and ``recipes/``; a wheel (and so a
non-editable install) holds copies, so ``lava-allnet run IMAGE`` finds the model wherever the
package is installed. Nothing here imports torch, lava or the training code.
"""
from __future__ import annotations

from pathlib import Path

from lava_allnet.errors import AllnetError

HERE = Path(__file__).resolve().parent
MODEL_NAME = "neurallnet-aria"
RECIPES_DIR = HERE / "recipes"
# The shipped models (timm-style registry): name → the packaged recipe that trains it. The file is
# ``<name>.net`` beside this module; the model card (models/README.md) gives each one's figures.
MODELS = {
    "neurallnet-aria": "neurallnet-aria",  # the default: the paper's model (P3); reads the lamp
    "neurallnet-aria-v2": "neurallnet-aria-v2",  # v2: graded messages (Loihi 2), impulse correction + exact Reinhard (misses targets)
    "neurallnet-aria-v2-spiking": "neurallnet-aria-v2-spiking",  # the spiking v2 (Loihi 1): input once, T = 8
}


def _resolved(path: Path) -> Path:
    # in the repository: the file the symlink points to (models/..., recipes/...)
    return path.resolve() if path.exists() else path


def default_model() -> Path:
    """The shipped model file (``models/neurallnet-aria.net`` in the repository); may not exist."""
    return _resolved(HERE / f"{MODEL_NAME}.net")


def model_path(name: str) -> Path:
    """The packaged file of a shipped model (``neurallnet-aria-v2``), by its name in :data:`MODELS`."""
    stem = name[: -len(".net")] if name.endswith(".net") else name
    if stem not in MODELS:
        raise AllnetError(f"no shipped model {name!r}; shipped: {', '.join(MODELS)}")
    return _resolved(HERE / f"{stem}.net")


def named_model(arg) -> Path | None:
    """``arg`` as given for a model: the packaged file when it is a shipped model's name and no file
    of that name exists here, else None (a path, used as it is)."""
    if isinstance(arg, str) and arg in MODELS and not Path(arg).exists():
        return model_path(arg)
    return None


def default_split() -> Path:
    """The saved train/val/test split of the shipped model's training data."""
    return _resolved(HERE / f"{MODEL_NAME}.split.json")


def require_default_model() -> Path:
    """:func:`default_model`, or an :class:`AllnetError` when the installation lacks it."""
    path = default_model()
    if not path.is_file():
        raise AllnetError(f"the shipped model {path} is missing (reinstall lava-allnet or give a model file)")
    return path


def recipe_names() -> list[str]:
    """Names of the packaged recipes (``demo``, ``neurallnet-aria``, ...)."""
    if not RECIPES_DIR.is_dir():
        return []
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def recipe_path(name: str) -> Path:
    """The packaged recipe file ``recipes/<name>.toml`` (``name`` with or without ``.toml``)."""
    stem = name[: -len(".toml")] if name.endswith(".toml") else name
    if not stem or "/" in stem or "\\" in stem or stem.startswith("."):
        raise AllnetError(f"recipe name {name!r}: a plain name such as 'demo'")
    path = RECIPES_DIR / f"{stem}.toml"
    if not path.is_file():
        known = recipe_names()
        raise AllnetError(f"no packaged recipe {stem!r}; known: {', '.join(known) if known else 'none'}")
    return _resolved(path)
