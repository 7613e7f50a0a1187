"""TRL integration: `CASTTrainer(GRPOTrainer)` and `CASTConfig(GRPOConfig)` (TRL 1.16)."""

from .config import CASTConfig
from .trainer import CASTTrainer

__all__ = ["CASTConfig", "CASTTrainer"]
