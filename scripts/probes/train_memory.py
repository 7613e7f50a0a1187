"""Peak RSS and seconds of one LoRA training micro-batch on the bundled model, as castrl train runs it:
forward + backward through TRL's fused LM head (log-probs and entropy), gradient checkpointing on.

    python scripts/probes/train_memory.py --rows 8 --tokens 237 --vocab_tile 32768
    python scripts/probes/train_memory.py --rows 4 --tokens 237 --vocab_tile 2048

docs/steptime.md ("Memory") quotes its output. One configuration per process: ru_maxrss is a
process-wide high-water mark. The last 128 tokens are the scored completion, as in the demo.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from castrl.models import DEFAULT_MODEL, default_lora_for, peft_config, resolve_model
from castrl.trl.head_tile import vocab_tile


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=237, help="prompt + completion tokens per row")
    parser.add_argument("--vocab_tile", type=int, default=32768, help="the fused head's vocabulary tile")
    parser.add_argument("--checkpointing", type=int, default=1, choices=(0, 1))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.tokens <= 128:
        parser.error("--tokens must exceed the 128 scored completion tokens")
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL), dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    model = get_peft_model(model, peft_config(default_lora_for(DEFAULT_MODEL)))
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    base = rss_mb()
    ids = torch.randint(0, 49000, (args.rows, args.tokens), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, : args.tokens - 128] = -100
    start = time.perf_counter()
    with vocab_tile(args.vocab_tile):
        for _ in range(args.repeats):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
            (-out.log_probs.sum() + 0.0 * out.entropy.sum()).backward()
    seconds = (time.perf_counter() - start) / args.repeats
    print(f"rows={args.rows} tokens={args.tokens} vocab_tile={args.vocab_tile} checkpointing={args.checkpointing} "
          f"threads={args.threads}: peak RSS {rss_mb():.0f} MB (after loading {base:.0f} MB), {seconds:.1f} s per micro-batch")


if __name__ == "__main__":
    main()
