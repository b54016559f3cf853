"""Programmatic dependent launch (Hopper and later) for kiln's Triton kernels.

A kernel launched with it may be scheduled while the kernel before it in the stream is
still running: its programs start on SMs the earlier kernel's last wave leaves free and
wait (griddepcontrol.wait) until that kernel has finished and its writes are visible. The
launch latency between two short kernels, which a CUDA graph replays but does not remove,
overlaps the earlier kernel's tail. Each such kernel waits before it touches global memory
at all, so the order of reads and writes is the stream's: what it saves is only the
scheduling gap. It then lets the next kernel launch (griddepcontrol.launch_dependents),
which takes effect once all its programs have started. Off in Triton's interpreter, below
compute capability 9, and with KILN_PDL=0.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import triton
import triton.language as tl


def enabled(device: torch.device) -> bool:
    return (device.type == "cuda" and os.environ.get("KILN_PDL", "1") != "0"
            and os.environ.get("TRITON_INTERPRET") != "1" and _capable(device.index))


@functools.cache
def _capable(index: int | None) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def launch(device: torch.device) -> dict[str, Any]:
    """The kernel's PDL flag and, where on, the launch option that goes with it."""
    return {"PDL": True, "launch_pdl": True} if enabled(device) else {"PDL": False}


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """First statement of a kernel launched with `launch(device)`."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
