"""Counter parsing with prometheus_client's own exposition format."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kvreuse import metrics


def exposition(hits: float, queries: float, ext_hits: float = 0) -> str:
    reg = CollectorRegistry()
    labels = ["model_name", "engine"]
    h = Counter("vllm:prefix_cache_hits", "hits", labels, registry=reg)
    q = Counter("vllm:prefix_cache_queries", "queries", labels, registry=reg)
    e = Counter("vllm:external_prefix_cache_hits", "ext", labels, registry=reg)
    Gauge("vllm:num_requests_running", "gauge", labels, registry=reg).labels("m", "0").set(3)
    t = Histogram("vllm:time_to_first_token_seconds", "ttft", labels, registry=reg)
    Counter("process_cpu_seconds", "other", registry=reg).inc(5)
    # two engines: the parser must sum over label sets
    h.labels("m", "0").inc(hits / 2)
    h.labels("m", "1").inc(hits / 2)
    q.labels("m", "0").inc(queries)
    e.labels("m", "0").inc(ext_hits)
    t.labels("m", "0").observe(0.25)
    return generate_latest(reg).decode()


def test_parse_sums_label_sets_and_keeps_only_counters_and_histograms():
    c = metrics.parse(exposition(hits=64, queries=100, ext_hits=32))
    assert c["vllm:prefix_cache_hits"] == 64
    assert c["vllm:prefix_cache_queries"] == 100
    assert c["vllm:external_prefix_cache_hits"] == 32
    assert c["vllm:time_to_first_token_seconds_count"] == 1
    assert abs(c["vllm:time_to_first_token_seconds_sum"] - 0.25) < 1e-9
    assert "vllm:num_requests_running" not in c  # gauges are not deltas
    assert not any(k.startswith("process_") for k in c)


def test_delta_and_hit_tokens():
    before = metrics.parse(exposition(hits=16, queries=32))
    after = metrics.parse(exposition(hits=80, queries=132, ext_hits=256))
    d = metrics.delta(before, after)
    assert d["vllm:prefix_cache_hits"] == 64
    assert d["vllm:prefix_cache_queries"] == 100
    assert metrics.hit_tokens(d) == 64 + 256
    for name in metrics.REQUIRED_COUNTERS:  # always present, 0 when not exported
        assert name in d
    assert metrics.delta({}, {})["vllm:external_prefix_cache_queries"] == 0
