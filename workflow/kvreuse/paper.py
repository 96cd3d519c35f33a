"""The write-up: one context, built from the generated tables, figures and metas, fills two
Jinja templates: Markdown (paper/kvreuse.md.j2, for the web) and LaTeX (paper/kvreuse.tex.j2,
with its BibTeX paper/kvreuse.bib.j2), which latexmk compiles to the PDF.

No number in the write-up is typed by hand: measurements come from results/tables/, the
studies' claims from workflow/resources/cited.yaml (set beside our measurements in
results/tables/claims.csv, kvreuse.claims), the KV model from the model's config. A sentence that
compares (faster, slower, survived, fell back) is chosen here from the numbers, which it shows
(tests/test_writeup_numbers.py).
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import yaml

from . import __version__, claims, kvmodel, labels, latex, latexmk, paper_pressure, provenance, stats
from . import kernels as kernels_mod
from . import paper_conversations, paper_tensor_parallel

TITLE = "kvreuse: KV-cache reuse in vLLM, measured with counters"

# what the references say of the software the runs used (their versions come from the runs table)
SOFTWARE = {
    "vllm": {"title": "vLLM", "url": "https://github.com/vllm-project/vllm"},
    "lmcache": {"title": "LMCache", "url": "https://github.com/LMCache/LMCache"},
    "snakemake": {"title": "Snakemake", "url": "https://snakemake.github.io"},
}


def fmt(x, digits: int = 1) -> str:
    """A number for the text: integers (numpy's too) with thousands separators, else ``digits``."""
    if not claims.is_number(x):
        return "n/a"
    if isinstance(x, numbers.Integral) or (isinstance(x, numbers.Real) and float(x).is_integer()):
        return f"{int(x):,}"
    if isinstance(x, numbers.Real):
        return f"{x:,.{digits}f}"
    return str(x)


def signed(x, digits: int = 1) -> str:
    """A change with its sign (+1.5), or n/a."""
    if not claims.is_number(x):
        return "n/a"
    return f"{x:+.{digits}f}"


def num(x) -> str:
    """A claim's number as the study wrote it: thousands separators, no trailing zeros."""
    if not claims.is_number(x):
        return "n/a"
    return f"{x:,.3f}".rstrip("0").rstrip(".")


def _claim_texts(r: dict) -> dict:
    unit = f" {r['unit']}" if r.get("unit") else ""
    claimed = (f"{num(r['claimed_low'])} to {num(r['claimed_high'])}" if claims.is_number(r.get("claimed_low"))
               else num(r.get("claimed")))
    ours = "" if not claims.is_number(r.get("ours")) else num(r["ours"]) + (
        f" ({num(r['ours_ci_low'])} to {num(r['ours_ci_high'])})" if claims.is_number(r.get("ours_ci_low")) else "")
    return {"claimed_text": claimed + unit, "ours_text": ours + (unit if ours else ""),
            "ratio_text": f"{r['ratio']:.2f}" if claims.is_number(r.get("ratio")) else ""}


def mdtable(df: pd.DataFrame, cols: list[str] | None = None, digits: int = 1, **kw) -> str:
    """A Markdown table of ``cols`` (those present), numbers rounded; '(no rows)' when empty."""
    if df is None or df.empty:
        return "(no rows)"
    if cols:
        df = df[[c for c in cols if c in df.columns]]
    return df.round(digits).rename(columns=labels.label).to_markdown(index=False, floatfmt=f".{digits}f", **kw)


def _rows(df: pd.DataFrame) -> list[dict]:
    return [] if df is None or df.empty else df.to_dict("records")


def load_attempts(paths) -> list[dict]:
    """Runs tried on another machine that left no raw file (results/raw/<platform>/attempts.yaml)."""
    rows = []
    for p in paths or []:
        for a in yaml.safe_load(Path(p).read_text()) or []:
            rows.append({"platform": Path(p).parent.name, **a})
    return rows


def _records(df: pd.DataFrame | None, cols: list[str]) -> list[dict]:
    if df is None or df.empty:
        return []
    return df.reindex(columns=cols).astype(object).fillna("").to_dict("records")


def accounting_context(runs: pd.DataFrame, accounting: pd.DataFrame | None) -> dict:
    """What the write-up says about every configured run (paper/accounting.md.j2), from
    accounting.csv and runs.csv: the runs without a measurement (missing, failed, not run), the
    stale runs kept out of the tables, the archived ones in them, and whether every configured
    run was measured with the current configuration (only then does it say so)."""
    acc = accounting if accounting is not None else pd.DataFrame(columns=["status"])
    fresh = runs["freshness"] if "freshness" in runs.columns else pd.Series("", index=runs.index)
    return {
        "accounting_total": len(acc),
        "accounting_counts": acc["status"].value_counts().to_dict(),
        "all_measured": len(acc) > 0 and bool((acc["status"] == "measured").all()),
        "unmeasured": _records(acc[~acc["status"].isin(["measured", "stale", "archived"])],
                               ["platform", "experiment", "arm", "status", "reason", "evidence", "context"]),
        "stale_runs": _records(runs[fresh == "stale"], ["platform", "experiment", "arm", "config_hash",
                                                        "expected_config_hash", "git_commit"]),
        "archived_runs": _records(runs[fresh == "archived"], ["platform", "experiment", "arm",
                                                              "git_commit", "archived_note"]),
    }


def _platform_rows(runs: pd.DataFrame) -> pd.DataFrame:
    ok = runs.status == "ok"
    if "freshness" in runs.columns:  # stale runs are kept out of the tables (accounting_context)
        ok &= runs.freshness != "stale"
    return runs[ok]


def lmcache_kernels(runs: pd.DataFrame) -> dict:
    """What the LMCache runs recorded of LMCache's compiled kernels (runs.csv lmcache_kernels,
    kvreuse.kernels): how many LMCache runs, how many in each kernel state (``not recorded``
    included); ``all_fallback`` only when every one recorded the torch fallback. Runs without
    LMCache (``no LMCache``) are not counted."""
    col = runs["lmcache_kernels"] if "lmcache_kernels" in runs.columns else pd.Series(dtype=object)
    known = col.dropna().astype(str)
    known = known[known != kernels_mod.NOT_APPLICABLE]
    counts = known.value_counts().to_dict()
    return {"runs": len(known), "counts": counts,
            "all_fallback": len(known) > 0 and set(counts) == {"fallback"},
            "fallback": {(r.platform, r.experiment, r.arm) for r in runs.itertuples()
                         if str(getattr(r, "lmcache_kernels", "")) == "fallback"}}


def lmcache_server_memory(runs: pd.DataFrame) -> list[dict]:
    """The runs whose LMCache server's GPU memory was read around a vLLM stop (runs.csv:
    ``lmcache_server_gpu_mib_before_stop``, ``..._after_stop``, kvreuse.servers)."""
    cols = ["lmcache_server_gpu_mib_before_stop", "lmcache_server_gpu_mib_after_stop"]
    if not set(cols) <= set(runs.columns):
        return []
    rows = runs[runs[cols].notna().all(axis=1)]
    return rows[["platform", "experiment", "arm", *cols]].to_dict("records")


def start_times(cost: pd.DataFrame | None, platforms: list[str]) -> dict:
    """The server start times of the runs (cost.csv): first start of a run and later starts
    (restarts), the shortest and the longest, over ``platforms``."""
    out = {}
    if cost is None or cost.empty:
        return out
    c = cost[cost.platform.isin(platforms) & (cost.experiment != "TOTAL")]
    for key in ("first_start_s", "later_start_s"):
        v = c[key].dropna() if key in c.columns else pd.Series(dtype=float)
        if len(v):
            out[key] = {"min": float(v.min()), "max": float(v.max()), "n": int(len(v))}
    return out


def _listed(cell) -> list[str]:
    """The items of a table cell that lists them comma-separated (``taken_commits``,
    ``target_experiments``); none where the cell is empty (read back as NaN)."""
    return [v for v in cell.split(", ") if v] if isinstance(cell, str) else []


def taken_runs(runs: pd.DataFrame) -> list[dict]:
    """The runs whose jobs took server runs kept from an earlier start made by another commit or
    on another GPU (runs.csv's ``taken_commits``, ``taken_gpus``): the write-up names them, since
    the run's own commit and GPU are not all that made it."""
    if "server_runs_taken" not in runs.columns:
        return []
    out = []
    for r in runs[runs.server_runs_taken.fillna(0) > 0].itertuples():
        commits, gpus = _listed(r.taken_commits), _listed(r.taken_gpus)
        if commits or gpus:
            out.append({"platform": r.platform, "experiment": r.experiment, "arm": r.arm,
                        "taken": int(r.server_runs_taken), "commits": commits, "gpus": gpus})
    return out


def cost_targets(cost: pd.DataFrame | None) -> list[dict]:
    """Per platform with a ``cost_target`` (cost.csv's TOTAL row): the target, what its
    experiments' runs held, whether that is within it, and how much of it their server starts
    took (the jobs' start seconds over the GPU-minutes held)."""
    if cost is None or cost.empty or "target_gpu_minutes" not in cost.columns:
        return []
    out = []
    for r in cost[(cost.experiment == "TOTAL") & cost.target_gpu_minutes.notna()].itertuples():
        held = float(r.target_gpu_minutes_held)
        out.append({"platform": r.platform, "target": float(r.target_gpu_minutes), "held": held,
                    "met": held <= float(r.target_gpu_minutes), "experiments": _listed(r.target_experiments),
                    "starts": int(r.target_server_starts), "start_minutes": float(r.target_startup_s_total) / 60})
    return out


def sharing(cost: pd.DataFrame | None, interference: pd.DataFrame | None) -> list[dict]:
    """Per platform whose jobs shared a GPU: the GPU-minutes held (each GPU counted once,
    ``gpu_minutes_held``) against the jobs' own times summed, and what the overlaps of one
    job's server start with another's measurement cost (interference.csv): requests that
    overlapped, conditions where the CI of the difference lies above zero, the largest median
    difference."""
    if cost is None or cost.empty or "gpu_minutes_held" not in cost.columns:
        return []
    out = []
    for r in cost[cost.experiment == "TOTAL"].itertuples():
        if not claims.is_number(r.gpu_minutes_held) or not r.gpu_minutes > r.gpu_minutes_held + 1e-9:
            continue  # no GPU shared on this platform
        row = {"platform": r.platform, "held": float(r.gpu_minutes_held), "summed": float(r.gpu_minutes),
               "overlap_n": 0, "conditions": 0, "slower": 0, "max_diff_ms": None}
        i = interference[interference.platform == r.platform] if interference is not None and len(interference) else None
        if i is not None and len(i):
            row.update(overlap_n=int(i.n_overlap.sum()), conditions=len(i),
                       slower=int((i.diff_ci95_lo_ms > 0).sum()), max_diff_ms=float(i.diff_median_ms.max()))
        out.append(row)
    return out


def platform_change(restart: pd.DataFrame | None, before: str = "h100", after: str = "h200") -> list[dict]:
    """Per arm measured on both platforms: the restart verdict and times on ``before`` (the
    H100, where LMCache 0.5.6 ran its torch fallback) beside ``after`` (the H200 campaign), with
    each run's kernel state, so the write-up says what changed (restart.csv's rows)."""
    if restart is None or restart.empty or "platform" not in restart.columns:
        return []
    ok = restart[restart.status == "ok"]
    out = []
    for arm in sorted(set(ok[ok.platform == before].arm) & set(ok[ok.platform == after].arm)):
        b = ok[(ok.platform == before) & (ok.arm == arm)].iloc[0].to_dict()
        a = ok[(ok.platform == after) & (ok.arm == arm)].iloc[0].to_dict()
        out.append({"arm": arm, "before": before, "after": after,
                    **{f"{k}_{side}": r.get(k) for side, r in (("before", b), ("after", a))
                       for k in ("verdict", "hit_fraction", "lmcache_kernels", "latency_prefix_tokens",
                                 "post_restart_first_ttft_median_ms", "post_restart_cold_ttft_median_ms")}})
    return out


def restart_rows(restart: pd.DataFrame, kernels: dict) -> list[dict]:
    """The restart table's rows, each with what the numbers say: whether reloading the cache
    beat recomputing a never-seen prompt on the restarted server (``reload_beat_recompute``,
    with both times), and whether LMCache ran on its torch fallback."""
    rows = []
    for r in _rows(restart):
        first, cold = r.get("post_restart_first_ttft_median_ms"), r.get("post_restart_cold_ttft_median_ms")
        both = claims.is_number(first) and claims.is_number(cold)
        rows.append({**_labelled(r), "reload_beat_recompute": (first < cold) if both else None,
                     "fallback": (r["platform"], "restart", r["arm"]) in kernels["fallback"]})
    return rows


def _labelled(r: dict) -> dict:
    """A table row with the columns the write-up's text reads, where a table made before them
    lacks them: ``arm_label`` (the arm), ``connector``, ``reload_lookup_wait_ms``, and
    random_overhead's store rate and shape (NaN)."""
    nan = float("nan")
    out = {"connector": "", "reload_lookup_wait_ms": nan, "store_gb_s": nan, "chunk_tokens": nan,
           "prompt_tokens_mean": nan, "kv_bytes_per_token": nan, **r}
    if not isinstance(out.get("arm_label"), str):
        out["arm_label"] = r["arm"]
    return out


def no_warmup_runs(runs: pd.DataFrame) -> list[dict]:
    """Runs that measured and had fewer warm-up phases than server starts: some measured
    request there followed a server start directly (made before one warm-up per start)."""
    if "warmup_phases" not in runs.columns:
        return []
    ok = runs[(runs.status == "ok") & (runs.warmup_phases < runs.server_starts)]
    if "freshness" in ok.columns:
        ok = ok[ok.freshness != "stale"]
    return ok[["platform", "experiment", "arm", "server_starts", "warmup_phases"]].to_dict("records")


def comparison(table: pd.DataFrame | None, platform: str, experiment: str) -> dict:
    """The speedup (baseline / treatment, e.g. cold / warm) of ``experiment`` on ``platform``
    with its CI and n per side, from comparisons.csv (kvreuse.comparisons); NaN where there is
    none (results bundled before that table existed)."""
    nan = float("nan")
    out = {"speedup": nan, "speedup_lo": nan, "speedup_hi": nan, "n_baseline": nan, "n_treatment": nan}
    if table is None or table.empty:
        return out
    rows = table[(table.platform == platform) & (table.experiment == experiment)]
    if rows.empty:
        return out
    r = rows.iloc[0]
    return {"speedup": r.speedup, "speedup_lo": r.speedup_ci95_lo, "speedup_hi": r.speedup_ci95_hi,
            "n_baseline": r.n_baseline, "n_treatment": r.n_treatment}


def random_rows(t: pd.DataFrame, kernels: dict) -> list[dict]:
    """The random_overhead rows with a paired change, each with its direction by the CI
    (``slower``: the CI above zero, ``faster``: below, ``unresolved``: around it)."""
    out = []
    for r in _rows(t):
        if r.get("status") != "ok" or not claims.is_number(r.get("e2e_delta_pct")):
            continue
        lo, hi = r.get("e2e_delta_ci95_lo_pct"), r.get("e2e_delta_ci95_hi_pct")
        if not (claims.is_number(lo) and claims.is_number(hi)):
            direction = "no_ci"  # one server run on a side: no CI between servers
        else:
            direction = "slower" if lo > 0 else "faster" if hi < 0 else "unresolved"
        out.append({**_labelled(r), "direction": direction,
                    "fallback": (r["platform"], "random_overhead", r["arm"]) in kernels["fallback"],
                    **store_on_cold_path(r)})
    return out


def store_on_cold_path(r: dict) -> dict:
    """What the arm's store did with the unique prompts (the source study's explanation of
    its L40S slowdown): ``stored`` (its store cost per request was measured and is above
    zero), ``stored_nothing`` (zero bytes), and ``below_chunk`` where that is because every
    prompt is shorter than LMCache's chunk (it stores whole chunks only)."""
    mb, ms = r.get("store_mb_per_request"), r.get("store_ms_per_request")
    known = claims.is_number(mb) and claims.is_number(ms)
    chunk, tokens = r.get("chunk_tokens"), r.get("prompt_tokens_mean")
    return {"stored": known and mb > 0, "stored_nothing": known and mb == 0,
            "below_chunk": known and mb == 0 and claims.is_number(chunk) and claims.is_number(tokens)
            and tokens < chunk}


def store_would_need(rows: list[dict], claim: dict | None) -> list[dict]:
    """For the study's extra latency per request on its L40S (``claim``), what a store would
    have to move per request to cost that much at the rate each of our stores achieved: GB and
    the prompt length (tokens) whose KV that is, beside what our prompts' KV takes at that
    rate. Rows without a measured store rate give none."""
    if not claim or not claims.is_number(claim.get("claimed")):
        return []
    extra_ms = float(claim["claimed"])
    out = []
    for r in rows:
        rate, bpt, tokens = r.get("store_gb_s"), r.get("kv_bytes_per_token"), r.get("prompt_tokens_mean")
        if not (r["stored"] and claims.is_number(rate) and claims.is_number(bpt) and bpt > 0):
            continue
        gb = extra_ms / 1000 * rate
        ours_ms = tokens * bpt / 1e9 / rate * 1000 if claims.is_number(tokens) else float("nan")
        out.append({"platform": r["platform"], "arm_label": r["arm_label"], "extra_ms": extra_ms,
                    "gpu": claim.get("gpu"), "store_gb_s": rate, "needed_gb": gb, "needed_tokens": round(gb * 1e9 / bpt),
                    "prompt_tokens": tokens, "prompt_store_ms": ours_ms,
                    "factor": extra_ms / ours_ms if claims.is_number(ours_ms) and ours_ms > 0 else float("nan")})
    return out


# -- reload vs recompute after a restart (break_even.csv, reload_vs_recompute.csv) ---------------
def _break_even_row(r: dict) -> dict:
    """A break_even.csv row with what the sentence needs: whether it has an interval and on
    which side a censored bound lies (kvreuse.breakeven)."""
    from . import breakeven

    return {**r, "crossing": r.get("status") == breakeven.CROSSING,
            "below": r.get("status") == breakeven.BELOW, "not_within": r.get("status") == breakeven.NOT_WITHIN,
            "not_persisted": r.get("status") == "not persisted", "not_run": r.get("status") == "not run",
            "has_ci": isinstance(r.get("ci_low_where"), str) and bool(r.get("ci_low_where")),
            "lo_below": r.get("ci_low_where") == breakeven.BELOW,
            "lo_beyond": r.get("ci_low_where") == breakeven.NOT_WITHIN,
            "hi_beyond": r.get("ci_high_where") == breakeven.NOT_WITHIN,
            "hi_below": r.get("ci_high_where") == breakeven.BELOW,
            "one_length": claims.is_number(r.get("shortest_tokens")) and r.get("shortest_tokens") == r.get("longest_tokens"),
            # a CSV cell of one length reads back as a number
            "lengths_text": _lengths_text(r.get("lengths")),
            "not_reloaded_text": _lengths_text(r.get("lengths_not_reloaded"))}


def _lengths_text(cell) -> str:
    """Prefix lengths written "1024 2048" in a CSV cell (one length reads back as a number, none
    as NaN) as text: "1,024, 2,048"; "" for none."""
    words = str(cell).split() if isinstance(cell, str) or claims.is_number(cell) else []
    return ", ".join(fmt(int(float(x))) for x in words if x.replace(".", "", 1).isdigit())


def reload_context(t: dict[str, pd.DataFrame]) -> dict:
    """What the section on reload against recompute says, from break_even.csv,
    reload_vs_recompute.csv and accounting.csv (tables of an older build may lack the first two:
    then nothing is measured): per platform and store the measured break-even with its interval
    and the model's per link, the runs not run with why, the platforms with more than one
    prefix length, and the configured restart runs that have no current result yet."""
    be = t.get("break_even")
    be = be if be is not None and not be.empty else pd.DataFrame(columns=["platform", "arm", "estimate", "status"])
    rv = t.get("reload_vs_recompute")
    rv = rv if rv is not None and "reload_minus_recompute_ms" in rv.columns else pd.DataFrame(
        columns=["platform", "arm", "status", "prefix_tokens"])
    rows = [_break_even_row(r) for r in _rows(be)]
    measured = [r for r in rows if r["estimate"] == "measured"]
    for r in measured:
        r["models"] = [m for m in rows if m["estimate"] == "model" and (m["platform"], m["arm"]) == (r["platform"], r["arm"])]
    ok = rv[(rv.status == "ok") & rv.prefix_tokens.notna()] if len(rv) else rv
    lengths = ok.groupby("platform")["prefix_tokens"].nunique().to_dict() if len(ok) else {}
    acc = t.get("accounting")
    pending = []
    if acc is not None and len(acc):
        pending = _records(acc[(acc.experiment == "restart") & (acc.platform != "cpu")
                               & ~acc.status.isin(["measured", "archived"])],
                           ["platform", "arm", "status", "reason"])
    return {"stores": [r for r in measured if not r["not_run"]],
            "not_run": [r for r in measured if r["not_run"]],
            "lengths": {p: int(n) for p, n in lengths.items()},
            "multi_length": sorted(p for p, n in lengths.items() if n > 1),
            "gpu_platforms": sorted({r["platform"] for r in measured if not r["not_run"] and r["platform"] != "cpu"}),
            "pending": pending,
            "table": ok.drop_duplicates(["platform", "arm", "prefix_tokens"]) if len(ok) else ok,
            "break_even": be,
            "models": [r for r in rows if r["estimate"] == "model"]}


def cross_instance_context(t: pd.DataFrame | None, kernels: dict) -> dict:
    """What the write-up says of cross_instance.csv: its measured rows (one per platform, arm
    and prefix length), each with its direction by the CI of the time saved (``faster``: the CI
    above zero, ``slower``: below, ``unresolved``: around it, ``no_ci``: fewer than two pairs)
    whether A was stopped before B started (``a_stopped``), whether B's outputs equal A's
    (``same_output``; None: not recorded) and whether that run's LMCache recorded its torch
    fallback; the same rows as a table (``table``, None without any); and the runs that did not
    run, with their reason. Neither: no run of the experiment in the results."""
    def fields(r: dict) -> dict:
        equal = r.get("output_equal")
        return {"a_stopped": claims.is_number(r.get("instance_a_stopped")) and bool(r["instance_a_stopped"]),
                "same_output": bool(equal) if claims.is_number(equal) else None}

    return _saved_rows(t, "cross_instance", kernels, ("prefix_tokens", "n_cross_first", "n_cross_cold"), fields)


def cross_gpu_context(cross_instance: dict) -> dict:
    """The write-up's block on reuse across GPUs (issue 14): the measured rows of
    :func:`cross_instance_context` whose instances ran on different GPUs (cross_instance.csv's
    ``cross_gpu``: A's and B's GPUs share none). No rows: the block says not run."""
    return {"rows": [{**r, "gpus_a": _gpu_list(r.get("gpus_a")), "gpus_b": _gpu_list(r.get("gpus_b"))}
                     for r in cross_instance["rows"]
                     if isinstance(r.get("cross_gpu"), (bool, np.bool_)) and bool(r["cross_gpu"])]}


def _gpu_list(x) -> str:
    """A table's GPU list ("0,1") as written; one GPU, which the CSV reads back as a number, as an integer."""
    return str(int(x)) if isinstance(x, numbers.Number) and float(x).is_integer() else str(x)


def _saved_rows(t: pd.DataFrame | None, experiment: str, kernels: dict, counts: tuple[str, ...],
                fields=lambda r: {}) -> dict:
    """The write-up context of a table of time saved (cross_instance.csv, remote.csv): its
    measured rows, each with its direction (:func:`_saved_direction`), the ``fields`` of the
    experiment and whether its LMCache recorded the torch fallback; those rows as a table with
    the ``counts`` columns as integers (None without any); and the runs not run."""
    rows, not_run = [], []
    for r in _rows(t):
        if r.get("status") != "ok":
            not_run.append(r)
            continue
        rows.append({**r, "direction": _saved_direction(r), **fields(r),
                     "fallback": (r["platform"], experiment, r["arm"]) in kernels["fallback"]})
    ok = t[t["status"] == "ok"] if t is not None and len(t) else pd.DataFrame()
    ints = [c for c in counts if c in ok.columns]
    return {"rows": rows, "not_run": not_run, "table": ok.astype({c: int for c in ints}) if len(ok) else None}


def _saved_direction(r: dict) -> str:
    """A row's direction by the CI of the time saved (``diff_ci95_{lo,hi}_ms``): ``faster``
    (above zero), ``slower`` (below), ``unresolved`` (around it), ``no_ci`` (no interval)."""
    lo, hi = r.get("diff_ci95_lo_ms"), r.get("diff_ci95_hi_ms")
    if not (claims.is_number(lo) and claims.is_number(hi)):
        return "no_ci"
    return "faster" if lo > 0 else "slower" if hi < 0 else "unresolved"


def remote_context(t: pd.DataFrame | None, kernels: dict) -> dict:
    """What the write-up says of remote.csv (LMCache's remote stores): its measured rows (one per
    platform and arm), each with its direction by the CI of the time a hit saved (``faster``:
    the CI above zero, ``slower``: below, ``unresolved``: around it, ``no_ci``: fewer than two
    pairs) and whether that run's LMCache recorded its torch fallback; the same rows as a table
    (``table``, None without any); and the runs that did not run, with their reason."""
    return _saved_rows(t, "remote", kernels, ("prefix_tokens", "n_hit", "n_miss"))


def claims_context(table: pd.DataFrame, cited: dict, measured: set[str]) -> dict:
    """The claims table as the write-up shows it: every row, the verdicts per study, each
    group's rows (the cited tables of the sections), and the GPUs the studies name that we did
    not measure."""
    rows = [{**r, **_claim_texts(r), "platform": r["platform"] or "", "reason": r["reason"] or ""}
            for r in table.astype(object).where(table.notna(), None).to_dict("records")]
    by_id: dict[str, dict] = {}
    for r in rows:
        by_id.setdefault(r["id"].split("@")[0], r)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    group_meta = {g["group"]: {k: v for k, v in g.items() if k != "claims"} for g in cited.get("claims", [])}
    unmeasured = sorted({str(r["gpu"]) for r in rows if r["gpu"] not in measured and r["gpu"] != "not stated"})
    not_measurable = []
    for name, meta in group_meta.items():
        g = [r for r in rows if r["group"] == name and r["verdict"] == "not measurable"]
        if g and meta.get("not_measurable"):
            not_measurable.append({"group": name, "source": meta["source"], "title": meta["title"],
                                   "n": len(g), "reason": meta["not_measurable"]})
    compared = [r for r in rows if not (r["verdict"] == "not measurable" and
                                        group_meta.get(r["group"], {}).get("not_measurable"))]
    return {"claims": rows, "claims_compared": compared, "claims_by_id": by_id, "claims_groups": groups,
            "claims_group_meta": group_meta, "claims_summary": claims.summary(table),
            "claims_not_measurable": not_measurable, "cited_only": unmeasured,
            "claims_tolerance_pct": claims.TOLERANCE * 100, "claims_n": len(rows),
            "studies_without_claims": [{"key": k, **v} for k, v in cited["studies"].items() if v.get("no_claims")]}


# -- when does reuse help? (decision.csv, kvreuse.decision) ------------------------------------
def _decision_texts(r: dict) -> dict:
    """A decision row's cells as the Markdown table shows them (empty where the table has none)."""
    from . import breakeven

    lo, hi = r.get("difference_ci95_lo"), r.get("difference_ci95_hi")
    be = r.get("break_even_status")
    if be == breakeven.CROSSING and claims.is_number(r.get("break_even_tokens")):
        be_text = f"{fmt(r['break_even_tokens'], 0)} tokens"
    else:
        be_text = be if isinstance(be, str) else ""
    case = r.get("case")
    return {"workload_text": f"{r['workload']} ({case})" if isinstance(case, str) and case else r["workload"],
            "metric_text": f"{r['metric_label']} ({r['unit']})",
            "prefix_text": fmt(r["prefix_tokens"]) if claims.is_number(r.get("prefix_tokens")) else "",
            "difference_text": signed(r.get("difference")),
            "ci_text": f"{signed(lo)} to {signed(hi)}" if claims.is_number(lo) and claims.is_number(hi) else "",
            "persistence_text": r["persistence"] if isinstance(r.get("persistence"), str) else "",
            "break_even_text": be_text}


#: the links of the source studies' claims to the decision rows (the decision rule's input)
DECISION_LINKS = Path(__file__).resolve().parents[1] / "resources" / "decision.yaml"


def decision_context(t: dict[str, pd.DataFrame], cited: dict, links_path: Path = DECISION_LINKS) -> dict:
    """What the write-up says of the decision table: decision.csv (or, in a build without the
    decision rule, the same table computed from these tables, without our output lengths), the
    verdicts per workload and platform, the rows with a source study's number beside them (each
    side as text, and what differs), and the workloads without a measured row, with why."""
    from . import decision

    table = t.get("decision")
    if table is None:
        links = (yaml.safe_load(links_path.read_text()) or {}).get("links") if links_path.exists() else []
        table = decision.table(t, cited, links or [])
    rows = [{**r, **_decision_texts(r)} for r in _rows(table)]
    beside = []
    for r in rows:
        if not isinstance(r.get("study_claim"), str):
            continue
        unit = f" {r['study_unit']}" if isinstance(r.get("study_unit"), str) else ""
        study = (f"{num(r['study_low'])} to {num(r['study_high'])}" if claims.is_number(r.get("study_low"))
                 else num(r.get("study_value"))) + unit
        if claims.is_number(r.get("study_value_without")):  # the study's two sides, no difference of its own
            study = f"without {num(r['study_value_without'])}, with {study}"
        ours = f"{signed(r['difference'])} {r['unit']}" + (
            f" ({signed(r['difference_ci95_lo'])} to {signed(r['difference_ci95_hi'])})"
            if claims.is_number(r.get("difference_ci95_lo")) else "")
        beside.append({**r, "study_text": f"{study} ({r['study_source']}, {r['study_gpu']})",
                       "ours_text_decision": ours,
                       "what_differs": r.get("what_differs")
                       or "none of GPU, model, output length, prefix, metric, statistic"})
    return {"table": pd.DataFrame(rows), "rows": rows, "n": len(rows), "summary": decision.summary(table),
            "verdicts": list(decision.VERDICTS), "beside": beside,
            "absent": decision.absent(t, table), "pending": [s.workload for s in decision.SOURCES if s.build is None],
            "counts": table["verdict"].value_counts().to_dict() if len(table) else {}}


def kv_context(llama: dict, claim: dict | None) -> dict:
    """The KV size per token from the model's config, its factors, and the study's claim beside it."""
    per_tok = kvmodel.kv_bytes_per_token(llama)
    heads = llama.get("num_key_value_heads", llama["num_attention_heads"])
    head_dim = llama.get("head_dim") or llama["hidden_size"] // llama["num_attention_heads"]
    kv = {"bytes_per_token": per_tok, "layers": llama["num_hidden_layers"], "kv_heads": heads,
          "head_dim": head_dim, "dtype_bytes": per_tok // (llama["num_hidden_layers"] * 2 * heads * head_dim),
          "dtype": llama.get("torch_dtype", "bfloat16")}
    if claim and claims.is_number(claim.get("ours")):
        kv.update(claimed=claim["claimed"], bytes=claim["ours"], ratio=claim["claimed"] / claim["ours"],
                  quote=claim["excerpt"], source=claim["source"])
    return kv


def context(tables: dict[str, Path], figures: dict[str, Path], cited_path: Path,
            llama_config: Path, repo: Path, cite: dict | None = None,
            attempts: list[dict] | None = None) -> dict:
    t = claims.measured_rows({name: pd.read_csv(p) for name, p in tables.items() if p.suffix == ".csv"})
    for df in t.values():  # tables made before the marked arm label: the arm itself
        if "arm" in df.columns and "arm_label" not in df.columns:
            df.insert(list(df.columns).index("arm") + 1, "arm_label", df["arm"])
    md = {name: p.with_suffix(".md").read_text() for name, p in tables.items() if p.with_suffix(".md").exists()}
    cited = yaml.safe_load(cited_path.read_text())
    llama = json.loads(llama_config.read_text())
    runs = t["runs"]
    platforms = []
    for p, g in _platform_rows(runs).groupby("platform", sort=False):
        r = g.iloc[0]
        platforms.append({"platform": p, "accelerator": r.accelerator, "driver": r.driver,
                          "vllm": r.vllm, "lmcache": r.lmcache, "torch": r.torch, "model": r.model,
                          "weights": r.weights, "n_runs": len(g),
                          "server_starts": int(g.server_starts.sum()),
                          "commits": sorted(set(g.git_commit.dropna()))})
    not_run = runs[runs.status != "ok"][["platform", "experiment", "arm", "reason"]]
    measured = {p["platform"] for p in platforms}
    claims_table = t.get("claims")
    if claims_table is None:  # a build without rule claims (tests): computed from the same tables
        claims_table = claims.table(cited, t, llama)
    ctx_claims = claims_context(claims_table, cited, measured)
    cw = t["cold_warm"]
    cold_warm = []
    for p, g in cw.groupby("platform", sort=False):
        g = g.set_index("phase")
        if {"cold", "warm"} <= set(g.index):
            cold, warm = g.loc["cold", "ttft_median_ms"], g.loc["warm", "ttft_median_ms"]
            cmp = comparison(t.get("comparisons"), p, "cold_warm")
            cold_warm.append({"platform": p, "cold": cold, "warm": warm, **cmp,
                              "warm_lo": g.loc["warm", "ttft_ci95_lo_ms"], "warm_hi": g.loc["warm", "ttft_ci95_hi_ms"],
                              "warm_faster": bool(warm < cold),
                              "warm_hits": g.loc["warm", "hit_tokens"], "cold_hits": g.loc["cold", "hit_tokens"],
                              "cold_e2e": g.loc["cold", "e2e_median_ms"], "warm_e2e": g.loc["warm", "e2e_median_ms"]})
    kernels = lmcache_kernels(_platform_rows(runs))
    commit = provenance.git_commit(repo)
    versions = provenance.versions()
    gpus = [p for p in platforms if p["platform"] != "cpu"]
    cff = repo / "CITATION.cff"
    kvreuse_title = (yaml.safe_load(cff.read_text()) or {}).get("title") if cff.exists() else None
    software = {key: {**meta, "versions": _versions(platforms, key)} for key, meta in SOFTWARE.items()
                if key != "snakemake"}
    software["snakemake"] = {**SOFTWARE["snakemake"], "versions": [
        {"version": versions["snakemake"], "where": "built this write-up"}] if versions.get("snakemake") else []}
    software["kvreuse"] = {"title": kvreuse_title or "kvreuse", "url": None, "versions": [
        {"version": __version__, "where": f"commit {commit[:12]}" if commit else None}]}
    weights: dict[str, list[str]] = {}
    for p in platforms:
        weights.setdefault(str(p["weights"]), []).append(p["platform"])
    models = sorted({str(p["model"]) for p in gpus})
    cross = cross_instance_context(t.get("cross_instance"), kernels)
    random = random_rows(t["random_overhead"], kernels)
    return {"title": TITLE, "t": t, "platforms": platforms, "not_run": _rows(not_run),
            "attempts": attempts or [], "md": md, "cold_warm": cold_warm,
            "restart": restart_rows(t["restart"], kernels), "baseline": _rows(t["baseline"]),
            "reload": reload_context(t),
            "prefix_sweep": _rows(t["prefix_sweep"]), "multiturn": _rows(t["multiturn"]),
            "random": random, "kernels": kernels,
            "random_would_need": store_would_need(random, ctx_claims["claims_by_id"].get("s000-random-l40s-extra")),
            # issue 13: KV pressure and cache-miss overhead (kvreuse.paper_pressure)
            "pressure": paper_pressure.pressure_context(t.get("pressure")),
            "miss": paper_pressure.miss_context(t.get("miss")),
            "lmcache_server_memory": lmcache_server_memory(_platform_rows(runs)),


            "cross_instance": cross,
            "cross_gpu": cross_gpu_context(cross),  # issue 14: A and B on different GPUs
            "tp": paper_tensor_parallel.tensor_parallel_context(t),  # issue 14: several GPUs per job
            "remote": remote_context(t.get("remote"), kernels),
            "decision": decision_context(t, cited),
            "conversations": paper_conversations.contexts(t),
            "starts": start_times(t.get("cost"), [p["platform"] for p in gpus]),
            "sharing": sharing(t.get("cost"), t.get("interference")),
            "cost_targets": cost_targets(t.get("cost")),
            "platform_change": platform_change(t.get("restart")),
            "ci_level": stats.CI_LEVEL, "p99_min_n": stats.P99_MIN_N,
            "no_warmup_runs": no_warmup_runs(runs), "gpu_models": models,
            "cited": cited, "kv": kv_context(llama, ctx_claims["claims_by_id"].get("s000-kv-size")),
            "fig": {k: str(v) for k, v in figures.items()},
            "commit": commit, "commit_short": commit[:12] if commit else "unknown",
            "run_commits": sorted(set(runs.git_commit.dropna())), "kvreuse_version": __version__,
            "taken_runs": taken_runs(runs),
            "artifact": {"id": "unpublished", "short": "unpublished", "kind": "none", "doi": None,
                         "url": None, "source": None, "sha256": None, "results_sha256": None,
                         "bundled_at": None, **(cite or {})},
            "versions": versions, "software": software,
            "gpu_stack": {key: ", ".join(v["version"] for v in _versions(gpus, key)) or "n/a"
                          for key in ("vllm", "lmcache", "torch")},
            "weights": [{"weights": w, "platforms": ps} for w, ps in weights.items()],
            **ctx_claims, **accounting_context(runs, t.get("accounting"))}


def _versions(platforms: list[dict], key: str) -> list[dict]:
    """The versions of ``key`` (a runs-table column) the platforms' runs recorded, each with where."""
    where: dict[str, list[str]] = {}
    for p in platforms:
        v = p.get(key)
        if claims.is_number(v):
            where.setdefault(str(v), []).append(p["platform"])
    return [{"version": v, "where": ", ".join(ps)} for v, ps in where.items()]


def _known(x) -> bool:
    return not isinstance(x, jinja2.Undefined) and claims.is_number(x)


def render(template: Path, ctx: dict) -> str:
    """The Markdown write-up."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template.parent)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["mdtable"] = mdtable
    env.filters["num"] = num
    env.filters["signed"] = signed
    env.filters["mdrows"] = lambda rows, cols, digits=1: mdtable(pd.DataFrame(list(rows)), cols, digits, disable_numparse=True)
    env.tests["known"] = _known
    return env.get_template(template.name).render(**ctx)


def render_tex(template: Path, ctx: dict) -> str:
    """The LaTeX write-up or its BibTeX (kvreuse.latex: every value escaped)."""
    env = latex.environment(template.parent, fmt=fmt, num=num, signed=signed)
    env.tests["known"] = _known
    return env.get_template(template.name).render(**ctx)


def build(templates: dict[str, Path], tables: dict[str, Path], figures: dict[str, Path], cited: Path,
          llama_config: Path, out: dict[str, Path], repo: Path = Path("."),
          cite: dict | None = None, attempts: list[str] | None = None) -> None:
    """``templates``: md, tex, bib; ``out``: md, tex, bib, pdf (the .tex and .bib beside each other).
    ``figures``: name -> results/figures/<name>.png; the LaTeX includes the .pdf beside it.
    ``cite``: the artifact to cite (kvreuse.artifact.citation), shown in the references
    and in every figure's caption."""
    folder = out["md"].parent
    rel = Path(*[".."] * len(folder.relative_to(repo.resolve()).parts)) if folder.is_absolute() else \
        Path(*[".."] * len(folder.parts))
    ctx = context(tables, figures, cited, llama_config, repo, cite, load_attempts(attempts))
    folder.mkdir(parents=True, exist_ok=True)
    # the write-up sits in out's folder: its figure paths go up to the repository root
    up = {k: f"{rel.as_posix()}/{v}" for k, v in ctx["fig"].items()}
    out["md"].write_text(render(templates["md"], {**ctx, "fig": up}))
    tex_ctx = {**ctx, "fig": {k: Path(v).with_suffix(".pdf").as_posix() for k, v in up.items()},
               "bib": out["bib"].stem}
    out["bib"].write_text(render_tex(templates["bib"], tex_ctx))
    out["tex"].write_text(render_tex(templates["tex"], tex_ctx))
    latexmk.compile_pdf(out["tex"], out["pdf"])
