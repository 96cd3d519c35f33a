"""The experiments: workloads run against one arm's server(s), written to the results schema.

Each experiment is one async function over a :class:`Context`: its
:class:`~kvreuse.servers.Servers` (start, graceful restart, stop), its
:class:`~kvreuse.recorder.Recorder` (requests through the streaming client, counter deltas,
typed phases in a :class:`~kvreuse.results.RunMeta`) and its load generator
(:class:`~kvreuse.loadgen.BenchServe`). Adding an experiment is one such function and an entry
in :data:`EXPERIMENTS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import alternating, models, provenance, redact
from .lmcache import logs as lmcache_logs
from .lmcache import store as lmcache_store
from .plan import ServerPlan
from .plan import plan as make_plan
from .loadgen import BenchServe, Load
from .recorder import ClientSettings, Recorder
from .results import (RequestRecord, RunMeta, meta_path, phase_name, read_meta, write_meta,
                      write_records)
from .server import exit_on_signals
from .servers import Servers, now_iso
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


@dataclass
class Context:
    """What an experiment works with: the run's spec and plan, servers, recorder, load generator."""

    spec: RunSpec
    plan: ServerPlan
    servers: Servers
    recorder: Recorder
    loadgen: BenchServe | None
    prompts: PromptMaker

    @property
    def meta(self) -> RunMeta:
        return self.recorder.meta

    @property
    def lmcache(self) -> bool:
        return self.plan.lmcache is not None

    def restart_lmcache_server(self) -> bool:
        """Whether a restart stops the LMCache server too (the arm's ``restart_lmcache_server``)."""
        return self.plan.lmcache_server is not None and self.spec.arm.get("restart_lmcache_server", False)


def shared(c: Context, p: dict, name: str, n: int, prefix_tokens: int | None = None) -> list[list[int]]:
    """``n`` prompts sharing one prefix (``prefix_tokens``, default the experiment's)."""
    return shared_prefix_prompts(c.prompts, name=name, n=n,
                                 prefix_tokens=prefix_tokens or p["prefix_tokens"],
                                 suffix_tokens=p["suffix_tokens"], compat=p.get("compat", False))


def n_cold(p: dict) -> int:
    """How many never-seen prefixes each cold condition is measured on (``n_cold``; runs made
    before the key measured one)."""
    return p.get("n_cold", 1)


async def warmup(c: Context, *, after: str | None = None) -> None:
    """``warmup_requests`` requests with prompts used nowhere else, right after a server start,
    so its one-time costs stay out of the measurement. ``after``: which later start this
    follows (``post_restart``, ``cold_reference``): its own never-seen prompts (a re-sent
    warm-up prompt would be reloaded from a store, and would warm that path instead), phase
    ``warmup_<after>``."""
    p = c.spec.params
    n = p.get("warmup_requests", 1)
    if n:
        tag = f"warmup/{after}" if after else "warmup"
        prompts = [c.prompts.tokens(f"{tag}/{i}", p.get("prefix_tokens", 256))
                   + c.prompts.tokens(f"{tag}/q{i}", p.get("suffix_tokens", 16)) for i in range(n)]
        await c.recorder.phase(c.servers.target(), "warmup", prompts, after_restart=after == "post_restart",
                               name=phase_name("warmup", after) if after else None)


def store_after_stop(c: Context) -> None:
    """The LMCache store's files and bytes, read while no server runs."""
    c.meta.store_after_stop = lmcache_store.list_store(c.plan)


# -- the experiments -----------------------------------------------------------------------
async def baseline(c: Context, p: dict) -> None:
    """N sequential requests sharing one system prompt; the arm has APC off."""
    c.servers.start()
    await warmup(c)
    await c.recorder.phase(c.servers.target(), "measured", shared(c, p, "baseline", p["n_requests"]))


async def cold_warm(c: Context, p: dict) -> None:
    """``n_cold`` never-seen prefixes, each as one cold request followed by its ``n_warm``
    warm ones (cold 0, warm 0, cold 1, warm 1 ...: a drift of the server hits both sides);
    phases ``cold_<i>`` and ``warm_<i>``, ``repeat`` = i."""
    c.servers.start()
    await warmup(c)
    for i in range(n_cold(p)):
        prompts = shared(c, p, f"cold_warm/{i}", 1 + p["n_warm"])
        await c.recorder.phase(c.servers.target(), "cold", prompts[:1], name=phase_name("cold", i), repeat=i)
        await c.recorder.phase(c.servers.target(), "warm", prompts[1:], name=phase_name("warm", i), repeat=i)


