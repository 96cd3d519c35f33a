"""multiturn_long and chunk_sweep (kvreuse.experiments.conversations) without vLLM: concurrent
conversations against the streaming test server, their records and phase; the table from
stand-in runs (an arm against its reference with a CI, per turn, chunk sizes, not run rows);
the config (chunk sizes as arms, reference arm, context check, the CPU variant)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kvreuse import aggregate, dag, experiments, results
from kvreuse.config import check, experiment_params, prompt_tokens_needed
from kvreuse.errors import ConfigError
from kvreuse.experiments.conversations import conversations
from kvreuse.recorder import ClientSettings, Recorder
from kvreuse.servers import Target
from kvreuse.tables_conversations import COLUMNS

PARAMS = {"arms": ["apc"], "history_tokens_list": [6, 12], "common_prefix_tokens": 3, "n_clients": 3,
          "turns": 2, "user_tokens": 2, "output_tokens": 3, "warmup_requests": 0}


class Prompts:
    """Token ids whose first element is the test server's first-token delay (ms)."""

    def tokens(self, name, n):
        return [20] + [7] * (n - 1) if n > 0 else []


class Servers:
    def __init__(self, url):
        self.url, self.starts = url, 0

    def start(self, *a, **kw):
        self.starts += 1

    def target(self, name="main"):
        return Target(self.url, (f"{self.url}/metrics",), check=lambda wait_s=0.0: None)


def a_meta(arm="apc", experiment="multiturn_long", params=PARAMS, arm_config=None, status="ok", platform="h200"):
    return results.RunMeta(status=status, platform=platform, experiment=experiment, arm=arm,
                           arm_config=arm_config or {}, params=params, accelerator={}, versions={}, model={},
                           server={}, client={}, config_hash=None, git_commit=None, started_at="",
                           finished_at=None, phases={}, reason=None if status == "ok" else "LMCache needs CUDA")


def test_conversations_run_concurrently_and_each_history_grows_with_its_answers(sse_server):
    rec = Recorder(a_meta(), ClientSettings(model="m", max_tokens=3, request_timeout_s=10))
    spec = SimpleNamespace(experiment="multiturn_long", params=PARAMS)
    servers = Servers(sse_server)
    c = experiments.Context(spec, SimpleNamespace(lmcache=None), servers, rec, None, Prompts())

    async def go():
        async with rec:
            await conversations(c, PARAMS)
    asyncio.run(go())

    assert servers.starts == 1
    assert [(n, p.kind, p.prefix_tokens, p.max_concurrency, p.n_requests) for n, p in rec.meta.phases.items()] == [
        ("conversations_6", "conversations", 6, 3, 6), ("conversations_12", "conversations", 12, 3, 6)]
    recs = [r for r in rec.records if r.prefix_tokens == 12]
    assert sorted((r.conversation, r.turn) for r in recs) == [(i, t) for i in range(3) for t in (1, 2)]
    assert len({r.seq for r in recs}) == 6 and all(r.error is None for r in recs)
    by = {(r.conversation, r.turn): r for r in recs}
    # turn 1: common 3 + history 12 + user 2; turn 2 adds its answer and a user message
    assert {r.context_tokens for (i, t), r in by.items() if t == 1} == {17}
    for i in range(3):
        assert by[i, 1].output_token_ids and by[i, 2].context_tokens == 17 + len(by[i, 1].output_token_ids) + 2
    # the first turns of the three conversations overlap in time (the server holds each for 20 ms)
    firsts = sorted((by[i, 1].t_start, by[i, 1].t_start + by[i, 1].e2e_ms / 1000) for i in range(3))
    assert firsts[-1][0] < firsts[0][1]
    assert rec.meta.phases["conversations_12"].counters["vllm:prefix_cache_queries"] > 0


def test_a_dead_server_fails_the_run_and_ends_every_client(sse_server):
    from kvreuse.errors import ServerError
    from kvreuse.server import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there; the counters come from sse_server
    calls = []

    def check(wait_s=0.0):
        calls.append(wait_s)
        raise ServerError("vllm exited with code 1")

    class DeadServers(Servers):
        def target(self, name="main"):
            return Target(self.url, (f"{sse_server}/metrics",), check=check)

    rec = Recorder(a_meta(), ClientSettings(model="m", max_tokens=3, request_timeout_s=10))
    c = experiments.Context(SimpleNamespace(experiment="multiturn_long", params=PARAMS), SimpleNamespace(lmcache=None),
                            DeadServers(url), rec, None, Prompts())

    async def go():
        async with rec:
            await conversations(c, PARAMS)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    with pytest.raises(ServerError, match="exited"):
        asyncio.run(go())
    assert calls and not rec.meta.phases and not rec.records  # nothing kept of a failed phase


