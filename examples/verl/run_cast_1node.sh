#!/usr/bin/env bash
# CAST on verl 0.9.x, one node with 8 GPUs.
#   DATA_DIR=~/data/gsm8k MODEL=Qwen/Qwen2.5-3B-Instruct examples/verl/run_cast_1node.sh [hydra overrides...]
# DATA_DIR holds train.parquet / test.parquet (examples/verl/make_parquet.py writes them).
# Any key of examples/verl/cast_gsm8k.yaml can be overridden, e.g. castrl.cast.flip=false or
# castrl.cast.mixed_only=true (ablations), castrl.teacher_context=with_reference (the reference-answer
# ablation), algorithm.adv_estimator=castrl_grpo (baseline), or RLRT with its peer teacher:
#   algorithm.adv_estimator=castrl_rlrt castrl.teacher_context=with_peer_success castrl.teacher_max_prompt_length=2048
# The teacher is the actor's current weights (castrl.teacher_weights=policy), not the paper's snapshot
# refreshed every 10 steps, which verl cannot keep (docs/verl.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
MODEL=${MODEL:-Qwen/Qwen2.5-3B-Instruct}
GPUS=${GPUS:-8}

python -m castrl.integrations.verl.main \
    --config-path "$PWD/examples/verl" --config-name cast_gsm8k \
    data.train_files="$DATA_DIR/train.parquet" \
    data.val_files="$DATA_DIR/test.parquet" \
    actor_rollout_ref.model.path="$MODEL" \
    trainer.n_gpus_per_node="$GPUS" \
    trainer.nnodes=1 \
    "$@"
