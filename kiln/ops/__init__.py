"""Operator semantics: one registry, one small module per operator family.

Importing this package imports every module in it, and each registers its operators with
`@register`: adding an operator family never means editing a list.
"""

import importlib
import pkgutil

from kiln.ops.registry import OpImpl, lookup, register, registered

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["OpImpl", "lookup", "register", "registered"]
