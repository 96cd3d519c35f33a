"""Raw records and metas -> tables (CSV, Markdown, LaTeX), with pandas.

Latency statistics use successful requests only; failures are counted (``n_errors``) and an
experiment whose error fraction exceeds ``max_error_fraction`` fails here, loudly, instead of
producing a figure. Cache hits come from the server's counters in the metas. Runs are read
through the results schema (kvreuse.results) and phases are selected by their fields (kind,
prefix length, rate), never by their names.

Given the current config's expected config hashes (kvreuse.dag.table_freshness), each run is
current, stale or archived (kvreuse.freshness): runs.csv lists every run with its freshness,
stale runs are kept out of the comparison tables, which carry a ``freshness`` column, and
accounting.csv says what became of every configured run (kvreuse.accounting).

This module reads the runs (``load``), checks their errors, keeps stale runs out and builds the
table an experiment asks for (``build``), and writes it (``write``); the tables themselves are
built in:

- kvreuse.phase_stats: latency statistics and hit counters per phase (``phase_table``), the
  table of most experiments;
- kvreuse.tables_restart: ``restart_table``;
- kvreuse.tables_reload: ``reload_vs_recompute_table``, ``break_even_table`` (from the restart
  experiment's runs, kvreuse.breakeven);
- kvreuse.tables_serving: ``serving_table``, ``fidelity_table``;
- kvreuse.tables_overhead: ``random_overhead_table``;
- kvreuse.tables_pressure: ``pressure_table`` (prefix_repetition under KV pressure, the
  conversation run); kvreuse.tables_miss: ``miss_table`` (cache-miss overhead);
- kvreuse.tables_cross_instance: ``cross_instance_table``;
- kvreuse.tables_remote: ``remote_table``;
- kvreuse.tables_conversations: ``conversations_table`` (multiturn_long, chunk_sweep);
- kvreuse.tables_runs: ``runs_table``, ``cost_table``, ``read_benchmarks``;
- kvreuse.interference: ``interference_table`` (requests that overlapped another job's
  server start on a shared GPU);
- kvreuse.comparisons and kvreuse.accounting: ``comparisons_table``, ``accounting_table``.

Their names are re-exported here, so ``from kvreuse.aggregate import ...`` works as before.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd

from .accounting import JobLogs, accounting_table, load_attempts
from .comparisons import comparisons_table
from .config import CONVERSATION_EXPERIMENTS
from .freshness import Freshness, comparable, freshness
from .interference import interference_table
from .migrate import read_converted
from .phase_stats import COUNTER_COLUMNS, PHASE_FIELDS, counter_rows, latency_stats, phase_table, summed_counters
from .results import RequestRecord, RunMeta, meta_path, read_meta, read_records
from .tables_conversations import conversations_table
from .tables_cross_instance import cross_instance_table
from .tables_miss import miss_table
from .tables_overhead import random_overhead_table
from .tables_remote import remote_table
from .tables_pressure import pressure_table
from .tables_reload import (BREAK_EVEN_COLUMNS, RELOAD_COLUMNS, TENSOR_PARALLEL_COLUMNS, break_even_table,
                            reload_vs_recompute_table, tensor_parallel_table)
from .tables_restart import RESTART_KINDS, restart_table
from .tables_runs import cost_table, read_benchmarks, runs_table
from .tables_serving import fidelity_table, serving_table

__all__ = ["BREAK_EVEN_COLUMNS", "COUNTER_COLUMNS", "PHASE_FIELDS", "RECORD_COLUMNS", "RELOAD_COLUMNS", "RESTART_KINDS",
           "TooManyErrors", "break_even_table", "build", "check_errors", "comparable_runs", "cost_table", "counter_rows",
           "conversations_table", "cross_instance_table",
           "fidelity_table", "latency_stats", "load", "mark_freshness", "miss_table", "phase_table",
           "pressure_table",
           "random_overhead_table", "read_benchmarks", "reload_vs_recompute_table", "restart_table",
           "runs_table", "serving_table", "summed_counters", "TENSOR_PARALLEL_COLUMNS", "tensor_parallel_table",
           "write"]

log = logging.getLogger(__name__)


class TooManyErrors(RuntimeError):
    pass


RECORD_COLUMNS = [f.name for f in dataclasses.fields(RequestRecord)]


def load(jsonl_files: list[str | Path], *, convert_older: bool = False) -> tuple[pd.DataFrame, list[RunMeta]]:
    """Records (one row per request) and metas of runs, validated by the results schema.

    ``convert_older``: files of an older schema version (a pinned artifact, which cannot be
    rewritten) are read through kvreuse.migrate's converter, and each conversion is logged;
    otherwise they fail with the file and field named."""
    records, metas = [], []
    for f in jsonl_files:
        if convert_older:
            meta, recs, changes = read_converted(f)
            if changes:
                log.warning("%s: read through the converter from schema version 1 (%d changes: "
                            "phase kinds and fields from the phase names)", f, len(changes))
        else:
            meta, recs = read_meta(meta_path(f)), read_records(f)
        metas.append(meta)
        records += [dataclasses.asdict(r) for r in recs]
    return pd.DataFrame.from_records(records, columns=RECORD_COLUMNS), metas


def check_errors(df: pd.DataFrame, limit: float) -> None:
    if df.empty:
        return
    frac = df.groupby(["platform", "arm"])["error"].apply(lambda e: e.notna().mean())
    bad = frac[frac > limit]
    if len(bad):
        (platform, arm), f = next(iter(bad.items()))
        sample = df[(df.platform == platform) & (df.arm == arm) & df.error.notna()]["error"].iloc[0]
        raise TooManyErrors(
            f"{df['experiment'].iloc[0]} on {platform}/{arm}: {f:.0%} of requests failed "
            f"(max_error_fraction is {limit:.0%}). First error: {sample}. The raw file is kept; "
            f"fix the cause (see results/logs/{platform}/) and rerun that job.")


def comparable_runs(df: pd.DataFrame, metas: list[RunMeta], fresh: list[Freshness]):
    """The records, metas and freshness of the runs that enter a comparison table (not stale)."""
    keep = [i for i, f in enumerate(fresh) if comparable(f)]
    for i, f in enumerate(fresh):
        if i not in keep:
            m = metas[i]
            log.warning("%s/%s/%s is stale (config hash %s, the current config gives %s): kept "
                        "out of the table; rerun it, or name it under `archived` in config.yaml",
                        m.platform, m.experiment, m.arm, m.config_hash,
                        f.expected_config_hash or "none: not configured")
    kept = {(metas[i].platform, metas[i].experiment, metas[i].arm) for i in keep}
    if len(df):
        df = df[[k in kept for k in zip(df.platform, df.experiment, df.arm)]]
    return df, [metas[i] for i in keep], [fresh[i] for i in keep]


def mark_freshness(table: pd.DataFrame, metas: list[RunMeta], fresh: list[Freshness]) -> pd.DataFrame:
    """A ``freshness`` column (current | archived) on a comparison table's measured rows."""
    if table.empty or "platform" not in table.columns:
        return table
    keys = [k for k in ("platform", "experiment", "arm") if k in table.columns]
    marks = pd.DataFrame([{"platform": m.platform, "experiment": m.experiment, "arm": m.arm,
                           "freshness": f.freshness} for m, f in zip(metas, fresh)],
                         columns=["platform", "experiment", "arm", "freshness"])
    marks = marks[keys + ["freshness"]].drop_duplicates(keys)
    return table.merge(marks, on=keys, how="left").fillna({"freshness": ""})


