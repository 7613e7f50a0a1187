"""castrl: the reference implementation of CAST for GRPO-style RL with verifiable rewards."""

__version__ = "0.1.0"
