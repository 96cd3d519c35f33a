"""Reproduce or refute: every numeric claim of the source studies (workflow/resources/cited.yaml)
beside our measurement of it, taken from our tables by the claim's declared rule, and a verdict
computed from the two numbers (results/tables/claims.csv).

A rule (a claim's ``ours``, merged over its group's) picks one value:
``{table, platform, select: {column: value}, column}`` one row's cell (``platform`` defaults to
the claim's GPU, or each of the group's ``platforms``); ``nearest: {column: value}`` the row
closest to that value; ``spread: true`` max minus min of ``column`` over the selected rows;
``ratio`` / ``difference`` / ``change_pct`` of two such rules (a/b, a-b, 100*(a/b-1));
``kvmodel: {tokens, copies}`` bytes from the model's config (kvreuse.kvmodel).

Verdicts (TOLERANCE is relative):
- ``reproduced`` / ``differs``: kind ``value``, ours within TOLERANCE of the claim or not
  (the ratio ours/claimed is given);
- ``reproduced`` / ``refuted``: kind ``range`` (ours within [low, high], widened by TOLERANCE),
  kind ``at_most`` (ours <= value x (1 + TOLERANCE)), kind ``effect`` (a change judged by our
  95% CI: ``increase`` needs the CI above zero, ``decrease`` below, ``none`` around it; a CI on
  the other side refutes; one that does not decide is ``not resolved``);
- ``not measurable``: the claim says why (``not_measurable``: another GPU, model or workload);
- ``not measured``: no row or no value in our tables for the rule (the reason names what is missing).
"""

from __future__ import annotations

import math
import numbers

import pandas as pd

from . import kvmodel

TOLERANCE = 0.10
#: claims.csv's columns
COLUMNS = ["id", "group", "source", "quantity", "gpu", "model", "platform", "claimed", "claimed_low",
           "claimed_high", "unit", "kind", "expect", "measures", "ours", "ours_ci_low", "ours_ci_high",
           "ratio", "verdict", "reason", "rule", "excerpt"]


class Missing(Exception):
    """The rule finds no row or no value in our tables."""


def claims(cited: dict) -> list[dict]:
    """The claims of cited.yaml, each with its group's fields (its own win)."""
    out = []
    for g in cited.get("claims", []):
        for c in g["claims"]:
            rule = {**(g.get("ours") or {}), **(c.get("ours") or {})} if (g.get("ours") or c.get("ours")) else None
            setup = {**(g.get("setup") or {}), **({"gpu": c["gpu"]} if "gpu" in c else {})}
            out.append({**{k: v for k, v in g.items() if k not in ("claims", "ours", "setup")}, **c,
                        "group": g["group"], "setup": setup, "rule": rule,
                        "not_measurable": c.get("not_measurable", g.get("not_measurable"))})
    return out


def _rows(rule: dict, tables: dict[str, pd.DataFrame], platform: str | None) -> pd.DataFrame:
    name = rule["table"]
    t = tables.get(name)
    if t is None or t.empty:
        raise Missing(f"{name}.csv has no rows")
    if platform is not None:
        t = t[t["platform"] == platform]
    for col, want in (rule.get("select") or {}).items():
        if col not in t.columns:
            raise Missing(f"{name}.csv has no column {col}")
        t = t[t[col] == want]
    if t.empty:
        sel = ", ".join(f"{k}={v}" for k, v in (rule.get("select") or {}).items())
        raise Missing(f"no row of {name}.csv for {platform or 'any platform'}" + (f" with {sel}" if sel else ""))
    return t


def _cell(t: pd.DataFrame, column: str, name: str):
    if column not in t.columns:
        raise Missing(f"{name}.csv has no column {column}")
    v = t[column].iloc[0]
    if pd.isna(v):
        raise Missing(f"{column} is empty in {name}.csv for {t['platform'].iloc[0]}")
    return float(v)


def value(rule: dict, tables: dict[str, pd.DataFrame], platform: str | None, llama: dict | None = None):
    """(value, (ci_low, ci_high) or None) of ``rule`` in our tables; Missing where there is none."""
    for op in ("ratio", "difference", "change_pct"):
        if op in rule:
            base = {k: v for k, v in rule.items() if k not in ("ratio", "difference", "change_pct")}
            a, b = (value({**base, **part}, tables, platform, llama)[0] for part in rule[op])
            if op == "difference":
                return a - b, None
            if b == 0:
                raise Missing("division by zero")
            return (a / b, None) if op == "ratio" else (100 * (a / b - 1), None)
    if rule.get("compat") == "words":  # the study's prompt as `compat: true` sends it
        from .workloads import COMPAT_SYSTEM
        return float(len(COMPAT_SYSTEM.split())), None
    if "kvmodel" in rule:
        k = rule["kvmodel"]
        return float(kvmodel.kv_bytes_per_token(llama) * k["tokens"] * k.get("copies", 1)), None
    t = _rows(rule, tables, platform)
    name, column = rule["table"], rule["column"]
    if rule.get("spread"):
        vals = t[column].dropna()
        if len(vals) < 2:
            raise Missing(f"fewer than two values of {column} in {name}.csv for {platform}")
        return float(vals.max() - vals.min()), None
    if "nearest" in rule:
        (col, target), = rule["nearest"].items()
        t = t.iloc[[int((t[col] - target).abs().argmin())]]
    elif len(t) > 1:
        raise Missing(f"{len(t)} rows of {name}.csv match, not one")
    ci = None
    if rule.get("ci"):
        lo, hi = rule["ci"]
        if lo in t.columns and not pd.isna(t[lo].iloc[0]) and not pd.isna(t[hi].iloc[0]):
            ci = (float(t[lo].iloc[0]), float(t[hi].iloc[0]))
    return _cell(t, column, name), ci


