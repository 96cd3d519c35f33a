"""When does reuse help? The decision table (results/tables/decision.csv): one row per workload,
store (arm), platform and metric compared, made from the tables the pipeline already makes, each
with the difference that reuse makes, the 95% CI of that difference as its source table gives it
(never recomputed here, never from a time alone), a verdict, and the evidence (source table, row).

**The difference** is always *with reuse minus without* in the metric's unit: warm minus cold,
reload minus recompute after a restart, the first request on another instance's prefix minus a
never-seen one, the arm with a store minus APC only on unique prompts (a change in percent). Where
the source table gives the other direction (comparisons.csv, cross_instance.csv: baseline minus
treatment, the time saved) its difference and CI are negated (the percentile CI of -x is the
negated CI of x).

**The verdict** is decided by that CI alone. For a metric where lower is better (every time and
every change of a time here): the CI entirely below zero is ``helps``, entirely above zero is
``hurts``, a CI that holds zero is ``no difference`` (none resolved by the runs); for a metric
where higher is better (throughput), the other way round. A row whose CI is missing (fewer than two
requests or server runs on a side) is ``no CI``: its difference decides nothing.

The verdict is about time only. Whether the store served hits is said by the counters, beside it:
``persistence`` (a restart's verdict at that length, kvreuse.verdict; a remote store's, by its
hits after vLLM's restart), ``hit_fraction`` where the
source table has it; a restart row also carries its store's measured **break-even** prefix length
(break_even.csv: status, length and bootstrap interval).

**Row sources.** ``SOURCES`` is the registry: per workload, the tables it reads and one small
function that turns them into rows. A source whose table is absent from the results, or has no
measured row, gives no rows, and ``absent`` names it with the reason. A workload whose experiment
lands later has a source with no builder yet (``build=None``); its builder is the one function to
add (``make_row`` gives a row, ``row_key`` its evidence key).

**The source studies beside ours.** workflow/resources/decision.yaml links a claim of
workflow/resources/cited.yaml (by id: its value, unit, GPU, model and definition are cited.yaml's,
not repeated) to the decision rows it compares with (workload, arm, metric; platform, case and
prefix length where given), and states in fields what the study measured (``study_metric``:
``e2e``, ``ttft`` or ``throughput``; ``study_statistic``: mean, median, ...;
``study_output_tokens``, ``study_prefix_tokens``, ``study_in_flight``: the requests its load kept in
flight at once; ``study_hits_after_restart``: true, false or "not stated", whether its hits came
after the server's restart, against ours for a remote store's rows). Where the study gives its two sides and no
difference (with LMCache and without), the link names the claim with reuse and ``claim_without``
the claim without: both numbers stand beside ours, none is computed from them. ``what_differs``
lists, from those fields against the row's, the GPU (the claim's GPU against our platform), the
model (ours by runs.csv; the same where our model's name is within the study's), the output length
(ours by the config), the requests in flight (ours by the config: pressure's max_concurrency, the
conversations' n_clients, else one at a time), the prefix length, the metric and the statistic.

**Issue 13's workloads** (each compared where its own table compares, every CI the table's):
pressure: each store arm against APC alone per workload (``case``: prefix_repetition,
conversation), TTFT mean, median and P99 and the change of throughput (one run a side: no CI);
multiturn_long: each arm against its ``reference_arm`` (APC alone) per history length (in
``prefix_tokens``); chunk_sweep: each chunk size against chunk 256 (the reference arm, the source
study's best: ``compared`` names the pair); miss: each offloading arm against APC alone per prompt
length (in ``prefix_tokens``) and case (misses; every prompt already in GPU memory), the change of
mean TTFT and E2E in percent; remote: per remote arm, a hit after vLLM's restart against a miss,
with the hit fraction by the counters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from . import claims as kclaims

HELPS, HURTS, NO_DIFFERENCE, NO_CI = "helps", "hurts", "no difference", "no CI"
VERDICTS = (HELPS, HURTS, NO_DIFFERENCE, NO_CI)


@dataclass(frozen=True)
class Metric:
    label: str      # what the write-up calls it
    unit: str
    better: str     # "lower" or "higher"
    kind: str       # what is timed: "ttft" (first streamed token), "e2e" (whole request), "throughput"
    statistic: str  # over the requests: "median", "mean", "p99"; "rate" (a run's throughput)


METRICS = {
    "ttft_median": Metric("TTFT median", "ms", "lower", "ttft", "median"),
    "ttft_mean": Metric("TTFT mean", "ms", "lower", "ttft", "mean"),
    "ttft_p99": Metric("TTFT P99", "ms", "lower", "ttft", "p99"),
    "ttft_mean_change": Metric("TTFT mean, change", "%", "lower", "ttft", "mean"),
    "e2e_mean_change": Metric("E2E mean, change", "%", "lower", "e2e", "mean"),
    "request_throughput_change": Metric("Requests/s, change", "%", "higher", "throughput", "rate"),
    "output_throughput_change": Metric("Output tokens/s, change", "%", "higher", "throughput", "rate"),
}
#: what a metric kind means, for ``what_differs``
METRIC_KINDS = {"ttft": "TTFT at the first streamed token", "e2e": "end-to-end latency of the whole request",
                "throughput": "throughput"}
#: what a statistic means, for ``what_differs`` (a link's ``study_statistic``: one of these)
STATISTICS = {"median": "median", "mean": "mean", "p99": "99th percentile", "rate": "a run's rate"}

COLUMNS = ["workload", "case", "platform", "arm", "arm_label", "metric", "metric_label", "compared",
           "prefix_tokens", "unit", "better", "with_reuse", "without_reuse", "difference", "difference_ci95_lo",
           "difference_ci95_hi", "n_with_reuse", "n_without_reuse", "verdict", "persistence", "hit_fraction",
           "break_even_status", "break_even_tokens", "break_even_ci_low", "break_even_ci_high", "freshness",
           "source_table", "source_key", "study_claim", "study_source", "study_quantity", "study_value",
           "study_low", "study_high", "study_unit", "study_claim_without", "study_value_without", "study_gpu",
           "study_model", "study_metric", "study_output_tokens", "output_tokens", "study_in_flight", "in_flight",
           "model", "what_differs"]


def verdict(lo, hi, better: str = "lower") -> str:
    """helps / hurts / no difference from the CI of (with reuse - without), or no CI."""
    if not (kclaims.is_number(lo) and kclaims.is_number(hi)):
        return NO_CI
    below, above = hi < 0, lo > 0
    if better == "higher":
        below, above = above, below
    return HELPS if below else HURTS if above else NO_DIFFERENCE


# -- row builders: tables -> rows ------------------------------------------------------------
def _ok(t: pd.DataFrame | None) -> pd.DataFrame:
    if t is None or t.empty:
        return pd.DataFrame()
    return t[t["status"] == "ok"] if "status" in t.columns else t


def _num(x):
    return float(x) if kclaims.is_number(x) else math.nan


def row_key(**kw) -> str:
    return ", ".join(f"{k}={int(v) if isinstance(v, float) and v.is_integer() else v}"
                     for k, v in kw.items() if kclaims.is_number(v) or isinstance(v, str))


def make_row(workload: str, r, metric: str, compared: str, with_reuse, without_reuse, diff, lo, hi,
         n_with, n_without, source: str, key: str, **extra) -> dict:
    m = METRICS[metric]
    return {"workload": workload, "platform": r.get("platform"), "arm": r.get("arm"),
            "arm_label": r.get("arm_label") if isinstance(r.get("arm_label"), str) else r.get("arm"),
            "metric": metric, "metric_label": m.label, "compared": compared,
            "prefix_tokens": _num(r.get("prefix_tokens")), "unit": m.unit, "better": m.better,
            "with_reuse": _num(with_reuse), "without_reuse": _num(without_reuse), "difference": _num(diff),
            "difference_ci95_lo": _num(lo), "difference_ci95_hi": _num(hi),
            "n_with_reuse": _num(n_with), "n_without_reuse": _num(n_without),
            "verdict": verdict(lo, hi, m.better), "freshness": r.get("freshness"),
            "source_table": source, "source_key": key, **extra}


def _comparison_rows(workload: str, compared: dict[tuple[str, str], str]) -> Callable:
    """comparisons.csv's rows of ``workload`` (its experiment): baseline minus treatment, negated."""

    def build(tables: dict[str, pd.DataFrame]) -> list[dict]:
        t = tables.get("comparisons")
        if t is None or t.empty:
            return []
        out = []
        for r in t[t["experiment"] == workload].to_dict("records"):
            what = compared.get((r["baseline"], r["treatment"]))
            if what is None:
                continue
            out.append(make_row(workload, r, "ttft_median", what, r["treatment_median_ms"], r["baseline_median_ms"],
                            -_num(r["diff_median_ms"]), -_num(r["diff_ci95_hi_ms"]), -_num(r["diff_ci95_lo_ms"]),
                            r["n_treatment"], r["n_baseline"], "comparisons",
                            row_key(experiment=workload, platform=r["platform"], arm=r["arm"],
                                 prefix_tokens=r.get("prefix_tokens"), baseline=r["baseline"],
                                 treatment=r["treatment"])))
        return out

    return build


