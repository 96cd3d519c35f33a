"""The decision table's rows of issue 13's workloads (kvreuse.decision: pressure, multiturn_long,
chunk_sweep, miss, remote): per builder a stand-in table in the shape its aggregation writes ->
the rows expected (with reuse minus without, the CI the table gives, the counters beside); one
changed table row changes its verdict; the source studies' claims stand beside these rows; and
the tables the builders read are the tables the aggregation writes (pressure, miss: the CI
columns they add). Synthetic tables only: fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kvreuse import config as kc
from kvreuse import dag, decision, paper, results
from kvreuse.decision import HELPS, HURTS, NO_CI, NO_DIFFERENCE
from kvreuse.tables_conversations import COLUMNS as CONVERSATION_COLUMNS
from kvreuse.tables_remote import COLUMNS as REMOTE_COLUMNS

REPO = Path(__file__).resolve().parents[1]
NAN = float("nan")


def frame(rows: list[dict], columns: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns) if columns else pd.DataFrame(rows)


# -- stand-in tables, in the shape of kvreuse.tables_* ---------------------------------------------
def pressure(saved_median_ci=(30.0, 50.0)) -> pd.DataFrame:
    """pressure.csv: APC, LMCache (measured), an offloading arm not run; prefix_repetition only."""
    base = {"platform": "h200", "status": "ok", "reason": "", "lmcache_kernels": "loaded",
            "workload": "prefix_repetition", "ttft_mean_ms": 1000.0, "ttft_median_ms": 900.0, "ttft_p99_ms": 2000.0,
            "request_throughput_req_s": 2.0, "output_throughput_tok_s": 256.0, "n": 128}
    apc = {**base, "arm": "apc", "arm_label": "apc", "apc_hit_fraction": 0.4, "reuse_hit_fraction": 0.4}
    lo, hi = saved_median_ci
    lm = {**base, "arm": "lmcache_cpu", "arm_label": "lmcache_cpu", "ttft_mean_ms": 950.0, "ttft_median_ms": 860.0,
          "ttft_p99_ms": 2100.0, "request_throughput_req_s": 1.9, "output_throughput_tok_s": 243.2,
          "apc_hit_fraction": 0.4, "reuse_hit_fraction": 0.95,
          "ttft_saved_median_ms": 40.0, "ttft_saved_ci95_lo_ms": lo, "ttft_saved_ci95_hi_ms": hi,
          "ttft_saved_mean_ms": 50.0, "ttft_saved_mean_ci95_lo_ms": -10.0, "ttft_saved_mean_ci95_hi_ms": 110.0,
          "ttft_saved_p99_ms": -100.0, "ttft_saved_p99_ci95_lo_ms": -300.0, "ttft_saved_p99_ci95_hi_ms": -20.0,
          "request_throughput_change_pct": -5.0, "output_throughput_change_pct": -5.0}
    off = {"platform": "h200", "arm": "vllm_offload_cpu", "status": "not_run", "reason": "needs CUDA"}
    return frame([apc, lm, off])


def conversations(experiment: str, ref: str, arm: str, chunk: float, ref_chunk: float,
                  saved_ci=(90.0, 110.0)) -> pd.DataFrame:
    """multiturn_long.csv / chunk_sweep.csv: the reference and one arm at one history length,
    overall and (multiturn_long) one turn row, which the decision table leaves out."""
    head = {"platform": "h200", "reference_arm": ref, "status": "ok", "reason": "", "history_tokens": 18000,
            "n_clients": 10}
    rows = [{**head, "arm": ref, "arm_label": ref, "chunk_size": ref_chunk, "scope": "overall", "n": 50,
             "ttft_median_ms": 400.0, "hit_rate": 0.5},
            {**head, "arm": arm, "arm_label": arm, "chunk_size": chunk, "scope": "overall", "n": 50,
             "ttft_median_ms": 300.0, "hit_rate": 0.9, "n_reference": 50, "ttft_saved_ms": 100.0,
             "ttft_saved_ci95_lo_ms": saved_ci[0], "ttft_saved_ci95_hi_ms": saved_ci[1]},
            {**head, "arm": arm, "arm_label": arm, "chunk_size": chunk, "scope": "turn", "turn": 1, "n": 10,
             "ttft_median_ms": 250.0, "n_reference": 10, "ttft_saved_ms": 5.0, "ttft_saved_ci95_lo_ms": 1.0,
             "ttft_saved_ci95_hi_ms": 9.0}]
    return frame(rows, CONVERSATION_COLUMNS)


def miss(delta_ci=(2.0, 9.0)) -> pd.DataFrame:
    """miss.csv: APC and LMCache at 1,024 tokens, both cases; APC has no change (the reference)."""
    rows = []
    for arm in ("apc", "lmcache_cpu"):
        for case, ttft in (("miss", 100.0), ("vram_hit", 20.0)):
            r = {"platform": "h200", "arm": arm, "arm_label": arm, "status": "ok", "reason": "",
                 "prompt_tokens": 1024, "case": case, "n": 16, "server_runs": 2, "e2e_mean_ms": ttft + 200.0,
                 "ttft_mean_ms": ttft * (1.05 if arm != "apc" else 1.0),
                 "hit_fraction": 0.0 if case == "miss" else 0.98}
            if arm != "apc":
                lo, hi = delta_ci if case == "miss" else (-1.0, 1.0)
                r.update(ttft_delta_pct=5.0 if case == "miss" else 0.2, ttft_delta_ci95_lo_pct=lo,
                         ttft_delta_ci95_hi_pct=hi, e2e_delta_pct=1.0, e2e_delta_ci95_lo_pct=NAN,
                         e2e_delta_ci95_hi_pct=NAN)
            rows.append(r)
    return frame(rows)


def remote(diff_ci=(340.0, 370.0)) -> pd.DataFrame:
    ok = {"platform": "h200", "arm": "lmcache_redis", "status": "ok", "reason": "", "store": "redis",
          "store_version": "7.0.15", "prefix_tokens": 19968, "n_hit": 5, "n_miss": 5, "hit_ttft_median_ms": 388.5,
          "miss_ttft_median_ms": 746.0, "diff_median_ms": 357.5, "diff_ci95_lo_ms": diff_ci[0],
          "diff_ci95_hi_ms": diff_ci[1], "speedup": 1.92, "hit_fraction": 1.0, "hit_fraction_min": 1.0,
          "miss_hit_tokens": 0.0}
    nr = {"platform": "h200", "arm": "lmcache_remote_server", "status": "not_run", "reason": "server failed"}
    return frame([ok, nr], REMOTE_COLUMNS)


def tables(**changed) -> dict[str, pd.DataFrame]:
    t = {"pressure": pressure(), "multiturn_long": conversations("multiturn_long", "apc", "lmcache_cpu", NAN, NAN),
         "chunk_sweep": conversations("chunk_sweep", "lmcache_cpu", "lmcache_cpu_chunk64", 64.0, 256.0,
                                      saved_ci=(-30.0, -10.0)),
         "miss": miss(), "remote": remote(), "runs": frame([{"platform": "h200", "status": "ok",
                                                              "model": "llama-3.1-8b"}])}
    return {**t, **changed}


def pick(t: pd.DataFrame, **key) -> pd.Series:
    sel = t
    for k, v in key.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, (key, sel)
    return sel.iloc[0]


def fields(r: pd.Series) -> tuple:
    return (r.with_reuse, r.without_reuse, r.difference, r.difference_ci95_lo, r.difference_ci95_hi, r.verdict)


# -- per builder: a stand-in table -> the rows --------------------------------------------------------
def test_pressure_each_store_against_apc_by_mean_median_p99_and_throughput():
    t = decision.table(tables())
    p = t[t.workload == "pressure"]
    assert set(p.arm) == {"lmcache_cpu"}  # APC is the reference; the arm not run has no row
    assert list(p.metric) == ["ttft_mean", "ttft_median", "ttft_p99", "request_throughput_change",
                              "output_throughput_change"]
    # the table's APC minus arm, negated with its CI: arm minus APC
    assert fields(pick(p, metric="ttft_median")) == (860.0, 900.0, -40.0, -50.0, -30.0, HELPS)
    assert fields(pick(p, metric="ttft_mean")) == (950.0, 1000.0, -50.0, -110.0, 10.0, NO_DIFFERENCE)
    assert fields(pick(p, metric="ttft_p99")) == (2100.0, 2000.0, 100.0, 20.0, 300.0, HURTS)
    tput = pick(p, metric="request_throughput_change")
    assert (tput.with_reuse, tput.without_reuse, tput.difference, tput.verdict) == (1.9, 2.0, -5.0, NO_CI)
    assert (tput.better, tput.unit) == ("higher", "%")
    r = pick(p, metric="ttft_median")
    assert (r.case, r.hit_fraction, r.n_with_reuse, r.n_without_reuse) == ("prefix_repetition", 0.95, 128, 128)
    assert r.source_key == "platform=h200, arm=lmcache_cpu, workload=prefix_repetition"


def test_multiturn_long_each_arm_against_its_reference_per_history_length():
    r = pick(decision.table(tables()), workload="multiturn_long")  # the per-turn row is left out
    assert fields(r) == (300.0, 400.0, -100.0, -110.0, -90.0, HELPS)
    assert (r.arm, r.prefix_tokens, r.hit_fraction, r.n_without_reuse) == ("lmcache_cpu", 18000.0, 0.9, 50)
    assert r.compared == "lmcache_cpu vs apc (APC only), long conversations"
    assert r.source_key == "platform=h200, arm=lmcache_cpu, history_tokens=18000, scope=overall"


def test_chunk_sweep_each_chunk_size_against_chunk_256():
    r = pick(decision.table(tables()), workload="chunk_sweep")
    assert fields(r) == (300.0, 400.0, -100.0, 10.0, 30.0, HURTS)  # CI of the saving below zero: slower
    assert r.compared == "chunk 64 vs chunk 256 (lmcache_cpu, the study's best)"
    assert r.arm == "lmcache_cpu_chunk64"


def test_miss_each_offloading_arm_against_apc_per_length_and_case():
    t = decision.table(tables())
    m = t[t.workload == "miss"]
    assert set(m.arm) == {"lmcache_cpu"} and len(m) == 4  # 2 cases x (TTFT, E2E)
    r = pick(m, case="miss", metric="ttft_mean_change")
    assert fields(r) == (105.0, 100.0, 5.0, 2.0, 9.0, HURTS)
    assert (r.unit, r.prefix_tokens, r.hit_fraction) == ("%", 1024.0, 0.0)
    assert r.compared == "with the store vs APC only, misses (nothing reusable)"
    hit = pick(m, case="vram_hit", metric="ttft_mean_change")
    assert (hit.verdict, hit.hit_fraction) == (NO_DIFFERENCE, 0.98)
    assert pick(m, case="miss", metric="e2e_mean_change").verdict == NO_CI  # one server run a side: no CI
    assert r.source_key == "platform=h200, arm=lmcache_cpu, prompt_tokens=1024, case=miss"


def test_remote_a_hit_against_a_miss_with_the_hit_fraction():
    t = decision.table(tables())
    r = pick(t, workload="remote")  # the arm not run has no row
    assert fields(r) == (388.5, 746.0, -357.5, -370.0, -340.0, HELPS)
    assert (r.arm, r.prefix_tokens, r.hit_fraction, r.n_with_reuse) == ("lmcache_redis", 19968.0, 1.0, 5)


def test_no_source_is_pending_and_absent_tables_are_named():
    assert all(s.build is not None for s in decision.SOURCES)
    gone = {a["workload"]: a["reason"] for a in decision.absent({}, decision.table({}))}
    assert gone["pressure"] == "pressure.csv is not in these results"
    only_not_run = {"remote": remote().iloc[[1]]}
    assert {a["workload"]: a["reason"] for a in decision.absent(only_not_run, decision.table(only_not_run))}[
        "remote"] == "no measured row in remote.csv"


def test_a_store_arm_whose_reference_arm_is_not_measured_gives_no_row_and_says_why():
    """Lease 4 measured pressure's two store arms, not its APC-only arm: no comparison exists."""
    without_apc = pressure()[lambda t: t["arm"] != "apc"]
    t = tables(pressure=without_apc)
    rows = decision.table(t)
    assert "pressure" not in set(rows["workload"]) and "remote" in set(rows["workload"])
    reason = {a["workload"]: a["reason"] for a in decision.absent(t, rows)}["pressure"]
    assert reason.startswith("pressure.csv has measured rows, but no measured pair to compare")
    for name, ref in (("multiturn_long", "apc"), ("chunk_sweep", "lmcache_cpu"), ("miss", "apc")):
        t = tables(**{name: tables()[name][lambda f, ref=ref: f["arm"] != ref]})
        assert name not in set(decision.table(t)["workload"]), name


