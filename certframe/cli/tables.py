"""The rich tables the commands print: certify summaries, attack robustness, report comparisons.

Every table fits an 80-column terminal where it can: settings shared by every row go
to the title, numbers are never cut, long method names wrap.
"""
from __future__ import annotations

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text


def print_summary(summary, console, title="summary"):
    """A table of a summary DataFrame that fits the terminal (80 columns and up).

    Uses the column ``method`` when present, else ``segmenter`` (+ ``denoiser``); the
    certifier is appended to the method when the table holds several certifiers.
    Settings shared by every row (sigma, tau, radius, draws per image, images,
    certifier) go into the title instead of a column; numbers are never cut: a long
    method name wraps.
    """
    if "method" in summary.columns:
        methods = summary["method"].astype(str)
    else:
        methods = summary["segmenter"].astype(str) + summary["denoiser"].map(
            lambda d: "" if d == "none" else f" + {d}")
    if "certifier" in summary.columns and summary["certifier"].nunique() > 1:
        methods = methods + " [" + summary["certifier"].astype(str) + "]"
    cols = [("sigma", "σ", "{:g}"), ("tau", "τ", "{:g}"), ("radius", "radius", "{:.3f}"),
            ("certified_dice", "cert. Dice", "{:.3f}"), ("clean_dice", "clean Dice", "{:.3f}"),
            ("abstain_rate", "abstain", "{:.3f}"), ("num_samples", "draws", "{:.0f}"), ("images", "images", "{:d}")]
    cols = [c for c in cols if c[0] in summary.columns]

    def cell(r, key, fmt):
        v = r[key]
        if key == "certified_dice" and "certified_dice_std" in summary.columns:
            return f"{v:.3f}±{r['certified_dice_std']:.3f}"
        return fmt.format(int(v) if key == "images" else v)

    shared = []
    if len(summary):
        for key, header, fmt in list(cols):
            if key in ("sigma", "tau", "radius", "num_samples", "images") and summary[key].nunique() == 1:
                shared.append(f"{header} {cell(summary.iloc[0], key, fmt)}")
                cols.remove((key, header, fmt))
        if "certifier" in summary.columns and summary["certifier"].nunique() == 1:
            shared.insert(0, str(summary["certifier"].iloc[0]))
    if shared:
        title = f"{title}\n{', '.join(shared)}"
    caption = None
    if "empty_truth_images" in summary.columns and summary["empty_truth_images"].fillna(0).sum() > 0:
        counts = sorted({int(v) for v in summary["empty_truth_images"].fillna(0)})
        caption = (f"{'/'.join(map(str, counts))} image(s) without foreground: they score Dice 1.0 when nothing "
                   f"is certified as foreground there (even all ABSTAIN); see the abstain column")
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    table.add_column("method", overflow="fold", ratio=1, min_width=12)
    rows = [[cell(r, key, fmt) for key, _, fmt in cols] for _, r in summary.iterrows()]
    for i, (_, header, _) in enumerate(cols):
        width = max([len(header)] + [len(row[i]) for row in rows])
        table.add_column(header, justify="right", no_wrap=True, min_width=width)
    for m, cells in zip(methods, rows):
        table.add_row(m, *cells)
    console.print(table)


def _check_cell(r) -> str:
    """covered / tested / violations of one robustness row; "not tested" when nothing was covered."""
    if bool(r.get("not_tested", False)) or pd.isna(r.get("tested")) or not r.get("tested"):
        return "not tested"
    k = r.get("radius_multiple")
    beyond = k is not None and not pd.isna(k) and float(k) > 1
    found = r.get("flips_beyond_claim") if beyond else r.get("violations")
    found = 0 if pd.isna(found) else int(found)
    text = f"{int(r['tested'])}: {found}{' beyond' if beyond else ''}"
    return f"[bold red]{text}[/]" if found and not beyond else text


