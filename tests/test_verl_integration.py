"""castrl.integrations.verl on CPU: estimator on verl DataProto batches, teacher inputs, config, trainer hook.

Needs the `verl` extra (skipped otherwise). The trainer-hook test also needs verl's TransferQueue
(`verl[verl-core]`); it runs verl's real `_compute_advantage` against an in-memory stand-in for
TransferQueue and a worker group that scores with a tiny CPU model. Nothing here needs a GPU, Ray
or vLLM; docs/verl.md lists what only `scripts/gpu/verl_smoke.sh` can check.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from pathlib import Path

import pytest

verl = pytest.importorskip("verl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo.ray_trainer import compute_advantage  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.utils.model import compute_position_id_with_mask  # noqa: E402
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding  # noqa: E402

from castrl.core import (  # noqa: E402
    ADVANTAGE_ESTIMATORS,
    CastConfig,
    GRPOAdvConfig,
    GRPOOPSDConfig,
    RLRTConfig,
    RLSDConfig,
    compute_advantages,
    get_estimator,
)
from castrl.data import make_arithmetic  # noqa: E402
from castrl.integrations.verl import (  # noqa: E402
    TEACHER_KEY,
    BoundInputs,
    CastrlVerlConfig,
    batch_peer_texts,
    bind_estimator_inputs,
    check_verl_config,
    choose_peers,
    compute_castrl_advantage,
    dataproto_from_nested,
    group_ids_from_uids,
    parse_castrl_config,
    teacher_batch_from_dataproto,
    verl_names,
)
from castrl.integrations.verl.data import verl_rows  # noqa: E402
from castrl.teacher import DEFAULT_TEACHER_CONTEXT, DEFAULT_TEACHER_WEIGHTS, build_teacher_prompt  # noqa: E402
from castrl.testing import build_char_tokenizer, build_tiny_model  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "verl"
ALL_NAMES = ADVANTAGE_ESTIMATORS.names()
TEACHER_NAMES = [name for name in ALL_NAMES if get_estimator(name).needs_teacher]


# -- batch builders -------------------------------------------------------------------------------


def _uids(n_groups: int, size: int, seed: int) -> np.ndarray:
    """Group ids spread over the batch (not contiguous), as verl's balance_batch leaves them."""
    uids = np.array([f"uid-{g}" for g in range(n_groups) for _ in range(size)], dtype=object)
    return uids[np.random.default_rng(seed).permutation(len(uids))]


def _rollout_batch(
    seed: int = 0, n_groups: int = 4, size: int = 4, width: int = 7, n_pad_rows: int = 0
) -> DataProto:
    """verl-shaped rollout batch: right-padded responses, outcome reward on the last real token."""
    gen = torch.Generator().manual_seed(seed)
    uids = _uids(n_groups, size, seed)
    n = len(uids)
    lengths = torch.randint(1, width + 1, (n,), generator=gen)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    group_of = {u: i for i, u in enumerate(sorted(set(uids)))}
    p_correct = torch.tensor([0.0, 1.0, 0.5, 0.5, 0.3, 0.8])[[group_of[u] % 6 for u in uids]]
    reward = (torch.rand(n, generator=gen) < p_correct).float()
    scores = torch.zeros(n, width).scatter_(1, (lengths - 1)[:, None], reward[:, None])
    student = -torch.rand(n, width, generator=gen) * 3
    teacher = student + torch.randn(n, width, generator=gen) * 0.4
    if n_pad_rows:  # verl's synthetic padding samples: one shared uid, no response token
        uids = np.concatenate([uids, np.array(["pad-x"] * n_pad_rows, dtype=object)])
        zeros = torch.zeros(n_pad_rows, width)
        mask, scores = torch.cat([mask, zeros.long()]), torch.cat([scores, zeros])
        student, teacher = torch.cat([student, zeros]), torch.cat([teacher, zeros])
    tensors = {
        "responses": torch.randint(3, 50, mask.shape, generator=gen) * mask,
        "response_mask": mask,
        "token_level_rewards": scores,
        "token_level_scores": scores.clone(),
        "old_log_probs": student * mask,
        TEACHER_KEY: teacher * mask,
    }
    return DataProto.from_dict(tensors=tensors, non_tensors={"uid": uids})


def _core(name: str, data: DataProto, config=None, rows=None, step: int = 0) -> tuple[torch.Tensor, dict]:
    """castrl.core on the same tensors, on `rows` (default: every row), at optimizer step `step`."""
    b = data.batch
    rows = torch.arange(len(data)) if rows is None else rows
    gids = group_ids_from_uids(data.non_tensor_batch["uid"])[rows]
    return compute_advantages(
        name,
        b["token_level_rewards"].sum(-1)[rows],
        gids,
        b["old_log_probs"][rows],
        b[TEACHER_KEY][rows],
        b["response_mask"][rows].float(),
        config,
        step,
    )


# -- estimator ------------------------------------------------------------------------------------


def test_every_registered_estimator_is_covered():
    assert {"grpo", "dr_grpo", "rlsd", "rlrt", "opsd", "grpo_opsd", "cast"} <= set(ALL_NAMES)
    assert set(TEACHER_NAMES) >= {"cast", "rlsd", "rlrt", "opsd", "grpo_opsd"}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_dataproto_estimator_matches_core(name):
    data = _rollout_batch(seed=1)
    stats = compute_castrl_advantage(data, CastrlVerlConfig(estimator=name))
    expected, expected_stats = _core(name, data)
    torch.testing.assert_close(data.batch["advantages"], expected.float())
    torch.testing.assert_close(data.batch["returns"], expected.float())
    assert stats["cast/frac_mixed"] == pytest.approx(expected_stats["cast/frac_mixed"])
    assert data.batch["advantages"].abs().sum() > 0


