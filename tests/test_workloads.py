"""Prompts are deterministic, exactly sized in tokens, and share exactly their prefix."""

from kvreuse import corpus
from kvreuse.experiments import sweep_lengths
from kvreuse.workloads import COMPAT_SYSTEM, PromptMaker, shared_prefix_prompts


def test_corpus_is_deterministic():
    assert corpus.text("a", 50) == corpus.text("a", 50)
    assert corpus.text("a", 50) != corpus.text("b", 50)


def test_tokens_exact_length_and_deterministic(tiny_model):
    pm = PromptMaker.for_model(tiny_model, seed=0)
    for n in (1, 16, 1000, 3000):
        assert len(pm.tokens("x", n)) == n
    assert pm.tokens("x", 500) == PromptMaker.for_model(tiny_model, seed=0).tokens("x", 500)
    assert pm.tokens("x", 500) != PromptMaker.for_model(tiny_model, seed=1).tokens("x", 500)
    assert pm.tokens("x", 100) == pm.tokens("x", 500)[:100]


def test_shared_prefix_prompts(tiny_model):
    pm = PromptMaker.for_model(tiny_model, seed=0)
    ps = shared_prefix_prompts(pm, name="cw", prefix_tokens=256, suffix_tokens=16, n=4)
    assert all(len(p) == 272 for p in ps)
    assert all(p[:256] == ps[0][:256] for p in ps)
    assert len({tuple(p[256:]) for p in ps}) == 4  # each its own question
    other = shared_prefix_prompts(pm, name="cw2", prefix_tokens=256, suffix_tokens=16, n=1)[0]
    assert other[:256] != ps[0][:256]  # another name: a truly cold prefix


def test_compat_mode_sends_the_studies_literal_prompt(tiny_model):
    pm = PromptMaker.for_model(tiny_model, seed=0)
    ps = shared_prefix_prompts(pm, name="c", prefix_tokens=1, suffix_tokens=1, n=3, compat=True)
    assert ps[0] == ps[1] == ps[2]
    text = pm.tokenizer.decode(ps[0])
    assert "helpful assistant" in text and len(COMPAT_SYSTEM.split()) == 1250
    assert len(ps[0]) > 1000  # the studies' "~660 tokens" estimate does not hold under this tokenizer


def test_sweep_lengths_auto_stops_at_model_limit():
    p = {"prefix_tokens_list": "auto", "min_prefix_tokens": 128, "suffix_tokens": 16}
    assert sweep_lengths(p, {"max_model_len": 4096}, {"max_tokens": 16}) == [128, 256, 512, 1024, 2048]
    assert sweep_lengths({**p, "prefix_tokens_list": [5, 7]}, {"max_model_len": 64}, {"max_tokens": 1}) == [5, 7]