def restart_rows(tables: dict[str, pd.DataFrame]) -> list[dict]:
    """reload_vs_recompute.csv per store and length, with the persistence verdict at that length
    and the store's measured break-even (break_even.csv)."""
    be = tables.get("break_even")
    be = be[be["estimate"] == "measured"] if be is not None and len(be) else pd.DataFrame()
    out = []
    for r in _ok(tables.get("reload_vs_recompute")).to_dict("records"):
        b = be[(be["platform"] == r["platform"]) & (be["arm"] == r["arm"])] if not be.empty else be
        b = b.iloc[0].to_dict() if len(b) else {}
        out.append(make_row("restart", r, "ttft_median", "reload vs recompute after a restart", r["reload_ttft_ms"],
                        r["recompute_ttft_ms"], r["reload_minus_recompute_ms"],
                        r["reload_minus_recompute_ci95_lo_ms"], r["reload_minus_recompute_ci95_hi_ms"],
                        r["n_reload"], r["n_recompute"], "reload_vs_recompute",
                        row_key(platform=r["platform"], arm=r["arm"], prefix_tokens=r["prefix_tokens"]),
                        persistence=r.get("verdict"), hit_fraction=_num(r.get("hit_fraction")),
                        break_even_status=b.get("status"), break_even_tokens=_num(b.get("break_even_tokens")),
                        break_even_ci_low=_num(b.get("ci_low")), break_even_ci_high=_num(b.get("ci_high"))))
    return out


