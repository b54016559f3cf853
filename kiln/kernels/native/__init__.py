"""kiln's own CPU kernels, in C with AVX-512 intrinsics, compiled on first use.

Where torch's CPU kernels trail ONNX Runtime's hand-vectorized ones (MLAS), a tactic may
call one of these through ctypes. `<name>.c` beside this file builds once per source,
compiler and flags into a shared library in kiln's cache folder (`KILN_CACHE_DIR`,
default ~/.cache/kiln), as Triton builds its kernels on first use; the library says
whether the processor runs it. Without a C compiler or AVX-512, or with `KILN_NATIVE=0`,
`library` answers None and the tactics that need it are not offered (an engine that chose
one falls back to torch's kernel where it runs): nothing fails for want of either.
Plain C without intrinsics did not pay: compilers vectorize a softmax's max and sum only
under -ffast-math, which assumes away the -inf of masked scores (bench/RESULTS.md).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

FLAGS = ("-O3", "-mavx512f", "-mfma", "-shared", "-fPIC")
# per kernel, tried first: the GEMM shares its rows out over threads with OpenMP (built
# without it where the compiler has none, and then runs on one thread)
EXTRA_FLAGS = {"gemm": ("-fopenmp",)}
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("KILN_CACHE_DIR") or Path.home() / ".cache" / "kiln") / "native"


@functools.cache
def library(name: str) -> ctypes.CDLL | None:
    """The built library of `<name>.c` where this processor runs it, else None (logged)."""
    if os.environ.get("KILN_NATIVE", "1") == "0":
        return None
    source = Path(__file__).with_name(f"{name}.c")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler found: kiln's native CPU kernels are off")
        return None
    lib = _load(name, source, compiler)
    if lib is None:
        return None
    if not lib.kiln_native_supported():
        log.info("kiln's native kernel %s is off: this processor lacks AVX-512", name)
        return None
    return lib


def _load(name: str, source: Path, compiler: str) -> ctypes.CDLL | None:
    """The library built from `source` (once per source, headers, compiler and flags),
    with the kernel's extra flags where the compiler takes them, else without."""
    headers = [h.read_bytes() for h in sorted(source.parent.glob("*.h"))]
    failure = None
    for flags in [(*FLAGS, *EXTRA_FLAGS[name]), FLAGS] if name in EXTRA_FLAGS else [FLAGS]:
        built_with = " ".join((compiler, *flags)).encode()
        identity = b"\0".join([source.read_bytes(), *headers, built_with])
        target = cache_dir() / f"{name}-{hashlib.sha256(identity).hexdigest()[:16]}.so"
        try:
            if not target.exists():
                _compile(compiler, flags, source, target)
            return ctypes.CDLL(str(target))
        except (OSError, subprocess.SubprocessError) as exc:
            failure = exc
    log.warning("kiln's native kernel %s is off: %s", name, failure)
    return None


def function(name: str, symbol: str, *argtypes: type) -> Callable[..., None] | None:
    """`symbol` of library(name), taking argtypes and returning nothing; None where the
    library cannot be built here."""
    lib = library(name)
    if lib is None:
        return None
    fn = getattr(lib, symbol)
    fn.argtypes, fn.restype = argtypes, None
    return fn


def _compile(compiler: str, flags: tuple[str, ...], source: Path, target: Path) -> None:
    """Builds into a temporary file beside the target, then renames it: processes building
    at once never load half a library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, "-o", temporary, str(source)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise subprocess.SubprocessError(
                f"{compiler} failed: {done.stderr.strip()[-500:] or done.returncode}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
