"""`castrl train`'s end-of-run warning: accuracy down and entropy up together, and only then."""

from __future__ import annotations

from castrl.run_logging import drift_warning


def _records(entropies: list[float]) -> list[dict]:
    return [{"step": i + 1, "loss": 0.1, "entropy": e} for i, e in enumerate(entropies)] + [{"step": 0, "heldout/accuracy": 0.5}]


def test_warns_when_accuracy_falls_and_entropy_rises():
    message = drift_warning(_records([1.30, 1.57, 1.47, 1.85, 2.21, 2.14]), {"accuracy": 0.521}, {"accuracy": 0.146})
    assert message is not None
    assert "0.521 -> 0.146" in message and "1.44 -> 2.17" in message and "castrl diagnose" in message


def test_silent_otherwise():
    rising, falling = [1.3, 1.3, 1.6, 1.7, 2.0, 2.1], [1.3, 1.3, 1.1, 1.0, 0.7, 0.6]
    assert drift_warning(_records(rising), {"accuracy": 0.52}, {"accuracy": 0.56}) is None  # accuracy up
    assert drift_warning(_records(rising), {"accuracy": 0.52}, {"accuracy": 0.50}) is None  # within min_drop
    assert drift_warning(_records(falling), {"accuracy": 0.52}, {"accuracy": 0.30}) is None  # entropy down
    assert drift_warning(_records(rising[:3]), {"accuracy": 0.52}, {"accuracy": 0.30}) is None  # too few steps
    assert drift_warning(_records(rising), {}, {"accuracy": 0.30}) is None  # resumed run: no "before"
