"""The `castrl:` section of a verl (Hydra/OmegaConf) config -> castrl settings.

The estimator is verl's own knob, `algorithm.adv_estimator` ("cast" or "castrl_<name>"); its
fields live in a sub-section named after the castrl estimator (`castrl.cast.flip_correct`,
`castrl.rlsd.rlsd_band`, `castrl.grpo_opsd.opsd_coef_start`, ...), so one YAML can hold every
ablation's knobs and a command-line override switches between them. Every sub-section present is
validated, the selected one is used. Errors name the full key (`castrl.cast.lam`) and the fix.
Field meanings: `castrl.core.config`.

Teacher weights on verl: `policy` (the actor's current weights, the default here), `frozen`
(verl's reference model = the initial weights), and the paper's `refresh:<K>` and `ema` (a
shard-local snapshot on the actor workers: `worker.py`, `teacher_snapshot.py`; FSDP / FSDP2 actors
only, other engines are refused here with the reason); `refresh:1` is `policy` under another name.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from castrl.config_fields import with_fields_of
from castrl.core import ADVANTAGE_ESTIMATORS, EstimatorConfig, get_estimator
from castrl.teacher import TeacherConfig, WeightsSpec, context_uses

SECTION = "castrl"
PREFIX = "castrl_"
# Short verl names for castrl estimators (`algorithm.adv_estimator=cast` is CAST); every estimator is also
# `castrl_<name>`. A table of names, so no code compares against an estimator's name.
VERL_ALIASES: dict[str, str] = {"cast": "cast"}
REWARD_KEYS = ("token_level_rewards", "token_level_scores")
# castrl's default is the paper's refresh:10; verl's stays `policy` until refresh:K has run on a GPU (docs/verl.md)
VERL_DEFAULT_TEACHER_WEIGHTS = "policy"
SNAPSHOT_STRATEGIES = ("fsdp", "fsdp2")  # actor engines whose parameters the teacher snapshot can swap


@dataclass(frozen=True)
@with_fields_of(TeacherConfig, prefix="teacher_")
class CastrlVerlConfig:
    """Everything the verl adapter needs besides verl's own config; the `teacher_*` fields are
    `castrl.teacher.TeacherConfig`'s (verl's default weights differ: see `teacher_weights`)."""

    estimator: str = field(
        default="cast", metadata={"help": "castrl registry name (from algorithm.adv_estimator)."}
    )
    estimator_config: EstimatorConfig | None = field(
        default=None, metadata={"help": "Config of `estimator`; None = its defaults."}
    )
    teacher_weights: str = field(
        default=VERL_DEFAULT_TEACHER_WEIGHTS,
        metadata={
            "help": "policy (the actor's current weights, default), frozen (verl's reference model = the initial "
            "weights), refresh:<K> (the paper's refresh:10: a shard-local snapshot of the actor re-taken every K "
            "optimizer steps, FSDP/FSDP2 actors) or ema; refresh:1 = policy. The default differs from the paper's "
            "until the GPU smoke check of refresh:K has run (docs/verl.md). [R]"
        },
    )
    reward_key: str = field(
        default="token_level_rewards",
        metadata={
            "help": "Per-token rewards summed into r_i: token_level_rewards (after verl's KL-in-reward, if on) "
            "or token_level_scores (the verifier's score alone)."
        },
    )
    problem_key: str = field(
        default="question",
        metadata={"help": "extra_info key holding the bare problem text ({problem}); missing -> the last user turn."},
    )
    solution_key: str = field(
        default="solution",
        metadata={"help": "extra_info key with a reference solution (with_solution only)."},
    )
    mask_truncated_completions: bool = field(
        default=True,
        metadata={
            "help": "Mask completions that reach actor_rollout_ref.rollout.response_length without an end token "
            "from the loss, for every estimator (the paper's §8.4, spec §4); their rewards still count in the "
            "group statistics. Needs trainer.v1.trainer_mode=castrl_sync (verl 0.9 has no such option). [P]"
        },
    )

    def __post_init__(self) -> None:
        if self.estimator_config is None:
            object.__setattr__(self, "estimator_config", get_estimator(self.estimator).config_cls())

    @property
    def needs_teacher(self) -> bool:
        return get_estimator(self.estimator).needs_teacher

    @property
    def needs_peers(self) -> bool:
        """Whether the teacher context reads a successful rollout of the row's group (`{peer}`)."""
        return self.needs_teacher and context_uses(self.teacher_context, "peer")

    @property
    def teacher_snapshot(self) -> bool:
        """True for `refresh:<K>` (K > 1) and `ema`: the actor workers keep a snapshot (`worker.py`)."""
        spec = WeightsSpec.parse(self.teacher_weights)
        return self.needs_teacher and self.teacher_model is None and spec.kind in ("refresh", "ema") and (
            not spec.always_policy()
        )

    @property
    def teacher_is_reference(self) -> bool:
        """True for `frozen` (verl's reference model); False = the actor's current weights."""
        return WeightsSpec.parse(self.teacher_weights).kind == "frozen"


