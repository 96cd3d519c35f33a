"""The write-up's context for models served over several GPUs (issue 14): per platform with
tensor parallelism, what of its configured runs were measured (accounting.csv), its baseline and
APC numbers (baseline.csv, cold_warm.csv), and per store the restart's reload against recompute
(tensor_parallel.csv) beside the same store at other parallelism. Read from the tables only."""

from __future__ import annotations

import pandas as pd

from . import claims, platforms
from .paper_conversations import direction


def _records(t: pd.DataFrame | None) -> list[dict]:
    return [] if t is None or t.empty else t.to_dict("records")


def _first(rows: list[dict], **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _at(rows: list[dict], length) -> dict:
    """A run's row at one prefix length, with the ratio's CI read as a direction."""
    r = next(x for x in rows if x["prefix_tokens"] == length)
    lo, hi = r.get("reload_speedup_ci95_lo"), r.get("reload_speedup_ci95_hi")
    known = claims.is_number(lo) and claims.is_number(hi)  # the ratio's CI against 1
    return {"prefix_tokens": length, "speedup": r.get("reload_speedup"), "lo": lo, "hi": hi,
            "direction": direction(lo - 1, hi - 1, above="reload_faster", below="recompute_faster")
            if known else "no_ci"}


def _run(rows: list[dict]) -> dict:
    """One restart run's rows (one per prefix length) as the sentence needs them."""
    rows = sorted(rows, key=lambda r: r["prefix_tokens"])
    r = rows[0]
    return {"platform": r["platform"], "arm": r["arm"], "store": r["store"], "model": r["model"],
            "tensor_parallel": int(r["tensor_parallel"]), "kv_bytes_per_token": r["kv_bytes_per_token"],
            "kv_bytes_per_token_per_gpu": r["kv_bytes_per_token_per_gpu"],
            "verdicts": sorted({str(x["verdict"]) for x in rows}),
            "break_even_status": r["break_even_status"], "break_even_tokens": r["break_even_tokens"],
            "break_even_ci_low": r["break_even_ci_low"], "break_even_ci_high": r["break_even_ci_high"],
            "shortest": _at(rows, rows[0]["prefix_tokens"]), "longest": _at(rows, rows[-1]["prefix_tokens"])}


def tensor_parallel_context(t: dict) -> dict:
    """``platforms``: each reported platform with several GPUs per job, its measured and
    configured runs and those not measured (with their status), its baseline and APC
    numbers where measured; ``stores``: per store measured with tensor parallelism, its runs at
    every parallelism (``runs``, fewest GPUs first)."""
    accounting = _records(t.get("accounting"))
    baseline, cold_warm = _records(t.get("baseline")), _records(t.get("cold_warm"))
    runs = _records(t.get("runs"))
    out = []
    for p in dict.fromkeys(r["platform"] for r in accounting):
        if p not in platforms.NAMES or platforms.gpus(p) < 2:
            continue
        mine = [r for r in accounting if r["platform"] == p]
        measured = [r for r in mine if r["status"] == "measured"]
        run = _first(runs, platform=p, status="ok") or {}
        base = _first(baseline, platform=p)
        cold, warm = _first(cold_warm, platform=p, phase="cold"), _first(cold_warm, platform=p, phase="warm")
        out.append({"platform": p, "gpus": platforms.gpus(p), "gpu": platforms.BY_NAME[p].gpu,
                    "model": run.get("model"), "n_configured": len(mine), "n_measured": len(measured),
                    "measured": [f"{r['experiment']}/{r['arm']}" for r in measured],
                    "unmeasured": [{"run": f"{r['experiment']}/{r['arm']}", "status": r["status"]}
                                   for r in mine if r["status"] != "measured"],
                    "baseline_ttft_ms": base["ttft_median_ms"] if base else None,
                    "baseline_prompt_tokens": base["prompt_tokens"] if base else None,
                    "cold_ttft_ms": cold["ttft_median_ms"] if cold else None,
                    "warm_ttft_ms": warm["ttft_median_ms"] if warm else None})
    rows = _records(t.get("tensor_parallel"))
    stores = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        by_platform = {}
        for r in rows:
            if r["arm"] == arm:
                by_platform.setdefault(r["platform"], []).append(r)
        arm_runs = sorted((_run(v) for v in by_platform.values()), key=lambda x: (x["tensor_parallel"], x["platform"]))
        stores.append({"arm": arm, "store": arm_runs[0]["store"], "runs": arm_runs})
    return {"platforms": out, "stores": stores}
