"""The gap's noise floor (`castrl.diagnostics.noise`): re-scored gaps, their |Δg| quantiles, the share of
CAST's flips below them, and the verdict clause. Each check is fed a case where it must fire and one
where it must not."""

from __future__ import annotations

import math

import pytest
import torch

from castrl.core import CastConfig
from castrl.diagnostics import DiagnoseSettings, run_diagnostics
from castrl.diagnostics.noise import (
    VARIANTS,
    noise_floor,
    noise_warning,
    score_variant,
    teacher_noise_floor,
    variants_for,
)
from castrl.rollouts import completion_logps
from castrl.testing import build_char_tokenizer, build_tiny_model


def _handmade():
    """4 rows x 5 tokens; flips on row 0 (B > 0, g < 0): two tiny gaps and one large."""
    gap = torch.tensor([[-1e-4, -2e-4, -0.5, 0.3, 0.2],
                        [0.1, 0.2, 0.3, 0.4, 0.5],
                        [-0.1, -0.2, 0.0, 0.0, 0.0],
                        [0.7, -0.7, 0.1, -0.1, 0.2]])  # fmt: skip
    mask = torch.ones_like(gap)
    flipped = torch.zeros_like(gap, dtype=torch.bool)
    flipped[0, :3] = True
    adv = torch.sign(gap)  # CAST's sign(A) = sign(g) with the paper's defaults
    return gap, adv, mask, flipped


def test_noise_floor_quantiles_and_the_share_of_flips_below():
    gap, adv, mask, flipped = _handmade()
    delta = torch.full_like(gap, 1e-3)
    delta[3] = 0.0
    floor = noise_floor(gap, adv, mask, flipped, {"batch_split": (gap + delta, torch.sign(gap + delta))})
    v = floor["variants"]["batch_split"]
    assert v["abs_delta_p95"] == pytest.approx(1e-3, rel=1e-4)
    assert v["abs_delta_p50"] == pytest.approx(1e-3, rel=1e-4)
    assert v["frac_flips_below_p95"] == pytest.approx(2 / 3)  # the two tiny gaps, not -0.5
    # adding 1e-3 turns both tiny negative gaps and the three zeros of row 2 positive: 5 of 20 tokens
    assert v["frac_sign_changed"] == pytest.approx(5 / 20)
    assert floor["pooled"]["fp32"]["abs_delta_p95"] == pytest.approx(1e-3, rel=1e-4)
    assert "bf16" not in floor["pooled"]
    warning = noise_warning(floor)
    assert warning is not None and "67% of CAST's flips" in warning and "--flip_margin 0.001" in warning


def test_no_noise_means_no_flip_below_it_and_no_warning():
    gap, adv, mask, flipped = _handmade()
    floor = noise_floor(gap, adv, mask, flipped, {"batch_split": (gap.clone(), adv.clone())})
    assert floor["variants"]["batch_split"]["abs_delta_p95"] == 0.0
    assert floor["variants"]["batch_split"]["frac_flips_below_p95"] == 0.0
    assert floor["variants"]["batch_split"]["frac_sign_changed"] == 0.0
    assert noise_warning(floor) is None


def test_pooling_by_precision():
    gap, adv, mask, flipped = _handmade()
    small, large = gap + 1e-5, gap + 1e-2
    floor = noise_floor(gap, adv, mask, flipped, {"prompt_cache": (small, torch.sign(small)),
                                                  "bf16": (large, torch.sign(large))})
    assert floor["pooled"]["fp32"]["abs_delta_p95"] == pytest.approx(1e-5, rel=1e-2)
    assert floor["pooled"]["bf16"]["abs_delta_p95"] == pytest.approx(1e-2, rel=1e-3)
    assert floor["pooled"]["bf16"]["frac_flips_below_p95"] == pytest.approx(2 / 3)
    assert floor["pooled"]["fp32"]["frac_flips_below_p95"] == 0.0  # 1e-5 < 1e-4: no flip lies below it
    assert noise_warning(floor) is None  # the warning reads the fp32 share


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    return build_tiny_model(tokenizer), tokenizer


