"""The write-up: one context, built from the generated tables, figures and metas, fills two
Jinja templates: Markdown (paper/kvreuse.md.j2, for the web) and LaTeX (paper/kvreuse.tex.j2,
with its BibTeX paper/kvreuse.bib.j2), which latexmk compiles to the PDF.

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

from . import __version__, kvmodel, labels, latex, latexmk, provenance

TITLE = "kvreuse: KV-cache reuse in vLLM, measured with counters"

# what the references say of the software the runs used (their versions come from the runs table)
SOFTWARE = {
    "vllm": {"title": "vLLM", "url": "https://github.com/vllm-project/vllm"},
    "lmcache": {"title": "LMCache", "url": "https://github.com/LMCache/LMCache"},
    "snakemake": {"title": "Snakemake", "url": "https://snakemake.github.io"},
}


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
    return df.round(digits).rename(columns=labels.label).to_markdown(index=False, floatfmt=f".{digits}f")


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
    return {"title": TITLE, "t": t, "platforms": platforms, "not_run": _rows(not_run), "cited_only": cited_only,
            "attempts": attempts or [], "md": md, "cold_warm": cold_warm,
            "restart": _rows(t["restart"]), "baseline": _rows(t["baseline"]),
            "prefix_sweep": _rows(t["prefix_sweep"]), "multiturn": _rows(t["multiturn"]),
            "cited": cited, "kv": kv, "compat": compat, "fig": {k: str(v) for k, v in figures.items()},
            "commit": commit, "commit_short": commit[:12] if commit else "unknown",
            "run_commits": sorted(set(runs.git_commit.dropna())), "kvreuse_version": __version__,
            "artifact": {"id": "unpublished", "short": "unpublished", "kind": "none", "doi": None,
                         "url": None, "source": None, "sha256": None, "results_sha256": None,
                         "bundled_at": None, **(cite or {})},
            "versions": versions, "software": software,
            "gpu_stack": {key: ", ".join(v["version"] for v in _versions(gpus, key)) or "n/a"
                          for key in ("vllm", "lmcache", "torch")},
            "weights": [{"weights": w, "platforms": ps} for w, ps in weights.items()],
            **accounting_context(runs, t.get("accounting"))}


def _versions(platforms: list[dict], key: str) -> list[dict]:
    """The versions of ``key`` (a runs-table column) the platforms' runs recorded, each with where."""
    where: dict[str, list[str]] = {}
    for p in platforms:
        v = p.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            where.setdefault(str(v), []).append(p["platform"])
    return [{"version": v, "where": ", ".join(ps)} for v, ps in where.items()]


def _known(x) -> bool:
    return not isinstance(x, jinja2.Undefined) and x is not None and not (isinstance(x, float) and math.isnan(x))


def render(template: Path, ctx: dict) -> str:
    """The Markdown write-up."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template.parent)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["mdtable"] = mdtable
    env.tests["known"] = _known
    return env.get_template(template.name).render(**ctx)


def render_tex(template: Path, ctx: dict) -> str:
    """The LaTeX write-up or its BibTeX (kvreuse.latex: every value escaped)."""
    env = latex.environment(template.parent, fmt=fmt)
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
