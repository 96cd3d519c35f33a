"""The ``prefix_sweep`` experiment over prefix lengths (``sweep_lengths``), with the
reload-vs-recompute pairs after a restart for LMCache arms."""

from __future__ import annotations

from .. import schema
from ..results import phase_name
from .context import Context, n_cold, shared, store_after_stop, warmup


def sweep_lengths(p: dict, server: dict, client: dict) -> list[int]:
    """The configured prefix lengths, or powers of two up to what the model's length allows."""
    limit = server["max_model_len"] - p["suffix_tokens"] - client["max_tokens"]
    lengths = p["prefix_tokens_list"]
    if lengths == "auto":
        lengths, n = [], schema.get(p, "experiments", "prefix_sweep", "min_prefix_tokens")
        while n <= limit:
            lengths.append(n)
            n *= 2
    return list(lengths)


async def prefix_sweep(c: Context, p: dict) -> None:
    """Per prefix length, ``n_cold`` never-seen prefixes, each a cold request followed by its
    ``n_warm`` warm ones (``cold_<n>_<i>``, ``warm_<n>_<i>``; ``repeat`` = i).

    Arms with a connector (LMCache, vLLM's offloading; ``post_restart_reload``): then a
    graceful restart, a warm-up of never-seen prompts and, per length and prefix i,
    interleaved, ``reload_<n>_<i>`` (cold prompt i again: loaded from the store, bytes and time
    from the store's own account) and ``recompute_<n>_<i>`` (a prefix never seen: prefilled),
    a pair of the same server run that aggregation compares by i.
    """
    srv, rec = c.servers, c.recorder
    srv.start()
    await warmup(c)
    lengths = sweep_lengths(p, c.spec.server, c.spec.client)
    cold = {}
    for n in lengths:
        for i in range(n_cold(c, p)):
            prompts = shared(c, p, f"sweep/{n}/{i}", 1 + p["n_warm"], prefix_tokens=n)
            cold[n, i] = prompts[0]
            await rec.phase(srv.target(), "cold", prompts[:1], name=phase_name("cold", n, i), prefix_tokens=n,
                            repeat=i)
            await rec.phase(srv.target(), "warm", prompts[1:], name=phase_name("warm", n, i), prefix_tokens=n,
                            repeat=i)
    if not c.connector or not schema.get(p, "experiments", "prefix_sweep", "post_restart_reload"):
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