def test_dataproto_estimator_uses_the_configured_cast_fields_and_reward_key():
    data = _rollout_batch(seed=2)
    config = CastConfig(lam=0.5, flip_correct=False, flip_margin=0.1, mixed_only=True)
    data.batch["token_level_rewards"] = data.batch["token_level_rewards"] - 0.3  # e.g. a KL penalty
    compute_castrl_advantage(
        data, CastrlVerlConfig(estimator="cast", estimator_config=config, reward_key="token_level_scores")
    )
    b = data.batch
    gids = group_ids_from_uids(data.non_tensor_batch["uid"])
    expected, _ = compute_advantages(
        "cast",
        b["token_level_scores"].sum(-1),
        gids,
        b["old_log_probs"],
        b[TEACHER_KEY],
        b["response_mask"].float(),
        config,
    )
    torch.testing.assert_close(b["advantages"], expected.float())


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("rlsd", RLSDConfig(rlsd_anneal_steps=4)),
        ("grpo_opsd", GRPOOPSDConfig(opsd_anneal_steps=4)),
        ("cast", CastConfig(shaping_cutoff_step=3)),
    ],
)
def test_schedules_read_the_step(name, config):
    """Anneals and the shaping cutoff see the step passed in, through the DataProto path and verl's own."""
    data = _rollout_batch(seed=8)
    settings = CastrlVerlConfig(estimator=name, estimator_config=config)
    outs = []
    for step in (0, 2, 5):
        compute_castrl_advantage(data, settings, step=step)
        expected, _ = _core(name, data, config, step=step)
        torch.testing.assert_close(data.batch["advantages"], expected.float())
        bound = _bound(data, settings)
        bound.step = step
        with bind_estimator_inputs(bound):
            out = compute_advantage(data, adv_estimator=f"castrl_{name}", config=None)
        torch.testing.assert_close(out.batch["advantages"], expected.float())
        outs.append(expected)
    assert not torch.equal(outs[0], outs[2])  # the schedule moved


def test_cast_switches_change_the_advantages():
    """flip_correct / flip_incorrect / flip_margin / shaping_cutoff_step reach castrl.core unchanged."""
    data = _rollout_batch(seed=9)
    variants = [
        CastConfig(),
        CastConfig(flip_correct=False),
        CastConfig(flip_incorrect=False),
        CastConfig(flip_margin=0.3),
        CastConfig(shaping_cutoff_step=0),
    ]
    seen = []
    for config in variants:
        compute_castrl_advantage(data, CastrlVerlConfig(estimator_config=config))
        expected, _ = _core("cast", data, config)
        torch.testing.assert_close(data.batch["advantages"], expected.float())
        seen.append(data.batch["advantages"].clone())
    for i in range(1, len(seen)):
        assert not torch.equal(seen[0], seen[i]), variants[i]


def test_padding_rows_are_left_out_of_groups():
    data = _rollout_batch(seed=3, n_pad_rows=3)
    stats = compute_castrl_advantage(data, CastrlVerlConfig())
    real = torch.arange(len(data) - 3)
    expected, expected_stats = _core("cast", data, rows=real)
    torch.testing.assert_close(data.batch["advantages"][real], expected.float())
    assert data.batch["advantages"][-3:].abs().sum() == 0
    assert stats["cast/frac_all_wrong"] == pytest.approx(expected_stats["cast/frac_all_wrong"])
    assert stats["cast/empty_rows_count"] == 3


def test_group_ids_from_uids_groups_equal_ids_anywhere():
    gids = group_ids_from_uids(np.array(["b", "a", "b", "c", "a"], dtype=object))
    assert gids[0] == gids[2] and gids[1] == gids[4] and len(set(gids.tolist())) == 3
    assert (
        group_ids_from_uids(np.array([7, 3, 7])).tolist()[0]
        == group_ids_from_uids(np.array([7, 3, 7])).tolist()[2]
    )
    with pytest.raises(ValueError, match="uid"):
        group_ids_from_uids(None)


def _bound(data: DataProto, settings: CastrlVerlConfig, uids=None) -> BoundInputs:
    b = data.batch
    return BoundInputs(
        uids=data.non_tensor_batch["uid"] if uids is None else uids,
        student_logps=b["old_log_probs"],
        teacher_logps=b[TEACHER_KEY],
        settings=settings,
    )


@pytest.mark.parametrize("name", TEACHER_NAMES)
def test_verl_compute_advantage_calls_the_registered_estimator(name):
    """verl's own compute_advantage, with `algorithm.adv_estimator=castrl_<name>`, equals castrl.core."""
    data = _rollout_batch(seed=4)
    settings = CastrlVerlConfig(estimator=name)
    with bind_estimator_inputs(_bound(data, settings)) as bound:
        out = compute_advantage(data, adv_estimator=f"castrl_{name}", num_repeat=4, config=None)
    expected, _ = _core(name, data)
    torch.testing.assert_close(out.batch["advantages"], expected.float())
    assert "cast/adv_mean" in bound.stats and "cast/frac_all_correct" in bound.stats


def test_cast_alias_and_every_name_is_registered():
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    assert "cast" in verl_names()
    for verl_name in verl_names():
        assert callable(get_adv_estimator_fn(verl_name))


def test_teacher_estimator_without_the_castrl_trainer_explains_the_fix():
    data = _rollout_batch(seed=5)
    with pytest.raises(ValueError, match="castrl_sync"):
        compute_advantage(data, adv_estimator="cast", config=None)


def test_castrl_grpo_matches_verl_grpo_with_verls_epsilon():
    """Unbound castrl_grpo runs in stock verl; with verl's eps (1e-6) it is verl's GRPO exactly."""
    data = _rollout_batch(seed=6)
    ours = compute_advantage(data, adv_estimator="castrl_grpo", config=None).batch["advantages"].clone()
    expected, _ = _core("grpo", data)
    torch.testing.assert_close(ours, expected.float())
    settings = CastrlVerlConfig(estimator="grpo", estimator_config=GRPOAdvConfig(std_eps=1e-6))
    with bind_estimator_inputs(_bound(data, settings)):
        ours = compute_advantage(data, adv_estimator="castrl_grpo", config=None).batch["advantages"].clone()
    theirs = compute_advantage(data, adv_estimator="grpo", config=None).batch["advantages"]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_misaligned_rows_are_rejected():
    data = _rollout_batch(seed=7)
    shuffled = data.non_tensor_batch["uid"][::-1].copy()
    with bind_estimator_inputs(_bound(data, CastrlVerlConfig(), uids=shuffled)):
        with pytest.raises(ValueError, match="uid mismatch"):
            compute_advantage(data, adv_estimator="cast", config=None)
    bound = _bound(data, CastrlVerlConfig())
    bound.teacher_logps = bound.teacher_logps[:, :-1]
    with bind_estimator_inputs(bound), pytest.raises(ValueError, match="shape"):
        compute_advantage(data, adv_estimator="cast", config=None)
    with bind_estimator_inputs(_bound(data, CastrlVerlConfig(estimator="rlsd"))):
        with pytest.raises(ValueError, match="adv_estimator"):
            compute_advantage(data, adv_estimator="cast", config=None)


# -- teacher inputs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def verl_prompt_rows(tmp_path_factory, tokenizer):
    """Prompt rows exactly as verl's RLHFDataset yields them, from a parquet written by castrl."""
    import pandas as pd
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.dataset.rl_dataset import collate_fn

    path = tmp_path_factory.mktemp("verl_data") / "train.parquet"
    problems = make_arithmetic("train", ("add1", "mul21"), n_per_level=3, seed=0)
    pd.DataFrame(verl_rows(problems, "train")).to_parquet(path)
    data_cfg = OmegaConf.create(
        {"prompt_key": "prompt", "max_prompt_length": 400, "filter_overlong_prompts": False}
    )
    dataset = create_rl_dataset([str(path)], data_cfg, tokenizer, None, is_train=True)
    return collate_fn([dataset[i] for i in range(len(dataset))]), problems


