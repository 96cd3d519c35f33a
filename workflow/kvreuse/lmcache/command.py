"""The ``lmcache server`` command line (an arm with ``mode: server``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..server import HOST


def server_argv(s: dict, store_dir: Path, ports: dict) -> list[str]:
    """``lmcache server`` (flags of lmcache: v1/multiprocess/config.py, v1/distributed/config.py).

    ``s``: the arm's settings (settings.settings). Its Prometheus counters are served by the
    HTTP frontend at /metrics (the standalone --prometheus-port server is not started in this
    mode: v1/multiprocess/http_server.py).
    """
    argv = [sys.executable, "-m", "lmcache.cli.main", "server",
            "--host", HOST, "--port", str(ports["mp"]),
            "--http-host", HOST, "--http-port", str(ports["http"]),
            "--chunk-size", str(s["chunk_size"]), "--hash-algorithm", s["hash_algorithm"],
            "--l1-size-gb", str(float(s["cpu_gb"])), "--eviction-policy", "LRU",
            "--eviction-trigger-watermark", str(float(s["l1_eviction_watermark"]))]
    if s["store"] == "fs":
        argv += ["--l2-adapter", json.dumps({"type": "fs", "base_path": str(store_dir / "l2")},
                                            separators=(",", ":"))]
    return argv + [str(a) for a in s["server_args"]]
