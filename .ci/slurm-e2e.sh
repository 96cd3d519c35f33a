#!/usr/bin/env bash
# Real SLURM in CI. Brings up a one-node SLURM on localhost whose partitions are named as in
# profiles/pace (cpu, gpu-h200, gpu-h100, gpu-a100, gpu-l40s, one fake GPU of that type in
# each, plus `urgent` to preempt from), then runs the CPU pipeline through
#   snakemake --profile profiles/pace
# with the overlay in .ci/slurm/ (tiny model; the cpu platform stands in for an H100; two
# experiments, few requests): the model and run jobs are submitted with sbatch, run under
# slurmd and their outputs collected; tables and figures are local rules. On the way it
# proves two habits of a cluster: cold_warm's first attempt gets one minute and hits the time
# limit (retried with ten), and the model job is preempted by an `urgent` job (requeued and
# rerun by SLURM). Everything is torn down on exit.
#
#   .ci/slurm-e2e.sh          the whole check (about 6-10 min on 2 cores); needs root
#   .ci/slurm-e2e.sh up       only bring the cluster up (for `pytest -m slurm`); `down` stops it
#
# Environment: VENV (default .venv, needs snakemake + envs/requirements-slurm.txt),
# KVREUSE_SLURM_DIR (cluster state, default /tmp/kvreuse-slurm), KVREUSE_SLURM_TIMEOUT (s).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-$REPO/.venv}
B=${KVREUSE_SLURM_DIR:-/tmp/kvreuse-slurm}
TIMEOUT=${KVREUSE_SLURM_TIMEOUT:-1200}
H=$(hostname)
export PATH=$VENV/bin:$PATH
log() { echo "slurm-e2e: $*"; }

install() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    log "installing Debian's SLURM (slurm-wlm, munge)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
  if ! python -c "import snakemake_executor_plugin_slurm" 2>/dev/null; then
    log "installing the SLURM executor plugin into $VENV (--no-deps: envs/requirements-slurm.txt)"
    python -m pip install -q --no-deps -r envs/requirements-slurm.txt
  fi
}

up() {
  [[ ! -e "$B/run/slurmctld.bgpid" ]] || { log "a cluster is already up in $B ('$0 down' first)"; exit 1; }
  rm -rf "$B"; mkdir -p "$B"/{etc,state,spool,log,run,dev,munge/run,munge/log,munge/lib}
  # munged as user munge; its socket folder must be 0755, its key 0400
  mungekey -c -k "$B/munge/munge.key"
  chown -R munge:munge "$B/munge"; chmod 0755 "$B/munge/run"; chmod 0700 "$B/munge/log" "$B/munge/lib"
  chmod 0400 "$B/munge/munge.key"
  MS=$B/munge/run/munge.socket.2
  runuser -u munge -- /usr/sbin/munged --socket="$MS" --key-file="$B/munge/munge.key" \
    --log-file="$B/munge/log/munged.log" --pid-file="$B/munge/run/munged.pid" \
    --seed-file="$B/munge/lib/munged.seed"
  # fake GPUs: distinct character devices (a GPU without File= is dropped)
  i=0; for t in H200 H100 A100 L40S; do mknod "$B/dev/nvidia$i" c 195 $i; i=$((i + 1)); done
  cat > "$B/etc/slurm.conf" <<EOF
ClusterName=kvreuse-ci
SlurmctldHost=$H
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MS
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
StateSaveLocation=$B/state
SlurmdSpoolDir=$B/spool
SlurmctldPidFile=$B/run/slurmctld.pid
SlurmdPidFile=$B/run/slurmd.pid
SlurmctldLogFile=$B/log/slurmctld.log
SlurmdLogFile=$B/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# finished jobs stay visible to squeue (the plugin's status command here) for 10 minutes
MinJobAge=600
KillWait=5
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
GresTypes=gpu
NodeName=$H CPUs=2 RealMemory=16000 Gres=gpu:H200:1,gpu:H100:1,gpu:A100:1,gpu:L40S:1 State=UNKNOWN
PartitionName=cpu      Nodes=$H Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=gpu-h200 Nodes=$H MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=gpu-h100 Nodes=$H MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=gpu-a100 Nodes=$H MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=gpu-l40s Nodes=$H MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent   Nodes=$H MaxTime=INFINITE State=UP PriorityTier=10
EOF
  cat > "$B/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=$H Name=gpu Type=H200 File=$B/dev/nvidia0
NodeName=$H Name=gpu Type=H100 File=$B/dev/nvidia1
NodeName=$H Name=gpu Type=A100 File=$B/dev/nvidia2
NodeName=$H Name=gpu Type=L40S File=$B/dev/nvidia3
EOF
  # Job steps lose SLURM_CONF (the jobstep plugin strips it before srun): use the default path.
  mkdir -p /etc/slurm
  if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
    mv /etc/slurm/slurm.conf "$B/etc/slurm.conf.orig"
  fi
  ln -sfn "$B/etc/slurm.conf" /etc/slurm/slurm.conf
  export SLURM_CONF=$B/etc/slurm.conf
  /usr/sbin/slurmctld -D -i >"$B/log/slurmctld.out" 2>&1 & echo $! > "$B/run/slurmctld.bgpid"
  for _ in $(seq 60); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
  /usr/sbin/slurmd -D >"$B/log/slurmd.out" 2>&1 & echo $! > "$B/run/slurmd.bgpid"
  for _ in $(seq 60); do [[ "$(sinfo -h -n "$H" -o %t | head -1)" == idle ]] && break; sleep 0.5; done
  sinfo -o "%12P %5a %6D %8t %N %G"
}