# -- the table ------------------------------------------------------------------------------
def records(arm, ttft, *, experiment="multiturn_long", history=1000, clients=4, turns=3, platform="h200"):
    rows = []
    for i in range(clients):
        t = 100.0 + i * 0.001
        for turn in range(1, turns + 1):
            e2e = ttft + 10 * 9
            rows.append(results.RequestRecord(
                platform=platform, experiment=experiment, arm=arm, phase=f"conversations_{history}",
                phase_kind="conversations", seq=i * turns + turn - 1, prompt_tokens=history + 100 * turn,
                cached_tokens=None, output_tokens=10, ttft_ms=ttft + turn + i, itl_ms=[10.0] * 9, e2e_ms=e2e + turn + i,
                error=None, t_start=t, prefix_tokens=history, turn=turn, conversation=i,
                context_tokens=history + 100 * turn))
            t += (e2e + turn + i) / 1000
    return rows


def write_run(tmp_path, meta, recs, history=1000, counters=None):
    if meta.status == "ok":
        meta.add_phase(f"conversations_{history}", results.Phase(
            kind="conversations", n_requests=len(recs), wall_s=2.0, counters=counters or {},
            prefix_tokens=history, max_concurrency=4))
    out = tmp_path / meta.platform / meta.experiment / f"{meta.arm}.jsonl"
    experiments.write_pair(out, recs, meta)
    return str(out)


def test_multiturn_long_table_compares_each_store_with_apc_overall_and_per_turn(tmp_path):
    files = [write_run(tmp_path, a_meta("apc"), records("apc", 400.0),
                       counters={"vllm:prefix_cache_hits": 100.0, "vllm:prefix_cache_queries": 400.0}),
             write_run(tmp_path, a_meta("lmcache_cpu", arm_config={"lmcache": {"mode": "in_process"}}),
                       records("lmcache_cpu", 100.0),
                       counters={"vllm:prefix_cache_hits": 100.0, "vllm:external_prefix_cache_hits": 200.0,
                                 "vllm:prefix_cache_queries": 400.0}),
             write_run(tmp_path, a_meta("vllm_offload_cpu", status="not_run"), [])]
    t = aggregate.build("multiturn_long", files, 0.05)
    assert list(t.columns) == COLUMNS
    assert list(aggregate.build("multiturn_long", [], 0.05).columns) == COLUMNS  # no run: the header still
    overall = t[t.scope == "overall"].set_index("arm")
    assert overall.loc["apc", "n"] == 12 and overall.loc["apc", "n_conversations"] == 4
    assert np.isnan(overall.loc["apc", "ttft_saved_ms"])  # the reference is not compared with itself
    lm = overall.loc["lmcache_cpu"]
    assert lm["ttft_saved_ms"] == pytest.approx(300.0) and lm["ttft_saved_ci95_lo_ms"] > 0
    assert lm["ttft_speedup"] > 1 and lm["input_tps_gain"] > 0 and lm["input_tps_ratio_ci95_lo"] > 1
    assert lm["tpot_median_ms"] == pytest.approx(10.0) and lm["chunk_size"] == 256  # the schema's default
    assert lm["hit_tokens"] == 300 and lm["external_prefix_cache_hits"] == 200 and lm["hit_rate"] == 0.75
    assert lm["input_tps"] == pytest.approx(sum(1000 + 100 * t for t in (1, 2, 3)) * 4 / 2.0)
    assert lm["reference_arm"] == "apc" and lm["arm_label"] == "lmcache_cpu (kernels not recorded)"
    turns = t[(t.scope == "turn") & (t.arm == "lmcache_cpu")]
    assert list(turns.turn) == [1, 2, 3] and set(turns.n) == {4} and (turns.ttft_saved_ms == 300).all()
    nr = t[t.arm == "vllm_offload_cpu"].iloc[0]
    assert nr.status == "not_run" and nr.reason == "LMCache needs CUDA" and np.isnan(nr.n)


