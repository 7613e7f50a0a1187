"""Bad inputs raise ValueError/TypeError naming the argument; the policy loss and the registry.

Loss aggregations and clip fractions are checked against numbers worked out by hand here.
"""

from __future__ import annotations

import math

import pytest
import torch

from castrl.core import (
    ADVANTAGE_ESTIMATORS,
    CastConfig,
    GRPOAdvConfig,
    GRPOOPSDConfig,
    LossConfig,
    RLRTConfig,
    RLSDConfig,
    aggregate,
    cast_advantages,
    clipped_surrogate_loss,
    compute_advantages,
    get_estimator,
    k3_kl,
)
from castrl.core.registry import Registry


def _ok(B: int = 4, T: int = 3) -> dict[str, torch.Tensor]:
    return {
        "rewards": torch.tensor([1.0, 0.0, 1.0, 1.0])[:B],
        "group_ids": torch.tensor([0, 0, 1, 1])[:B],
        "student_logps": torch.full((B, T), -1.0),
        "teacher_logps": torch.full((B, T), -0.9),
        "mask": torch.ones(B, T, dtype=torch.bool),
    }


def _call(name: str = "cast", config=None, **override):
    kw = {**_ok(), **override}
    return compute_advantages(
        name, kw["rewards"], kw["group_ids"], kw["student_logps"], kw["teacher_logps"], kw["mask"], config
    )


@pytest.mark.parametrize(
    ("override", "exc", "words"),
    [
        ({"rewards": torch.ones(4, 1)}, ValueError, ["rewards", "1 dimension"]),
        ({"group_ids": torch.zeros(4, 1, dtype=torch.long)}, ValueError, ["group_ids", "dimension"]),
        ({"student_logps": torch.zeros(4)}, ValueError, ["student_logps", "2 dimension"]),
        ({"teacher_logps": torch.zeros(4, 3, 1)}, ValueError, ["teacher_logps", "2 dimension"]),
        ({"mask": torch.ones(4, dtype=torch.bool)}, ValueError, ["mask", "2 dimension"]),
        ({"rewards": torch.ones(5)}, ValueError, ["batch size mismatch", "rewards has 5"]),
        ({"group_ids": torch.zeros(3, dtype=torch.long)}, ValueError, ["batch size mismatch", "group_ids 3"]),
        ({"teacher_logps": torch.zeros(4, 2)}, ValueError, ["teacher_logps", "(4, 3)", "(4, 2)"]),
        ({"teacher_logps": torch.zeros(3, 3)}, ValueError, ["teacher_logps", "(3, 3)"]),
        ({"mask": torch.ones(4, 2)}, ValueError, ["mask", "(4, 2)"]),
        ({"mask": torch.ones(4, 3, dtype=torch.long)}, ValueError, ["mask", "int64"]),
        ({"mask": torch.ones(4, 3, dtype=torch.int32)}, ValueError, ["mask", "int32"]),
        ({"rewards": torch.tensor([1.0, math.nan, 0.0, 1.0])}, ValueError, ["rewards", "finite", "[1]"]),
        ({"rewards": torch.tensor([1.0, 0.0, math.inf, 1.0])}, ValueError, ["rewards", "finite", "[2]"]),
        ({"rewards": torch.tensor([1, 0, 1, 1])}, ValueError, ["rewards", "float"]),
        ({"group_ids": torch.zeros(4)}, ValueError, ["group_ids", "integer"]),
        ({"student_logps": torch.zeros(4, 3, dtype=torch.long)}, ValueError, ["student_logps", "float"]),
        ({"rewards": [1.0, 0.0, 1.0, 1.0]}, TypeError, ["rewards", "torch.Tensor", "list"]),
        ({"mask": None}, TypeError, ["mask", "NoneType"]),
    ],
)
def test_bad_inputs_name_the_argument(override, exc, words):
    for name in ("cast", "grpo"):
        with pytest.raises(exc) as info:
            _call(name, **override)
        for word in words:
            assert word in str(info.value), (name, str(info.value))


