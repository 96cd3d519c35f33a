"""The experiments: workloads run against one arm's server(s), written to the results contract.

Each experiment is a small async function over a :class:`Session`, which owns the servers
(start, graceful restart, stop of the whole process group), the request loop and the
counter scrapes around each phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import metrics, models, provenance, redact
from . import plan as arm_plan
from .client import RequestResult, completion_payload, stream_completion
from .errors import ServerError
from .lmcache import flags as lmcache_flags
from .lmcache import logs as lmcache_logs
from .lmcache import store as lmcache_store
from .results_io import meta_path, write_meta, write_records
from .server import ManagedProcess, exit_on_signals, log_tail, vllm_server
from .workloads import PromptMaker, shared_prefix_prompts

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """Everything one run rule knows: where, what, with which arm, and where to write."""

    platform: str
    experiment: str
    arm_name: str
    arm: dict
    params: dict
    model_name: str
    model: dict
    model_dir: Path
    server: dict
    client: dict
    out_jsonl: Path
    log_dir: Path
    config_hash: str
    seed: int = 0
    repo_dir: Path = Path(".")
    lmcache_dir: Path | str | None = None  # the platform's LMCache store root


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Session:
    spec: RunSpec
    plan: arm_plan.ServerPlan
    records: list[dict] = field(default_factory=list)
    phases: dict[str, dict] = field(default_factory=dict)
    starts: list[dict] = field(default_factory=list)
    extra_meta: dict = field(default_factory=dict)
    vllm: ManagedProcess | None = None
    sidecar: ManagedProcess | None = None
    connected: bool = True  # the running vLLM has the arm's KV connector (False: APC only)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __post_init__(self):
        self.prompts = PromptMaker.for_model(self.spec.model_dir, self.spec.seed)
        self.client = httpx.AsyncClient(timeout=None)

    # -- servers ---------------------------------------------------------------------------
    def _start_sidecar(self) -> None:
        spec = self.plan.lmcache_server
        self.sidecar = ManagedProcess(
            "lmcache-server", spec["argv"], health_url=spec["health_url"],
            log_path=self.spec.log_dir / "lmcache-server.log", env={**self.plan.env, **spec.get("env", {})},
            startup_timeout_s=self.spec.server.get("startup_timeout_s", 600),
            stop_timeout_s=self.spec.server.get("stop_timeout_s", 30))
        self._stack.callback(self.sidecar.stop)
        self.sidecar.start()
        self.starts.append({"process": "lmcache-server", "at": now_iso(),
                            "startup_s": round(self.sidecar.startup_s, 3)})

    def start(self, *, connector: bool = True) -> None:
        """Start vLLM (and the LMCache server first); ``connector=False``: APC only, no LMCache."""
        args, env = self.plan.vllm_args, self.plan.env
        if not connector:
            args, env = lmcache_flags.apc_only(self.plan)
        elif self.plan.lmcache_server and self.sidecar is None:
            self._start_sidecar()
        self.connected = connector
        srv = self.spec.server
        self.vllm = vllm_server(self.spec.model_dir, self.spec.model_name, args,
                                log_path=self.spec.log_dir / "vllm.log", env=env,
                                startup_timeout_s=srv.get("startup_timeout_s", 600),
                                stop_timeout_s=srv.get("stop_timeout_s", 30))
        self._stack.callback(self.vllm.stop)
        self.vllm.start()
        self.starts.append({"process": "vllm", "at": now_iso(), "connector": connector,
                            "startup_s": round(self.vllm.startup_s, 3)})

    def stop(self, *, sidecar: bool = False) -> None:
        """Graceful stop (SIGINT to the group); exit codes go to the meta (-9: it was killed)."""
        stops = self.extra_meta.setdefault("stops", [])
        if self.vllm is not None and self.vllm.proc is not None:
            stops.append({"process": "vllm", "at": now_iso(), "returncode": self.vllm.stop()})
        if sidecar and self.sidecar is not None:
            stops.append({"process": "lmcache-server", "at": now_iso(),
                          "returncode": self.sidecar.stop()})
            self.sidecar = None

    def restart(self, *, sidecar: bool = False) -> None:
        """Graceful stop (SIGINT) and a fresh start; ``sidecar`` restarts the LMCache server too."""
        self.stop(sidecar=sidecar)
        self.start()

    def scrape(self, scraper: metrics.Scraper) -> dict[str, float]:
        """The counters now; a server that died in between fails the job with its log tail."""
        try:
            return scraper.scrape()
        except httpx.HTTPError as e:
            self.check_servers(wait_s=1.0)
            raise ServerError(f"could not read the counters from {scraper.urls}: "
                              f"{type(e).__name__}: {e}") from e

    def check_servers(self, wait_s: float = 0.0) -> None:
        """Fail the job (ServerError with the log tail) if vLLM (waited on up to ``wait_s``)
        or the LMCache server has died."""
        self.vllm.check_alive(wait_s=wait_s)
        if self.sidecar is not None:
            self.sidecar.check_alive()

    def scrape_urls(self) -> list[str]:
        urls = [f"{self.vllm.base_url}/metrics"]
        if self.sidecar is not None and self.plan.lmcache_server.get("metrics_url"):
            urls.append(self.plan.lmcache_server["metrics_url"])
        return urls

    def optional_scrape_urls(self) -> tuple[str, ...]:
        """LMCache's own metrics (in-process server, LMCache server): a failure to answer is
        logged, not fatal; the hit verdict rests on vLLM's counters."""
        if self.plan.lmcache is None or not self.connected:
            return ()
        urls = tuple(self.plan.lmcache.get("metrics_urls", ()))
        if self.sidecar is not None and self.plan.lmcache_server.get("metrics_url"):
            urls += (self.plan.lmcache_server["metrics_url"],)
        return urls

    # -- requests --------------------------------------------------------------------------
    async def request(self, prompt: list[int], *, phase: str, seq: int, **extra) -> RequestResult:
        c = self.spec.client
        payload = completion_payload(self.spec.model_name, prompt, c["max_tokens"],
                                     temperature=c.get("temperature", 0.0), seed=self.spec.seed)
        t_start = time.time()
        res = await stream_completion(self.client, self.vllm.base_url, payload,
                                      timeout_s=c["request_timeout_s"])
        if res.error:
            log.warning("%s/%s seq %d failed: %s", self.spec.experiment, phase, seq, res.error)
            # a dead server fails the job, a bad request does not; a connection cut short may
            # be a server on its way down, so give it a moment to be seen as dead
            self.check_servers(wait_s=0.0 if res.error.startswith("HTTP ") else 1.0)
        rec = {"platform": self.spec.platform, "experiment": self.spec.experiment,
               "arm": self.spec.arm_name, "phase": phase, "seq": seq,
               "t_start": round(t_start, 3), **extra, **res.to_dict()}
        if rec["prompt_tokens"] is None:
            rec["prompt_tokens_sent"] = len(prompt)
        self.records.append(rec)
        return res

    async def phase(self, name: str, prompts: list[list[int]], **extra) -> list[RequestResult]:
        """Send ``prompts`` one after another; keep the counter deltas of the phase."""
        scraper = metrics.Scraper(self.scrape_urls(), optional=self.optional_scrape_urls())
        before = self.scrape(scraper)
        marks = self._lmcache_log_marks()
        t0 = time.perf_counter()
        out = []
        for i, p in enumerate(prompts):
            out.append(await self.request(p, phase=name, seq=i, **extra))
        wall = time.perf_counter() - t0
        counters = metrics.delta(before, self.scrape(scraper))
        self.phases[name] = {"counters": counters, "n_requests": len(prompts),
                             "wall_s": round(wall, 3), **extra}
        if marks is not None:  # LMCache's per-request retrieve/store lines (bytes, ms)
            self.phases[name]["lmcache_log"] = lmcache_logs.log_stats(marks)
        ok = [r.ttft_ms for r in out if r.ttft_ms is not None]
        log.info("%s/%s/%s: %d requests, median TTFT %s ms, hit tokens %d", self.spec.experiment,
                 self.spec.arm_name, name, len(prompts),
                 f"{sorted(ok)[len(ok) // 2]:.1f}" if ok else "n/a", metrics.hit_tokens(counters))
        return out

    async def warmup(self, name: str = "warmup") -> None:
        """Requests with unrelated prompts, so one-time server costs stay out of the measurement
        (after a restart, ``name="warmup_post_restart"``: the same prompts again)."""
        n = self.spec.params.get("warmup_requests", 1)
        if n:
            p = self.spec.params
            await self.phase(name, [self.prompts.tokens(f"warmup/{i}", p.get("prefix_tokens", 256))
                                        + self.prompts.tokens(f"warmup/q{i}", p.get("suffix_tokens", 16))
                                        for i in range(n)])

    def _lmcache_log_marks(self) -> dict | None:
        if self.plan.lmcache is None:
            return None
        return lmcache_logs.log_marks(self.spec.log_dir)

    def shared(self, name: str, n: int, prefix_tokens: int | None = None) -> list[list[int]]:
        p = self.spec.params
        return shared_prefix_prompts(self.prompts, name=name, n=n,
                                     prefix_tokens=prefix_tokens or p["prefix_tokens"],
                                     suffix_tokens=p["suffix_tokens"], compat=p.get("compat", False))

    async def bench(self, name: str, *, request_rate: float | str, num_prompts: int,
                    input_len: int, output_len: int, max_concurrency: int | None = None) -> dict:
        """One run of vLLM's own load generator (`vllm bench serve`), as a phase.

        Its per-request TTFTs and ITLs become records; its summary goes into the phase.
        """
        scraper = metrics.Scraper(self.scrape_urls())
        before = self.scrape(scraper)
        out_dir = Path(tempfile.mkdtemp(prefix="bench-", dir=self.spec.log_dir))
        argv = [sys.executable, "-m", "kvreuse.bench_serve", "--backend", "openai",
                "--base-url", self.vllm.base_url, "--endpoint", "/v1/completions",
                "--model", self.spec.model_name, "--tokenizer", str(self.spec.model_dir),
                "--dataset-name", "random", "--random-input-len", str(input_len),
                "--random-output-len", str(output_len), "--random-range-ratio", "0",
                "--num-prompts", str(num_prompts), "--request-rate", str(request_rate),
                "--seed", str(self.spec.seed), "--ignore-eos", "--disable-tqdm",
                "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
                "--save-result", "--save-detailed", "--result-dir", str(out_dir),
                "--result-filename", "result.json"]
        if max_concurrency:
            argv += ["--max-concurrency", str(max_concurrency)]
        t0 = time.perf_counter()
        with open(self.spec.log_dir / "bench_serve.log", "ab") as logf:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=logf, stderr=logf,
                                                        start_new_session=True,
                                                        env=redact.server_environ())
            try:
                rc = await proc.wait()
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
        if rc != 0:
            self.vllm.check_alive(wait_s=1.0)  # the server's death is the cause, if it died
            bench_log = self.spec.log_dir / "bench_serve.log"
            raise RuntimeError(f"vllm bench serve failed (exit {rc}).\nLast lines of {bench_log}:\n"
                               f"{log_tail(bench_log)}")
        res = json.loads((out_dir / "result.json").read_text())
        for i, ttft in enumerate(res.get("ttfts", [])):
            itl = [x * 1000 for x in res["itls"][i]]
            err = res["errors"][i] or None
            self.records.append({
                "platform": self.spec.platform, "experiment": self.spec.experiment,
                "arm": self.spec.arm_name, "phase": name, "seq": i, "source": "vllm_bench_serve",
                "request_rate": request_rate, "prompt_tokens": res["input_lens"][i],
                "cached_tokens": None, "output_tokens": res["output_lens"][i],
                "ttft_ms": ttft * 1000 if not err else None, "itl_ms": itl,
                "e2e_ms": (ttft * 1000 + sum(itl)) if not err else None,  # derived: TTFT + ITLs
                "error": err})
        summary = {k: v for k, v in res.items() if not isinstance(v, list)}
        counters = metrics.delta(before, self.scrape(scraper))
        self.phases[name] = {"counters": counters, "n_requests": num_prompts,
                             "wall_s": round(time.perf_counter() - t0, 3), "bench_summary": summary,
                             "request_rate": request_rate, "max_concurrency": max_concurrency}
        log.info("%s/%s: bench serve rate %s: median TTFT %.1f ms, median ITL %.2f ms, %.1f output tok/s",
                 self.spec.experiment, name, request_rate, summary.get("median_ttft_ms", float("nan")),
                 summary.get("median_itl_ms", float("nan")), summary.get("output_throughput", float("nan")))
        return summary

    async def aclose(self) -> None:
        await self.client.aclose()


