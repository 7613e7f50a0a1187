"""The tiny student every CPU tier trains: a ~1M-parameter Llama trained from scratch by SFT
(`tiny_sft.py`), its RL and evaluation settings (`TinySettings`, `SETTINGS`), the SFT it starts from
(`prepare_sft`) and one RL cell on it (`run_tiny_cell`).

Shared by the `tiny` tier and the positive control (`control`), which trains the same student against
teachers of graded strength; neither tier imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from castrl.formatting import num

from .cells import Cell
from .tier import RLSettings, trainer_config
from .tiny_sft import SFT_INFO_FILE, SFTSettings, held_out_of, prompt_text, records, sft_checkpoint, sft_info


@dataclass(frozen=True)
class TinySettings(RLSettings):
    """The SFT model's settings, RL and evaluation settings; together they are the cells' config."""

    sft: SFTSettings = SFTSettings()
    # EMA decay sized to the run: 0.95 has a half-life of ~14 steps in an 80-step run (0.99 would
    # leave the teacher almost equal to the frozen SFT model, duplicating `cast@teacher_weights=frozen`).
    teacher_ema_decay: float = 0.95

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"teacher_ema_decay": self.teacher_ema_decay}


SETTINGS = TinySettings(
    steps=80, prompts_per_step=8, num_generations=8, max_completion_length=32, learning_rate=2e-4,
    train_n_per_level=48, eval_n_per_level=96,  # add1 has only 16 test problems; 208 held-out problems in all
    eval_every=10, eval_max_new_tokens=32,
)  # fmt: skip


def sft_record_path(settings: TinySettings, cache_dir: str) -> Path:
    """Where the cell cache keeps how the SFT model was made (its weights stay in the scratch folder)."""
    return Path(cache_dir) / "tiny" / "sft" / f"{settings.sft.key()}.json"


def prepare_sft(settings: TinySettings, cache_dir: str, scratch_dir: str, progress: bool) -> Path:
    """The SFT checkpoint of the settings in `scratch_dir` (trained first when missing), its record
    (`sft.json`, no weights) copied into the cell cache; prints how it was made."""
    sft_dir = sft_checkpoint(settings.sft, scratch_dir, settings.train_seed, progress=progress)
    info = sft_info(sft_dir)
    record = sft_record_path(settings, cache_dir)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text((sft_dir / SFT_INFO_FILE).read_text())
    last = info["history"][-1] if info.get("history") else {}
    print(f"[bench] tiny SFT model: {info['params']:,} params, {info['steps']} steps, monitor accuracy "
          f"{num(last.get('monitor_accuracy'))}")
    return sft_dir


def run_tiny_cell(cell: Cell, settings: TinySettings, scratch: Path, sft_dir: Path,
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load the SFT checkpoint, RL-train it with the cell's method and seed, return the measured result.
    `overrides`: the cell's trainer overrides as resolved by the caller (default: the cell's own)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM

    from castrl.bench.common.rl_cell import run_rl_cell
    from castrl.rewards import Verifier

    torch.manual_seed(cell.seed)
    model = LlamaForCausalLM.from_pretrained(sft_dir)
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    train = records("train", settings.sft.levels, settings.train_n_per_level, settings.train_seed)
    dataset = Dataset.from_list([{"prompt": prompt_text(r["problem"]), "problem": r["problem"],
                                  "answer": r["answer"], "level": r["level"]} for r in train])
    held_out = held_out_of(records("test", settings.sft.levels, settings.eval_n_per_level, 0))
    overrides = dict(cell.config["overrides"]) if overrides is None else overrides
    config = trainer_config(settings, overrides, cell.seed,
                            str(scratch / cell.slug()))
    with Verifier(use_pool=False) as verifier:  # integer answers: no sympy stall risk, no worker IPC
        return run_rl_cell(model=model, tokenizer=tokenizer, config=config, train_dataset=dataset,
                           held_out=held_out, verifier=verifier, eval_every=settings.eval_every,
                           eval_max_new_tokens=settings.eval_max_new_tokens)
