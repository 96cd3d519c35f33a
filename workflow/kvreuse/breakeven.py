"""The break-even prefix length of a store: from which length on reloading a prefix's KV cache
after a restart is faster than recomputing it, with a bootstrap interval.

Per measured length L (ascending), d(L) = median TTFT of the reloads - median TTFT of the
recomputes (negative: reloading is faster). The break-even is where d crosses zero for the last
time, going up in length, so that reloading is faster at every longer measured length: between
the last length with d >= 0 and the next one, linear in log2(L). Its status:

``crossing``                             a crossing between two measured lengths;
``below the shortest measured length``   reloading is faster at every measured length;
``not within the measured lengths``      reloading is not faster at the longest one;
``no lengths``                           no length with both sides measured.

The interval: the requests of each side are resampled within each length (a percentile
bootstrap, ``stats.CI_RESAMPLES`` resamples from a fixed seed) and the crossing is found again
in each resample; a resample without a crossing counts as below the shortest length (for the
lower bound) or beyond the longest one (for the upper), and a bound that falls there is
*censored*: it is only known to lie outside the measured lengths. A length with fewer than two
requests on a side gives no interval (NaN), as everywhere in kvreuse.stats.

The analytic model (:func:`model_reload_ms`): a reload moves the prefix's KV bytes over the
link at its nominal bandwidth, plus a fixed overhead (what a measured reload takes beyond that
transfer: the suffix's prefill, the first decoded token, the request itself), against the
measured recomputes; its break-even uses the same crossing, with only the recomputes resampled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import kvmodel
from .stats import _CI_Q, CI_RESAMPLES

CROSSING = "crossing"
BELOW = "below the shortest measured length"
NOT_WITHIN = "not within the measured lengths"
NO_LENGTHS = "no lengths"
NAN = float("nan")


def crossing(lengths, diffs) -> tuple[float, str]:
    """(break-even tokens, status) of differences ``diffs`` (reload - recompute) at ascending
    ``lengths``; NaN tokens unless the status is ``crossing``. Lengths whose difference is NaN
    are left out."""
    length = np.asarray(lengths, dtype=float)
    d = np.asarray(diffs, dtype=float)
    keep = np.isfinite(d)
    length, d = length[keep], d[keep]
    if not len(length):
        return NAN, NO_LENGTHS
    if d[-1] >= 0:
        return NAN, NOT_WITHIN
    slower = np.flatnonzero(d >= 0)
    if not len(slower):
        return NAN, BELOW
    k = int(slower[-1])  # reloading is not faster here, and faster at every longer length
    x0, x1 = np.log2(length[k]), np.log2(length[k + 1])
    x = x0 + (x1 - x0) * d[k] / (d[k] - d[k + 1])
    return float(2 ** x), CROSSING


#: where a bound of the interval lies: between measured lengths (its value given), or censored
WITHIN = "within the measured lengths"


@dataclass(frozen=True)
class BreakEven:
    """A break-even estimate with its percentile bootstrap interval, in tokens. Each bound's
    ``_where`` says whether it lies within the measured lengths (its value given) or is
    censored (:data:`BELOW` or :data:`NOT_WITHIN`; its value NaN). No interval: both NaN and
    ``_where`` empty."""

    break_even_tokens: float
    status: str
    ci_low: float
    ci_high: float
    ci_low_where: str
    ci_high_where: str
    shortest_tokens: float
    longest_tokens: float
    lengths: str        # the lengths used, "1024 2048 ..."
    n_per_length: str   # reload/recompute requests per length, "1024:10/10 2048:10/10 ..."

    def to_dict(self) -> dict:
        return asdict(self)


def _median(v: np.ndarray) -> float:
    return float(np.median(v)) if len(v) else NAN


def break_even(samples: dict[int, tuple], *, fixed_reload: bool = False, n: int = CI_RESAMPLES,
               seed: int = 0) -> BreakEven:
    """The break-even of ``samples``: length -> (reload TTFTs, recompute TTFTs), ms.
    ``fixed_reload``: the reload side is not a sample but a model's value (one per length),
    so only the recomputes are resampled."""
    clean = {}
    for length, (reload, recompute) in sorted(samples.items()):
        a = np.asarray(reload, dtype=float)
        b = np.asarray(recompute, dtype=float)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if len(a) and len(b):
            clean[int(length)] = (a, b)
    lengths = list(clean)
    diffs = [_median(a) - _median(b) for a, b in clean.values()]
    tokens, status = crossing(lengths, diffs)
    counts = " ".join(f"{k}:{len(a)}/{len(b)}" for k, (a, b) in clean.items())
    lo = hi = NAN
    lo_where = hi_where = ""
    enough = lengths and all((fixed_reload or len(a) >= 2) and len(b) >= 2 for a, b in clean.values())
    if enough:
        rng = np.random.default_rng(seed)
        meds = []
        for a, b in clean.values():
            ma = (np.full(n, _median(a)) if fixed_reload
                  else np.median(a[rng.integers(0, len(a), size=(n, len(a)))], axis=1))
            mb = np.median(b[rng.integers(0, len(b), size=(n, len(b)))], axis=1)
            meds.append(ma - mb)
        d = np.stack(meds, axis=1)  # resample x length
        x = np.empty(n)
        for i in range(n):
            t, s = crossing(lengths, d[i])
            x[i] = np.log2(t) if s == CROSSING else (-np.inf if s == BELOW else np.inf)
        q_lo, q_hi = np.quantile(x, np.array(_CI_Q) / 100, method="inverted_cdf")
        (lo, lo_where), (hi, hi_where) = _bound(q_lo), _bound(q_hi)
    return BreakEven(tokens, status, lo, hi, lo_where, hi_where,
                     float(lengths[0]) if lengths else NAN, float(lengths[-1]) if lengths else NAN,
                     " ".join(map(str, lengths)), counts)


def _bound(x: float) -> tuple[float, str]:
    """A bound in log2 tokens as (tokens, where): NaN and censored outside the lengths."""
    if x == -np.inf:
        return NAN, BELOW
    if x == np.inf:
        return NAN, NOT_WITHIN
    return float(2 ** x), WITHIN


def transfer_ms(tokens: float, bytes_per_token: float, link_gb_s: float) -> float:
    """The time to move ``tokens`` tokens of KV cache over a link at its nominal bandwidth."""
    return 1000 * kvmodel.load_time_s(tokens, bytes_per_token, link_gb_s)


def fixed_overhead_ms(reload_medians: dict[int, float], bytes_per_token: float, link_gb_s: float) -> float:
    """A reload's fixed overhead: the median over lengths of (measured reload TTFT - transfer
    time at the nominal bandwidth); NaN without a measured reload."""
    over = [m - transfer_ms(n, bytes_per_token, link_gb_s) for n, m in reload_medians.items() if np.isfinite(m)]
    return float(np.median(over)) if over else NAN


def model_reload_ms(tokens: float, bytes_per_token: float, link_gb_s: float, overhead_ms: float = 0.0) -> float:
    """The model's reload TTFT: fixed overhead + KV bytes / nominal bandwidth."""
    return overhead_ms + transfer_ms(tokens, bytes_per_token, link_gb_s)
