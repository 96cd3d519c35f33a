"""The write-up: one Jinja template filled from the generated tables, figures and metas.

No number in the write-up is typed by hand: measurements come from results/tables/, the
studies' claims from workflow/resources/cited.yaml, the KV model from the model's config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jinja2
import pandas as pd
import yaml

from . import __version__, kvmodel, provenance


def fmt(x, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, (int,)) or (isinstance(x, float) and x.is_integer()):
        return f"{int(x):,}"
    return f"{x:,.{digits}f}"


def mdtable(df: pd.DataFrame, cols: list[str] | None = None, digits: int = 1) -> str:
    """A Markdown table of ``cols`` (those present), numbers rounded; '(no rows)' when empty."""
    if df is None or df.empty:
        return "(no rows)"
    if cols:
        df = df[[c for c in cols if c in df.columns]]
    return df.round(digits).to_markdown(index=False, floatfmt=f".{digits}f")


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


def context(tables: dict[str, Path], figures: dict[str, Path], cited_path: Path,
            llama_config: Path, repo: Path, cite: dict | None = None,
            attempts: list[dict] | None = None) -> dict:
    t = {name: pd.read_csv(p) for name, p in tables.items() if p.suffix == ".csv"}
    md = {name: p.with_suffix(".md").read_text() for name, p in tables.items()}
    cited = yaml.safe_load(cited_path.read_text())
    runs = t["runs"]
    platforms = []
    in_tables = runs.status == "ok"
    if "freshness" in runs.columns:  # stale runs are kept out of the tables (accounting_context)
        in_tables &= runs.freshness != "stale"
    for p, g in runs[in_tables].groupby("platform", sort=False):
        r = g.iloc[0]
        platforms.append({"platform": p, "accelerator": r.accelerator, "driver": r.driver,
                          "vllm": r.vllm, "lmcache": r.lmcache, "torch": r.torch, "model": r.model,
                          "weights": r.weights, "n_runs": len(g),
                          "server_starts": int(g.server_starts.sum()),
                          "commits": sorted(set(g.git_commit.dropna()))})
    not_run = runs[runs.status != "ok"][["platform", "experiment", "arm", "reason"]]
    measured = {p["platform"] for p in platforms}
    cited_only = sorted({str(pl) for df in t.values() if {"platform", "provenance"} <= set(df.columns)
                         for pl, prov in zip(df.platform, df.provenance)
                         if str(prov).startswith("cited") and str(pl) not in measured})
    cw = t["cold_warm"]
    cold_warm = []
    for p, g in cw.groupby("platform", sort=False):
        g = g.set_index("phase")
        if {"cold", "warm"} <= set(g.index):
            cold_warm.append({"platform": p, "cold": g.loc["cold", "ttft_median_ms"],
                              "warm": g.loc["warm", "ttft_median_ms"],
                              "warm_lo": g.loc["warm", "ttft_ci95_lo_ms"], "warm_hi": g.loc["warm", "ttft_ci95_hi_ms"],
                              "speedup": g.loc["cold", "ttft_median_ms"] / g.loc["warm", "ttft_median_ms"],
                              "warm_hits": g.loc["warm", "hit_tokens"], "cold_hits": g.loc["cold", "hit_tokens"],
                              "cold_e2e": g.loc["cold", "e2e_median_ms"], "warm_e2e": g.loc["warm", "e2e_median_ms"]})
    from .workloads import COMPAT_SYSTEM
    compat = {"words": len(COMPAT_SYSTEM.split())}
    llama = json.loads(llama_config.read_text())
    kv_tok = kvmodel.kv_bytes_per_token(llama)
    claim = cited["kv_size_claim"]
    kv = {"bytes_per_token": kv_tok, "tokens": claim["tokens"], "bytes": kv_tok * claim["tokens"],
          "claimed": claim["claimed_bytes"], "ratio": claim["claimed_bytes"] / (kv_tok * claim["tokens"])}
    commit = provenance.git_commit(repo)
    return {"t": t, "platforms": platforms, "not_run": _rows(not_run), "cited_only": cited_only, "attempts": attempts or [], "md": md, "cold_warm": cold_warm,
            "restart": _rows(t["restart"]), "baseline": _rows(t["baseline"]),
            "prefix_sweep": _rows(t["prefix_sweep"]), "multiturn": _rows(t["multiturn"]),
            "cited": cited, "kv": kv, "compat": compat, "fig": {k: str(v) for k, v in figures.items()},
            "commit": commit, "commit_short": commit[:12] if commit else "unknown",
            "run_commits": sorted(set(runs.git_commit.dropna())), "kvreuse_version": __version__,
            "artifact": {"id": "unpublished", "short": "unpublished", "kind": "none", "doi": None,
                         "url": None, "source": None, "sha256": None, "results_sha256": None,
                         "bundled_at": None, **(cite or {})},
            "versions": provenance.versions(),
            **accounting_context(runs, t.get("accounting"))}


def render(template: Path, ctx: dict) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template.parent)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["mdtable"] = mdtable
    env.tests["known"] = lambda x: not isinstance(x, jinja2.Undefined) and x is not None \
        and not (isinstance(x, float) and math.isnan(x))
    return env.get_template(template.name).render(**ctx)


def to_pdf(markdown: str, pdf_path: Path, root: Path, title: str) -> None:
    from markdown_pdf import MarkdownPdf, Section

    pdf = MarkdownPdf(toc_level=2, optimize=True)
    pdf.meta["title"] = title
    pdf.meta["creationDate"] = ""
    pdf.meta["modDate"] = ""
    css = "table, th, td {border: 1px solid #999; border-collapse: collapse; font-size: 7pt; padding: 2px;} img {width: 100%;}"
    pdf.add_section(Section(markdown, root=str(root), toc=True), user_css=css)
    pdf.save(str(pdf_path))


def build(template: Path, tables: dict[str, Path], figures: dict[str, Path], cited: Path,
          llama_config: Path, out_md: Path, out_pdf: Path, repo: Path = Path("."),
          cite: dict | None = None, attempts: list[str] | None = None) -> None:
    """``cite``: the artifact to cite (kvreuse.artifact.citation), shown in the references
    and in every figure's caption."""
    rel = Path(*[".."] * len(out_md.parent.relative_to(repo.resolve()) .parts)) if out_md.is_absolute() else \
        Path(*[".."] * len(out_md.parent.parts))
    ctx = context(tables, figures, cited, llama_config, repo, cite, load_attempts(attempts))
    # the Markdown sits in out_md's folder: its figure paths go up to the repository root
    md_text = render(template, {**ctx, "fig": {k: f"{rel.as_posix()}/{v}" for k, v in ctx["fig"].items()}})
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(md_text)
    pdf_text = render(template, ctx)
    to_pdf(pdf_text, out_pdf, root=repo, title="kvreuse: KV-cache reuse in vLLM, measured")
