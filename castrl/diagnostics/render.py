"""The two renderings of a diagnosis report, markdown and self-contained HTML, from the same tables,
each ending with the verdict lines and the note that says where the verdict's cut-offs come from.

Why apart from `report`: the tables (what is shown) and their rendering (how) change for different
reasons; both reports render the same `Table` objects, so they cannot disagree.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from typing import Any

from castrl.reporting import markdown

from .verdict import AUC_BAND, MIN_VERDICT_PAIRS, TIE_CAVEAT, control_summary


@dataclass(frozen=True)
class Table:
    """One report table (title, header, rows, note), rendered to markdown and to HTML from this object."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


VERDICT_NOTE = (
    f"From the within-group AUC of the mean gap per rollout. A gap of 0 on every valid token is no teacher "
    f"signal, whatever the AUC (every pair ties). The band 0.5 +- {AUC_BAND} counts as 'barely separates'; the "
    f"cut-offs and the evidence quoted come from castrl's positive control (teachers of graded strength on a "
    f"tiny student, docs/results.md): {control_summary()}. Below {MIN_VERDICT_PAIRS} pairs the estimate is noisy; "
    f"from {TIE_CAVEAT:.0%} tied pairs the verdict says that ties pull the AUC toward 0.5."
)


def verdict_lines(results: dict[str, Any]) -> list[str]:
    """One line per teacher: '<teacher>: <verdict>'."""
    return [f"{name}: {teacher['verdict']}" for name, teacher in results["teachers"].items()]


def render_markdown(payload: dict[str, Any], tables: list[Table], figures: dict[str, str]) -> str:
    lines = ["# castrl diagnose: teacher-signal report", "", "```", payload["command"], "```", ""]
    for table in tables:
        lines += [f"## {table.title}", "", *markdown.table(table.header, [[markdown.cell(c) for c in row]
                                                                         for row in table.rows])]
        lines += (["", table.note] if table.note else []) + [""]
    lines += ["## Figures", ""] + [f"![{cap}]({os.path.basename(p)})" for cap, p in figures.items()] + [""]
    lines += ["## Verdict", "", VERDICT_NOTE, ""] + [
        f"- {line}" for line in verdict_lines(payload["results"])
    ]
    return "\n".join(lines) + "\n"


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f0f0}"
    "td:first-child,td:nth-child(2){text-align:left}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}"
    "img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}.note{color:#555;font-size:12px}"
)


def render_html(payload: dict[str, Any], tables: list[Table], figures: dict[str, str]) -> str:
    """One self-contained HTML page: no external file, script or stylesheet."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>castrl diagnose</title>",
        f"<style>{_CSS}</style></head><body><h1>castrl diagnose: teacher-signal report</h1>",
        f"<pre>{esc(payload['command'])}</pre>",
    ]
    for table in tables:
        parts.append(
            f"<h2>{esc(table.title)}</h2><table><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in table.header)
            + "</tr>"
        )
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table.rows]
        parts.append("</table>" + (f"<p class='note'>{esc(table.note)}</p>" if table.note else ""))
    parts.append("<h2>Figures</h2>")
    for caption, path in figures.items():
        with open(path, "rb") as handle:
            data = base64.b64encode(handle.read()).decode("ascii")
        parts.append(f"<h3>{esc(caption)}</h3><img alt='{esc(caption)}' src='data:image/png;base64,{data}'>")
    parts.append(f"<h2>Verdict</h2><p class='note'>{esc(VERDICT_NOTE)}</p><ul>")
    parts += [f"<li>{esc(line)}</li>" for line in verdict_lines(payload["results"])]
    parts.append("</ul></body></html>")
    return "\n".join(parts)
