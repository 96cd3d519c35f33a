"""The results schema: one request record per JSONL line, one run meta per run, typed phases.

``results/raw/{platform}/{experiment}/{arm}.jsonl`` holds :class:`RequestRecord` lines;
``{arm}.meta.json`` holds a :class:`RunMeta` whose ``phases`` are :class:`Phase` objects. A
phase says what it is in fields (``kind``, ``prefix_tokens``, ``request_rate``, ``repeat``,
``turn``, ``after_restart``); its name (the key in ``phases``) is a label nothing parses.
Files are written atomically and only through this module, and read only through it: :func:`read_meta` and :func:`read_records` check ``schema_version`` and every
field, and a file of another version or with a missing or unknown field raises
:class:`ResultsSchemaError` naming the file and the field (``python -m kvreuse.migrate``
brings files of version 1 to this version).

Version history:
  1  (no ``schema_version``): phases told apart by their names (``cold_<n>``, ``rate_<r>``)
  2  typed phases (``kind`` and fields), ``schema_version`` in every meta, ``phase_kind`` in
     every record; later, the optional field ``server_run`` in phases and records (files
     without it read as before: one server run); later, the optional meta fields ``offload``
     (vLLM's own offloading arms) and ``gpu_share`` (a job's holds of a GPU node's measurement
     lock); files without them read them as None;
     later, the phase kinds ``cross_first`` and ``cross_cold`` and the optional phase field
     ``instance`` (experiment cross_instance; additive: files without them read as before);
     later, the phase kinds ``remote_hit`` and ``remote_miss`` (experiment remote; additive)
     later, the phase kind ``conversations`` and the optional record field ``conversation``
     (experiments multiturn_long and chunk_sweep; additive)
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2

#: what a phase is; a phase's other fields say which one (prefix length, rate, repeat, turn)
PHASE_KINDS = (
    "warmup",               # unrelated requests that take a server's one-time costs
    "measured",             # baseline: requests sharing one system prompt, APC off
    "cold",                 # a prefix never seen by any cache
    "warm",                 # a prefix seen before, on the same server
    "populate",             # restart, cross_instance, remote: the first request, which fills the caches
    "post_restart_first",   # restart: a populate prompt again, the first on its prefix after the restart
    "post_restart_steady",  # restart: later requests on the populated prefix
    "post_restart_cold",    # restart: a never-seen prefix on the restarted server
    "cold_reference",       # restart: the populate prompt on a fresh server without the store
    "reload",               # sweep after a restart: a populated prefix, loaded from the store
    "recompute",            # sweep after a restart: a never-seen prefix of the same length
    "turn",                 # multi-turn: one turn of a growing chat
    "fidelity_client",      # serving: one request at a time through our client
    "fidelity_bench",       # serving: the same through vllm bench serve
    "rate",                 # serving: vllm bench serve at a request rate
    "repeat",               # random-prompt overhead: one pass over the unique prompts (``repeat``)
                            # in one of an arm's server runs (``server_run``)
    "cross_first",          # cross_instance: instance B's first request on a prefix that instance A
                            # stored in the shared LMCache server (A's ``populate`` prompt again)
    "cross_cold",           # cross_instance: a never-seen prefix of the same length on instance B
    "remote_hit",           # remote: a populated prompt again after vLLM's restart (from the remote store)
    "remote_miss",          # remote: a never-seen prompt of the same length after the restart
    "conversations",        # multiturn_long, chunk_sweep: every turn of concurrent conversations
                            # at one history length (``prefix_tokens``); each record its
                            # ``conversation`` and ``turn``
    "prefix_repetition",    # pressure: vllm bench serve's prefix_repetition dataset on a shrunk KV cache
    "conversation",         # pressure: vllm bench serve on a ShareGPT-format file made here (realism)
    "miss",                 # miss: a prompt nothing can reuse, of length ``prefix_tokens``
    "vram_hit",             # miss: a prompt already in the GPU's prefix cache (populated before)
)


class ResultsSchemaError(ValueError):
    """A results file that does not follow this schema; the message names file and field."""


@dataclass
class Phase:
    """One phase of a run: what it was (fields), its requests' counter deltas and timing."""

    kind: str
    n_requests: int
    wall_s: float
    counters: dict[str, float]
    prefix_tokens: int | None = None
    request_rate: float | str | None = None
    max_concurrency: int | None = None
    repeat: int | None = None
    turn: int | None = None
    context_tokens: int | None = None
    server_run: int | None = None  # which of an arm's separate server runs (kvreuse.alternating)
    instance: str | None = None    # the named vLLM instance it ran on (cross_instance: a, b); None: the run's one
    after_restart: bool = False
    bench_summary: dict | None = None  # vllm bench serve's own summary (kind rate, fidelity_bench)
    lmcache_log: dict | None = None    # LMCache's retrieve/store log lines of this phase


