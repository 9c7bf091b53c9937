"""Lava processes of lava-allnet (kept alone in this folder: Lava imports every module beside a
process when it searches for its process models)."""