def _with_responses(prompt_batch: dict, uids_per_prompt: int, seed: int) -> DataProto:
    """Repeat prompts into groups, spread them over the batch and attach right-padded responses."""
    n_prompts = len(prompt_batch["raw_prompt"])
    order = np.random.default_rng(seed).permutation(n_prompts * uids_per_prompt)
    src = np.repeat(np.arange(n_prompts), uids_per_prompt)[order]
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (len(src),), generator=gen)
    attention = (torch.arange(8)[None] < lengths[:, None]).long()
    responses = torch.randint(3, 60, (len(src), 8), generator=gen) * attention + 2 * (1 - attention)
    non_tensors = {k: prompt_batch[k][src] for k in ("raw_prompt", "reward_model", "extra_info")}
    non_tensors["uid"] = np.array([f"u{i}" for i in src], dtype=object)
    tensors = {
        "responses": responses,
        "response_mask": attention.clone(),
        "attention_mask": torch.cat([torch.ones(len(src), 3, dtype=torch.long), attention], 1),
    }
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)


def _expected_prompt_ids(row_raw, row_rm, row_extra, tokenizer, context: str, peer=None) -> list[int]:
    example = {"prompt": list(row_raw), "problem": row_extra["question"], "answer": row_rm["ground_truth"]}
    messages = build_teacher_prompt(example, context, peer)
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]


@pytest.mark.parametrize("context", ["answer_free", "with_reference", "self_teach", "with_answer", "student"])
def test_teacher_batch_layout_from_verl_dataset_rows(verl_prompt_rows, tokenizer, context):
    prompt_batch, _ = verl_prompt_rows
    data = _with_responses(prompt_batch, uids_per_prompt=3, seed=0)
    settings = CastrlVerlConfig(
        teacher_context=context, teacher_weights="frozen" if context == "student" else "policy"
    )
    teacher, n_truncated = teacher_batch_from_dataproto(data, tokenizer, settings)
    b = teacher.batch
    width = b["prompts"].shape[1]
    assert n_truncated == 0
    assert torch.equal(b["responses"], data.batch["responses"])
    assert torch.equal(b["input_ids"], torch.cat([b["prompts"], b["responses"]], 1))
    assert torch.equal(b["position_ids"], compute_position_id_with_mask(b["attention_mask"]))
    nt = data.non_tensor_batch
    for i in range(len(data)):
        expected = _expected_prompt_ids(
            nt["raw_prompt"][i], nt["reward_model"][i], nt["extra_info"][i], tokenizer, context
        )
        n_pad = width - len(expected)
        assert b["attention_mask"][i, :n_pad].sum() == 0 and b["attention_mask"][i, n_pad:width].all()
        assert b["prompts"][i, n_pad:].tolist() == expected
        assert torch.equal(b["attention_mask"][i, width:], data.batch["attention_mask"][i, -8:])
    answer_in_prompt = str(nt["reward_model"][0]["ground_truth"]) in tokenizer.decode(b["prompts"][0])
    assert answer_in_prompt == (context in ("with_answer", "with_reference")) or context == "student"
    if context == "answer_free":  # the paper's T_AF: the student's user turn, then the response tag
        assert tokenizer.decode(b["prompts"][0]).count("[Student response]") == 1


def test_teacher_batch_rows_do_not_depend_on_batch_order(verl_prompt_rows, tokenizer):
    prompt_batch, _ = verl_prompt_rows
    data = _with_responses(prompt_batch, uids_per_prompt=2, seed=1)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    settings = CastrlVerlConfig()
    teacher, _ = teacher_batch_from_dataproto(data, tokenizer, settings)
    shuffled, _ = teacher_batch_from_dataproto(data.select_idxs(perm), tokenizer, settings)

    def strip(batch: DataProto, i: int) -> list[int]:
        return batch.batch["input_ids"][i][batch.batch["attention_mask"][i].bool()].tolist()

    for j, i in enumerate(perm.tolist()):
        assert strip(shuffled, j) == strip(teacher, i)


def test_teacher_prompts_are_cut_from_the_left(verl_prompt_rows, tokenizer):
    prompt_batch, _ = verl_prompt_rows
    data = _with_responses(prompt_batch, uids_per_prompt=1, seed=2)
    full, _ = teacher_batch_from_dataproto(data, tokenizer, CastrlVerlConfig())
    cut, n_truncated = teacher_batch_from_dataproto(
        data, tokenizer, CastrlVerlConfig(teacher_max_prompt_length=20)
    )
    assert n_truncated == len(data) and cut.batch["prompts"].shape[1] == 20
    assert torch.equal(cut.batch["prompts"], full.batch["prompts"][:, -20:])


def test_choose_peers_picks_another_successful_rollout_of_the_group():
    uids = np.array(["a", "b", "a", "a", "b", "c", "c", "a"], dtype=object)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    lengths = torch.tensor([3, 2, 2, 4, 1, 2, 0, 5])  # row 6 succeeded with no token: never a peer
    draws = set()
    for step in range(20):
        peers = choose_peers(uids, rewards, lengths, 0.5, step)
        for i, j in enumerate(peers.tolist()):
            if j >= 0:
                assert j != i and uids[j] == uids[i] and rewards[j] >= 0.5 and lengths[j] > 0
        assert peers[1] == peers[4] == -1  # group b has no success
        assert peers[5] == -1 and peers[6] == 5  # a row is never its own peer
        assert peers[0] in (3, 7) and peers[2] in (0, 3, 7)
        assert np.array_equal(peers, choose_peers(uids, rewards, lengths, 0.5, step))  # reproducible
        draws.add(tuple(peers.tolist()))
    assert len(draws) > 1  # sampled, not always the first success
    assert (choose_peers(uids, rewards, lengths, 2.0, 0) == -1).all()


