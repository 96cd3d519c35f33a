"""The ``remote`` experiment: LMCache's remote stores (Redis, LMCache's own remote server; an
arm with ``lmcache.store`` redis or lm_server), cache hit against cache miss at one prompt
length (source study 002's "remote storage backend" table, at 20K tokens). The remote store
outlives vLLM's restart, so after it a hit can only come from the store; whether it did is read
from the counters in aggregation (kvreuse.tables_remote), never from time."""

from __future__ import annotations

import time
from pathlib import Path

from .. import remote_store
from ..errors import ConfigError
from ..results import phase_name
from ..servers import MAIN, process_label
from .context import Context, n_cold, warmup

HIT, MISS, POPULATE = "remote_hit", "remote_miss", "populate"


def prompts(c: Context, p: dict) -> list[list[int]]:
    """The ``n_cold`` prompts populated before the restart: each a never-seen prefix of
    ``prefix_tokens`` and a suffix of ``suffix_tokens``."""
    return [c.prompts.tokens(f"remote/{i}/prefix", p["prefix_tokens"])
            + c.prompts.tokens(f"remote/{i}/q", p["suffix_tokens"]) for i in range(n_cold(c, p))]


async def remote(c: Context, p: dict) -> None:
    """vLLM starts (the remote store before it), a warm-up, then ``populate_<i>`` for each of
    the ``n_cold`` prompts (LMCache stores their KV in the remote store); graceful stop of vLLM
    alone and a fresh start (the remote store keeps running; vLLM's GPU cache and LMCache's CPU
    buffer are gone), a warm-up of never-seen prompts; then per prompt i, interleaved,
    ``remote_hit_<i>`` (the populated prompt again: its KV can only come from the remote store)
    and ``remote_miss_<i>`` (a never-seen prompt of the same length). Phases carry
    ``prefix_tokens`` and ``repeat`` = i. Before the stop, LMCache's writes in flight are waited
    for (kvreuse.remote_store.settled_puts: LMCache does not wait for them when vLLM stops), a
    Redis store's key count is polled until it stops changing (settled_keys), and a store that
    LMCache never reached fails the run (check_reached). After the restart, every measured
    request waits for LMCache's remote writes to land first (:func:`settle`; the waits in
    ``store_after_stop["settle_wait_s"]``), and the lookups that timed out are counted from vLLM's
    log (``lookup_timeouts_after_restart``: each one a hit served as a miss). The meta's ``store_after_stop``
    records the writes in flight, the key counts before and after the stop, and the store
    process's resident memory before the populated prompts and before the stop (what it
    received, by its own side: kvreuse.remote_store.rss_bytes)."""
    if c.plan.remote_store is None:
        raise ConfigError(f"experiments.remote: arm {c.spec.arm_name!r} has no remote store (allowed: "
                          f"arms with lmcache.store redis or lm_server)")
    srv, rec = c.servers, c.recorder
    populate = prompts(c, p)
    length = p["prefix_tokens"]
    c.meta.params = {**c.meta.params, "n_cold": n_cold(c, p)}
    vllm_log = Path(c.spec.log_dir) / f"{process_label(MAIN)}.log"
    log_start = remote_store.log_size(vllm_log)  # this run's part of the log begins here
    srv.start()
    await warmup(c)
    held_before = srv.remote_store_rss_bytes()  # the store's memory before the populated prompts
    for i, prompt in enumerate(populate):
        await rec.phase(srv.target(), POPULATE, [prompt], name=phase_name(POPULATE, i),
                        prefix_tokens=length, repeat=i)
    puts = remote_store.settled_puts(lmcache_metrics(c))  # LMCache's writes landed
    settled = remote_store.settled_keys(c.plan.remote_store)  # Redis: its writes have landed
    remote_store.check_reached(c.plan.remote_store, settled, vllm_log, since=log_start)
    held = srv.remote_store_rss_bytes()
    srv.stop()  # vLLM only: the remote store, and what it holds, stay
    c.meta.store_after_stop = {"remote_store": c.plan.remote_store["kind"], "put_tasks_before_stop": puts,
                               "keys_before_stop": settled, "store_rss_bytes_before_populate": held_before,
                               "store_rss_bytes_before_stop": held,
                               "keys_after_stop": remote_store.settled_keys(c.plan.remote_store, limit_s=0)}
    restarted_at = remote_store.log_size(vllm_log)  # the restarted vLLM's part of the log
    srv.start()
    await warmup(c, after="post_restart")
    waits = c.meta.store_after_stop["settle_wait_s"] = {}
    for i, prompt in enumerate(populate):
        fields = {"prefix_tokens": length, "repeat": i, "after_restart": True}
        waits[phase_name(HIT, i)] = settle(c)
        await rec.phase(srv.target(), HIT, [prompt], name=phase_name(HIT, i), **fields)
        fresh = c.prompts.tokens(f"remote/{i}/miss", len(prompt))  # never seen by vLLM or the store
        waits[phase_name(MISS, i)] = settle(c)
        await rec.phase(srv.target(), MISS, [fresh], name=phase_name(MISS, i), **fields)
    c.meta.store_after_stop["lookup_timeouts_after_restart"] = remote_store.lookup_timeouts(vllm_log, since=restarted_at)


def settle(c: Context) -> float:
    """Wait until LMCache's writes to the remote store in flight have landed (settled_puts) and
    return how long that took (s). A measured request goes out only then: LMCache 0.5.3's
    ``lm://`` connector sends its lookups (EXIST) on the socket and event loop that carry its
    puts (v1/storage_backend/connector/lm_connector.py), so a hit's lookup sent behind the
    previous miss's 2.4 GB of puts outlasts the scheduler's lookup timeout (``lookup_timeout_ms``,
    3 s) and counts as a miss: lease 5's LMCache-server arm got no hit that way."""
    started = time.monotonic()
    remote_store.settled_puts(lmcache_metrics(c))
    return round(time.monotonic() - started, 3)


def lmcache_metrics(c: Context) -> list[str]:
    """The arm's LMCache metrics URLs (where its gauge of remote writes in flight is served)."""
    return (c.plan.lmcache or {}).get("metrics_urls", [])
