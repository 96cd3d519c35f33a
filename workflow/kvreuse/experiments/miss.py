"""The ``miss`` experiment: study 002's cache-miss overhead, one server run (run as alternating
server runs, kvreuse.experiments.server_runs).

Per prompt length of ``prompt_tokens_list``: ``n_requests`` prompts that nothing can reuse
(phase kind ``miss``: each a never-seen random text, so every arm computes all of it and an
offloading arm stores it as well), then the "all hits in VRAM" case: ``hit_prompts`` prompts
sent once (``populate``) and then ``n_requests`` times in turn (``vram_hit``), so APC serves
them from GPU memory in every arm and an offloading arm only adds its lookup. The prompts depend
on the seed and the length alone, so every arm and server run sends the very same requests;
aggregation pairs them by ``seq`` (kvreuse.tables_miss).
"""

from __future__ import annotations

from .. import schema
from ..results import phase_name
from .context import Context

EXPERIMENT = "miss"


def hit_prompt_index(seq: int, hit_prompts: int) -> int:
    """Which of the populated prompts the ``seq``-th ``vram_hit`` request sends (in turn)."""
    return seq % hit_prompts


async def miss(c: Context, p: dict, server_run: int) -> None:
    """A fresh server, one unrelated warm-up (not measured), the miss and the VRAM-hit phases
    per length, then the server stops."""
    srv, rec = c.servers, c.recorder
    srv.start()
    n_warm = schema.get(p, "experiments", EXPERIMENT, "warmup_requests")
    lengths = p["prompt_tokens_list"]
    if n_warm:
        await rec.phase(srv.target(), "warmup",
                        [c.prompts.tokens(f"miss/warmup/run{server_run}/{i}", min(lengths)) for i in range(n_warm)],
                        name=phase_name("warmup", f"run{server_run}"), server_run=server_run)
    hit_n = schema.get(p, "experiments", EXPERIMENT, "hit_prompts")
    for n in lengths:
        await rec.phase(srv.target(), "miss",
                        [c.prompts.tokens(f"miss/{n}/{i}", n) for i in range(p["n_requests"])],
                        name=phase_name("miss", n, f"run{server_run}"), prefix_tokens=n, server_run=server_run)
        hits = [c.prompts.tokens(f"miss/hit/{n}/{j}", n) for j in range(hit_n)]
        await rec.phase(srv.target(), "populate", hits, name=phase_name("populate", n, f"run{server_run}"),
                        prefix_tokens=n, server_run=server_run)
        await rec.phase(srv.target(), "vram_hit",
                        [hits[hit_prompt_index(i, hit_n)] for i in range(p["n_requests"])],
                        name=phase_name("vram_hit", n, f"run{server_run}"), prefix_tokens=n, server_run=server_run)
    srv.stop(lmcache_server=True)
