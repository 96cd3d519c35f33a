"""Server counters, read from Prometheus text with prometheus_client's parser.

A cache hit is proven by these counters (``vllm:prefix_cache_hits``,
``vllm:external_prefix_cache_hits``, LMCache's hit tokens), never by time.

LMCache's own families (names from LMCache 0.5.6), all kept by :func:`parse`:

- in-process (``LMCacheConnectorV1``): prometheus_client metrics in vLLM's engine process,
  served by LMCache's internal API server (``lmcache:num_hit_tokens``,
  ``lmcache:num_requested_tokens``, ``lmcache:num_stored_tokens``,
  ``lmcache:num_lookup_hits``, ``lmcache:num_remote_read_bytes``, histograms
  ``lmcache:time_to_retrieve``, ``lmcache:retrieve_to_gpu_time``, ...); flushed every 10 s.
- the LMCache server (``lmcache server``): OpenTelemetry instruments exported at the HTTP
  frontend's /metrics, named ``lmcache_mp.<x>`` plus the unit (``lmcache_mp_lookup_hit_tokens``,
  ``lmcache_mp_lookup_hit_l2_tokens``, ``lmcache_mp_num_chunks_loaded``,
  ``lmcache_mp_transfer_phase_bytes`` and ``lmcache_mp_transfer_phase_elapsed_seconds`` with
  labels direction (h2d: a load) and phase (staging, kernel), ...); read at scrape time.
  LMCache 0.5.3 (pinned for GPU runs) has the lookup and chunk counters but no
  ``transfer_phase`` instruments; its loads show only as an OpenTelemetry histogram of GB/s
  per request (instrument ``lmcache_mp.l0_l1_load_throughput``).
- vLLM's ``vllm:lmcache_mp_lookup_duration_seconds`` (the MP connector's lookup histogram).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

#: counters that every meta must carry (0 when the server does not export them)
REQUIRED_COUNTERS = (
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:external_prefix_cache_queries",
    "vllm:external_prefix_cache_hits",
)
#: histograms whose _sum and _count deltas give the server-side view of a phase
HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:inter_token_latency_seconds",
)
log = logging.getLogger(__name__)

PREFIXES = ("vllm:", "lmcache")
#: histograms whose buckets are kept too, so that a phase's server-side median can be read
BUCKETED = ("vllm:time_to_first_token_seconds",)
#: labels of LMCache families that are also kept apart, as ``name{label=value,...}``
LMCACHE_SPLIT_LABELS = ("direction", "phase")


def parse(text: str) -> dict[str, float]:
    """Flatten exposition text to ``{name: value}``, summed over label sets.

    Counters are keyed by family name (``vllm:prefix_cache_hits``, without ``_total``);
    histograms by ``<family>_sum`` and ``<family>_count``; gauges are left out. LMCache
    families with a direction or phase label are also kept per value of those labels
    (``lmcache_mp_transfer_phase_bytes{direction=h2d,phase=staging}``).
    """
    out: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(PREFIXES):
            continue
        for sample in family.samples:
            if family.type == "counter" and sample.name.endswith("_total"):
                key = family.name
            elif family.type == "histogram" and sample.name.endswith(("_sum", "_count")):
                key = sample.name
            elif family.name in BUCKETED and sample.name.endswith("_bucket"):
                key = f"{sample.name}{{le={sample.labels['le']}}}"
            else:
                continue
            out[key] += sample.value
            split = [f"{k}={sample.labels[k]}" for k in LMCACHE_SPLIT_LABELS if k in sample.labels]
            if split and family.name.startswith("lmcache"):
                out[key + "{" + ",".join(split) + "}"] += sample.value
    return dict(out)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each counter did between two scrapes; required counters always present."""
    names = set(before) | set(after) | set(REQUIRED_COUNTERS)
    return {n: after.get(n, 0.0) - before.get(n, 0.0) for n in sorted(names)}


def hit_tokens(counters: dict[str, float]) -> float:
    """Prompt tokens served from any cache: vLLM's own plus the connector's (LMCache)."""
    return counters.get("vllm:prefix_cache_hits", 0.0) + counters.get(
        "vllm:external_prefix_cache_hits", 0.0)


def histogram_quantile(counters: dict[str, float], family: str, q: float = 0.5) -> float | None:
    """Quantile of a histogram from its cumulative bucket deltas (linear within a bucket,
    as Prometheus' histogram_quantile does); None without observations."""
    prefix = f"{family}_bucket{{le="
    buckets = sorted((float(k[len(prefix):-1]), v) for k, v in counters.items() if k.startswith(prefix))
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lo_bound
            width = count - lo_count
            return lo_bound + (bound - lo_bound) * ((rank - lo_count) / width if width else 0)
        lo_bound, lo_count = bound, count
    return lo_bound


class Scraper:
    """Scrapes one or more ``/metrics`` URLs and merges them.

    A failure of a URL in ``optional`` (LMCache's in-process metrics server) is logged and
    skipped; any other failure raises.
    """

    def __init__(self, urls: list[str], timeout_s: float = 10.0, optional: tuple[str, ...] = ()):
        self.urls = list(urls) + [u for u in optional if u not in urls]
        self.optional = set(optional)
        self.timeout_s = timeout_s

    def scrape(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        with httpx.Client(timeout=self.timeout_s) as client:
            for url in self.urls:
                try:
                    r = client.get(url)
                    r.raise_for_status()
                except httpx.HTTPError as e:
                    if url not in self.optional:
                        raise
                    log.warning("optional metrics URL %s failed: %s", url, e)
                    continue
                for k, v in parse(r.text).items():
                    merged[k] = merged.get(k, 0.0) + v
        return merged
