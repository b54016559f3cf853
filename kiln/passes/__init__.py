"""Graph -> Graph rewrites, one file each, registered into a phased pipeline.

Importing this package imports every pass module, so each registers itself.
"""

import importlib
import pkgutil

from kiln.passes.pipeline import PassContext, passes, register_pass, run_pipeline

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "pipeline":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PassContext", "passes", "register_pass", "run_pipeline"]
