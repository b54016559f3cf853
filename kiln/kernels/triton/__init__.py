"""kiln's own kernels, written in Triton. Optional: without triton these tactics are absent.

Engines use them on CUDA. On the CPU they run only under Triton's interpreter
(`TRITON_INTERPRET=1`, set before triton is imported) and only when asked for with
`KILN_TRITON_ON_CPU=1`: that is how tests check them, far too slow for real work.
"""

import os

try:
    import triton  # noqa: F401

    AVAILABLE = True
except ImportError:  # kiln works without triton; the reference tactics stay
    AVAILABLE = False


def usable_on(device_type: str) -> bool:
    """Whether Triton kernels can run for an engine on this device type."""
    if not AVAILABLE:
        return False
    if device_type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get(
        "KILN_TRITON_ON_CPU") == "1"
