"""The results contract: ``results/raw/{platform}/{experiment}/{arm}.jsonl`` plus ``.meta.json``.

Each JSONL line is one request; the meta holds provenance and per-phase counter deltas.
Files are written atomically (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

RECORD_FIELDS = ("experiment", "arm", "phase", "seq", "prompt_tokens", "cached_tokens",
                 "output_tokens", "ttft_ms", "itl_ms", "e2e_ms", "error")
META_FIELDS = ("status", "platform", "experiment", "arm", "accelerator", "versions", "model",
               "server", "config_hash", "git_commit", "started_at", "finished_at", "phases")


def atomic_write_text(path: Path | str, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_records(path: Path | str, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def write_meta(path: Path | str, meta: dict) -> None:
    atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_records(path: Path | str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_meta(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())


def meta_path(jsonl: Path | str) -> Path:
    p = Path(jsonl)
    return p.with_name(p.name[: -len(".jsonl")] + ".meta.json")
