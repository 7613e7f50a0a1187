"""`castrl diagnose`: the paper's teacher-signal analysis on your model and data, without training.

Samples G completions per problem, verifies them, scores every sampled token after the student
prompt and after each teacher context, and reports the gap g = u - s per (correct, wrong) x
(teacher-positive, teacher-negative), the share of tokens whose direction the teacher sets against
the verifier (the share CAST flips, next to the paper's Table 9), the within-group gap AUC, teacher
sign agreement, gap vs position and the group-type fractions; it ends with one verdict line per
teacher. Flags are generated from `DiagnoseSettings` (TRL-style: `--n_prompts 8`, `--config x.yaml`).

    castrl diagnose --teachers answer_free with_reference with_peer_success --output_dir outputs/diagnose
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import asdict
from typing import Any

from castrl.command_line import dataclass_parser, parse_dataclasses, user_input
from castrl.diagnostics.analysis import PAPER_TABLE9
from castrl.diagnostics.pipeline import load_model, run_diagnostics
from castrl.diagnostics.report import verdict_lines, write_report
from castrl.diagnostics.settings import DiagnoseSettings, select_problems
from castrl.formatting import pct

PROG = "castrl diagnose"


DESCRIPTION = (
    "Teacher-signal diagnostics: sample groups, score them with student and teacher contexts, "
    "and report the log-prob gap statistics (JSON, markdown, PNGs, self-contained HTML)."
)


# The dataclasses that are `castrl diagnose`'s command line (tests/test_arguments.py checks the vocabulary).
ARGUMENTS: tuple[type, ...] = (DiagnoseSettings,)


def build_parser() -> Any:
    """The `castrl diagnose` parser: one flag per DiagnoseSettings field, its help and default taken from the field."""
    return dataclass_parser(ARGUMENTS, prog=PROG, description=DESCRIPTION)


def parse_settings(argv: list[str]) -> DiagnoseSettings:
    """Parse flags (and `--config`) into validated settings; ValueError with the flag's name on a bad value."""
    (settings,) = parse_dataclasses(ARGUMENTS, argv, prog=PROG, description=DESCRIPTION)
    return settings


def _environment(load_start: tuple[float, float, float]) -> dict[str, object]:
    """What the wall time depends on: versions, threads, cores and the machine's load (shared CPUs)."""
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15_start": list(load_start),
        "loadavg_1_5_15_end": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    """Run a diagnosis; input mistakes raise `UserInputError` before the model loads (`castrl.cli`: exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    load_start = os.getloadavg()
    with user_input():
        settings = parse_settings(argv)
        problems = select_problems(settings)  # data and teacher columns are checked before the model loads
        t0 = time.perf_counter()
        model, tokenizer = load_model(settings)
        load_s = time.perf_counter() - t0
    run = run_diagnostics(settings, problems=problems, model=model, tokenizer=tokenizer)
    run.timings["load_s"] = load_s
    run.timings["total_s"] = time.perf_counter() - start
    payload = {
        "command": "castrl diagnose " + shlex.join(argv),
        "argv": argv,
        "settings": asdict(settings),
        "cast_config": asdict(settings.cast_config()),
        "notes": run.notes,
        "timings_s": run.timings,
        "environment": _environment(load_start),
        "results": run.results,
    }
    paths = write_report(payload, settings.output_dir)
    g = run.results["groups"]
    print(
        f"[castrl diagnose] {int(g['n_rollouts'])} rollouts, reward mean {g['reward_mean']:.3f}, "
        f"groups mixed/all-correct/all-wrong {g['frac_mixed']:.2f}/{g['frac_all_correct']:.2f}/"
        f"{g['frac_all_wrong']:.2f}, {run.timings['total_s']:.0f} s"
    )
    for name, teacher in run.results["teachers"].items():
        f, a, adv = teacher["flips"], teacher["against_verifier"], teacher["advantages"]
        print(
            f"[castrl diagnose] {name}: gap std {teacher['quadrants']['overall']['std']:.3f}; "
            f"against the verifier {pct(a['frac'])} of tokens ({pct(a['frac_correct_negative'])} "
            f"correct-path negative, {pct(a['frac_incorrect_positive'])} incorrect-path positive; "
            f"paper's Table 9: {pct(PAPER_TABLE9['frac_flipped'])}, "
            f"{pct(PAPER_TABLE9['frac_flipped_incorrect_positive'])} positive); CAST flips {pct(f['frac_flipped'])} "
            f"(flip_margin {f['margin']:g}) and pushes down {pct(adv['frac_down'])}"
        )
    print(f"[castrl diagnose] report: {paths['html']}")
    for line in verdict_lines(run.results):
        print(f"[castrl diagnose] verdict, {line}")
    return 0
