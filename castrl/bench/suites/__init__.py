"""The bench's suites that are not grid tiers: `core`, `steptime`, `roofline`, `placement`."""
