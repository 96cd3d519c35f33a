"""The errors kvreuse raises on purpose; each message says what went wrong and what to do.

This module imports nothing of kvreuse, so that any module can raise these without an import
cycle.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """config.yaml breaks the schema or a cross-key rule; the message names the key."""


class ServerError(RuntimeError):
    """A server did not start or died; the message carries the tail of its log."""


class PreflightError(RuntimeError):
    """A store folder is not writable or too small; the message says which and what to do."""


class SchemaError(LookupError):
    """The code asked the config schema for a key or default it does not define (a bug in
    kvreuse, not in config.yaml); the message names the key."""
