"""Provenance, stale results and every configured run accounted for: each run records its commit
(a GPU run without one does not start), a committed run made with another config is stale and
kept out of the comparison tables unless archived, and accounting.csv and the write-up say what
became of every configured run (kvreuse.provenance, kvreuse.freshness, kvreuse.accounting)."""

from __future__ import annotations

import copy
import io
import subprocess
import time
import tarfile
from pathlib import Path

import pytest

from kvreuse import aggregate, dag, paper, provenance
from kvreuse import config as kc
from kvreuse.results import Phase, RequestRecord, RunMeta, write_meta, write_records

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg(config) -> dict:
    """The study's config, measuring and reporting the CPU only, cold_warm and restart only."""
    c = copy.deepcopy(config)
    c["run_platforms"], c["report_platforms"] = ["cpu"], ["cpu"]
    c["experiments"] = {e: c["experiments"][e] for e in ("cold_warm", "restart")}
    c["experiments"]["restart"]["arms"] = ["apc"]
    return c


def write_run(root: Path, cfg: dict, experiment: str, arm: str, *, config_hash: str | None = None,
              platform: str = "cpu", commit: str | None = "0" * 40) -> str:
    """A synthetic run (cold and warm phases of a few requests) as the run rule writes it, with
    the config hash the current config gives it unless ``config_hash`` says otherwise."""
    expected = dag.run_params(cfg, experiment, platform, arm)["config_hash"]
    phases = {"cold": Phase(kind="cold", n_requests=1, wall_s=1.0, counters={}),
              "warm": Phase(kind="warm", n_requests=3, wall_s=1.0,
                            counters={"vllm:prefix_cache_hits": 30.0, "vllm:prefix_cache_queries": 40.0})}
    meta = RunMeta(status="ok", platform=platform, experiment=experiment, arm=arm,
                   arm_config=cfg["arms"][arm], params={}, accelerator={"kind": "cpu"},
                   versions={"vllm": "0.0"}, model={"name": "tiny-llama"}, server={}, client={},
                   config_hash=config_hash or expected, git_commit=commit, started_at="t0",
                   finished_at="t1", phases=phases, n_requests=4)
    records = [RequestRecord(platform=platform, experiment=experiment, arm=arm, phase=phase,
                             phase_kind=phase, seq=i, prompt_tokens=10, cached_tokens=0,
                             output_tokens=4, ttft_ms=ttft, itl_ms=[1.0], e2e_ms=ttft + 3, error=None)
               for i, (phase, ttft) in enumerate([("cold", 50.0), ("warm", 10.0), ("warm", 11.0),
                                                  ("warm", 12.0)])]
    jsonl = root / f"results/raw/{platform}/{experiment}/{arm}.jsonl"
    write_records(jsonl, records)
    write_meta(jsonl.with_name(f"{arm}.meta.json"), meta)
    return str(jsonl)


def build(table: str, files: list[str], cfg: dict, context_files=()):
    return aggregate.build(table, files, 0.05, context_files=context_files,
                           **dag.table_freshness(cfg, table))


# -- the commit in every meta ------------------------------------------------------------------
def test_git_commit_outside_a_checkout_is_the_one_passed_in(tmp_path, monkeypatch):
    monkeypatch.delenv(provenance.COMMIT_ENV, raising=False)
    assert provenance.git_commit(tmp_path) is None
    monkeypatch.setenv(provenance.COMMIT_ENV, "abc123")
    assert provenance.git_commit(tmp_path) == "abc123 (copy)"
    assert provenance.commit_sha(provenance.git_commit(tmp_path)) == "abc123"


