"""LMCache's compiled kernels per run (kvreuse.kernels): the state from what the meta recorded,
never guessed, and the arm labels that every table and figure shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvreuse import kernels
from kvreuse.results import RunMeta, read_meta
from kvreuse.tables_runs import runs_table

REPO = Path(__file__).resolve().parents[1]
LMCACHE = {"lmcache": {"mode": "in_process"}}


def meta(arm_config: dict, lmcache: dict | None, status: str = "ok", versions: dict | None = None) -> RunMeta:
    return RunMeta(status=status, platform="h200", experiment="restart", arm="lmcache_cpu",
                   arm_config=arm_config, params={}, accelerator={}, versions=versions or {}, model={},
                   server={}, client={}, config_hash=None, git_commit=None, started_at="",
                   finished_at=None, phases={}, lmcache=lmcache)


@pytest.mark.parametrize("arm_config, lmcache, status, state", [
    (LMCACHE, {"cuda_kernels": "loaded"}, "ok", "loaded"),
    (LMCACHE, {"cuda_kernels": "fallback"}, "ok", "fallback"),
    (LMCACHE, {"cuda_kernels": "unknown"}, "ok", "unknown"),
    # older metas: what they did record says it
    (LMCACHE, {"fallback_log_line_seen": True}, "ok", "fallback"),
    (LMCACHE, {"kernel_probe": {"kernels": "loaded"}}, "ok", "loaded"),
    # nothing about the kernels: not recorded, whatever the version (no guess)
    (LMCACHE, {"mode": "in_process"}, "ok", "not recorded"),
    (LMCACHE, None, "ok", "not recorded"),
    # alternating runs: any server run on the fallback marks the arm
    (LMCACHE, {"cuda_kernels": "loaded", "server_runs": [{"cuda_kernels": "loaded"}, {"cuda_kernels": "fallback"}]},
     "ok", "fallback"),
    (LMCACHE, {"cuda_kernels": "loaded", "server_runs": [{"cuda_kernels": "loaded"}, {"mode": "x"}]},
     "ok", "not recorded"),
    # no LMCache ran
    ({"prefix_caching": True}, None, "ok", "no LMCache"),
    ({"offload": {"tiers": ["cpu"]}}, None, "ok", "no LMCache"),
    (LMCACHE, None, "not_run", "no LMCache"),
])
def test_status_from_the_record(arm_config, lmcache, status, state):
    assert kernels.status(meta(arm_config, lmcache, status, versions={"lmcache": "0.5.6"})) == state


def test_arm_label_marks_what_did_not_load():
    assert kernels.arm_label("lmcache_cpu", "fallback") == "lmcache_cpu (torch fallback)"
    assert kernels.arm_label("lmcache_cpu", "not recorded") == "lmcache_cpu (kernels not recorded)"
    assert kernels.arm_label("lmcache_cpu", "loaded") == "lmcache_cpu"
    assert kernels.arm_label("apc", "no LMCache") == "apc"


def test_committed_lmcache_runs_recorded_their_fallback():
    """The committed H100 LMCache runs (LMCache 0.5.6) recorded the torch fallback; the H200
    campaign's (LMCache 0.5.3) recorded a probe that found no kernel module: unknown, never
    guessed; the other committed runs had no LMCache."""
    metas = [read_meta(p) for p in sorted((REPO / "results/raw").glob("h*/*/*.meta.json"))]
    t = runs_table(metas).set_index(["platform", "experiment", "arm"])
    lm = [i for i in t.index if i[2].startswith("lmcache")]
    h100 = [i for i in lm if i[0] == "h100"]
    assert h100 and set(t.loc[h100, "lmcache_kernels"]) == {"fallback"}
    assert set(t.loc[[i for i in lm if i[0] == "h200"], "lmcache_kernels"]) <= {"unknown", "loaded"}
    assert set(t.drop(index=lm)["lmcache_kernels"]) == {"no LMCache"}
