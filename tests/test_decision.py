"""When does reuse help (kvreuse.decision): the verdict rules on the CI of the difference, one
source row changed flips its decision row's verdict, absent sources give no rows and are named,
a new source is one builder, and the source studies' claims stand beside our rows with what
differs. Synthetic tables only: fast."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kvreuse import dag, decision, paper
from kvreuse.decision import HELPS, HURTS, NO_CI, NO_DIFFERENCE

REPO = Path(__file__).resolve().parents[1]
NAN = float("nan")


# -- the verdict rules ---------------------------------------------------------------------------
@pytest.mark.parametrize("lo, hi, better, want", [
    (-30.0, -5.0, "lower", HELPS),          # entirely below zero, lower is better
    (5.0, 30.0, "lower", HURTS),            # entirely above zero
    (-5.0, 30.0, "lower", NO_DIFFERENCE),   # holds zero
    (-5.0, 0.0, "lower", NO_DIFFERENCE),    # touches zero: not entirely below
    (5.0, 30.0, "higher", HELPS),           # throughput: above zero helps
    (-30.0, -5.0, "higher", HURTS),
    (NAN, NAN, "lower", NO_CI),             # fewer than two on a side
    (None, 3.0, "lower", NO_CI),
])
def test_the_verdict_is_read_from_the_ci_of_the_difference(lo, hi, better, want):
    assert decision.verdict(lo, hi, better) == want


# -- synthetic source tables -------------------------------------------------------------------------
def reload_row(lo: float, hi: float, arm: str = "lmcache_mp", length: int = 8192, verdict: str = "persisted") -> dict:
    return {"platform": "h200", "arm": arm, "arm_label": arm, "status": "ok", "prefix_tokens": float(length),
            "reload_ttft_ms": 100.0, "recompute_ttft_ms": 260.0, "reload_minus_recompute_ms": (lo + hi) / 2,
            "reload_minus_recompute_ci95_lo_ms": lo, "reload_minus_recompute_ci95_hi_ms": hi,
            "n_reload": 3, "n_recompute": 3, "verdict": verdict, "hit_fraction": 1.0, "freshness": "current"}


def tables(reload_ci=(-170.0, -140.0)) -> dict[str, pd.DataFrame]:
    return {
        "reload_vs_recompute": pd.DataFrame([reload_row(*reload_ci),
                                             {"platform": "cpu", "arm": "lmcache_cpu", "status": "not_run"}]),
        "break_even": pd.DataFrame([
            {"platform": "h200", "arm": "lmcache_mp", "estimate": "measured", "status": "crossing",
             "break_even_tokens": 2200.0, "ci_low": 2100.0, "ci_high": 2300.0},
            {"platform": "h200", "arm": "lmcache_mp", "estimate": "model", "status": "crossing",
             "break_even_tokens": 3000.0, "ci_low": 2900.0, "ci_high": 3100.0}]),
        # baseline minus treatment (cold minus warm): the time saved, CI above zero
        "comparisons": pd.DataFrame([
            {"platform": "h200", "experiment": "cold_warm", "arm": "apc", "prefix_tokens": NAN, "baseline": "cold",
             "treatment": "warm", "n_baseline": 10, "n_treatment": 100, "baseline_median_ms": 90.0,
             "treatment_median_ms": 50.0, "diff_median_ms": 40.0, "diff_ci95_lo_ms": 35.0, "diff_ci95_hi_ms": 45.0,
             "freshness": "current"},
            {"platform": "h200", "experiment": "restart", "arm": "apc", "prefix_tokens": 1024.0,
             "baseline": "post_restart_cold", "treatment": "post_restart_first", "diff_median_ms": 1.0,
             "diff_ci95_lo_ms": -1.0, "diff_ci95_hi_ms": 2.0}]),
        "random_overhead": pd.DataFrame([
            {"platform": "h200", "arm": "apc", "status": "ok", "n": 30, "e2e_delta_pct": NAN, "ttft_delta_pct": NAN},
            {"platform": "h200", "arm": "lmcache_cpu", "status": "ok", "n": 30, "e2e_mean_ms": 290.0,
             "ttft_mean_ms": 60.0, "e2e_delta_pct": 4.0, "e2e_delta_ci95_lo_pct": 1.0, "e2e_delta_ci95_hi_pct": 7.0,
             "ttft_delta_pct": 1.0, "ttft_delta_ci95_lo_pct": -2.0, "ttft_delta_ci95_hi_pct": 3.0}]),
        "cross_instance": pd.DataFrame([{"platform": "cpu", "arm": "lmcache_mp", "status": "not_run",
                                         "reason": "LMCache needs CUDA"}]),
        "runs": pd.DataFrame([{"platform": "h200", "status": "ok", "model": "llama-3.1-8b"}]),
    }


def row(t: pd.DataFrame, **key) -> pd.Series:
    sel = t
    for k, v in key.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, (key, sel)
    return sel.iloc[0]


def test_changing_one_table_row_changes_the_decision_tables_verdict():
    helps = decision.table(tables(reload_ci=(-170.0, -140.0)))
    hurts = decision.table(tables(reload_ci=(40.0, 90.0)))
    unresolved = decision.table(tables(reload_ci=(-40.0, 90.0)))
    key = {"workload": "restart", "arm": "lmcache_mp", "prefix_tokens": 8192.0}
    assert row(helps, **key).verdict == HELPS
    assert row(hurts, **key).verdict == HURTS
    assert row(unresolved, **key).verdict == NO_DIFFERENCE
    # nothing else changed
    others = lambda t: t[t.workload != "restart"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(others(helps), others(hurts))


def test_rows_carry_the_difference_its_ci_and_the_evidence():
    t = decision.table(tables())
    r = row(t, workload="restart", arm="lmcache_mp")
    assert (r.difference_ci95_lo, r.difference_ci95_hi) == (-170.0, -140.0)
    assert (r.source_table, r.source_key) == ("reload_vs_recompute",
                                              "platform=h200, arm=lmcache_mp, prefix_tokens=8192")
    # the counters and the measured break-even beside the time
    assert r.persistence == "persisted" and r.hit_fraction == 1.0
    assert (r.break_even_status, r.break_even_tokens, r.break_even_ci_low) == ("crossing", 2200.0, 2100.0)
    assert r.model == "llama-3.1-8b" and r.unit == "ms" and r.better == "lower"
    # comparisons.csv gives cold minus warm: negated, with its CI, to warm minus cold
    cw = row(t, workload="cold_warm")
    assert (cw.difference, cw.difference_ci95_lo, cw.difference_ci95_hi, cw.verdict) == (-40.0, -45.0, -35.0, HELPS)
    assert cw.source_table == "comparisons" and "experiment=cold_warm" in cw.source_key
    assert cw.with_reuse == 50.0 and cw.without_reuse == 90.0
    # comparisons.csv's restart rows are the restart source's (reload_vs_recompute.csv), not repeated
    assert set(t[t.workload == "restart"].source_table) == {"reload_vs_recompute"}
    # unique prompts: APC only is the reference, each store a TTFT and an E2E change
    ro = t[t.workload == "random_overhead"]
    assert list(ro.arm) == ["lmcache_cpu", "lmcache_cpu"]
    assert dict(zip(ro.metric, ro.verdict)) == {"e2e_mean_change": HURTS, "ttft_mean_change": NO_DIFFERENCE}
    assert set(ro.unit) == {"%"}
    assert list(t.columns) == decision.COLUMNS


def test_absent_sources_give_no_rows_and_are_named():
    t = decision.table({})
    assert t.empty and list(t.columns) == decision.COLUMNS
    gone = {a["workload"]: a["reason"] for a in decision.absent({}, t)}
    assert set(gone) == {s.workload for s in decision.SOURCES}
    assert gone["restart"] == "reload_vs_recompute.csv is not in these results"
    for name in ("pressure", "multiturn_long", "chunk_sweep", "miss", "remote"):  # issue 13's: builders now
        assert gone[name] == f"{name}.csv is not in these results"
    # a table whose every run was not run, or an empty one: no rows, named with the table
    full = tables()
    t = decision.table(full)
    gone = {a["workload"]: a["reason"] for a in decision.absent(full, t)}
    assert gone["cross_instance"] == "no measured row in cross_instance.csv"
    assert "cold_warm" not in gone and "restart" not in gone
    full["random_overhead"] = full["random_overhead"].iloc[0:0]
    assert "random_overhead" not in set(decision.table(full).workload)


def test_a_new_workload_is_one_row_builder(monkeypatch):
    def miss_rows(t):
        return [decision.make_row("miss", r, "ttft_mean_change", "with the store vs APC only, random inputs",
                              NAN, NAN, r["d"], r["lo"], r["hi"], 100, 100, "miss",
                              decision.row_key(platform=r["platform"], arm=r["arm"]))
                for r in t["miss"].to_dict("records")]

    sources = tuple(decision.Source(s.workload, s.tables, miss_rows, s.what) if s.workload == "miss" else s
                    for s in decision.SOURCES)
    monkeypatch.setattr(decision, "SOURCES", sources)
    t = decision.table({"miss": pd.DataFrame([{"platform": "h200", "arm": "lmcache_cpu", "d": 5.0, "lo": 3.0,
                                               "hi": 8.0}])})
    assert list(zip(t.workload, t.verdict)) == [("miss", HURTS)]
    assert "miss" not in {a["workload"] for a in decision.absent({}, t)}


# -- the source studies beside ours ---------------------------------------------------------------
CITED = {"studies": {"seed000": {"file": "x", "title": "S"}}, "claims": [
    {"group": "g", "source": "seed000", "title": "T", "measures": "E2E of a request",
     "setup": {"gpu": "h100", "model": "Llama-3.1-8B-Instruct BF16"},
     "claims": [{"id": "c-restart", "quantity": "reload minus recompute", "value": -120, "unit": "ms", "excerpt": "e"},
                {"id": "c-random", "quantity": "change", "range": [3, 15], "unit": "%", "excerpt": "e"}]}]}
LINKS = [{"claim": "c-restart", "workload": "restart", "metric": "ttft_median", "arm": "lmcache_mp",
          "prefix_tokens": 8192, "study_metric": "e2e", "study_output_tokens": 20, "study_prefix_tokens": 500},
         {"claim": "c-random", "workload": "random_overhead", "metric": "e2e_mean_change", "arm": "lmcache_cpu",
          "platform": "h200", "study_metric": "e2e", "study_output_tokens": 48}]


def test_a_study_claim_stands_beside_its_rows_with_what_differs():
    t = decision.table(tables(), CITED, LINKS, {"h200": {"restart": 16, "random_overhead": 48}})
    r = row(t, workload="restart", arm="lmcache_mp")
    assert (r.study_claim, r.study_value, r.study_unit, r.study_gpu) == ("c-restart", -120, "ms", "h100")
    assert r.what_differs == ("GPU: h100 (ours h200); output length: 20 tokens (ours 16); prefix: 500 tokens "
                              "(ours 8192); metric: end-to-end latency of the whole request (ours TTFT at the "
                              "first streamed token)")
    ro = row(t, workload="random_overhead", metric="e2e_mean_change")
    assert (ro.study_low, ro.study_high) == (3, 15)
    assert ro.what_differs == "GPU: h100 (ours h200)"  # same model, output length and metric
    assert pd.isna(row(t, workload="random_overhead", metric="ttft_mean_change").study_claim)


def test_links_are_checked():
    with pytest.raises(ValueError, match="cited.yaml does not have"):
        decision.table(tables(), CITED, [{**LINKS[0], "claim": "nope"}])
    with pytest.raises(ValueError, match="to one row"):
        decision.table(tables(), CITED, [LINKS[0], {**LINKS[0], "claim": "c-random"}])
    with pytest.raises(ValueError, match="study_metric"):
        decision.table(tables(), CITED, [{**LINKS[0], "study_metric": "speed"}])


def test_the_repository_links_name_claims_of_cited_yaml():
    cited = yaml.safe_load((REPO / dag.CITED).read_text())
    links = yaml.safe_load((REPO / dag.DECISION_LINKS).read_text())["links"]
    t = decision.table(tables(), cited, links)  # raises on an unknown claim or metric
    assert len(links) and not t.empty


# -- the rule's inputs and the write-up -----------------------------------------------------------
def test_the_rule_reads_the_configured_source_tables_and_our_output_lengths():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    names = dag.decision_tables(config)
    assert {"comparisons", "reload_vs_recompute", "break_even", "random_overhead", "runs"} <= set(names)
    assert set(names) <= set(dag.tables(config))
    out = dag.decision_output_tokens(config)
    assert out["cpu"]["random_overhead"] == config["experiments"]["random_overhead"]["output_tokens"]
    assert out["cpu"]["restart"] == config["client"]["max_tokens"]


def test_the_write_up_counts_the_verdicts_and_names_what_is_absent():
    ctx = paper.decision_context(tables(), CITED, Path("/nonexistent"))
    assert ctx["n"] == len(ctx["rows"]) == 4
    assert ctx["counts"] == {HELPS: 2, HURTS: 1, NO_DIFFERENCE: 1}
    assert "cross_instance" in {a["workload"] for a in ctx["absent"]}
    r = next(r for r in ctx["rows"] if r["workload"] == "restart")
    assert (r["ci_text"], r["break_even_text"], r["prefix_text"]) == ("-170.0 to -140.0", "2,200 tokens", "8,192")
    assert math.isnan(next(r for r in ctx["rows"] if r["workload"] == "cold_warm")["prefix_tokens"])
    # from decision.csv where the rule made it (its study columns beside)
    made = decision.table(tables(), CITED, LINKS)
    ctx = paper.decision_context({**tables(), "decision": made}, CITED)
    assert [b["study_claim"] for b in ctx["beside"]] == ["c-restart", "c-random"]
    assert ctx["beside"][1]["study_text"] == "3 to 15 % (seed000, h100)"