def _verl_to_castrl() -> dict[str, str]:
    """Every `algorithm.adv_estimator` value castrl registers in verl -> its castrl registry name."""
    return {**VERL_ALIASES, **{PREFIX + name: name for name in ADVANTAGE_ESTIMATORS.names()}}


def castrl_name(adv_estimator: str) -> str | None:
    """castrl registry name for a verl `algorithm.adv_estimator`, or None if it is not castrl's."""
    return _verl_to_castrl().get(str(adv_estimator))


def verl_names() -> list[str]:
    """Every `algorithm.adv_estimator` value castrl registers in verl."""
    return list(_verl_to_castrl())


def _plain(section: Any, where: str) -> dict[str, Any]:
    """An OmegaConf DictConfig or any Mapping -> a plain dict (lists for ListConfig)."""
    if section is None:
        return {}
    if hasattr(section, "_get_node"):  # OmegaConf container: resolve interpolations
        from omegaconf import OmegaConf

        section = OmegaConf.to_container(section, resolve=True)
    if not isinstance(section, Mapping):
        raise TypeError(f"{where} must be a mapping, got {type(section).__name__}: {section!r}")
    return dict(section)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """`value` as the field's type `hint` (bool, int, float, str, Literal, a pair, `X | None`).

    TypeError naming `key` otherwise; ranges are the config class's to check.
    """
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        inner = [option for option in options if option is not type(None)]
        if len(inner) != 1:  # pragma: no cover - no config field has such a type
            raise TypeError(f"{key}: unsupported field type {hint!r}")
        if value is None and type(None) in options:
            return None
        try:
            return _coerce_value(inner[0], value, key)
        except TypeError:
            raise TypeError(f"{key} must be {_type_name(inner[0])} or null, got {value!r}") from None
    return _coerce_value(hint, value, key)


