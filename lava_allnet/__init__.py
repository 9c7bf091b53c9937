"""lava-allnet: NeurALLNet from SLAYER training to Lava / Loihi deployment."""
# Must run before anything imports lava (Python 3.11 dataclass defaults).
from lava_allnet import _compat  # noqa: F401

__version__ = "0.1.0"