def _rows_and_tokens(tokenizer, n=6, t=7):
    gen = torch.Generator().manual_seed(1)
    prompts = [tokenizer(f"Q: {i} + {2 * i} =", add_special_tokens=False)["input_ids"] for i in range(n)]
    prompts = [prompts[i // 2] for i in range(n)]  # pairs share a prompt, as a group's rollouts do
    ids = torch.randint(3, 60, (n, t), generator=gen)
    mask = torch.ones(n, t)
    mask[0, 5:] = 0
    return prompts, ids, mask


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_rescores_the_same_tokens(tiny, variant):
    model, tokenizer = tiny
    rows, ids, mask = _rows_and_tokens(tokenizer)
    ref = completion_logps(model, rows, ids, mask, temperature=0.7, pad_id=tokenizer.pad_token_id, batch_size=4,
                           progress=False)
    out = score_variant(variant, model, rows, ids, mask, temperature=0.7, pad_id=tokenizer.pad_token_id,
                        batch_size=4)
    assert out.shape == ref.shape and torch.equal(out[mask == 0], torch.zeros_like(out[mask == 0]))
    tolerance = 0.1 if variant == "bf16" else 1e-4
    torch.testing.assert_close(out, ref, atol=tolerance, rtol=0)
    if variant == "bf16":
        assert not torch.equal(out, ref)  # a real re-scoring, not the reference handed back
    assert not model.training


def test_teacher_noise_floor_uses_the_cores_flip_rule():
    gen = torch.Generator().manual_seed(3)
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1])  # all-correct and all-wrong: every disagreeing token flips
    student = -torch.rand(4, 6, generator=gen)
    teacher = student + 1e-4 * torch.randn(4, 6, generator=gen)
    mask = torch.ones(4, 6)
    noisy = teacher + 1e-3 * torch.randn(4, 6, generator=gen)
    floor = teacher_noise_floor(rewards, groups, student, teacher, mask, CastConfig(), {"bf16": (student, noisy)})
    entry = floor["variants"]["bf16"]
    assert entry["n_flips"] > 0 and entry["frac_flips_below_p95"] == 1.0  # every |g| ~ 1e-4 is below 1e-3
    assert entry["frac_sign_changed"] > 0.2


def test_diagnose_reports_the_noise_floor_per_teacher(tiny):
    model, tokenizer = tiny
    settings = DiagnoseSettings(n_prompts=2, group_size=4, max_new_tokens=8, temperature=0.9, prompt_style="plain",
                                teachers=["answer_free", "with_reference"], progress=False, threads=0,
                                gen_batch_size=8, score_batch_size=8, mask_truncated_completions=False)
    run = run_diagnostics(settings, model=model, tokenizer=tokenizer,
                          reward_fn=lambda texts, golds: [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    expected = variants_for("cpu")
    for name in settings.teachers:
        floor = run.results["teachers"][name]["noise_floor"]
        assert set(floor["variants"]) == set(expected)
        assert set(floor["pooled"]) == ({"fp32", "bf16", "all"} if "bf16" in expected else {"fp32", "all"})
        assert math.isfinite(floor["pooled"]["all"]["abs_delta_p95"])
    assert run.results["groups"].get("noise_variants_skipped", []) == [v for v in VARIANTS if v not in expected]
    assert "noise_floor_s" in run.timings
    quiet = run_diagnostics(DiagnoseSettings(**{**settings.__dict__, "noise_floor": False}), model=model,
                            tokenizer=tokenizer, reward_fn=lambda texts, golds: [1.0, 0.0] * 4)
    assert "noise_floor" not in quiet.results["teachers"]["answer_free"]


def test_noise_variants_flag():
    assert DiagnoseSettings().noise_variant_list() is None
    assert DiagnoseSettings(noise_variants="bf16, prompt_cache").noise_variant_list() == ["bf16", "prompt_cache"]
    with pytest.raises(ValueError, match="--noise_variants must be auto or some of"):
        DiagnoseSettings(noise_variants="fp8")
    # bf16 where it is native only: emulated bf16 costs several fp32 passes and nobody trains in it there
    assert set(variants_for("cpu")) >= {"batch_split", "prompt_cache", "grad_forward"}
    assert variants_for("meta") == ("batch_split", "prompt_cache", "grad_forward")
