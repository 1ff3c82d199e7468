#!/usr/bin/env bash
# Install PyTorch into the given venv: a CUDA build where an NVIDIA GPU answers, else a CPU
# build (a plain `pip install torch` on Linux pulls a multi-GB CUDA build even without a GPU).
set -euo pipefail
PY="$1"
if "$PY" -c "import torch" 2>/dev/null; then
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "medseg: NVIDIA GPU found: installing the CUDA build of PyTorch"
    "$PY" -m pip install "torch>=2.2"
elif ls /opt/wheels/torch-2.13.0*cpu*.whl >/dev/null 2>&1; then
    # This machine ships a CPU wheel on disk (no CUDA here): use it, no download.
    "$PY" -m pip install "torch==2.13.0"
else
    echo "medseg: no GPU found: installing the CPU build of PyTorch"
    "$PY" -m pip install "torch>=2.2" --index-url https://download.pytorch.org/whl/cpu
fi
