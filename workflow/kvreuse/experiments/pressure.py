"""The ``pressure`` experiment: source study 001's ``prefix_repetition`` shape under KV pressure,
through vLLM's own load generator, and a conversation-shaped realism run beside it.

The GPU KV cache is shrunk to ``num_gpu_blocks`` blocks (``--num-gpu-blocks-override``, which
vLLM 0.26.0 applies after its memory profile or fixed ``--kv-cache-memory-bytes``:
``vllm.v1.core.kv_cache_utils.may_override_num_blocks``) and the block size fixed
(``--block-size``), so that ``num_prefixes`` prefixes of ``prefix_tokens`` cannot all stay
resident: the prefix cache must evict. That it did is read from the counters in aggregation
(kvreuse.tables_pressure): vLLM's prefix-cache hits against the hits a cache that never evicts
would serve.
"""

from __future__ import annotations

from .. import schema
from ..conversations import sharegpt_conversations, write_sharegpt
from ..loadgen import Load
from .context import Context, warmup

EXPERIMENT = "pressure"


def prefix_repetition_load(p: dict) -> Load:
    """The prefix_repetition load of the parameters: every prompt at once (rate inf), at most
    ``max_concurrency`` in flight."""
    return Load(request_rate="inf", max_concurrency=p["max_concurrency"],
                num_prompts=p["num_prefixes"] * p["suffixes_per_prefix"], input_len=p["prefix_tokens"],
                output_len=p["output_tokens"], dataset="prefix_repetition", suffix_len=p["suffix_tokens"],
                num_prefixes=p["num_prefixes"])


async def pressure(c: Context, p: dict) -> None:
    """One server: warm-up, the prefix_repetition load (phase ``prefix_repetition``), then the
    conversation load on a ShareGPT-format file made here (phase ``conversation``), whose
    never-seen prompts the pressure run cannot have cached."""
    c.servers.start()
    await warmup(c)
    await c.loadgen.phase(c.servers.target(), "prefix_repetition", prefix_repetition_load(p))
    conv = schema.get(p, "experiments", EXPERIMENT, "conversation")
    if conv["num_prompts"]:
        path = c.spec.log_dir / "conversations.json"
        sha = write_sharegpt(path, sharegpt_conversations(
            c.prompts, n=conv["num_prompts"], min_prompt_tokens=conv["min_prompt_tokens"],
            max_prompt_tokens=conv["max_prompt_tokens"], reply_tokens=p["output_tokens"]))
        c.meta.params = {**c.meta.params, "conversation_sha256": sha}
        await c.loadgen.phase(c.servers.target(), "conversation",
                              Load(request_rate="inf", max_concurrency=p["max_concurrency"],
                                   num_prompts=conv["num_prompts"], input_len=conv["max_prompt_tokens"],
                                   output_len=p["output_tokens"], dataset="sharegpt", dataset_path=path))
