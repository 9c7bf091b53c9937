"""Error types for expected failures: the CLI turns these into one line and exit 2."""
from __future__ import annotations


class AllnetError(Exception):
    """An expected failure with a message meant for the user."""


class ModelFileError(AllnetError):
    """A model file (.net HDF5) that cannot be used: unreadable, wrong version, bad layer."""


class DataError(AllnetError):
    """An image, folder or dataset that cannot be used."""


class BackendUnavailable(AllnetError):
    """A backend whose runtime is not installed here (e.g. Loihi 2 without lava-loihi)."""


class SimulationError(AllnetError):
    """The Lava simulator failed; the runtime was stopped."""