def test_peer_context_puts_a_successful_rollout_in_the_teacher_prompt(verl_prompt_rows, tokenizer):
    """with_peer_success (RLRT's teacher): another successful response of the group, else answer_free."""
    prompt_batch, _ = verl_prompt_rows
    data = _with_responses(prompt_batch, uids_per_prompt=3, seed=4)
    settings = CastrlVerlConfig(estimator="rlrt", teacher_context="with_peer_success")
    assert settings.needs_peers and not CastrlVerlConfig(estimator="rlrt").needs_peers
    with pytest.raises(ValueError, match="peer"):
        teacher_batch_from_dataproto(data, tokenizer, settings)
    rewards = (torch.arange(len(data)) % 2).float()
    attention = data.batch["attention_mask"][:, -8:]
    peers = batch_peer_texts(data, tokenizer, rewards, 0.5, step=1)
    chosen = choose_peers(data.non_tensor_batch["uid"], rewards, attention.sum(-1), 0.5, 1)
    teacher, _ = teacher_batch_from_dataproto(data, tokenizer, settings, peers=peers)
    b, nt = teacher.batch, data.non_tensor_batch
    width = b["prompts"].shape[1]
    for i, j in enumerate(chosen.tolist()):
        if j >= 0:
            ids = data.batch["responses"][j][attention[j].bool()].tolist()
            assert peers[i] == tokenizer.decode(ids, skip_special_tokens=True)
        else:
            assert peers[i] is None
        args = (nt["raw_prompt"][i], nt["reward_model"][i], nt["extra_info"][i], tokenizer)
        expected = _expected_prompt_ids(*args, "with_peer_success", peers[i])
        if j < 0:
            assert expected == _expected_prompt_ids(*args, "answer_free")
        else:
            assert "[Successful response]" in tokenizer.decode(expected)
        assert b["prompts"][i, width - len(expected) :].tolist() == expected
    assert any(p is None for p in peers) and any(p is not None for p in peers)


def test_teacher_batch_survives_verls_unpad_and_repad(verl_prompt_rows, tokenizer):
    """A per-token value of token t+1 computed on verl's no-padding layout lands on response token t."""
    prompt_batch, _ = verl_prompt_rows
    data = _with_responses(prompt_batch, uids_per_prompt=2, seed=3)
    teacher, _ = teacher_batch_from_dataproto(data, tokenizer, CastrlVerlConfig())
    td = left_right_2_no_padding(teacher.to_tensordict())
    values = [
        torch.cat([ids[1:].float(), torch.zeros(1)]) for ids in td["input_ids"].unbind()
    ]  # "next token"
    nested = torch.nested.as_nested_tensor(values, layout=torch.jagged)
    back = no_padding_2_padding(nested, td)
    mask = data.batch["attention_mask"][:, -8:].bool()
    assert torch.equal(back[mask], data.batch["responses"][mask].float())


