"""One rank of tests/test_teacher_sharded.py: run under `torch.distributed.run` with 2 gloo processes (CPU).

For every wrapping (DDP, FSDP1 with and without `use_orig_params`, FSDP2) and precision (fp32, bf16
mixed precision), on a small MLP and a tiny PEFT LoRA Llama, it trains a few optimizer steps with a
`refresh:2` teacher and records max-abs differences between log-probs:
- the teacher's (inside `TeacherWeights.scoring` / `ParamSnapshot.swapped`) and the policy's own at
  the step the snapshot was taken (recorded then, from the same module): must be 0;
- the student's after scoring and before it, and its parameters' bits: must be 0;
- the same scoring with the `.data` pointer swap castrl used before #27: recorded, so the test can show
  it scores with the student, not the snapshot;
- a reloaded per-rank state, and the refusal of a state from another world size.
Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 tests/sharded_teacher_rank.py OUT_DIR
"""

from __future__ import annotations

import copy
import functools
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from castrl.teacher import TeacherWeights  # noqa: E402
from castrl.teacher.shards import trainable_locals  # noqa: E402
from castrl.teacher.snapshot import ParamSnapshot  # noqa: E402

WRAPS = ("ddp", "fsdp1", "fsdp1_orig", "fsdp2")
SCENARIOS = [(w, p, "mlp") for w in WRAPS for p in ("fp32", "bf16") if not (w == "ddp" and p == "bf16")] + [
    ("fsdp1_orig", "bf16", "lora"),
    ("fsdp2", "bf16", "lora"),
    ("fsdp2", "fp32", "lora"),
]


def _mlp() -> tuple[torch.nn.Module, set[int]]:
    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh())
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), inner, torch.nn.Linear(32, 11))
    model[0].requires_grad_(False)  # frozen parameters stay out of the snapshot (a unit of their own for FSDP1)
    return model, {id(inner), id(model[0])}


