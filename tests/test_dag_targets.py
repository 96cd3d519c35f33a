"""kvreuse.dag: the workflow's targets and input functions, as plain functions of config
(no snakemake: committed files are looked up under a scratch root, a pinned artifact's folder
is handed in)."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from kvreuse import alternating, artifact as ka
from kvreuse import config as kc
from kvreuse import dag
from kvreuse.provenance import config_hash


def study(config, **over) -> dict:
    cfg = copy.deepcopy(config)
    cfg.update(over)
    return cfg


def pinned_study(config, tmp_path, **artifact) -> dict:
    tar = tmp_path / "kvreuse-artifact.tar.gz"
    tar.write_bytes(b"an artifact")
    pin = {"source": str(tar), "sha256": hashlib.sha256(b"an artifact").hexdigest(), **artifact}
    return study(config, artifact=pin)


def not_pinned():
    raise AssertionError("the pinned artifact's folder was asked for, with nothing pinned")


def touch(root, *paths):
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text("")


def test_snakemake_is_not_needed():
    probe = "import sys, kvreuse.dag; print([m for m in sys.modules if m.split('.')[0] == 'snakemake'])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_run_targets_are_the_run_platforms_arms(config):
    cfg = study(config, run_platforms=["cpu", "h200"])
    assert dag.run_targets(cfg, "baseline") == ["results/raw/cpu/baseline/no_cache.jsonl",
                                                "results/raw/h200/baseline/no_cache.jsonl"]
    restart = dag.run_targets(cfg, "restart")
    arms = config["experiments"]["restart"]["arms"]
    assert restart[:len(arms)] == [f"results/raw/cpu/restart/{arm}.jsonl" for arm in arms]
    assert len(restart) == 2 * len(arms)


def test_committed_targets_are_the_other_report_platforms_files(config, tmp_path):
    touch(tmp_path, "results/raw/h100/baseline/no_cache.jsonl", "results/raw/h100/baseline/apc.jsonl",
          "results/raw/h100/baseline/no_cache.meta.json", "results/raw/cpu/baseline/no_cache.jsonl",
          "results/raw/a100/baseline/no_cache.jsonl", "results/raw/h100/restart/apc.jsonl")
    cfg = study(config, run_platforms=["cpu"], report_platforms=["cpu", "h100"])
    # measured here (cpu) or not reported (a100): not committed targets; sorted, relative paths
    assert dag.committed_targets(cfg, "baseline", tmp_path) == [
        "results/raw/h100/baseline/apc.jsonl", "results/raw/h100/baseline/no_cache.jsonl"]
    assert dag.committed_targets(cfg, "multiturn", tmp_path) == []


def test_raw_inputs_are_measured_then_committed_files_then_their_metas(config, tmp_path):
    touch(tmp_path, "results/raw/h100/baseline/no_cache.jsonl")
    cfg = study(config, run_platforms=["cpu"], report_platforms=["cpu", "h100"])
    assert dag.raw_inputs(cfg, "baseline", not_pinned, tmp_path) == [
        "results/raw/cpu/baseline/no_cache.jsonl", "results/raw/h100/baseline/no_cache.jsonl",
        "results/raw/cpu/baseline/no_cache.meta.json", "results/raw/h100/baseline/no_cache.meta.json"]


def test_benchmark_files_of_runs_here_and_of_committed_platforms(config, tmp_path):
    touch(tmp_path, "results/benchmarks/h100/baseline/no_cache.tsv", "results/benchmarks/h100/restart/apc.tsv",
          "results/benchmarks/a100/baseline/no_cache.tsv")
    cfg = study(config, run_platforms=["cpu"], report_platforms=["cpu", "h100"])
    files = dag.benchmark_files(cfg, not_pinned, tmp_path)
    assert files[0] == "results/benchmarks/cpu/baseline/no_cache.tsv"
    # one per run job: a job per arm, or one for all arms where they alternate (random_overhead, miss)
    assert len(files) == sum(len(dag.run_targets(cfg, e)) for e in kc.EXPERIMENTS
                             if not alternating.alternates(e)) + len(alternating.EXPERIMENTS) + 2
    assert "results/benchmarks/cpu/random_overhead/alternating.tsv" in files
    assert files[-2:] == ["results/benchmarks/h100/baseline/no_cache.tsv", "results/benchmarks/h100/restart/apc.tsv"]


def test_each_table_reads_its_experiments_raw_files(config, tmp_path):
    cfg = study(config, run_platforms=["cpu"], report_platforms=["cpu"])
    every = dag.all_raw_inputs(cfg, not_pinned, tmp_path)
    raw = [f for f in every if f.startswith("results/raw/")]
    assert raw == sorted(raw) and len(raw) == 2 * sum(len(dag.run_targets(cfg, e)) for e in kc.EXPERIMENTS)
    assert dag.table_inputs(cfg, "runs", not_pinned, tmp_path) == raw
    assert dag.table_inputs(cfg, "cost", not_pinned, tmp_path) == raw
    assert dag.table_inputs(cfg, "fidelity", not_pinned, tmp_path) == dag.raw_inputs(cfg, "serving", not_pinned, tmp_path)
    for derived in ("reload_vs_recompute", "break_even", "tensor_parallel"):  # the restart's runs
        assert (dag.table_inputs(cfg, derived, not_pinned, tmp_path)
                == dag.raw_inputs(cfg, "restart", not_pinned, tmp_path))
    assert dag.table_inputs(cfg, "multiturn", not_pinned, tmp_path) == [
        "results/raw/cpu/multiturn/apc.jsonl", "results/raw/cpu/multiturn/apc.meta.json"]
    assert dag.benchmark_inputs(cfg, "cost", not_pinned, tmp_path) == dag.benchmark_files(cfg, not_pinned, tmp_path)
    assert dag.benchmark_inputs(cfg, "runs", not_pinned, tmp_path) == []


def test_tables_figures_and_targets(config):
    cfg = study(config, experiments={k: v for k, v in reversed(config["experiments"].items()) if k != "serving"})
    assert dag.experiments(cfg) == [e for e in kc.EXPERIMENTS if e != "serving"]  # the study's order
    assert dag.tables(cfg) == dag.experiments(cfg) + ["runs", "cost", "fidelity", "accounting", "interference",
                                                     "reload_vs_recompute", "break_even", "tensor_parallel",
                                                     "comparisons"]
    targets = dag.all_targets(config)
    assert targets[0] == "results/tables/baseline.csv"
    assert {"results/figures/reload_vs_recompute.pdf", "results/figures/break_even.pdf",
            "results/figures/tensor_parallel.pdf"} <= set(targets)
    # a figure's inputs: its own table first, then any other it reads
    assert dag.figure_tables("cold_warm") == ["results/tables/cold_warm.csv"]
    assert dag.figure_tables("break_even") == ["results/tables/break_even.csv",
                                               "results/tables/reload_vs_recompute.csv"]
    assert dag.figure_tables("restart")[0] == "results/tables/restart.csv"
    assert all(t in dag.tables(config) for f in dag.FIGURES for t in
               (Path(p).stem for p in dag.figure_tables(f)))
    assert targets[-3:] == ["results/notebooks/analysis.ipynb", "paper/build/kvreuse.pdf", "paper/build/kvreuse.md"]
    assert set(dag.FIGURE_TITLES) == set(dag.FIGURES)
    # a figure is drawn from its table: an experiment left out of the study has neither
    assert dag.figures(config) == dag.FIGURES and "results/figures/cross_instance.pdf" in targets
    assert "serving" not in dag.figures(cfg) and "serving" not in dag.tables(cfg)
    assert dag.figure_title("restart") == "Restart persistence" and dag.figure_title("new") == "new"


def test_run_params_hash_only_what_the_run_reads(config):
    spec = dag.run_params(config, "restart", "cpu", "lmcache_fs")
    assert spec["arm_name"] == "lmcache_fs" and spec["arm"] == config["arms"]["lmcache_fs"]
    assert spec["model_name"] == "tiny-llama" and spec["lmcache_dir"] == "resources/lmcache/cpu"
    assert spec["params"] == kc.experiment_params(config, "cpu", "restart")
    assert spec["config_hash"] == config_hash({k: v for k, v in spec.items() if k != "config_hash"})
    other = study(config)
    other["experiments"]["baseline"]["n_requests"] += 1  # another experiment
    other["platforms"]["h100"]["server"]["max_model_len"] = 1024  # another platform
    assert dag.run_params(other, "restart", "cpu", "lmcache_fs")["config_hash"] == spec["config_hash"]
    other["client"]["max_tokens"] += 1
    assert dag.run_params(other, "restart", "cpu", "lmcache_fs")["config_hash"] != spec["config_hash"]


def test_lmcache_preflight_lists_the_platforms_lmcache_runs(config):
    params = dag.lmcache_preflight_params(config, "cpu")
    assert params["store_root"] == "resources/lmcache/cpu"
    assert ["restart", "lmcache_mp_l2"] in params["runs"] and ["restart", "lmcache_fs"] in params["runs"]
    assert not any(e == "prefix_sweep" for e, _ in params["runs"])  # the sweep: APC only
    assert all(dag.uses_lmcache(config, arm) for _, arm in params["runs"])
    assert set(params["arms"]) == {arm for _, arm in params["runs"]}
    assert not dag.uses_lmcache(config, "apc")
    assert dag.preflight_file(config, "h200") == "resources/lmcache/h200/preflight.json"
    assert dag.model_dir(config, "h200") == "resources/models/llama-3.1-8b"


def test_table_params_give_reload_vs_recompute_the_link_bandwidths(config):
    links = dag.table_params(config, "reload_vs_recompute")["links_gb_s"]
    assert links["h100"] == {"pcie_gen5_x16": 64} and links["cpu"] == {}
    assert dag.table_params(config, "break_even") == dag.table_params(config, "reload_vs_recompute")
    assert dag.table_params(config, "restart") == {}


def test_attempts_files(tmp_path):
    touch(tmp_path, "results/raw/h100/attempts.yaml", "results/raw/h100/baseline/attempts.yaml")
    assert dag.attempts_files(tmp_path) == ["results/raw/h100/attempts.yaml"]


def test_no_artifact_pinned(config):
    assert not dag.pinned(config)
    assert dag.run_platforms(config) == config["run_platforms"]
    assert dag.artifact_citation(config) == {"doi": None, "source": None, "sha256": None}
    assert dag.artifact_config(config)["run_platforms"] == config["run_platforms"]
    assert "artifact" not in dag.artifact_config(config)


def test_a_pinned_artifact_replaces_the_runs(config, tmp_path):
    cfg = pinned_study(config, tmp_path, doi="10.5281/zenodo.1")
    dag.check_pinned(cfg)
    assert dag.pinned(cfg) and dag.run_platforms(cfg) == [] and dag.run_targets(cfg, "baseline") == []
    assert dag.pinned_dir(cfg) == f"resources/artifacts/{cfg['artifact']['sha256'][:16]}"
    assert dag.artifact_citation(cfg)["sha256"] == cfg["artifact"]["sha256"]
    assert dag.artifact_config(cfg)["run_platforms"] == []
    unpacked = tmp_path / "unpacked"
    touch(unpacked, "results/raw/h100/baseline/no_cache.jsonl", "results/raw/a100/baseline/no_cache.jsonl",
          "results/benchmarks/h100/baseline/no_cache.tsv")
    files = dag.raw_inputs(cfg, "baseline", lambda: str(unpacked))
    assert files == [f"{unpacked}/results/raw/h100/baseline/no_cache.jsonl",
                     f"{unpacked}/results/raw/h100/baseline/no_cache.meta.json"]
    assert dag.benchmark_files(cfg, lambda: str(unpacked)) == [f"{unpacked}/results/benchmarks/h100/baseline/no_cache.tsv"]
    assert dag.gpu_problem(study(cfg, run_platforms=["h200"]), []) is None  # nothing is measured


def test_a_pinned_artifact_with_another_sha256_stops_before_any_job(config, tmp_path):
    cfg = pinned_study(config, tmp_path, sha256="a" * 64)
    with pytest.raises(ka.ArtifactChecksumError, match="checksum mismatch"):
        dag.check_pinned(cfg)
    with pytest.raises(ka.ArtifactError, match="Zenodo record file"):
        dag.check_pinned(study(config, artifact={"source": "https://example.org/latest", "sha256": "a" * 64}))


def test_gpu_platforms_need_their_gpu_here(config):
    assert dag.gpu_problem(study(config, run_platforms=["cpu"]), []) is None
    cfg = study(config, run_platforms=["cpu", "h200", "h100"])
    assert dag.gpu_problem(cfg, ["NVIDIA H200", "NVIDIA H100 80GB HBM3"]) is None
    problem = dag.gpu_problem(cfg, ["NVIDIA H100 80GB HBM3"])
    assert problem.startswith("run_platforms asks for h200 on this machine")
    assert "h200 needs an H200 GPU (GPUs seen here: NVIDIA H100 80GB HBM3)" in problem
    for what_to_do in ("profiles/gpu-node", "--profile profiles/pace", "remove h200 from run_platforms"):
        assert what_to_do in problem
    none = dag.gpu_problem(cfg, [], "no nvidia-smi on PATH")
    assert "h200, h100" in none and "GPUs seen here: none: no nvidia-smi on PATH" in none
