"""Datasets for lava-allnet: the embedded synthetic blood-smear generator and loaders."""
