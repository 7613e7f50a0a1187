"""What the bench's tiers and suites share (see `castrl.bench`); nothing here imports a tier, a suite or
the report."""