# -- the experiments -----------------------------------------------------------------------
async def baseline(s: Session, p: dict) -> None:
    """N sequential requests sharing one system prompt; the arm has APC off."""
    s.start()
    await s.warmup()
    await s.phase("measured", s.shared("baseline", p["n_requests"]))


async def cold_warm(s: Session, p: dict) -> None:
    """One cold request, then N warm ones sharing its prefix."""
    s.start()
    await s.warmup()
    prompts = s.shared("cold_warm", 1 + p["n_warm"])
    await s.phase("cold", prompts[:1])
    await s.phase("warm", prompts[1:])


async def restart(s: Session, p: dict) -> None:
    """Populate, warm, graceful stop, restart, then the first and later requests after it.

    Cold references: ``post_restart_cold`` (a prefix never seen, on the restarted server: no
    extra start) and, with ``cold_reference: fresh_apc``, ``cold_reference`` (the first prompt
    on a fresh vLLM without the connector: one more start). ``persisted`` comes from hit
    counters only (external hits for LMCache arms), never from time.
    """
    prompts = s.shared("restart", 1 + p["n_warm"] + p["n_post_restart_steady"])
    first, warm = prompts[0], prompts[1:1 + p["n_warm"]]
    steady = prompts[1 + p["n_warm"]:]
    lmcache = s.plan.lmcache is not None
    warmup = p.get("warmup_requests", 0)  # default 0: populate is the server's first request
    s.start()
    if warmup:
        await s.warmup()
    pop = await s.phase("populate", [first])
    await s.phase("warm", warm)
    s.stop(sidecar=s.plan.lmcache_server is not None and s.spec.arm.get("restart_lmcache_server", False))
    if lmcache:
        s.extra_meta["store_after_stop"] = lmcache_store.list_store(s.plan)
    s.start()
    if warmup:  # the warm-up prompts again (LMCache arms reload them: the load path is warm too)
        await s.warmup("warmup_post_restart")
    post = await s.phase("post_restart_first", [first])
    await s.phase("post_restart_steady", steady)
    ref = p.get("cold_reference", "unseen_prefix")
    if ref != "none":
        # as long as the first prompt, never seen by any cache (also in compat mode)
        await s.phase("post_restart_cold", [s.prompts.tokens("restart/cold_reference", len(first))])
    a, b = pop[0].output_token_ids, post[0].output_token_ids
    if ref == "fresh_apc" and lmcache:
        s.stop(sidecar=True)
        s.start(connector=False)
        (c,) = await s.phase("cold_reference", [first])
        s.extra_meta["output_equal_cold_reference"] = bool(a) and a == c.output_token_ids
    s.extra_meta["output_equal"] = bool(a) and a == b
    counters = s.phases["post_restart_first"]["counters"]
    hits = counters.get("vllm:external_prefix_cache_hits", 0.0) if lmcache else metrics.hit_tokens(counters)
    s.extra_meta["persisted_hit_tokens"] = hits
    s.extra_meta["persisted"] = hits > 0


