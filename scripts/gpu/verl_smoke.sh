#!/usr/bin/env bash
# Smoke run of CAST on verl 0.9.x: one H100, a local 0.5B-class chat model, a few steps, < 8 minutes.
#   scripts/gpu/verl_smoke.sh /models/Qwen2.5-0.5B-Instruct [STEPS=3]
# Needs an environment with castrl[verl], verl[vllm] (vLLM rollouts) and the model on disk; it runs
# offline on castrl's built-in arithmetic problems. Prints each step's CAST metrics and fails if
# none were logged. Sizing: 16 prompts x 4 rollouts, <= 256 new tokens, no validation, no checkpoint.
set -euo pipefail
MODEL=${1:?usage: $0 MODEL_PATH [STEPS]}
STEPS=${2:-3}
cd "$(dirname "$0")/../.."
WORK=${WORK:-$(mktemp -d /tmp/castrl_verl_smoke.XXXXXX)}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLLM_LOGGING_LEVEL=WARN WANDB_MODE=disabled
echo "work dir: $WORK"

python examples/verl/make_parquet.py --spec arithmetic:add1,add2,mul21 --n-per-level 16 --out "$WORK/data"

set +e
timeout 420 python -m castrl.integrations.verl.main \
    --config-path "$PWD/examples/verl" --config-name cast_gsm8k \
    data.train_files="$WORK/data/train.parquet" \
    data.val_files="$WORK/data/test.parquet" \
    data.train_batch_size=16 \
    data.max_prompt_length=256 \
    data.max_response_length=256 \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.actor.ppo_mini_batch_size=16 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.rollout.n=4 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.4 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32 \
    trainer.n_gpus_per_node=1 \
    trainer.nnodes=1 \
    trainer.total_training_steps="$STEPS" \
    trainer.val_before_train=false \
    trainer.test_freq=-1 \
    trainer.save_freq=-1 \
    trainer.logger='["console"]' \
    trainer.default_local_dir="$WORK/ckpt" \
    "${@:3}" 2>&1 | tee "$WORK/train.log"
status=${PIPESTATUS[0]}
set -e

python - "$WORK/train.log" <<'PY'
import re
import sys

KEYS = ("critic/score/mean", "cast/frac_all_correct", "cast/frac_all_wrong", "cast/frac_mixed",
        "cast/gap_mean", "cast/gap_abs_p95", "cast/flip_frac_correct", "cast/flip_frac_wrong",
        "cast/adv_mean", "cast/adv_min", "cast/adv_max", "cast/time_teacher_s", "timing_s/step")
steps = 0
for line in open(sys.argv[1], errors="replace"):
    match = re.search(r"step:(\d+) - (.*)", line)
    if not match or "cast/" not in line:
        continue
    values = dict(item.split(":", 1) for item in match[2].split(" - ") if ":" in item)
    steps += 1
    print(f"step {match[1]}: " + "  ".join(f"{k}={float(values[k]):.4g}" for k in KEYS if k in values))
if steps == 0:
    sys.exit("no training step logged cast/ metrics: see the log above")
PY
exit "$status"