def build(experiment: str, jsonl_files: list[str], max_error_fraction: float,
          benchmark_files: list[str] = (),
          links_gb_s: dict | None = None, convert_older: bool = False,
          expected_hashes: dict[str, str] | None = None, archived: list[dict] | None = None,
          context_files: list[str] = (), cost_targets: dict | None = None) -> pd.DataFrame:
    """``expected_hashes`` (kvreuse.freshness.run_key -> the current config's hash) and
    ``archived`` (config.yaml's section): stale runs are kept out of the comparison tables;
    None: every run is taken as it is (freshness ``unchecked``). ``context_files``: the
    accounting's attempts.yaml files and committed log archives (results/gpu-logs/*.tgz).
    ``cost_targets``: per platform its ``cost_target`` (config.yaml), reported in cost.csv."""
    df, metas = load(jsonl_files, convert_older=convert_older)
    fresh = [freshness(m, expected_hashes, archived) for m in metas]
    if experiment == "runs":
        return runs_table(metas, fresh if expected_hashes is not None else None)
    if experiment == "accounting":
        return accounting_table(
            metas, fresh, expected_hashes or {},
            attempts=load_attempts([f for f in context_files if str(f).endswith(".yaml")]),
            logs=JobLogs(archives=[f for f in context_files if str(f).endswith(".tgz")]))
    if experiment == "cost":
        return cost_table(metas, read_benchmarks(list(benchmark_files)), cost_targets)
    if experiment == "interference":  # every run's requests: the overlaps of the campaign
        return interference_table(df, metas)
    df, metas, fresh = comparable_runs(df, metas, fresh)
    table = _comparison_table(experiment, df, metas, max_error_fraction, links_gb_s)
    return mark_freshness(table, metas, fresh) if expected_hashes is not None else table


def _comparison_table(experiment: str, df: pd.DataFrame, metas: list[RunMeta],
                      max_error_fraction: float, links_gb_s: dict | None) -> pd.DataFrame:
    for (platform, arm), g in df.groupby(["platform", "arm"]) if len(df) else []:
        check_errors(g, max_error_fraction)
    if experiment == "reload_vs_recompute":
        return reload_vs_recompute_table(df, metas, links_gb_s)
    if experiment == "break_even":
        return break_even_table(df, metas, links_gb_s)
    if experiment == "tensor_parallel":
        return tensor_parallel_table(df, metas)
    if experiment == "restart":
        return restart_table(df, metas)
    if experiment == "serving":
        return serving_table(df, metas)
    if experiment == "fidelity":
        return fidelity_table(df, metas)
    if experiment == "random_overhead":
        return random_overhead_table(df, metas)
    if experiment == "pressure":
        return pressure_table(df, metas)
    if experiment == "miss":
        return miss_table(df, metas)
    if experiment == "cross_instance":
        return cross_instance_table(df, metas)
    if experiment == "remote":
        return remote_table(df, metas)
    if experiment in CONVERSATION_EXPERIMENTS:
        return conversations_table(df, metas)
    if experiment == "comparisons":
        return comparisons_table(df, metas)
    if experiment == "prefix_sweep":  # per length and kind: all its samples in one row
        return phase_table(df.assign(kind=df["phase_kind"]), metas, ["platform", "arm", "prefix_tokens", "kind"])
    if experiment == "multiturn":
        return phase_table(df, metas, ["platform", "arm", "turn", "context_tokens", "phase"], by="name")
    return phase_table(df, metas, ["platform", "arm", "phase"])  # the phase column: the kind


def write(table: pd.DataFrame, csv: str | Path, md: str | Path, tex: str | Path) -> None:
    table.to_csv(csv, index=False)
    rounded = table.round(2)
    Path(md).write_text(rounded.to_markdown(index=False) + "\n" if len(rounded) else "(no rows)\n")
    Path(tex).write_text(rounded.to_latex(index=False, na_rep="--", float_format="%.2f"))