# -- one changed table row changes its verdict ---------------------------------------------------------
@pytest.mark.parametrize("name, changed, key, before, after", [
    ("pressure", pressure(saved_median_ci=(-50.0, -30.0)), {"workload": "pressure", "metric": "ttft_median"},
     HELPS, HURTS),
    ("miss", miss(delta_ci=(-9.0, -2.0)), {"workload": "miss", "case": "miss", "metric": "ttft_mean_change"},
     HURTS, HELPS),
    ("remote", remote(diff_ci=(-20.0, 370.0)), {"workload": "remote"}, HELPS, NO_DIFFERENCE),
    ("chunk_sweep", conversations("chunk_sweep", "lmcache_cpu", "lmcache_cpu_chunk64", 64.0, 256.0,
                                  saved_ci=(10.0, 30.0)), {"workload": "chunk_sweep"}, HURTS, HELPS),
])
def test_changing_one_row_of_a_new_workloads_table_changes_its_verdict(name, changed, key, before, after):
    old, new = decision.table(tables()), decision.table(tables(**{name: changed}))
    assert pick(old, **key).verdict == before and pick(new, **key).verdict == after
    others = lambda t: t[t.workload != name].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(others(old), others(new))


# -- the source studies beside these rows -------------------------------------------------------------
def test_the_studies_numbers_stand_beside_the_new_rows_with_what_differs():
    cited = yaml.safe_load((REPO / dag.CITED).read_text())
    links = yaml.safe_load((REPO / dag.DECISION_LINKS).read_text())["links"]
    tabs = tables()
    tabs["multiturn_long"] = tabs["multiturn_long"].assign(history_tokens=4000)
    t = decision.table(tabs, cited, links, {"h200": {"miss": 32, "pressure": 128}},
                       {"h200": {"miss": 1, "multiturn_long": 10, "pressure": 8}})
    # study 001: its two sides, LMCache off and on (no difference of its own), beside ours
    p = pick(t, workload="pressure", metric="ttft_mean")
    assert (p.study_claim, p.study_claim_without, p.study_value, p.study_value_without, p.study_unit) == (
        "s001-prefrep-on-mean-ttft", "s001-prefrep-off-mean-ttft", 38.47, 41.35, "s")
    assert p.what_differs == "GPU: a100 (ours h200); model: Qwen2.5-1.5B-Instruct (ours llama-3.1-8b)"
    med = pick(t, workload="pressure", metric="ttft_median")
    assert med.study_claim == "s001-prefrep-on-median-ttft"
    # study 002's multi-turn at 5K input tokens: the mean beside our median
    mt = pick(t, workload="multiturn_long")
    assert (mt.study_claim, mt.study_value_without, mt.study_value) == ("s002-mt-5k-on-ttft", 4350.48, 2646.09)
    assert mt.what_differs.endswith("statistic: mean (ours median)")
    cs = pick(t, workload="chunk_sweep")
    assert (cs.study_claim, cs.study_claim_without) == ("s002-chunk-64-ttft", "s002-chunk-256-ttft")
    # study 002's cache misses: the change of mean TTFT at 1K, its output length beside ours
    m = pick(t, workload="miss", case="miss", metric="ttft_mean_change")
    assert (m.study_claim, m.study_value, m.study_unit) == ("s002-miss-1k-ttft-change", 4.0, "%")
    assert m.what_differs == ("GPU: rtx4090 (ours h200); model: Qwen3-8B (ours llama-3.1-8b); "
                              "output length: 128 tokens (ours 32); requests in flight: 100 (ours 1)")
    assert (m.study_in_flight, m.in_flight) == (100, 1)
    # its multi-turn load is ours (10 conversations at once): not listed as a difference
    assert "in flight" not in mt.what_differs and mt.in_flight == 10
    deg = pick(t, workload="miss", case="miss", metric="e2e_mean_change")
    assert (deg.study_claim, deg.study_low, deg.study_high) == ("s002-miss-degradation", 3, 15)
    assert "metric: throughput (ours end-to-end latency of the whole request)" in deg.what_differs
    assert pick(t, workload="miss", case="vram_hit", metric="ttft_mean_change").study_claim == \
        "s002-hit-1k-ttft-change"
    r = pick(t, workload="remote")
    assert (r.study_value_without, r.study_value, r.study_unit) == (0.746, 0.388, "s")
    # our hits come after vLLM's restart; the study does not say whether its did
    assert r.what_differs.endswith("hits: whether after a restart not stated by the study (ours after vLLM's "
                                   "restart: only the remote store can serve them)")
    # the write-up: both sides of the study, ours with its CI
    ctx = paper.decision_context({**tabs, "decision": t}, cited)
    text = {b["study_claim"]: b for b in ctx["beside"]}
    assert text["s001-prefrep-on-mean-ttft"]["study_text"] == "without 41.35, with 38.47 s (seed001, a100)"
    assert text["s002-miss-1k-ttft-change"]["ours_text_decision"] == "+5.0 % (+2.0 to +9.0)"
    rows = {(r["workload"], r.get("case") if isinstance(r.get("case"), str) else None) for r in ctx["rows"]}
    assert ("miss", "vram_hit") in rows
    assert {r["workload_text"] for r in ctx["rows"]} >= {"pressure (prefix_repetition)", "miss (vram_hit)",
                                                          "remote", "chunk_sweep"}


