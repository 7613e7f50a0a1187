"""CAST on verl 0.9.x (`pip install 'castrl[verl]'`, in its own environment: verl pins transformers<5.11).

- `algorithm.adv_estimator=cast` (or `castrl_<name>` for every name in castrl's registry: grpo,
  dr_grpo, rlsd, rlrt, opsd, grpo_opsd, cast): castrl's estimators in verl's registry
  (`estimator.py`), registered on import of this package;
- `trainer.v1.trainer_mode=castrl_sync`: verl's sync trainer plus the self-teacher pass
  (`trainer.py`; imported lazily, it needs verl's TransferQueue: `pip install 'verl[verl-core]'`);
- `castrl:` config section -> `CastrlVerlConfig` (`config.py`; teacher weights `policy`, `frozen`, and
  the paper's `refresh:<K>` / `ema`: a shard-local snapshot on the actor workers, `worker.py`, scheduled
  in optimizer steps and checkpointed by `teacher_snapshot.py`); teacher inputs, RLRT's
  successful-peer context included (`teacher_inputs.py`);
- entry point: `python -m castrl.integrations.verl.main` (`main.py`). Guide: docs/verl.md.
"""

from __future__ import annotations

try:
    import verl  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "castrl.integrations.verl needs verl 0.9.x: pip install 'castrl[verl]' in an environment of its own "
        "(verl pins transformers<5.11)"
    ) from err

from .config import CastrlVerlConfig, castrl_name, check_verl_config, parse_castrl_config, verl_names
from .estimator import (
    TEACHER_KEY,
    BoundInputs,
    bind_estimator_inputs,
    compute_castrl_advantage,
    estimate_token_advantages,
    group_ids_from_uids,
    register_verl_estimators,
)
from .teacher_inputs import (
    assemble_teacher_batch,
    batch_peer_texts,
    choose_peers,
    dataproto_from_nested,
    teacher_batch_from_dataproto,
)

register = register_verl_estimators
register()

__all__ = [
    "TEACHER_KEY",
    "BoundInputs",
    "CastrlVerlConfig",
    "assemble_teacher_batch",
    "batch_peer_texts",
    "bind_estimator_inputs",
    "castrl_name",
    "check_verl_config",
    "choose_peers",
    "compute_castrl_advantage",
    "dataproto_from_nested",
    "estimate_token_advantages",
    "group_ids_from_uids",
    "parse_castrl_config",
    "register",
    "teacher_batch_from_dataproto",
    "verl_names",
]
