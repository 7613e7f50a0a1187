"""The markdown and figure toolkit every castrl report shares: `castrl eval`'s eval.md, `castrl diagnose`'s
diagnostics.md, `castrl train`'s training.png and the bench's docs/results.md.

- `markdown`: a table as markdown lines (`table`), a cell escaped for one (`cell`);
- `figures`: matplotlib's pyplot on the Agg backend (`pyplot`) and the one way a figure is saved (`save`);
- `stats`: t-intervals over seeds and paired differences (small samples, no scipy);
- `findings`: when a paired difference may be read as "better" / "worse" (the bench report and
  `castrl diagnose`'s verdict use the same rule).
"""
