"""Test-session settings.

Triton's interpreter must be chosen before triton is first imported (its standard library
is decorated at import time), so on machines without CUDA it is switched on here, for the
kernel tests that run Triton code on the CPU. Engines still only use Triton tactics on the
CPU when a test opts in with KILN_TRITON_ON_CPU=1.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