def phase_name(kind: str, *parts) -> str:
    """A phase's key in the meta: its kind and, where one kind occurs several times in a run,
    the value that tells them apart (``phase_name("cold", 1024)`` is ``cold_1024``). A label for
    people and diffs: the phase's fields carry the data and nothing parses the name."""
    if kind not in PHASE_KINDS:
        raise ValueError(f"phase kind {kind!r} is not one of {', '.join(PHASE_KINDS)}")
    return "_".join([kind, *(str(p) for p in parts)])


@dataclass
class RequestRecord:
    """One request. Times in milliseconds, taken on the client (``source`` client) or by
    vLLM's own load generator (``source`` vllm_bench_serve)."""

    platform: str
    experiment: str
    arm: str
    phase: str          # the phase's name in the meta
    phase_kind: str     # the phase's kind (the fields of the phase are in the meta)
    seq: int
    prompt_tokens: int | None
    cached_tokens: int | None
    output_tokens: int | None
    ttft_ms: float | None
    itl_ms: list[float]
    e2e_ms: float | None
    error: str | None
    t_start: float | None = None
    source: str = "client"
    http_status: int | None = None
    output_text: str = ""
    output_token_ids: list[int] = field(default_factory=list)
    prompt_tokens_sent: int | None = None  # when the server's usage did not say
    prefix_tokens: int | None = None
    request_rate: float | str | None = None
    repeat: int | None = None
    turn: int | None = None
    context_tokens: int | None = None
    server_run: int | None = None
    conversation: int | None = None  # which of a phase's concurrent conversations (multiturn_long)


@dataclass
class RunMeta:
    """One run: provenance, what ran, its phases and its outcome."""

    status: str                 # ok | not_run
    platform: str
    experiment: str
    arm: str
    arm_config: dict
    params: dict
    accelerator: dict
    versions: dict
    model: dict
    server: dict
    client: dict
    config_hash: str | None
    git_commit: str | None
    started_at: str
    finished_at: str | None
    phases: dict[str, Phase]
    schema_version: int = SCHEMA_VERSION
    reason: str | None = None   # why a run did not run (status not_run)
    server_starts: list[dict] = field(default_factory=list)
    stops: list[dict] = field(default_factory=list)
    n_requests: int = 0
    n_errors: int = 0
    # restart outcome as runs before kvreuse.verdict recorded it; later runs leave these None
    # (the verdict is made in aggregation, from each prefix's counters and outputs)
    persisted: bool | None = None
    persisted_hit_tokens: float | None = None
    output_equal: bool | None = None
    output_equal_cold_reference: bool | None = None
    store_after_stop: dict | None = None
    lmcache: dict | None = None      # LMCache arms: mode, store, kernels loaded or fallback
    offload: dict | None = None      # vLLM's own offloading arms: tiers, store folder (kvreuse.offload)
    gpu_share: dict | None = None    # jobs sharing a GPU: this job's measurement-lock holds (kvreuse.gpu_share)
    migration: list[dict] = field(default_factory=list)  # what kvreuse.migrate changed

    def add_phase(self, name: str, phase: Phase) -> None:
        if name in self.phases:
            raise ValueError(f"phase {name!r} recorded twice in {self.experiment}/{self.arm}")
        self.phases[name] = phase

    def phases_of(self, kind: str) -> list[Phase]:
        return [p for p in self.phases.values() if p.kind == kind]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- validation ----------------------------------------------------------------------------