def sweep_lengths(p: dict, server: dict, client: dict) -> list[int]:
    """The configured prefix lengths, or powers of two up to what the model's length allows."""
    limit = server["max_model_len"] - p["suffix_tokens"] - client["max_tokens"]
    lengths = p["prefix_tokens_list"]
    if lengths == "auto":
        lengths, n = [], p.get("min_prefix_tokens", 128)
        while n <= limit:
            lengths.append(n)
            n *= 2
    return list(lengths)


async def prefix_sweep(s: Session, p: dict) -> None:
    """Per prefix length: a truly cold request (a prefix not seen before), then warm ones.

    LMCache arms (``post_restart_reload``): then a graceful restart and, per length,
    ``reload_<n>`` (the cold prompt again: loaded from the store, bytes and time from LMCache)
    and ``recompute_<n>`` (a prefix never seen: prefilled) on the restarted server.
    """
    s.start()
    await s.warmup()
    lengths = sweep_lengths(p, s.spec.server, s.spec.client)
    cold = {}
    for length in lengths:
        prompts = s.shared(f"sweep/{length}", 1 + p["n_warm"], prefix_tokens=length)
        cold[length] = prompts[0]
        await s.phase(f"cold_{length}", prompts[:1], prefix_tokens=length)
        await s.phase(f"warm_{length}", prompts[1:], prefix_tokens=length)
    if s.plan.lmcache is None or not p.get("post_restart_reload", True):
        return
    s.stop(sidecar=s.plan.lmcache_server is not None and s.spec.arm.get("restart_lmcache_server", False))
    s.extra_meta["store_after_stop"] = lmcache_store.list_store(s.plan)
    s.start()
    # one-time costs of the new process and of its first load stay out of the sweep: the
    # warm-up prompts again (reloaded, as they were stored before the restart)
    await s.warmup("warmup_post_restart")
    for length in lengths:
        await s.phase(f"reload_{length}", [cold[length]], prefix_tokens=length)
        fresh = s.prompts.tokens(f"sweep/{length}/recompute", len(cold[length]))
        await s.phase(f"recompute_{length}", [fresh], prefix_tokens=length)


