"""A self-contained ``report.html``: tables and figures (PNG, base64 ``data:`` URIs) in one file.

No scripts, no external style sheets or images: the file can be mailed or archived
as it is.
"""
from __future__ import annotations

import base64
import html
from typing import Mapping

import pandas as pd

from certframe import __version__

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
p.note { font-size: 0.85em; color: #555; }
"""


def _cell(value, column: str) -> tuple[str, bool]:
    if isinstance(value, float):
        if pd.isna(value):
            return "", False
        fmt = "{:g}" if column in ("sigma", "tau", "alpha") else "{:.4f}"
        return fmt.format(value), False
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value), False
    return html.escape("" if value is None else str(value)), True


def table_html(df: pd.DataFrame, table_id: str) -> str:
    """An HTML ``<table>`` of ``df`` (escaped text; floats to 4 decimals, sigma/tau/alpha as given)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for col, value in zip(df.columns, rec):
            value = value.item() if hasattr(value, "item") else value
            text, is_text = _cell(value, col)
            cells.append(f'<td class="text">{text}</td>' if is_text else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="{html.escape(table_id)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def render_html(title: str, table: pd.DataFrame, runs: pd.DataFrame, figures: Mapping[str, bytes]) -> str:
    """The report page. ``figures``: ``{name: PNG bytes}``, embedded in order."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<h2>Certified Dice</h2>",
             "<p class=\"note\">Per method, σ and τ, over the images of each run: certified Dice (abstained "
             "pixels count as errors) mean and std (ddof=0), mean abstain rate, clean Dice of the base "
             "segmenter, and wall time per image. Radius R = σ·Φ⁻¹(τ) in L2, [0, 1] pixel units.</p>",
             table_html(table, "comparison"),
             "<h2>Figures</h2>"]
    for name, png in figures.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(name)}</figcaption></figure>")
    parts += ["<h2>Runs</h2>", table_html(runs, "runs"),
              f"<p class=\"note\">Written by certframe {html.escape(__version__)}. Each run folder's "
              "manifest.json holds its full configuration and package versions.</p>",
              "</body></html>"]
    return "\n".join(parts) + "\n"