async def restart(c: Context, p: dict) -> None:
    """``n_cold`` prefixes populated (``populate_<i>``, then ``n_warm`` warm requests each),
    graceful stop, restart; then per prefix, interleaved, its first prompt again
    (``post_restart_first_<i>``: the first request on that prefix since the restart) and a
    never-seen prompt of the same length (``post_restart_cold_<i>``, unless ``cold_reference``
    is none); then ``n_post_restart_steady`` later requests on prefix 0.

    A warm-up of never-seen prompts follows every server start. With ``cold_reference:
    fresh_apc`` (LMCache arms), each prefix's first prompt also goes to a fresh vLLM without
    the connector (``cold_reference_<i>``: one more start). Whether the cache persisted is
    decided in aggregation (kvreuse.verdict), from each prefix's hit counters and outputs.
    """
    srv, rec = c.servers, c.recorder
    n = n_cold(p)
    firsts, outputs, steady = [], [], []
    srv.start()
    await warmup(c)
    for i in range(n):
        prompts = shared(c, p, f"restart/{i}", 1 + p["n_warm"] + (p["n_post_restart_steady"] if i == 0 else 0))
        firsts.append(prompts[0])
        steady = steady or prompts[1 + p["n_warm"]:]
        fields = {"repeat": i, "prefix_tokens": p["prefix_tokens"]}
        (pop,) = await rec.phase(srv.target(), "populate", [prompts[0]], name=phase_name("populate", i), **fields)
        outputs.append(pop.output_token_ids)
        await rec.phase(srv.target(), "warm", prompts[1:1 + p["n_warm"]], name=phase_name("warm", i), **fields)
    srv.stop(lmcache_server=c.restart_lmcache_server())
    if c.lmcache:
        store_after_stop(c)
    srv.start()
    await warmup(c, after="post_restart")
    ref = p.get("cold_reference", "unseen_prefix")
    for i, first in enumerate(firsts):
        fields = {"repeat": i, "prefix_tokens": p["prefix_tokens"], "after_restart": True}
        await rec.phase(srv.target(), "post_restart_first", [first], name=phase_name("post_restart_first", i),
                        **fields)
        if ref != "none":  # as long as the first prompt, never seen by any cache (also in compat mode)
            await rec.phase(srv.target(), "post_restart_cold", [c.prompts.tokens(f"restart/{i}/cold", len(first))],
                            name=phase_name("post_restart_cold", i), **fields)
    await rec.phase(srv.target(), "post_restart_steady", steady, after_restart=True, repeat=0,
                    prefix_tokens=p["prefix_tokens"])
    if ref == "fresh_apc" and c.lmcache:
        srv.stop(lmcache_server=True)
        srv.start(connector=False)
        await warmup(c, after="cold_reference")
        same = []
        for i, first in enumerate(firsts):
            (ref_out,) = await rec.phase(srv.target(), "cold_reference", [first], name=phase_name("cold_reference", i),
                                         repeat=i, prefix_tokens=p["prefix_tokens"])
            same.append(ref_out.output_token_ids)
        c.meta.output_equal_cold_reference = bool(same) and all(
            bool(a) and a == b for a, b in zip(same, outputs))


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


async def prefix_sweep(c: Context, p: dict) -> None:
    """Per prefix length, ``n_cold`` never-seen prefixes, each a cold request followed by its
    ``n_warm`` warm ones (``cold_<n>_<i>``, ``warm_<n>_<i>``; ``repeat`` = i).

    LMCache arms (``post_restart_reload``): then a graceful restart, a warm-up of never-seen
    prompts and, per length and prefix i, interleaved, ``reload_<n>_<i>`` (cold prompt i again:
    loaded from the store, bytes and time from LMCache) and ``recompute_<n>_<i>`` (a prefix
    never seen: prefilled), a pair of the same server run that aggregation compares by i.
    """
    srv, rec = c.servers, c.recorder
    srv.start()
    await warmup(c)
    lengths = sweep_lengths(p, c.spec.server, c.spec.client)
    cold = {}
    for n in lengths:
        for i in range(n_cold(p)):
            prompts = shared(c, p, f"sweep/{n}/{i}", 1 + p["n_warm"], prefix_tokens=n)
            cold[n, i] = prompts[0]
            await rec.phase(srv.target(), "cold", prompts[:1], name=phase_name("cold", n, i), prefix_tokens=n,
                            repeat=i)
            await rec.phase(srv.target(), "warm", prompts[1:], name=phase_name("warm", n, i), prefix_tokens=n,
                            repeat=i)
    if not c.lmcache or not p.get("post_restart_reload", True):
        return
    srv.stop(lmcache_server=c.restart_lmcache_server())
    store_after_stop(c)
    srv.start()
    await warmup(c, after="post_restart")
    for (n, i), prompt in cold.items():
        fields = {"prefix_tokens": n, "repeat": i, "after_restart": True}
        await rec.phase(srv.target(), "reload", [prompt], name=phase_name("reload", n, i), **fields)
        fresh = c.prompts.tokens(f"sweep/{n}/{i}/recompute", len(prompt))
        await rec.phase(srv.target(), "recompute", [fresh], name=phase_name("recompute", n, i), **fields)