def cross_instance_rows(tables: dict[str, pd.DataFrame]) -> list[dict]:
    """cross_instance.csv per length: B's first request on A's prefix against a never-seen one."""
    return [make_row("cross_instance", r, "ttft_median", "first on another instance's prefix vs never-seen",
                 r["cross_first_ttft_median_ms"], r["cross_cold_ttft_median_ms"], -_num(r["diff_median_ms"]),
                 -_num(r["diff_ci95_hi_ms"]), -_num(r["diff_ci95_lo_ms"]), r["n_cross_first"], r["n_cross_cold"],
                 "cross_instance", row_key(platform=r["platform"], arm=r["arm"], prefix_tokens=r["prefix_tokens"]),
                 hit_fraction=_num(r.get("hit_fraction")))
            for r in _ok(tables.get("cross_instance")).to_dict("records")]


def random_overhead_rows(tables: dict[str, pd.DataFrame]) -> list[dict]:
    """random_overhead.csv: each store's change of mean TTFT and E2E against APC only."""
    out = []
    for r in _ok(tables.get("random_overhead")).to_dict("records"):
        if not kclaims.is_number(r.get("e2e_delta_pct")) and not kclaims.is_number(r.get("ttft_delta_pct")):
            continue  # APC only itself, the reference
        for metric, col, mean in (("ttft_mean_change", "ttft", "ttft_mean_ms"),
                                  ("e2e_mean_change", "e2e", "e2e_mean_ms")):
            out.append(make_row("random_overhead", r, metric, "with the store vs APC only, unique prompts",
                            r.get(mean), math.nan, r.get(f"{col}_delta_pct"), r.get(f"{col}_delta_ci95_lo_pct"),
                            r.get(f"{col}_delta_ci95_hi_pct"), r.get("n"), r.get("n"), "random_overhead",
                            row_key(platform=r["platform"], arm=r["arm"])))
    return out