def test_links_name_a_known_claim_without_and_statistic():
    cited = yaml.safe_load((REPO / dag.CITED).read_text())
    link = {"claim": "s002-remote-backends-redis-hit", "workload": "remote", "arm": "lmcache_redis",
            "metric": "ttft_median"}
    with pytest.raises(ValueError, match="cited.yaml does not have"):
        decision.table(tables(), cited, [{**link, "claim_without": "nope"}])
    with pytest.raises(ValueError, match="study_statistic"):
        decision.table(tables(), cited, [{**link, "study_statistic": "mode"}])


# -- the builders read what the aggregation writes -------------------------------------------------------
def tables_from_runs() -> dict[str, pd.DataFrame]:
    """pressure.csv and miss.csv from stand-in runs through their aggregation (kvreuse.tables_pressure,
    kvreuse.tables_miss): APC and two stores, both pressure workloads, both miss cases (also the
    write-up's LaTeX test, tests/test_paper_latex.py)."""
    from test_pressure_miss import MISS, PRESSURE, _bench_phase, _records, a_meta

    from kvreuse.tables_miss import miss_table
    from kvreuse.tables_pressure import pressure_table

    metas, recs = [], []
    for arm, rps, fast in (("apc", 2.0, 0.0), ("lmcache_cpu", 2.5, 40.0), ("vllm_offload_cpu", 1.9, -5.0)):
        m = a_meta("pressure", arm, {**PRESSURE, "arms": ["apc", "lmcache_cpu", "vllm_offload_cpu"]})
        for kind in ("prefix_repetition", "conversation"):
            m.add_phase(kind, _bench_phase(kind, {"vllm:prefix_cache_hits": 96}, rps))
            recs += _records("pressure", arm, kind, [100.0 - fast + i for i in range(12)])
        metas.append(m)
    pressure = pressure_table(pd.DataFrame(recs), metas)
    metas, recs = [], []
    for arm, slow in (("apc", 1.0), ("lmcache_cpu", 1.05), ("vllm_offload_cpu", 1.1)):
        m = a_meta("miss", arm, {**MISS, "arms": ["apc", "lmcache_cpu", "vllm_offload_cpu"]})
        for run in range(2):
            for case in ("miss", "vram_hit"):
                m.add_phase(f"{case}_64_run{run}", results.Phase(
                    kind=case, n_requests=3, wall_s=1.0, prefix_tokens=64, server_run=run,
                    counters={"vllm:prompt_tokens": 192}))
                recs += _records("miss", arm, case, [slow * (50 + i + run) for i in range(3)], prefix_tokens=64,
                                 server_run=run)
        metas.append(m)
    return {"pressure": pressure, "miss": miss_table(pd.DataFrame(recs), metas)}


