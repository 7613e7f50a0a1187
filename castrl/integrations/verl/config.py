"""The `castrl:` section of a verl (Hydra/OmegaConf) config -> castrl settings.

The estimator is verl's own knob, `algorithm.adv_estimator` ("cast" or "castrl_<name>"); its
fields live in a sub-section named after the castrl estimator (`castrl.cast.tau_pos`,
`castrl.rlsd.rlsd_band`, ...), so one YAML can hold every ablation's knobs and a command-line
override switches between them. Every sub-section present is validated, the selected one is used.
Errors name the full key (`castrl.cast.lam`) and the fix. Field meanings: `castrl.core.config`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from castrl.core import ADVANTAGE_ESTIMATORS, EstimatorConfig, get_estimator
from castrl.teacher import check_teacher_config

SECTION = "castrl"
PREFIX = "castrl_"
ALIAS = "cast"  # `algorithm.adv_estimator=cast` is CAST; every estimator is also `castrl_<name>`
REWARD_KEYS = ("token_level_rewards", "token_level_scores")
VERL_TEACHER_WEIGHTS = ("policy", "frozen")


@dataclass(frozen=True)
class CastrlVerlConfig:
    """Everything the verl adapter needs besides verl's own config."""

    estimator: str = field(
        default="cast", metadata={"help": "castrl registry name (from algorithm.adv_estimator)."}
    )
    estimator_config: EstimatorConfig | None = field(
        default=None, metadata={"help": "Config of `estimator`; None = its defaults."}
    )
    teacher_context: str = field(
        default="self_teach",
        metadata={
            "help": "self_teach, student, with_answer, with_solution or a {problem} template (spec §3). [R]"
        },
    )
    teacher_weights: str = field(
        default="policy",
        metadata={"help": "policy (actor, current weights) or frozen (verl's reference model). [R]"},
    )
    teacher_max_prompt_length: int = field(
        default=1024,
        metadata={"help": "Teacher prompts longer than this are cut from the left (and counted)."},
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
        metadata={"help": "extra_info key holding the bare problem text; missing -> the last user turn."},
    )
    solution_key: str = field(
        default="solution",
        metadata={"help": "extra_info key with a reference solution (with_solution only)."},
    )

    def __post_init__(self) -> None:
        if self.estimator_config is None:
            object.__setattr__(self, "estimator_config", get_estimator(self.estimator).config_cls())

    @property
    def needs_teacher(self) -> bool:
        return get_estimator(self.estimator).needs_teacher


def castrl_name(adv_estimator: str) -> str | None:
    """castrl registry name for a verl `algorithm.adv_estimator`, or None if it is not castrl's."""
    name = str(adv_estimator)
    if name == ALIAS:
        return "cast"
    if name.startswith(PREFIX) and name[len(PREFIX) :] in ADVANTAGE_ESTIMATORS:
        return name[len(PREFIX) :]
    return None


def verl_names() -> list[str]:
    """Every `algorithm.adv_estimator` value castrl registers in verl."""
    return [ALIAS] + [PREFIX + name for name in ADVANTAGE_ESTIMATORS.names()]


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


def _coerce(default: Any, value: Any, key: str) -> Any:
    """`value` in the type of the field's `default`; TypeError naming `key` otherwise."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise TypeError(f"{key} must be true or false, got {value!r}")
    if isinstance(default, tuple):
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
            return tuple(float(v) for v in value)
        raise TypeError(f"{key} must be a [lo, hi] pair of numbers, got {value!r}")
    if isinstance(default, int) and not isinstance(value, bool) and isinstance(value, int):
        return value
    if isinstance(default, float) and _is_number(value):
        return float(value)
    if isinstance(default, str) and isinstance(value, str):
        return value
    raise TypeError(f"{key} must be a {type(default).__name__}, got {type(value).__name__} {value!r}")


def _estimator_config(name: str, section: dict[str, Any]) -> EstimatorConfig:
    """Build `name`'s config class from a sub-section, naming `castrl.<name>.<field>` in errors."""
    config_cls = get_estimator(name).config_cls
    known = {f.name: f for f in fields(config_cls) if f.default is not MISSING}
    kwargs: dict[str, Any] = {}
    for key, value in section.items():
        where = f"{SECTION}.{name}.{key}"
        if key not in known:
            raise ValueError(
                f"{where} is not a field of {config_cls.__name__}; valid: {', '.join(sorted(known))}"
            )
        if key == "flip_threshold":  # "tau" | "band" | "zero" | "quantile:<q>" | a number
            if isinstance(value, bool) or not (_is_number(value) or isinstance(value, str)):
                raise TypeError(f"{where} must be a string or a number, got {value!r}")
            kwargs[key] = float(value) if _is_number(value) else value
        else:
            kwargs[key] = _coerce(known[key].default, value, where)
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{SECTION}.{name}: {err}") from None


