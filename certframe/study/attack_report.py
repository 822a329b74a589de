"""The attack pass in the study report: for each ``[attack]`` row and sigma, what its attack run folder records.

An ``attack-<row>-sigma<s>`` stage writes an ordinary ``certframe attack`` run folder under
``STUDY/attacks/<row>-sigma<s>/`` (:func:`certframe.run.run_attack`). It is read back with
:class:`~certframe.run.reading.RunFolderReader` (the manifest; the results checked line by line, a run
cut short kept to its finished images) and summarised per budget by
:func:`certframe.attacks.suite.robustness_table`, the function ``run_attack`` writes ``robustness.json``
with: images, the attacks run, the pixels the certificates cover and those tested at the attacked image,
violations (at ``k <= 1``: a certified pixel shown to change class inside its certified radius) or flips
beyond the claim (``k > 1``), and the empirical Dice of the base (f) and smoothed (g) segmenter under the
worst attack beside the certified Dice at that budget.

Honest counts: a row and sigma whose stage has no record says ``not run``, one cut short says its status
(``interrupted``, ``failed``, ``running``) with the images it finished, one whose record says complete but
whose folder cannot be read says ``missing``; a budget that tested no pixel says ``not tested``. A count
of 0 is only ever shown beside what it covered (pixels tested and covered, images).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from certframe.study.folder import stage_status

ATTACKS_CSV = "attacks.csv"
COUNTS = ["images", "covered", "tested", "violations", "flips_beyond_claim"]
DICE = ["clean_dice", "base_robust_dice", "smoothed_dice", "smoothed_robust_dice", "certified_dice_at_eps"]
COLUMNS = ["row", "label", "sigma", "status", "images", "attacks", "tau", "norm", "radius_multiple", "eps",
           "covered", "tested", "violations", "flips_beyond_claim", "not_tested", "check", *DICE, "run", "note"]
"""The columns of ``attacks.csv``: one line per (row, sigma, budget); one line with the status alone for a
row and sigma with nothing to report."""



def read_attack_run(path: Path) -> tuple[pd.DataFrame | None, str]:
    """The attack run folder's budgets (:func:`~certframe.attacks.suite.robustness_table` of its finished
    images, ordered as ``run_attack`` orders them), or None and why."""
    from certframe.attacks.suite import robustness_table
    from certframe.run.attack import ATTACK_COLUMNS
    from certframe.run.layout import RunError
    from certframe.run.reading import RunFolderReader

    reader = RunFolderReader(path, required_columns=ATTACK_COLUMNS)
    try:
        reader.manifest()
        df = reader.results(require_complete=False)
    except (RunError, OSError) as err:
        return None, str(err)
    if df.empty:
        return None, f"{path} holds no finished image"
    df = df.sort_values("index", kind="stable").reset_index(drop=True)
    return robustness_table(df), ""


def _beyond(k) -> bool:
    return k is not None and not (isinstance(k, float) and math.isnan(k)) and float(k) > 1


def _count(value) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def check_text(rec: dict) -> str:
    """One budget's check: ``V violations of T tested`` (``F flips beyond the claim of T tested`` at k > 1),
    ``not tested (C covered)`` when no pixel was tested; empty for a row and sigma without results."""
    if rec.get("tested") is None:
        return ""
    if rec["not_tested"]:
        return f"not tested ({rec['covered']} covered)"
    if _beyond(rec["radius_multiple"]):
        return f"{rec['flips_beyond_claim']} flips beyond the claim of {rec['tested']} tested"
    return f"{rec['violations']} violations of {rec['tested']} tested"


def attack_table(study, stages: dict[str, dict]) -> pd.DataFrame | None:
    """One line per (row, sigma, budget) of the study's attack pass (:data:`COLUMNS`); None when the study
    has no ``[attack]`` table. stages: the study's stages by name, each with its ``path`` and ``record``."""
    if study.attack is None:
        return None
    from certframe.study.spec import row_label

    records = []
    for row in study.attack["rows"]:
        for sigma in study.sigmas:
            stage = stages.get(f"attack-{row}-sigma{sigma:g}")
            status = stage_status(stage)
            base = {"row": row, "label": row_label(study, row), "sigma": sigma, "status": status,
                    "run": str(stage["path"]) if stage else "", "note": ""}
            budgets, why = (None, "") if status == "not run" else read_attack_run(stage["path"])
            if budgets is None:
                if status == "complete":
                    base["status"] = "missing"
                records.append({**base, "note": why})
                continue
            for b in budgets.to_dict("records"):
                rec = {**base, "images": int(b["images"]), "attacks": b["attacks"], "tau": b["tau"],
                       "norm": b["norm"], "radius_multiple": b.get("radius_multiple"), "eps": b["eps"],
                       "covered": _count(b["covered"]), "tested": _count(b["tested"]),
                       "violations": _count(b["violations"]), "flips_beyond_claim": _count(b["flips_beyond_claim"]),
                       "not_tested": bool(b["not_tested"]), **{k: b[k] for k in DICE}}
                rec["check"] = check_text(rec)
                records.append(rec)
    table = pd.DataFrame.from_records(records, columns=COLUMNS)
    for col in COUNTS:
        table[col] = table[col].astype("Int64")
    table["not_tested"] = table["not_tested"].astype("boolean")
    for col in ("tau", "radius_multiple", "eps", *DICE):
        table[col] = table[col].astype(float)
    return table


