"""User-facing errors. Each names what was given, what was expected and the fix."""

from __future__ import annotations


class KilnError(Exception):
    """An error caused by the user's input (file, flags, data), shown without a traceback."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class UnsupportedModelError(KilnError):
    """The model uses operators (or types) kiln has no implementation for."""


class EngineFileError(KilnError):
    """A plan file that is truncated, corrupt, of another version or for another device."""


class InputError(KilnError):
    """An input of the wrong name, dtype, rank or shape given to an engine."""
