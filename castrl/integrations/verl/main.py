"""`python -m castrl.integrations.verl.main [hydra overrides]`: verl's `main_ppo` with castrl loaded.

verl builds its trainer inside a Ray actor (`TaskRunnerV1`) by name (`trainer.v1.trainer_mode`), and
computes advantages there, so castrl's trainer and estimators must be registered in that process:
`CastrlTaskRunner` imports them before delegating to verl. The `castrl:` section is checked here
first, so a bad key fails in seconds, before Ray starts. Example configs: `examples/verl/`.
"""

from __future__ import annotations

import os

import hydra
import ray
from verl.trainer import main_ppo
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

from .config import check_verl_config

VERL_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(main_ppo.__file__)), "config")


class _CastrlTaskRunner(main_ppo.TaskRunnerV1.__ray_actor_class__):  # type: ignore[name-defined,misc]
    """verl's V1 task runner, with castrl's trainer (`castrl_sync`) and estimators registered first."""

    def run(self, config):  # noqa: D102 - same contract as verl's
        from castrl.integrations.verl import register, trainer  # noqa: F401 - registers castrl_sync

        register()
        return super().run(config)


CastrlTaskRunner = ray.remote(_CastrlTaskRunner)


@hydra.main(config_path=VERL_CONFIG_DIR, config_name="ppo_trainer", version_base=None)
def main(config) -> None:
    """Validate, then run verl's PPO loop with `CastrlTaskRunner` (use_v1 trainers only)."""
    auto_set_device(config)
    check_verl_config(config)
    validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )
    main_ppo.run_ppo(config, task_runner_class=CastrlTaskRunner)


if __name__ == "__main__":
    # Run the importable copy, so Ray pickles CastrlTaskRunner by reference, not from __main__.
    from castrl.integrations.verl.main import main as _main

    _main()
