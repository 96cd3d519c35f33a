"""Jobs that shared a GPU: which measured requests overlapped another run's server start, what
that cost (kvreuse.interference), and the GPU-minutes held counted once per GPU."""

import datetime as dt

import pandas as pd
import pytest

from kvreuse import interference
from kvreuse.results import RunMeta
from kvreuse.tables_runs import cost_table

T0 = 1_800_000_000.0
GPU = {"kind": "gpu", "name": "H200", "count": 1, "uuids": ["GPU-1"], "host": "node1"}


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def meta(arm: str, starts: list[tuple[float, float]], finished: float, accelerator=GPU) -> RunMeta:
    return RunMeta(status="ok", platform="h200", experiment="restart", arm=arm, arm_config={}, params={},
                   accelerator=accelerator, versions={}, model={}, server={}, client={}, config_hash="x",
                   git_commit="c", started_at=iso(T0), finished_at=iso(finished), phases={},
                   server_starts=[{"process": "vllm", "at": iso(end), "startup_s": end - begin}
                                  for begin, end in starts])


def records(arm: str, times: list[float], ttft: list[float]) -> list[dict]:
    return [{"platform": "h200", "experiment": "restart", "arm": arm, "phase_kind": "post_restart_cold",
             "prefix_tokens": 1024, "t_start": t, "e2e_ms": 500.0, "ttft_ms": v, "error": None}
            for t, v in zip(times, ttft)]


def test_requests_during_another_runs_start_are_compared_with_the_others():
    a = meta("apc", [(T0, T0 + 50)], T0 + 200)
    b = meta("lmcache_cpu", [(T0 + 100, T0 + 150)], T0 + 300)  # starts while apc measures
    df = pd.DataFrame(records("apc", [T0 + 60, T0 + 70, T0 + 120, T0 + 130, T0 + 160, T0 + 170],
                              [100, 102, 130, 128, 101, 99]))
    t = interference.interference_table(df, [a, b])
    assert len(t) == 1
    row = t.iloc[0]
    assert (row.arm, row.n_overlap, row.n_clear) == ("apc", 2, 4)
    assert row.ttft_overlap_median_ms == 129 and row.ttft_clear_median_ms == 100.5
    assert row.diff_median_ms == pytest.approx(28.5)


def test_a_run_own_start_or_another_gpu_is_no_overlap():
    other_gpu = {**GPU, "uuids": ["GPU-2"]}
    a = meta("apc", [(T0, T0 + 50), (T0 + 100, T0 + 150)], T0 + 200)
    b = meta("lmcache_cpu", [(T0 + 100, T0 + 150)], T0 + 300, accelerator=other_gpu)
    df = pd.DataFrame(records("apc", [T0 + 120, T0 + 160], [1, 2]))
    assert interference.interference_table(df, [a, b]).empty


def test_jobs_sharing_a_gpu_hold_it_once():
    spans = [(("n", ("G",)), 0, 60, 1), (("n", ("G",)), 30, 120, 1), (("n", ("G",)), 180, 240, 1),
             (None, 0, 60, 1)]
    assert interference.held_gpu_minutes(spans) == pytest.approx((120 + 60 + 60) / 60)


def test_the_cost_table_total_counts_shared_time_once():
    a = meta("apc", [(T0, T0 + 50)], T0 + 120)
    b = meta("lmcache_cpu", [(T0 + 60, T0 + 110)], T0 + 180)
    bench = {("h200", "restart", "apc"): 120.0, ("h200", "restart", "lmcache_cpu"): 120.0}
    t = cost_table([a, b], bench)
    total = t[t.experiment == "TOTAL"].iloc[0]
    assert total.gpu_minutes == pytest.approx(4.0)        # the jobs' own times, summed
    assert total.gpu_minutes_held == pytest.approx(3.0)   # T0 .. T0+180 held once


def test_the_write_up_says_what_sharing_the_gpu_held_and_cost():
    from kvreuse.paper import sharing

    cost = pd.DataFrame([{"platform": "h200", "experiment": "TOTAL", "gpu_minutes": 30.0, "gpu_minutes_held": 14.0},
                         {"platform": "cpu", "experiment": "TOTAL", "gpu_minutes": 0.0, "gpu_minutes_held": 0.0}])
    inter = pd.DataFrame([{"platform": "h200", "n_overlap": 3, "diff_median_ms": 4.0, "diff_ci95_lo_ms": 1.0},
                          {"platform": "h200", "n_overlap": 2, "diff_median_ms": -1.0, "diff_ci95_lo_ms": -3.0}])
    assert sharing(cost, inter) == [{"platform": "h200", "held": 14.0, "summed": 30.0, "overlap_n": 5,
                                     "conditions": 2, "slower": 1, "max_diff_ms": 4.0}]
    assert sharing(cost, None)[0]["conditions"] == 0
    assert sharing(None, None) == []