def test_dataproto_from_nested_pads_transfer_queue_fields():
    raw = [
        [{"role": "user", "content": "a"}],
        [{"role": "user", "content": "b"}, {"role": "user", "content": "c"}],
    ]
    td = tu.get_tensordict(
        {
            "responses": torch.nested.as_nested_tensor(
                [torch.tensor([5, 6, 7]), torch.tensor([8])], layout=torch.jagged
            ),
            "response_mask": torch.nested.as_nested_tensor(
                [torch.tensor([1, 0, 1]), torch.tensor([1])], layout=torch.jagged
            ),
            "raw_prompt": raw,
            "reward_model": [{"ground_truth": "1"}, {"ground_truth": "2"}],
        }
    )
    data = dataproto_from_nested(td, pad_token_id=2)
    assert data.batch["responses"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert data.batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert data.batch["response_mask"].tolist() == [[1, 0, 1], [1, 0, 0]]
    assert list(data.non_tensor_batch["raw_prompt"][1]) == raw[1] and data.non_tensor_batch[
        "raw_prompt"
    ].shape == (2,)
    plain = dataproto_from_nested(
        tu.get_tensordict(
            {"responses": torch.ones(2, 3, dtype=torch.long), "response_mask": torch.ones(2, 3)}
        ),
        2,
    )
    assert plain.batch["attention_mask"].sum() == 6


# -- config ---------------------------------------------------------------------------------------


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        return compose(config_name="cast_gsm8k", overrides=list(overrides))


def test_example_config_composes_with_verl_and_parses():
    config = _compose(
        "castrl.cast.lam=0.5",
        "castrl.cast.flip_correct=false",
        "castrl.cast.flip_margin=0.1",
        "castrl.cast.shaping_cutoff_step=100",
    )
    settings = check_verl_config(config)
    assert settings.estimator == "cast" and settings.teacher_weights == "policy"
    assert settings.teacher_context == "answer_free"
    assert settings.estimator_config == CastConfig(
        lam=0.5, flip_correct=False, flip_margin=0.1, shaping_cutoff_step=100
    )
    assert config.actor_rollout_ref.actor.clip_ratio_high == pytest.approx(0.28)
    rlsd = check_verl_config(
        _compose("algorithm.adv_estimator=castrl_rlsd", "castrl.rlsd.rlsd_anneal_steps=10")
    )
    assert rlsd.estimator == "rlsd" and rlsd.estimator_config.rlsd_anneal_steps == 10
    opsd = check_verl_config(
        _compose(
            "algorithm.adv_estimator=castrl_grpo_opsd",
            "castrl.teacher_context=with_reference",
            "castrl.grpo_opsd.opsd_coef_start=0.1",
        )
    )
    assert opsd.estimator_config == GRPOOPSDConfig(opsd_coef_start=0.1)
    rlrt = check_verl_config(
        _compose(
            "algorithm.adv_estimator=castrl_rlrt",
            "castrl.teacher_context=with_peer_success",
            "castrl.teacher_max_prompt_length=2048",
            "castrl.rlrt.rlrt_lam=0.25",
        )
    )
    assert rlrt.needs_peers and rlrt.estimator_config == RLRTConfig(rlrt_lam=0.25)


def test_example_sections_are_the_core_defaults():
    """The example YAML spells out every estimator sub-section with castrl.core's defaults."""
    config = _compose()
    for name in ("cast", "rlsd", "rlrt", "grpo_opsd"):
        assert name in config.castrl
        settings = parse_castrl_config(config.castrl, f"castrl_{name}")
        assert settings.estimator_config == get_estimator(name).config_cls(), name


def _smoke_overrides() -> list[str]:
    """The Hydra overrides scripts/gpu/verl_smoke.sh passes, with its shell variables filled in."""
    text = (REPO / "scripts" / "gpu" / "verl_smoke.sh").read_text()
    found = re.findall(r"^\s+([a-z_][\w.]*=\S+?)\s*\\?$", text, flags=re.MULTILINE)
    subs = {'"$WORK': '"/tmp/smoke', '"$MODEL"': "/models/m", '"$STEPS"': "3"}
    out = []
    for item in found:
        for old, new in subs.items():
            item = item.replace(old, new)
        out.append(item.replace('"', "").replace("'", ""))
    return out


@pytest.mark.parametrize("overrides", [[], ["smoke"]], ids=["example", "gpu_smoke_script"])
def test_shipped_configs_pass_verls_own_validation(overrides):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    overrides = _smoke_overrides() if overrides else []
    assert not overrides or "trainer.n_gpus_per_node=1" in overrides
    config = _compose(*overrides)
    check_verl_config(config)
    validate_config(
        config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )


def test_defaults_match_the_core_defaults():
    settings = parse_castrl_config(None, "cast")
    assert settings.estimator_config == CastConfig() and settings.teacher_context == DEFAULT_TEACHER_CONTEXT
    assert settings.teacher_context == "answer_free"
    # castrl's default teacher is the paper's refresh:10; verl's default stays the actor's current
    # weights until refresh:K has run on a GPU, and the help text says it differs from the paper
    assert DEFAULT_TEACHER_WEIGHTS == "refresh:10" and settings.teacher_weights == "policy"
    from dataclasses import fields

    help_text = {f.name: f.metadata["help"] for f in fields(CastrlVerlConfig)}["teacher_weights"]
    assert "refresh:10" in help_text and "paper" in help_text and "GPU" in help_text
    assert parse_castrl_config(
        {"cast": {"band_pos": [0.7, 1.1]}}, "castrl_cast"
    ).estimator_config.band_pos == (0.7, 1.1)


@pytest.mark.parametrize(
    ("section", "estimator", "error", "match"),
    [
        ({"teacher_contxt": "x"}, "cast", ValueError, r"castrl\.teacher_contxt"),
        ({"cast": {"lamb": 1.0}}, "cast", ValueError, r"castrl\.cast\.lamb.*valid:.*lam"),
        ({"cast": {"tau_pos": 0.1}}, "cast", ValueError, r"castrl\.cast\.tau_pos is not a field"),
        ({"cast": {"flip_threshold": "tau"}}, "cast", ValueError, r"castrl\.cast\.flip_threshold is not"),
        ({"cast": {"lam": "big"}}, "cast", TypeError, r"castrl\.cast\.lam"),
        ({"cast": {"flip": 1}}, "cast", TypeError, r"castrl\.cast\.flip"),
        ({"cast": {"flip_correct": "no"}}, "cast", TypeError, r"castrl\.cast\.flip_correct"),
        ({"cast": {"flip_margin": -0.1}}, "cast", ValueError, r"castrl\.cast: .*flip_margin"),
        (
            {"cast": {"shaping_cutoff_step": 1.5}},
            "cast",
            TypeError,
            r"castrl\.cast\.shaping_cutoff_step.*null",
        ),
        ({"cast": {"shaping_cutoff_step": -1}}, "cast", ValueError, r"castrl\.cast: .*shaping_cutoff_step"),
        ({"rlrt": {"rlrt_eps_w": 2.0}}, "castrl_rlrt", ValueError, r"castrl\.rlrt: .*rlrt_eps_w"),
        ({"grpo_opsd": {"opsd_anneal_steps": "x"}}, "cast", TypeError, r"castrl\.grpo_opsd\.opsd_anneal"),
        ({"cast": {"band_pos": [1.2, 1.5]}}, "cast", ValueError, r"castrl\.cast: band_pos"),
        ({"rlsd": {"rlsd_band": [0.8]}}, "cast", TypeError, r"castrl\.rlsd\.rlsd_band"),
        ({"teacher_model": "big/teacher"}, "cast", ValueError, r"teacher_model='big/teacher' is not supported on verl"),
        ({"teacher_weights": "lagged:5"}, "cast", ValueError, r"castrl: teacher_weights must be 'refresh:<K>'"),
        ({"teacher_weights": "refresh:1", "teacher_context": "student"}, "cast", ValueError, "identical"),
        ({"teacher_context": "student"}, "cast", ValueError, r"castrl: teacher_context='student'"),
        ({"teacher_context": "no field"}, "cast", ValueError, r"\{problem\}"),
        ({"reward_key": "rm_scores"}, "cast", ValueError, r"castrl\.reward_key"),
        ({"teacher_max_prompt_length": 0}, "cast", ValueError, r"castrl: teacher_max_prompt_length must be"),
        ({}, "grpo", ValueError, "not a castrl estimator"),
        ([1, 2], "cast", TypeError, "castrl must be a mapping"),
    ],
)
def test_config_errors_name_the_key(section, estimator, error, match):
    with pytest.raises(error, match=match):
        parse_castrl_config(section, estimator)


def test_teacher_free_estimators_ignore_teacher_knobs():
    settings = parse_castrl_config({"teacher_context": "student"}, "castrl_grpo")
    assert settings.estimator == "grpo" and not settings.needs_teacher
    settings = parse_castrl_config({"teacher_weights": "refresh:10"}, "castrl_dr_grpo")
    assert not settings.needs_teacher and not settings.needs_peers


@pytest.mark.parametrize(
    ("weights", "reference", "snapshot"),
    [("policy", False, False), ("refresh:1", False, False), ("frozen", True, False), ("refresh:10", False, True),
     ("refresh:2", False, True), ("ema", False, True)],
)
def test_supported_teacher_weights(weights, reference, snapshot):
    """refresh:1 (a snapshot after every optimizer step) is the current policy: accepted as such; the
    paper's refresh:K and ema keep a snapshot on the actor workers (tests/test_verl_teacher.py)."""
    settings = parse_castrl_config({"teacher_weights": weights}, "cast")
    assert settings.teacher_is_reference == reference and settings.teacher_snapshot == snapshot
    assert not parse_castrl_config({"teacher_weights": weights}, "castrl_grpo").teacher_snapshot


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["trainer.v1.trainer_mode=sync"], "trainer_mode=castrl_sync"),
        (["trainer.use_v1=false"], "use_v1"),
        (["castrl.teacher_weights=frozen"], "use_kl_loss=True"),
        (["actor_rollout_ref.rollout.n=1"], "rollout.n"),
        (["castrl.teacher_weights=refresh:10", "actor_rollout_ref.actor.strategy=megatron"], "Megatron keeps"),
        (["castrl.teacher_weights=ema", "actor_rollout_ref.actor.strategy=veomni"], "'veomni' engine"),
        (
            ["algorithm.adv_estimator=castrl_rlrt", "castrl.teacher_context=with_peer_success"],
            r"teacher_max_prompt_length=1024 .* at least .* = 2048",
        ),
    ],
)
def test_verl_config_checks(overrides, match):
    with pytest.raises(ValueError, match=match):
        check_verl_config(_compose(*overrides))


def test_frozen_teacher_accepts_a_reference_model():
    config = _compose("castrl.teacher_weights=frozen", "actor_rollout_ref.actor.use_kl_loss=true")
    assert check_verl_config(config).teacher_weights == "frozen"
    lora = _compose("castrl.teacher_weights=frozen", "actor_rollout_ref.model.lora_rank=8")
    assert check_verl_config(lora).teacher_weights == "frozen"


