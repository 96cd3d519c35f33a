#!/usr/bin/env bash
# One step of a GPU campaign on the lent host (a `device` call, under its 10-minute limit), run
# from the tree's root after ../shared/gpu-host/install-wheels.sh installed vLLM, LMCache and
# Snakemake into $SITE (default /root/site):
#   KVREUSE_GIT_COMMIT=<sha> OUT=$OUT bash profiles/gpu-node/campaign-step.sh h200 [TARGET...]
# Each step measures what is still missing (default target: `measure`) until BUDGET_S (default
# 540 s); state stays in $KEEP between steps, and the platform's raw results, benchmarks and job
# logs come back in $OUT after every step (run-targets.sh), so an interruption loses one step's
# work, not the campaign's. PRIORITIZE="TARGET ..." starts those targets' jobs first, and an
# alternating job starts no server run that BUDGET_S would cut off (run-targets.sh).
#
# The campaign's state is this host's $KEEP: the tree's committed raw results of the platform
# are dropped from this copy (they are superseded by the campaign, git keeps them, and a kept
# output would not be measured again), unless TREE_RESULTS=1 (a host lent anew mid-campaign: the
# tree then holds the campaign's results committed so far). NEW_CAMPAIGN=1 (the first step)
# also drops an earlier campaign's state on this host. The stores' disk cap and the jobs' host
# memory cap are what this host has free less a margin of 6 GiB (two 50-GiB file stores then
# run one after the other on a 64-GiB disk; HOST_MEM_GB overrides the memory cap where the host's
# free memory grows as it is used); profiles/gpu-node caps the GPU share.
set -uo pipefail
platform="${1:?usage: campaign-step.sh PLATFORM [TARGET...]}"; shift
targets=("${@:-measure}")
site="${SITE:-/root/site}"
export KEEP="${KEEP:-/root/keep}"
export PYTHONPATH="$site:$PWD/workflow"
# redis-server for the remote experiment's Redis arm, where envs/gpu-host-redis.sh installed it
# (REDIS_HOME, default /root/redis): kvreuse starts it from PATH (server.redis_server)
redis_home="${REDIS_HOME:-/root/redis}"
if [[ -x "$redis_home/bin/redis-server" ]]; then export PATH="$redis_home/bin:$PATH"; fi
export DROP_STORES=1  # run-targets.sh: stores left by runs cut off at the budget are deleted
if [[ "${NEW_CAMPAIGN:-0}" == 1 ]]; then  # nothing of an earlier campaign on this host counts
  rm -rf "$KEEP/results/raw/$platform" "$KEEP/results/benchmarks/$platform"
fi
if [[ "${TREE_RESULTS:-0}" != 1 ]]; then
  echo "campaign-step: this tree's results/raw/$platform and results/benchmarks/$platform are" \
       "superseded by the campaign (its state on this host: $KEEP; TREE_RESULTS=1 keeps the tree's)"
  rm -rf "results/raw/$platform" "results/benchmarks/$platform"
fi
free_gb=$(df -P --block-size=1G . | awk 'NR==2 {print $4}')
disk_cap=$(( free_gb > 7 ? free_gb - 6 : 1 ))
avail_gb=$(free -g | awk '/Mem:/ {print $7}')
mem_cap=$(( avail_gb > 7 ? avail_gb - 6 : 1 ))
# A host whose memory grows as it is used (the lent hosts with several H200: MemTotal reads 31
# GiB at the start, the limit is 256 GiB; ../.library/device/KINDS.md) says too little here:
# HOST_MEM_GB gives the cap instead (its limit less the same margin)
if [[ -n "${HOST_MEM_GB:-}" ]]; then
  echo "campaign-step: host_mem_gb cap $HOST_MEM_GB from HOST_MEM_GB (free says $avail_gb GiB available)"
  mem_cap=$HOST_MEM_GB
  export KVREUSE_HOST_MEM_GB=$HOST_MEM_GB  # the LMCache preflight's memory check (kvreuse.lmcache.store)
fi
echo "campaign-step: $(date -u +%FT%TZ) platform $platform, targets ${targets[*]}, free disk ${free_gb} GiB" \
     "(store_disk_gb cap $disk_cap), memory: ${avail_gb} GiB available (host_mem_gb cap $mem_cap)"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
# --resources on the command line replaces the profile's list: all of its caps are given here
caps=$(sed -n 's/^  - \(gpu_pct\)=/\1=/p' profiles/gpu-node/config.yaml | tr '\n' ' ')
bash profiles/gpu-node/run-targets.sh "$platform" "${targets[@]}" --resources $caps \
  "host_mem_gb=$mem_cap" "store_disk_gb=$disk_cap"
rc=$?
echo "campaign-step: $(date -u +%FT%TZ) done (snakemake exit $rc); runs of $platform on this host:"
PYTHONPATH="$PWD/workflow" python3 - "$platform" <<'EOF'
import glob, json, sys
for f in sorted(glob.glob(f"results/raw/{sys.argv[1]}/*/*.meta.json")):
    m = json.load(open(f))
    starts = [s["startup_s"] for s in m.get("server_starts", []) if s["process"].startswith("vllm")]
    print(f"  {m['experiment']}/{m['arm']}: {m['status']} {m.get('reason') or ''} requests {m.get('n_requests')}"
          f" errors {m.get('n_errors')} starts {starts} lmcache kernels {(m.get('lmcache') or {}).get('cuda_kernels')}")
EOF
exit $rc
