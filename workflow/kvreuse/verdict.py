"""Whether a cache survived a restart: the verdict, from hit counters and outputs (never time).

Per populated prefix i, the first measured request on it after the restart
(``post_restart_first``, ``repeat`` = i) is judged by

``hit fraction``  its cache hits / its reusable tokens, at most 1. Hits: vLLM's external
                  prefix-cache hits for arms with a connector (LMCache, vLLM's own
                  offloading), vLLM's own prefix-cache hits for APC. Reusable tokens: the prompt sent (it was sent
                  before the restart too) less its last token, which vLLM always computes,
                  rounded down to whole chunks (LMCache's ``chunk_size``) or blocks (vLLM's
                  block size: ``--block-size`` where given, else vLLM's default, 16 on a GPU
                  and 128 on a CPU). A 1040-token prompt has 1024 reusable tokens in either.
``output``        equal to the output of the same prompt before the restart (``populate``).

``persisted``      fraction >= :data:`PERSISTED_FRACTION` and the same output;
``partial``        0 < fraction < :data:`PERSISTED_FRACTION` (reason: the fraction), or
                   fraction >= it with a different (or unrecorded) output (reason: the output);
``not persisted``  no hits at all.

A run's verdict is that of its median fraction (with the outputs of all its prefixes); the
table also gives the smallest and largest fraction and how many prefixes persisted. The same
rule over the prefixes of one length gives the verdict at that length (``run_verdict`` of
``prefix_verdicts`` at that ``prefix_tokens``; kvreuse.tables_reload).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .results import RunMeta

PERSISTED_FRACTION = 0.9
PERSISTED, PARTIAL, NOT_PERSISTED = "persisted", "partial", "not persisted"
#: vLLM's default KV block size where the run did not set --block-size
DEFAULT_BLOCK = {"gpu": 16, "cpu": 128}


def classify_hits(fraction: float) -> str:
    """The verdict of the counters alone, where outputs are not compared (a remote store's hits):
    no hits, some, or at least :data:`PERSISTED_FRACTION` of the reusable tokens."""
    if not fraction > 0:
        return NOT_PERSISTED
    return PARTIAL if fraction < PERSISTED_FRACTION else PERSISTED


def classify(fraction: float, output_equal: bool | None) -> tuple[str, str]:
    """(verdict, reason) for a hit fraction and whether the output stayed the same."""
    by_hits = classify_hits(fraction)
    if by_hits == NOT_PERSISTED:
        return NOT_PERSISTED, "no cache hits after the restart"
    if by_hits == PARTIAL:
        return PARTIAL, f"hit fraction {fraction:.2f} < {PERSISTED_FRACTION}"
    if output_equal is None:
        return PARTIAL, "the output before the restart was not recorded"
    if not output_equal:
        return PARTIAL, "the output differs from the one before the restart"
    return PERSISTED, ""


#: vLLM flags that give it a KV connector (LMCache's, or its own OffloadingConnector)
CONNECTOR_FLAGS = ("--kv-transfer-config", "--kv-offloading-size", "--kv-offloading-backend")


def connector(meta: RunMeta) -> bool:
    """Whether the run's vLLM had a KV connector (an LMCache arm, or vLLM's own offloading):
    its hits after a restart are the connector's (external) ones."""
    arm = meta.arm_config or {}
    if arm.get("lmcache") is not None or arm.get("offload") is not None:
        return True
    args = (meta.server or {}).get("vllm_args") or []
    return any(str(a).split("=", 1)[0] in CONNECTOR_FLAGS for a in args)


def reuse_unit(meta: RunMeta) -> int:
    """Tokens per cached unit: LMCache's chunk for LMCache arms, else vLLM's block."""
    if (meta.arm_config or {}).get("lmcache") is not None:
        return int(meta.arm_config["lmcache"].get("chunk_size", 256))
    args = list((meta.server or {}).get("vllm_args") or [])
    if "--block-size" in args:
        return int(args[args.index("--block-size") + 1])
    kind = (meta.accelerator or {}).get("kind")
    return DEFAULT_BLOCK["gpu" if kind == "gpu" else "cpu"]