# -- verl hooks this integration depends on (fail loudly if a verl release moves them) -----------


def test_verl_version_and_hook_order():
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    assert verl.__version__.startswith("0.9."), verl.__version__
    step = inspect.getsource(PPOTrainer._step_once)
    assert (
        step.index("_compute_old_log_prob") < step.index("_compute_advantage") < step.index("_update_actor")
    )
    adv = inspect.getsource(PPOTrainer._compute_advantage)
    assert "compute_advantage_for_multi_trajectories" in adv and '"uid"' in adv
    assert 'adv_kwargs["index"] = data.non_tensor_batch["uid"]' in inspect.getsource(compute_advantage)


def test_entry_point_wraps_verls_task_runner():
    main = pytest.importorskip("castrl.integrations.verl.main")
    from verl.trainer.main_ppo import TaskRunnerV1

    assert issubclass(main._CastrlTaskRunner, TaskRunnerV1.__ray_actor_class__)
    assert os.path.exists(os.path.join(main.VERL_CONFIG_DIR, "ppo_trainer.yaml"))


# -- the trainer hook, against verl's real _compute_advantage ------------------------------------


class _FakeTransferQueue:
    """In-memory stand-in for TransferQueue's kv_batch_get / kv_batch_put (jagged per-row tensors)."""

    def __init__(self, rows: dict[str, dict]):
        self.rows = rows

    def kv_batch_get(self, keys, partition_id, select_fields):
        out = {}
        for name in select_fields:
            if all(name in self.rows[k] for k in keys):
                values = [self.rows[k][name] for k in keys]
                is_tensor = isinstance(values[0], torch.Tensor)
                out[name] = (
                    torch.nested.as_nested_tensor(values, layout=torch.jagged) if is_tensor else values
                )
        return tu.get_tensordict(out)

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None):
        for name in fields.keys():
            for key, value in zip(keys, fields[name].unbind(), strict=True):
                self.rows[key][name] = value
        from transfer_queue import KVBatchMeta

        return KVBatchMeta(keys=list(keys), tags=[{} for _ in keys], partition_id=partition_id)


class _TinyWorkers:
    """Worker group stand-in: log-probs of the next token on verl's no-padding inputs, tiny model."""

    def __init__(self, model):
        self.model, self.flags = model, []

    @torch.no_grad()
    def compute_log_prob(self, td):
        self.flags.append(("actor", tu.get(td, "no_lora_adapter", default=False), tu.get(td, "temperature")))
        temperature = tu.get(td, "temperature")
        out = []
        for ids, pos in zip(td["input_ids"].unbind(), td["position_ids"].unbind(), strict=True):
            logits = self.model(ids[None], position_ids=pos[None]).logits[0].float() / temperature
            logp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[1:, None])[:, 0]
            out.append(torch.cat([logp, torch.zeros(1)]))
        return tu.get_tensordict({"log_probs": torch.nested.as_nested_tensor(out, layout=torch.jagged)})

    def compute_ref_log_prob(self, td):
        self.flags.append(("ref",))
        return self.compute_log_prob(td)


def _direct_teacher_logps(
    model, prompt_ids: list[int], response: torch.Tensor, temperature: float
) -> torch.Tensor:
    ids = torch.tensor(prompt_ids + response.tolist())
    with torch.no_grad():
        logits = model(ids[None]).logits[0].float() / temperature
    logp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[1:, None])[:, 0]
    return logp[-len(response) :]


def _meta(keys: list[str]):
    from transfer_queue import KVBatchMeta

    return KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train")


def _trainer(verl_prompt_rows, tokenizer, overrides=()):
    pytest.importorskip("transfer_queue")
    from castrl.integrations.verl import trainer as trainer_module

    prompt_batch, _ = verl_prompt_rows
    data = _with_responses(prompt_batch, uids_per_prompt=4, seed=5)
    n = len(data)
    gen = torch.Generator().manual_seed(5)
    lengths = data.batch["response_mask"].sum(-1)
    rows = {}
    for i in range(n):
        length = int(lengths[i])
        reward = torch.zeros(length)
        reward[-1] = float(torch.rand(1, generator=gen) < 0.5)
        rows[f"{data.non_tensor_batch['uid'][i]}_{i}_0"] = {
            "uid": data.non_tensor_batch["uid"][i],
            "responses": data.batch["responses"][i, :length],
            "response_mask": torch.ones(length, dtype=torch.long),
            "rm_scores": reward,
            "old_log_probs": -4.0 - torch.rand(length, generator=gen),
            **{k: data.non_tensor_batch[k][i] for k in ("raw_prompt", "reward_model", "extra_info")},
        }
    config = _compose("actor_rollout_ref.rollout.temperature=0.7", *overrides)
    trainer = trainer_module.CastrlPPOTrainerSync(config)  # workers are started by init(), not here
    workers = _TinyWorkers(build_tiny_model(tokenizer, seed=1))
    trainer.tokenizer = tokenizer
    trainer.global_steps, trainer.ref_in_actor = 3, False
    trainer.actor_rollout_wg = trainer.ref_policy_wg = workers
    return trainer, _FakeTransferQueue(rows), workers


def _expected_hook_advantages(
    trainer, store, keys, model, tokenizer, context, peers=None, step=None, masked_rows=()
):
    """castrl.core on the stored rows, the teacher scored directly with `model` (peers: row -> text);
    `masked_rows` (indices into `keys`) have their whole mask at 0, their rewards still in the groups."""
    width = max(len(store.rows[k]["responses"]) for k in keys)
    teacher = torch.zeros(len(keys), width)
    student, mask, rewards = torch.zeros_like(teacher), torch.zeros_like(teacher), torch.zeros(len(keys))
    for i, key in enumerate(keys):
        row = store.rows[key]
        peer = None if peers is None else peers[i]
        args = (row["raw_prompt"], row["reward_model"], row["extra_info"], tokenizer)
        ids = _expected_prompt_ids(*args, context, peer)
        length = len(row["responses"])
        teacher[i, :length] = _direct_teacher_logps(model, ids, row["responses"], 0.7)
        student[i, :length], rewards[i] = row["old_log_probs"], row["rm_scores"].sum()
        mask[i, :length] = 0 if i in masked_rows else 1
    gids = group_ids_from_uids(np.array([store.rows[k]["uid"] for k in keys], dtype=object))
    step = trainer.castrl_step if step is None else step
    settings = trainer.castrl
    return compute_advantages(
        settings.estimator, rewards, gids, student, teacher, mask, settings.estimator_config, step
    )


def _stored_advantages(store, keys) -> torch.Tensor:
    got = torch.nested.as_nested_tensor([store.rows[k]["advantages"] for k in keys], layout=torch.jagged)
    return got.to_padded_tensor(0.0)


