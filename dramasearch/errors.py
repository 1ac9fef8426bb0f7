"""Errors meant for people: each says what went wrong, where, and what to do next.

Every class carries the exit code the CLI returns for it (documented in README "Errors"), so a
script can tell a bad argument from a bad file from a damaged index without parsing text.
"""
from __future__ import annotations

from pathlib import Path

EXIT_FAILED = 1  # the operation could not be done (e.g. another writer holds the index)
EXIT_USAGE = 2  # a bad argument or option (click's own usage errors use 2 as well)
EXIT_INPUT = 3  # bad input data: corpus, queries, qrels, vectors, model folder
EXIT_INDEX = 4  # the index is missing, of another format, or damaged
EXIT_SYSTEM = 5  # the operating system refused: permissions, disk full, missing file
EXIT_BUG = 70  # an internal error: a bug in dramasearch (traceback with --debug)
EXIT_INTERRUPTED = 130  # Ctrl-C


class DramaSearchError(Exception):
    """Base class; the CLI prints the message (no traceback) and exits with `exit_code`."""

    exit_code = EXIT_FAILED


class UsageError(DramaSearchError, ValueError):
    """A bad argument, from the CLI or the Python API alike, named by `argument`.

    Also a ValueError, so API callers that catch ValueError for bad arguments keep working.
    """

    exit_code = EXIT_USAGE

    def __init__(self, argument: str, message: str):
        self.argument = argument
        self.message = message
        super().__init__(f"{argument}: {message}")


class InputError(DramaSearchError):
    """Bad user input, located by file, line (1-based; None when not line-based) and field."""

    exit_code = EXIT_INPUT

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

    exit_code = EXIT_INPUT


class IndexFormatError(DramaSearchError):
    """An index folder is missing, incomplete, or does not match what the caller asked for."""

    exit_code = EXIT_INDEX


REPAIR_HINT = ("the index is damaged: `dramasearch verify INDEX` lists every damaged file, and rerunning "
               "`dramasearch build-index CORPUS -o INDEX` repairs an index that build-index made (it redoes "
               "only the damaged parts); rebuild an index changed by add/delete into a new folder")


class IndexDamagedError(IndexFormatError):
    """A file of the index fails its checks (size, header, checksum, identity); the message names
    the file and the command that repairs it. No search runs on a snapshot that raised it."""

    def __init__(self, message: str, files: list[str] | None = None):
        self.files = files or []
        super().__init__(f"{message}\n{REPAIR_HINT}")
