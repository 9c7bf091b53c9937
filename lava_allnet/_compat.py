"""Python 3.11 compatibility for lava-nc 0.10 / lava-dl 0.6 (written for 3.8-3.10).

Python 3.11 rejects dataclass fields whose default is an instance of an
unhashable class (lava uses ``x: ByteEncoder = ByteEncoder()``), so
``import lava`` raises ``ValueError: mutable default``. Python 3.10 only
rejected list/dict/set defaults and shared the one default object between
instances. We restore exactly that: such a default becomes a
``default_factory`` returning the *same* object, and the class attribute is
put back afterwards. list/dict/set defaults still fail, as they did on 3.10.

This module must be imported before anything imports lava; every package of
this project imports it first (``lava_allnet/__init__.py``).
"""
from __future__ import annotations

import dataclasses
import sys

_PATCHED_FLAG = "_lava_allnet_patched"


def _install() -> None:
    if sys.version_info < (3, 11) or getattr(dataclasses, _PATCHED_FLAG, False):
        return
    original_get_field = dataclasses._get_field
    original_process_class = dataclasses._process_class

    def _get_field(cls, a_name, a_type, *args, **kwargs):
        default = cls.__dict__.get(a_name, dataclasses.MISSING)
        if (
            default is not dataclasses.MISSING
            and not isinstance(default, (dataclasses.Field, list, dict, set))
            and type(default).__hash__ is None
        ):
            # Shared default, as on Python 3.10.
            setattr(cls, a_name, dataclasses.field(default_factory=lambda v=default: v))
            if "__lava_allnet_shared_defaults__" not in cls.__dict__:
                setattr(cls, "__lava_allnet_shared_defaults__", {})
            cls.__lava_allnet_shared_defaults__[a_name] = default
        return original_get_field(cls, a_name, a_type, *args, **kwargs)

    def _process_class(cls, *args, **kwargs):
        result = original_process_class(cls, *args, **kwargs)
        # dataclasses deletes class attributes of default_factory fields; 3.10
        # kept the default object as a class attribute, so put it back.
        for name, value in cls.__dict__.get("__lava_allnet_shared_defaults__", {}).items():
            setattr(result, name, value)
        return result

    dataclasses._get_field = _get_field
    dataclasses._process_class = _process_class
    setattr(dataclasses, _PATCHED_FLAG, True)


_install()

# lava-dl imports torch.utils.cpp_extension, which warns "No CUDA runtime is
# found" on every CPU-only machine; that is not news for our users.
import logging as _logging  # noqa: E402

_logging.getLogger("torch.utils.cpp_extension").setLevel(_logging.ERROR)
