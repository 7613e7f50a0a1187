"""Teacher-signal diagnostics (`castrl diagnose`): how the teacher-student gap behaves on correct and
wrong rollouts, and what CAST would do with it, measured without training.

- `scoring`: sample groups and score their tokens under any prompt (plain transformers);
- `analysis`: pure tensor -> numbers functions (reusing castrl.core's gap, base-advantage and flip code);
- `separation`: the within-group gap AUC with its tied pairs; `verdict`: the one-line verdict (`gap_verdict`,
  and `verdict_of` to recompute it from a stored diagnosis) and the positive control's curve it quotes;
- `settings`: the flags (`DiagnoseSettings`), their validation and the problem draw;
- `pipeline`: the end-to-end run;
- `report` / `render` / `figures`: diagnostics.json, diagnostics.md, PNGs and the self-contained report.html.
"""

from .analysis import analyze, gap_verdict, quadrant_stats, rollout_gap_auc, summarize
from .pipeline import DiagnosticsRun, run_diagnostics
from .report import write_report
from .scoring import Rollouts, completion_logps, sample_groups
from .settings import DiagnoseSettings, select_problems

__all__ = [
    "DiagnoseSettings",
    "DiagnosticsRun",
    "Rollouts",
    "analyze",
    "completion_logps",
    "gap_verdict",
    "quadrant_stats",
    "rollout_gap_auc",
    "run_diagnostics",
    "sample_groups",
    "select_problems",
    "summarize",
    "write_report",
]