def test_what_vllm_offloading_moved_comes_from_its_counters(tmp_path):
    offload = {"vllm:external_prefix_cache_hits": 512.0, "vllm:prefix_cache_queries": 1024.0,
               "vllm:kv_offload_load_bytes": 4.0e9, "vllm:kv_offload_load_time": 0.5,
               "vllm:kv_offload_store_bytes": 8.0e9, "vllm:kv_offload_store_time": 1.0,
               "vllm:num_preemptions": 3.0, "vllm:request_queue_time_seconds_sum": 6.0,
               "vllm:request_queue_time_seconds_count": 12.0}
    files = [write_run(tmp_path, a_meta("apc"), records("apc", 400.0)),
             write_run(tmp_path, a_meta("vllm_offload_cpu", arm_config={"offload": {"tiers": ["cpu"]}}),
                       records("vllm_offload_cpu", 200.0), counters=offload)]
    r = aggregate.build("multiturn_long", files, 0.05).set_index(["arm", "scope"]).loc[("vllm_offload_cpu", "overall")]
    assert (r.kv_offload_load_bytes, r.kv_offload_store_bytes, r.loaded_bytes, r.load_ms) == (4.0e9, 8.0e9, 4.0e9, 500.0)
    assert r.load_source == "vllm kv_offload counters: load" and r.external_prefix_cache_hits == 512
    assert np.isnan(r.chunk_size) and r.arm_label == "vllm_offload_cpu" and r.ttft_saved_ms == pytest.approx(200.0)
    # what a KV cache smaller than the conversations costs: vLLM's queue and preemptions
    assert (r.preemptions, r.queue_ms_mean) == (3.0, 500.0)


def test_chunk_sweep_table_has_the_chunk_sizes_and_no_per_turn_rows(tmp_path):
    params = {**PARAMS, "arms": ["lmcache_cpu_chunk64", "lmcache_cpu"]}
    files = [write_run(tmp_path, a_meta(arm, "chunk_sweep", params, {"lmcache": {"mode": "in_process", "chunk_size": cs}}),
                       records(arm, ttft, experiment="chunk_sweep"))
             for arm, cs, ttft in (("lmcache_cpu", 256, 100.0), ("lmcache_cpu_chunk64", 64, 120.0))]
    t = aggregate.build("chunk_sweep", files, 0.05).set_index("arm")
    assert set(t.scope) == {"overall"} and t.loc["lmcache_cpu_chunk64", "chunk_size"] == 64
    assert t.loc["lmcache_cpu_chunk64", "reference_arm"] == "lmcache_cpu"  # the schema's default for chunk_sweep
    assert t.loc["lmcache_cpu_chunk64", "ttft_saved_ms"] == pytest.approx(-20.0)


# -- the config -----------------------------------------------------------------------------
def test_chunk_sizes_are_arms_that_differ_from_lmcache_cpu_in_chunk_size_only(config):
    base = config["arms"]["lmcache_cpu"]
    sweep = experiment_params(config, "h200", "chunk_sweep")
    sizes = {}
    for arm in sweep["arms"]:
        lm = config["arms"][arm]["lmcache"]
        assert {**lm, "chunk_size": base["lmcache"]["chunk_size"]} == base["lmcache"]
        sizes[arm] = lm["chunk_size"]
    assert sorted(sizes.values()) == [64, 256, 1024] and sizes[sweep["reference_arm"]] == 256
    # each chunk size is its own run with its own config hash
    hashes = {dag.run_params(config, "chunk_sweep", "h200", a)["config_hash"] for a in sweep["arms"]}
    assert len(hashes) == 3


def test_output_tokens_and_context_checks(config):
    spec = dag.run_params(config, "multiturn_long", "h200", "apc")
    assert spec["client"]["max_tokens"] == spec["params"]["output_tokens"]
    need, how = prompt_tokens_needed("multiturn_long", spec["params"], config["client"]["max_tokens"])
    p = spec["params"]
    assert need == p["common_prefix_tokens"] + max(p["history_tokens_list"]) + p["turns"] * (
        p["user_tokens"] + p["output_tokens"]) and "output_tokens" in how
    cpu = experiment_params(config, "cpu", "multiturn_long")
    assert prompt_tokens_needed("multiturn_long", cpu, 16)[0] <= config["platforms"]["cpu"]["server"]["max_model_len"]
    bad = json.loads(json.dumps(config))
    bad["platforms"]["cpu"]["experiments"]["multiturn_long"]["history_tokens_list"] = [8000]
    with pytest.raises(ConfigError, match=r"experiments.multiturn_long on platform cpu: prompts reach"):
        check(bad)
    bad = json.loads(json.dumps(config))
    bad["experiments"]["chunk_sweep"]["reference_arm"] = "apc"
    with pytest.raises(ConfigError, match=r"chunk_sweep.reference_arm on platform .*'apc' is not one of"):
        check(bad)


