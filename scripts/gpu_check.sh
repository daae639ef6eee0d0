#!/usr/bin/env bash
# The language-model path on the lent GPU machine (issue 15): padding-free attention, training throughput, the
# SmolLM2 recipe sweep (held-out annotation by likelihood and generation vs PCA + kNN), generation throughput, and
# FSDP / DDP launches; each step under its own time limit, the whole within --budget seconds (default 530).
# Figures: $OUT/gpu_check.json, output: $OUT/gpu_check.log (OUT defaults to bench_out/gpu_check).
#   bash ../shared/gpu/prepare.sh                      # here, once: wheels + weights into .gpu/
#   device call 1: bash .gpu/bin/setup.sh              carry [.gpu/bin, .gpu/whl, .gpu/w1, .gpu/data]
#   device call 2: bash .gpu/bin/weights.sh && C2T_DATA=/tmp/shared/data bash scripts/gpu_check.sh
#                                                      carry [.gpu/bin, .gpu/w2]
#   bash scripts/gpu_check.sh --cpu                    # the same steps with tiny models: a smoke test (~3 min)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # every model is a local folder
exec "$PY" scripts/gpu_check.py "$@"
