"""Serving baseline (vllm bench serve): TTFT and ITL medians against request rate per GPU (our
measurements only; the source study's numbers are in the write-up's claims table)."""
import pandas as pd

from kvreuse.plotting import COLORS, empty, plt, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = pd.read_csv(snakemake.input.table)  # noqa: F821
fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(9, 3))
if len(t):
    for p, g in t.groupby("platform", sort=False):
        g = g.sort_values("request_rate")
        a1.errorbar(g.request_rate, g.bench_median_ttft_ms,
                    yerr=[(g.bench_median_ttft_ms - g.ttft_ci95_lo_ms).clip(lower=0).fillna(0),
                          (g.ttft_ci95_hi_ms - g.bench_median_ttft_ms).clip(lower=0).fillna(0)],
                    marker="o", color=COLORS.get(p), label=p)
        a2.plot(g.request_rate, g.bench_median_itl_ms, marker="o", color=COLORS.get(p), label=p)
        a3.plot(g.request_rate, g.output_throughput_tok_s, marker="o", color=COLORS.get(p), label=p)
    for ax, lab in ((a1, "TTFT median (ms)"), (a2, "ITL median (ms)"), (a3, "output tok/s")):
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(lab)
    a1.set_yscale("log")
    a1.legend(fontsize=6)
else:
    empty(a1, "no serving results")
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/serving.py <- results/tables/serving.csv")