async def multiturn(c: Context, p: dict) -> None:
    """A chat whose history grows each turn with the model's own answers (token ids)."""
    c.servers.start()
    await warmup(c)
    history = c.prompts.tokens("multiturn/system", p["system_tokens"])
    for turn in range(1, p["turns"] + 1):
        history = history + c.prompts.tokens(f"multiturn/user{turn}", p["user_tokens"])
        (res,) = await c.recorder.phase(c.servers.target(), "turn", [history], name=phase_name("turn", turn),
                                        turn=turn, context_tokens=len(history))
        history = history + res.output_token_ids


async def serving(c: Context, p: dict) -> None:
    """Serving baseline with vLLM's own load generator at each request rate, plus the
    fidelity workload: the same sizes through our client and through `vllm bench serve`,
    one request at a time, beside the server's own TTFT histogram."""
    c.servers.start()
    await warmup(c)
    n = p.get("fidelity_requests", 0)
    if n:
        await c.recorder.phase(c.servers.target(), "fidelity_client",
                               [c.prompts.tokens(f"fidelity/{i}", p["input_len"]) for i in range(n)])
        await c.loadgen.phase(c.servers.target(), "fidelity_bench",
                              Load(request_rate="inf", max_concurrency=1, num_prompts=n,
                                   input_len=p["input_len"], output_len=c.spec.client["max_tokens"]))
    for rate in p["request_rates"]:
        await c.loadgen.phase(c.servers.target(), "rate",
                              Load(request_rate=rate, num_prompts=p["num_prompts"],
                                   input_len=p["input_len"], output_len=p["output_len"]),
                              name=phase_name("rate", rate))


async def random_overhead(c: Context, p: dict, server_run: int) -> None:
    """One server run of the studies' "random prompts" test: a fresh server, one unrelated
    warm-up (not measured), then a short fixed system prompt plus a unique mini-context per
    request, so nearly nothing is reusable; then the server stops. The prompts depend only on
    the seed, so every arm and every server run gets the very same requests."""
    srv, rec = c.servers, c.recorder
    srv.start()
    n = p.get("warmup_requests", 1)
    if n:
        await rec.phase(srv.target(), "warmup",
                        [c.prompts.tokens(f"random_overhead/warmup/{i}", p["system_tokens"] + p["context_tokens"])
                         for i in range(n)],
                        name=phase_name("warmup", f"run{server_run}"), server_run=server_run)
    system = c.prompts.tokens("random_overhead/system", p["system_tokens"])
    for rep in range(p["repeats"]):
        prompts = [system + c.prompts.tokens(f"random_overhead/r{rep}/{i}", p["context_tokens"])
                   for i in range(p["n_requests"])]
        await rec.phase(srv.target(), "repeat", prompts, name=phase_name("repeat", f"run{server_run}", rep),
                        repeat=rep, server_run=server_run)
    srv.stop(lmcache_server=True)


EXPERIMENTS: dict[str, Callable[[Context, dict], Awaitable[None]]] = {
    "baseline": baseline, "cold_warm": cold_warm, "restart": restart,
    "prefix_sweep": prefix_sweep, "multiturn": multiturn, "serving": serving,
}
#: experiments run as alternating server runs (kvreuse.alternating): one server run of one arm
SERVER_RUNS: dict[str, Callable[[Context, dict, int], Awaitable[None]]] = {
    "random_overhead": random_overhead,
}


# -- one run -------------------------------------------------------------------------------
def base_meta(spec: RunSpec, plan: ServerPlan) -> RunMeta:
    model_manifest = models.read_manifest(spec.model_dir)
    return RunMeta(
        status="ok", platform=spec.platform, experiment=spec.experiment,
        arm=spec.arm_name, arm_config=spec.arm, params=spec.params,
        accelerator=provenance.accelerator(), versions=provenance.versions(),
        model={k: v for k, v in model_manifest.items() if k != "files"} | {"spec": spec.model},
        server={"vllm_args": plan.vllm_args, "env": redact.env_for_record(plan.env),
                "lmcache_config": plan.lmcache_config,
                "lmcache_server": plan.lmcache_server and plan.lmcache_server.get("argv"),
                "notes": plan.notes},
        client=spec.client, config_hash=spec.config_hash,
        git_commit=provenance.git_commit(spec.repo_dir), started_at=now_iso(), finished_at=None,
        phases={})