# -- issue 13's workloads ---------------------------------------------------------------------
def _reference_row(t: pd.DataFrame, r: dict, ref: str, keys: tuple[str, ...]) -> dict:
    """The reference arm's row beside ``r`` (the same values of ``keys``), or {}."""
    sel = t[t["arm"] == ref]
    for k in keys:
        sel = sel[sel[k] == r[k]] if kclaims.is_number(r.get(k)) or isinstance(r.get(k), str) else sel.iloc[0:0]
    return sel.iloc[0].to_dict() if len(sel) else {}


def _compared(t: pd.DataFrame, keys: tuple[str, ...], reference: str | None = None):
    """Each measured row of ``t`` with its reference arm's row beside it (the same ``keys``): the
    arm ``reference``, else the row's own ``reference_arm``. The reference's own rows, and rows
    whose reference is not measured (nothing to compare with), give none."""
    for r in t.to_dict("records") if len(t) else []:
        ref_arm = reference or r["reference_arm"]
        if r["arm"] == ref_arm:
            continue
        ref = _reference_row(t, r, ref_arm, keys)
        if ref:
            yield r, ref


#: pressure.csv: metric -> the arm's column, and what it saves against APC (APC minus arm) with its CI
PRESSURE_TTFT = {
    "ttft_mean": ("ttft_mean_ms", "ttft_saved_mean_ms", "ttft_saved_mean_ci95_lo_ms", "ttft_saved_mean_ci95_hi_ms"),
    "ttft_median": ("ttft_median_ms", "ttft_saved_median_ms", "ttft_saved_ci95_lo_ms", "ttft_saved_ci95_hi_ms"),
    "ttft_p99": ("ttft_p99_ms", "ttft_saved_p99_ms", "ttft_saved_p99_ci95_lo_ms", "ttft_saved_p99_ci95_hi_ms")}
#: pressure.csv: metric -> (the arm's column, its change against APC in %; one run a side: no CI)
PRESSURE_THROUGHPUT = {"request_throughput_change": ("request_throughput_req_s", "request_throughput_change_pct"),
                       "output_throughput_change": ("output_throughput_tok_s", "output_throughput_change_pct")}


def pressure_rows(tables: dict[str, pd.DataFrame]) -> list[dict]:
    """pressure.csv per workload (case: prefix_repetition, conversation): each store arm against
    APC alone; TTFT by mean, median and P99 (APC minus arm in the table: negated, with its CI),
    throughput's change in percent (no CI: one run a side)."""
    from .tables_pressure import REFERENCE

    t = _ok(tables.get("pressure"))
    out = []
    for r, ref in _compared(t, ("platform", "workload"), REFERENCE):
        what = "with the store vs APC only, under KV pressure"
        key = row_key(platform=r["platform"], arm=r["arm"], workload=r["workload"])
        extra = {"case": r["workload"], "hit_fraction": _num(r.get("reuse_hit_fraction"))}
        for metric, (col, saved, lo, hi) in PRESSURE_TTFT.items():
            out.append(make_row("pressure", r, metric, what, r.get(col), ref.get(col), -_num(r.get(saved)),
                                -_num(r.get(hi)), -_num(r.get(lo)), r.get("n"), ref.get("n"), "pressure", key,
                                **extra))
        for metric, (col, change) in PRESSURE_THROUGHPUT.items():
            out.append(make_row("pressure", r, metric, what, r.get(col), ref.get(col), r.get(change), math.nan,
                                math.nan, r.get("n"), ref.get("n"), "pressure", key, **extra))
    return out


