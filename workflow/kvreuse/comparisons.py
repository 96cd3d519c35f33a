"""comparisons.csv: each comparison the write-up draws, with the CI of the difference.

One row per run and comparison (and prefix length, where the experiment has several): the
two sides' medians over all their samples, their difference (baseline - treatment: the time
the treatment saves) and ratio (baseline / treatment: the speedup), each with a percentile
bootstrap 95% CI (kvreuse.stats.median_difference). The sides are resampled on their own,
except where the design pairs them: ``recompute`` i and ``reload`` i of the same length in the
same server run are paired by i, as are ``cross_cold`` i and ``cross_first`` i (one after the
other on instance B). A side with fewer than two requests has NaN CIs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .results import RunMeta
from .stats import Difference, median_difference


@dataclass(frozen=True)
class Comparison:
    experiment: str
    baseline: str     # the phase kind expected to be slower (e.g. cold)
    treatment: str    # the phase kind the cache speeds up (e.g. warm)
    paired: bool = False


COMPARISONS = (
    Comparison("cold_warm", "cold", "warm"),
    Comparison("prefix_sweep", "cold", "warm"),
    Comparison("prefix_sweep", "recompute", "reload", paired=True),
    Comparison("restart", "post_restart_cold", "post_restart_first"),
    # instance B: a never-seen prefix against its first request on a prefix A stored, paired by i
    Comparison("cross_instance", "cross_cold", "cross_first", paired=True),
    # after vLLM's restart: a never-seen prompt against a populated one from the remote store, paired by i
    Comparison("remote", "remote_miss", "remote_hit", paired=True),
)
#: the experiments whose runs comparisons.csv reads
EXPERIMENTS = tuple(dict.fromkeys(c.experiment for c in COMPARISONS))
COLUMNS = ["platform", "experiment", "arm", "prefix_tokens", "baseline", "treatment",
           *Difference.__dataclass_fields__]


def _pairs(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The TTFTs of two sides matched by sample index (``repeat``) and position in it."""
    key = lambda t: t.assign(repeat=t["repeat"].fillna(-1), seq=t["seq"])[["repeat", "seq", "ttft_ms"]]
    both = key(a).merge(key(b), on=["repeat", "seq"], suffixes=("_a", "_b"))
    return both["ttft_ms_a"], both["ttft_ms_b"]


def comparisons_table(df: pd.DataFrame, metas: list[RunMeta]) -> pd.DataFrame:
    """Every comparison of every run that has both sides (successful requests only)."""
    rows = []
    ok = df[df["error"].isna()] if len(df) else df
    for m in metas:
        if m.status != "ok":
            continue
        run = ok[(ok.platform == m.platform) & (ok.experiment == m.experiment) & (ok.arm == m.arm)] if len(ok) else ok
        for c in (c for c in COMPARISONS if c.experiment == m.experiment):
            sides = run[run.phase_kind.isin([c.baseline, c.treatment])]
            for length, g in sides.groupby(sides["prefix_tokens"].fillna(-1), sort=True):
                a, b = g[g.phase_kind == c.baseline], g[g.phase_kind == c.treatment]
                if a.empty or b.empty:
                    continue
                x, y = _pairs(a, b) if c.paired else (a["ttft_ms"], b["ttft_ms"])
                d = median_difference(x.astype(float), y.astype(float), paired=c.paired)
                rows.append({"platform": m.platform, "experiment": m.experiment, "arm": m.arm,
                             "prefix_tokens": None if length == -1 else int(length),
                             "baseline": c.baseline, "treatment": c.treatment, **d.to_dict()})
    return pd.DataFrame(rows, columns=COLUMNS)
