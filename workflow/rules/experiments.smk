# One run rule per (experiment, platform), named run_<experiment>_<platform>, so that a
# profile can send each GPU class to its own partition (profiles/pace/config.yaml).
# An experiment whose arms alternate across server runs (kvreuse.alternating, e.g.
# random_overhead) has one job per platform that writes every arm's files; the others have
# one job per arm ({arm} wildcard).
for _platform in RUN_PLATFORMS:
    for _experiment in EXPERIMENTS:
        if ALTERNATING(_experiment):

            rule:
                name:
                    f"run_{_experiment}_{_platform}"
                input:
                    model=model_dir(_platform, _experiment),
                    lmcache=alternating_lmcache_inputs(_experiment, _platform),
                output:
                    jsonl=alternating_outputs(_experiment, _platform, "jsonl"),
                    meta=alternating_outputs(_experiment, _platform, "meta.json"),
                params:
                    run=dag.alternating_params(config, _experiment, _platform),
                    server_logs=f"results/logs/{_platform}/{_experiment}",
                log:
                    f"results/logs/{_platform}/{_experiment}/{ALTERNATING_JOB}.log",
                benchmark:
                    f"results/benchmarks/{_platform}/{_experiment}/{ALTERNATING_JOB}.tsv"
                # its server runs go one after another, so it is a platform's longest job:
                # started first, it does not prolong a campaign whose other jobs share the GPU
                priority: 1
                resources:
                    server=1,  # one vLLM server at a time: the arms take turns
                    gpu_pct=job_resource(_experiment, _platform, "gpu_pct"),
                    host_mem_gb=job_resource(_experiment, _platform, "host_mem_gb"),
                    store_disk_gb=job_resource(_experiment, _platform, "store_disk_gb"),
                conda:
                    "../../envs/serve.yaml"
                script:
                    "../scripts/run_experiment.py"

        else:

            rule:
                name:
                    f"run_{_experiment}_{_platform}"
                input:
                    model=model_dir(_platform, _experiment),
                    lmcache=lmcache_inputs(_platform),
                output:
                    jsonl=f"results/raw/{_platform}/{_experiment}/{{arm}}.jsonl",
                    meta=f"results/raw/{_platform}/{_experiment}/{{arm}}.meta.json",
                params:
                    run=run_params(_experiment, _platform),
                    server_logs=f"results/logs/{_platform}/{_experiment}/{{arm}}",
                log:
                    f"results/logs/{_platform}/{_experiment}/{{arm}}.log",
                benchmark:
                    f"results/benchmarks/{_platform}/{_experiment}/{{arm}}.tsv"
                resources:
                    server=1,  # a job that holds a vLLM server; profiles cap how many run at once
                    # its share of a GPU node (kvreuse.gpu_share; capped in profiles/gpu-node)
                    gpu_pct=job_resource(_experiment, _platform, "gpu_pct"),
                    host_mem_gb=job_resource(_experiment, _platform, "host_mem_gb"),
                    store_disk_gb=job_resource(_experiment, _platform, "store_disk_gb"),
                conda:
                    "../../envs/serve.yaml"
                script:
                    "../scripts/run_experiment.py"


rule measure:
    """Only the measurements of run_platforms (for a GPU node without the analysis stack)."""
    input:
        [t for e in EXPERIMENTS for t in run_targets(e)],
