"""Which kernel starts a CUDA graph being captured.

A kernel launched with programmatic dependent launch that is the first node of a graph
started measurably later after the copy an engine's run makes into the graph's inputs
(bench/pdl_first_kernel.py); kiln's Triton kernels therefore launch the first one of a
capture without it. Kept apart from the Triton code so that the runtime can mark a
capture on installs without Triton.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_pending: ContextVar[bool] = ContextVar("kiln_graph_start_pending", default=False)


@contextlib.contextmanager
def capturing() -> Iterator[None]:
    """Around a graph's capture: the first `take()` inside answers True."""
    token = _pending.set(True)
    try:
        yield
    finally:
        _pending.reset(token)


def take() -> bool:
    """True for the first kernel launch of a capture (and only for it)."""
    if not _pending.get():
        return False
    _pending.set(False)
    return True