def test_pressure_and_miss_tables_from_runs_give_rows_with_their_cis():
    from test_pressure_miss import PRESSURE, _bench_phase, _records, a_meta

    from kvreuse.tables_pressure import pressure_table

    made = tables_from_runs()
    pt, mt = made["pressure"], made["miss"]
    lm = pt[(pt.arm == "lmcache_cpu") & (pt.workload == "prefix_repetition")].iloc[0]
    # the mean's saving and its bootstrap CI; the 99th percentile's only from stats.P99_MIN_N a side
    assert lm.ttft_saved_mean_ms == pytest.approx(40.0) and 0 < lm.ttft_saved_mean_ci95_lo_ms < 40.0
    assert np.isnan(lm.ttft_saved_p99_ms) and np.isnan(lm.ttft_saved_p99_ci95_lo_ms)
    rows = decision.table(made)
    mean = pick(rows, arm="lmcache_cpu", case="prefix_repetition", metric="ttft_mean")
    assert (mean.difference, mean.difference_ci95_hi, mean.verdict) == (
        pytest.approx(-40.0), -lm.ttft_saved_mean_ci95_lo_ms, HELPS)
    assert pick(rows, arm="lmcache_cpu", case="conversation", metric="ttft_p99").verdict == NO_CI
    assert pick(rows, arm="lmcache_cpu", case="prefix_repetition",
                metric="request_throughput_change").difference == pytest.approx(25.0)
    # 108 requests a side: the 99th percentile's saving and its CI
    df = pd.DataFrame(sum(([r for k in range(9) for r in _records("pressure", arm, "prefix_repetition",
                                                                  [100.0 - fast + i for i in range(12)])]
                           for arm, fast in (("apc", 0.0), ("lmcache_cpu", 40.0))), []))
    metas = []
    for arm in ("apc", "lmcache_cpu"):
        m = a_meta("pressure", arm, PRESSURE)
        m.add_phase("prefix_repetition", _bench_phase("prefix_repetition", {}, 2.0))
        metas.append(m)
    big = pressure_table(df, metas).query("arm == 'lmcache_cpu'").iloc[0]
    assert big.ttft_saved_p99_ms == pytest.approx(40.0) and big.ttft_saved_p99_ci95_lo_ms <= 40.0

    r = pick(rows, arm="vllm_offload_cpu", case="miss", metric="ttft_mean_change")
    src = mt[(mt.arm == "vllm_offload_cpu") & (mt.case == "miss")].iloc[0]
    assert (r.difference, r.difference_ci95_lo, r.verdict) == (pytest.approx(10.0), src.ttft_delta_ci95_lo_pct, HURTS)
    assert r.without_reuse == mt[(mt.arm == "apc") & (mt.case == "miss")].iloc[0].ttft_mean_ms


def test_the_requests_in_flight_of_each_workload_come_from_its_config():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    in_flight = dag.decision_in_flight(config)["h200"]
    params = {e: kc.experiment_params(config, "h200", e) for e in ("pressure", "multiturn_long", "chunk_sweep")}
    assert in_flight["pressure"] == params["pressure"]["max_concurrency"]
    assert in_flight["multiturn_long"] == params["multiturn_long"]["n_clients"]
    assert in_flight["chunk_sweep"] == params["chunk_sweep"]["n_clients"]
    assert in_flight["miss"] == in_flight["remote"] == in_flight["restart"] == 1  # one request at a time
