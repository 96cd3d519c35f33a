"""The ``random_overhead`` experiment: one server run of the studies' "random prompts" test
(run as alternating server runs, kvreuse.experiments.server_runs)."""

from __future__ import annotations

from .. import schema
from ..results import phase_name
from .context import Context


async def random_overhead(c: Context, p: dict, server_run: int) -> None:
    """One server run of the studies' "random prompts" test: a fresh server, one unrelated
    warm-up (not measured), then a short fixed system prompt plus a unique mini-context per
    request, so nearly nothing is reusable; then the server stops. The prompts depend only on
    the seed, so every arm and every server run gets the very same requests."""
    srv, rec = c.servers, c.recorder
    srv.start()
    n = schema.get(p, "experiments", "random_overhead", "warmup_requests")
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
