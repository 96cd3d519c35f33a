"""Deterministic prompts sized in tokens with the served tokenizer.

Prompts are sent as token ids, so a prompt of N tokens is exactly N tokens and two prompts
share exactly the prefix they are built to share. ``compat`` mode sends the source studies'
literal word-based prompts instead (through the model's chat template) and the records report
how many tokens they really are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import corpus

# The source studies' literal prompts (seed 000): "~500 words / ~660 tokens" by their estimate.
COMPAT_SYSTEM = "You are a helpful assistant. " * 250
COMPAT_USERS = [
    "Summarize the key points of machine learning in one sentence.",
    "What is the capital of France?",
    "Briefly summarize this context.",
]


@lru_cache(maxsize=4)
def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@dataclass
class PromptMaker:
    """Makes token-id prompts; every piece is fixed by ``seed`` and a name."""

    tokenizer: object
    seed: int

    @classmethod
    def for_model(cls, model_dir: Path, seed: int) -> "PromptMaker":
        return cls(load_tokenizer(str(model_dir)), seed)

    def tokens(self, name: str, n: int) -> list[int]:
        """Exactly ``n`` token ids of deterministic text named ``name``."""
        if n <= 0:
            return []
        ids: list[int] = []
        words = max(n, 16)
        while len(ids) < n:
            ids = self.tokenizer.encode(corpus.text(f"{self.seed}/{name}", words),
                                        add_special_tokens=False)
            words *= 2
        return ids[:n]

    def chat(self, system: str, user: str) -> list[int]:
        """A chat prompt in token ids through the model's chat template (compat mode)."""
        out = self.tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": user}],
            tokenize=True, add_generation_prompt=True)
        if isinstance(out, dict) or hasattr(out, "input_ids"):  # transformers >= 5 returns a BatchEncoding
            out = out["input_ids"]
        return list(out)


def shared_prefix_prompts(pm: PromptMaker, *, name: str, prefix_tokens: int, suffix_tokens: int,
                          n: int, compat: bool = False) -> list[list[int]]:
    """``n`` prompts sharing one prefix, each with its own suffix (question)."""
    if compat:
        # the studies resend one literal payload: the same system prompt and question
        return [pm.chat(COMPAT_SYSTEM, COMPAT_USERS[0]) for _ in range(n)]
    prefix = pm.tokens(f"{name}/prefix", prefix_tokens)
    return [prefix + pm.tokens(f"{name}/q{i}", suffix_tokens) for i in range(n)]
