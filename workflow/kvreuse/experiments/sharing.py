"""The ``cross_instance`` experiment: two vLLM instances (on one GPU, or each on its own GPUs of
the host: ``instance_devices``) share one LMCache server (an arm with ``lmcache.mode: server``);
does instance B reuse the KV cache that instance A stored? Hits are read from B's counters in
aggregation (kvreuse.tables_cross_instance), never from time."""

from __future__ import annotations

import logging
import math

from .. import schema
from ..config import instance_devices
from ..errors import ConfigError
from ..lmcache import settings as lmcache_settings
from ..lmcache.store import GIB, model_kv_bytes_per_token
from ..results import phase_name
from .context import Context, gpu_memory_utilization, n_cold, warmup, warmup_sizes

log = logging.getLogger(__package__)

#: the two vLLM instances (process labels vllm-a and vllm-b, logs vllm-a.log and vllm-b.log)
INSTANCE_A, INSTANCE_B = "a", "b"
#: the warm-up after B's start (phase ``warmup_instance_b``, its own never-seen prompts)
AFTER_B = "instance_b"


def prompts(c: Context, p: dict) -> dict[tuple[int, int], list[int]]:
    """(prefix length, i) -> the prompt A populates: a never-seen prefix of that length and its
    suffix, for each length of ``prefix_tokens_list`` and i < ``n_cold``, in the order both
    instances send them."""
    lengths = schema.get(p, "experiments", "cross_instance", "prefix_tokens_list")
    return {(n, i): c.prompts.tokens(f"cross_instance/{n}/{i}/prefix", n)
            + c.prompts.tokens(f"cross_instance/{n}/{i}/q", p["suffix_tokens"])
            for n in lengths for i in range(n_cold(c, p))}


