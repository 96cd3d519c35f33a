"""kvreuse: measure KV-cache reuse (vLLM APC, LMCache) with counters, not guesses."""

__version__ = "0.1.0"