def reusable_tokens(prompt_tokens: float, unit: int) -> int:
    """The prompt less its last token, rounded down to whole units."""
    return int(max(prompt_tokens - 1, 0) // unit * unit)


def hits(meta: RunMeta, counters: dict[str, float]) -> float:
    key = "vllm:external_prefix_cache_hits" if connector(meta) else "vllm:prefix_cache_hits"
    return float(counters.get(key, 0.0))


@dataclass(frozen=True)
class PrefixVerdict:
    repeat: int | None
    prefix_tokens: int | None
    hit_tokens: float
    reusable_tokens: int
    hit_fraction: float
    output_equal: bool | None
    verdict: str
    reason: str


def _key(prefix_tokens, repeat) -> tuple[int, int]:
    """A populated prefix: (length, index), -1 for a field the run did not record."""
    return (-1 if prefix_tokens is None or pd.isna(prefix_tokens) else int(prefix_tokens),
            -1 if repeat is None or pd.isna(repeat) else int(repeat))


def _outputs(meta: RunMeta, records: pd.DataFrame, kind: str) -> dict:
    """The output of each prefix's request of ``kind``, by prefix (:func:`_key`): the phase's
    fields say which prefix, its records (by the phase's name) what came out."""
    sub = records[(records.phase_kind == kind) & records.error.isna()]
    by_phase = {name: list(o or []) for name, o in zip(sub["phase"], sub["output_token_ids"])}
    return {_key(ph.prefix_tokens, ph.repeat): by_phase[name] for name, ph in meta.phases.items()
            if ph.kind == kind and name in by_phase}


def _prompt_tokens(records: pd.DataFrame, phase: str) -> float:
    sub = records[records.phase == phase]
    for col in ("prompt_tokens", "prompt_tokens_sent"):
        v = sub[col].dropna() if col in sub else ()
        if len(v):
            return float(v.iloc[0])
    return float("nan")


def prefix_verdicts(meta: RunMeta, records: pd.DataFrame) -> list[PrefixVerdict]:
    """One verdict per populated prefix (its ``post_restart_first`` phase), by prefix length,
    then prefix index (a prefix is its length and its ``repeat``). ``records``: the run's
    records (kvreuse.aggregate.load). Runs of one prefix made before the records kept outputs
    fall back on the run's own ``output_equal``."""
    before, after = _outputs(meta, records, "populate"), _outputs(meta, records, "post_restart_first")
    unit = reuse_unit(meta)
    out = []
    firsts = sorted(((name, ph) for name, ph in meta.phases.items() if ph.kind == "post_restart_first"),
                    key=lambda x: _key(x[1].prefix_tokens, x[1].repeat))
    for name, ph in firsts:
        key = _key(ph.prefix_tokens, ph.repeat)
        prompt = _prompt_tokens(records, name)
        if np.isnan(prompt):
            prompt = (ph.prefix_tokens or (meta.params or {}).get("prefix_tokens", 0)) + 1
        reusable = reusable_tokens(prompt, unit)
        h = hits(meta, ph.counters)
        fraction = min(h / reusable, 1.0) if reusable else float("nan")
        a, b = before.get(key), after.get(key)
        equal = (a == b) if a and b else (meta.output_equal if len(firsts) == 1 else None)
        out.append(PrefixVerdict(ph.repeat, ph.prefix_tokens, h, reusable, fraction, equal,
                                 *classify(fraction, equal)))
    return out


def run_verdict(per_prefix: list[PrefixVerdict]) -> dict:
    """The run's verdict (from the median fraction and all outputs; partial, not "not
    persisted", where the median is 0 but some prefixes had hits) and the spread."""
    if not per_prefix:
        return {}
    f = np.array([v.hit_fraction for v in per_prefix], dtype=float)
    equal = [v.output_equal for v in per_prefix]
    all_equal = None if any(e is None for e in equal) else all(equal)
    median = float(np.nanmedian(f)) if np.isfinite(f).any() else 0.0
    verdict, reason = classify(median, all_equal)
    if all_equal is False and median >= PERSISTED_FRACTION:
        reason = f"the output differs from the one before the restart on {equal.count(False)} of {len(equal)} prefixes"
    hit = int((f > 0).sum())
    if verdict == NOT_PERSISTED and hit:  # most prefixes found nothing, some did: not "none"
        verdict = PARTIAL
        reason = f"{hit} of {len(per_prefix)} prefixes had hits after the restart; the median hit fraction is 0"
    return {"verdict": verdict, "verdict_reason": reason,
            "hit_fraction": median if np.isfinite(f).any() else np.nan,
            "hit_fraction_min": float(np.nanmin(f)) if np.isfinite(f).any() else np.nan,
            "hit_fraction_max": float(np.nanmax(f)) if np.isfinite(f).any() else np.nan,
            "reusable_tokens": per_prefix[0].reusable_tokens,
            "n_prefixes": len(per_prefix),
            "n_prefixes_persisted": sum(v.verdict == PERSISTED for v in per_prefix),
            "persisted_hit_tokens": float(sum(v.hit_tokens for v in per_prefix)),
            "output_equal": all_equal}