def test_unknown_estimator_lists_registered_names():
    with pytest.raises(ValueError) as info:
        _call("gpro")
    message = str(info.value)
    assert "'gpro'" in message
    for name in ("cast", "dr_grpo", "grpo", "opsd", "rlrt", "rlsd"):
        assert name in message
    with pytest.raises(ValueError, match="registered: "):
        get_estimator("")


@pytest.mark.parametrize("name", ["cast", "rlsd", "rlrt", "opsd"])
def test_teacher_needed(name):
    with pytest.raises(ValueError, match=rf"{name}.*needs teacher_logps"):
        _call(name, teacher_logps=None)


def test_cast_entry_point_without_teacher():
    kw = _ok()
    with pytest.raises(ValueError, match="teacher_logps"):
        cast_advantages(kw["rewards"], kw["group_ids"], kw["student_logps"], None, kw["mask"])


@pytest.mark.parametrize(
    ("name", "config", "wanted"),
    [
        ("cast", GRPOAdvConfig(), "CastConfig"),
        ("grpo", CastConfig(), "GRPOAdvConfig"),
        ("rlsd", CastConfig(), "RLSDConfig"),
        ("cast", {"lam": 1.0}, "CastConfig"),
    ],
)
def test_wrong_config_type(name, config, wanted):
    with pytest.raises(TypeError, match=wanted):
        _call(name, config=config)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"band_pos": (1.05, 0.8)}, ["band_pos", "lo <= 1 <= hi"]),  # lo > hi
        ({"band_neg": (1.2, 0.95)}, ["band_neg", "lo"]),
        ({"band_pos": (0.0, 1.05)}, ["band_pos"]),
        ({"band_neg": (0.95,)}, ["band_neg", "(lo, hi) pair"]),
        ({"lam": 5.0}, ["lam=5.0", "band_pos", "flip the sign"]),  # 1 + 5 (0.8 - 1) = 0
        ({"lam": -0.1}, ["lam", ">= 0"]),
        ({"adv_clip": math.nan}, ["adv_clip"]),
        ({"flip_margin": -1.0}, ["flip_margin", ">= 0"]),
        ({"flip_margin": math.inf}, ["flip_margin"]),
        ({"mixed_scale": "mad"}, ["mixed_scale", "'mad'"]),
        ({"shaping_cutoff_step": -1}, ["shaping_cutoff_step", "integer >= 0"]),
        ({"shaping_cutoff_step": 2.5}, ["shaping_cutoff_step", "2.5"]),
        ({"std_eps": -1e-4}, ["std_eps"]),
        ({"gap_clip": math.inf}, ["gap_clip"]),
    ],
)
def test_bad_cast_config(kwargs, words):
    with pytest.raises(ValueError) as info:
        CastConfig(**kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "kwargs", [{"lam": "1.0"}, {"flip_margin": None}, {"b_wrong": [0.5]}, {"flip_correct": "yes"}, {"flip": 1}]
)
def test_non_numeric_cast_config_field_is_named(kwargs):
    (field,) = kwargs
    with pytest.raises(TypeError, match=field):
        CastConfig(**kwargs)


def test_bad_rlsd_config():
    with pytest.raises(ValueError, match="rlsd_band"):
        RLSDConfig(rlsd_band=(1.2, 0.8))
    with pytest.raises(ValueError, match="rlsd_anneal_steps"):
        RLSDConfig(rlsd_anneal_steps=-1)


