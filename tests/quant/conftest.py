"""Without a GPU, Triton kernels run in Triton's interpreter (set before any kernel module
is imported, since triton.jit reads it when a kernel is defined)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
