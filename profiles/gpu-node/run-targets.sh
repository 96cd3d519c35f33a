#!/usr/bin/env bash
# Run measurement targets of the DAG on one GPU node whose python3 has vLLM (and LMCache), e.g.
#   profiles/gpu-node/run-targets.sh h100 results/raw/h100/restart/apc.jsonl ...
# State (results, models, .snakemake) is kept in $KEEP between calls on the same node; the raw
# results, benchmarks and logs of the platform are packed into $OUT (if set) at the end.
# BUDGET_S bounds the run: at the limit Snakemake gets SIGINT, which stops its jobs' servers.
# Every server a job starts records its process group in $KVREUSE_PGID_DIR (a fresh folder per
# run); groups still recorded once Snakemake has ended (a job killed before it could stop its
# servers) get SIGINT, then SIGKILL, from `python -m kvreuse.procs stop-recorded`. Nothing else
# on the node is signalled: other jobs' servers are left alone.
set -uo pipefail
platform="${1:?usage: run-targets.sh PLATFORM TARGET...}"; shift
keep="${KEEP:-/root/keep}"
mkdir -p "$keep" && cp -a "$keep/." . 2>/dev/null || true
export KVREUSE_PGID_DIR
KVREUSE_PGID_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kvreuse-pgids.XXXXXX") || exit 1
export PYTHONHASHSEED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
timeout -s INT -k 60 "${BUDGET_S:-540}" python3 -m snakemake "$@" --profile profiles/gpu-node \
  --config "run_platforms=[\"$platform\"]" "report_platforms=[\"$platform\"]"
rc=$?
PYTHONPATH="$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}" \
  python3 -m kvreuse.procs stop-recorded "$KVREUSE_PGID_DIR" --grace 3 \
  && rmdir "$KVREUSE_PGID_DIR"
mkdir -p "$keep" && cp -a results resources .snakemake "$keep/" 2>/dev/null
if [[ -n "${OUT:-}" ]]; then
  tar czf "$OUT/raw-$platform.tgz" results/raw/"$platform" results/benchmarks/"$platform" 2>/dev/null
  tar czf "$OUT/logs-$platform.tgz" results/logs/"$platform" 2>/dev/null
fi
echo "run-targets: snakemake exit $rc"
exit $rc
