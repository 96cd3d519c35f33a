"""Long multi-turn conversations from concurrent clients (``multiturn_long``, ``chunk_sweep``):
the shape of source study 002's benchmark (vLLM's ``benchmarks/multi_turn``, which vLLM's
wheel does not ship), with our client.

Per history length of ``history_tokens_list``, ``n_clients`` clients run at once (asyncio),
each its own conversation: a ``common_prefix_tokens`` prefix that every conversation shares,
then the conversation's own history of that length, then ``turns`` turns, each a user message
of ``user_tokens`` and the model's answer (``output_tokens``, its token ids) appended to what
the next turn sends. One phase (kind ``conversations``) per length holds every turn of every
conversation; each record carries its ``conversation``, ``turn`` and ``context_tokens``. The
counters (prefix-cache hits, external hits, offloading bytes) are read around the phase: the
conversations overlap in time, so they cannot be split per turn.
"""

from __future__ import annotations

import asyncio

from .. import schema
from ..results import phase_name
from .context import Context, warmup


def lengths(p: dict, experiment: str) -> list[int]:
    """The history lengths, in the order they run."""
    return list(schema.get(p, "experiments", experiment, "history_tokens_list"))


async def conversations(c: Context, p: dict) -> None:
    """One server start; after its warm-up, per history length, the concurrent conversations."""
    exp = c.spec.experiment
    c.servers.start()
    await warmup(c)
    common = c.prompts.tokens(f"{exp}/common", p["common_prefix_tokens"])
    for history in lengths(p, exp):
        await run_conversations(c, p, common, history)


async def run_conversations(c: Context, p: dict, common: list[int], history: int) -> None:
    """``n_clients`` conversations at once with ``history`` tokens of their own history: phase
    ``conversations_<history>`` (``prefix_tokens`` = history, ``max_concurrency`` = clients)."""
    exp, turns, n_clients = c.spec.experiment, p["turns"], p["n_clients"]
    target = c.servers.target()

    async with c.recorder.measure(target, "conversations", name=phase_name("conversations", history),
                                  prefix_tokens=history, max_concurrency=n_clients) as run:
        async def client(i: int) -> None:
            context = common + c.prompts.tokens(f"{exp}/{history}/{i}/history", history)
            for turn in range(1, turns + 1):
                context = context + c.prompts.tokens(f"{exp}/{history}/{i}/user{turn}", p["user_tokens"])
                res = await c.recorder.request(target, run, i * turns + turn - 1, context, turn=turn,
                                               conversation=i, context_tokens=len(context))
                context = context + list(res.output_token_ids)

        tasks = [asyncio.ensure_future(client(i)) for i in range(n_clients)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:  # a dead server (ServerError) or a signal: end the other clients too
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
