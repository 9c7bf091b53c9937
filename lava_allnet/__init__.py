"""lava-allnet: NeurALLNet from SLAYER training to Lava / Loihi deployment.

The Python API (``lava_allnet.load``, ``evaluate``, ``profile``, ``calibrate``, ``robustness``,
``report``, ``Model``) lives in :mod:`lava_allnet.api`; it is imported on first use, so ``import
lava_allnet`` stays light (no torch, no lava).
"""
# Must run before anything imports lava (Python 3.11 dataclass defaults).
from lava_allnet import _compat  # noqa: F401

__version__ = "0.1.0"

_API = ("load", "evaluate", "profile", "calibrate", "robustness", "report", "Model")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from lava_allnet import api

        return getattr(api, name)
    raise AttributeError(f"module 'lava_allnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