def _conversation_rows(workload: str, compared: Callable[[dict, dict], str]) -> Callable:
    """multiturn_long.csv / chunk_sweep.csv, per history length (scope overall): each arm against
    the table's reference_arm by TTFT median (reference minus arm in the table: negated)."""

    def build(tables: dict[str, pd.DataFrame]) -> list[dict]:
        t = _ok(tables.get(workload))
        if t.empty:
            return []
        t = t[t["scope"] == "overall"]
        out = []
        for r, ref in _compared(t, ("platform", "history_tokens")):
            out.append(make_row(workload, {**r, "prefix_tokens": r["history_tokens"]}, "ttft_median", compared(r, ref),
                                r["ttft_median_ms"], ref.get("ttft_median_ms"), -_num(r.get("ttft_saved_ms")),
                                -_num(r.get("ttft_saved_ci95_hi_ms")), -_num(r.get("ttft_saved_ci95_lo_ms")),
                                r["n"], r.get("n_reference"), workload,
                                row_key(platform=r["platform"], arm=r["arm"], history_tokens=r["history_tokens"],
                                        scope="overall"),
                                hit_fraction=_num(r.get("hit_rate"))))
        return out

    return build


def _chunk(x) -> str:
    return f"chunk {int(x)}" if kclaims.is_number(x) else "chunk not recorded"


multiturn_long_rows = _conversation_rows(
    "multiturn_long", lambda r, ref: f"{r['arm']} vs {r['reference_arm']} (APC only), long conversations")
chunk_sweep_rows = _conversation_rows(
    "chunk_sweep", lambda r, ref: f"{_chunk(r.get('chunk_size'))} vs {_chunk(ref.get('chunk_size'))} "
                                  f"({r['reference_arm']}, the study's best)")

#: miss.csv's cases, as the rows say them
MISS_CASES = {"miss": "misses (nothing reusable)", "vram_hit": "every prompt already in GPU memory"}


def miss_rows(tables: dict[str, pd.DataFrame]) -> list[dict]:
    """miss.csv per prompt length and case: each offloading arm's change of mean TTFT and E2E
    against APC alone on the same prompts, in percent, with the table's CI (runs, then prompts)."""
    from .tables_miss import REFERENCE

    t = _ok(tables.get("miss"))
    out = []
    for r, ref in _compared(t, ("platform", "prompt_tokens", "case"), REFERENCE):
        for metric, col in (("ttft_mean_change", "ttft"), ("e2e_mean_change", "e2e")):
            out.append(make_row("miss", {**r, "prefix_tokens": r["prompt_tokens"]}, metric,
                                f"with the store vs APC only, {MISS_CASES.get(r['case'], r['case'])}",
                                r.get(f"{col}_mean_ms"), ref.get(f"{col}_mean_ms"), r.get(f"{col}_delta_pct"),
                                r.get(f"{col}_delta_ci95_lo_pct"), r.get(f"{col}_delta_ci95_hi_pct"), r.get("n"),
                                ref.get("n"), "miss",
                                row_key(platform=r["platform"], arm=r["arm"], prompt_tokens=r["prompt_tokens"],
                                        case=r["case"]),
                                case=r["case"], hit_fraction=_num(r.get("hit_fraction"))))
    return out