_TOP_KEYS = {f.name for f in fields(CastrlVerlConfig)} - {"estimator", "estimator_config"}


def _check_teacher_weights(weights: str) -> None:
    if weights in ("ema",) or weights.startswith("lagged:"):
        raise ValueError(
            f"{SECTION}.teacher_weights={weights!r} is not supported on verl: it needs a second copy of the "
            "actor's sharded weights kept on the FSDP/Megatron workers and refreshed after each update_actor. "
            "Use 'policy' or 'frozen' here, or the TRL trainer (castrl.trl) for ema / lagged:<K>."
        )
    if weights not in VERL_TEACHER_WEIGHTS:
        raise ValueError(f"{SECTION}.teacher_weights must be one of {VERL_TEACHER_WEIGHTS}, got {weights!r}")


def _top_level(top: dict[str, Any]) -> dict[str, Any]:
    defaults = {f.name: f.default for f in fields(CastrlVerlConfig)}
    values = {}
    for key in _TOP_KEYS:
        values[key] = _coerce(defaults[key], top[key], f"{SECTION}.{key}") if key in top else defaults[key]
    if values["reward_key"] not in REWARD_KEYS:
        raise ValueError(f"{SECTION}.reward_key must be one of {REWARD_KEYS}, got {values['reward_key']!r}")
    if values["teacher_max_prompt_length"] <= 0:
        raise ValueError(
            f"{SECTION}.teacher_max_prompt_length must be > 0, got {values['teacher_max_prompt_length']}"
        )
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
        _check_teacher_weights(values["teacher_weights"])
        try:
            check_teacher_config(values["teacher_context"], values["teacher_weights"])
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
    if settings.needs_teacher and not trainer.get("use_v1", True):
        raise ValueError(
            "trainer.use_v1=False (legacy RayPPOTrainer) is not supported; set trainer.use_v1=True"
        )
    mode = trainer.get("v1", {}).get("trainer_mode", "sync")
    if settings.needs_teacher and not str(mode).startswith(PREFIX):
        raise ValueError(
            f"trainer.v1.trainer_mode={mode!r} has no teacher pass; estimator {settings.estimator!r} needs "
            "trainer.v1.trainer_mode=castrl_sync"
        )
    if settings.needs_teacher and settings.teacher_weights == "frozen" and not _has_reference(config):
        raise ValueError(
            "castrl.teacher_weights='frozen' scores with verl's reference model, which exists only with LoRA "
            "(adapter disabled) or when actor_rollout_ref.actor.use_kl_loss=True or "
            "algorithm.use_kl_in_reward=True; set actor_rollout_ref.actor.use_kl_loss=True with kl_loss_coef=0.0"
        )
    temperature = float(arr["rollout"].get("temperature", 1.0))
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(
            f"actor_rollout_ref.rollout.temperature must be > 0 for log-probs, got {temperature}"
        )
    return settings


def _has_reference(config: Any) -> bool:
    arr = config["actor_rollout_ref"]
    model = arr["model"]
    lora = (model.get("lora") or {}).get("rank", 0) or model.get("lora_rank", 0)
    if (lora and int(lora) > 0) or model.get("lora_adapter_path"):
        return True
    return bool(config["algorithm"].get("use_kl_in_reward", False) or arr["actor"].get("use_kl_loss", False))
