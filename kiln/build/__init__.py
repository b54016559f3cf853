"""Building engines: config, optimization profiles, precision, placement, lowering."""

from kiln.build.builder import build_engine
from kiln.build.config import BuilderConfig

__all__ = ["BuilderConfig", "build_engine"]
