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


def _interpreter_scalar_index() -> None:
    """Triton 3.6's interpreter keeps a scalar as a one-element array and turns it into an
    int (a loop bound computed at run time, as in the persistent kernels) by int(array),
    which NumPy 2.4 refuses for arrays of one dimension; take the element instead."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    patch = interpreter._patch_lang_tensor

    def patched(tensor, scope) -> None:
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


_interpreter_scalar_index()
