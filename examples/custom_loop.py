"""CAST in a hand-written training loop, without TRL: the core is a pure function.

    python examples/custom_loop.py            # tiny random model, 3 steps, seconds on a CPU
    python examples/custom_loop.py --model smollm2-135m --steps 2

Each step: sample G completions per prompt, verify them, score the sampled tokens with the student
prompt and with the paper's self-teacher (the answer-free prompt, read by a frozen snapshot of the
policy refreshed every 10 steps; no gradient), turn rewards + gap into token advantages with
`cast_advantages`, and take one clipped-surrogate step. Completions that hit the token budget
without an end token are masked from the loss, as in the paper.
"""

from __future__ import annotations

import argparse
import copy

import torch

from castrl.core import CastConfig, LossConfig, cast_advantages, clipped_surrogate_loss
from castrl.data import build_prompt, make_arithmetic
from castrl.rewards import Verifier
from castrl.teacher import build_teacher_prompt


def token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature):
    """(B, T) fp32 log-probs of `completion_ids` after left-padded prompts."""
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, prompt_ids.shape[1] - 1 : -1].float()
    logps = torch.log_softmax(logits / temperature, dim=-1)
    return logps.gather(-1, completion_ids[..., None]).squeeze(-1)


def encode(tokenizer, chats):
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def load(name: str):
    if name == "tiny":
        from castrl.testing import build_char_tokenizer, build_tiny_model

        tokenizer = build_char_tokenizer()
        return build_tiny_model(tokenizer), tokenizer
    from castrl.models import load_model_and_tokenizer

    return load_model_and_tokenizer(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (random, local), 'smollm2-135m' or a path")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=24)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load(args.model)
    tokenizer.padding_side = "left"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    problems = make_arithmetic("train", levels=("add1",), n_per_level=args.prompts * args.steps)
    temperature, cfg, loss_cfg = 0.7, CastConfig(), LossConfig()
    teacher_model, refresh_every = None, 10
    with Verifier(num_workers=1) as verifier:
        for step in range(args.steps):
            if step % refresh_every == 0:  # the self-teacher: a stop-gradient snapshot of the policy
                teacher_model = copy.deepcopy(model).eval().requires_grad_(False)
            batch = problems[step * args.prompts : (step + 1) * args.prompts]
            rows = [{"prompt": build_prompt(p["problem"]), **p} for p in batch for _ in range(args.group_size)]
            group_ids = torch.arange(len(batch)).repeat_interleave(args.group_size)

            # 1. rollouts from the current policy (= pi_old)
            prompt_ids, prompt_mask = encode(tokenizer, [r["prompt"] for r in rows])
            model.eval()
            with torch.no_grad():
                out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, top_k=20,
                                     top_p=0.95, temperature=temperature, max_new_tokens=args.max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id)
            completion_ids = out[:, prompt_ids.shape[1] :]
            # real tokens: up to and including the first eos; a completion without one (truncated) gets
            # no loss, but its reward still counts in its group's statistics
            is_eos = completion_ids == tokenizer.eos_token_id
            first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), completion_ids.shape[1])
            attention = torch.arange(completion_ids.shape[1])[None] <= first_eos[:, None]
            mask = attention & is_eos.any(1, keepdim=True)
            texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)

            # 2. rewards from the verifier
            rewards = torch.tensor(verifier.score_batch(texts, [r["answer"] for r in rows]), dtype=torch.float32)

            # 3. student and answer-free teacher scores of the same tokens (no gradient)
            teacher_ids, teacher_mask = encode(tokenizer, [build_teacher_prompt(r, "answer_free") for r in rows])
            with torch.no_grad():
                student = token_logps(model, prompt_ids, prompt_mask, completion_ids, attention.long(), temperature)
                teacher = token_logps(teacher_model, teacher_ids, teacher_mask, completion_ids, attention.long(),
                                      temperature)

            # 4. CAST token advantages
            adv, stats = cast_advantages(rewards, group_ids, student, teacher, mask, cfg=cfg)

            # 5. one clipped-surrogate step
            model.train()
            logps = token_logps(model, prompt_ids, prompt_mask, completion_ids, attention.long(), temperature)
            loss, loss_stats = clipped_surrogate_loss(logps, student, adv, mask, loss_cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            print(f"step {step + 1}: reward {rewards.mean():.2f}  loss {loss.item():+.4f}  "
                  f"all-wrong {stats['cast/frac_all_wrong']:.2f}  flipped {stats['cast/frac_flipped']:.3f}  "
                  f"truncated {1 - mask.any(1).float().mean():.2f}  "
                  f"nonzero-adv rollouts {stats['cast/frac_nonzero_adv']:.2f}")


if __name__ == "__main__":
    main()
