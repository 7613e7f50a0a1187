"""Teacher inputs for a verl batch: each rollout's response re-scored after the teacher's prompt.

For row i: teacher prompt = `castrl.teacher.build_teacher_prompt` on the row's `raw_prompt`
(chat messages), with `reward_model["ground_truth"]` as the answer and `extra_info` for the bare
problem / reference solution; chat-templated as verl's agent loop does, cut from the left to
`teacher_max_prompt_length`, left-padded, then followed by the row's own response tokens
(right-padded, unchanged). Layout = verl's padded layout (`prompts`, `responses`, `input_ids`,
`attention_mask`, `position_ids`, `response_mask`), so verl's `left_right_2_no_padding` /
`no_padding_2_padding` work on it unchanged. Rows are independent: group layout does not matter,
except for contexts that read `{peer}` (RLRT's `with_peer_success`): there `choose_peers` picks,
for each row, another rollout of the same `uid` whose verifier reward counts as correct, and its
decoded response becomes the row's `peer` (`batch_peer_texts`, on `castrl.rollouts.peers`); a row without one
gets the answer-free
context (`castrl.teacher.build_teacher_prompt`'s fallback).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from verl import DataProto
from verl.utils import tensordict_utils as tu

from castrl.rollouts.batching import left_pad
from castrl.rollouts.peers import peer_texts as draw_peer_texts
from castrl.teacher import successful_peers
from castrl.teacher import teacher_prompt_ids as shared_teacher_prompt_ids

from .config import CastrlVerlConfig
from .jagged import padded, row_lengths

NON_TENSOR_KEYS = ("raw_prompt", "reward_model", "extra_info")


def teacher_example(
    raw_prompt: Any,
    reward_model: Mapping | None,
    extra_info: Mapping | None,
    problem_key: str,
    solution_key: str,
) -> dict[str, Any]:
    """The `example` dict `build_teacher_prompt` reads, from one verl row's non-tensor fields."""
    if isinstance(raw_prompt, str):
        prompt: Any = raw_prompt
    else:  # verl keeps chat messages; parquet may hand back a numpy array of dicts
        prompt = [dict(message) for message in raw_prompt]
    extra = dict(extra_info or {})
    example: dict[str, Any] = {"prompt": prompt}
    if extra.get(problem_key):
        example["problem"] = str(extra[problem_key])
    ground_truth = (reward_model or {}).get("ground_truth")
    if ground_truth is not None and not isinstance(ground_truth, (list, dict)):
        example["answer"] = str(ground_truth)
    if extra.get(solution_key):
        example["solution"] = str(extra[solution_key])
    return example