down() {
  [[ -d "$B/run" ]] || return 0
  export SLURM_CONF=$B/etc/slurm.conf
  if [[ -f "$B/run/slurmctld.bgpid" ]] && scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null || true)
    if [[ -n "$jobs" ]]; then
      log "cancelling jobs left in the queue: $(echo $jobs)"
      scancel $jobs || true
      for _ in $(seq 60); do [[ -z "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ]] && break; sleep 1; done
    fi
  fi
  for d in slurmd slurmctld; do
    f=$B/run/$d.bgpid; [[ -f $f ]] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"; for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      log "stopped $d (pid $pid)"
    fi
    rm -f "$f"
  done
  f=$B/munge/run/munged.pid
  if [[ -f $f ]]; then
    pid=$(cat "$f"); kill "$pid" 2>/dev/null && log "stopped munged (pid $pid)"
  fi
  if [[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" == "$B/etc/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf
    [[ ! -e "$B/etc/slurm.conf.orig" ]] || mv "$B/etc/slurm.conf.orig" /etc/slurm/slurm.conf
  fi
}

case "${1:-e2e}" in
  up) install; up; log "up: export SLURM_CONF=$B/etc/slurm.conf; stop with '$0 down'"; exit 0 ;;
  down) down; exit 0 ;;
  e2e) ;;
  *) echo "usage: $0 [up|down]" >&2; exit 2 ;;
esac

WATCH_PIDS=()
cleanup() {
  rc=$?
  for p in "${WATCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  down
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install
log "bringing up a one-node SLURM in $B"
up
export SLURM_CONF=$B/etc/slurm.conf

# The workflow runs in a scratch folder, so that the checkout's results stay untouched.
W=$B/work; mkdir -p "$W"
for f in "$REPO"/*; do
  case ${f##*/} in results|resources) ;; *) ln -s "$f" "$W/${f##*/}" ;; esac
done
cd "$W"

# What the queue holds, whenever it changes: job, partition, GPU request, state, reason, rule.
fmt="JobID:6,Partition:10,tres-per-job:20,State:12,Reason:16,TimeLimit:11,Comment:60"
(
  last=""
  while sleep 5; do
    now=$(squeue -h -t all -O "$fmt" 2>/dev/null | sort -n) || continue
    if [[ "$now" != "$last" ]]; then
      echo "--- squeue $(date +%T)"; squeue -t all -O "$fmt" | head -1; echo "$now"; last=$now
    fi
  done
) > "$B/log/queue.log" 2>&1 &
WATCH_PIDS+=($!)

