"""Model acquisition: ``tiny`` (made here), ``dummy`` (real config, random weights at load), ``hub``.

Every source writes ``kvreuse-model.json`` beside the files, saying how the weights were made,
so that each run's meta can state it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from . import corpus

log = logging.getLogger(__name__)

MANIFEST = "kvreuse-model.json"
SPECIAL = ["<unk>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def build_tokenizer(out_dir: Path, vocab_size: int, seed: int, n_lines: int) -> int:
    """Train a BPE tokenizer offline on the deterministic corpus; pad it to ``vocab_size``.

    Every id below ``vocab_size`` decodes to text (reserved fillers are special tokens), so a
    model with random weights can sample any id. Returns the number of learned tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  min_frequency=2, show_progress=False)
    log.info("training BPE tokenizer: target vocab %d on %d corpus lines", vocab_size, n_lines)
    tok.train_from_iterator(corpus.training_lines(f"tokenizer/{seed}", n_lines), trainer=trainer)
    learned = tok.get_vocab_size()
    if learned < vocab_size:
        tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(vocab_size - learned)])
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return learned


def build_tiny_weights(out_dir: Path, arch: dict, vocab_size: int, seed: int) -> dict:
    """A Llama-architecture model with seeded random weights, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False, torch_dtype="bfloat16", **arch)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return cfg.to_dict()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(out_dir: Path, info: dict) -> dict:
    files = {p.name: _sha256(p) for p in sorted(out_dir.iterdir())
             if p.is_file() and p.name != MANIFEST}
    manifest = {**info, "files": files}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def make_model(name: str, spec: dict, out_dir: Path) -> dict:
    """Create the model folder ``out_dir`` for the model ``name`` described by ``spec``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    source = spec["source"]
    tok_spec = spec.get("tokenizer", {})
    if source == "tiny":
        learned = build_tokenizer(out_dir, spec["vocab_size"], spec["seed"],
                                  tok_spec.get("corpus_lines", 4000))
        build_tiny_weights(out_dir, spec["architecture"], spec["vocab_size"], spec["seed"])
        info = {"weights": f"random (torch.manual_seed({spec['seed']}), bf16), made by kvreuse",
                "load_format": "safetensors", "tokenizer": f"BPE trained offline, {learned} learned tokens"}
    elif source == "dummy":
        hf_config = json.loads(Path(spec["config_json"]).read_text())
        vocab = hf_config["vocab_size"]
        learned = build_tokenizer(out_dir, vocab, spec["seed"], tok_spec.get("corpus_lines", 4000))
        (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        info = {"weights": "dummy: random at load time (vLLM --load-format dummy) with the real "
                           f"architecture from {spec['config_json']}",
                "load_format": "dummy", "tokenizer": f"BPE trained offline, {learned} learned tokens"}
    elif source == "hub":
        from huggingface_hub import snapshot_download

        token = os.environ.get(spec.get("token_env", "HF_TOKEN"))  # read, never written anywhere
        snapshot_download(repo_id=spec["repo_id"], revision=spec["revision"],
                          local_dir=str(out_dir), token=token)
        info = {"weights": f"hub {spec['repo_id']}@{spec['revision']}",
                "load_format": "safetensors", "tokenizer": "from the hub"}
    else:  # the schema forbids this; kept for direct callers
        raise ValueError(f"model {name}: unknown source {source!r} (allowed: tiny, dummy, hub)")
    return write_manifest(out_dir, {"name": name, "source": source, **info})


def read_manifest(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / MANIFEST).read_text())
