"""Wall time of one smollm2 cell at the v2 settings (10 steps, 32 rollouts of <= 128 tokens a step, the
192-problem final evaluation) under the settings proposed for CPU v3 cells: castrl's decoder for the
rollouts, the held-out checkpoints and the final evaluation, and the final evaluation in fp32.

    python scripts/probes/smol_cell.py --method grpo --seed 0 --threads 2
    python scripts/probes/smol_cell.py --final_dtype bfloat16 --decoder transformers   # the v2 cell itself

docs/steptime.md ("A v2-settings smollm2 cell, end to end") quotes its output. Nothing is written to the
bench's cell cache: the v2 cells keep their settings; the result goes to --output (JSON) and stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from castrl.bench.common.cells import Cell
from castrl.bench.common.smol import SETTINGS, SmolSettings
from castrl.bench.common.tier import cell_config
from castrl.bench.tiers import smollm2


@dataclass(frozen=True)
class ProbeSettings(SmolSettings):
    """The v2 settings with another decoder (a code path: `code_paths`, as the cells record it)."""

    decoder: str = "castrl"

    def code_paths(self) -> dict[str, Any]:
        return {**super().code_paths(), "rollout_decoder": self.decoder}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="grpo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decoder", choices=("castrl", "transformers"), default="castrl")
    parser.add_argument("--final_dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--output", default="outputs/probe_smol_cell.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = {f.name: getattr(SETTINGS, f.name) for f in fields(SETTINGS)}
    settings = ProbeSettings(**{**base, "final": replace(SETTINGS.final, dtype=args.final_dtype)},
                             decoder=args.decoder)  # fmt: skip
    cell = Cell(smollm2.TIER_NAME, args.method, args.seed, cell_config(smollm2.TIER, settings, args.method))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        result = smollm2.run_smol_cell(cell, settings, Path(scratch))
    wall = time.perf_counter() - start
    steps = [{"step": s.get("step"), "step_s": s.get("step_time"), "rollout_s": s.get("cast/time_rollout_s")}
             for s in result["steps"] if s.get("step_time") is not None]  # fmt: skip
    summary = {
        "method": args.method, "seed": args.seed, "threads": args.threads, "decoder": args.decoder,
        "final_dtype": args.final_dtype, "wall_s": wall, "train_wall_s": result["train_wall_s"],
        "heldout_eval_s": result["eval_seconds"], "final_eval_s": result.get("final_eval_s"),
        "timing": result["timing"], "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "final_summary": result["final"].get("summary") if isinstance(result.get("final"), dict) else None,
        "steps": steps,
    }  # fmt: skip
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
