"""A conversation-shaped dataset made offline: ShareGPT's JSON format from kvreuse's corpus.

The source study's realism run used ShareGPT; this pipeline has no hub, so it writes a file
of the same shape (a list of ``{"id", "conversations": [{"from": "human"|"gpt", "value"}]}``)
for ``vllm bench serve --dataset-name sharegpt --dataset-path``. Every turn is deterministic
text (:mod:`kvreuse.corpus` through :class:`kvreuse.workloads.PromptMaker`), its length drawn
from a seeded generator, so the same seed gives the same bytes on every machine. Conversations
share nothing but the tokenizer: like ShareGPT, little exact prefix reuse.

vLLM's ShareGPT loader sends only the first human turn and drops prompts of more than 1024
tokens (``is_valid_sequence``), so ``max_prompt_tokens`` stays at or below that.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from .workloads import PromptMaker

#: vLLM's ShareGPT loader drops longer first turns (vllm.benchmarks.datasets.is_valid_sequence)
SHAREGPT_MAX_PROMPT_TOKENS = 1024


def sharegpt_conversations(pm: PromptMaker, *, n: int, min_prompt_tokens: int, max_prompt_tokens: int,
                           reply_tokens: int, turns: int = 2) -> list[dict]:
    """``n`` conversations of ``turns`` human/gpt pairs; each human turn between
    ``min_prompt_tokens`` and ``max_prompt_tokens`` tokens (log-uniform, like chat prompts:
    many short, few long), each answer ``reply_tokens`` tokens."""
    if not 4 <= min_prompt_tokens <= max_prompt_tokens <= SHAREGPT_MAX_PROMPT_TOKENS:
        raise ValueError(f"prompt tokens {min_prompt_tokens}..{max_prompt_tokens}: vLLM's ShareGPT loader "
                         f"keeps first turns of 4 to {SHAREGPT_MAX_PROMPT_TOKENS} tokens")
    rng = random.Random(f"{pm.seed}/sharegpt")
    lo, hi = min_prompt_tokens, max_prompt_tokens
    out = []
    for i in range(n):
        turns_out = []
        for t in range(turns):
            length = int(round(lo * (hi / lo) ** rng.random()))
            human = pm.tokenizer.decode(pm.tokens(f"sharegpt/{i}/human{t}", length))
            gpt = pm.tokenizer.decode(pm.tokens(f"sharegpt/{i}/gpt{t}", reply_tokens))
            turns_out += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
        out.append({"id": f"kvreuse-{i}", "conversations": turns_out})
    return out


def write_sharegpt(path: Path, conversations: list[dict]) -> str:
    """Write the dataset (canonical JSON); returns its sha256."""
    data = json.dumps(conversations, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()