def arm_plan(spec: RunSpec, run_dir: Path, has_cuda: bool | None = None) -> ServerPlan:
    """The arm's servers for one run (LMCache arms: a new store folder and ports each time)."""
    return make_plan(spec.arm_name, spec.arm, server=spec.server, model=spec.model,
                     run_dir=run_dir, has_cuda=has_cuda,
                     store_root=spec.lmcache_dir and Path(spec.lmcache_dir) / spec.experiment)


def write_not_run(spec: RunSpec, meta: RunMeta, reason: str) -> dict:
    """An arm that cannot run here: an empty JSONL and a meta with status not_run and why."""
    log.warning("%s/%s on %s not run: %s", spec.experiment, spec.arm_name, spec.platform, reason)
    meta.status, meta.reason, meta.finished_at = "not_run", reason, now_iso()
    write_pair(spec.out_jsonl, [], meta)
    return meta.to_dict()


def run(spec: RunSpec, has_cuda: bool | None = None) -> dict:
    """Run one experiment for one arm and write its JSONL and meta; returns the meta (a dict).
    An alternating experiment (:data:`SERVER_RUNS`) runs its server runs for this arm alone."""
    if spec.experiment in SERVER_RUNS:
        return run_alternating([spec], spec.params.get("server_runs", 1), has_cuda)[0]
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    plan = arm_plan(spec, spec.log_dir, has_cuda)
    meta = base_meta(spec, plan)
    if plan.not_run_reason:
        return write_not_run(spec, meta, plan.not_run_reason)

    servers = Servers(plan, model_dir=spec.model_dir, model_name=spec.model_name,
                      log_dir=spec.log_dir, server=spec.server)
    recorder = Recorder(meta, ClientSettings.from_config(spec.model_name, spec.client, spec.seed),
                        lmcache_log_dir=spec.log_dir if plan.lmcache is not None else None)
    c = Context(spec, plan, servers, recorder,
                BenchServe(recorder, tokenizer=spec.model_dir, log_dir=spec.log_dir, seed=spec.seed),
                PromptMaker.for_model(spec.model_dir, spec.seed))

    async def main():
        async with recorder:
            await EXPERIMENTS[spec.experiment](c, spec.params)

    with exit_on_signals(), servers:
        asyncio.run(main())
    if plan.lmcache is not None:  # kernels loaded or fallback, bytes per token, store cleanup
        meta.lmcache = lmcache_logs.finish(plan, spec.log_dir, spec.model_dir)
    meta.finished_at = now_iso()
    meta.server_starts, meta.stops = servers.starts, servers.stops
    meta.n_requests = len(recorder.records)
    meta.n_errors = sum(1 for r in recorder.records if r.error)
    meta.server["starts"] = len([x for x in servers.starts if x["process"] == "vllm"])
    write_pair(spec.out_jsonl, recorder.records, meta)
    return meta.to_dict()


def write_pair(out_jsonl: Path, records: list[RequestRecord], meta: RunMeta) -> None:
    """Records, then meta, secrets scrubbed (checked against the schema as they are written):
    a complete pair, or (on any failure) neither."""
    secrets = redact.secret_values()
    try:
        write_records(out_jsonl, redact.scrub([dataclasses.asdict(r) for r in records], secrets))
        write_meta(meta_path(out_jsonl), redact.scrub(meta.to_dict(), secrets))
    except BaseException:
        Path(out_jsonl).unlink(missing_ok=True)
        meta_path(out_jsonl).unlink(missing_ok=True)
        raise


