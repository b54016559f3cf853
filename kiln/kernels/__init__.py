"""Tactics, grouped by where they run: cpu/ and cuda/ wrap torch, triton/ holds our kernels.

Importing this package imports every tactic module, and each registers itself.
"""

import importlib
import pkgutil

from kiln.kernels.registry import LayerSpec, Tactic, Target, candidates, get_tactic, register_tactic


def _import_all(package: str, path: list[str]) -> None:
    for module in pkgutil.walk_packages(path, prefix=f"{package}."):
        if not module.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(module.name)


_import_all(__name__, __path__)

__all__ = ["LayerSpec", "Tactic", "Target", "candidates", "get_tactic", "register_tactic"]
