"""Reload against recompute after a restart over prefix lengths: the break-even math
(kvreuse.breakeven) on synthetic numbers (a known crossing, none, below the measured lengths),
the analytic model, and the tables made from synthetic restart runs written and read back
(kvreuse.tables_reload), including the GPU-only counters (LMCache's log, vLLM's offloading)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from kvreuse import aggregate, breakeven, kvmodel, results, verdict
from kvreuse.config import validate
from kvreuse.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BPT = 128 * 1024  # Llama-3.1-8B, bf16
LENGTHS = [1024, 2048, 4096, 8192]


# -- the crossing --------------------------------------------------------------------------------
def test_a_known_crossing_is_interpolated_on_log2_length():
    # reload - recompute: +10 at 2048, -10 at 4096: halfway in log2, sqrt(2048 * 4096)
    tokens, status = breakeven.crossing(LENGTHS, [30.0, 10.0, -10.0, -40.0])
    assert status == breakeven.CROSSING and tokens == pytest.approx(math.sqrt(2048 * 4096))
    # a quarter of the way: +5 then -15
    tokens, _ = breakeven.crossing([1024, 2048], [5.0, -15.0])
    assert tokens == pytest.approx(2 ** (10 + 0.25))
    # a difference of exactly zero is the break-even itself
    assert breakeven.crossing([1024, 2048, 4096], [3.0, 0.0, -1.0])[0] == pytest.approx(2048)


def test_no_crossing_says_where():
    assert breakeven.crossing(LENGTHS, [-1.0, -5.0, -9.0, -20.0]) == (pytest.approx(np.nan, nan_ok=True),
                                                                      breakeven.BELOW)
    assert breakeven.crossing(LENGTHS, [5.0, 4.0, 3.0, 1.0])[1] == breakeven.NOT_WITHIN
    assert breakeven.crossing([], [])[1] == breakeven.NO_LENGTHS
    assert breakeven.crossing([1024], [-3.0])[1] == breakeven.BELOW  # one length: faster there
    assert breakeven.crossing([1024], [3.0])[1] == breakeven.NOT_WITHIN


def test_the_break_even_is_the_last_crossing_and_nan_lengths_are_left_out():
    # faster at 2048, slower again at 4096, faster from 8192 on: reloading wins for good above 4096
    tokens, status = breakeven.crossing(LENGTHS, [5.0, -5.0, 5.0, -5.0])
    assert status == breakeven.CROSSING and 4096 < tokens < 8192
    # slower at the longest length: not within, whatever happened below
    assert breakeven.crossing(LENGTHS, [5.0, -5.0, -5.0, 1.0])[1] == breakeven.NOT_WITHIN
    tokens, _ = breakeven.crossing(LENGTHS, [np.nan, 10.0, -10.0, np.nan])
    assert tokens == pytest.approx(math.sqrt(2048 * 4096))


# -- the bootstrap interval ----------------------------------------------------------------------
def synthetic(overhead_ms: float, per_token_ms: float, noise: float = 2.0, n: int = 10, seed: int = 1):
    """Reloads: a fixed overhead; recomputes: proportional to length; both with noise."""
    rng = np.random.default_rng(seed)
    return {L: (overhead_ms + rng.normal(0, noise, n), L * per_token_ms + rng.normal(0, noise, n))
            for L in LENGTHS}


def test_bootstrap_interval_holds_the_known_crossing():
    # recompute = L / 40 ms, reload = 80 ms: without noise, +28.8 ms at 2048 and -22.4 at 4096,
    # so the crossing on log2 length is 2 ** (11 + 28.8 / 51.2) (the lines meet at 3200 tokens)
    known = 2 ** (11 + 28.8 / 51.2)
    be = breakeven.break_even(synthetic(80.0, 1 / 40))
    assert be.status == breakeven.CROSSING and be.break_even_tokens == pytest.approx(known, rel=0.05)
    assert be.ci_low < known < be.ci_high and be.ci_high < 4096 and be.ci_low > 2048
    assert be.ci_low_where == be.ci_high_where == breakeven.WITHIN
    assert be.lengths == "1024 2048 4096 8192" and be.n_per_length.split()[0] == "1024:10/10"
    assert (be.shortest_tokens, be.longest_tokens) == (1024, 8192)
    # reproducible: a fixed seed
    assert breakeven.break_even(synthetic(80.0, 1 / 40)) == be


def test_bootstrap_bounds_outside_the_lengths_are_censored():
    below = breakeven.break_even(synthetic(5.0, 1 / 40))  # reloading faster everywhere
    assert below.status == breakeven.BELOW and math.isnan(below.break_even_tokens)
    assert below.ci_low_where == breakeven.BELOW and math.isnan(below.ci_low)
    never = breakeven.break_even(synthetic(1000.0, 1 / 40))  # never faster up to 8K
    assert never.status == breakeven.NOT_WITHIN and never.ci_high_where == breakeven.NOT_WITHIN
    # near the shortest length: the interval's low end is censored, its high end is a length
    edge = breakeven.break_even(synthetic(25.0, 1 / 40, noise=8.0))
    assert edge.ci_low_where == breakeven.BELOW and edge.ci_high_where == breakeven.WITHIN


def test_fewer_than_two_requests_give_no_interval():
    s = synthetic(80.0, 1 / 40, n=1)
    be = breakeven.break_even(s)
    assert be.status == breakeven.CROSSING and math.isnan(be.ci_low) and be.ci_low_where == ""
    # a side with no request at a length leaves that length out
    s = synthetic(80.0, 1 / 40)
    s[8192] = (s[8192][0], [])
    assert breakeven.break_even(s).lengths == "1024 2048 4096"


# -- the analytic model --------------------------------------------------------------------------
def test_llama_kv_bytes_per_token_from_its_config():
    model = {"source": "dummy", "config_json": str(REPO / "workflow/resources/llama-3.1-8b/config.json")}
    assert kvmodel.model_kv_bytes_per_token(model) == BPT
    assert kvmodel.model_kv_bytes_per_token({"source": "hub", "repo_id": "x"}) is None
    tiny = {"source": "tiny", "architecture": {"hidden_size": 512, "num_hidden_layers": 4,
                                               "num_attention_heads": 8, "num_key_value_heads": 4}}
    assert kvmodel.model_kv_bytes_per_token(tiny) == 4 * 2 * 4 * 64 * 2


def test_model_reload_is_overhead_plus_bytes_over_the_link():
    # 32768 tokens x 128 KiB = 4 GiB over 64 GB/s: 67.1 ms
    assert breakeven.transfer_ms(32768, BPT, 64) == pytest.approx(32768 * BPT / 64e9 * 1000)
    assert breakeven.model_reload_ms(32768, BPT, 64, 30.0) == pytest.approx(30.0 + 32768 * BPT / 64e6)
    # the overhead: the median of measured reload - transfer over the lengths
    medians = {n: 50.0 + breakeven.transfer_ms(n, BPT, 64) for n in LENGTHS}
    assert breakeven.fixed_overhead_ms(medians, BPT, 64) == pytest.approx(50.0)
    assert math.isnan(breakeven.fixed_overhead_ms({1024: np.nan}, BPT, 64))
    # with only the recomputes resampled (fixed_reload), the model's break-even and its interval
    rng = np.random.default_rng(0)
    model = {n: ([breakeven.model_reload_ms(n, BPT, 64, 80.0)], n / 40 + rng.normal(0, 1, 8)) for n in LENGTHS}
    be = breakeven.break_even(model, fixed_reload=True)
    assert be.status == breakeven.CROSSING and be.ci_low <= be.break_even_tokens <= be.ci_high
    assert be.n_per_length.split()[0] == "1024:1/8"


# -- the tables from synthetic restart runs ------------------------------------------------------
def _meta(arm: str, arm_config: dict, phases: dict, status: str = "ok", vllm_args=(), **kw) -> results.RunMeta:
    return results.RunMeta(status=status, platform="h200", experiment="restart", arm=arm, arm_config=arm_config,
                           params={"prefix_tokens": 1024}, accelerator={"kind": "gpu"}, versions={},
                           model={"spec": {"source": "dummy",
                                           "config_json": str(REPO / "workflow/resources/llama-3.1-8b/config.json")}},
                           server={"vllm_args": list(vllm_args)}, client={}, config_hash=None, git_commit=None, started_at="",
                           finished_at=None, phases=phases, **kw)


def restart_run(tmp_path, arm: str, arm_config: dict, *, reload_ms, recompute_ms, hits=True, counters=None,
                n: int = 4, vllm_args=()) -> str:
    """A restart run over LENGTHS, n prefixes each: populate, reload (post_restart_first) and
    recompute (post_restart_cold) with the given TTFTs (functions of the length), hits from the
    counters where ``hits`` (or ``hits(length)``); ``counters(length)``: the load counters of a reload."""
    phases, recs = {}, []
    m = _meta(arm, arm_config, phases, vllm_args=vllm_args)
    key = "vllm:external_prefix_cache_hits" if verdict.connector(m) else "vllm:prefix_cache_hits"
    for L in LENGTHS:
        for i in range(n):
            f = {"repeat": i, "prefix_tokens": L}
            for kind, ttft, c in (("populate", 2 * recompute_ms(L), {}),
                                  ("post_restart_first", reload_ms(L) + i,
                                   {key: float(L) if (hits(L) if callable(hits) else hits) else 0.0,
                                    **((counters or (lambda _: {}))(L))}),
                                  ("post_restart_cold", recompute_ms(L) + i, {})):
                name = f"{kind}_{L}_{i}"
                phases[name] = results.Phase(kind=kind, n_requests=1, wall_s=0, counters=c,
                                             after_restart=kind != "populate", **f)
                recs.append(results.RequestRecord(
                    platform="h200", experiment="restart", arm=arm, phase=name, phase_kind=kind, seq=0,
                    prompt_tokens=L + 16, cached_tokens=None, output_tokens=2, ttft_ms=ttft, itl_ms=[],
                    e2e_ms=ttft + 10, error=None, output_token_ids=[1, 2] if kind != "post_restart_cold" else [3],
                    **f))
    out = tmp_path / "h200" / "restart" / f"{arm}.jsonl"
    results.write_records(out, recs)
    results.write_meta(results.meta_path(out), m)
    return str(out)


def not_run(tmp_path, arm: str) -> str:
    out = tmp_path / "h200" / "restart" / f"{arm}.jsonl"
    results.write_records(out, [])
    results.write_meta(results.meta_path(out), _meta(arm, {"lmcache": {"mode": "server"}}, {}, status="not_run",
                                                     reason="LMCache needs CUDA"))
    return str(out)


LINKS = {"h200": {"pcie_gen5_x16": 64}}
LMCACHE_FS = {"lmcache": {"mode": "in_process", "store": "fs", "chunk_size": 256}}


@pytest.fixture
def runs(tmp_path):
    fs = restart_run(tmp_path, "lmcache_fs", LMCACHE_FS, reload_ms=lambda L: 80.0, recompute_ms=lambda L: L / 40)
    # the LMCache log is on the phase, not in its counters: add it to the written meta
    m = results.read_meta(results.meta_path(fs))
    for ph in m.phases.values():
        if ph.kind == "post_restart_first":
            ph.lmcache_log = {"retrieves": 1, "retrieve_bytes": ph.prefix_tokens * BPT,
                              "retrieve_ms": ph.prefix_tokens / 100}
    results.write_meta(results.meta_path(fs), m)
    # vLLM's own offloading (the other arms' config is not known here: its connector flag is)
    offload = restart_run(tmp_path, "vllm_offload_cpu", {"prefix_caching": True},
                          vllm_args=["--kv-transfer-config", '{"kv_connector": "OffloadingConnector"}'],
                          reload_ms=lambda L: 30.0 + L / 400, recompute_ms=lambda L: L / 40,
                          counters=lambda L: {"vllm:kv_offload_load_bytes": float(L * BPT),
                                              "vllm:kv_offload_load_time": L * BPT / 20e9})
    apc = restart_run(tmp_path, "apc", {"prefix_caching": True}, reload_ms=lambda L: L / 40,
                      recompute_ms=lambda L: L / 40, hits=False)
    return [apc, fs, offload, not_run(tmp_path, "lmcache_mp")]


def test_reload_vs_recompute_per_length_from_the_restart_runs(runs):
    t = aggregate.build("reload_vs_recompute", runs, 0.05, links_gb_s=LINKS)
    fs = t[t.arm == "lmcache_fs"].set_index("prefix_tokens")
    assert list(fs.index) == LENGTHS and (fs.link == "pcie_gen5_x16").all()
    r = fs.loc[4096]
    assert r.n_reload == r.n_recompute == 4 and r.reload_ttft_ms == pytest.approx(81.5)
    assert r.recompute_ttft_ms == pytest.approx(4096 / 40 + 1.5)
    assert r.reload_minus_recompute_ms == pytest.approx(81.5 - (4096 / 40 + 1.5))
    assert r.reload_minus_recompute_ci95_lo_ms <= r.reload_minus_recompute_ms <= r.reload_minus_recompute_ci95_hi_ms
    assert r.reload_speedup == pytest.approx((4096 / 40 + 1.5) / 81.5)
    # the verdict at this length from the counters; bytes and time from LMCache's log
    assert r.verdict == verdict.PERSISTED and r.n_prefixes == 4 and r.reload_hit_tokens == 4 * 4096
    assert r.loaded_bytes == 4 * 4096 * BPT and r.load_ms == pytest.approx(4 * 40.96)
    assert r.achieved_gb_s == pytest.approx(4096 * BPT / 0.04096 / 1e9) and r.load_source == "lmcache log: retrieve"
    assert r.kv_bytes_model == 4096 * BPT and r.model_load_ms == pytest.approx(4096 * BPT / 64e6)
    assert r.link_fraction == pytest.approx(r.achieved_gb_s / 64)
    assert r.store == "fs store of LMCache in vLLM's process"
    # vLLM's offloading: bytes and seconds from its own counters
    off = t[t.arm == "vllm_offload_cpu"].set_index("prefix_tokens").loc[8192]
    assert off.load_source == "vllm kv_offload counters: load" and off.achieved_gb_s == pytest.approx(20.0)
    # APC: the first request after the restart recomputes; the counters say so
    apc = t[t.arm == "apc"]
    assert (apc.verdict == verdict.NOT_PERSISTED).all() and apc.loaded_bytes.isna().all()
    nr = t[t.arm == "lmcache_mp"].iloc[0]
    assert nr.status == "not_run" and nr.reason == "LMCache needs CUDA" and math.isnan(nr.prefix_tokens)


def test_break_even_table_per_store_measured_and_model(runs):
    t = aggregate.build("break_even", runs, 0.05, links_gb_s=LINKS)
    fs = t[(t.arm == "lmcache_fs") & (t.estimate == "measured")].iloc[0]
    # reload 80 ms (+i), recompute L / 40 (+i): the crossing of the medians on log2 length
    assert fs.status == breakeven.CROSSING and fs.break_even_tokens == pytest.approx(2 ** (11 + 28.8 / 51.2))
    assert fs.ci_low <= fs.break_even_tokens <= fs.ci_high and fs.verdict == verdict.PERSISTED
    assert fs.n_per_length == "1024:4/4 2048:4/4 4096:4/4 8192:4/4"
    model = t[(t.arm == "lmcache_fs") & (t.estimate == "model")].iloc[0]
    assert model.link == "pcie_gen5_x16" and model.link_gb_s == 64
    # the fixed overhead: the median of reload - KV bytes / 64 GB/s over the lengths
    transfer = [breakeven.transfer_ms(L, BPT, 64) for L in LENGTHS]
    assert model.model_overhead_ms == pytest.approx(np.median([81.5 - x for x in transfer]))
    assert model.status == breakeven.CROSSING
    off = t[(t.arm == "vllm_offload_cpu") & (t.estimate == "measured")].iloc[0]
    assert off.status == breakeven.CROSSING and off.verdict == verdict.PERSISTED
    assert off.store == "vLLM's own offloading"
    # APC reloads nothing: no measured break-even, but the model beside its recomputes
    apc = t[t.arm == "apc"].set_index("estimate")
    assert apc.loc["measured", "status"] == "not persisted" and math.isnan(apc.loc["measured", "break_even_tokens"])
    assert apc.loc["model", "model_overhead_ms"] == 0.0
    nr = t[t.arm == "lmcache_mp"]
    assert len(nr) == 1 and nr.iloc[0].status == "not run" and nr.iloc[0].reason == "LMCache needs CUDA"


def test_restart_table_latency_at_the_reference_length_and_verdict_over_all(runs):
    t = aggregate.build("restart", runs, 0.05).set_index("arm")
    fs = t.loc["lmcache_fs"]
    assert fs.latency_prefix_tokens == 1024 and fs.n_lengths == 4 and fs.post_restart_first_n == 4
    assert fs.post_restart_cold_ttft_median_ms == pytest.approx(1024 / 40 + 1.5)
    assert fs.n_prefixes == 16 and fs.verdict == verdict.PERSISTED
    # the loads at the reference length: per request (median), and GB/s of their sums
    assert fs.reload_bytes == 1024 * BPT and fs.reload_ms == pytest.approx(10.24)
    assert fs.reload_bytes_per_hit_token == BPT
    assert t.loc["apc", "verdict"] == verdict.NOT_PERSISTED


def test_tables_without_any_run_are_empty_with_their_columns(tmp_path):
    for name, cols in (("reload_vs_recompute", aggregate.RELOAD_COLUMNS),
                       ("break_even", aggregate.BREAK_EVEN_COLUMNS)):
        t = aggregate.build(name, [], 0.05, links_gb_s=LINKS)
        assert t.empty and list(t.columns) == cols


# -- the config: lengths, and a store that holds every populated prefix ---------------------------
@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_restart_lengths_are_validated_and_must_fit_the_model_and_the_store(config):
    schema = REPO / "workflow/schemas/config.schema.yaml"
    validate(copy.deepcopy(config), schema)
    h200 = config["platforms"]["h200"]["experiments"]["restart"]
    assert h200["prefix_tokens_list"] == [1024, 2048, 4096, 8192, 16384, 32768]
    assert "prefix_tokens_list" not in config["experiments"]["restart"]  # CPU: prefix_tokens alone
    bad = copy.deepcopy(config)
    bad["platforms"]["h200"]["experiments"]["restart"]["n_cold"] = 10
    with pytest.raises(ConfigError, match=r"arms\.lmcache_\w+\.lmcache\.(cpu|disk)_gb"):
        validate(bad, schema)
    long = copy.deepcopy(config)
    long["platforms"]["h200"]["experiments"]["restart"]["prefix_tokens_list"] = [1024, 65536]
    with pytest.raises(ConfigError, match="max_model_len"):
        validate(long, schema)
    compat = copy.deepcopy(config)
    compat["platforms"]["h200"]["experiments"]["restart"]["compat"] = True
    with pytest.raises(ConfigError, match="compat"):
        validate(compat, schema)
    empty = copy.deepcopy(config)
    empty["experiments"]["restart"]["prefix_tokens_list"] = []
    with pytest.raises(ConfigError, match="prefix_tokens_list"):
        validate(empty, schema)


# -- the source study's break-even claim ---------------------------------------------------------
def test_the_reload_wins_claim_needs_a_store_that_reloaded():
    import pandas as pd

    from kvreuse import claims

    cited = yaml.safe_load((REPO / "workflow/resources/cited.yaml").read_text())
    cited["claims"] = [g for g in cited["claims"] if g["group"] == "s000-restart"]
    for g in cited["claims"]:
        g["claims"] = [c for c in g["claims"] if c["id"] == "s000-restart-reload-wins"]
    llama = yaml.safe_load((REPO / "workflow/resources/llama-3.1-8b/config.json").read_text())

    def rows(verdict_at_1024: str) -> pd.DataFrame:
        return pd.DataFrame([{"platform": "h100", "arm": "lmcache_disk", "prefix_tokens": n, "verdict": v,
                              "reload_minus_recompute_ms": d, "reload_minus_recompute_ci95_lo_ms": d - 5,
                              "reload_minus_recompute_ci95_hi_ms": d + 5}
                             for n, v, d in ((1024, verdict_at_1024, -40.0), (8192, verdict.PERSISTED, -400.0))])

    got = claims.table(cited, {"reload_vs_recompute": rows(verdict.PERSISTED)}, llama).iloc[0]
    assert got.verdict == "reproduced" and got.ours == -40.0  # our shortest length (the study's: ~500)
    # a first request that the counters show recomputed is no reload: the claim is not measured there
    got = claims.table(cited, {"reload_vs_recompute": rows(verdict.NOT_PERSISTED)}, llama).iloc[0]
    assert got.verdict == "not measured" and "verdict=not" not in got.reason


# -- the figures: from these tables, and from none ------------------------------------------------
FIGURE_SCRIPTS = ("restart", "break_even", "reload_vs_recompute")


def draw(tables_dir: Path, out: Path) -> list[Path]:
    """Each figure's script on the tables in ``tables_dir`` (its inputs: kvreuse.dag.figure_tables)."""
    import runpy
    from types import SimpleNamespace

    from kvreuse import dag

    made = []
    for fig in FIGURE_SCRIPTS:
        tables = [str(tables_dir / Path(t).name) for t in dag.figure_tables(fig)]
        sm = SimpleNamespace(input=SimpleNamespace(table=tables[0], tables=tables), log=[],
                             output=SimpleNamespace(pdf=str(out / f"{fig}.pdf"), png=str(out / f"{fig}.png")))
        runpy.run_path(str(REPO / f"workflow/scripts/figures/{fig}.py"), init_globals={"snakemake": sm})
        made.append(out / f"{fig}.png")
    return made