async def multiturn(s: Session, p: dict) -> None:
    """A chat whose history grows each turn with the model's own answers (token ids)."""
    s.start()
    await s.warmup()
    history = s.prompts.tokens("multiturn/system", p["system_tokens"])
    for turn in range(1, p["turns"] + 1):
        history = history + s.prompts.tokens(f"multiturn/user{turn}", p["user_tokens"])
        (res,) = await s.phase(f"turn_{turn}", [history], turn=turn, context_tokens=len(history))
        history = history + res.output_token_ids


async def serving(s: Session, p: dict) -> None:
    """Serving baseline with vLLM's own load generator at each request rate, plus the
    fidelity workload: the same sizes through our client and through `vllm bench serve`,
    one request at a time, beside the server's own TTFT histogram."""
    s.start()
    await s.warmup()
    n = p.get("fidelity_requests", 0)
    if n:
        out_len = s.spec.client["max_tokens"]
        await s.phase("fidelity_client", [s.prompts.tokens(f"fidelity/{i}", p["input_len"]) for i in range(n)])
        await s.bench("fidelity_bench", request_rate="inf", max_concurrency=1, num_prompts=n,
                      input_len=p["input_len"], output_len=out_len)
    for rate in p["request_rates"]:
        await s.bench(f"rate_{rate}", request_rate=rate, num_prompts=p["num_prompts"],
                      input_len=p["input_len"], output_len=p["output_len"])


