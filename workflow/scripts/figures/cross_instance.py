"""TTFT against prefix length on instance B: its first request on a prefix that instance A
stored in the shared LMCache server, and a never-seen prefix of the same length, each median
with its 95% CI; the hit fraction from B's counters above each first request."""
import textwrap

import pandas as pd

from kvreuse.plotting import COLORS, empty, platforms_in, plt, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = pd.read_csv(snakemake.input.table)  # noqa: F821
ok = t[t.status == "ok"] if len(t) else t
fig, ax = plt.subplots(figsize=(5, 3.2))
sides = (("cross_first", "B's first request on A's prefix", "-", "o"),
         ("cross_cold", "never-seen prefix on B", "--", "s"))
for p in platforms_in(ok):
    for arm in sorted(ok[ok.platform == p].arm.unique()):
        s = ok[(ok.platform == p) & (ok.arm == arm)].sort_values("prefix_tokens")
        for side, label, ls, marker in sides:
            med = s[f"{side}_ttft_median_ms"]
            ax.errorbar(s.prefix_tokens, med,
                        yerr=[(med - s[f"{side}_ttft_ci95_lo_ms"]).fillna(0), (s[f"{side}_ttft_ci95_hi_ms"] - med).fillna(0)],
                        ls=ls, marker=marker, ms=3, capsize=2, color=COLORS.get(p), label=f"{p} {arm}: {label}")
        for _, r in s.iterrows():
            if pd.notna(r.hit_fraction):
                ax.annotate(f"hits {r.hit_fraction:.0%}", (r.prefix_tokens, r.cross_first_ttft_median_ms),
                            textcoords="offset points", xytext=(0, 5), ha="center", va="bottom", fontsize=6)
if len(ok):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prefix tokens")
    ax.set_ylabel("TTFT median (ms)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=6)
else:
    why = sorted({f"{r.platform}/{r.arm}: {r.reason}" for r in t.itertuples()}) if len(t) else ["no run"]
    empty(ax, "cross_instance not run\n" + "\n".join(textwrap.fill(w, 60) for w in why))
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/cross_instance.py <- results/tables/cross_instance.csv")
