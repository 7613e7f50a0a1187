"""Where the teacher's `[Student response]` tag goes (`teacher_tag_placement`): three readings of the
paper's x ∥ tag that differ once a prompt has a few-shot turn."""

from __future__ import annotations

import pytest

from castrl.diagnostics import DiagnoseSettings
from castrl.teacher import (
    ASSISTANT_PREFIX,
    STUDENT_RESPONSE_TAG,
    TeacherConfig,
    build_teacher_prompt,
    teacher_prompt_batch,
    teacher_prompt_ids,
)
from castrl.testing import build_char_tokenizer

ONE_SHOT = {
    "prompt": [
        {"role": "user", "content": "What is 4 + 3?"},
        {"role": "assistant", "content": "4 + 3 = 7. \\boxed{7}"},
        {"role": "user", "content": "What is 2 + 2?"},
    ],
    "answer": "4",
}


def _render(tokenizer, prompts):
    return [tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
            for p in prompts]


def test_last_user_is_the_default_and_tags_the_problem_turn_only():
    assert TeacherConfig().tag_placement == "last_user"
    prompt = build_teacher_prompt(ONE_SHOT, "answer_free")
    assert prompt == build_teacher_prompt(ONE_SHOT, "answer_free", placement="last_user")
    assert prompt[0]["content"] == "What is 4 + 3?"
    assert prompt[2]["content"] == "What is 2 + 2?" + STUDENT_RESPONSE_TAG


def test_every_user_tags_the_few_shot_turn_too():
    prompt = build_teacher_prompt(ONE_SHOT, "with_reference", placement="every_user")
    assert prompt[0]["content"] == "What is 4 + 3?" + STUDENT_RESPONSE_TAG
    assert prompt[1] == ONE_SHOT["prompt"][1]
    assert prompt[2]["content"] == "What is 2 + 2?\n\n[Reference solution]\n4" + STUDENT_RESPONSE_TAG


def test_assistant_prefix_opens_the_assistant_turn_with_the_tag():
    tok = build_char_tokenizer()
    messages = build_teacher_prompt(ONE_SHOT, "answer_free", placement="assistant_prefix")
    assert messages[2]["content"] == "What is 2 + 2?"  # the tag left the user turn
    encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = teacher_prompt_ids([ONE_SHOT], "answer_free", lambda p: _render(tok, p),
                             placement="assistant_prefix", encode_text=encode)[0]
    text = tok.decode(ids)
    assert text.endswith("What is 2 + 2?<|im_end|>\n<|im_start|>assistant\n[Student response]\n")
    assert ASSISTANT_PREFIX == "[Student response]\n"
    # the three placements give three different prompts for a one-shot chat
    rendered = {p: tok.decode(teacher_prompt_batch([ONE_SHOT], "answer_free", lambda x: _render(tok, x), 10_000,
                                                   tok.pad_token_id, placement=p, encode_text=encode)[0][0])
                for p in ("last_user", "every_user", "assistant_prefix")}
    assert len(set(rendered.values())) == 3
    with pytest.raises(ValueError, match="encode_text"):
        teacher_prompt_ids([ONE_SHOT], "answer_free", lambda p: _render(tok, p), placement="assistant_prefix")


def test_plain_text_prompts_have_one_place():
    example = {"prompt": "Q: 2 + 2\nA:"}
    texts = {build_teacher_prompt(example, "answer_free", placement=p)
             for p in ("last_user", "every_user", "assistant_prefix")}
    assert texts == {"Q: 2 + 2\nA:" + STUDENT_RESPONSE_TAG}


def test_bad_placements_are_rejected():
    with pytest.raises(ValueError, match="teacher_tag_placement must be one of"):
        TeacherConfig(tag_placement="system")
    with pytest.raises(ValueError, match="does not end with it"):
        TeacherConfig(context="self_teach", tag_placement="every_user")


def test_diagnose_scores_context_at_placement_entries():
    settings = DiagnoseSettings(teachers=["answer_free", "answer_free@every_user", "answer_free@assistant_prefix"])
    assert settings.teacher_config("answer_free@every_user").tag_placement == "every_user"
    assert settings.teacher_config("answer_free").tag_placement == "last_user"
    assert DiagnoseSettings(teacher_tag_placement="every_user").teacher_config("answer_free").tag_placement == (
        "every_user")
    with pytest.raises(ValueError, match="teacher_tag_placement must be one of"):
        DiagnoseSettings(teachers=["answer_free@nowhere"])
    with pytest.raises(ValueError, match="unknown teacher context"):
        DiagnoseSettings(teachers=["nothing@every_user"])
    assert DiagnoseSettings(gap_control="shuffle").cast_config().gap_control == "shuffle"