def _coerce_value(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        if isinstance(value, str):
            return value  # the config class names the allowed values in its error
        raise TypeError(f"{key} must be one of {list(typing.get_args(hint))}, got {value!r}")
    if origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
            return tuple(float(v) for v in value)
        raise TypeError(f"{key} must be a [lo, hi] pair of numbers, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{key} must be true or false, got {value!r}")
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and _is_number(value):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise TypeError(f"{key} must be {_type_name(hint)}, got {type(value).__name__} {value!r}")


def _type_name(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _estimator_config(name: str, section: dict[str, Any]) -> EstimatorConfig:
    """Build `name`'s config class from a sub-section, naming `castrl.<name>.<field>` in errors."""
    config_cls = get_estimator(name).config_cls
    hints = typing.get_type_hints(config_cls)
    known = {f.name for f in fields(config_cls) if f.default is not MISSING}
    kwargs: dict[str, Any] = {}
    for key, value in section.items():
        where = f"{SECTION}.{name}.{key}"
        if key not in known:
            raise ValueError(
                f"{where} is not a field of {config_cls.__name__}; valid: {', '.join(sorted(known))}"
            )
        kwargs[key] = _coerce(hints[key], value, where)
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{SECTION}.{name}: {err}") from None


_TOP_KEYS = {f.name for f in fields(CastrlVerlConfig)} - {"estimator", "estimator_config"}


def _top_level(top: dict[str, Any]) -> dict[str, Any]:
    defaults = {f.name: f.default for f in fields(CastrlVerlConfig)}
    hints = typing.get_type_hints(CastrlVerlConfig)
    values = {}
    for key in _TOP_KEYS:
        values[key] = _coerce(hints[key], top[key], f"{SECTION}.{key}") if key in top else defaults[key]
    if values["reward_key"] not in REWARD_KEYS:
        raise ValueError(f"{SECTION}.reward_key must be one of {REWARD_KEYS}, got {values['reward_key']!r}")
    return values


def parse_castrl_config(section: Any, adv_estimator: str) -> CastrlVerlConfig:
    """Validate the `castrl:` section (None = all defaults) for verl's `algorithm.adv_estimator`."""
    name = castrl_name(adv_estimator)
    if name is None:
        raise ValueError(
            f"algorithm.adv_estimator={adv_estimator!r} is not a castrl estimator; use one of {verl_names()}"
        )
    top = _plain(section, SECTION)
    sub_names = set(ADVANTAGE_ESTIMATORS.names())
    unknown = set(top) - _TOP_KEYS - sub_names
    if unknown:
        raise ValueError(
            f"unknown key(s) {sorted(f'{SECTION}.{k}' for k in unknown)}; valid: "
            f"{sorted(_TOP_KEYS)} and one sub-section per estimator {sorted(sub_names)}"
        )
    configs = {
        sub: _estimator_config(sub, _plain(top[sub], f"{SECTION}.{sub}")) for sub in sub_names & set(top)
    }
    values = _top_level(top)
    if get_estimator(name).needs_teacher:
        try:
            TeacherConfig(**{f.name: values["teacher_" + f.name] for f in fields(TeacherConfig)}).check_host("verl")
        except ValueError as err:
            raise ValueError(f"{SECTION}: {err}") from None
    return CastrlVerlConfig(estimator=name, estimator_config=configs.get(name), **values)


def check_verl_config(config: Any) -> CastrlVerlConfig:
    """Parse the castrl section of a full verl config and check the verl knobs CAST depends on."""
    algorithm = config["algorithm"]
    settings = parse_castrl_config(config.get(SECTION), algorithm["adv_estimator"])
    arr = config["actor_rollout_ref"]
    if int(arr["rollout"]["n"]) < 2:
        raise ValueError(
            f"actor_rollout_ref.rollout.n={arr['rollout']['n']}: group advantages need >= 2 rollouts"
        )
    trainer = config["trainer"]
    hook_needs = _trainer_hook_needs(settings)
    if hook_needs and not trainer.get("use_v1", True):
        raise ValueError(
            f"trainer.use_v1=False (legacy RayPPOTrainer) has no castrl hook, needed for {hook_needs}; "
            "set trainer.use_v1=True"
        )
    mode = trainer.get("v1", {}).get("trainer_mode", "sync")
    if hook_needs and not str(mode).startswith(PREFIX):
        raise ValueError(
            f"trainer.v1.trainer_mode={mode!r} has no castrl hook, needed for {hook_needs}; set "
            "trainer.v1.trainer_mode=castrl_sync"
            + ("" if settings.needs_teacher else " (or castrl.mask_truncated_completions=false)")
        )
    if settings.needs_teacher and settings.teacher_is_reference and not _has_reference(config):
        raise ValueError(
            "castrl.teacher_weights='frozen' scores with verl's reference model, which exists only with LoRA "
            "(adapter disabled) or when actor_rollout_ref.actor.use_kl_loss=True or "
            "algorithm.use_kl_in_reward=True; set actor_rollout_ref.actor.use_kl_loss=True with kl_loss_coef=0.0"
        )
    if settings.teacher_snapshot:
        _check_snapshot_engine(settings, arr)
    if settings.needs_peers:
        data = config["data"]
        needed = int(data["max_prompt_length"]) + int(data["max_response_length"])
        if settings.teacher_max_prompt_length < needed:
            raise ValueError(
                f"castrl.teacher_context={settings.teacher_context!r} puts a whole rollout of the group in the "
                f"teacher prompt, so castrl.teacher_max_prompt_length={settings.teacher_max_prompt_length} would "
                "cut the problem off long prompts (prompts are cut from the left); set it to at least "
                f"data.max_prompt_length + data.max_response_length = {needed}"
            )
    temperature = float(arr["rollout"].get("temperature", 1.0))
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(
            f"actor_rollout_ref.rollout.temperature must be > 0 for log-probs, got {temperature}"
        )
    return settings


def _check_snapshot_engine(settings: CastrlVerlConfig, arr: Any) -> None:
    """refresh:K / ema swap FSDP shards by value (`castrl.teacher.shards`); other engines are refused."""
    strategy = str(arr["actor"].get("strategy", "fsdp"))
    if strategy in SNAPSHOT_STRATEGIES:
        return
    why = (
        "Megatron keeps the actor's weights tensor/pipeline-parallel, in its own parameter and distributed-optimizer "
        "buffers, which castrl's snapshot does not swap"
        if strategy == "megatron"
        else f"castrl's snapshot swaps FSDP1/FSDP2 shards and was not built for the {strategy!r} engine"
    )
    raise ValueError(
        f"castrl.teacher_weights={settings.teacher_weights!r} keeps a snapshot of the actor on its workers, but "
        f"actor_rollout_ref.actor.strategy={strategy!r}: {why}. Use actor_rollout_ref.actor.strategy=fsdp or fsdp2, "
        "or castrl.teacher_weights=policy / frozen"
    )


def _trainer_hook_needs(settings: CastrlVerlConfig) -> str:
    """What of `settings` only castrl's trainer (`castrl_sync`) does, in words; "" = nothing."""
    needs = []
    if settings.needs_teacher:
        needs.append(f"estimator {settings.estimator!r}'s teacher pass")
    if settings.mask_truncated_completions:
        needs.append("castrl.mask_truncated_completions=true")
    return " and ".join(needs)


def _has_reference(config: Any) -> bool:
    arr = config["actor_rollout_ref"]
    model = arr["model"]
    lora = (model.get("lora") or {}).get("rank", 0) or model.get("lora_rank", 0)
    if (lora and int(lora) > 0) or model.get("lora_adapter_path"):
        return True
    return bool(config["algorithm"].get("use_kl_in_reward", False) or arr["actor"].get("use_kl_loss", False))
