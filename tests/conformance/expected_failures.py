"""Node tests kiln is expected to fail, each with the reason above it.

The lists live in `xfail_*.py` beside this file, one per area (each module defines
`EXPECTED_FAILURES`, a list of regular expressions over test names `test_<name>_cpu`,
each preceded by a comment giving the reason). This module gathers them.
"""

import importlib
import pkgutil
from pathlib import Path

EXPECTED_FAILURES: list[str] = []
for _module in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if _module.name.startswith("xfail_"):
        EXPECTED_FAILURES += importlib.import_module(
            f"tests.conformance.{_module.name}").EXPECTED_FAILURES