def _patch_tq(monkeypatch, store):
    import transfer_queue as tq

    monkeypatch.setattr(tq, "kv_batch_get", store.kv_batch_get)
    monkeypatch.setattr(tq, "kv_batch_put", store.kv_batch_put)


def test_trainer_hook_scores_the_teacher_and_writes_castrl_advantages(
    verl_prompt_rows, tokenizer, monkeypatch
):
    trainer, store, workers = _trainer(verl_prompt_rows, tokenizer)
    _patch_tq(monkeypatch, store)
    keys = list(store.rows)
    metrics: dict = {}
    trainer._compute_advantage(_meta(keys), metrics)

    assert trainer.castrl.teacher_context == "answer_free" and trainer.castrl_step == 2  # global_steps 3
    assert workers.flags and all(flag == ("actor", False, 0.7) for flag in workers.flags)
    expected, stats = _expected_hook_advantages(trainer, store, keys, workers.model, tokenizer, "answer_free")
    torch.testing.assert_close(_stored_advantages(store, keys), expected, atol=2e-5, rtol=1e-4)
    assert metrics["cast/frac_mixed"] == pytest.approx(stats["cast/frac_mixed"])
    assert metrics["cast/teacher_truncated_count"] == 0 and metrics["cast/time_teacher_s"] >= 0
    assert not math.isnan(metrics["cast/gap_abs_p95"])
    assert "cast/teacher_peer_frac" not in metrics


