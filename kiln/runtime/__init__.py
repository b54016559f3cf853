"""Running engines: input checks, the bound program, memory accounting."""

from kiln.runtime.context import ExecutionContext

__all__ = ["ExecutionContext"]
