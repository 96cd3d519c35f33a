# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # kvreuse analysis notebook
# Reads the generated tables (never the raw files of a running job) and shows the numbers the
# write-up is built from. Executed by the `notebook` rule; edit it as a `.py` file (jupytext).

# %%
from pathlib import Path

import pandas as pd

root = Path.cwd()
while not (root / "Snakefile").exists() and root != root.parent:
    root = root.parent
tables = {p.stem: pd.read_csv(p) for p in sorted((root / "results/tables").glob("*.csv"))}
sorted(tables)

# %% [markdown]
# ## Cold vs warm: TTFT and counter-proven hits

# %%
cw = tables["cold_warm"]
cw[["platform", "arm", "phase", "n", "ttft_median_ms", "ttft_ci95_lo_ms", "ttft_ci95_hi_ms", "hit_tokens"]]

# %%
pivot = cw.pivot_table(index="platform", columns="phase", values="ttft_median_ms")
pivot["speedup"] = pivot["cold"] / pivot["warm"]
pivot

# %% [markdown]
# ## Restart: verdicts from counters

# %%
tables["restart"]

# %% [markdown]
# ## Across instances: B's first request on a prefix A stored, against a never-seen one

# %%
tables.get("cross_instance")  # None where the study has no cross_instance experiment

# %% [markdown]
# ## Long multi-turn conversations and LMCache's chunk size: each arm against its reference

# %%
from IPython.display import display

for name in ("multiturn_long", "chunk_sweep"):  # absent where the study has no such experiment
    t = tables.get(name)
    if t is not None and len(t):
        display(t[t.scope == "overall"][["platform", "arm", "chunk_size", "history_tokens", "n", "ttft_median_ms",
                                         "ttft_saved_ms", "ttft_saved_ci95_lo_ms", "ttft_saved_ci95_hi_ms",
                                         "tpot_median_ms", "input_tps", "input_tps_ratio",
                                         "external_prefix_cache_hits"]])

# %% [markdown]
# ## Runs and what was not run

# %%
runs = tables["runs"]
runs.groupby(["platform", "status"]).size()

# %%
runs[runs.status != "ok"][["platform", "experiment", "arm", "reason"]]