def remote_rows(tables: dict[str, pd.DataFrame]) -> list[dict]:
    """remote.csv per remote arm: the first request on a populated prompt after vLLM's restart
    (its KV only in the remote store) against a never-seen one (miss minus hit in the table:
    negated), with the hit fraction and whether the store kept the KV, by the counters."""
    return [make_row("remote", r, "ttft_median", "a hit from the remote store after a restart vs a miss",
                     r["hit_ttft_median_ms"], r["miss_ttft_median_ms"], -_num(r["diff_median_ms"]),
                     -_num(r["diff_ci95_hi_ms"]), -_num(r["diff_ci95_lo_ms"]), r["n_hit"], r["n_miss"], "remote",
                     row_key(platform=r["platform"], arm=r["arm"], prefix_tokens=r["prefix_tokens"]),
                     hit_fraction=_num(r.get("hit_fraction")), persistence=r.get("persistence"),
                     hits_after_restart=True)  # kvreuse.experiments.remote: vLLM restarts before the hits
            for r in _ok(tables.get("remote")).to_dict("records")]


@dataclass(frozen=True)
class Source:
    workload: str
    tables: tuple[str, ...]                      # the tables its rows come from (the first: its own)
    build: Callable[[dict], list[dict]] | None   # None: the experiment's builder is still to come
    what: str                                    # the workload, for the write-up


SOURCES = (
    Source("cold_warm", ("comparisons",), _comparison_rows("cold_warm", {("cold", "warm"): "warm vs cold"}),
           "one prefix, cold then warm requests (APC)"),
    Source("prefix_sweep", ("comparisons",),
           _comparison_rows("prefix_sweep", {("cold", "warm"): "warm vs cold",
                                             ("recompute", "reload"): "reload vs recompute after a restart"}),
           "cold and warm requests per prefix length"),
    Source("restart", ("reload_vs_recompute", "break_even"), restart_rows,
           "a graceful restart: reload against recompute per prefix length"),
    Source("cross_instance", ("cross_instance",), cross_instance_rows,
           "two vLLMs sharing one LMCache server"),
    Source("random_overhead", ("random_overhead",), random_overhead_rows,
           "unique prompts, nothing reusable: the cost of a store"),
    # issue 13's experiments
    Source("pressure", ("pressure",), pressure_rows, "prefix repetition under KV pressure"),
    Source("multiturn_long", ("multiturn_long",), multiturn_long_rows, "long multi-turn conversations"),
    Source("chunk_sweep", ("chunk_sweep",), chunk_sweep_rows, "LMCache chunk sizes on long multi-turn"),
    Source("miss", ("miss",), miss_rows, "random inputs with nothing reusable, and all hits in GPU memory"),
    Source("remote", ("remote",), remote_rows, "LMCache's remote stores, hit against miss"),
)


def source_tables() -> list[str]:
    """Every table a source reads (the decision rule's inputs among the configured tables)."""
    return list(dict.fromkeys(t for s in SOURCES for t in s.tables))


# -- the source studies beside ours ----------------------------------------------------------
def _norm(s) -> str:
    return re.sub(r"[^a-z0-9]", "", str(s).lower())


