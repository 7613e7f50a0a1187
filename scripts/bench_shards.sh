#!/usr/bin/env bash
# Fill one `castrl bench` grid with N processes at once: process I runs cells I, I+N, I+2N, ... of the
# grid (`--shard I/N`), so no cell runs twice and every process writes to the same cell cache.
# Why: on one GPU a 135M model's decoding is bound by kernel launches (Python), not by the GPU, so
# several processes share the GPU well; on a cluster, run one shard per machine over a shared cache.
#
#   scripts/bench_shards.sh TIER N [castrl bench flags...]
#   scripts/bench_shards.sh smollm2 8 --threads 1
#   scripts/bench_shards.sh smollm2 4 --methods grpo,cast,cast@flip=false --threads 1
#
# The grid's shared cells (the base model's evaluation, the diagnosis) are computed first, once.
# Logs: $LOG_DIR/TIER-shardI.log (default bench_cache/logs). Exits 1 when any shard failed.
set -euo pipefail
TIER=${1:?usage: $0 TIER N [castrl bench flags...]}
N=${2:?usage: $0 TIER N [castrl bench flags...]}
shift 2
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOG_DIR=${LOG_DIR:-bench_cache/logs}
mkdir -p "$LOG_DIR"
"$PYTHON" -m castrl bench "$TIER" --prepare_only true --progress false "$@"
pids=()
for ((i = 0; i < N; i++)); do
    "$PYTHON" -m castrl bench "$TIER" --shard "$i/$N" --progress false "$@" >"$LOG_DIR/$TIER-shard$i.log" 2>&1 &
    pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        echo "shard $i/$N failed: see $LOG_DIR/$TIER-shard$i.log" >&2
        status=1
    fi
done
"$PYTHON" -m castrl bench "$TIER" --list "$@" | grep -c " cached " | sed "s/^/cached cells of the grid: /" || true
exit $status
