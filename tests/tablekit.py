"""The shape of the pipeline's tables: columns, the rows' keys and n per row, no timings.

``tests/data/tables-before.json`` holds the shape of the tables that the code before the
results schema (commit 0caeb24) made from a small CPU run (``tests/data/small-run.yaml``);
``tests/test_tables_unchanged.py`` checks that the current code gives the same shape.
Made with ``python tests/tablekit.py RESULTS_TABLES_DIR > tests/data/tables-before.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

#: the tables of a run of every experiment on the CPU
TABLES = ("baseline", "cold_warm", "restart", "prefix_sweep", "multiturn", "serving",
          "random_overhead", "runs", "cost", "fidelity", "reload_vs_recompute", "break_even")
#: columns that say which row it is (the rest are measurements, which vary run to run)
KEYS = ("platform", "experiment", "arm", "phase", "kind", "prefix_tokens", "turn",
        "context_tokens", "request_rate", "status", "n", "n_requests", "completed", "link", "estimate")


def _plain(v):
    if pd.isna(v):
        return None
    return v.item() if hasattr(v, "item") else v


def shape(csv: Path | str) -> dict:
    t = pd.read_csv(csv)
    keys = [k for k in KEYS if k in t.columns]
    rows = [{k: _plain(r[k]) for k in keys} for _, r in t.iterrows()]
    return {"columns": list(t.columns),
            "rows": sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))}


def shapes(tables_dir: Path | str) -> dict:
    return {name: shape(Path(tables_dir) / f"{name}.csv") for name in TABLES}


if __name__ == "__main__":
    json.dump(shapes(sys.argv[1]), sys.stdout, indent=1, sort_keys=True)
    print()
