"""Config lookups beyond the JSON schema: per-platform merges and cross-key checks.

The schema (workflow/schemas/config.schema.yaml) catches unknown keys and wrong types; the
checks here catch what a schema cannot: an arm that names no known arm, a prefix longer
than the model's context, a platform whose model is not defined.
"""

from __future__ import annotations

import copy

EXPERIMENTS = ("baseline", "cold_warm", "restart", "prefix_sweep", "multiturn", "serving",
               "random_overhead")


class ConfigError(ValueError):
    pass


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def server_config(config: dict, platform: str) -> dict:
    return deep_merge(config["server"], config["platforms"][platform]["server"])


def experiment_params(config: dict, platform: str, experiment: str) -> dict:
    over = config["platforms"][platform].get("experiments", {}).get(experiment, {})
    return deep_merge(config["experiments"][experiment], over)


def model_name(config: dict, platform: str) -> str:
    return config["platforms"][platform]["model"]


def arms_for(config: dict, experiment: str, platform: str | None = None) -> list[str]:
    if platform is None:
        return list(config["experiments"][experiment]["arms"])
    return list(experiment_params(config, platform, experiment)["arms"])


def check(config: dict) -> None:
    """Cross-key checks; raises ConfigError naming the key and what is allowed."""
    platforms = config["platforms"]
    for key in ("run_platforms", "report_platforms"):
        for p in config[key]:
            if p not in platforms:
                raise ConfigError(f"{key}: platform {p!r} has no entry under 'platforms' "
                                  f"(defined: {sorted(platforms)})")
    for p, pc in platforms.items():
        if pc["model"] not in config["models"]:
            raise ConfigError(f"platforms.{p}.model: {pc['model']!r} is not defined under 'models' "
                              f"(defined: {sorted(config['models'])})")
    for exp in config["experiments"]:
        for p in platforms:
            params = experiment_params(config, p, exp)
            for arm in params["arms"]:
                if arm not in config["arms"]:
                    raise ConfigError(f"experiments.{exp}.arms: {arm!r} is not a known arm "
                                      f"(allowed: {sorted(config['arms'])})")
            limit = server_config(config, p)["max_model_len"]
            need = params.get("prefix_tokens", 0) + params.get("suffix_tokens", 0) + config["client"]["max_tokens"]
            if exp == "prefix_sweep" and params["prefix_tokens_list"] != "auto":
                need = max(params["prefix_tokens_list"]) + params["suffix_tokens"] + config["client"]["max_tokens"]
            if exp == "serving":
                need = params["input_len"] + max(params["output_len"], config["client"]["max_tokens"])
            if exp == "random_overhead":
                need = params["system_tokens"] + params["context_tokens"] + config["client"]["max_tokens"]
            if exp == "multiturn":
                need = params["system_tokens"] + params["turns"] * (params["user_tokens"] + config["client"]["max_tokens"])
            if need > limit:
                raise ConfigError(
                    f"experiments.{exp} on platform {p}: prompts reach {need} tokens but "
                    f"platforms.{p}.server.max_model_len is {limit}; shorten the prefix or raise the limit")
    for name, arm in config["arms"].items():
        if arm.get("lmcache") is not None:
            from . import lmcache_arms
            lmcache_arms.check_arm(name, arm["lmcache"])
        if arm.get("restart_lmcache_server") and (arm.get("lmcache") or {}).get("mode") != "server":
            raise ConfigError(f"arms.{name}.restart_lmcache_server: only for an arm with "
                              f"lmcache.mode 'server' (a standalone LMCache server to restart)")