def test_figures_draw_the_runs_and_say_when_there_are_none(runs, tmp_path):
    full, empty = tmp_path / "full", tmp_path / "empty"
    for folder, files in ((full, runs), (empty, [])):
        folder.mkdir()
        for t in ("restart", "reload_vs_recompute", "break_even"):
            aggregate.build(t, files, 0.05, links_gb_s=LINKS).to_csv(folder / f"{t}.csv", index=False)
    assert all(p.stat().st_size > 0 for p in draw(full, full))
    assert all(p.stat().st_size > 0 for p in draw(empty, empty))


def test_lengths_without_a_reload_stay_out_of_the_measured_break_even(tmp_path):
    # a store that kept only the two longest lengths: the shorter ones' first requests recomputed
    # (the counters show no hit there), and their times are those of a recompute, not a reload
    run = restart_run(tmp_path, "lmcache_mp", {"lmcache": {"mode": "server", "store": "cpu", "chunk_size": 256}},
                      reload_ms=lambda L: 80.0 if L >= 4096 else L / 40, recompute_ms=lambda L: L / 40,
                      hits=lambda L: L >= 4096)
    t = aggregate.build("break_even", [run], 0.05, links_gb_s=LINKS).set_index("estimate")
    m = t.loc["measured"]
    assert m.verdict == verdict.PARTIAL and m.lengths_not_reloaded == "1024 2048"
    assert m.lengths == "4096 8192" and m.status == breakeven.BELOW  # reloading wins at both
    # the model's overhead from the reloads alone: the median of 80 + i - transfer at 4K and 8K
    transfer = [breakeven.transfer_ms(L, BPT, 64) for L in (4096, 8192)]
    assert t.loc["model", "model_overhead_ms"] == pytest.approx(np.median([81.5 - x for x in transfer]))
    per_length = aggregate.build("reload_vs_recompute", [run], 0.05, links_gb_s=LINKS).set_index("prefix_tokens")
    assert list(per_length.verdict) == [verdict.NOT_PERSISTED] * 2 + [verdict.PERSISTED] * 2