async def random_overhead(s: Session, p: dict) -> None:
    """The studies' "random prompts" test: a short fixed system prompt plus a unique
    mini-context per request, so nearly nothing is reusable. The prompts depend only on the
    seed, so every arm (APC only, APC + LMCache) gets the very same requests."""
    s.start()
    await s.warmup()
    system = s.prompts.tokens("random_overhead/system", p["system_tokens"])
    for rep in range(p["repeats"]):
        await s.phase(f"repeat_{rep}", [system + s.prompts.tokens(f"random_overhead/r{rep}/{i}", p["context_tokens"])
                                        for i in range(p["n_requests"])], repeat=rep)


EXPERIMENTS: dict[str, Callable[[Session, dict], Awaitable[None]]] = {
    "baseline": baseline, "cold_warm": cold_warm, "restart": restart,
    "prefix_sweep": prefix_sweep, "multiturn": multiturn,
    "serving": serving, "random_overhead": random_overhead,
}


def base_meta(spec: RunSpec, plan: arm_plan.ServerPlan) -> dict:
    model_manifest = models.read_manifest(spec.model_dir)
    return {
        "status": "ok", "platform": spec.platform, "experiment": spec.experiment,
        "arm": spec.arm_name, "arm_config": spec.arm, "params": spec.params,
        "accelerator": provenance.accelerator(), "versions": provenance.versions(),
        "model": {k: v for k, v in model_manifest.items() if k != "files"} | {"spec": spec.model},
        "server": {"vllm_args": plan.vllm_args, "env": redact.env_for_record(plan.env),
                   "lmcache_config": plan.lmcache_config,
                   "lmcache_server": plan.lmcache_server and plan.lmcache_server.get("argv"),
                   "notes": plan.notes},
        "client": spec.client, "config_hash": spec.config_hash,
        "git_commit": provenance.git_commit(spec.repo_dir), "started_at": now_iso(),
        "finished_at": None, "phases": {},
    }