def test_trainer_hook_passes_completed_steps_to_the_schedules(verl_prompt_rows, tokenizer, monkeypatch):
    """verl's global_steps counts from 1; castrl's step is the number of completed steps (TRL's)."""
    trainer, store, workers = _trainer(verl_prompt_rows, tokenizer, ("castrl.cast.shaping_cutoff_step=2",))
    _patch_tq(monkeypatch, store)
    keys = list(store.rows)
    results = {}
    for global_steps in (2, 3):  # castrl steps 1 (shaping on) and 2 (cut off)
        trainer.global_steps = global_steps
        trainer._compute_advantage(_meta(keys), {})
        results[global_steps] = _stored_advantages(store, keys)
        expected, _ = _expected_hook_advantages(
            trainer, store, keys, workers.model, tokenizer, "answer_free", step=global_steps - 1
        )
        torch.testing.assert_close(results[global_steps], expected, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(results[2], results[3])


def test_trainer_hook_rlrt_reads_a_successful_peer(verl_prompt_rows, tokenizer, monkeypatch):
    """with_peer_success: rm_scores and uids pick each row's peer before the teacher pass."""
    overrides = (
        "algorithm.adv_estimator=castrl_rlrt",
        "castrl.teacher_context=with_peer_success",
        "castrl.teacher_max_prompt_length=2048",
    )
    trainer, store, workers = _trainer(verl_prompt_rows, tokenizer, overrides)
    _patch_tq(monkeypatch, store)
    keys = list(store.rows)
    metrics: dict = {}
    trainer._compute_advantage(_meta(keys), metrics)

    uids = np.array([store.rows[k]["uid"] for k in keys], dtype=object)
    scores = torch.stack([store.rows[k]["rm_scores"].sum() for k in keys])
    lengths = torch.tensor([len(store.rows[k]["responses"]) for k in keys])
    chosen = choose_peers(uids, scores, lengths, 0.5, trainer.castrl_step)
    peers = [
        None
        if j < 0
        else tokenizer.decode(store.rows[keys[j]]["responses"].tolist(), skip_special_tokens=True)
        for j in chosen.tolist()
    ]
    assert any(p is not None for p in peers) and any(p is None for p in peers)
    assert metrics["cast/teacher_peer_frac"] == pytest.approx(sum(p is not None for p in peers) / len(keys))
    expected, _ = _expected_hook_advantages(
        trainer, store, keys, workers.model, tokenizer, "with_peer_success", peers
    )
    torch.testing.assert_close(_stored_advantages(store, keys), expected, atol=2e-5, rtol=1e-4)
    wrong = scores < 0.5  # RLRT reshapes correct rollouts only; wrong ones keep the GRPO advantage
    got = _stored_advantages(store, keys)
    for i in wrong.nonzero().flatten().tolist():
        n = lengths[i]
        assert torch.allclose(got[i, :n], got[i, :1].expand(n))


def test_trainer_hook_refresh_1_scores_with_the_actor(verl_prompt_rows, tokenizer, monkeypatch):
    trainer, store, workers = _trainer(verl_prompt_rows, tokenizer, ("castrl.teacher_weights=refresh:1",))
    _patch_tq(monkeypatch, store)
    trainer._compute_advantage(_meta(list(store.rows)), {})
    assert workers.flags == [("actor", False, 0.7)]


def test_trainer_refuses_a_megatron_snapshot_teacher_before_any_worker_starts(verl_prompt_rows, tokenizer):
    pytest.importorskip("transfer_queue")
    from castrl.integrations.verl import trainer as trainer_module

    overrides = ("castrl.teacher_weights=refresh:10", "actor_rollout_ref.actor.strategy=megatron")
    with pytest.raises(ValueError, match="refresh:10'.*strategy='megatron'.*fsdp or fsdp2"):
        trainer_module.CastrlPPOTrainerSync(_compose(*overrides))


def test_trainer_hook_frozen_teacher_uses_the_reference_model(verl_prompt_rows, tokenizer, monkeypatch):
    overrides = ("castrl.teacher_weights=frozen", "actor_rollout_ref.actor.use_kl_loss=true")
    trainer, store, workers = _trainer(verl_prompt_rows, tokenizer, overrides)
    _patch_tq(monkeypatch, store)
    meta = _meta(list(store.rows))
    trainer._compute_advantage(meta, {})
    assert workers.flags[0] == ("ref",)
    workers.flags.clear()
    trainer.ref_in_actor = True  # LoRA: the base model is the frozen teacher
    trainer._compute_advantage(meta, {})
    assert workers.flags == [("actor", True, 0.7)]


def test_castrl_sync_runs_as_verls_sync_mode(verl_prompt_rows, tokenizer):
    """verl branches on trainer_mode == "sync"; the castrl trainer must take the sync branches."""
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    trainer, _, _ = _trainer(verl_prompt_rows, tokenizer)
    assert trainer.trainer_mode == "sync" and type(trainer.replay_buffer) is ReplayBuffer
    assert trainer.castrl.estimator == "cast"


# -- truncated completions (spec §4): masked from the loss, rewards kept in the groups -------------


def test_truncated_rows_need_the_full_budget_and_no_end_token():
    from castrl.integrations.verl.truncation import truncated_rows

    lengths = torch.tensor([8, 8, 5, 0, 9])
    last = torch.tensor([7, 2, 7, -1, 7])  # 2 = an end token
    got = truncated_rows(lengths, last, max_length=8, end_token_ids={2})
    assert got.tolist() == [True, False, False, False, True]
    assert truncated_rows(lengths, last, 8, set()).tolist() == [True, True, False, False, True]
    with pytest.raises(ValueError, match="max_length"):
        truncated_rows(lengths, last, 0, {2})
    with pytest.raises(ValueError, match=r"\(B,\)"):
        truncated_rows(lengths, last[:2], 8, {2})


def test_mask_rows_keeps_lengths_and_other_rows():
    from castrl.integrations.verl.truncation import last_tokens_of, mask_rows

    rows = [torch.tensor([5, 6, 7]), torch.tensor([], dtype=torch.long), torch.tensor([8, 2])]
    responses = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
    assert last_tokens_of(responses).tolist() == [7, -1, 2]
    mask = torch.nested.as_nested_tensor([torch.ones(len(r), dtype=torch.long) for r in rows], layout=torch.jagged)
    masked = mask_rows(mask, torch.tensor([True, False, False]))
    assert masked.offsets().tolist() == mask.offsets().tolist()
    assert [m.tolist() for m in masked.unbind()] == [[0, 0, 0], [], [1, 1]]
    with pytest.raises(ValueError, match="rows must be"):
        mask_rows(mask, torch.tensor([True]))


def test_truncation_helpers_take_transfer_queues_plain_tensors():
    """TransferQueue returns a plain (B, T) tensor when every row has the same length."""
    from castrl.integrations.verl.truncation import last_tokens_of, mask_rows

    responses = torch.tensor([[5, 6, 7], [8, 9, 2]])
    assert last_tokens_of(responses).tolist() == [7, 2]
    masked = mask_rows(torch.ones(2, 3, dtype=torch.long), torch.tensor([False, True]))
    assert not masked.is_nested and masked.tolist() == [[1, 1, 1], [0, 0, 0]]


def _truncate_some(store, budget: int, eos: int) -> list[int]:
    """Make every other stored row a full-budget completion without an end token; their indices."""
    chosen = []
    for i, key in enumerate(store.rows):
        if i % 2:
            continue
        row = store.rows[key]
        tokens = torch.full((budget,), 5 if eos != 5 else 6, dtype=row["responses"].dtype)
        row.update(
            responses=tokens,
            response_mask=torch.ones(budget, dtype=torch.long),
            rm_scores=torch.cat([torch.zeros(budget - 1), row["rm_scores"][-1:]]),
            old_log_probs=torch.full((budget,), -4.5),
        )
        chosen.append(i)
    return chosen


@pytest.mark.parametrize("estimator", ["cast", "castrl_grpo"])
def test_trainer_hook_masks_truncated_completions_from_advantages_and_loss(
    verl_prompt_rows, tokenizer, monkeypatch, estimator
):
    budget = 8
    overrides = (f"algorithm.adv_estimator={estimator}", f"data.max_response_length={budget}")
    trainer, store, workers = _trainer(verl_prompt_rows, tokenizer, overrides)
    assert int(trainer.config.actor_rollout_ref.rollout.response_length) == budget
    _patch_tq(monkeypatch, store)
    keys = list(store.rows)
    chosen = _truncate_some(store, budget, tokenizer.eos_token_id)
    ended = keys[1]  # a full-budget row that ends on the end token is a finished completion
    store.rows[ended]["responses"] = torch.cat(
        [torch.full((budget - 1,), 5), torch.tensor([tokenizer.eos_token_id])]
    )
    store.rows[ended]["response_mask"] = torch.ones(budget, dtype=torch.long)
    store.rows[ended]["rm_scores"] = torch.zeros(budget)
    store.rows[ended]["old_log_probs"] = torch.full((budget,), -4.0)
    rows = [store.rows[k]["responses"] for k in keys]  # some random rows fill the budget too
    truncated = [i for i, r in enumerate(rows) if len(r) == budget and int(r[-1]) != tokenizer.eos_token_id]
    assert set(chosen) <= set(truncated) and 1 not in truncated and len(truncated) < len(keys)
    metrics: dict = {}
    trainer._compute_advantage(_meta(keys), metrics)

    for i, key in enumerate(keys):  # verl's actor loss reads this mask
        assert bool(store.rows[key]["response_mask"].any()) == (i not in truncated), key
        assert len(store.rows[key]["response_mask"]) == len(store.rows[key]["responses"])
    assert metrics["cast/frac_truncated"] == pytest.approx(len(truncated) / len(keys))
    got = _stored_advantages(store, keys)
    assert got[truncated].abs().sum() == 0
    context = "answer_free"
    expected, _ = _expected_hook_advantages(
        trainer, store, keys, workers.model, tokenizer, context, masked_rows=set(truncated)
    )
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    # their rewards count: leaving the truncated rows out of the groups would change the others' advantages
    kept = [key for i, key in enumerate(keys) if i not in truncated]
    dropped, _ = _expected_hook_advantages(trainer, store, kept, workers.model, tokenizer, context)
    width = dropped.shape[1]
    assert not torch.allclose(got[[i for i in range(len(keys)) if i not in truncated], :width], dropped, atol=1e-4)


def test_trainer_hook_leaves_truncated_rows_in_the_loss_when_asked(verl_prompt_rows, tokenizer, monkeypatch):
    budget = 8
    overrides = (f"data.max_response_length={budget}", "castrl.mask_truncated_completions=false")
    trainer, store, workers = _trainer(verl_prompt_rows, tokenizer, overrides)
    _patch_tq(monkeypatch, store)
    keys = list(store.rows)
    truncated = _truncate_some(store, budget, tokenizer.eos_token_id)
    metrics: dict = {}
    trainer._compute_advantage(_meta(keys), metrics)
    assert all(bool(store.rows[k]["response_mask"].all()) for k in keys)
    assert "cast/frac_truncated" not in metrics
    got = _stored_advantages(store, keys)
    expected, _ = _expected_hook_advantages(trainer, store, keys, workers.model, tokenizer, "answer_free")
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    assert got[truncated].abs().sum() > 0


def test_truncation_masking_needs_the_castrl_trainer():
    config = _compose("algorithm.adv_estimator=castrl_grpo", "trainer.v1.trainer_mode=sync")
    with pytest.raises(ValueError, match="mask_truncated_completions=false"):
        check_verl_config(config)
    plain = _compose(
        "algorithm.adv_estimator=castrl_grpo", "trainer.v1.trainer_mode=sync", "castrl.mask_truncated_completions=false"
    )
    assert check_verl_config(plain).estimator == "grpo"