def summary_cell(part: pd.DataFrame) -> str:
    """One row and sigma in a sentence: violations in the tests made at the claim (k <= 1 and fixed budgets)
    with the pixels covered, flips beyond the claim (k > 1), images, attacks; or the status alone."""
    status = part["status"].iloc[0]
    done = part[part["tested"].notna()]
    if done.empty:
        return status
    beyond = done["radius_multiple"].map(_beyond)
    claim, over = done[~beyond], done[beyond]
    tested = claim[~claim["not_tested"].astype(bool)]
    if len(tested):
        text = (f"{int(tested['violations'].sum())} violations in {int(tested['tested'].sum())} tests at the claim, "
                f"of {int(claim['covered'].sum())} covered pixels")
    elif len(claim):
        text = f"not tested at the claim ({int(claim['covered'].sum())} covered)"
    else:
        text = "no budget at the claim"
    over_tested = over[~over["not_tested"].astype(bool)]
    if len(over_tested):
        ks = ", ".join(f"{k:g}" for k in dict.fromkeys(over_tested["radius_multiple"]))
        text += (f"; {int(over_tested['flips_beyond_claim'].sum())} flips in {int(over_tested['tested'].sum())} "
                 f"tests beyond it (k {ks})")
    elif len(over):
        text += "; beyond it not tested"
    attacks = sorted({a for v in done["attacks"] for a in str(v).split(",")})
    images = int(done["images"].max())
    text += f", {images} image{'' if images == 1 else 's'}, attacks {', '.join(attacks)}"
    return text if status == "complete" else f"{text} [{status}]"


def attack_lines(table: pd.DataFrame | None, sigmas) -> list[str]:
    """The attack pass in the report's text: a sentence per row and sigma, then one line per budget."""
    if table is None:
        return ["Attack pass: none requested (the study file has no [attack] table)."]
    head = "| row | " + " | ".join(f"σ {s:g}" for s in sigmas) + " |"
    lines = ["Attack pass (`certframe attack` on the certificates of each row at every sigma, run folders in "
             "attacks/): a violation is a certified pixel shown to change class inside its certified radius "
             "(expected 0 for a correct certificate); tests and covered pixels are summed over the budgets, k "
             "multiplies the certified radius:", "", head, "|" + "---|" * (len(sigmas) + 1)]
    for row, r in table.groupby("row", sort=False):
        cells = {s: summary_cell(p) for s, p in r.groupby("sigma", sort=False)}
        lines.append(f"| {r['label'].iloc[0]} | " + " | ".join(cells.get(s, "not run") for s in sigmas) + " |")
    show = pd.DataFrame({
        "row": table["row"], "sigma": table["sigma"].map(lambda v: f"{v:g}"), "status": table["status"],
        "images": table["images"].astype(object).where(table["images"].notna(), "-"),
        "attacks": table["attacks"].fillna("-"),
        "tau": table["tau"].map(lambda v: "-" if pd.isna(v) else f"{v:g}"), "norm": table["norm"].fillna("-"),
        "k": table["radius_multiple"].map(lambda v: "-" if pd.isna(v) else f"{v:g}"),
        "eps": table["eps"].map(lambda v: "-" if pd.isna(v) else f"{v:.4g}"),
        "check": table["check"].fillna("").replace("", "-"),
        **{name: table[col].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}") for name, col in
           (("f clean", "clean_dice"), ("f att", "base_robust_dice"), ("g clean", "smoothed_dice"),
            ("g att", "smoothed_robust_dice"), ("g cert", "certified_dice_at_eps"))}})
    lines += ["", "Per budget (f: the base segmenter, g: the smoothed one; att: Dice under the worst attack of the "
                  "budget, empirical; g cert: certified Dice at radius >= eps):", show.to_string(index=False)]
    notes = [f"{r['row']} sigma {r['sigma']:g}: {r['status']}: {r['note']}" for r in table.to_dict("records")
             if r["note"]]
    return lines + notes


def html_table(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """``table`` for the HTML page: missing values as empty cells."""
    if table is None:
        return None
    return table.astype(object).where(table.notna(), None)


__all__ = ["ATTACKS_CSV", "COLUMNS", "attack_table", "attack_lines", "check_text", "html_table", "read_attack_run",
           "summary_cell"]
