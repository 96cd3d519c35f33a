"""Comparisons measured in alternating server runs, and the bootstrap that reads them.

An experiment of :data:`EXPERIMENTS` compares its arms across several separate server runs
(a fresh vLLM start each, the same seeded prompts each time), in alternating order: with arms
A and B and three runs, A B A B A B (:func:`schedule`). One job drives every arm of a
platform; each arm still gets its own raw JSONL and meta, and its records say which server run
they came from (``server_run``).

The change of an arm against the reference arm (:func:`ratio_ci`) is resampled on two levels:
server runs with replacement within each arm, then prompts (one draw shared by both arms, so
the comparison stays paired by prompt). Noise between server runs therefore widens the
interval even where the prompts within a run agree; with fewer than two runs on a side there
is nothing to resample between runs and the interval is NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .stats import CI_RESAMPLES, _CI_Q

#: experiments whose arms alternate across server runs in one job per platform
EXPERIMENTS = ("random_overhead", "miss")
#: the stem of such a job's log and benchmark file (results/{logs,benchmarks}/<platform>/<experiment>/)
JOB = "alternating"


def alternates(experiment: str) -> bool:
    return experiment in EXPERIMENTS


def schedule(arms: list, server_runs: int) -> list[tuple[int, object]]:
    """(server run, arm) in the order they run: every arm once per round, ``server_runs`` rounds."""
    return [(run, arm) for run in range(server_runs) for arm in arms]


def run_matrix(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per server run, one column per prompt (``repeat``, ``seq``), the mean of ``metric``.

    Records without a ``server_run`` (runs made before the alternating design: one server run
    per arm) are server run 0."""
    d = df.assign(server_run=df["server_run"].fillna(0).astype(int),
                  repeat=df["repeat"].fillna(0).astype(int))
    return d.pivot_table(index="server_run", columns=["repeat", "seq"], values=metric, aggfunc="mean")


def ratio_ci(arm: pd.DataFrame, ref: pd.DataFrame, *, n: int = CI_RESAMPLES,
             seed: int = 0) -> tuple[float, float, float]:
    """Percent change of the mean of ``arm`` against ``ref`` (runs x prompts matrices of
    :func:`run_matrix`) on the prompts both have, and its two-level bootstrap 95% CI
    (runs within each arm, then prompts, paired). NaN CI with fewer than two runs on a side;
    all NaN with no common prompt."""
    common = arm.columns.intersection(ref.columns)
    a, b = arm[common].to_numpy(float), ref[common].to_numpy(float)
    nan = float("nan")
    if not len(common) or np.isnan(a).all() or np.isnan(b).all():
        return nan, nan, nan
    point = 100 * (np.nanmean(a) / np.nanmean(b) - 1)
    if len(a) < 2 or len(b) < 2:
        return float(point), nan, nan
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, len(common), size=(n, len(common)))

    def means(x: np.ndarray) -> np.ndarray:
        runs = rng.integers(0, len(x), size=(n, len(x)))
        picked = x[runs[:, :, None], prompts[:, None, :]]  # (n, runs, prompts)
        return np.nanmean(picked.reshape(n, -1), axis=1)

    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample of only missing values
        boot = 100 * (means(a) / means(b) - 1)
    boot = boot[np.isfinite(boot)]
    lo, hi = np.percentile(boot, _CI_Q)
    return float(point), float(lo), float(hi)