def test_lmcache_053_server_loads_from_its_chunk_and_throughput_counters():
    """LMCache 0.5.3's server counts chunks loaded and each load's L1-to-GPU GB/s (no bytes or
    seconds): bytes = chunks x chunk bytes, seconds = bytes / that throughput; its L2 reads
    have their own throughput. The committed H200 lmcache_mp_l2 restart: 32K prefixes, 128
    chunks of 256 tokens at 128 KiB per token each."""
    from kvreuse.phase_stats import SOURCE_LMCACHE_SERVER_CHUNKS, l2_load_gb_s, transfers
    m = results.read_meta(REPO / "results/raw/h200/restart/lmcache_mp_l2.meta.json")
    ph = m.phases["post_restart_first_32768_0"]
    chunk_bytes = 256 * 128 * 1024
    nbytes, secs, source = transfers([ph], "load", chunk_bytes)
    assert source == SOURCE_LMCACHE_SERVER_CHUNKS and nbytes == 128 * chunk_bytes
    gbs = ph.counters["lmcache_mp_l0_l1_load_throughput_GB_per_second_sum"]
    assert math.isclose(nbytes / secs / 1e9, gbs)
    assert 0 < l2_load_gb_s([ph]) < gbs  # the file L2 is the slow part
    assert transfers([ph], "load")[2] == ""  # without the chunk size: nothing claimed
    assert math.isnan(l2_load_gb_s(list(results.read_meta(
        REPO / "results/raw/h200/restart/lmcache_mp.meta.json").phases.values())))
