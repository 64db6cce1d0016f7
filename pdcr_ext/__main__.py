"""python -m pdcr_ext: print the environment report (version, torch, CUDA, native library, CPU
instruction set, CUDA architectures, devices) for bug reports."""

from .environment import info

info()
