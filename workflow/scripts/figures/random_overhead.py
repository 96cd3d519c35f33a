"""Unique (random) prompts: change of mean latency with a store (LMCache, vLLM's offloading)
against APC only, per GPU, with 95% CIs (our measurements only; the source study's numbers are
in the write-up's claims table). Arms are marked where LMCache's kernels did not load."""
import numpy as np
import pandas as pd

from kvreuse.plotting import COLORS, empty, plt, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = pd.read_csv(snakemake.input.table)  # noqa: F821
fig, ax = plt.subplots(figsize=(5.5, 3))
rows = t[t["e2e_delta_pct"].notna()] if "e2e_delta_pct" in t else t.iloc[0:0]
if len(rows):
    for i, (_, r) in enumerate(rows.iterrows()):
        lo = r.get("e2e_delta_ci95_lo_pct", np.nan)
        hi = r.get("e2e_delta_ci95_hi_pct", np.nan)
        yerr = None if np.isnan(lo) else [[r.e2e_delta_pct - lo], [hi - r.e2e_delta_pct]]
        ax.bar(i, r.e2e_delta_pct, yerr=yerr, capsize=3, color=COLORS.get(r.platform, "C0"),
               edgecolor=COLORS.get(r.platform, "k"))
        ax.annotate(f"{r.e2e_delta_pct:+.1f}%", (i, r.e2e_delta_pct), ha="center",
                    va="bottom" if r.e2e_delta_pct >= 0 else "top", fontsize=7)
    def tick(r) -> str:
        runs = r.get("server_runs", np.nan)
        arm = r.get("arm_label") if isinstance(r.get("arm_label"), str) else r.arm  # marked on a fallback
        return f"{r.platform}\n{arm}" + ("\n1 server run: no CI" if runs == 1 else "")

    ax.set_xticks(range(len(rows)), [tick(r) for _, r in rows.iterrows()], fontsize=7)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("mean e2e latency change vs APC only (%)")
else:
    empty(ax, "no random_overhead comparison (LMCache and offloading arms not run here)")
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/random_overhead.py <- results/tables/random_overhead.csv")
