"""Keep secrets (the hub token above all) out of servers' environments, logs, metas and results.

Three guards, applied where kvreuse writes or spawns:

- :func:`server_environ`: a server gets this process's environment without secret variables
  (it serves a local model folder and needs no hub token), plus what the config sets.
- :func:`env_for_record`: what a meta may say about an environment: values of secret-named
  variables replaced by ``<redacted>``.
- :func:`scrub` and :class:`LogFilter`: any secret value that is in the environment is
  replaced by ``<redacted>`` wherever it turns up in a string (a meta, a record, a log line).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

REDACTED = "<redacted>"
#: environment variable names that hold secrets: HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
#: AWS_SECRET_ACCESS_KEY, WANDB_API_KEY, ...; not MAX_TOKENS (a count)
SECRET_NAME = re.compile(
    r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|API_KEY|ACCESS_KEY|SECRET_KEY|PRIVATE_KEY)($|_)",
    re.IGNORECASE)
#: shorter values are not treated as secrets (they would match ordinary text)
MIN_SECRET_LEN = 8


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of this process's secret-named environment variables, longest first."""
    environ = os.environ if environ is None else environ
    vals = {v for k, v in environ.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LEN}
    return sorted(vals, key=len, reverse=True)


def scrub(obj, secrets: list[str] | None = None):
    """``obj`` (str, list, dict, ...) with every secret value replaced by ``<redacted>``."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return obj
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, REDACTED)
        return obj
    if isinstance(obj, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub(v, secrets) for v in obj)
    return obj


def env_for_record(env: Mapping[str, str]) -> dict[str, str]:
    """An environment as a meta may record it: secret-named values redacted."""
    return {k: (REDACTED if is_secret_name(k) else str(v)) for k, v in env.items()}


def server_environ(extra: Mapping[str, str] | None = None,
                   base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server process: ``base`` without secrets, then ``extra``.

    A secret the config sets explicitly (``extra``, e.g. a store's credentials) is passed on.
    """
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if not is_secret_name(k)}
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return env


class LogFilter(logging.Filter):
    """Replaces secret values in log records (message and arguments, formatted once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        if secrets:
            msg = record.getMessage()
            clean = scrub(msg, secrets)
            if clean != msg:
                record.msg, record.args = clean, None
        return True
