"""The experiments: workloads run against one arm's server(s), written to the results schema.

Each experiment is one async function over a :class:`Context`: its
:class:`~kvreuse.servers.Servers` (start, graceful restart, stop), its
:class:`~kvreuse.recorder.Recorder` (requests through the streaming client, counter deltas,
typed phases in a :class:`~kvreuse.results.RunMeta`) and its load generator
(:class:`~kvreuse.loadgen.BenchServe`). Adding an experiment is one such function and an entry
in :data:`EXPERIMENTS`.

Modules, each one job:

- :mod:`.context`: :class:`RunSpec`, :class:`Context`, the prompt helpers every experiment
  uses (``shared``, ``n_cold``, ``warmup``, ``store_after_stop``), a run's meta and files
  (``base_meta``, ``arm_plan``, ``write_not_run``, ``write_pair``).
- :mod:`.basic`: ``baseline``, ``cold_warm``, ``multiturn``.
- :mod:`.persistence`: ``restart`` (does the cache persist across a graceful restart).
- :mod:`.sweep`: ``prefix_sweep`` and its lengths (``sweep_lengths``).
- :mod:`.serving_load`: ``serving`` (vLLM's load generator, the fidelity workload).
- :mod:`.overhead`: ``random_overhead`` (one server run of the "random prompts" test).
- :mod:`.sharing`: ``cross_instance`` (two vLLM instances share one LMCache server).
- :mod:`.remote`: ``remote`` (LMCache's remote stores, Redis and its own server: hit against miss).
- :mod:`.conversations`: ``multiturn_long`` and ``chunk_sweep`` (concurrent long
  conversations, study 002's shape; one function, two configurations).
- :mod:`.pressure`: ``pressure`` (study 001's prefix_repetition on a shrunk KV cache, and a
  conversation-shaped realism run, through vLLM's load generator).
- :mod:`.miss`: ``miss`` (one server run of study 002's cache-miss overhead: prompts nothing
  can reuse, and prompts all in VRAM, per length).
- :mod:`.server_runs`: alternating server runs (:data:`SERVER_RUNS`, ``run_alternating``).

This module holds the registry :data:`EXPERIMENTS` and :func:`run` (one run of one arm), and
re-exports the names above, so ``from kvreuse.experiments import ...`` works as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .. import offload as vllm_offload
from .. import schema
from ..lmcache import logs as lmcache_logs
from ..loadgen import BenchServe
from ..recorder import ClientSettings, Recorder
from ..server import exit_on_signals
from ..servers import Servers
from ..workloads import PromptMaker
from .basic import baseline, cold_warm, multiturn
from .conversations import conversations
from .context import (Context, RunSpec, arm_plan, base_meta, finish_meta, n_cold, shared,
                      store_after_stop, warmup, write_not_run, write_pair)
from .overhead import random_overhead
from .miss import miss
from .persistence import restart
from .pressure import pressure
from .server_runs import SERVER_RUNS, ArmRuns, TimeBudgetExhausted, alternate, prepare, run_alternating
from .serving_load import serving
from .remote import remote
from .sharing import cross_instance
from .sweep import prefix_sweep, sweep_lengths

__all__ = ["EXPERIMENTS", "SERVER_RUNS", "ArmRuns", "Context", "RunSpec", "alternate", "arm_plan",
           "base_meta", "baseline", "cold_warm", "conversations", "cross_instance", "miss", "multiturn",
           "n_cold", "prefix_sweep", "prepare", "pressure", "random_overhead", "remote", "restart", "run",
           "run_alternating", "serving", "shared", "TimeBudgetExhausted",
           "store_after_stop", "sweep_lengths", "warmup", "write_not_run", "write_pair"]

EXPERIMENTS: dict[str, Callable[[Context, dict], Awaitable[None]]] = {
    "baseline": baseline, "cold_warm": cold_warm, "restart": restart,
    "prefix_sweep": prefix_sweep, "multiturn": multiturn, "serving": serving,
    "cross_instance": cross_instance, "remote": remote, "pressure": pressure,
    # study 002's long multi-turn workload: APC against the stores, and LMCache's chunk sizes
    "multiturn_long": conversations, "chunk_sweep": conversations,
}


def run(spec: RunSpec, has_cuda: bool | None = None) -> dict:
    """Run one experiment for one arm and write its JSONL and meta; returns the meta (a dict).
    An alternating experiment (:data:`SERVER_RUNS`) runs its server runs for this arm alone."""
    if spec.experiment in SERVER_RUNS:
        runs = schema.get(spec.params, "experiments", spec.experiment, "server_runs")
        return run_alternating([spec], runs, has_cuda)[0]
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
    if plan.offload is not None:  # tiers, store folder, bytes per token, store cleanup
        meta.offload = vllm_offload.finish(plan, spec.model_dir)
    finish_meta(meta, recorder.records, servers.starts, servers.stops, servers.lock.as_meta())
    write_pair(spec.out_jsonl, recorder.records, meta)
    return meta.to_dict()
