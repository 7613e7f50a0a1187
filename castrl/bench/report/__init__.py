"""`castrl bench report`: docs/results.md from the cell cache (`results`), one module per section
(`final`, `paper`, `control`, `placement`, `diagnosis`), the cells' views (`cells`, `views`) and the
learning-curve figures (`figures`); tables and figures through `castrl.reporting`."""
