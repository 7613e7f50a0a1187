"""One rank of tests/test_verl_teacher.py::test_worker_on_fsdp_ranks: castrl's verl worker methods on a
real FSDP1 / FSDP2 module (2 gloo processes, CPU, bf16 mixed precision), behind the stand-in engine.

Per wrapping it records max-abs differences: the worker's teacher log-probs after an optimizer step vs
the policy's own before it (the snapshot step), the actor's log-probs after scoring vs before, and the
same after the snapshot is saved per rank and loaded into a fresh worker.
Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 tests/verl_worker_rank.py OUT_DIR
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_verl_teacher import _logps, _score_td, _teacher_batch, _worker  # noqa: E402


def _model(wrap: str) -> torch.nn.Module:
    from castrl.testing import build_char_tokenizer, build_tiny_model

    model = build_tiny_model(build_char_tokenizer(), hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64)
    layers = list(model.model.layers)
    if wrap == "fsdp1":
        import functools

        from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision
        from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

        policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: any(m is layer for layer in layers))
        mp = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        return FullyShardedDataParallel(model, auto_wrap_policy=policy, mixed_precision=mp, device_id=torch.device("cpu"))
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def _diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a.unbind(), b.unbind(), strict=True))


def run(wrap: str, folder: str) -> dict:
    model = _model(wrap)
    worker = _worker(model)
    td = _score_td(_teacher_batch(seed=10 + dist.get_rank()))  # each data-parallel rank its own rows
    worker.castrl_snapshot("take")
    with torch.no_grad():
        step0 = _logps(model, td)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    loss = -sum(t.sum() for t in _logps_grad(model, td))
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        step1 = _logps(model, td)
    rec = {"step1_vs_step0": _diff(step1, step0)}
    rec["teacher_vs_step0"] = _diff(worker.castrl_compute_teacher_log_prob(td)["log_probs"], step0)
    with torch.no_grad():
        rec["student_after"] = _diff(_logps(model, td), step1)
    worker.castrl_save_teacher(folder, "refresh:2")
    dist.barrier()  # every rank's file is written
    fresh = _worker(model)
    fresh.castrl_load_teacher(folder, "refresh:2")
    rec["loaded_vs_step0"] = _diff(fresh.castrl_compute_teacher_log_prob(td)["log_probs"], step0)
    with torch.no_grad():
        rec["student_after_loaded"] = _diff(_logps(model, td), step1)
    rec["files"] = sorted(os.listdir(folder))
    return rec


def _logps_grad(model, td) -> list[torch.Tensor]:
    out = []
    for ids, pos in zip(td["input_ids"].unbind(), td["position_ids"].unbind(), strict=True):
        logits = model(ids[None], position_ids=pos[None]).logits[0].float()
        out.append(torch.log_softmax(logits[:-1], -1).gather(-1, ids[1:, None])[:, 0])
    return out


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    records = {}
    for wrap in ("fsdp1", "fsdp2"):
        try:
            records[wrap] = run(wrap, os.path.join(out, wrap))
        except Exception as err:  # recorded, so the test names the wrapping that broke
            import traceback

            records[wrap] = {"error": f"{type(err).__name__}: {err}\n{traceback.format_exc()}"}
        dist.barrier()
    torch.save(records, os.path.join(out, f"rank{dist.get_rank()}.pt"))
    dist.barrier()  # both records on disk; then leave without gloo's teardown (tests/test_multiprocess_groups.py)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
