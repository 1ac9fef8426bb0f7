"""Errors meant for people: each says what went wrong, where, and what to do next."""
from __future__ import annotations

from pathlib import Path


class DramaSearchError(Exception):
    """Base class; the CLI prints the message (no traceback) and exits non-zero."""


class InputError(DramaSearchError):
    """Bad user input, located by file, line (1-based; None when not line-based) and field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


class ModelLoadError(DramaSearchError):
    """A model could not be found or loaded (offline hub, wrong folder, unsupported layout)."""


class IndexFormatError(DramaSearchError):
    """An index folder is missing, incomplete, or does not match what the caller asked for."""
