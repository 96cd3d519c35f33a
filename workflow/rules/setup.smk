rule model:
    """Make or fetch a model folder: tiny (made here), dummy (config + tokenizer), or hub."""
    output:
        directory(f"{MODELS_DIR}/{{model}}"),
    params:
        spec=model_spec,
    log:
        "results/logs/setup/model_{model}.log",
    benchmark:
        "results/benchmarks/setup/model_{model}.tsv"
    conda:
        "../../envs/serve.yaml"
    script:
        "../scripts/make_model.py"


rule lmcache_store:
    """LMCache store folders of a platform: writable, enough disk and memory, configs written."""
    output:
        f"{LMCACHE_DIR}/{{platform}}/preflight.json",
    params:
        spec=lmcache_preflight_params,
    log:
        "results/logs/setup/lmcache_{platform}.log",
    conda:
        "../../envs/serve.yaml"
    script:
        "../scripts/lmcache_preflight.py"
