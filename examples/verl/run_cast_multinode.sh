#!/usr/bin/env bash
# CAST on verl 0.9.x over several nodes (8 GPUs each) with a Ray cluster. Run this script on every
# node with the same NNODES / HEAD_ADDR; NODE_RANK=0 is the head and launches training, the others
# join the cluster and block. Works under SLURM / torchrun-style launchers that set these variables.
#   NNODES=4 NODE_RANK=$SLURM_NODEID HEAD_ADDR=node001 DATA_DIR=/shared/data/gsm8k \
#   MODEL=/shared/models/Qwen2.5-7B-Instruct examples/verl/run_cast_multinode.sh [hydra overrides...]
# Every node needs the same environment (castrl[verl] + verl[vllm]); DATA_DIR and MODEL must be
# readable from every node (verl may place its driver actor on any of them).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${HEAD_ADDR:?set HEAD_ADDR}"
PORT=${RAY_PORT:-6379}
GPUS=${GPUS:-8}
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}

if [[ "$NODE_RANK" != "0" ]]; then
    exec ray start --address="$HEAD_ADDR:$PORT" --num-gpus="$GPUS" --block
fi

ray start --head --port="$PORT" --num-gpus="$GPUS"
# Wait until every node has joined (ray status lists one "node_" line per alive node).
for _ in $(seq 1 120); do
    alive=$(ray status 2>/dev/null | grep -c "node_" || true)
    [[ "$alive" -ge "$NNODES" ]] && break
    sleep 5
done

RAY_ADDRESS="$HEAD_ADDR:$PORT" python -m castrl.integrations.verl.main \
    --config-path "$PWD/examples/verl" --config-name cast_gsm8k \
    data.train_files="$DATA_DIR/train.parquet" \
    data.val_files="$DATA_DIR/test.parquet" \
    actor_rollout_ref.model.path="$MODEL" \
    trainer.n_gpus_per_node="$GPUS" \
    trainer.nnodes="$NNODES" \
    "$@"
ray stop
