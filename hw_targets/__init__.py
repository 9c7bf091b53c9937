"""hw_targets package of lava-allnet."""
import lava_allnet  # noqa: F401  (Python 3.11 compatibility layer before lava)
