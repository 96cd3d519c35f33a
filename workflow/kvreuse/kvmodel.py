"""The analytic KV-cache model: bytes per token from a model's config, load time vs bandwidth."""

from __future__ import annotations

import json
from pathlib import Path

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8": 1}
GIB = 1024 ** 3


def kv_bytes_per_token(hf_config: dict, dtype: str | None = None) -> int:
    """layers x 2 (K and V) x KV heads x head dim x bytes per element."""
    layers = hf_config["num_hidden_layers"]
    kv_heads = hf_config.get("num_key_value_heads", hf_config["num_attention_heads"])
    head_dim = hf_config.get("head_dim") or hf_config["hidden_size"] // hf_config["num_attention_heads"]
    nbytes = DTYPE_BYTES[dtype or hf_config.get("torch_dtype", "bfloat16")]
    return layers * 2 * kv_heads * head_dim * nbytes


def kv_heads_per_gpu(hf_config: dict, tensor_parallel: int) -> int:
    """The KV heads one GPU holds at ``tensor_parallel``: vLLM splits the KV heads over the
    ranks (8 heads at TP 4: 2 each) or, with more ranks than heads, gives each rank one head
    (replicated). ValueError where neither divides the other, which vLLM refuses too."""
    kv_heads = hf_config.get("num_key_value_heads", hf_config["num_attention_heads"])
    if kv_heads % tensor_parallel == 0:
        return kv_heads // tensor_parallel
    if tensor_parallel % kv_heads == 0:
        return 1
    raise ValueError(f"tensor_parallel {tensor_parallel} does not divide the model's "
                     f"{kv_heads} KV heads, nor they it (allowed: a divisor or a multiple of {kv_heads})")


def kv_bytes_per_token_per_gpu(hf_config: dict, tensor_parallel: int = 1, dtype: str | None = None) -> int:
    """The KV bytes of one token that one GPU holds at ``tensor_parallel`` (and moves over its
    own link on a reload): the total over the ranks for KV heads divisible by the ranks
    (Llama-3.1-70B, 8 KV heads, at TP 2, 4, 8: a half, a quarter, an eighth); one head's
    share each where the heads are replicated."""
    total = kv_bytes_per_token(hf_config, dtype)
    kv_heads = hf_config.get("num_key_value_heads", hf_config["num_attention_heads"])
    return total // kv_heads * kv_heads_per_gpu(hf_config, tensor_parallel)


def model_config(model: dict) -> dict | None:
    """The architecture of a ``models.<name>`` entry: a tiny model's, a dummy model's config.json
    (a path from the repository root); None where neither is at hand (a hub model)."""
    if model.get("source") == "tiny":
        return model["architecture"]
    path = model.get("config_json")
    if path and Path(path).is_file():
        return json.loads(Path(path).read_text())
    return None


def model_kv_bytes_per_token(model: dict) -> int | None:
    """Bytes per token of a ``models.<name>`` entry: from a tiny model's architecture or a dummy
    model's config.json (a path from the repository root); None where neither is at hand (a hub
    model before its download)."""
    if model.get("source") == "tiny":
        return kv_bytes_per_token(model["architecture"])
    path = model.get("config_json")
    if path and Path(path).is_file():
        cfg = json.loads(Path(path).read_text())
        return kv_bytes_per_token(cfg, cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    return None


def load_time_s(tokens: int, bytes_per_token: int, bandwidth_gb_s: float) -> float:
    return tokens * bytes_per_token / (bandwidth_gb_s * 1e9)