@pytest.mark.parametrize(
    ("config_cls", "kwargs", "field"),
    [
        (RLRTConfig, {"rlrt_eps_w": 1.5}, "rlrt_eps_w"),
        (RLRTConfig, {"rlrt_lam": -0.5}, "rlrt_lam"),
        (RLRTConfig, {"rlrt_lam": 2.0}, "rlrt_lam"),
        (GRPOOPSDConfig, {"opsd_coef_start": -1.0}, "opsd_coef_start"),
        (GRPOOPSDConfig, {"opsd_anneal_steps": -3}, "opsd_anneal_steps"),
    ],
)
def test_bad_baseline_configs(config_cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        config_cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_rejects_duplicates_and_lists_names():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.add("a", 2)
    assert reg.get("a") == 1 and "a" in reg and reg.names() == ["a"]
    with pytest.raises(ValueError, match="unknown widget 'b'; registered: a"):
        reg.get("b")


def test_global_registry_rejects_duplicates():
    spec = ADVANTAGE_ESTIMATORS.get("grpo")
    with pytest.raises(ValueError, match="already registered"):
        ADVANTAGE_ESTIMATORS.add("grpo", spec)


def test_decorated_rule_stays_callable_as_written():
    """@register_advantage returns the token rule itself; the validated estimator is in the registry."""
    from castrl.core.advantages import cast_tokens
    from castrl.core.inputs import prepare_batch

    rewards, ids, logps, mask = torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.zeros(2, 3), torch.ones(2, 3)
    cfg = CastConfig()
    batch = prepare_batch(rewards, ids, logps, logps + 0.1, mask, cfg, True, "cast")
    adv, stats = cast_tokens(batch, torch.tensor([1.0, -1.0]), cfg, 0)
    assert adv.shape == (2, 3) and "cast/frac_flipped" in stats


# ---------------------------------------------------------------------------------------------
# Policy loss

VALUES = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    ("agg", "norm_length", "expected"),
    [
        ("token-mean", None, (1 + 2 + 3 + 10) / 4),  # DAPO: all real tokens of the batch
        ("seq-mean-token-mean", None, ((1 + 2 + 3) / 3 + 10 / 1) / 2),  # per sequence, then mean
        ("seq-mean-token-sum-norm", None, ((1 + 2 + 3) / 4 + 10 / 4) / 2),  # Dr. GRPO: / T
        ("seq-mean-token-sum-norm", 8, ((1 + 2 + 3) / 8 + 10 / 8) / 2),  # / a constant length
    ],
)
def test_aggregation_by_hand(agg, norm_length, expected):
    assert aggregate(VALUES, MASK, agg, norm_length).item() == pytest.approx(expected)
    assert aggregate(VALUES, MASK.float(), agg, norm_length).item() == pytest.approx(expected)


def test_aggregation_unknown_mode():
    with pytest.raises(ValueError, match="token-sum.*token-mean"):
        aggregate(VALUES, MASK, "token-sum")
    with pytest.raises(ValueError, match="agg"):
        LossConfig(agg="token-sum")


def test_empty_mask_aggregates_to_zero_not_nan():
    zero = torch.zeros(2, 4, dtype=torch.bool)
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert aggregate(VALUES, zero, agg).item() == 0.0


