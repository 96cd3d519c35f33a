"""Stand-in for vllm.utils.argparse_utils (tests only)."""

from argparse import ArgumentParser as FlexibleArgumentParser  # noqa: F401