def test_on_the_cpu_the_stores_are_not_run_with_their_reason(config, tmp_path, repo):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "kvreuse-model.json").write_text(json.dumps({"name": "tiny-llama", "weights": "random"}))
    for exp in ("multiturn_long", "chunk_sweep"):
        for arm in experiment_params(config, "cpu", exp)["arms"]:
            if arm == "apc":
                continue
            spec = dag.run_params(config, exp, "cpu", arm)
            rs = experiments.RunSpec(**{k: v for k, v in spec.items() if k != "lmcache_dir"},
                                     model_dir=model_dir, out_jsonl=tmp_path / exp / f"{arm}.jsonl",
                                     log_dir=tmp_path / "logs" / exp / arm, repo_dir=repo,
                                     lmcache_dir=tmp_path / "lmcache")
            meta = experiments.run(rs, has_cuda=False)
            assert meta["status"] == "not_run" and "CUDA" in meta["reason"], (exp, arm, meta["reason"])


# -- the write-up ---------------------------------------------------------------------------
def conversation_tables(folder) -> dict[str, pd.DataFrame]:
    """multiturn_long and chunk_sweep tables from stand-in runs (one arm not run, its reason
    ``reason``), for the write-up's tests (also tests/test_paper_latex.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    ml = [write_run(folder, a_meta("apc"), records("apc", 400.0)),
          write_run(folder, a_meta("lmcache_cpu", arm_config={"lmcache": {"mode": "in_process"}}),
                    records("lmcache_cpu", 100.0), counters={"vllm:external_prefix_cache_hits": 200.0}),
          write_run(folder, a_meta("vllm_offload_cpu", status="not_run"), [])]
    params = {**PARAMS, "arms": ["lmcache_cpu_chunk64", "lmcache_cpu"]}
    cs = [write_run(folder, a_meta(arm, "chunk_sweep", params, {"lmcache": {"mode": "in_process", "chunk_size": size}}),
                    records(arm, ttft, experiment="chunk_sweep"))
          for arm, size, ttft in (("lmcache_cpu", 256, 100.0), ("lmcache_cpu_chunk64", 64, 120.0))]
    return {"multiturn_long": aggregate.build("multiturn_long", ml, 0.05),
            "chunk_sweep": aggregate.build("chunk_sweep", cs, 0.05)}


def test_the_write_up_says_what_the_tables_show(tmp_path, repo):
    import yaml

    from kvreuse import paper, paper_conversations

    blocks = paper_conversations.contexts(conversation_tables(tmp_path))
    assert [b["name"] for b in blocks] == ["multiturn_long", "chunk_sweep"]
    ml, cs = blocks
    (row,) = ml["rows"]
    assert (row["arm"], row["ttft"], row["tps"], row["ref_ttft_median_ms"]) == ("lmcache_cpu", "faster", "higher",
                                                                              ml["references"][0]["ttft_median_ms"])
    assert [r["arm"] for r in ml["not_run"]] == ["vllm_offload_cpu"] and ml["turns"] is not None
    assert cs["rows"][0]["ttft"] == "slower" and cs["turns"] is None
    cited = yaml.safe_load((repo / "workflow/resources/cited.yaml").read_text())
    md = paper.render(repo / "paper/conversations.md.j2", {"conversations": blocks, "cited": cited, "ci_level": 95})
    assert "**h200 / lmcache_cpu (kernels not recorded) (chunk 256) against apc" in md
    assert "**h200 / vllm_offload_cpu**: not run (LMCache needs CUDA)" in md
    assert f"TTFT median {paper.fmt(row['ttft_median_ms'])} ms against {paper.fmt(row['ref_ttft_median_ms'])} ms" in md
    empty = paper.render(repo / "paper/conversations.md.j2",
                         {"conversations": paper_conversations.contexts({"chunk_sweep": pd.DataFrame()}),
                          "cited": cited, "ci_level": 95})
    assert "Not run: the results hold no `chunk_sweep` run." in empty
