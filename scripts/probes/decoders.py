"""castrl's decoder against transformers' `generate` on the bundled model, on real arithmetic prompts:
seconds and useful tokens (up to each row's end token) per seed, alternating the two in one process.

    python scripts/probes/decoders.py --style oneshot --prompts 4 --samples 8 --seeds 4   # a rollout batch
    python scripts/probes/decoders.py --style cot --prompts 4 --samples 8 --seeds 3
    python scripts/probes/decoders.py --style oneshot --prompts 16 --samples 1 --seeds 3   # greedy

docs/steptime.md ("Decoding") quotes its output. Sampling is castrl train's (temperature 0.7, top-p 0.95,
top-k 20), both through `castrl.rollouts.generate_completions` (transformers' path keeps the shared
prefill). The two draw different tokens from the same distribution, and a batch lasts as long as its
longest row, so compare the sums over several seeds, not one seed's pair.
"""

from __future__ import annotations

import argparse
import time

import torch

from castrl.data import build_prompt, make_arithmetic
from castrl.models import DEFAULT_MODEL, load_model_and_tokenizer
from castrl.rollouts import generate_completions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--style", default="oneshot")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8, help="per prompt; 1 = greedy")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL)
    problems = make_arithmetic(n_per_level=-(-args.prompts // 3), seed=0)[: args.prompts]
    prompts = [build_prompt(p["problem"], args.style) for p in problems]
    sampling = (dict(do_sample=True, temperature=0.7, top_p=0.95, top_k=20, num_return_sequences=args.samples)
                if args.samples > 1 else {})  # fmt: skip
    totals = {"transformers": [0.0, 0], "castrl": [0.0, 0]}
    for seed in range(args.seeds):
        for decoder, total in totals.items():
            torch.manual_seed(seed)
            start = time.perf_counter()
            done = generate_completions(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                        batch_size=args.prompts * args.samples, decoder=decoder, progress=False,
                                        **sampling)  # fmt: skip
            seconds = time.perf_counter() - start
            lengths = [c.tokens for group in done for c in group]
            total[0] += seconds
            total[1] += sum(lengths)
            print(f"seed {seed} {decoder:>12}: {seconds:6.2f} s, {sum(lengths)} tokens, longest row {max(lengths)}",
                  flush=True)  # fmt: skip
    for decoder, (seconds, tokens) in totals.items():
        print(f"{decoder:>12}: {tokens / seconds:.1f} useful tokens/s over {args.seeds} seeds ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
