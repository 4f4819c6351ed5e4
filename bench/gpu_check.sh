#!/usr/bin/env bash
# GPU check of the LLM teachers (under 8 minutes on a bare GPU machine with torch and transformers; vllm optional):
# tiny Qwen models in bf16 on CUDA must give the CPU float32 label scores, and vLLM the transformers ones (the same
# parity checks the vllm tests run on CPU: text base, two LoRA adapters in one engine, a Qwen2-Audio merged export).
# Without vllm each vLLM check prints as SKIP with its name.
# Usage, from the repository root:  bash bench/gpu_check.sh [--tolerance 0.05]
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, transformers; print('transformers', transformers.__version__)"
timeout 480 python -m bench.gpu_check --device cuda "$@"
