"""A server log's part written by one run or phase: the log is appended to across runs, so a
reader marks its size first (:func:`log_size`) and later reads what came after (:func:`log_since`)."""

from __future__ import annotations

from pathlib import Path


def log_size(path: Path | str) -> int:
    """The size of a log now (0 where there is none): where this run's part of it begins."""
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def log_since(path: Path | str, since: int = 0) -> str | None:
    """A log's text from byte ``since`` on (this run's part: the log is appended to across runs),
    None where it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")
    except OSError:
        return None
