"""Bring results files of an older schema version to the current one (kvreuse.results).

    python -m kvreuse.migrate results/raw            # every meta and JSONL under a folder
    python -m kvreuse.migrate results/raw/h200/restart/apc.meta.json --check

Version 1 to 2: each phase gets its ``kind`` and fields. Version 1 told phases apart only by
their names, so this is the one place that reads a phase's name (``cold_1024`` -> kind
``cold``, ``prefix_tokens`` 1024); where the old phase also held the field (``prefix_tokens``,
``repeat``, ``turn``, ``request_rate``) the two must agree. Every record gets ``phase_kind``
(and ``platform`` where it lacked it). A required meta field that version 1 lacked is added
as null. What was changed is listed in the meta's ``migration`` (one entry per migration), so
nothing is converted silently; files already at the current version are left alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path

from .results import (SCHEMA_VERSION, RequestRecord, ResultsSchemaError, RunMeta,
                      atomic_write_text, dump_meta, dump_records, field_names, meta_from_dict,
                      meta_path, record_from_dict)

#: version-1 phase names without a number: name -> (kind, after_restart)
V1_NAMED = {
    "warmup": ("warmup", False), "warmup_post_restart": ("warmup", True),
    "measured": ("measured", False), "cold": ("cold", False), "warm": ("warm", False),
    "populate": ("populate", False), "post_restart_first": ("post_restart_first", True),
    "post_restart_steady": ("post_restart_steady", True),
    "post_restart_cold": ("post_restart_cold", True), "cold_reference": ("cold_reference", False),
    "fidelity_client": ("fidelity_client", False), "fidelity_bench": ("fidelity_bench", False),
}
#: version-1 phase names ``<prefix>_<value>``: prefix -> (kind, field of the value, after_restart)
V1_NUMBERED = {
    "cold": ("cold", "prefix_tokens", False), "warm": ("warm", "prefix_tokens", False),
    "reload": ("reload", "prefix_tokens", True), "recompute": ("recompute", "prefix_tokens", True),
    "turn": ("turn", "turn", False), "rate": ("rate", "request_rate", False),
    "repeat": ("repeat", "repeat", False),
}


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text  # a request rate of "inf" stays as written


def v1_phase(name: str, ph: dict, where: str) -> dict:
    """A version-1 phase (name and dict) as a version-2 phase dict."""
    out = dict(ph)
    if name in V1_NAMED:
        kind, after = V1_NAMED[name]
    else:
        prefix, _, value = name.rpartition("_")
        if prefix not in V1_NUMBERED:
            raise ResultsSchemaError(f"{where}: phases.{name}: no version-1 phase has this name; "
                                     f"cannot tell its kind")
        kind, key, after = V1_NUMBERED[prefix]
        parsed = _number(value)
        if key in ph and str(ph[key]) != str(parsed):
            raise ResultsSchemaError(f"{where}: phases.{name}: the name says {key} {parsed!r} "
                                     f"but the phase holds {ph[key]!r}")
        out.setdefault(key, parsed)
    out["kind"] = kind
    if after:
        out["after_restart"] = True
    return out


def migrate_meta(data: dict, where: str, *, by: str = "kvreuse.migrate") -> tuple[dict, list[str]]:
    """A version-1 meta dict as a current one, and the list of what changed."""
    if data.get("schema_version") == SCHEMA_VERSION:
        return data, []
    if data.get("schema_version") is not None:
        raise ResultsSchemaError(f"{where}: field 'schema_version' is {data['schema_version']!r}: "
                                 f"no migration from it to {SCHEMA_VERSION}")
    changes = [f"schema_version: none (version 1) -> {SCHEMA_VERSION}"]
    out = dict(data)
    phases = {}
    for name, ph in (data.get("phases") or {}).items():
        phases[name] = v1_phase(name, ph, where)
        fields = {k: v for k, v in phases[name].items() if k not in ph}
        changes.append(f"phases.{name}: " + ", ".join(f"{k}={v!r}" for k, v in sorted(fields.items())))
    out["phases"] = phases
    known, required = field_names(RunMeta)
    for key in sorted(required - set(out)):
        out[key] = None
        changes.append(f"{key}: absent in the original, set to null")
    for key in sorted(known - required - set(out) - {"schema_version", "migration"}):
        changes.append(f"{key}: absent in the original (the code of that run did not record "
                       f"it), read as its default")
    unknown = sorted(set(out) - known - {"schema_version"})
    if unknown:
        raise ResultsSchemaError(f"{where}: field {unknown[0]!r} has no place in schema "
                                 f"version {SCHEMA_VERSION}; extend kvreuse.results or this migration")
    out["schema_version"] = SCHEMA_VERSION
    out["migration"] = list(data.get("migration") or []) + [{
        "from_version": 1, "to_version": SCHEMA_VERSION, "by": by,
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "changes": changes}]
    meta_from_dict(out, where)  # the result must read back
    return out, changes


def migrate_records(lines: list[dict], meta: dict, where: str) -> tuple[list[dict], list[str]]:
    """Version-1 records as current ones: ``phase_kind`` from the meta's phases."""
    kinds = {name: ph["kind"] for name, ph in meta["phases"].items()}
    out, changes = [], set()
    for i, r in enumerate(lines, 1):
        r = dict(r)
        if "phase_kind" not in r:
            if r.get("phase") not in kinds:
                raise ResultsSchemaError(f"{where}: line {i}: phase {r.get('phase')!r} is not in "
                                         f"the meta's phases")
            r["phase_kind"] = kinds[r["phase"]]
            changes.add("phase_kind: added from the meta's phases")
        if "platform" not in r:
            r["platform"] = meta["platform"]
            changes.add("platform: added from the meta")
        record_from_dict(r, f"{where}: line {i}")
        out.append(r)
    return out, sorted(changes)


