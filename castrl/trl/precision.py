"""Mixed precision in the TRL trainer: bf16 autocast over fp32 weights, CAST's log-probs from fp32 logits.

What `--bf16 true` already does on TRL 1.16 / transformers 5.2x / accelerate 1.16, CPU included: the
Accelerator wraps the prepared model's forward in `torch.autocast(bf16)` (its outputs cast back to
fp32), so the forward and backward matmuls run in bf16 while the weights castrl loads (`--dtype
float32`) and AdamW's state stay fp32. TRL's fused LM head folds every vocabulary tile into the
log-softmax in fp32, so every log-prob CAST reads (student, teacher, old) is an fp32 tensor; but
under autocast the head's projection (the logits) runs in bf16 unless `cast_lm_head_to_fp32` is on.
CAST's signs follow gaps as small as 1e-3, which bf16 logits (8 mantissa bits) can move; so the
switch this project documents is `--bf16 true --cast_lm_head_to_fp32 true` (docs/steptime.md, "bf16").

Two gaps of the stack that this module closes, so that switch means the same with and without LoRA:

- TRL's `cast_lm_head_to_fp32` hooks `model.model.embed_tokens`, which a PEFT model with tied
  embeddings (the bundled SmolLM2 with castrl's default LoRA) does not have: the trainer failed to
  build. The fused head alone decides the precision of every scored log-prob (it upcasts the hidden
  states and the head's weight tile by tile, outside autocast), so castrl lets TRL skip its model
  cast there and installs the fused head with the fp32 projection itself (`skip_trl_head_cast`,
  `install_fp32_fused_head`).
- accelerate's autocast wraps the model's `forward`; `PeftModel.generate` calls the base model
  directly, so with LoRA the rollouts decoded in fp32 while without it they decoded in bf16.
  `CASTTrainer` runs the rollout under the Accelerator's autocast (`rollout_autocast`), a no-op
  without mixed precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from transformers.utils import logging
from trl.trainer.utils import add_fused_lm_head

logger = logging.get_logger(__name__)

# The per-token fields TRL's GRPOTrainer asks its policy's fused head for (`entropy` feeds its metric
# and entropy masking); the head castrl installs must return the same.
POLICY_HEAD_OUTPUTS = ("log_probs", "entropy")


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def trl_head_cast_fails(config: Any, model: Any, peft_config: Any) -> bool:
    """True when `cast_lm_head_to_fp32` is asked for on a model TRL 1.16 cannot cast: PEFT-wrapped (now
    or by `peft_config`) with tied input and output embeddings."""
    if not getattr(config, "cast_lm_head_to_fp32", False) or isinstance(model, str) or model is None:
        return False
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    return tied and (peft_config is not None or _is_peft(model))


@contextmanager
def skip_trl_head_cast(config: Any, model: Any, peft_config: Any) -> Iterator[bool]:
    """While GRPOTrainer builds: `cast_lm_head_to_fp32` off where TRL's own cast would fail
    (`trl_head_cast_fails`), restored after. Yields whether it did, i.e. whether the caller must
    `install_fp32_fused_head` once the trainer is built."""
    skip = trl_head_cast_fails(config, model, peft_config)
    if skip:
        config.cast_lm_head_to_fp32 = False
    try:
        yield skip
    finally:
        if skip:
            config.cast_lm_head_to_fp32 = True


def install_fp32_fused_head(peft_model: Any, temperature: float) -> None:
    """Replace the fused LM head GRPOTrainer put on `peft_model`'s base model (projecting under autocast)
    by one that projects in fp32 outside autocast, the same head `cast_lm_head_to_fp32` gives TRL's
    other models. The base model's own forward is restored first, so the heads do not nest."""
    base = peft_model.get_base_model()
    vars(base).pop("forward", None)  # TRL's head is an instance attribute over the class's forward
    add_fused_lm_head(base, temperature=temperature, cast_lm_head_to_fp32=True, outputs=POLICY_HEAD_OUTPUTS)


def warn_bf16_logits(config: Any, needs_teacher: bool) -> None:
    """One warning when a teacher-gap estimator trains under bf16 autocast with the LM head in bf16."""
    if needs_teacher and getattr(config, "bf16", False) and not getattr(config, "cast_lm_head_to_fp32", False):
        logger.warning("bf16 autocast with the LM head in bf16: the teacher-student gaps carry bf16 rounding of the "
                       "logits, which can decide the sign of small gaps (castrl diagnose --noise_floor measures how "
                       "many). --cast_lm_head_to_fp32 true scores every log-prob from fp32 logits")


def rollout_autocast(accelerator: Any) -> AbstractContextManager:
    """The Accelerator's autocast (a no-op without mixed precision) around the rollout, so a PEFT model's
    `generate`, which bypasses the autocast wrapper of `forward`, decodes in the run's precision too."""
    return accelerator.autocast()
