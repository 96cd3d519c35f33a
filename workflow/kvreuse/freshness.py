"""Whether a committed run still answers the current configuration: current, stale or archived.

Each run's meta records the config hash of what it ran (kvreuse.dag.run_params). The tables
compare it with the hash the CURRENT config gives for that (platform, experiment, arm):

``current``  the hashes match: the run measures what config.yaml says.
``stale``    they differ (or the run is no longer configured): the run measured something
             else (e.g. another warm-up count); it is listed in runs.csv and accounting.csv
             and kept out of the comparison tables.
``archived`` stale, but config.yaml's ``archived`` section names it (platform, optionally
             experiment and arm, and the commit it was made at): a historical result kept on
             purpose; it enters the tables marked ``archived``.

An ``archived`` entry matches a run only if the run's recorded commit is the entry's commit
(or, for ``commit: "unknown ..."``, the run recorded none), so a later run in the same place
is never archived by an entry written for an older one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .provenance import commit_sha
from .results import RunMeta

CURRENT, STALE, ARCHIVED = "current", "stale", "archived"
#: freshness when no expected hashes were given (the library called without a config)
UNCHECKED = "unchecked"


def run_key(platform: str, experiment: str, arm: str) -> str:
    """The key of a run in the expected hashes: ``platform/experiment/arm``."""
    return f"{platform}/{experiment}/{arm}"


@dataclass(frozen=True)
class Freshness:
    freshness: str              # current | stale | archived | unchecked
    expected_config_hash: str   # what the current config gives ("" when not configured)
    archived_note: str = ""     # the config's note (and commit) for an archived run


def unknown_commit(commit: str) -> bool:
    """``commit: "unknown (made before commits were recorded)"`` and the like."""
    return str(commit).strip().lower().startswith("unknown")


def archived_entry(meta: RunMeta, archived: list[dict]) -> dict | None:
    """The config's ``archived`` entry that names this run, if one does."""
    for entry in archived or []:
        if entry["platform"] != meta.platform:
            continue
        if entry.get("experiment") not in (None, meta.experiment):
            continue
        if entry.get("arm") not in (None, meta.arm):
            continue
        recorded = commit_sha(meta.git_commit)
        if unknown_commit(entry["commit"]):
            if recorded is None:
                return entry
        elif recorded and recorded.startswith(str(entry["commit"]).strip()):
            return entry
    return None


def freshness(meta: RunMeta, expected_hashes: dict[str, str] | None,
              archived: list[dict] | None = None) -> Freshness:
    """A run's freshness against ``expected_hashes`` (``run_key`` -> config hash)."""
    if expected_hashes is None:
        return Freshness(UNCHECKED, "")
    expected = expected_hashes.get(run_key(meta.platform, meta.experiment, meta.arm), "")
    if expected and meta.config_hash == expected:
        return Freshness(CURRENT, expected)
    entry = archived_entry(meta, archived or [])
    if entry is not None:
        return Freshness(ARCHIVED, expected, f"{entry.get('note', '').strip()} "
                                             f"(commit: {entry['commit']})".strip())
    return Freshness(STALE, expected)


def comparable(f: Freshness) -> bool:
    """Whether a run enters the comparison tables: current, archived, or not checked."""
    return f.freshness != STALE