def what_differs(row: dict, claim: dict, link: dict) -> str:
    """What differs between the study's setup and the row's, from their fields ("" for nothing)."""
    out = []
    gpu = claim.get("gpu")
    if not gpu or gpu == "not stated":
        out.append("GPU: not stated by the study")
    elif _norm(gpu) != _norm(row["platform"]):
        out.append(f"GPU: {gpu} (ours {row['platform']})")
    model = claim.get("model")
    if model and isinstance(row.get("model"), str) and _norm(row["model"]) not in _norm(model):
        out.append(f"model: {model} (ours {row['model']})")
    theirs, ours = link.get("study_output_tokens"), row.get("output_tokens")
    if kclaims.is_number(theirs) and kclaims.is_number(ours) and int(theirs) != int(ours):
        out.append(f"output length: {int(theirs)} tokens (ours {int(ours)})")
    theirs, ours = link.get("study_in_flight"), row.get("in_flight")
    if kclaims.is_number(theirs) and kclaims.is_number(ours) and int(theirs) != int(ours):
        out.append(f"requests in flight: {int(theirs)} (ours {int(ours)})")
    theirs, ours = link.get("study_prefix_tokens"), row.get("prefix_tokens")
    if kclaims.is_number(theirs) and kclaims.is_number(ours) and int(theirs) != int(ours):
        out.append(f"prefix: {int(theirs)} tokens (ours {int(ours)})")
    m = METRICS[row["metric"]]
    if link.get("study_metric") and link["study_metric"] != m.kind:
        out.append(f"metric: {METRIC_KINDS[link['study_metric']]} (ours {METRIC_KINDS[m.kind]})")
    if link.get("study_statistic") and link["study_statistic"] != m.statistic:
        out.append(f"statistic: {STATISTICS[link['study_statistic']]} (ours {STATISTICS[m.statistic]})")
    theirs, ours = link.get("study_hits_after_restart"), row.get("hits_after_restart")
    if theirs is not None and ours is not None and theirs != ours:
        said = {True: "after vLLM's restart", False: "without a restart"}
        out.append(f"hits: {said.get(theirs, 'whether after a restart not stated by the study')} "
                   f"(ours {said[bool(ours)]}{': only the remote store can serve them' if ours else ''})")
    return "; ".join(out)


def _matches(row: dict, link: dict) -> bool:
    for k in ("workload", "case", "arm", "metric", "platform"):
        if link.get(k) is not None and row.get(k) != link[k]:
            return False
    if link.get("prefix_tokens") is not None and row.get("prefix_tokens") != float(link["prefix_tokens"]):
        return False
    return True


def beside(rows: list[dict], cited: dict, links: list[dict]) -> list[dict]:
    """The rows with the study's claim that each link sets beside them (one claim per row: two
    links on one row are an error in decision.yaml)."""
    by_id = {c["id"]: c for c in kclaims.claims(cited)}
    for link in links:
        for claim in (link["claim"], link.get("claim_without")):
            if claim is not None and claim not in by_id:
                raise ValueError(f"decision.yaml links claim {claim!r}, which cited.yaml does not have: "
                                 f"use an id of workflow/resources/cited.yaml")
        if link.get("study_statistic") not in (None, *STATISTICS):
            raise ValueError(f"decision.yaml, claim {link['claim']}: study_statistic {link['study_statistic']!r} is "
                             f"not one of {sorted(STATISTICS)}")
        if link.get("study_metric") not in (None, *METRIC_KINDS):
            raise ValueError(f"decision.yaml, claim {link['claim']}: study_metric {link['study_metric']!r} is not "
                             f"one of {sorted(METRIC_KINDS)}")
        if link.get("metric") not in METRICS:
            raise ValueError(f"decision.yaml, claim {link['claim']}: metric {link.get('metric')!r} is not one of "
                             f"{sorted(METRICS)}")
    for row in rows:
        hits = [lk for lk in links if _matches(row, lk)]
        if len(hits) > 1:
            raise ValueError(f"decision.yaml links {[h['claim'] for h in hits]} to one row ({row['source_key']}): "
                             f"give each link a platform or prefix_tokens that keeps them apart")
        if not hits:
            continue
        link, c = hits[0], by_id[hits[0]["claim"]]
        rng = c.get("range") or [None, None]
        row.update(study_claim=c["id"], study_source=c["source"], study_quantity=c["quantity"],
                   study_value=c.get("value"), study_low=rng[0], study_high=rng[1], study_unit=c.get("unit"),
                   study_claim_without=link.get("claim_without"),
                   study_value_without=by_id[link["claim_without"]].get("value") if link.get("claim_without") else None,
                   study_gpu=c["setup"].get("gpu") or "not stated", study_model=c["setup"].get("model"),
                   study_metric=c.get("measures"), study_output_tokens=link.get("study_output_tokens"),
                   study_in_flight=link.get("study_in_flight"),
                   what_differs=what_differs(row, {"gpu": c["setup"].get("gpu"), "model": c["setup"].get("model")},
                                             link))
    return rows