def read_converted(jsonl: Path | str) -> tuple[RunMeta, list[RequestRecord], list[str]]:
    """An explicit converter for files that cannot be rewritten (a pinned artifact, checked
    by its sha256): the run read as the current version, and what was converted (empty when
    the files already are the current version). Callers log what it converted."""
    jsonl, mpath = Path(jsonl), meta_path(jsonl)
    data = json.loads(mpath.read_text())
    meta, changes = migrate_meta(data, str(mpath), by="kvreuse.migrate.read_converted (in memory)")
    lines = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()]
    if changes:
        lines, rec_changes = migrate_records(lines, meta, str(jsonl))
        changes = changes + [f"records: {c}" for c in rec_changes]
    return (meta_from_dict(meta, str(mpath)),
            [record_from_dict(r, f"{jsonl}: line {i}") for i, r in enumerate(lines, 1)], changes)


def migrate_pair(jsonl: Path | str, *, write: bool = True) -> list[str]:
    """Migrate one JSONL and its meta in place (both or neither); returns what changed."""
    jsonl, mpath = Path(jsonl), meta_path(jsonl)
    data = json.loads(mpath.read_text())
    meta, changes = migrate_meta(data, str(mpath))
    if not changes:
        return []
    lines = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()]
    records, rec_changes = migrate_records(lines, meta, str(jsonl))
    changes = changes + [f"records: {c}" for c in rec_changes]
    meta["migration"][-1]["changes"] = changes
    if write:
        atomic_write_text(jsonl, dump_records([RequestRecord(**r) for r in records]))
        atomic_write_text(mpath, dump_meta(meta))
    return changes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvreuse.migrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="folders (searched for *.jsonl) or .jsonl/.meta.json files")
    ap.add_argument("--check", action="store_true", help="report what would change, write nothing")
    args = ap.parse_args(argv)
    files = []
    for p in map(Path, args.paths):
        if p.is_dir():
            files += sorted(p.rglob("*.jsonl"))
        elif p.name.endswith(".meta.json"):
            files.append(p.with_name(p.name[: -len(".meta.json")] + ".jsonl"))
        else:
            files.append(p)
    changed = 0
    for f in files:
        try:
            ch = migrate_pair(f, write=not args.check)
        except (ResultsSchemaError, OSError, json.JSONDecodeError) as e:
            print(f"kvreuse.migrate: {e}", file=sys.stderr)
            return 1
        if ch:
            changed += 1
            print(f"{'would migrate' if args.check else 'migrated'} {f} ({len(ch)} changes)")
    print(f"kvreuse.migrate: {changed} of {len(files)} runs {'need' if args.check else 'brought to'} "
          f"schema version {SCHEMA_VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
