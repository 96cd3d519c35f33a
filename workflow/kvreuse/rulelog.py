"""Send a Snakemake script's logging and stderr to the rule's ``log:`` file, secrets scrubbed."""

import logging
import sys

from .redact import LogFilter


def to_rule_log(snakemake) -> None:
    if snakemake.log:
        sys.stderr = open(snakemake.log[0], "a", buffering=1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(LogFilter())
    logging.getLogger("httpx").setLevel(logging.WARNING)