def _lora() -> tuple[torch.nn.Module, set[int]]:
    from peft import LoraConfig, get_peft_model

    from castrl.testing import build_char_tokenizer, build_tiny_model

    base = build_tiny_model(build_char_tokenizer(), hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return model, {id(layer) for layer in base.model.layers}


def _wrap(model: torch.nn.Module, units: set[int], wrap: str, precision: str) -> torch.nn.Module:
    bf16 = precision == "bf16"
    if wrap == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    if wrap.startswith("fsdp1"):
        from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision
        from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

        policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: id(m) in units)
        mp = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
        return FullyShardedDataParallel(model, auto_wrap_policy=policy, mixed_precision=mp,
                                        use_orig_params=wrap == "fsdp1_orig", device_id=torch.device("cpu"))  # fmt: skip
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for module in model.modules():
        if id(module) in units:
            fully_shard(module, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def _inputs(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1 + dist.get_rank())
    if kind == "mlp":
        return torch.randn(6, 8, generator=gen), torch.randint(0, 11, (6,), generator=gen)
    ids = torch.randint(3, 60, (3, 9), generator=gen)
    return ids, ids


def _logps(model: torch.nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "mlp":
        return torch.log_softmax(model(x).float(), -1).gather(-1, y[:, None])[:, 0]
    logits = model(input_ids=x).logits.float()
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, y[:, 1:, None])[..., 0]


@torch.no_grad()
def _score(model, kind, x, y) -> torch.Tensor:
    return _logps(model, kind, x, y)  # a no-grad forward: FSDP roots keep their gathered parameters after it


def _step(model, optimizer, kind, x, y) -> None:
    loss = -_logps(model, kind, x, y).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def _bits(model) -> list[torch.Tensor]:
    return [t.clone() for t in trainable_locals(model).values()]


def _same_bits(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(s, t) for s, t in zip(a, b, strict=True))


def _pointer_swap_logps(model, shadow, kind, x, y) -> torch.Tensor:
    """The swap castrl used before: exchange `.data` pointers of the trainable parameters, score, swap back."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p, s in zip(params, shadow, strict=True):
        p.data, s.data = s.data, p.data
    try:
        return _score(model, kind, x, y)
    finally:
        for p, s in zip(params, shadow, strict=True):
            p.data, s.data = s.data, p.data


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def run(wrap: str, precision: str, kind: str) -> dict:
    model, units = _mlp() if kind == "mlp" else _lora()
    before_wrap = TeacherWeights("refresh:2", model)  # the TRL path: built before accelerate wraps the model
    model = _wrap(model, units, wrap, precision)
    after_wrap = ParamSnapshot(model)  # the verl path: the engine's module is already sharded
    pointer_shadow = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    x, y = _inputs(kind)
    rec: dict = {"n_local": [tuple(t.shape) for t in trainable_locals(model).values()]}
    step0 = _score(model, kind, x, y)
    _step(model, optimizer, kind, x, y)
    before_wrap.update(model, 1)  # no refresh at step 1: the teacher is still step 0's policy
    step1 = _score(model, kind, x, y)
    bits1 = _bits(model)
    with before_wrap.scoring(model):
        rec["teacher_vs_step0"] = _diff(_score(model, kind, x, y), step0)
    rec["student_after_scoring"] = _diff(_score(model, kind, x, y), step1)
    rec["student_bits_restored"] = _same_bits(_bits(model), bits1)
    with after_wrap.swapped(model):
        rec["snapshot_vs_step0"] = _diff(_score(model, kind, x, y), step0)
    rec["student_after_snapshot"] = _diff(_score(model, kind, x, y), step1)
    rec["student_bits_after_snapshot"] = _same_bits(_bits(model), bits1)
    pointer = _pointer_swap_logps(model, pointer_shadow, kind, x, y)
    rec["pointer_vs_step0"], rec["pointer_vs_student"] = _diff(pointer, step0), _diff(pointer, step1)
    rec["step1_vs_step0"] = _diff(step1, step0)

    rec.update(_later_steps(model, optimizer, before_wrap, kind, x, y))
    return rec


def _later_steps(model, optimizer, before_wrap, kind, x, y) -> dict:
    """Steps 2-4: the refresh at step 2, an EMA teacher, and a per-rank state saved and loaded."""
    rec: dict = {}
    _step(model, optimizer, kind, x, y)
    before_wrap.update(model, 2)  # refresh: the policy after optimizer step 2
    step2 = _score(model, kind, x, y)
    _step(model, optimizer, kind, x, y)
    before_wrap.update(model, 3)
    step3 = _score(model, kind, x, y)
    with before_wrap.scoring(model):
        rec["teacher_vs_step2"] = _diff(_score(model, kind, x, y), step2)
    rec["student_after_step3_scoring"] = _diff(_score(model, kind, x, y), step3)

    ema = TeacherWeights("ema", model, ema_decay=0.25)
    old = _bits(model)
    _step(model, optimizer, kind, x, y)
    ema.update(model, 4)
    rec["ema_ok"] = all(torch.allclose(s, o.lerp(n, 0.75)) for s, o, n in zip(ema.shadow, old, _bits(model), strict=True))
    step4 = _score(model, kind, x, y)

    state = before_wrap.state_dict()
    rec["state_sharded"], rec["state_world"] = state["sharded"], state["world_size"]
    resumed = TeacherWeights("refresh:2", model)  # a new run's teacher (its snapshot: step 3), then the checkpoint's
    resumed.load_state_dict(copy.deepcopy(state), model)
    with resumed.scoring(model):
        rec["resumed_vs_step2"] = _diff(_score(model, kind, x, y), step2)
    rec["student_after_resumed"] = _diff(_score(model, kind, x, y), step4)
    try:
        resumed.load_state_dict({**state, "world_size": 4} if state["sharded"] else {**state, "shadow": {}})
        rec["wrong_world_error"] = ""
    except ValueError as err:
        rec["wrong_world_error"] = str(err)
    return rec


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    records = {}
    for wrap, precision, kind in SCENARIOS:
        key = f"{wrap}-{precision}-{kind}"
        try:
            records[key] = run(wrap, precision, kind)
        except Exception as err:  # recorded, so the test names the scenario that broke
            import traceback

            records[key] = {"error": f"{type(err).__name__}: {err}\n{traceback.format_exc()}"}
        dist.barrier()
    torch.save(records, os.path.join(out, f"rank{dist.get_rank()}.pt"))
    # Leave without C++ teardown: gloo's threads, destroyed at interpreter shutdown, can abort a finished
    # process (SIGABRT); both ranks wait here until both records are on disk (tests/test_multiprocess_groups.py).
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
