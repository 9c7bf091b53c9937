"""``python -m lava_allnet``: the ``lava-allnet`` command line."""
from lava_allnet.cli import main

if __name__ == "__main__":
    main()