def stored_tokens(prompt_lengths: list[int], chunk_size: int) -> int:
    """The tokens an LMCache server keeps for prompts of these lengths: whole chunks only."""
    return sum(n // chunk_size * chunk_size for n in prompt_lengths)


def check_l1(c: Context, prompt_lengths: list[int]) -> None:
    """The run's KV must fit in the LMCache server's memory (L1, ``cpu_gb``, up to its eviction
    watermark ``l1_eviction_watermark``) at once: an
    LRU store that fills up evicts the prefixes A stored before B reads them, and B's first
    request would then miss for want of room, not of sharing. ``prompt_lengths``: every prompt
    the server stores (A's warm-ups and populates, B's warm-ups and never-seen prefixes).
    ConfigError naming the keys, before any server starts; skipped where the model's KV size is
    unknown (logged) and for a store with a file tier (``fs``: L1 evictions go there)."""
    s = lmcache_settings.settings(c.spec.arm["lmcache"])
    if s["store"] != "cpu":
        return
    per_token = model_kv_bytes_per_token(c.spec.model_dir)
    if per_token is None:
        log.warning("cross_instance: the model's KV bytes per token are unknown (no config.json in "
                    "%s): not checked whether the run's KV fits in the LMCache server's L1", c.spec.model_dir)
        return
    tokens = stored_tokens(prompt_lengths, s["chunk_size"])
    need = tokens * per_token
    usable = s["cpu_gb"] * s["l1_eviction_watermark"]
    if need > usable * GIB:
        key = f"arms.{c.spec.arm_name}.lmcache.cpu_gb"
        raise ConfigError(
            f"experiments.cross_instance on {c.spec.platform}: the run stores {tokens:,} tokens of KV "
            f"({need / GIB:.1f} GiB at {per_token:,} bytes per token: A's prefixes and B's never-seen "
            f"ones, with the warm-ups) in the LMCache server's L1, but {key} is {s['cpu_gb']} GiB and "
            f"its LRU evicts from {s['l1_eviction_watermark']} of it ({usable:.1f} GiB): it would "
            f"evict A's prefixes before B reads them. Raise {key} to at least "
            f"{math.ceil(need / GIB / s['l1_eviction_watermark'])} (or "
            f"arms.{c.spec.arm_name}.lmcache.l1_eviction_watermark), or lower "
            f"experiments.cross_instance.n_cold or prefix_tokens_list")
    log.info("cross_instance: the run stores %.1f GiB of KV in an L1 of %s GiB (evicting from %.1f GiB)",
             need / GIB, s["cpu_gb"], usable)


async def cross_instance(c: Context, p: dict) -> None:
    """Instance A starts (with the LMCache server before it), a warm-up, then populates
    ``n_cold`` never-seen prefixes per length of ``prefix_tokens_list`` (``populate_<n>_<i>``).
    With ``stop_instance_a`` (the default) A is stopped gracefully, the LMCache server keeps
    running (and what A stored): B's times are then not shared with an idle A. Instance B
    starts, a warm-up of never-seen prompts (``warmup_instance_b``), then per length and i,
    interleaved, ``cross_first_<n>_<i>`` (A's populate prompt again: B's first request on a
    prefix that only A computed) and ``cross_cold_<n>_<i>`` (a never-seen prompt of the same
    length on B). Phases carry ``instance`` (a or b), ``prefix_tokens`` and ``repeat`` = i.

    Both instances run with the experiment's ``gpu_memory_utilization`` (kvreuse.plan), since
    they share one GPU and the LMCache server keeps the memory a stopped vLLM registered with
    it (null: the platform's, e.g. a fixed KV cache each). With ``instance_devices``, A and B
    each run on their own GPUs of the job (CUDA_VISIBLE_DEVICES; the LMCache server sees all of
    them), at a tensor parallelism of their number (kvreuse.config.server_config); the starts in
    the meta record each one's GPUs. The meta's params record the keys as
    run (defaults filled in); its ``stops`` say when A stopped. On a GPU node whose jobs share
    the GPU, A's stop releases the measurement lock until B is ready (kvreuse.gpu_share):
    another job may measure meanwhile, never while B does. Hits (B's ``vllm:external_prefix_cache_hits``, LMCache's) and whether B's outputs
    equal A's are read in aggregation."""
    if c.plan.lmcache_server is None:
        raise ConfigError(f"experiments.cross_instance: arm {c.spec.arm_name!r} has no LMCache server "
                          f"to share (allowed: arms with lmcache.mode 'server')")
    srv, rec = c.servers, c.recorder
    populate = prompts(c, p)
    stop_a = schema.get(p, "experiments", "cross_instance", "stop_instance_a")
    devices = instance_devices(p, "cross_instance") or {}  # per instance its GPUs; none: the job's
    n_warmups = schema.get(p, "experiments", "cross_instance", "warmup_requests")
    prompt_lengths = [len(x) for x in populate.values()] * 2 + [sum(warmup_sizes(p))] * n_warmups * 2
    check_l1(c, prompt_lengths)
    c.meta.params = {**c.meta.params, "n_cold": n_cold(c, p), "stop_instance_a": stop_a,
                     "prefix_tokens_list": list(dict.fromkeys(n for n, _ in populate)),
                     "gpu_memory_utilization": gpu_memory_utilization(c.spec),
                     "instance_devices": devices or None}

    srv.start(INSTANCE_A, devices=devices.get(INSTANCE_A))
    await warmup(c, instance=INSTANCE_A)
    for (n, i), prompt in populate.items():
        await rec.phase(srv.target(INSTANCE_A), "populate", [prompt], name=phase_name("populate", n, i),
                        prefix_tokens=n, repeat=i, instance=INSTANCE_A)
    if stop_a:
        srv.stop(INSTANCE_A)  # graceful; the LMCache server and what A stored stay
    srv.start(INSTANCE_B, devices=devices.get(INSTANCE_B))
    await warmup(c, after=AFTER_B, instance=INSTANCE_B)
    for (n, i), prompt in populate.items():
        fields = {"prefix_tokens": n, "repeat": i, "instance": INSTANCE_B}
        await rec.phase(srv.target(INSTANCE_B), "cross_first", [prompt], name=phase_name("cross_first", n, i),
                        **fields)
        fresh = c.prompts.tokens(f"cross_instance/{n}/{i}/cold", len(prompt))  # never seen by A, B or the store
        await rec.phase(srv.target(INSTANCE_B), "cross_cold", [fresh], name=phase_name("cross_cold", n, i),
                        **fields)