def print_robustness(table, console, title="robustness"):
    """Rich tables, one per method and sigma: clean / attacked / certified Dice and the certificate check.

    "f" is the base segmenter (no noise), "g" the smoothed one (majority vote); "g cert" is
    certified Dice at radius >= eps (the budget's L2 bound). "check" is ``tested: violations``
    (pixels tested at x' and those where p(c | x') < 1/2 was shown; expected 0, red otherwise);
    at a radius multiple k > 1 the count is "beyond" the claim, and a budget that covered no
    pixel says "not tested", never 0.
    """
    cols = [("tau", "τ"), ("norm", "norm"), ("radius_multiple", "k"), ("eps", "eps"),
            ("base_robust_dice", "f att"), ("smoothed_robust_dice", "g att"), ("certified_dice_at_eps", "g cert")]
    cols = [c for c in cols if c[0] in table.columns]
    for (seg, den, cert, sigma), part in table.groupby(["segmenter", "denoiser", "certifier", "sigma"],
                                                        sort=False):
        attacks = "; ".join(sorted({f"{r['attacks']}" for _, r in part.iterrows()}))
        clean = (f"f clean {part['clean_dice'].mean():.3f}, g clean {part['smoothed_dice'].mean():.3f}, "
                 f"{int(part['images'].max())} image(s)")
        t = Table(title=f"{title}\n{seg} + {den}, {cert}, σ={sigma:g}\n{clean}", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, collapse_padding=True,
                  caption=f"attacks: {attacks}. f base, g smoothed; k: multiple of the certified radius; "
                          f"g cert: certified Dice at radius >= eps; check: pixels tested at x': "
                          f"violations")
        for key, head in cols + [("check", "check")]:
            t.add_column(head, justify="left" if key == "norm" else "right", no_wrap=True)
        for _, r in part.iterrows():
            cells = ["" if r[k] is None or (isinstance(r[k], float) and pd.isna(r[k])) else
                     f"{r[k]:.3g}" if k in ("tau", "eps", "radius_multiple") else
                     f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k, _ in cols]
            t.add_row(*cells, _check_cell(r))
        console.print(t)


def print_comparison(table, console: Console, title: str = "certified Dice") -> None:
    """The comparison table in rich: numbers are never cut; method names are kept whole where the terminal
    is wide enough (100 columns for the usual names) and wrap, never cut, where it is not (80 columns, a pipe)."""
    several = table["dataset"].nunique() > 1
    certifiers = table["certifier"].nunique() > 1
    methods = table["method"].astype(str)
    if several:
        methods = table["dataset"].astype(str) + ": " + methods
    if certifiers:
        methods = methods + " [" + table["certifier"].astype(str) + "]"
    elif len(table):
        title = f"{title} ({table['certifier'].iloc[0]})"
    headers = ("σ", "τ", "radius", "cert. Dice", "abstain", "clean Dice", "s/img", "images")
    rows = [[f"{r['sigma']:g}", f"{r['tau']:g}", f"{r['radius']:.3f}",
             f"{r['certified_dice']:.3f}±{r['certified_dice_std']:.3f}", f"{r['abstain_rate']:.3f}",
             f"{r['clean_dice']:.3f}", f"{r['seconds_per_image']:.2f}", str(int(r["images"]))]
            for _, r in table.iterrows()]
    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    # numbers are never cut (each column at least as wide as its widest cell); a long method name
    # is what gives way on a narrow terminal (80 columns, or a pipe): it wraps
    longest = max([6] + [len(m) for m in methods])
    t.add_column("method", overflow="fold", min_width=min(longest, 8), max_width=longest)
    for i, header in enumerate(headers):
        width = max([len(header)] + [len(row[i]) for row in rows])
        t.add_column(header, justify="right", no_wrap=True, min_width=width)
    for m, cells in zip(methods, rows):
        t.add_row(m, *cells)
    console.print(t)


def print_warnings(warnings, console: Console) -> None:
    """Repeat a run's warnings under its table, one ``Warning: ...`` line each (never wrapped or cut)."""
    for warning in warnings:
        console.print(Text(f"Warning: {warning}", style="yellow"), soft_wrap=True)


__all__ = ["print_summary", "print_robustness", "print_comparison", "print_warnings"]