def test_git_commit_in_a_checkout_is_head_and_says_dirty(tmp_path, monkeypatch):
    monkeypatch.delenv(provenance.COMMIT_ENV, raising=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(git + ["init", "-q"], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run(git + ["add", "f"], check=True)
    subprocess.run(git + ["commit", "-qm", "c"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert provenance.git_commit(tmp_path) == head
    (tmp_path / "f").write_text("2")
    assert provenance.git_commit(tmp_path) == head + "-dirty"
    # the commit the runner passed wins over a .git that came with a copied tree (the lent GPU
    # host's copy held a stale HEAD: its runs recorded that commit, -dirty)
    monkeypatch.setenv(provenance.COMMIT_ENV, "passed-in")
    assert provenance.git_commit(tmp_path) == "passed-in (copy)"


def test_a_recorded_commit_is_corrected_with_its_evidence_kept_in_the_meta(tmp_path):
    from kvreuse import commit_correction
    from kvreuse.results import read_meta
    src = REPO / "results/raw/h200/serving/apc.meta.json"
    meta = tmp_path / "apc.meta.json"
    meta.write_text(src.read_text())
    before = read_meta(meta)
    assert commit_correction.main(["--commit", "a947b781aeb4", "--evidence", "the runner's KVREUSE_GIT_COMMIT",
                                   str(meta)]) == 0
    after = read_meta(meta)
    assert after.git_commit == "a947b781aeb4 (copy)"
    last = after.migration[-1]
    assert last["by"] == "kvreuse.commit_correction" and before.git_commit in last["changes"][0]
    assert "the runner's KVREUSE_GIT_COMMIT" in last["changes"][0]
    assert commit_correction.main(["--commit", "a947b781aeb4", "--evidence", "x", str(meta)]) == 0
    assert len(read_meta(meta).migration) == len(after.migration)  # already so: left alone


def test_a_gpu_run_without_a_commit_is_refused_and_says_how_to_pass_it():
    problem = provenance.commit_problem("h200", None)
    assert problem and "KVREUSE_GIT_COMMIT" in problem and "run-targets.sh" in problem
    assert provenance.commit_problem("h200", "abc (copy)") is None
    assert provenance.commit_problem("cpu", None) is None  # the CPU records null


def test_run_targets_sh_refuses_without_a_commit(tmp_path):
    """On a host without .git, without $KVREUSE_GIT_COMMIT or .kvreuse-commit: nothing runs."""
    script = tmp_path / "run-targets.sh"
    script.write_text((REPO / "profiles/gpu-node/run-targets.sh").read_text())
    env = {"PATH": "/usr/bin:/bin", "KEEP": str(tmp_path / "keep")}
    r = subprocess.run(["bash", str(script), "h200", "x"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "KVREUSE_GIT_COMMIT" in r.stderr
    assert not (tmp_path / "keep").exists()  # stopped before anything


def test_run_targets_sh_gives_its_jobs_the_deadline_and_starts_prioritized_targets_first(tmp_path):
    """BUDGET_S becomes the jobs' KVREUSE_DEADLINE (an alternating job starts no server run the
    budget would cut off) and PRIORITIZE Snakemake's --prioritize (a python3 stand-in records
    what Snakemake would have been given)."""
    script = tmp_path / "run-targets.sh"
    script.write_text((REPO / "profiles/gpu-node/run-targets.sh").read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text('#!/bin/bash\necho "$KVREUSE_DEADLINE $*" >> "$CALLS"\n')
    (bin_dir / "python3").chmod(0o755)
    calls = tmp_path / "calls"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "KEEP": str(tmp_path / "keep"), "CALLS": str(calls),
           "KVREUSE_GIT_COMMIT": "0" * 40, "BUDGET_S": "300", "PRIORITIZE": "results/raw/h200/restart/a.jsonl b"}
    before = int(time.time())
    r = subprocess.run(["bash", str(script), "h200", "t1", "t2"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    deadline, *args = calls.read_text().splitlines()[0].split()
    assert before + 300 <= int(deadline) <= int(time.time()) + 300
    assert args[:4] == ["-m", "snakemake", "t1", "t2"]
    i = args.index("--prioritize")
    assert args[i + 1:i + 3] == ["results/raw/h200/restart/a.jsonl", "b"] and args[i + 3] == "--profile"
    # without PRIORITIZE: no --prioritize
    calls.unlink()
    del env["PRIORITIZE"]
    subprocess.run(["bash", str(script), "h200", "t1"], cwd=tmp_path, env=env, capture_output=True, timeout=30)
    assert "--prioritize" not in calls.read_text().splitlines()[0]


# -- stale and archived ------------------------------------------------------------------------
def test_a_changed_config_makes_a_committed_result_stale_and_keeps_it_out(tmp_path, cfg):
    files = [write_run(tmp_path, cfg, "cold_warm", "apc")]
    assert set(build("cold_warm", files, cfg)["freshness"]) == {"current"}
    changed = copy.deepcopy(cfg)
    changed["experiments"]["cold_warm"]["warmup_requests"] = 5
    assert build("cold_warm", files, changed).empty  # the stale run is not compared
    runs = build("runs", files, changed)
    assert runs.loc[0, "freshness"] == "stale"
    assert runs.loc[0, "config_hash"] != runs.loc[0, "expected_config_hash"]
    assert runs.loc[0, "expected_config_hash"] == dag.run_params(changed, "cold_warm", "cpu", "apc")["config_hash"]


def test_an_archived_result_enters_the_tables_marked(tmp_path, cfg):
    files = [write_run(tmp_path, cfg, "cold_warm", "apc", config_hash="0ld0ld0ld0ld0ld0", commit=None)]
    cfg["archived"] = [{"platform": "cpu", "experiment": "cold_warm",
                        "commit": "unknown (made before commits were recorded)", "note": "kept"}]
    kc.validate(cfg, REPO / "workflow/schemas/config.schema.yaml")
    table = build("cold_warm", files, cfg)
    assert len(table) and set(table["freshness"]) == {"archived"}
    runs = build("runs", files, cfg)
    assert runs.loc[0, "freshness"] == "archived" and "kept" in runs.loc[0, "archived_note"]
    # an entry for another commit does not archive a run that recorded none
    cfg["archived"][0]["commit"] = "1234abcd"
    assert build("cold_warm", files, cfg).empty


def test_the_committed_h100_results_are_archived_and_the_h200_campaign_is_current(config):
    files = sorted(str(f) for f in (REPO / "results/raw").glob("h[12]00/*/*.jsonl"))
    runs = build("runs", files, config).set_index(["platform", "experiment", "arm"])
    assert runs.loc[("h100", "cold_warm", "apc"), "freshness"] == "archived"
    h200 = runs.loc["h200"]
    # the campaigns of 2026-11-29 (leases 2 to 5): every committed H200 run is current, the
    # lmcache_disk restart too (its rerun with the config's 50-GiB store replaced lease 2's)
    assert len(h200) and set(h200.freshness) == {"current"}
    restart = build("restart", [f for f in files if "/restart/" in f], config)
    assert "h200" in set(restart.platform)
    # the H100's LMCache restarts (LMCache 0.5.6, before arms grew lengths) no longer match the
    # config: stale, kept out of the table
    assert runs.loc[("h100", "restart", "lmcache_fs"), "freshness"] in ("stale", "archived")


# -- every configured run accounted for ---------------------------------------------------------
def test_a_configured_but_absent_run_is_missing_in_the_accounting_and_the_write_up(tmp_path, cfg, monkeypatch):
    monkeypatch.chdir(tmp_path)  # job logs are looked for under results/logs/ here
    files = [write_run(tmp_path, cfg, "cold_warm", "apc")]
    acc = build("accounting", files, cfg).set_index(["platform", "experiment", "arm"])
    assert acc.loc[("cpu", "cold_warm", "apc"), "status"] == "measured"
    assert acc.loc[("cpu", "restart", "apc"), "status"] == "missing"
    md = render_accounting(build("runs", files, cfg), acc.reset_index())
    assert "cpu / restart / apc: **missing**" in md
    assert "Every configured run completed" not in md


def test_the_write_up_says_every_run_completed_only_when_the_accounting_says_so(tmp_path, cfg, monkeypatch):
    monkeypatch.chdir(tmp_path)  # job logs are looked for under results/logs/ here
    cfg["experiments"] = {"cold_warm": cfg["experiments"]["cold_warm"]}
    files = [write_run(tmp_path, cfg, "cold_warm", "apc")]
    md = render_accounting(build("runs", files, cfg), build("accounting", files, cfg))
    assert "Every configured run completed" in md
    assert "Every configured run completed" not in render_accounting(build("runs", [], cfg), None)


def test_a_failed_run_shows_the_line_of_its_log(tmp_path, cfg, monkeypatch):
    files = [write_run(tmp_path, cfg, "cold_warm", "apc")]
    log = tmp_path / "results/logs/cpu/restart/apc.log"
    log.parent.mkdir(parents=True)
    log.write_text("INFO starting\nTraceback (most recent call last):\n  File x\n"
                   "kvreuse.errors.ServerError: vllm exited with code 1\n")
    monkeypatch.chdir(tmp_path)
    acc = build("accounting", files, cfg).set_index(["platform", "experiment", "arm"])
    row = acc.loc[("cpu", "restart", "apc")]
    assert row["status"] == "failed" and row["reason"] == "kvreuse.errors.ServerError: vllm exited with code 1"
    assert row["evidence"].endswith("cpu/restart/apc.log")
    md = render_accounting(build("runs", files, cfg), acc.reset_index())
    assert "**failed**: kvreuse.errors.ServerError: vllm exited with code 1" in md


def test_a_job_that_stopped_at_the_time_budget_is_not_run_not_failed(tmp_path, cfg, monkeypatch):
    """Lease 5's miss job: it started no server run the budget would cut off (its finished runs
    kept for the next step); nothing in it failed."""
    from kvreuse.experiments.server_runs import TimeBudgetExhausted

    files = [write_run(tmp_path, cfg, "cold_warm", "apc")]
    log = tmp_path / "results/logs/cpu/restart/apc.log"
    log.parent.mkdir(parents=True)
    line = ("kvreuse.experiments.server_runs.TimeBudgetExhausted: miss: server run 2 of 2 of arm apc not "
            "started: 79 s of the runner's time budget left")
    log.write_text(f"Traceback (most recent call last):\n  File x\n    raise TimeBudgetExhausted(\n{line}\n")
    monkeypatch.chdir(tmp_path)
    row = build("accounting", files, cfg).set_index(["platform", "experiment", "arm"]).loc[("cpu", "restart", "apc")]
    assert row["status"] == "not run" and row["reason"] == line and row["evidence"].endswith("apc.log")
    assert TimeBudgetExhausted.__name__ in line  # the name the accounting looks for


def test_a_job_whose_servers_a_signal_stopped_is_not_run_not_failed(tmp_path, cfg, monkeypatch):
    """Lease 1 on h200x2: the runner's budget sent SIGINT while restart/lmcache_fs measured its
    last pair; kvreuse.server's handler stopped its vLLM. The job was interrupted, not failed."""
    files = [write_run(tmp_path, cfg, "cold_warm", "apc")]
    log = tmp_path / "results/logs/cpu/restart/apc.log"
    log.parent.mkdir(parents=True)
    line = "KeyboardInterrupt: received SIGINT; stopping servers"
    log.write_text(f"ERROR kvreuse.server: received SIGINT; stopping servers\nTraceback (most recent call last):\n"
                   f"  File x\n{line}\n")
    monkeypatch.chdir(tmp_path)
    row = build("accounting", files, cfg).set_index(["platform", "experiment", "arm"]).loc[("cpu", "restart", "apc")]
    assert row["status"] == "not run" and row["reason"] == line


def test_a_log_inside_a_committed_archive_and_attempts_context(tmp_path, cfg, monkeypatch):
    monkeypatch.chdir(tmp_path)  # job logs are looked for under results/logs/ here
    archive = tmp_path / "results/gpu-logs/cpu-lease1.tgz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        data = b"RuntimeError: Engine core initialization failed\nKeyboardInterrupt\n"
        info = tarfile.TarInfo("results/logs/cpu/restart/apc.log")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    attempts = tmp_path / "results/raw/cpu/attempts.yaml"
    attempts.parent.mkdir(parents=True, exist_ok=True)
    attempts.write_text("- experiment: restart, cold_warm\n  arm: apc\n  outcome: not run\n"
                        "  reason: cut at the end of the session\n")
    acc = build("accounting", [], cfg, context_files=[str(attempts), str(archive)])
    acc = acc.set_index(["platform", "experiment", "arm"])
    row = acc.loc[("cpu", "restart", "apc")]
    assert row["status"] == "failed" and row["reason"] == "KeyboardInterrupt"
    assert row["evidence"] == f"{archive}:results/logs/cpu/restart/apc.log"
    assert "cut at the end" in row["context"]
    # attempts.yaml adds context only: a run with neither raw file nor log stays missing
    assert acc.loc[("cpu", "cold_warm", "apc"), "status"] == "missing"


def test_the_accounting_is_a_table_of_the_workflow_made_from_every_raw_meta(cfg):
    assert "accounting" in dag.tables(cfg)
    assert dag.table_inputs(cfg, "accounting") == dag.table_inputs(cfg, "runs")
    assert list(dag.expected_hashes(cfg)) == ["cpu/cold_warm/apc", "cpu/restart/apc"]
    assert dag.table_freshness(cfg, "cost") == {}


def test_a_pinned_artifacts_runs_answer_the_config_it_was_bundled_with(tmp_path, config):
    """Rebuilt from a pinned artifact, the tables check its runs against its manifest's config
    (the checkout's config may differ): the small artifact's runs are all current."""
    import json

    from kvreuse import artifact

    pinned = copy.deepcopy(config)
    pinned["artifact"] = {"source": "a.tar.gz", "sha256": "0" * 64}
    assert dag.table_freshness(pinned, "runs") == {}
    members = artifact.read_members(REPO / "tests/data/artifact-small.tar.gz")
    for name, data in members.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    files = sorted(str(f) for f in tmp_path.glob("results/raw/*/*/*.jsonl"))
    fresh = dag.pinned_freshness(json.loads(members["manifest.json"]), "runs")
    runs = aggregate.build("runs", files, 0.05, convert_older=True, **fresh)
    assert len(runs) and set(runs["freshness"]) == {"current"}


def render_accounting(runs, acc) -> str:
    import pandas as pd

    runs = pd.read_csv(io.StringIO(runs.to_csv(index=False))) if len(runs) else runs
    acc = pd.read_csv(io.StringIO(acc.to_csv(index=False))) if acc is not None else None
    return paper.render(REPO / "paper/accounting.md.j2", paper.accounting_context(runs, acc))