# Preemption: once the first run job has run for 15 s, an `urgent` job asks for the whole
# node. SLURM requeues the run job and holds it for two minutes; the other run job goes first.
(
  for _ in $(seq 1200); do
    id=$(squeue -h -t R -o "%i %M %k" | awk '$3 ~ /^rule_run_/ {n = split($2, t, ":"); if (t[n] + 60 * t[n - 1] >= 15) {print $1; exit}}')
    if [[ -n "$id" ]]; then
      p=$(sbatch --parsable -p urgent -A ci -c 2 --mem 500 -J preemptor -o /dev/null --wrap 'sleep 5')
      log "run job $id running: submitted job $p to partition urgent (whole node) to preempt it"
      exit 0
    fi
    sleep 1
  done
) &
WATCH_PIDS+=($!)

targets=(results/tables/baseline.csv results/tables/cold_warm.csv
         results/figures/baseline.pdf results/figures/cold_warm.pdf)
log "snakemake --profile profiles/pace (overlay .ci/slurm/) ${targets[*]}"
t0=$(date +%s)
set +e
timeout -s INT -k 60 "$TIMEOUT" env KVREUSE_CLUSTER="$REPO/.ci/slurm/cluster.yaml" \
  snakemake --profile profiles/pace --configfile "$REPO/.ci/slurm/config.yaml" --jobs 4 \
  --verbose "${targets[@]}" > "$B/log/snakemake.log" 2>&1
rc=$?
set -e
log "snakemake exited $rc after $(( $(date +%s) - t0 )) s"

echo "=== snakemake: submissions, sbatch lines, failures, progress"
grep -E "sbatch call:|has been submitted with SLURM jobid|SLURM status is|Trying to restart|steps \([0-9]+%\) done|localrule|Error|error" \
  "$B/log/snakemake.log" | sed -E 's/--wrap=.*$/--wrap=.../' || true
echo "=== the queue as it changed"
cat "$B/log/queue.log"
echo "=== slurmctld: allocations, time limits, preemption, completions"
grep -E "sched: Allocate|Time limit|[Pp]reempt|[Rr]equeue|_job_complete" "$B/log/slurmctld.log" | sed -E 's/^\[[^]]*\] //' || true

fail() { log "FAILED: $*"; tail -n 80 "$B/log/snakemake.log"; exit 1; }
[[ $rc -eq 0 ]] || fail "snakemake exited $rc"
for t in "${targets[@]}"; do [[ -s "$t" ]] || fail "missing $t"; done
# A job that hit its time limit is in state TIMEOUT (kept for MinJobAge); slurmctld does not
# always log "Time limit exhausted" for it (22.05 skips it when the step ends on its own limit).
timed_out=$(squeue -h -t TIMEOUT -o %i 2>/dev/null | xargs)
[[ -n "$timed_out" ]] || grep -q "Time limit exhausted" "$B/log/slurmctld.log" \
  || grep -q " TIMEOUT " "$B/log/queue.log" || fail "no job hit its time limit"
log "jobs that hit their time limit: ${timed_out:-see queue.log}"
grep -q "Trying to restart" "$B/log/snakemake.log" || fail "snakemake did not retry the timed-out job"
grep -qiE "preempted|requeue" "$B/log/slurmctld.log" || fail "no job was preempted"
n=$(grep -c "has been submitted with SLURM jobid" "$B/log/snakemake.log" || true)
[[ $n -ge 4 ]] || fail "expected at least 4 sbatch submissions, saw $n"
left=$(for p in $(pgrep -f vllm.entrypoints || true); do
         [[ "$(readlink "/proc/$p/cwd" 2>/dev/null)" == "$W"* ]] && echo "$p" || true; done)
[[ -z "$left" ]] || fail "vLLM servers left behind: $left"
log "OK: $n jobs went through sbatch to the local SLURM and the DAG completed through profiles/pace"