def test_the_write_up_sets_each_arm_of_both_platforms_side_by_side():
    from kvreuse.paper import platform_change

    t = pd.DataFrame([
        {"platform": "h100", "arm": "lmcache_fs", "status": "ok", "verdict": "not persisted", "lmcache_kernels": "fallback",
         "post_restart_first_ttft_median_ms": 900.0, "post_restart_cold_ttft_median_ms": 100.0, "latency_prefix_tokens": 1024},
        {"platform": "h200", "arm": "lmcache_fs", "status": "ok", "verdict": "persisted", "lmcache_kernels": "loaded",
         "post_restart_first_ttft_median_ms": 50.0, "post_restart_cold_ttft_median_ms": 60.0, "latency_prefix_tokens": 1024},
        {"platform": "h200", "arm": "apc", "status": "ok", "verdict": "not persisted"}])
    (r,) = platform_change(t)
    assert (r["arm"], r["verdict_before"], r["verdict_after"]) == ("lmcache_fs", "not persisted", "persisted")
    assert r["lmcache_kernels_before"] == "fallback" and r["post_restart_first_ttft_median_ms_after"] == 50.0
    assert platform_change(None) == []


def test_the_cost_total_reports_a_platforms_target_against_what_its_named_experiments_held():
    import dataclasses

    from kvreuse.paper import cost_targets

    a = meta("apc", [(T0, T0 + 50)], T0 + 120)
    b = meta("lmcache_cpu", [(T0 + 60, T0 + 110)], T0 + 180)
    c = dataclasses.replace(meta("apc", [(T0 + 200, T0 + 260)], T0 + 500), experiment="pressure")
    bench = {("h200", "restart", "apc"): 120.0, ("h200", "restart", "lmcache_cpu"): 120.0,
             ("h200", "pressure", "apc"): 300.0}
    target = {"gpu_minutes": 2.5, "experiments": ["restart"], "source": "a test"}
    t = cost_table([a, b, c], bench, {"h200": target})
    total = t[t.experiment == "TOTAL"].iloc[0]
    assert total.gpu_minutes_held == pytest.approx(8.0)          # every run: T0 .. T0+180, T0+200 .. T0+500
    assert total.target_gpu_minutes_held == pytest.approx(3.0)   # restart's runs only
    assert (total.target_gpu_minutes, total.target_server_starts, total.target_startup_s_total,
            total.target_experiments) == (2.5, 2, 100.0, "restart")
    assert cost_targets(t) == [{"platform": "h200", "target": 2.5, "held": 3.0, "met": False,
                                "experiments": ["restart"], "starts": 2, "start_minutes": pytest.approx(100 / 60)}]
    # no target: the columns are empty and the write-up says nothing of one
    assert cost_targets(cost_table([a, b, c], bench)) == []


def test_the_h200_cost_target_reaches_the_cost_table_from_the_config(config):
    from kvreuse import dag

    got = dag.table_params(config, "cost")["cost_targets"]
    assert got["h200"]["gpu_minutes"] == 20 and "restart" in got["h200"]["experiments"]
    assert "cpu" not in got  # a platform without a target


def test_runs_say_which_server_runs_their_job_took_and_from_which_commit_and_gpu():
    import dataclasses

    from kvreuse.paper import taken_runs
    from kvreuse.tables_runs import runs_table

    other = {**GPU, "uuids": ["GPU-0"]}
    m = dataclasses.replace(meta("lmcache_cpu", [], T0 + 500), experiment="miss", server_starts=[
        {"process": "vllm", "server_run": 0, "at": iso(T0), "startup_s": 80.0, "resumed_from": iso(T0 + 100),
         "resumed_commit": "679988da (copy)", "resumed_gpu": other},
        {"process": "vllm", "server_run": 1, "at": iso(T0 + 200), "startup_s": 90.0, "resumed_from": iso(T0 + 300)},
        {"process": "vllm", "server_run": 2, "at": iso(T0 + 400), "startup_s": 60.0}])
    plain = meta("apc", [(T0, T0 + 50)], T0 + 120)
    t = runs_table([m, plain])
    assert t.iloc[0][["server_runs_taken", "taken_commits", "taken_gpus"]].tolist() == [2, "679988da", "GPU-0"]
    assert t.iloc[1][["server_runs_taken", "taken_commits", "taken_gpus"]].tolist() == [0, "", ""]
    assert taken_runs(t) == [{"platform": "h200", "experiment": "miss", "arm": "lmcache_cpu", "taken": 2,
                              "commits": ["679988da"], "gpus": ["GPU-0"]}]