def tokenize_prompt(prompt: Any, tokenizer: Any, chat_template_kwargs: Mapping | None = None) -> list[int]:
    """Token ids of one teacher prompt: chat template with the generation prompt, or plain text."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer.apply_chat_template(
            prompt,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            **dict(chat_template_kwargs or {}),
        )["input_ids"]
    if len(ids) == 0:
        raise ValueError(f"the teacher prompt tokenized to no tokens: {prompt!r}")
    return [int(i) for i in ids]


def teacher_prompt_ids(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    settings: CastrlVerlConfig,
    chat_template_kwargs: Mapping | None = None,
    peers: Sequence[str | None] | None = None,
) -> list[list[int]]:
    """Untruncated teacher prompt ids, one list per row; `rows` hold the NON_TENSOR_KEYS.

    `peers`: one successful peer response text (or None) per row, for contexts that read `{peer}`.
    """
    examples = [
        teacher_example(
            row["raw_prompt"], row.get("reward_model"), row.get("extra_info"), settings.problem_key,
            settings.solution_key,
        )  # fmt: skip
        for row in rows
    ]
    return shared_teacher_prompt_ids(
        examples,
        settings.teacher_context,
        lambda prompts: [tokenize_prompt(p, tokenizer, chat_template_kwargs) for p in prompts],
        peers,
        settings.teacher_tag_placement,
        lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
    )


def choose_peers(
    uids: Sequence[Any], rewards: torch.Tensor, lengths: torch.Tensor, threshold: float, step: int = 0
) -> np.ndarray:
    """(B,) int: for each row, the index of another row of its group (same uid) that succeeded, or -1.

    A row succeeds when its verifier reward is >= `threshold` and it has at least one response
    token. The draw is `castrl.teacher.successful_peers`, the one rule every host uses.
    """
    peers = successful_peers(_succeeded(uids, rewards, lengths, threshold), [str(u) for u in uids], seed=step)
    return np.array([-1 if j is None else j for j in peers], dtype=np.int64)


def _succeeded(uids: Sequence[Any], rewards: torch.Tensor, lengths: torch.Tensor, threshold: float) -> list[bool]:
    """Per row: a verifier reward >= `threshold` and at least one response token."""
    if not (len(uids) == rewards.shape[0] == lengths.shape[0]):
        raise ValueError(f"{len(uids)} uids, {rewards.shape[0]} rewards, {lengths.shape[0]} lengths")
    return ((rewards.float() >= threshold) & (lengths > 0)).tolist()


def assemble_teacher_batch(
    prompt_ids: Sequence[Sequence[int]],
    responses: torch.Tensor,
    response_attention: torch.Tensor,
    response_mask: torch.Tensor,
    pad_token_id: int,
    max_prompt_length: int,
) -> tuple[DataProto, int]:
    """Left-pad the prompts and append the responses; returns (batch, number of truncated prompts).

    responses (B, T) long, right-padded; response_attention (B, T) 1 on every generated token (tool
    output included); response_mask (B, T) 1 on tokens that carry loss. Out: prompts (B, P),
    input_ids / attention_mask / position_ids (B, P + T); P = longest kept teacher prompt.
    """
    if len(prompt_ids) != responses.shape[0]:
        raise ValueError(f"{len(prompt_ids)} teacher prompts for {responses.shape[0]} responses")
    # cut from the left (the end of the context, next to the response, is kept), then left-padded
    prompts, prompt_attention, n_truncated = left_pad(prompt_ids, pad_token_id, max_prompt_length)
    attention_mask = torch.cat([prompt_attention, response_attention.long()], dim=1)
    # as verl's compute_position_id_with_mask: left padding sits at position 0, tokens count from 0
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    tensors = {
        "prompts": prompts,
        "responses": responses.long(),
        "response_mask": response_mask.long(),
        "input_ids": torch.cat([prompts, responses.long()], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
    }
    return DataProto.from_dict(tensors=tensors), n_truncated


def _row_dicts(non_tensor: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    if "raw_prompt" not in non_tensor:
        raise ValueError(
            "the batch has no 'raw_prompt'; verl's RLHFDataset provides it (data.prompt_key column)"
        )
    columns = {key: list(non_tensor[key]) if key in non_tensor else [None] * n for key in NON_TENSOR_KEYS}
    return [{key: columns[key][i] for key in NON_TENSOR_KEYS} for i in range(n)]


def response_attention(data: DataProto) -> torch.Tensor:
    """(B, T): 1 on every generated token; the last T columns of `attention_mask`, else `response_mask`."""
    width = data.batch["responses"].shape[1]
    if "attention_mask" in data.batch.keys():
        return data.batch["attention_mask"][:, -width:]
    return data.batch["response_mask"]


def batch_peer_texts(
    data: DataProto, tokenizer: Any, rewards: torch.Tensor, threshold: float, step: int = 0
) -> list[str | None]:
    """Peer response texts for a padded verl batch with `non_tensor_batch['uid']` (the peers `choose_peers`
    picks, drawn by `castrl.rollouts.peers`).

    `rewards` (B,): the verifier's score of each row (verl's `rm_scores` summed).
    """
    if "uid" not in data.non_tensor_batch:
        raise ValueError("peer teacher contexts need non_tensor_batch['uid'] (the group of each rollout)")
    attention, responses, uids = response_attention(data), data.batch["responses"], data.non_tensor_batch["uid"]

    def text_of(row: int) -> str | None:  # special tokens dropped; an empty response is no peer text
        return tokenizer.decode(responses[row][attention[row].bool()].tolist(), skip_special_tokens=True) or None

    return draw_peer_texts(_succeeded(uids, rewards, attention.sum(-1), threshold), [str(u) for u in uids], text_of,
                           seed=step)  # fmt: skip


def teacher_batch_from_dataproto(
    data: DataProto,
    tokenizer: Any,
    settings: CastrlVerlConfig,
    chat_template_kwargs: Mapping | None = None,
    peers: Sequence[str | None] | None = None,
) -> tuple[DataProto, int]:
    """Teacher inputs for a padded verl batch (`responses`, `response_mask`, optional `attention_mask`).

    The response part of `attention_mask` (its last T columns) marks generated tokens; without it,
    `response_mask` does (identical for single-turn rollouts). `peers` (from `batch_peer_texts`) is
    required when the teacher context reads `{peer}`.
    """
    if settings.needs_peers and peers is None:
        raise ValueError(
            f"teacher_context={settings.teacher_context!r} reads a successful peer rollout: pass `peers` "
            "(batch_peer_texts)"
        )
    responses = data.batch["responses"]
    attention = response_attention(data) if "attention_mask" in data.batch.keys() else None
    response_mask = data.batch["response_mask"]
    rows = _row_dicts(data.non_tensor_batch, len(data))
    ids = teacher_prompt_ids(rows, tokenizer, settings, chat_template_kwargs, peers)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return assemble_teacher_batch(
        ids,
        responses,
        response_mask if attention is None else attention,
        response_mask,
        pad,
        settings.teacher_max_prompt_length,
    )


def object_array(values: Sequence[Any]) -> np.ndarray:
    """1-D object array, even when every element is a list of the same length."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def dataproto_from_nested(td: Any, pad_token_id: int) -> DataProto:
    """verl v1 TransferQueue fields (jagged `responses`/`response_mask`, non-tensor stacks) -> padded DataProto.

    The response attention is every generated token (the row's length), as in verl's padded layout.
    """
    lengths = row_lengths(td["responses"])
    responses = padded(td["responses"], pad_token_id)
    attention = (torch.arange(responses.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()
    tensors = {
        "responses": responses,
        "response_mask": padded(td["response_mask"], 0),
        "attention_mask": attention,
    }
    keys = (*NON_TENSOR_KEYS, "uid")
    non_tensors = {key: object_array(tu.get(td, key)) for key in keys if key in td.keys()}
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)