def run(spec: RunSpec, has_cuda: bool | None = None) -> dict:
    """Run one experiment for one arm and write its JSONL and meta; returns the meta."""
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    plan = arm_plan.plan(spec.arm_name, spec.arm, server=spec.server, model=spec.model,
                         run_dir=spec.log_dir, has_cuda=has_cuda,
                         store_root=spec.lmcache_dir and Path(spec.lmcache_dir) / spec.experiment)
    meta = base_meta(spec, plan)
    if plan.not_run_reason:
        log.warning("%s/%s on %s not run: %s", spec.experiment, spec.arm_name, spec.platform,
                    plan.not_run_reason)
        meta.update(status="not_run", reason=plan.not_run_reason, finished_at=now_iso())
        write_pair(spec.out_jsonl, [], meta)
        return meta

    session = Session(spec, plan)

    async def main():
        try:
            await EXPERIMENTS[spec.experiment](session, spec.params)
        finally:
            await session.aclose()

    with exit_on_signals(), session._stack:
        asyncio.run(main())
    if plan.lmcache is not None:  # kernels loaded or fallback, bytes per token, store cleanup
        meta["lmcache"] = lmcache_logs.finish(plan, spec.log_dir, spec.model_dir)
    meta.update(finished_at=now_iso(), phases=session.phases, server_starts=session.starts,
                n_requests=len(session.records),
                n_errors=sum(1 for r in session.records if r["error"]), **session.extra_meta)
    meta["server"]["starts"] = len([x for x in session.starts if x["process"] == "vllm"])
    write_pair(spec.out_jsonl, session.records, meta)
    return meta


def write_pair(out_jsonl: Path, records: list[dict], meta: dict) -> None:
    """Records, then meta, secrets scrubbed: a complete pair, or (on any failure) neither."""
    secrets = redact.secret_values()
    try:
        write_records(out_jsonl, redact.scrub(records, secrets))
        write_meta(meta_path(out_jsonl), redact.scrub(meta, secrets))
    except BaseException:
        Path(out_jsonl).unlink(missing_ok=True)
        meta_path(out_jsonl).unlink(missing_ok=True)
        raise
