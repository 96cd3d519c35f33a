"""The ``serving`` experiment: vLLM's own load generator at each request rate, and the
fidelity workload (our client beside `vllm bench serve` and the server's histogram)."""

from __future__ import annotations

from .. import schema
from ..loadgen import Load
from ..results import phase_name
from .context import Context, warmup


async def serving(c: Context, p: dict) -> None:
    """Serving baseline with vLLM's own load generator at each request rate, plus the
    fidelity workload: the same sizes through our client and through `vllm bench serve`,
    one request at a time, beside the server's own TTFT histogram."""
    c.servers.start()
    await warmup(c)
    n = schema.get(p, "experiments", "serving", "fidelity_requests")
    if n:
        await c.recorder.phase(c.servers.target(), "fidelity_client",
                               [c.prompts.tokens(f"fidelity/{i}", p["input_len"]) for i in range(n)])
        await c.loadgen.phase(c.servers.target(), "fidelity_bench",
                              Load(request_rate="inf", max_concurrency=1, num_prompts=n,
                                   input_len=p["input_len"], output_len=c.spec.client["max_tokens"]))
    for rate in p["request_rates"]:
        await c.loadgen.phase(c.servers.target(), "rate",
                              Load(request_rate=rate, num_prompts=p["num_prompts"],
                                   input_len=p["input_len"], output_len=p["output_len"]),
                              name=phase_name("rate", rate))
