"""TRL integration: `CASTTrainer(GRPOTrainer)` and `CASTTrainerConfig(GRPOConfig)` (TRL 1.16)."""

from .config import CASTConfig, CASTTrainerConfig
from .trainer import CASTTrainer

__all__ = ["CASTConfig", "CASTTrainer", "CASTTrainerConfig"]
