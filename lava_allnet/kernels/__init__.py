"""The network's CPU kernels: fused CUBA dynamics (``fast_cuba`` + ``csrc/cuba_dynamics.cpp``) and
event-driven convolutions for sparse spike input (``event_conv`` + ``csrc/sparse_conv.cpp``).

They compute exactly what SLAYER's torch code computes (tests/test_fast_cuba.py,
tests/test_fused_layer.py); :func:`fast_cuba.install` routes CPU calls to them.
"""
