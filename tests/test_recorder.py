"""The phase recorder and the load generator against stand-in servers (no vLLM needed):
records, typed phases, counter deltas, failed requests, dead servers, unreadable counters."""

import asyncio
import sys

import pytest

import faultkit as fk
from kvreuse import results
from kvreuse.experiments import write_pair
from kvreuse.loadgen import BenchServe, Load
from kvreuse.recorder import ClientSettings, Recorder
from kvreuse.results import RunMeta, phase_name
from kvreuse.errors import ServerError
from kvreuse.server import HOST, ManagedProcess, free_port
from kvreuse.servers import Target

SETTINGS = ClientSettings(model="m", max_tokens=4, request_timeout_s=10)


def new_meta() -> RunMeta:
    return RunMeta(status="ok", platform="cpu", experiment="exp", arm="apc", arm_config={}, params={},
                   accelerator={}, versions={}, model={}, server={}, client={}, config_hash=None,
                   git_commit=None, started_at="2025-01-01T00:00:00+00:00", finished_at=None, phases={})


def target(base_url: str, checks: list | None = None, **kw) -> Target:
    def check(wait_s=0.0):
        if checks is not None:
            checks.append(wait_s)
    return Target(base_url, (f"{base_url}/metrics",), check=check, **kw)


def run_phases(rec: Recorder, *calls):
    """Run ``rec.phase(*args, **kw)`` for each (args, kw) in one event loop; the results."""
    async def go():
        async with rec:
            return [await rec.phase(*args, **kw) for args, kw in calls]
    return asyncio.run(go())


def test_phase_records_requests_fields_and_counter_deltas(sse_server, tmp_path):
    rec = Recorder(new_meta(), SETTINGS)
    name = phase_name("cold", 1024)
    (out,) = run_phases(rec, ((target(sse_server), "cold", [[30, 5, 3], [30, 5, 3]]),
                              {"name": name, "prefix_tokens": 1024}))
    assert [r.error for r in out] == [None, None]
    assert [(r.phase, r.phase_kind, r.seq) for r in rec.records] == [("cold_1024", "cold", 0), ("cold_1024", "cold", 1)]
    for r in rec.records:
        assert (r.platform, r.experiment, r.arm, r.source) == ("cpu", "exp", "apc", "client")
        assert r.prefix_tokens == 1024 and r.turn is None and r.request_rate is None
        assert r.prompt_tokens == 3 and r.cached_tokens == 16 and r.output_tokens == 3
        assert r.output_token_ids == [100, 101, 102] and r.prompt_tokens_sent is None
        assert r.ttft_ms >= 30 and len(r.itl_ms) == 2 and r.t_start is not None
    ph = rec.meta.phases["cold_1024"]
    assert ph.kind == "cold" and ph.n_requests == 2 and ph.prefix_tokens == 1024
    assert ph.after_restart is False and ph.lmcache_log is None and ph.bench_summary is None
    assert ph.wall_s >= 0.06
    assert ph.counters["vllm:prefix_cache_hits"] == 32 and ph.counters["vllm:prefix_cache_queries"] == 6
    assert ph.counters["vllm:external_prefix_cache_hits"] == 0  # required counters always there
    # written through the schema and read back
    out_jsonl = tmp_path / "exp/apc.jsonl"
    write_pair(out_jsonl, rec.records, rec.meta)
    assert results.read_records(out_jsonl) == rec.records
    assert results.read_meta(results.meta_path(out_jsonl)).phases == rec.meta.phases


def test_phases_keep_their_order_and_default_names(sse_server):
    rec = Recorder(new_meta(), SETTINGS)
    t = target(sse_server)
    run_phases(rec, ((t, "warmup", [[1, 1, 1]]), {}),
               ((t, "warmup", [[1, 1, 1]]), {"name": phase_name("warmup", "post_restart"), "after_restart": True}),
               ((t, "turn", [[1, 1, 1]]), {"name": phase_name("turn", 1), "turn": 1, "context_tokens": 3}))
    assert list(rec.meta.phases) == ["warmup", "warmup_post_restart", "turn_1"]
    assert rec.meta.phases["warmup_post_restart"].after_restart is True
    assert rec.meta.phases["turn_1"].turn == 1 and rec.records[-1].context_tokens == 3
    assert [p.kind for p in rec.meta.phases.values()] == ["warmup", "warmup", "turn"]


def test_failed_requests_are_recorded_and_the_server_looked_at(sse_server):
    rec, checks = Recorder(new_meta(), SETTINGS), []
    (out,) = run_phases(rec, ((target(sse_server, checks), "warm", ["too-long", [5, 1, 2], "drop"]), {}))
    errors = [r.error for r in rec.records]
    assert errors[0].startswith("HTTP 400: ") and "maximum context length" in errors[0]
    assert errors[1] is None and errors[2] is not None
    assert rec.records[0].http_status == 400 and rec.records[0].ttft_ms is None
    assert checks == [0.0, 1.0]  # a refused request: no wait; a cut connection: a moment to die
    ph = rec.meta.phases["warm"]
    assert ph.n_requests == 3 and ph.counters["vllm:prefix_cache_hits"] == 16  # one answered


