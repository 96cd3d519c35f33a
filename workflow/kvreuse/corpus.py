"""Deterministic text: the training corpus of the offline tokenizer and the filler of prompts.

Nothing here depends on the network or on global random state: the same seed and name give
the same words on every machine and Python version (``random.Random`` with a str seed hashes
it with SHA-512, independent of PYTHONHASHSEED).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

_ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "z", "br", "ch", "cr", "dr", "fl", "gr", "kl", "pl", "pr", "sh", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ie", "oo", "ou"]
_CODAS = ["", "", "", "n", "r", "s", "l", "m", "t", "nd", "rk", "st"]

# English words so that the source studies' literal prompts tokenise into sensible pieces.
ENGLISH = (
    "you are a helpful assistant summarize the key points of machine learning in one sentence "
    "what is capital of france briefly this context explain gradient descent paragraph now "
    "momentum optimization how does adam differ from learning rate warmup trick all methods "
    "discussed so far for graduate ml course the and to of in is it that for on with as at by "
    "be this an or from not but we they can will which their has have more been one would"
).split()


def pseudo_word(rng: random.Random) -> str:
    syllables = rng.choice((1, 2, 2, 3, 3, 4))
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(syllables))


def words(seed: str, n: int) -> list[str]:
    """``n`` words, mostly pseudo-words with a few English ones, fixed by ``seed``."""
    rng = random.Random(seed)
    return [rng.choice(ENGLISH) if rng.random() < 0.15 else pseudo_word(rng) for _ in range(n)]


def text(seed: str, n_words: int) -> str:
    out = words(seed, n_words)
    # sentences of 8-16 words, so that punctuation is part of the vocabulary
    rng = random.Random(f"{seed}/punct")
    i = 0
    pieces = []
    while i < len(out):
        k = rng.randint(8, 16)
        sent = out[i:i + k]
        sent[0] = sent[0].capitalize()
        pieces.append(" ".join(sent) + ".")
        i += k
    return " ".join(pieces)


def training_lines(seed: str, n_lines: int, words_per_line: int = 64) -> Iterator[str]:
    for i in range(n_lines):
        yield text(f"{seed}/line{i}", words_per_line)
