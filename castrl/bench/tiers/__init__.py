"""One module per tier of the cached CAST-vs-baselines grids; each exposes `TIER` (`castrl.bench.common.tier.Tier`)
and `main`. No tier imports another: what two share is in `castrl.bench.common`."""
