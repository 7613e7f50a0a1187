"""Adapters that run castrl's estimators inside other RL frameworks (optional extras).

Each sub-package imports its framework; the default install needs none of them. TRL lives in
`castrl.trl` because it is a core dependency; `castrl.integrations.verl` needs `castrl[verl]`.
"""
