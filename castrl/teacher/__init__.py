"""The self-teacher (spec §3): what it reads (`contexts`), which weights it scores with (`weights`),
its settings declared once for every host (`config`), its prompt ids (`prompts`), and an optional
external teacher model that replaces the self-teacher's weights (`external`).

The teacher is the model itself, run without gradient on the student's sampled tokens; the gap
g = u - s is zero unless its context or its weights differ from the student's.
"""

from .config import HOST_WEIGHTS, TeacherConfig, check_teacher_config
from .contexts import (
    ASSISTANT_PREFIX,
    BOXED_FORMAT,
    DEFAULT_TEACHER_CONTEXT,
    PEER_FALLBACK_CONTEXT,
    PRIVILEGED_CONTEXTS,
    STUDENT_RESPONSE_TAG,
    TAG_PLACEMENTS,
    TEACHER_CONTEXTS,
    build_teacher_prompt,
    context_uses,
    successful_peers,
    validate_tag_placement,
    validate_teacher_context,
)
from .external import ExternalTeacher, build_teacher, check_same_tokenizer, load_external_teacher
from .prompts import left_pad, teacher_prompt_batch, teacher_prompt_ids
from .weights import DEFAULT_TEACHER_WEIGHTS, TeacherWeights, WeightsSpec, has_adapter

__all__ = [
    "ASSISTANT_PREFIX",
    "BOXED_FORMAT",
    "DEFAULT_TEACHER_CONTEXT",
    "DEFAULT_TEACHER_WEIGHTS",
    "ExternalTeacher",
    "HOST_WEIGHTS",
    "PEER_FALLBACK_CONTEXT",
    "PRIVILEGED_CONTEXTS",
    "STUDENT_RESPONSE_TAG",
    "TAG_PLACEMENTS",
    "TEACHER_CONTEXTS",
    "TeacherConfig",
    "TeacherWeights",
    "WeightsSpec",
    "build_teacher",
    "build_teacher_prompt",
    "check_same_tokenizer",
    "check_teacher_config",
    "context_uses",
    "has_adapter",
    "left_pad",
    "load_external_teacher",
    "successful_peers",
    "teacher_prompt_batch",
    "teacher_prompt_ids",
    "validate_tag_placement",
    "validate_teacher_context",
]