# -- alternating server runs (kvreuse.alternating) -------------------------------------------
@dataclass
class ArmRuns:
    """One arm of an alternating comparison: its spec, meta and recorder across its server
    runs, each a fresh :class:`Servers` (and, for LMCache arms, a fresh store) in
    ``log_dir/run<i>``."""

    spec: RunSpec
    plan: ServerPlan            # the first server run's (the meta's server block is this one's)
    recorder: Recorder
    has_cuda: bool | None = None
    starts: list[dict] = dataclasses.field(default_factory=list)
    stops: list[dict] = dataclasses.field(default_factory=list)
    lmcache: list[dict] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.arm_name

    @property
    def meta(self) -> RunMeta:
        return self.recorder.meta

    @functools.cached_property
    def prompts(self) -> PromptMaker:
        return PromptMaker.for_model(self.spec.model_dir, self.spec.seed)

    @staticmethod
    def run_dir(spec: RunSpec, server_run: int) -> Path:
        return spec.log_dir / f"run{server_run}"

    @contextlib.contextmanager
    def server_run(self, i: int) -> Iterator[Context]:
        """A context on fresh servers for server run ``i``; they are stopped on the way out,
        and their starts, stops and LMCache summary kept for the meta."""
        run_dir = self.run_dir(self.spec, i)
        plan = self.plan if i == 0 else arm_plan(self.spec, run_dir, self.has_cuda)
        self.recorder.lmcache_log_dir = run_dir if plan.lmcache is not None else None
        servers = Servers(plan, model_dir=self.spec.model_dir, model_name=self.spec.model_name,
                          log_dir=run_dir, server=self.spec.server)
        try:
            with servers:
                yield Context(self.spec, plan, servers, self.recorder, None, self.prompts)
        finally:
            self.starts += [{**x, "server_run": i} for x in servers.starts]
            self.stops += [{**x, "server_run": i} for x in servers.stops]
        if plan.lmcache is not None:  # kernels loaded or fallback, bytes per token, store cleanup
            self.lmcache.append({**lmcache_logs.finish(plan, run_dir, self.spec.model_dir), "server_run": i})


def prepare(specs: list[RunSpec], has_cuda: bool | None = None) -> list[ArmRuns]:
    """The arms that can run here, in the given order; an arm that cannot (its plan's
    ``not_run_reason``, e.g. LMCache without CUDA) is written now as not run, with its reason."""
    arms = []
    for spec in specs:
        run_dir = ArmRuns.run_dir(spec, 0)
        run_dir.mkdir(parents=True, exist_ok=True)
        plan = arm_plan(spec, run_dir, has_cuda)
        meta = base_meta(spec, plan)
        if plan.not_run_reason:
            write_not_run(spec, meta, plan.not_run_reason)
            continue
        meta.params = {**meta.params, "server_runs": spec.params.get("server_runs", 1)}
        recorder = Recorder(meta, ClientSettings.from_config(spec.model_name, spec.client, spec.seed))
        arms.append(ArmRuns(spec, plan, recorder, has_cuda))
    return arms


async def alternate(arms: list, server_runs: int,
                    one_run: Callable[[Context, dict, int], Awaitable[None]]) -> None:
    """``server_runs`` rounds, each arm once per round, in order (A B A B ...): ``one_run`` on a
    fresh context from each arm's ``server_run(i)``."""
    for i, arm in alternating.schedule(arms, server_runs):
        log.info("%s: server run %d of %d, arm %s", arm.spec.experiment, i + 1, server_runs, arm.name)
        with arm.server_run(i) as c:
            await one_run(c, c.spec.params, i)


def run_alternating(specs: list[RunSpec], server_runs: int, has_cuda: bool | None = None) -> list[dict]:
    """Every arm of one alternating experiment on one platform (the arms in ``specs``, the
    same experiment each): ``server_runs`` separate server runs per arm, the arms taking turns;
    each arm's JSONL and meta written at the end (arms that cannot run here: at once, as not
    run). Returns the metas (dicts) in the order of ``specs``."""
    experiment = {s.experiment for s in specs}
    if len(experiment) != 1 or next(iter(experiment)) not in SERVER_RUNS:
        raise ValueError(f"run_alternating: one experiment of {', '.join(SERVER_RUNS)} expected, "
                         f"got {', '.join(sorted(experiment)) or 'none'}")
    arms = prepare(specs, has_cuda)

    async def main():
        try:
            await alternate(arms, server_runs, SERVER_RUNS[specs[0].experiment])
        finally:
            for a in arms:
                await a.recorder.aclose()

    if arms:
        with exit_on_signals():
            asyncio.run(main())
    for a in arms:
        meta = a.meta
        meta.finished_at = now_iso()
        meta.server_starts, meta.stops = a.starts, a.stops
        meta.n_requests = len(a.recorder.records)
        meta.n_errors = sum(1 for r in a.recorder.records if r.error)
        meta.server["starts"] = len([x for x in a.starts if x["process"] == "vllm"])
        if a.lmcache:
            meta.lmcache = {**a.lmcache[0], "server_runs": a.lmcache}
        write_pair(a.spec.out_jsonl, a.recorder.records, meta)
    return [read_meta(meta_path(s.out_jsonl)).to_dict() for s in specs]
