"""Lazy, quiet access to lava-dl's SLAYER.

Importing ``lava.lib.dl.slayer`` prints a Prophesee-toolbox warning to stdout,
which would corrupt ``--json`` output; it is swallowed here. Importing this
module never imports torch or lava by itself.
"""
from __future__ import annotations

import contextlib
import functools
import io
from types import ModuleType



@functools.lru_cache(maxsize=None)
def slayer() -> ModuleType:
    with contextlib.redirect_stdout(io.StringIO()):
        from lava.lib.dl import slayer as _slayer
    return _slayer
