"""Correct the commit a run's meta recorded, keeping what it recorded and why it was changed.

    python -m kvreuse.commit_correction --commit SHA --evidence TEXT META.meta.json...

For runs whose host recorded the wrong commit (the lent GPU host's copy of the tree carried a
stale ``.git``, so runs recorded that HEAD, ``-dirty``, instead of the commit the runner was
given; kvreuse.provenance.git_commit now prefers the passed one). ``git_commit`` becomes
``SHA (copy)``, and the meta's ``migration`` gets an entry with the old value and the evidence,
so nothing is changed silently. A meta that already records ``SHA (copy)`` is left alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from .results import SCHEMA_VERSION, atomic_write_text, dump_meta, meta_from_dict


def correct(path: Path, commit: str, evidence: str) -> str | None:
    """Rewrite one meta; returns the change, or None when it already records ``commit``."""
    data = json.loads(path.read_text())
    new = f"{commit} (copy)"
    if data.get("git_commit") == new:
        return None
    change = (f"git_commit: {data.get('git_commit')!r} -> {new!r} ({evidence})")
    data["git_commit"] = new
    data["migration"] = list(data.get("migration") or []) + [{
        "from_version": SCHEMA_VERSION, "to_version": SCHEMA_VERSION,
        "by": "kvreuse.commit_correction",
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "changes": [change]}]
    meta_from_dict(data, str(path))  # the result must read back
    atomic_write_text(path, dump_meta(data))
    return change


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvreuse.commit_correction", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commit", required=True, help="the commit the run's code was (a sha)")
    ap.add_argument("--evidence", required=True, help="how that is known (kept in the meta)")
    ap.add_argument("metas", nargs="+", type=Path, help="*.meta.json files")
    a = ap.parse_args(argv)
    for path in a.metas:
        if not path.name.endswith(".meta.json"):
            print(f"{path}: not a run's meta (*.meta.json); nothing changed", file=sys.stderr)
            return 2
        change = correct(path, a.commit, a.evidence)
        print(f"{path}: {change or 'already records this commit; left alone'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
