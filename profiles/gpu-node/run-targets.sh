#!/usr/bin/env bash
# Run measurement targets of the DAG on one GPU node whose python3 has vLLM (and LMCache), e.g.
#   profiles/gpu-node/run-targets.sh h100 results/raw/h100/restart/apc.jsonl ...
# State (results, models, .snakemake) is kept in $KEEP between calls on the same node; the raw
# results, benchmarks and logs of the platform are packed into $OUT (if set) at the end.
# Jobs may share the GPU (config.yaml: platforms.<p>.server.jobs_per_gpu; caps in
# profiles/gpu-node/config.yaml); $KVREUSE_MEASURE_LOCK keeps their measurements apart.
# BUDGET_S bounds the run: at the limit Snakemake gets SIGINT, which stops its jobs' servers;
# an alternating job starts no server run that the budget would cut off ($KVREUSE_DEADLINE,
# kvreuse.experiments.server_runs). PRIORITIZE="TARGET ..." starts those targets' jobs first
# (Snakemake's --prioritize): the scheduler knows no job's length, and a long job started last
# is cut off at the budget, again and again.
# Every server a job starts records its process group in $KVREUSE_PGID_DIR (a fresh folder per
# run); groups still recorded once Snakemake has ended (a job killed before it could stop its
# servers) get SIGINT, then SIGKILL, from `python -m kvreuse.procs stop-recorded`. Nothing else
# on the node is signalled: other jobs' servers are left alone.
# Every run's meta records the commit of the code (git_commit). This host's copy of the tree has
# no .git, so the commit is passed in: $KVREUSE_GIT_COMMIT, else a .kvreuse-commit file at the
# tree's root (written where the tree was packed: `git rev-parse HEAD > .kvreuse-commit`, with
# `-dirty` appended when tracked files differ), else git where there is a .git. Without one, no
# GPU run starts (kvreuse.provenance.commit_problem).
set -uo pipefail
platform="${1:?usage: run-targets.sh PLATFORM TARGET...}"; shift
commit="${KVREUSE_GIT_COMMIT:-}"
if [[ -z "$commit" && -s .kvreuse-commit ]]; then commit="$(head -n1 .kvreuse-commit | tr -d '[:space:]')"; fi
if [[ -z "$commit" && -e .git ]]; then
  commit="$(git rev-parse HEAD)$(git status --porcelain --untracked-files=no | grep -q . && echo -dirty)"
fi
if [[ -z "$commit" ]]; then
  echo "run-targets: no commit to record: set KVREUSE_GIT_COMMIT=<sha> (where the tree was packed:" \
       "git rev-parse HEAD) or write it to .kvreuse-commit at the tree's root. Nothing was run." >&2
  exit 2
fi
export KVREUSE_GIT_COMMIT="$commit"
echo "run-targets: recording commit $commit"
keep="${KEEP:-/root/keep}"
mkdir -p "$keep" && cp -a "$keep/." . 2>/dev/null || true
export KVREUSE_PGID_DIR
KVREUSE_PGID_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kvreuse-pgids.XXXXXX") || exit 1
# one node-wide lock: jobs that share the GPU (server.jobs_per_gpu) never measure at once
export KVREUSE_MEASURE_LOCK="$KVREUSE_PGID_DIR.measure.lock"
export PYTHONHASHSEED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
budget_s="${BUDGET_S:-540}"
export KVREUSE_DEADLINE=$(( $(date +%s) + budget_s ))
prioritize=()
if [[ -n "${PRIORITIZE:-}" ]]; then read -r -a prioritize <<<"$PRIORITIZE"; prioritize=(--prioritize "${prioritize[@]}"); fi
timeout -s INT -k 60 "$budget_s" python3 -m snakemake "$@" "${prioritize[@]}" --profile profiles/gpu-node \
  --config "run_platforms=[\"$platform\"]" "report_platforms=[\"$platform\"]"
rc=$?
PYTHONPATH="$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}" \
  python3 -m kvreuse.procs stop-recorded "$KVREUSE_PGID_DIR" --grace 3 \
  && rmdir "$KVREUSE_PGID_DIR"
rm -f "$KVREUSE_MEASURE_LOCK"
# kept: results, Snakemake's records, the models and the stores' preflight; not the KV stores
# themselves (tens of GiB; a finished run lists its store in its meta and deletes it if its arm
# says so, and a run cut off at the budget is measured again from scratch)
mkdir -p "$keep/resources" && cp -a results .snakemake "$keep/" 2>/dev/null
[[ -d resources/models ]] && cp -a resources/models "$keep/resources/"
find resources -name preflight.json -exec cp --parents {} "$keep/" \; 2>/dev/null
if [[ -n "${DROP_STORES:-}" ]]; then  # a run cut off at the budget leaves its store behind
  find "resources/lmcache/$platform" -mindepth 3 -maxdepth 3 -type d -exec rm -rf {} + 2>/dev/null
fi
if [[ -n "${OUT:-}" ]]; then
  tar czf "$OUT/raw-$platform.tgz" results/raw/"$platform" results/benchmarks/"$platform" 2>/dev/null
  tar czf "$OUT/logs-$platform.tgz" results/logs/"$platform" 2>/dev/null
fi
echo "run-targets: snakemake exit $rc"
exit $rc
