"""Every configured run accounted for: what became of each (platform, experiment, arm) that the
config asks for (report_platforms and run_platforms x experiments x their arms).

The status is derived from files, never typed by hand:

``measured``  a raw file whose config hash is the current config's (kvreuse.freshness)
``not run``   a raw file whose run recorded that it could not run, and why (meta ``reason``)
``stale``     a raw file made with another configuration (kept out of the comparison tables)
``archived``  a stale raw file that config.yaml's ``archived`` section keeps, with its note
``not run``   also: no raw file, and a job log that ends on the runner's time budget (an
              alternating job that started no server run the budget would cut off:
              kvreuse.experiments.server_runs.TimeBudgetExhausted) or on a signal that stopped
              the job's servers (the runner's budget, a scheduler's time limit), the line as the reason
``failed``    no raw file, but a job log: its last line that shows an error
              (results/logs/<platform>/<experiment>/<arm>.log, or alternating.log for an
              experiment whose arms share one job, or the same path inside a
              committed log archive results/gpu-logs/*.tgz, the newest copy), or else an
              attempts.yaml entry with outcome ``failed`` and the file that shows it
``missing``   configured, but no raw file and no log

results/raw/<platform>/attempts.yaml adds context only (column ``context``): what a person
wrote about a run tried on a GPU host.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pandas as pd
import yaml

from . import alternating
from .freshness import ARCHIVED, STALE, Freshness, run_key
from .results import RunMeta

MEASURED, NOT_RUN, FAILED, MISSING = "measured", "not run", "failed", "missing"
STATUSES = (MEASURED, NOT_RUN, FAILED, STALE, ARCHIVED, MISSING)
COLUMNS = ["platform", "experiment", "arm", "status", "reason", "evidence", "context",
           "freshness", "expected_config_hash", "recorded_config_hash", "git_commit"]
#: the exception with which a job declines to start what the runner's time budget would cut off
#: (kvreuse.experiments.server_runs): the run was not done, nothing in it failed
BUDGET_EXHAUSTED = "TimeBudgetExhausted"
#: the line with which kvreuse.server's signal handler stops a job's servers: the job was
#: interrupted (the runner's time budget sends SIGINT, SLURM's time limit SIGTERM), not failed
INTERRUPTED = re.compile(r"received SIG[A-Z]+; stopping servers")
#: a log line that says why a job stopped
ERROR_LINE = re.compile(rf"Error|Exception|Traceback|[Ff]ailed|KeyboardInterrupt|Killed|{BUDGET_EXHAUSTED}")


def _split(value) -> list[str]:
    """attempts.yaml may name several experiments or arms in one entry: ``apc, lmcache_fs``."""
    return [v.strip() for v in str(value).split(",") if v.strip()]


def load_attempts(paths) -> dict[str, dict]:
    """results/raw/<platform>/attempts.yaml entries by run key (one entry may name several)."""
    out = {}
    for p in paths or []:
        platform = Path(p).parent.name
        for a in yaml.safe_load(Path(p).read_text()) or []:
            for e in _split(a.get("experiment", "")):
                for arm in _split(a.get("arm", "")):
                    out[run_key(platform, e, arm)] = {**a, "source": str(p)}
    return out


def why_failed(text: str) -> str:
    """The last line of a job log that shows an error (the exception itself, not the
    ``Traceback`` header above it), or the log's last line when none does."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "the log is empty"
    hits = [line for line in lines if ERROR_LINE.search(line)]
    if not hits:
        return f"the log ends without an error line: {lines[-1][:500]}"
    line = hits[-1]
    if line.startswith("Traceback"):
        line = lines[-1]
    return line[:500]


class JobLogs:
    """The run jobs' logs, on disk (``log_root``) or inside committed log archives."""

    def __init__(self, log_root: Path | str = "results/logs", archives=()):
        self.log_root = Path(log_root)
        self.archived: dict[str, tuple[float, str, str]] = {}  # member -> (mtime, archive, text)
        for archive in archives or []:
            with tarfile.open(archive) as tar:
                for m in tar.getmembers():
                    if not (m.isfile() and m.name.endswith(".log")) or m.name.count("/") != 4:
                        continue
                    if m.name in self.archived and self.archived[m.name][0] >= m.mtime:
                        continue
                    text = tar.extractfile(m).read().decode(errors="replace")
                    self.archived[m.name] = (m.mtime, str(archive), text)

    def find(self, platform: str, experiment: str, arm: str) -> tuple[str, str] | None:
        """(where, text) of a run's job log: the file, else the newest archived copy; for an
        alternating experiment, the log of the one job that ran all its arms."""
        stems = [arm] + ([alternating.JOB] if alternating.alternates(experiment) else [])
        for stem in stems:
            rel = f"{platform}/{experiment}/{stem}.log"
            path = self.log_root / rel
            if path.is_file():
                return str(path), path.read_text(errors="replace")
            member = f"results/logs/{rel}"
            if member in self.archived:
                _, archive, text = self.archived[member]
                return f"{archive}:{member}", text
        return None


def _context(attempt: dict | None) -> str:
    if not attempt:
        return ""
    reason = " ".join(str(attempt.get("reason", "")).split())
    return f"attempts.yaml: {attempt.get('outcome', '')}: {reason}".strip()


def accounting_table(metas: list[RunMeta], fresh: list[Freshness],
                     expected_hashes: dict[str, str], attempts: dict[str, dict] | None = None,
                     logs: JobLogs | None = None) -> pd.DataFrame:
    """One row per configured run (the keys of ``expected_hashes``, in their order)."""
    attempts, logs = attempts or {}, logs or JobLogs(archives=())
    by_key = {run_key(m.platform, m.experiment, m.arm): (m, f) for m, f in zip(metas, fresh)}
    rows = []
    for key, expected in expected_hashes.items():
        platform, experiment, arm = key.split("/")
        row = {"platform": platform, "experiment": experiment, "arm": arm, "reason": "",
               "evidence": "", "context": _context(attempts.get(key)), "freshness": "",
               "expected_config_hash": expected, "recorded_config_hash": "", "git_commit": ""}
        if key in by_key:
            m, f = by_key[key]
            row.update(freshness=f.freshness, recorded_config_hash=m.config_hash or "",
                       git_commit=m.git_commit or "",
                       evidence=f"results/raw/{platform}/{experiment}/{arm}.meta.json")
            if m.status != "ok":
                row.update(status=NOT_RUN, reason=m.reason or f"status {m.status}, no reason recorded")
            elif f.freshness == STALE:
                row.update(status=STALE, reason=f"made with config hash {m.config_hash}; the "
                                                f"current config gives {expected}")
            elif f.freshness == ARCHIVED:
                row.update(status=ARCHIVED, reason=f.archived_note)
            else:
                row.update(status=MEASURED)
        elif (log := logs.find(platform, experiment, arm)) is not None:
            reason = why_failed(log[1])
            stopped = BUDGET_EXHAUSTED in reason or INTERRUPTED.search(reason)
            row.update(status=NOT_RUN if stopped else FAILED, evidence=log[0], reason=reason)
        elif attempts.get(key, {}).get("outcome") == "failed" and attempts[key].get("evidence"):
            row.update(status=FAILED, evidence=str(attempts[key]["evidence"]),
                       reason=" ".join(str(attempts[key].get("reason", "")).split()))
        else:
            row.update(status=MISSING, reason="configured, but no raw file and no job log")
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def all_measured(table: pd.DataFrame) -> bool:
    """Whether every configured run was measured with the current configuration."""
    return len(table) > 0 and bool((table["status"] == MEASURED).all())

