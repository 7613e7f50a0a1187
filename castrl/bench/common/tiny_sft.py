"""The tiny tier's starting point: a ~1M-parameter Llama trained from scratch by SFT on arithmetic.

Why SFT to a *middling* accuracy: RL needs groups with reward variance, so the model must already
answer in the right format and get some problems right, but not all. SFT runs until greedy accuracy
on a monitor set of RL training problems reaches `target_accuracy` (checked every `eval_every`
steps) or `max_steps` is spent, whichever comes first. The checkpoint (weights) is kept under the
bench's scratch folder, `<scratch>/tiny_sft/<hash of the settings>/`, written to a temporary folder and
renamed when complete.

A share `hint_fraction` of SFT prompts carry the answer (the privileged teacher's template), so the
reference-answer teachers (rlsd, grpo_opsd, `cast@teacher_context=with_reference`) read a context the
model has learnt to use.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from castrl.bench.common.rl_cell import HeldOut
from castrl.bench.common.rl_cell import arithmetic_records as records
from castrl.bench.common.tier import CELL_DECODER
from castrl.evaluation import heldout_accuracy
from castrl.formatting import num, write_json
from castrl.rewards import Verifier

# Plain-text formats (no chat: a model trained from scratch follows no instructions).
PROMPT_TEMPLATE = "Q: {problem}\nA:"
ANSWER_TEMPLATE = "Q: {problem} (answer: {answer})\nA:"
SFT_INFO_FILE = "sft.json"


@dataclass(frozen=True)
class SFTSettings:
    """Everything that determines the SFT checkpoint (its cache key is a hash of these fields)."""

    levels: tuple[str, ...] = ("add1", "add2", "mul21")
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    n_per_level: int = 500
    data_seed: int = 100
    batch_size: int = 64
    learning_rate: float = 3e-3
    max_steps: int = 4000
    eval_every: int = 250
    target_accuracy: float = 0.40
    monitor_n_per_level: int = 32
    hint_fraction: float = 0.25
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def prompt_text(problem: str) -> str:
    """The student prompt of the tiny tier (RL, eval and SFT use exactly this)."""
    return PROMPT_TEMPLATE.format(problem=problem)


def target_text(record: dict[str, Any]) -> str:
    """The SFT completion: ' 12 + 7 = 19. \\boxed{19}' (the worked equation, then the boxed answer)."""
    equation = record["solution"].split(". The final answer")[0] if record.get("solution") else record["answer"]
    return f" {equation}. \\boxed{{{record['answer']}}}"


def held_out_of(recs: Sequence[dict[str, Any]]) -> HeldOut:
    return HeldOut([prompt_text(r["problem"]) for r in recs], [r["answer"] for r in recs],
                   [r["level"] or "" for r in recs])


def _encode(tokenizer: Any, rec: dict[str, Any], hint: bool) -> tuple[list[int], list[int]]:
    """(input ids, labels): loss on the completion and EOS only, -100 on the prompt."""
    prompt = ANSWER_TEMPLATE.format(**rec) if hint else prompt_text(rec["problem"])
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(target_text(rec), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p_ids + t_ids, [-100] * len(p_ids) + t_ids


def _batch(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(x) for x, _ in rows)
    return {
        "input_ids": torch.tensor([x + [pad_id] * (n - len(x)) for x, _ in rows]),
        "labels": torch.tensor([y + [-100] * (n - len(y)) for _, y in rows]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x, _ in rows]),
    }


def train_sft(settings: SFTSettings, monitor: HeldOut, progress: bool = True) -> tuple[Any, Any, dict]:
    """Train from scratch; returns (model, tokenizer, info with the accuracy history and stop reason)."""
    from castrl.testing import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden=settings.hidden, layers=settings.layers, heads=settings.heads,
                             kv_heads=settings.kv_heads, intermediate=settings.intermediate,
                             max_positions=128, seed=settings.seed)
    info: dict[str, Any] = {"stopped": "max_steps"}

    def reached_target(step: int, accuracy: float) -> bool:
        if accuracy >= settings.target_accuracy:
            info["stopped"] = "target_accuracy"
        return accuracy >= settings.target_accuracy

    start = time.perf_counter()
    history = sft_loop(model, tokenizer, settings, monitor, max_steps=settings.max_steps, eval_every=settings.eval_every,
                       learning_rate=settings.learning_rate, seed=settings.seed, on_eval=reached_target,
                       progress=progress)
    info.update(history=history, steps=history[-1]["step"] if history else 0,
                params=sum(p.numel() for p in model.parameters()), seconds=time.perf_counter() - start)
    return model.eval(), tokenizer, info


def sft_loop(model: Any, tokenizer: Any, settings: SFTSettings, monitor: HeldOut, *, max_steps: int, eval_every: int,
             learning_rate: float, seed: int, on_eval: Callable[[int, float], bool], progress: bool = True,
             desc: str = "tiny SFT") -> list[dict[str, float]]:
    """SFT `model` in place on the settings' data for up to `max_steps` steps (fresh AdamW, batches drawn
    with `seed`); every `eval_every` steps and at the last, greedy accuracy on `monitor`, then
    `on_eval(step, accuracy)`, which stops the loop by returning True. Returns the accuracy history.
    Shared by the student's SFT (stop at the target accuracy) and the teacher ladder (checkpoints)."""
    rng = random.Random(seed)
    data = records("train", settings.levels, settings.n_per_level, settings.data_seed)
    encoded = [_encode(tokenizer, r, hint=False) for r in data] + [_encode(tokenizer, r, hint=True) for r in data]
    n_plain = len(data)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=0.0)
    verifier = Verifier(use_pool=False)
    history: list[dict[str, float]] = []
    model.train()
    start = time.perf_counter()
    for step in tqdm(range(1, max_steps + 1), desc=desc, disable=not progress, unit="step"):
        rows = [encoded[rng.randrange(n_plain, len(encoded)) if rng.random() < settings.hint_fraction
                        else rng.randrange(n_plain)] for _ in range(settings.batch_size)]
        loss = model(**_batch(rows, tokenizer.pad_token_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % eval_every == 0 or step == max_steps:
            model.eval()
            acc = heldout_accuracy(model, tokenizer, monitor.prompts, monitor.answers, verifier,
                                   levels=monitor.levels, max_new_tokens=32, batch_size=64,
                                   decoder=CELL_DECODER, progress=False)["accuracy"]
            model.train()
            history.append({"step": step, "loss": float(loss.detach()), "monitor_accuracy": acc,
                            "seconds": time.perf_counter() - start})
            print(f"[bench] {desc} step {step}: loss {num(history[-1]['loss'])}, monitor accuracy {num(acc)} "
                  f"({history[-1]['seconds']:.0f} s)", flush=True)
            if on_eval(step, acc):
                break
    verifier.close()
    return history


def sft_checkpoint(settings: SFTSettings, scratch_dir: str | os.PathLike[str], rl_seed_data: int = 0,
                   progress: bool = True) -> Path:
    """Path of the cached SFT checkpoint for `settings`, training it first when it is missing.

    The monitor set is the first `monitor_n_per_level` RL training problems per level (data seed
    `rl_seed_data`): "middling" is measured where RL will train.
    """
    folder = Path(scratch_dir) / "tiny_sft" / settings.key()
    if (folder / SFT_INFO_FILE).exists():
        return folder
    monitor = held_out_of(records("train", settings.levels, settings.monitor_n_per_level, rl_seed_data))
    model, tokenizer, info = train_sft(settings, monitor, progress=progress)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / SFT_INFO_FILE, {"settings": asdict(settings), **info}, indent=1)
    if folder.exists():  # another invocation finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    last = info["history"][-1] if info["history"] else {}
    print(f"[bench] tiny SFT: {info['steps']} steps, monitor accuracy {num(last.get('monitor_accuracy'))}"
          f" ({info['stopped']}), {info['seconds']:.0f} s -> {folder}")
    return folder


def student_digest(folder: str | os.PathLike[str]) -> str:
    """16 hex digits of sha256 over the SFT checkpoint's weight files: which student a cell trained.

    The SFT is deterministic on one machine, but not across CPUs (kernels round differently, and 1,250
    steps amplify it: the same settings gave a step-250 loss of 0.497 on one machine, 0.272 on another),
    so the settings' key alone cannot tell two students apart."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def sft_info(folder: str | os.PathLike[str]) -> dict[str, Any]:
    with open(Path(folder) / SFT_INFO_FILE) as f:
        return json.load(f)
