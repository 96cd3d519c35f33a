"""What the write-up says of the concurrent long conversations (multiturn_long.csv,
chunk_sweep.csv; kvreuse.tables_conversations): per experiment, its measured overall rows that
have a reference to compare with, each beside the reference's numbers and with the direction
its CIs give; the runs that did not run; the tables it shows."""

from __future__ import annotations

import pandas as pd

from . import claims

#: the experiments, in the write-up's order, and what each compares
EXPERIMENTS = {"multiturn_long": "each store against APC alone",
               "chunk_sweep": "each LMCache chunk size against the reference chunk size"}


def direction(lo, hi, *, above: str, below: str) -> str:
    """``above`` where the CI lies above zero, ``below`` where below it, ``unresolved`` where it
    spans zero, ``no_ci`` where there is none (fewer than two values on a side)."""
    if not (claims.is_number(lo) and claims.is_number(hi)):
        return "no_ci"
    return above if lo > 0 else below if hi < 0 else "unresolved"


def _records(df: pd.DataFrame) -> list[dict]:
    return df.astype(object).where(df.notna(), None).to_dict("records")


#: counts the write-up's tables show as integers
COUNTS = ("n", "n_clients", "history_tokens", "turn")


def _counts(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype({c: int for c in COUNTS if c in df.columns and df[c].notna().all()})


def context(name: str, t: pd.DataFrame | None) -> dict:
    """One experiment's block: ``rows`` (an arm against its reference at one history length:
    the reference's medians as ``ref_*``, ``ttft``/``tpot``/``tps`` directions), ``references``
    (the reference arm's rows with nothing to compare), ``not_run``, ``table`` (overall rows)
    and ``turns`` (per-turn rows of the arms with a reference, multiturn_long only)."""
    out = {"name": name, "compares": EXPERIMENTS[name], "rows": [], "references": [], "not_run": [],
           "table": None, "turns": None}
    if t is None or t.empty:
        return out
    ok = t[t["status"] == "ok"]
    out["not_run"] = _records(t[t["status"] != "ok"])
    if ok.empty:
        return out
    overall = ok[ok["scope"] == "overall"]
    out["table"] = _counts(overall)
    for r in _records(overall):
        ref = overall[(overall.platform == r["platform"]) & (overall.arm == r["reference_arm"])
                      & (overall.history_tokens == r["history_tokens"])]
        if r["arm"] == r["reference_arm"] or ref.empty:
            out["references"].append(r)
            continue
        rr = ref.iloc[0]
        out["rows"].append({
            **r, "ref_ttft_median_ms": rr["ttft_median_ms"], "ref_tpot_median_ms": rr["tpot_median_ms"],
            "ref_input_tps": rr["input_tps"], "ref_chunk_size": rr["chunk_size"],
            "ttft": direction(r.get("ttft_saved_ci95_lo_ms"), r.get("ttft_saved_ci95_hi_ms"),
                              above="faster", below="slower"),
            "tpot": direction(r.get("tpot_saved_ci95_lo_ms"), r.get("tpot_saved_ci95_hi_ms"),
                              above="faster", below="slower"),
            "tps": direction(r.get("input_tps_gain_ci95_lo"), r.get("input_tps_gain_ci95_hi"),
                             above="higher", below="lower")})
    turns = ok[(ok["scope"] == "turn") & (ok["arm"] != ok["reference_arm"])]
    out["turns"] = _counts(turns) if len(turns) else None
    return out


def contexts(tables: dict[str, pd.DataFrame]) -> list[dict]:
    """The blocks of the experiments whose tables the write-up has (none: no block)."""
    return [context(name, tables[name]) for name in EXPERIMENTS if name in tables]