def test_clipped_surrogate_by_hand_with_clip_fractions():
    # ratios exp(logp - old): 1.5 (A > 0: clipped high at 1.28), 0.5 (A < 0: clipped low at 0.8),
    # 1.5 (A < 0: unclipped, min picks 1.5 * A), 1.0 (A > 0), and a padded token
    old = torch.zeros(1, 5)
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.5, 1.0, 3.0]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, -2.0, 0.5, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    loss, metrics = clipped_surrogate_loss(logps, old, adv, mask, LossConfig())
    per_token = [
        -min(1.5 * 1.0, 1.28 * 1.0),
        -min(0.5 * -1.0, 0.8 * -1.0),
        -min(1.5 * -2.0, 1.28 * -2.0),
        -0.5,
    ]
    assert loss.item() == pytest.approx(sum(per_token) / 4, rel=1e-6)
    assert metrics["clip_ratio/high_mean"] == pytest.approx(1 / 4)
    assert metrics["clip_ratio/low_mean"] == pytest.approx(1 / 4)
    assert metrics["clip_ratio/region_mean"] == pytest.approx(2 / 4)
    assert "kl" not in metrics
    loss.backward()
    # gradient only through unclipped terms: d(-rho A)/d logp = -rho A; clipped and padded -> 0
    expected_grad = torch.tensor([[0.0, 0.0, -1.5 * -2.0, -1.0 * 0.5, 0.0]]) / 4
    torch.testing.assert_close(logps.grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_sequence_advantages_broadcast_and_gradient_flows():
    gen = torch.Generator().manual_seed(0)
    logps = (-torch.rand(3, 6, generator=gen)).requires_grad_(True)
    old = logps.detach() + 0.05 * torch.randn(3, 6, generator=gen)
    mask = torch.rand(3, 6, generator=gen) < 0.7
    seq_adv = torch.tensor([1.0, -0.5, 0.25])
    loss_seq, _ = clipped_surrogate_loss(logps, old, seq_adv, mask, LossConfig(agg="seq-mean-token-mean"))
    loss_tok, _ = clipped_surrogate_loss(
        logps, old, seq_adv[:, None].expand(3, 6), mask, LossConfig(agg="seq-mean-token-mean")
    )
    assert loss_seq.item() == pytest.approx(loss_tok.item())
    loss_seq.backward()
    assert logps.grad is not None and logps.grad[mask].abs().sum() > 0
    assert (logps.grad[~mask] == 0).all()


def test_k3_kl_nonnegative_zero_when_equal_and_in_the_loss():
    gen = torch.Generator().manual_seed(0)
    a, b = -3 * torch.rand(4, 7, generator=gen), -3 * torch.rand(4, 7, generator=gen)
    assert (k3_kl(a, b) >= 0).all()
    assert torch.equal(k3_kl(a, a), torch.zeros(4, 7))
    d = 0.3  # ref - logp = 0.3: e^0.3 - 0.3 - 1
    assert k3_kl(torch.zeros(1), torch.full((1,), d)).item() == pytest.approx(math.exp(d) - d - 1)
    logps = a.clone().requires_grad_(True)
    zero_adv, mask = torch.zeros(4, 7), torch.ones(4, 7)
    loss, metrics = clipped_surrogate_loss(logps, a, zero_adv, mask, LossConfig(beta=0.5), ref_logps=b)
    assert loss.item() == pytest.approx(0.5 * k3_kl(a, b).mean().item(), rel=1e-5)
    assert metrics["kl"] == pytest.approx(k3_kl(a, b).mean().item(), rel=1e-5)
    loss.backward()
    assert logps.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"logps": torch.zeros(2, 3, 1)}, ["(B, T)"]),
        ({"old_logps": torch.zeros(2, 4)}, ["old_logps", "(2, 4)"]),
        ({"mask": torch.ones(3, 3)}, ["mask", "(3, 3)"]),
        ({"advantages": torch.zeros(3)}, ["advantages", "(3,)"]),
        ({"advantages": torch.zeros(2, 2)}, ["advantages", "(2, 2)"]),
        ({"config": LossConfig(beta=0.1)}, ["beta > 0", "ref_logps"]),
    ],
)
def test_loss_bad_inputs(args, words):
    kw = {
        "logps": torch.zeros(2, 3),
        "old_logps": torch.zeros(2, 3),
        "advantages": torch.zeros(2, 3),
        "mask": torch.ones(2, 3),
        "config": LossConfig(),
        **args,
    }
    with pytest.raises(ValueError) as info:
        clipped_surrogate_loss(**kw)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"eps_low": -0.1}, "eps_low"),
        ({"eps_low": 1.0}, "eps_low"),
        ({"beta": -1.0}, "beta"),
        ({"norm_length": 0}, "norm_length"),
    ],
)
def test_bad_loss_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LossConfig(**kwargs)
