"""The tables' statistics: percentile bootstrap CIs of a median and of a difference of two
medians (with their ratio), and which tail a sample is big enough for.

Every CI is a percentile bootstrap 95% interval over ``CI_RESAMPLES`` resamples from a fixed
seed (the tables are reproducible). A side with fewer than two values has no CI: NaN, never a
made-up number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CI_RESAMPLES = 2000
#: the confidence level of every bootstrap CI (the columns' names say ci95)
CI_LEVEL = 95
_CI_Q = ((100 - CI_LEVEL) / 2, 100 - (100 - CI_LEVEL) / 2)
#: the smallest sample whose 99th percentile is reported; below it, the maximum (labelled so)
P99_MIN_N = 100

NAN = float("nan")


def _values(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[~np.isnan(v)]


def _interval(stats: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(stats, _CI_Q)
    return float(lo), float(hi)


def bootstrap_ci(values, stat=np.median, n: int = CI_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of ``stat``; NaN for fewer than two values."""
    v = _values(values)
    if len(v) < 2:
        return (NAN, NAN)
    rng = np.random.default_rng(seed)
    return _interval(stat(rng.choice(v, size=(n, len(v)), replace=True), axis=1))


@dataclass(frozen=True)
class Difference:
    """``baseline`` against ``treatment`` (e.g. cold against warm): the difference of their
    medians (baseline - treatment: the time the treatment saves) and their ratio (baseline /
    treatment: the speedup), each with a percentile bootstrap 95% CI."""

    n_baseline: int
    n_treatment: int
    paired: bool
    baseline_median_ms: float
    treatment_median_ms: float
    diff_median_ms: float
    diff_ci95_lo_ms: float
    diff_ci95_hi_ms: float
    speedup: float
    speedup_ci95_lo: float
    speedup_ci95_hi: float

    def to_dict(self) -> dict:
        return asdict(self)


def median_difference(baseline, treatment, *, paired: bool = False, n: int = CI_RESAMPLES,
                      seed: int = 0) -> Difference:
    """The difference and ratio of the medians of two samples, with bootstrap CIs.

    Unpaired (default): each side is resampled on its own. ``paired``: the two samples are
    pairs by position (baseline[i] and treatment[i] belong together, e.g. recompute i and
    reload i of the same length in the same server run) and are resampled together; they
    must then be of equal length. With fewer than two values on a side the CIs are NaN."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(treatment, dtype=float)
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired samples of different sizes ({len(a)} and {len(b)}): "
                             f"pair them by their index first, or compare them unpaired")
        keep = ~(np.isnan(a) | np.isnan(b))
        a, b = a[keep], b[keep]
    else:
        a, b = _values(a), _values(b)
    ma = float(np.median(a)) if len(a) else NAN
    mb = float(np.median(b)) if len(b) else NAN
    diff, ratio = ma - mb, (ma / mb if mb else NAN)
    ci = (NAN, NAN, NAN, NAN)
    if len(a) >= 2 and len(b) >= 2:
        rng = np.random.default_rng(seed)
        ia = rng.integers(0, len(a), size=(n, len(a)))
        ib = ia if paired else rng.integers(0, len(b), size=(n, len(b)))
        sa, sb = np.median(a[ia], axis=1), np.median(b[ib], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ci = (*_interval(sa - sb), *_interval(sa / sb))
    return Difference(len(a), len(b), paired, ma, mb, diff, ci[0], ci[1], ratio, ci[2], ci[3])


def tail(values) -> dict[str, float]:
    """``ttft_p99_ms`` where the sample has at least :data:`P99_MIN_N` values (NaN below: a
    99th percentile of fewer is the maximum in disguise) and ``ttft_max_ms`` always."""
    v = _values(values)
    return {"ttft_p99_ms": float(np.quantile(v, 0.99)) if len(v) >= P99_MIN_N else NAN,
            "ttft_max_ms": float(v.max()) if len(v) else NAN}
