"""Building engines: config, optimization profiles, precision, placement, lowering.

`build_engine` and `BuilderConfig` load lazily, so the runtime can import
`kiln.build.profiles` without pulling in the builder (which imports the engine).
"""

from typing import Any

__all__ = ["BuilderConfig", "build_engine"]


def __getattr__(name: str) -> Any:
    if name == "build_engine":
        from kiln.build.builder import build_engine

        return build_engine
    if name == "BuilderConfig":
        from kiln.build.config import BuilderConfig

        return BuilderConfig
    raise AttributeError(name)