def field_names(cls) -> tuple[set[str], set[str]]:
    all_ = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    return all_, required


def _check_fields(cls, data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise ResultsSchemaError(f"{where}: expected an object, found {type(data).__name__}")
    all_, required = field_names(cls)
    missing = sorted(required - set(data))
    if missing:
        raise ResultsSchemaError(f"{where}: missing field {missing[0]!r} "
                                 f"(schema version {SCHEMA_VERSION}; required: {', '.join(sorted(required))})")
    unknown = sorted(set(data) - all_)
    if unknown:
        raise ResultsSchemaError(f"{where}: unknown field {unknown[0]!r} (schema version "
                                 f"{SCHEMA_VERSION} has: {', '.join(sorted(all_))})")


def phase_from_dict(data: dict, where: str = "phase") -> Phase:
    _check_fields(Phase, data, where)
    if data["kind"] not in PHASE_KINDS:
        raise ResultsSchemaError(f"{where}: field 'kind' is {data['kind']!r} "
                                 f"(allowed: {', '.join(PHASE_KINDS)})")
    return Phase(**data)


def meta_from_dict(data: dict, where: str = "meta") -> RunMeta:
    if not isinstance(data, dict):
        raise ResultsSchemaError(f"{where}: expected an object, found {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        found = "no 'schema_version' (version 1)" if version is None else f"schema_version {version!r}"
        raise ResultsSchemaError(
            f"{where}: field 'schema_version': found {found}, this code reads version "
            f"{SCHEMA_VERSION}; bring it over with `python -m kvreuse.migrate {where}` "
            f"(it records what it changed in the meta's 'migration')")
    _check_fields(RunMeta, data, where)
    if not isinstance(data["phases"], dict):
        raise ResultsSchemaError(f"{where}: field 'phases' must be an object of phases")
    phases = {}
    for name, ph in data["phases"].items():
        phases[name] = phase_from_dict(ph, f"{where}: phases.{name}")
    return RunMeta(**{**data, "phases": phases})


def record_from_dict(data: dict, where: str = "record") -> RequestRecord:
    _check_fields(RequestRecord, data, where)
    if data["phase_kind"] not in PHASE_KINDS:
        raise ResultsSchemaError(f"{where}: field 'phase_kind' is {data['phase_kind']!r} "
                                 f"(allowed: {', '.join(PHASE_KINDS)})")
    return RequestRecord(**data)


# -- files ---------------------------------------------------------------------------------
def atomic_write_text(path: Path | str, text: str) -> None:
    """Write a temporary file in the same folder, fsync, rename: whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def meta_path(jsonl: Path | str) -> Path:
    p = Path(jsonl)
    return p.with_name(p.name[: -len(".jsonl")] + ".meta.json")


def dump_meta(meta: RunMeta | dict) -> str:
    data = meta.to_dict() if isinstance(meta, RunMeta) else meta
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def dump_records(records: list[RequestRecord | dict]) -> str:
    return "".join(json.dumps(dataclasses.asdict(r) if isinstance(r, RequestRecord) else r,
                              sort_keys=True) + "\n" for r in records)


def write_meta(path: Path | str, meta: RunMeta | dict) -> None:
    if isinstance(meta, dict):  # e.g. scrubbed of secrets: still checked before it is written
        meta_from_dict(meta, str(path))
    atomic_write_text(path, dump_meta(meta))


def write_records(path: Path | str, records: list[RequestRecord | dict]) -> None:
    for i, r in enumerate(records):
        if isinstance(r, dict):
            record_from_dict(r, f"{path}: line {i + 1}")
    atomic_write_text(path, dump_records(records))


def read_meta(path: Path | str) -> RunMeta:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ResultsSchemaError(f"{path}: not JSON ({e})") from e
    return meta_from_dict(data, str(path))


def read_records(path: Path | str) -> list[RequestRecord]:
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise ResultsSchemaError(f"{path}: line {i}: not JSON ({e})") from e
            out.append(record_from_dict(data, f"{path}: line {i}"))
    return out
