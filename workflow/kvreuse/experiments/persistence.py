"""The ``restart`` experiment: whether the cache persists across a graceful server restart
(the verdict is made in aggregation, kvreuse.verdict)."""

from __future__ import annotations

from .. import schema
from ..results import phase_name
from .context import Context, n_cold, shared, store_after_stop, warmup


async def restart(c: Context, p: dict) -> None:
    """``n_cold`` prefixes populated (``populate_<i>``, then ``n_warm`` warm requests each),
    graceful stop, restart; then per prefix, interleaved, its first prompt again
    (``post_restart_first_<i>``: the first request on that prefix since the restart) and a
    never-seen prompt of the same length (``post_restart_cold_<i>``, unless ``cold_reference``
    is none); then ``n_post_restart_steady`` later requests on prefix 0.

    A warm-up of never-seen prompts follows every server start. With ``cold_reference:
    fresh_apc`` (LMCache arms), each prefix's first prompt also goes to a fresh vLLM without
    the connector (``cold_reference_<i>``: one more start; LMCache and vLLM offloading arms). Whether the cache persisted is
    decided in aggregation (kvreuse.verdict), from each prefix's hit counters and outputs.
    """
    srv, rec = c.servers, c.recorder
    n = n_cold(c, p)
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
    if c.connector:
        store_after_stop(c)
    srv.start()
    await warmup(c, after="post_restart")
    ref = schema.get(p, "experiments", "restart", "cold_reference")
    for i, first in enumerate(firsts):
        fields = {"repeat": i, "prefix_tokens": p["prefix_tokens"], "after_restart": True}
        await rec.phase(srv.target(), "post_restart_first", [first], name=phase_name("post_restart_first", i),
                        **fields)
        if ref != "none":  # as long as the first prompt, never seen by any cache (also in compat mode)
            await rec.phase(srv.target(), "post_restart_cold", [c.prompts.tokens(f"restart/{i}/cold", len(first))],
                            name=phase_name("post_restart_cold", i), **fields)
    await rec.phase(srv.target(), "post_restart_steady", steady, after_restart=True, repeat=0,
                    prefix_tokens=p["prefix_tokens"])
    if ref == "fresh_apc" and c.connector:
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
