#!/usr/bin/env bash
# GPU check of castrl's refresh:K teacher on verl 0.9.x (FSDP actor): one GPU, a local 0.5B-class chat
# model, two launches of a few steps each (about 15 minutes with vLLM start-up).
#   scripts/gpu/verl_refresh_smoke.sh /models/Qwen2.5-0.5B-Instruct [STRATEGY=fsdp|fsdp2]
# castrl.teacher_weights=refresh:2 with the identity context (castrl.teacher_context=student) and one
# optimizer step per training step (ppo_mini_batch_size = train_batch_size), so the teacher is the
# snapshot of the actor at the last even optimizer step and reads the student's own prompt:
#   - where the snapshot is the current actor (cast/teacher_lag_steps 0: castrl steps 0, 2, 4) the teacher
#     log-probs equal old_log_probs up to float noise: cast/gap_abs_p95 <= TOL (default 0.05);
#   - one step after a refresh (lag 1) they differ: gap_abs_p95 above the lag-0 steps' largest;
#   - launch 1 stops after step 3 with a checkpoint (snapshot of optimizer step 2); launch 2 resumes it:
#     its first step must still have lag 1 and a gap (a snapshot re-taken at resume would give lag 0
#     and no gap), and its second step lag 0 and no gap again.
# Needs castrl[verl] and verl[vllm] in the environment and the model on disk; runs offline.
set -euo pipefail
MODEL=${1:?usage: $0 MODEL_PATH [STRATEGY]}
STRATEGY=${2:-fsdp}
TOL=${TOL:-0.05}
cd "$(dirname "$0")/../.."
WORK=${WORK:-$(mktemp -d /tmp/castrl_verl_refresh.XXXXXX)}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLLM_LOGGING_LEVEL=WARN WANDB_MODE=disabled
echo "work dir: $WORK"

python examples/verl/make_parquet.py --spec arithmetic:add1,add2,mul21 --n-per-level 16 --out "$WORK/data"

launch() {  # $1 = total training steps, $2 = log file
    timeout 540 python -m castrl.integrations.verl.main \
        --config-path "$PWD/examples/verl" --config-name cast_gsm8k \
        data.train_files="$WORK/data/train.parquet" \
        data.val_files="$WORK/data/test.parquet" \
        data.train_batch_size=16 \
        data.max_prompt_length=256 \
        data.max_response_length=128 \
        actor_rollout_ref.model.path="$MODEL" \
        actor_rollout_ref.actor.strategy="$STRATEGY" \
        actor_rollout_ref.actor.ppo_mini_batch_size=16 \
        actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16 \
        actor_rollout_ref.actor.optim.lr=1e-5 \
        actor_rollout_ref.rollout.n=4 \
        actor_rollout_ref.rollout.gpu_memory_utilization=0.4 \
        actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32 \
        actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32 \
        castrl.teacher_weights=refresh:2 \
        castrl.teacher_context=student \
        trainer.n_gpus_per_node=1 \
        trainer.nnodes=1 \
        trainer.total_training_steps="$1" \
        trainer.save_freq=3 \
        trainer.resume_mode=auto \
        trainer.val_before_train=false \
        trainer.test_freq=-1 \
        trainer.logger='["console"]' \
        trainer.default_local_dir="$WORK/ckpt" 2>&1 | tee "$2"
    return "${PIPESTATUS[0]}"
}

launch 3 "$WORK/launch1.log"
test -f "$WORK/ckpt/global_step_3/actor/castrl_teacher/schedule.json" || { echo "no teacher checkpoint"; exit 1; }
launch 5 "$WORK/launch2.log"

python - "$WORK/launch1.log" "$WORK/launch2.log" "$TOL" <<'PY'
import re
import sys

def steps(path):
    out = {}
    for line in open(path, errors="replace"):
        match = re.search(r"step:(\d+) - (.*)", line)
        if match and "cast/teacher_lag_steps" in line:
            values = dict(item.split(":", 1) for item in match[2].split(" - ") if ":" in item)
            out[int(match[1])] = (float(values["cast/teacher_lag_steps"]), float(values["cast/gap_abs_p95"]))
    return out

first, second, tol = steps(sys.argv[1]), steps(sys.argv[2]), float(sys.argv[3])
if "teacher snapshot restored" not in open(sys.argv[2], errors="replace").read():
    sys.exit("launch 2 did not restore the teacher snapshot")
rows = sorted({**first, **second}.items())
for step, (lag, gap) in rows:
    print(f"verl step {step} (castrl step {step - 1}): teacher lag {lag:.0f} optimizer steps, gap_abs_p95 {gap:.4g}")
expect = {1: 0, 2: 1, 3: 0, 4: 1, 5: 0}
bad = [s for s, (lag, _) in rows if expect.get(s) != lag]
if sorted(first) != [1, 2, 3] or sorted(second) != [4, 5] or bad:
    sys.exit(f"unexpected steps or lags: launch 1 {sorted(first)}, launch 2 {sorted(second)}, wrong lag at {bad}")
same = [gap for _, (lag, gap) in rows if lag == 0]
lagged = [gap for _, (lag, gap) in rows if lag == 1]
if max(same) > tol:
    sys.exit(f"teacher != old_log_probs where the snapshot is the current actor: gap_abs_p95 {max(same):.4g} > {tol}")
if min(lagged) <= max(same):
    sys.exit(f"teacher did not differ one step after a refresh: {min(lagged):.4g} <= {max(same):.4g}")
print(f"OK: lag-0 gap_abs_p95 <= {max(same):.4g}, lag-1 >= {min(lagged):.4g}; the resumed run kept its snapshot")
PY