# -- the table --------------------------------------------------------------------------------
def _models(runs: pd.DataFrame | None) -> dict[tuple, str]:
    """The model each measured run served (runs.csv), by (platform, experiment, arm); an
    experiment may serve another model than its platform's (cross_instance on h200x2: the 8B)."""
    if runs is None or runs.empty or "model" not in runs.columns:
        return {}
    ok = runs[runs["status"] == "ok"] if "status" in runs.columns else runs
    by_run = {(r["platform"], r.get("experiment"), r.get("arm")): str(r["model"]) for _, r in ok.iterrows()}
    # a row whose run is not in runs.csv: the model of its platform's first run
    return {**{(p, None, None): str(g["model"].iloc[0]) for p, g in ok.groupby("platform")}, **by_run}


def table(tables: dict[str, pd.DataFrame], cited: dict | None = None, links: list[dict] | None = None,
          output_tokens: dict | None = None, in_flight: dict | None = None) -> pd.DataFrame:
    """decision.csv from the tables (name -> frame; absent tables simply give no rows).
    ``output_tokens``: platform -> workload -> our output length (the config's); ``in_flight``:
    platform -> workload -> the requests it keeps in flight at once (kvreuse.dag.decision_in_flight)."""
    models = _models(tables.get("runs"))
    rows = []
    for s in SOURCES:
        if s.build is None:
            continue
        for r in s.build(tables):
            r["model"] = models.get((r["platform"], s.workload, r["arm"]), models.get((r["platform"], None, None)))
            r["output_tokens"] = ((output_tokens or {}).get(r["platform"]) or {}).get(s.workload)
            r["in_flight"] = ((in_flight or {}).get(r["platform"]) or {}).get(s.workload)
            rows.append(r)
    if cited is not None and links:
        rows = beside(rows, cited, links)
    return pd.DataFrame(rows, columns=COLUMNS)


def absent(tables: dict[str, pd.DataFrame], decision: pd.DataFrame) -> list[dict]:
    """The workloads without a row in ``decision``, each with why (no builder yet, its table
    not in the results, no measured row in it, or none of the arm its rows are compared with)."""
    have = set(decision["workload"]) if len(decision) else set()
    out = []
    for s in SOURCES:
        if s.workload in have:
            continue
        if s.build is None:
            why = "its experiment has no table yet"
        elif all(tables.get(t) is None for t in s.tables):
            why = f"{s.tables[0]}.csv is not in these results"
        elif any(len(_ok(tables.get(t))) for t in s.tables):
            why = (f"{', '.join(t + '.csv' for t in s.tables if tables.get(t) is not None)} has measured rows, "
                   f"but no measured pair to compare (a store arm and APC only, or a chunk size and the "
                   f"reference chunk size, on the same platform)")
        else:
            why = f"no measured row in {', '.join(t + '.csv' for t in s.tables if tables.get(t) is not None)}"
        out.append({"workload": s.workload, "what": s.what, "reason": why})
    return out


def summary(decision: pd.DataFrame) -> list[dict]:
    """Per workload and platform: how many rows got each verdict."""
    if decision.empty:
        return []
    counts = decision.groupby(["workload", "platform"], sort=False)["verdict"].value_counts().unstack(fill_value=0)
    return [{"workload": w, "platform": p, **{v: int(r.get(v, 0)) for v in VERDICTS}, "rows": int(r.sum())}
            for (w, p), r in counts.iterrows()]


def build(table_paths: dict[str, str], cited: dict, links_file: dict | None, output_tokens: dict,
          in_flight: dict | None = None) -> pd.DataFrame:
    """The rule's work: read the tables (rows of an older build that carried cited rows left
    out, as kvreuse.claims does) and make decision.csv."""
    tables = kclaims.measured_rows({name: pd.read_csv(p) for name, p in table_paths.items()})
    return table(tables, cited, (links_file or {}).get("links") or [], output_tokens, in_flight)
