"""Samples, CIs of differences, the tail rule and the restart verdict, on synthetic runs
written and read through kvreuse.results (no server)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kvreuse import aggregate, results, stats, verdict
from kvreuse.comparisons import comparisons_table


# -- the CI of a difference of medians --------------------------------------------------------
def test_constant_samples_collapse_the_ci_onto_the_difference():
    d = stats.median_difference([50.0] * 10, [10.0] * 8)
    assert d.diff_median_ms == d.diff_ci95_lo_ms == d.diff_ci95_hi_ms == 40.0
    assert d.speedup == d.speedup_ci95_lo == d.speedup_ci95_hi == 5.0
    assert (d.n_baseline, d.n_treatment, d.paired) == (10, 8, False)


def test_shifted_normal_samples_have_a_ci_that_covers_the_shift():
    rng = np.random.default_rng(1)
    cold, warm = rng.normal(65.0, 5.0, 30), rng.normal(40.0, 5.0, 40)
    d = stats.median_difference(cold, warm)
    assert d.diff_ci95_lo_ms < 25.0 < d.diff_ci95_hi_ms
    assert d.diff_ci95_lo_ms > 0 and d.diff_ci95_hi_ms - d.diff_ci95_lo_ms < 10
    assert d.speedup_ci95_lo < 65 / 40 < d.speedup_ci95_hi


def test_a_side_of_one_request_has_no_ci():
    d = stats.median_difference([70.0], [40.0, 41.0, 39.0])
    assert d.diff_median_ms == 30.0 and d.speedup == pytest.approx(70 / 40)
    assert all(math.isnan(x) for x in (d.diff_ci95_lo_ms, d.diff_ci95_hi_ms, d.speedup_ci95_lo, d.speedup_ci95_hi))


def test_paired_samples_resample_together():
    # recompute i and reload i drift together: paired, the CI of the difference is narrow
    drift = np.linspace(40.0, 80.0, 10)
    d = stats.median_difference(drift + 20.0, drift, paired=True)
    assert d.paired and d.diff_ci95_lo_ms == pytest.approx(20.0) and d.diff_ci95_hi_ms == pytest.approx(20.0)
    u = stats.median_difference(drift + 20.0, drift)
    assert u.diff_ci95_hi_ms - u.diff_ci95_lo_ms > 10
    with pytest.raises(ValueError, match="paired samples of different sizes"):
        stats.median_difference([1.0, 2.0], [1.0], paired=True)


# -- p99 only where there are enough requests ---------------------------------------------------
def test_p99_from_100_requests_else_the_maximum():
    few = stats.tail(np.arange(99.0))
    assert math.isnan(few["ttft_p99_ms"]) and few["ttft_max_ms"] == 98.0
    many = stats.tail(np.arange(100.0))
    assert many["ttft_p99_ms"] == pytest.approx(np.quantile(np.arange(100.0), 0.99)) and many["ttft_max_ms"] == 99.0


# -- the verdict -------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction, equal, expected", [
    (0.95, True, verdict.PERSISTED),
    (0.9, True, verdict.PERSISTED),
    (0.5, True, verdict.PARTIAL),
    (0.95, False, verdict.PARTIAL),
    (0.95, None, verdict.PARTIAL),
    (0.0, True, verdict.NOT_PERSISTED),
])
def test_verdict_thresholds(fraction, equal, expected):
    got, reason = verdict.classify(fraction, equal)
    assert got == expected
    if got == verdict.PARTIAL:
        assert ("output" in reason) == (fraction >= verdict.PERSISTED_FRACTION)


def test_reusable_tokens_are_whole_chunks_or_blocks_of_the_prompt_less_its_last_token():
    assert verdict.reusable_tokens(1040, 256) == 1024 and verdict.reusable_tokens(1040, 16) == 1024
    assert verdict.reusable_tokens(1024, 256) == 768 and verdict.reusable_tokens(100, 128) == 0


# -- a synthetic restart run, written and read back ----------------------------------------------
def meta(arm: str, arm_config: dict, phases: dict, **kw) -> results.RunMeta:
    return results.RunMeta(status="ok", platform="h200", experiment=kw.pop("experiment", "restart"), arm=arm,
                           arm_config=arm_config, params={"prefix_tokens": 1024}, accelerator={"kind": "gpu"},
                           versions={}, model={}, server={"vllm_args": []}, client={}, config_hash=None,
                           git_commit=None, started_at="", finished_at=None, phases=phases, **kw)


def record(m: results.RunMeta, name: str, kind: str, ttft: float, out=(1, 2), seq=0, **fields) -> results.RequestRecord:
    return results.RequestRecord(platform=m.platform, experiment=m.experiment, arm=m.arm, phase=name,
                                 phase_kind=kind, seq=seq, prompt_tokens=1040, cached_tokens=None,
                                 output_tokens=len(out), ttft_ms=ttft, itl_ms=[], e2e_ms=ttft + 100,
                                 error=None, output_token_ids=list(out), **fields)


def write_run(tmp_path, m: results.RunMeta, recs: list) -> str:
    out = tmp_path / m.platform / m.experiment / f"{m.arm}.jsonl"
    results.write_records(out, recs)
    results.write_meta(results.meta_path(out), m)
    return str(out)


def restart_run(tmp_path, hits: list[float], outputs_after: list[tuple]) -> str:
    lm = {"lmcache": {"mode": "in_process", "chunk_size": 256}}
    phases, recs = {}, []
    m = meta("lmcache_fs", lm, phases)
    for i, (h, out) in enumerate(zip(hits, outputs_after)):
        f = {"repeat": i, "prefix_tokens": 1024}
        phases[f"populate_{i}"] = results.Phase(kind="populate", n_requests=1, wall_s=0, counters={}, **f)
        phases[f"post_restart_first_{i}"] = results.Phase(
            kind="post_restart_first", n_requests=1, wall_s=0, after_restart=True,
            counters={"vllm:external_prefix_cache_hits": h, "vllm:prefix_cache_hits": 1024.0}, **f)
        phases[f"post_restart_cold_{i}"] = results.Phase(kind="post_restart_cold", n_requests=1, wall_s=0,
                                                         after_restart=True, counters={}, **f)
        recs += [record(m, f"populate_{i}", "populate", 120.0 + i, **f),
                 record(m, f"post_restart_first_{i}", "post_restart_first", 40.0 + i, out=out, **f),
                 record(m, f"post_restart_cold_{i}", "post_restart_cold", 110.0 + i, out=(5,), **f)]
    return write_run(tmp_path, m, recs)


def test_restart_table_verdict_per_run_from_the_median_prefix(tmp_path):
    f = restart_run(tmp_path, [1024.0, 512.0, 1000.0], [(1, 2), (1, 2), (1, 2)])
    t = aggregate.build("restart", [f], 0.05).iloc[0]
    # external hits only for an LMCache arm: 1024, 512, 1000 of 1024 reusable tokens
    assert t.verdict == verdict.PERSISTED and bool(t.persisted) and t.n_prefixes == 3
    assert t.hit_fraction == pytest.approx(1000 / 1024) and t.hit_fraction_min == 0.5 and t.hit_fraction_max == 1.0
    assert t.n_prefixes_persisted == 2 and t.persisted_hit_tokens == 2536.0 and t.reusable_tokens == 1024
    assert t.post_restart_first_n == 3 and t.post_restart_first_ttft_median_ms == 41.0
    assert t.post_restart_first_hit_tokens == 3 * 1024 + 2536  # summed over the kind's phases (own + external)


def test_restart_table_partial_when_an_output_differs_or_hits_are_few(tmp_path):
    f = restart_run(tmp_path / "a", [1024.0], [(9, 9)])
    t = aggregate.build("restart", [f], 0.05).iloc[0]
    assert t.verdict == verdict.PARTIAL and not t.persisted and "output" in t.verdict_reason
    assert not t.output_equal and math.isnan(t.post_restart_first_ttft_ci95_lo_ms)  # n = 1
    f = restart_run(tmp_path / "b", [256.0, 512.0, 0.0], [(1, 2)] * 3)
    t = aggregate.build("restart", [f], 0.05).iloc[0]
    assert t.verdict == verdict.PARTIAL and "0.25" in t.verdict_reason and t.hit_fraction_min == 0.0
    f = restart_run(tmp_path / "c", [0.0, 0.0], [(1, 2)] * 2)
    assert aggregate.build("restart", [f], 0.05).iloc[0].verdict == verdict.NOT_PERSISTED


def test_comparisons_table_unpaired_and_paired(tmp_path):
    # cold_warm: 3 cold prefixes interleaved with their warm requests
    phases, recs = {}, []
    m = meta("apc", {"prefix_caching": True}, phases, experiment="cold_warm")
    for i in range(3):
        phases[f"cold_{i}"] = results.Phase(kind="cold", n_requests=1, wall_s=0, counters={}, repeat=i)
        phases[f"warm_{i}"] = results.Phase(kind="warm", n_requests=2, wall_s=0,
                                            counters={"vllm:prefix_cache_hits": 2048.0}, repeat=i)
        recs += [record(m, f"cold_{i}", "cold", 60.0, repeat=i)]
        recs += [record(m, f"warm_{i}", "warm", 20.0, seq=s, repeat=i) for s in range(2)]
    files = [write_run(tmp_path, m, recs)]
    # prefix sweep of an LMCache arm: reload i and recompute i, paired
    phases, recs = {}, []
    m = meta("lmcache_fs", {"lmcache": {"mode": "in_process"}}, phases, experiment="prefix_sweep")
    for i, drift in enumerate([0.0, 30.0, 60.0]):
        for kind, ttft in (("reload", 30.0 + drift), ("recompute", 90.0 + drift)):
            phases[f"{kind}_512_{i}"] = results.Phase(kind=kind, n_requests=1, wall_s=0, counters={},
                                                      prefix_tokens=512, repeat=i, after_restart=True)
            recs.append(record(m, f"{kind}_512_{i}", kind, ttft, prefix_tokens=512, repeat=i))
    files.append(write_run(tmp_path, m, recs))
    t = aggregate.build("comparisons", files, 0.05)
    cw = t[t.experiment == "cold_warm"].iloc[0]
    assert (cw.baseline, cw.treatment, cw.n_baseline, cw.n_treatment) == ("cold", "warm", 3, 6)
    assert cw.diff_median_ms == cw.diff_ci95_lo_ms == cw.diff_ci95_hi_ms == 40.0 and cw.speedup == 3.0
    rr = t[t.experiment == "prefix_sweep"].iloc[0]
    assert rr.paired and rr.prefix_tokens == 512 and (rr.baseline, rr.treatment) == ("recompute", "reload")
    assert rr.diff_median_ms == rr.diff_ci95_lo_ms == rr.diff_ci95_hi_ms == 60.0  # the drift cancels
    # the phase table: one row per kind, n over all prefixes, counters summed
    ct = aggregate.build("cold_warm", files[:1], 0.05).set_index("phase")
    assert ct.loc["cold", "n"] == 3 and ct.loc["warm", "n"] == 6 and ct.loc["warm", "hit_tokens"] == 3 * 2048
    assert math.isnan(ct.loc["warm", "ttft_p99_ms"]) and ct.loc["warm", "ttft_max_ms"] == 20.0