def test_a_dead_server_fails_the_phase_and_keeps_nothing(sse_server):
    def dead(wait_s=0.0):
        raise ServerError("vllm died during the experiment (killed by SIGKILL)")
    rec = Recorder(new_meta(), SETTINGS)
    t = Target(sse_server, (f"{sse_server}/metrics",), check=dead)
    with pytest.raises(ServerError, match="vllm died"):
        run_phases(rec, ((t, "warm", [[1, 1, 1], "drop"]), {}))
    assert rec.meta.phases == {} and rec.records == []


def test_unreadable_counters_fail_with_the_url_optional_ones_are_skipped(sse_server):
    rec, checks = Recorder(new_meta(), SETTINGS), []
    bad = Target(sse_server, (f"{sse_server}/nowhere",), check=checks.append)
    with pytest.raises(ServerError, match=r"could not read the counters from \['http://.*/nowhere'\]: "
                                          r"HTTPStatusError"):
        run_phases(rec, ((bad, "warm", [[1, 1, 1]]), {}))
    assert checks == [1.0] and rec.meta.phases == {}
    rec = Recorder(new_meta(), SETTINGS)
    run_phases(rec, ((target(sse_server, optional_scrape_urls=(f"{sse_server}/nowhere",)), "warm", [[1, 1, 1]]), {}))
    assert rec.meta.phases["warm"].counters["vllm:prefix_cache_hits"] == 16


def test_a_phase_twice_or_of_an_unknown_kind_is_refused(sse_server):
    rec = Recorder(new_meta(), SETTINGS)
    t = target(sse_server)
    with pytest.raises(ValueError, match="phase 'warm' recorded twice in exp/apc"):
        run_phases(rec, ((t, "warm", [[1, 1, 1]]), {}), ((t, "warm", [[1, 1, 1]]), {}))
    with pytest.raises(ValueError, match="phase kind 'hot' is not one of warmup, measured"):
        run_phases(Recorder(new_meta(), SETTINGS), ((t, "hot", [[1, 1, 1]]), {"name": "hot_1"}))
    assert len(rec.records) == 1  # the refused phase sent nothing


def test_bench_serve_phase_from_the_stand_in(tmp_path, monkeypatch):
    """`vllm bench serve` (the stand-in in tests/fakevllm) against the stand-in vLLM: one record
    per request (source vllm_bench_serve), a typed phase with the rate and vLLM's summary."""
    marker = fk.new_marker()
    env = {fk.MARKER: marker, "PYTHONPATH": f"{fk.FAKEVLLM}:{fk.REPO / 'workflow'}"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # the load generator's process inherits this environment
    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--port", str(port)]
    with ManagedProcess("vllm", argv, health_url=f"http://{HOST}:{port}/health", log_path=tmp_path / "v.log",
                        env=env, startup_timeout_s=30):
        rec = Recorder(new_meta(), SETTINGS)
        bench = BenchServe(rec, tokenizer=tmp_path, log_dir=tmp_path)

        async def go():
            async with rec:
                return await bench.phase(target(f"http://{HOST}:{port}"), "rate",
                                         Load(request_rate=2, num_prompts=3, input_len=32, output_len=4),
                                         name=phase_name("rate", 2))
        summary = asyncio.run(go())
    fk.assert_none_left(marker)
    assert summary["completed"] == 3
    assert [(r.phase, r.phase_kind, r.seq, r.source, r.request_rate) for r in rec.records] == [
        ("rate_2", "rate", i, "vllm_bench_serve", 2) for i in range(3)]
    assert all(r.prompt_tokens == 32 and r.output_tokens == 4 and len(r.itl_ms) == 3 for r in rec.records)
    assert all(r.e2e_ms == pytest.approx(r.ttft_ms + sum(r.itl_ms)) for r in rec.records)
    ph = rec.meta.phases["rate_2"]
    assert ph.kind == "rate" and ph.request_rate == 2 and ph.max_concurrency is None and ph.n_requests == 3
    assert ph.bench_summary == summary and "vllm:prefix_cache_queries" in ph.counters


def test_bench_serve_failure_names_its_log(tmp_path, monkeypatch, sse_server):
    monkeypatch.setenv("PYTHONPATH", f"{fk.FAKEVLLM}:{fk.REPO / 'workflow'}")
    monkeypatch.setenv("FAKE_VLLM_BENCH", "fail")
    rec, checks = Recorder(new_meta(), SETTINGS), []
    bench = BenchServe(rec, tokenizer=tmp_path, log_dir=tmp_path)

    async def go():
        async with rec:
            await bench.phase(target(sse_server, checks), "fidelity_bench",
                              Load(request_rate="inf", num_prompts=1, input_len=8, output_len=2, max_concurrency=1))
    with pytest.raises(RuntimeError, match=r"vllm bench serve failed \(exit 1\)\.\nLast lines of .*bench_serve\.log:\n"
                                           r"(.*\n)*FAKE-VLLM-BENCH: RuntimeError: benchmark client failed on purpose"):
        asyncio.run(go())
    assert checks == [1.0] and rec.meta.phases == {} and rec.records == []
