"""The write-up's context for the KV-pressure and cache-miss sections (pressure.csv, miss.csv):
rows with what each sentence needs, each direction read from its CI, nothing typed."""

from __future__ import annotations

import pandas as pd

from . import claims


def _ok_rows(t: pd.DataFrame | None) -> list[dict]:
    if t is None or t.empty or "status" not in t.columns:
        return []
    return [r for r in t.to_dict("records") if r.get("status") == "ok"]


def _direction(lo, hi, faster_below: bool) -> str:
    """``faster``/``slower`` where the CI lies on one side of zero, ``unresolved`` where it
    spans it, ``no_ci`` without one. ``faster_below``: a negative value means faster."""
    if not (claims.is_number(lo) and claims.is_number(hi)):
        return "no_ci"
    if lo > 0:
        return "slower" if faster_below else "faster"
    if hi < 0:
        return "faster" if faster_below else "slower"
    return "unresolved"


def not_run(t: pd.DataFrame | None) -> list[dict]:
    """The arms that did not run, with why."""
    if t is None or t.empty or "status" not in t.columns:
        return []
    return [r for r in t.to_dict("records") if r.get("status") != "ok"]


def pressure_context(t: pd.DataFrame | None) -> dict:
    """``eviction``: the prefix_repetition rows with the APC hit fraction (is the cache evicting);
    ``arms``: each arm other than APC against APC per workload, with the direction of its TTFT
    (the CI of the median TTFT saved) and ITL (the CI of the median ITL added)."""
    rows = _ok_rows(t)
    eviction = [{**r, "evicting": bool(r["apc_hit_fraction"] < r["evicting_below"])} for r in rows
                if r.get("workload") == "prefix_repetition" and claims.is_number(r.get("apc_hit_fraction"))
                and claims.is_number(r.get("evicting_below"))]
    arms = []
    for r in rows:
        if not claims.is_number(r.get("ttft_saved_median_ms")):
            continue
        arms.append({**r, "ttft_direction": _direction(r.get("ttft_saved_ci95_lo_ms"), r.get("ttft_saved_ci95_hi_ms"),
                                                       faster_below=False),
                     "itl_direction": _direction(r.get("itl_added_ci95_lo_ms"), r.get("itl_added_ci95_hi_ms"),
                                                 faster_below=True)})
    return {"eviction": eviction, "arms": arms, "not_run": not_run(t), "without_reference": without_reference(rows)}


def without_reference(rows: list[dict], reference: str = "apc") -> list[dict]:
    """Measured arms with no measured ``reference`` (APC alone) beside them on their platform and
    workload: nothing to compare them with (their reference's run is in the accounting)."""
    have = {(r["platform"], r.get("workload")) for r in rows if r["arm"] == reference}
    return [r for r in rows if r["arm"] != reference and (r["platform"], r.get("workload")) not in have]


def miss_context(t: pd.DataFrame | None) -> dict:
    """``arms``: each arm other than APC per length and case with its change of mean E2E against
    APC and the direction its CI gives."""
    arms = [{**r, "direction": _direction(r.get("e2e_delta_ci95_lo_pct"), r.get("e2e_delta_ci95_hi_pct"),
                                          faster_below=True)}
            for r in _ok_rows(t) if claims.is_number(r.get("e2e_delta_pct"))]
    return {"arms": arms, "not_run": not_run(t)}
