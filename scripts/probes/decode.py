"""Seconds to sample a batch on the bundled model with castrl train's sampling (temperature 0.7,
top-p 0.95, top-k 20), a forced number of new tokens so every variant does the same work.

    python scripts/probes/decode.py --rows 32                       # eager, dynamic KV cache
    python scripts/probes/decode.py --rows 32 --variant compiled    # static cache + torch.compile(forward)
    python scripts/probes/decode.py --rows 32 --variant lora        # through an (untrained) LoRA adapter
    python scripts/probes/decode.py --rows 32 --profile true        # where a decode step goes

docs/steptime.md ("Decoding") quotes its output. Prompts are random tokens of the one-shot prompt's
length (109), so the numbers are about cost, not text.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from castrl.models import DEFAULT_MODEL, default_lora_for, peft_config, resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--prompt_tokens", type=int, default=109)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--variant", choices=("eager", "static", "compiled", "lora"), default="eager")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", type=lambda s: s.lower() in ("1", "true", "yes"), default=False)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if args.variant == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(default_lora_for(DEFAULT_MODEL)))
    model.eval()
    extra = {"cache_implementation": "static"} if args.variant in ("static", "compiled") else {}
    if args.variant == "compiled":
        model.forward = torch.compile(model.forward, dynamic=False)
    ids = torch.randint(100, 40000, (args.rows, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    sampling = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7, top_p=0.95, top_k=20,
                    pad_token_id=tokenizer.pad_token_id, **extra)

    def sample(new_tokens: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **sampling)
        return time.perf_counter() - start

    if args.profile:
        sample(4)  # warm-up
        prefill, full = sample(1), sample(65)
        print(f"prefill + 1 token {prefill:.2f} s; {(full - prefill) / 64 * 1000:.0f} ms per decode step")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            sample(33)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
        return
    for repeat in range(args.repeats):
        seconds = sample(args.new_tokens)
        rate = args.rows * args.new_tokens / seconds
        print(f"{args.variant} rows={args.rows} repeat {repeat}: {seconds:.2f} s, {rate:.1f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
