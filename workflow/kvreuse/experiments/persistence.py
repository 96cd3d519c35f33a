"""The ``restart`` experiment: whether the cache persists across a graceful server restart
and, per prefix length, whether reloading it beats recomputing (the verdict is made in
aggregation, kvreuse.verdict; reload against recompute in kvreuse.tables_reload)."""

from __future__ import annotations

from .. import schema
from ..results import phase_name
from .context import Context, n_cold, shared, store_after_stop, warmup


def restart_lengths(p: dict) -> list[int]:
    """The prefix lengths the restart experiment populates: ``prefix_tokens_list``, or (null,
    the schema's default) the one length ``prefix_tokens``."""
    lengths = schema.get(p, "experiments", "restart", "prefix_tokens_list")
    return [int(n) for n in lengths] if lengths else [int(p["prefix_tokens"])]


async def restart(c: Context, p: dict) -> None:
    """Per prefix length n (:func:`restart_lengths`) and prefix i < ``n_cold``: populate
    (``populate_<n>_<i>``), then ``n_warm`` warm requests (``warm_<n>_<i>``); graceful stop,
    the store's listing, restart; then, per length and prefix, interleaved, its first prompt
    again (``post_restart_first_<n>_<i>``: the first request on that prefix since the restart,
    the reload) and a never-seen prompt of the same length (``post_restart_cold_<n>_<i>``, the
    recompute; unless ``cold_reference`` is none); then ``n_post_restart_steady`` later requests
    on the first prefix (the first length listed, i = 0).

    Phases carry ``prefix_tokens`` (n) and ``repeat`` (i). A warm-up of never-seen prompts
    follows every server start. With ``cold_reference: fresh_apc`` (LMCache and vLLM offloading arms), each
    prefix's first prompt also goes to a fresh vLLM without the connector
    (``cold_reference_<n>_<i>``: one more start). Whether the cache persisted is decided in
    aggregation (kvreuse.verdict), from each prefix's hit counters and outputs.
    """
    srv, rec = c.servers, c.recorder
    n = n_cold(c, p)
    lengths = restart_lengths(p)
    firsts: dict[tuple[int, int], list[int]] = {}
    outputs: dict[tuple[int, int], list[int]] = {}
    steady: list[list[int]] = []
    srv.start()
    await warmup(c)
    for length in lengths:
        for i in range(n):
            # the prompts of the first length's first prefix also make the steady requests
            extra = p["n_post_restart_steady"] if not steady and i == 0 else 0
            prompts = shared(c, p, f"restart/{length}/{i}", 1 + p["n_warm"] + extra, prefix_tokens=length)
            firsts[length, i] = prompts[0]
            steady = steady or prompts[1 + p["n_warm"]:]
            fields = {"repeat": i, "prefix_tokens": length}
            (pop,) = await rec.phase(srv.target(), "populate", [prompts[0]],
                                     name=phase_name("populate", length, i), **fields)
            outputs[length, i] = pop.output_token_ids
            await rec.phase(srv.target(), "warm", prompts[1:1 + p["n_warm"]],
                            name=phase_name("warm", length, i), **fields)
    srv.stop(lmcache_server=c.restart_lmcache_server())
    if c.connector:
        store_after_stop(c)
    srv.start()
    await warmup(c, after="post_restart")
    ref = schema.get(p, "experiments", "restart", "cold_reference")
    for (length, i), first in firsts.items():
        fields = {"repeat": i, "prefix_tokens": length, "after_restart": True}
        await rec.phase(srv.target(), "post_restart_first", [first],
                        name=phase_name("post_restart_first", length, i), **fields)
        if ref != "none":  # as long as the first prompt, never seen by any cache (also in compat mode)
            fresh = c.prompts.tokens(f"restart/{length}/{i}/cold", len(first))
            await rec.phase(srv.target(), "post_restart_cold", [fresh],
                            name=phase_name("post_restart_cold", length, i), **fields)
    await rec.phase(srv.target(), "post_restart_steady", steady, after_restart=True, repeat=0,
                    prefix_tokens=lengths[0])
    if ref == "fresh_apc" and c.connector:
        srv.stop(lmcache_server=True)
        srv.start(connector=False)
        await warmup(c, after="cold_reference")
        same = []
        for (length, i), first in firsts.items():
            (ref_out,) = await rec.phase(srv.target(), "cold_reference", [first],
                                         name=phase_name("cold_reference", length, i), repeat=i,
                                         prefix_tokens=length)
            same.append(ref_out.output_token_ids == outputs[length, i] and bool(ref_out.output_token_ids))
        c.meta.output_equal_cold_reference = bool(same) and all(same)
