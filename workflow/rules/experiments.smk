# One run rule per (experiment, platform), named run_<experiment>_<platform>, so that a
# profile can send each GPU class to its own partition (profiles/pace/config.yaml).
for _platform in RUN_PLATFORMS:
    for _experiment in EXPERIMENTS:

        rule:
            name:
                f"run_{_experiment}_{_platform}"
            input:
                model=model_dir(_platform),
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
            conda:
                "../../envs/serve.yaml"
            script:
                "../scripts/run_experiment.py"


rule measure:
    """Only the measurements of run_platforms (for a GPU node without the analysis stack)."""
    input:
        [t for e in EXPERIMENTS for t in run_targets(e)],
