"""--deterministic: the kernels that make GPU runs repeatable, set for the whole process.

On a CPU kd_accel's runs are bit for bit repeatable as they are (resume, 1 vs R processes:
tests/test_scaleout.py). On a GPU two things break that by default: cuDNN picks (and
benchmarks) algorithms whose reductions differ run to run, and convolutions run in TF32
("fp32" with a 10-bit mantissa; torch's default for cuDNN). --deterministic turns both off and
makes torch refuse, in one line, an operation that has no deterministic kernel; it costs speed.
"""
from __future__ import annotations

import os

import torch


def set_deterministic(on: bool) -> None:
    """Deterministic kernels on or off (off: torch's defaults), for every later operation."""
    if on:
        # cuBLAS needs a fixed workspace to be deterministic; read when CUDA starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = not on  # torch's default: True
    torch.backends.cuda.matmul.allow_tf32 = False  # torch's default, either way
