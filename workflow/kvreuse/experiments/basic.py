"""The experiments on one server start: ``baseline`` (APC off), ``cold_warm`` (cold then warm
requests per never-seen prefix) and ``multiturn`` (a chat whose history grows)."""

from __future__ import annotations

from ..results import phase_name
from .context import Context, n_cold, shared, warmup


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
    for i in range(n_cold(c, p)):
        prompts = shared(c, p, f"cold_warm/{i}", 1 + p["n_warm"])
        await c.recorder.phase(c.servers.target(), "cold", prompts[:1], name=phase_name("cold", i), repeat=i)
        await c.recorder.phase(c.servers.target(), "warm", prompts[1:], name=phase_name("warm", i), repeat=i)


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
