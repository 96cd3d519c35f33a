"""LMCache arms: the vLLM connector flags, the LMCache config file and the LMCache server command.

Modules, each one job:

- :mod:`.settings`: an arm's ``lmcache:`` block: its keys and defaults (read from the config
  schema, workflow/schemas/config.schema.yaml, their one definition), the cross-key checks
  (``check_arm``), modes, stores and hashes.
- :mod:`.flags`: what vLLM gets: ``--kv-transfer-config``, the LMCache YAML and environment
  (``apply`` fills a server plan), and the same arm without the connector (``apc_only``).
- :mod:`.command`: the ``lmcache server`` command line (mode ``server``).
- :mod:`.store`: the store folders: the preflight (rule lmcache_store), listing and page-cache
  eviction after a stop, the model's KV bytes per token.
- :mod:`.logs`: after and during a run: LMCache's retrieve/store log lines, the compiled-kernel
  probe, the meta's ``lmcache`` block (``finish``).

These modules take the server plan (kvreuse.plan.ServerPlan) duck-typed and never import
kvreuse.plan, which imports them.

An arm's ``lmcache:`` block (config.yaml) names a mode and a store; ``flags.apply`` turns it
into processes and files. Every flag, config key, connector name, environment variable and
metric name in this package was checked against the sources of vLLM 0.26.0 and LMCache 0.5.6,
and the flags, config keys, log lines and kernel modules again against LMCache 0.5.3, the
release pinned for GPU runs (envs/serve.yaml: its compiled kernels load against vLLM's torch;
0.5.6's do not). Paths are relative to each package.

- ``in_process``: vLLM loads ``LMCacheConnectorV1`` (vllm: distributed/kv_transfer/kv_connector/
  factory.py), which reads the YAML named by ``LMCACHE_CONFIG_FILE`` (lmcache:
  integration/vllm/utils.py). Stores: ``cpu`` (``local_cpu``), ``local_disk`` (``local_disk`` +
  ``max_local_disk_size``) and ``fs`` (the FS remote connector, the one an ``fs://`` URL selects,
  configured as ``remote_storage_plugins: [fs]``: the legacy ``remote_url: fs:///path`` form
  fails ``parse_remote_url``'s host/port assertion and LMCache then runs with no remote store,
  logging only a warning).
  Two more stores are servers the run starts on 127.0.0.1 (kvreuse.remote_store), reached by
  ``remote_url`` (lmcache 0.5.3: v1/config.py; v1/storage_backend/connector/redis_adapter.py,
  lm_adapter.py): ``redis`` (``redis://``, Debian's redis-server) and ``lm_server``
  (``lm://``, LMCache's own ``python -m lmcache.v1.server``).
- ``server``: a standalone ``lmcache server`` (lmcache: cli/commands/server.py) on 127.0.0.1,
  started and stopped by the run like vLLM; vLLM loads ``LMCacheMPConnector`` and talks to it
  over ZMQ. Stores: ``cpu`` (L1 in the server's memory) and ``fs`` (plus the ``fs`` L2 adapter,
  lmcache: v1/distributed/l2_adapters/fs_l2_adapter.py, whose lookups stat the files, so
  it survives a server restart).

Keys hash the same across processes: vLLM's block hash is ``--prefix-caching-hash-algo``
(sha256_cbor) seeded by ``PYTHONHASHSEED`` (vllm: v1/core/kv_cache_utils.py ``init_none_hash``
draws ``os.urandom`` when it is unset); in-process LMCache hashes token chunks with the vLLM
function named by ``pre_caching_hash_algorithm`` (default ``builtin``, which falls back to
Python's ``hash``) and calls the same ``init_none_hash``, so we set it to vLLM's algorithm; the
LMCache server hashes token ids itself (``--hash-algorithm``, default blake3, no seed).
"""
