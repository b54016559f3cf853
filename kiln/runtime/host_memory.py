"""Host memory for engines on the CPU: freed blocks stay in the process heap.

glibc's malloc serves a block above its mmap threshold (128 KiB at start, raised as it
sees larger blocks freed) with fresh pages from mmap and returns them on free, and it
trims the heap's free top back to the OS. An engine allocates its layers' outputs afresh
on every run, so whether those pages come back warm or must be faulted in again (one page
fault per 4 KiB, each page zeroed) depends on the order malloc happened to see sizes in:
mtcnn-rnet ran in 1.1 ms in some processes and 2.2-2.5 ms in others (its 0.9 MB layer
outputs took 200 faults a layer a run), magika in 86 or 115-132 ms. ONNX Runtime has its
own arena for this. So the first CPU context raises both thresholds, once per process:
blocks up to 32 MiB come from the heap and freed memory stays for the next run. The cost
is that the process keeps its peak heap (as any arena does). `KILN_HOST_MALLOC=0` leaves
malloc's settings alone; on other C libraries nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit
TRIM_THRESHOLD = 512 << 20

_applied: bool | None = None


def keep_freed_host_memory() -> bool:
    """Raises glibc's mmap and trim thresholds (once); whether they are now raised."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("KILN_HOST_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