def verdict(claim: dict, ours: float, ci: tuple | None) -> tuple[str, float | None]:
    """(verdict, ours / claimed where that ratio means something) by the rules in the docstring."""
    kind = claim.get("kind", "value")
    claimed = claim.get("value")
    ratio = ours / claimed if claimed not in (None, 0) else None
    if kind == "value":
        return ("reproduced" if abs(ours / claimed - 1) <= TOLERANCE else "differs") if claimed else \
            ("reproduced" if abs(ours) <= TOLERANCE else "differs"), ratio
    if kind == "range":
        lo, hi = claim["range"]
        return ("reproduced" if lo * (1 - TOLERANCE) <= ours <= hi * (1 + TOLERANCE) else "refuted"), None
    if kind == "at_most":
        return ("reproduced" if ours <= claimed * (1 + TOLERANCE) else "refuted"), ratio
    if kind == "effect":
        lo, hi = ci if ci else (ours, ours)
        expect = claim["expect"]
        if expect == "none":
            return ("reproduced" if lo <= 0 <= hi else "refuted"), None
        above, below = lo > 0, hi < 0
        if (expect == "increase" and above) or (expect == "decrease" and below):
            return "reproduced", None
        if (expect == "increase" and below) or (expect == "decrease" and above) or \
                (expect == "increase" and hi <= 0) or (expect == "decrease" and lo >= 0):
            return "refuted", None
        return "not resolved", None
    raise ValueError(f"claim {claim['id']}: unknown kind {kind!r}")


def _offline(rule: dict) -> bool:
    """A rule computed from the model's config or our code, not from a table."""
    return "kvmodel" in rule or "compat" in rule


def _rule_text(rule: dict | None) -> str:
    if not rule:
        return ""
    return "; ".join(f"{k}={v}" for k, v in rule.items())


def table(cited: dict, tables: dict[str, pd.DataFrame], llama: dict | None = None,
          platforms: list[str] | None = None) -> pd.DataFrame:
    """claims.csv: one row per claim (per platform where the group names several)."""
    rows = []
    for c in claims(cited):
        setup = c["setup"]
        targets = c.get("platforms") or [setup.get("gpu")]
        for platform in targets:
            row = {"id": c["id"] if len(targets) == 1 else f"{c['id']}@{platform}", "group": c["group"],
                   "source": c["source"], "quantity": c["quantity"], "gpu": setup.get("gpu") or "not stated",
                   "model": setup.get("model"), "platform": platform, "claimed": c.get("value"),
                   "claimed_low": (c.get("range") or [None, None])[0],
                   "claimed_high": (c.get("range") or [None, None])[1], "unit": c.get("unit"),
                   "kind": c.get("kind", "value"), "expect": c.get("expect"), "measures": c.get("measures"),
                   "ours": None, "ours_ci_low": None, "ours_ci_high": None, "ratio": None,
                   "rule": _rule_text(c["rule"]), "excerpt": c["excerpt"]}
            if c.get("not_measurable"):
                row.update(verdict="not measurable", reason=c["not_measurable"], platform=None)
            elif not c["rule"]:
                row.update(verdict="not measurable", reason="no rule names a table of ours", platform=None)
            else:
                rule = c["rule"]
                try:
                    ours, ci = value(rule, tables, None if _offline(rule) else platform, llama)
                except Missing as e:
                    row.update(verdict="not measured", reason=str(e))
                else:
                    v, ratio = verdict(c, ours, ci)
                    row.update(ours=ours, ours_ci_low=ci[0] if ci else None, ours_ci_high=ci[1] if ci else None,
                               ratio=ratio, verdict=v, reason=c.get("note"))
                    if _offline(rule):
                        row["platform"] = "model config" if "kvmodel" in rule else "workloads.py"
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(claims_table: pd.DataFrame) -> list[dict]:
    """How many claims got each verdict, per source study."""
    if claims_table.empty:
        return []
    counts = claims_table.groupby(["source", "verdict"]).size().unstack(fill_value=0)
    return [{"source": s, **{k: int(v) for k, v in r.items()}, "total": int(r.sum())} for s, r in counts.iterrows()]


def measured_rows(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Our tables without rows of an older build that carried cited rows (``provenance``: cited)."""
    out = {}
    for name, t in tables.items():
        if "provenance" in t.columns:
            t = t[~t["provenance"].fillna("").astype(str).str.startswith("cited")]
            t = t.drop(columns=["provenance"]).reset_index(drop=True)
        out[name] = t
    return out


def build(cited: dict, table_paths: dict[str, str], llama: dict) -> pd.DataFrame:
    tables = measured_rows({name: pd.read_csv(p) for name, p in table_paths.items()})
    return table(cited, tables, llama)


def is_number(x) -> bool:
    """Neither missing (None) nor NaN: a value a table really holds."""
    return x is not None and not (isinstance(x, numbers.Real) and math.isnan(x))
