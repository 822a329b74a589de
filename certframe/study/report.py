"""The study report: certified Dice per row and sigma with each row's paired bootstrap CI against the
baseline, the denoiser's quality, each row's training cost, the attack pass (when the study has an
``[attack]`` table: :mod:`certframe.study.attack_report`), a figure of certified Dice against sigma,
written as text, CSV and a self-contained HTML page (``certframe report STUDY_FOLDER`` writes it too).

Everything is read from the study folder: ``study.json``, the stage records beside the outputs
(:mod:`certframe.study.folder`), the run folders' ``results.csv``, the attack run folders and
``quality/denoiser.json``. A row whose run is missing or unfinished is reported as such ("not run",
"interrupted", "failed"), never left out.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from certframe.files import atomic_write
from certframe.study.attack_report import ATTACKS_CSV, attack_lines, attack_table, html_table
from certframe.study.bootstrap import paired_bootstrap_ci
from certframe.study.folder import read_manifest, read_stamp, stage_status
from certframe.study.spec import StudyError, parse_study

REPORT_DIR = "report"


def _study(folder: Path, manifest: dict):
    import tomllib

    source = manifest["source"]
    return parse_study(tomllib.loads(source["text"]), source["path"], Path(source["path"]).stem)


def _stages(folder: Path, manifest: dict) -> dict[str, dict]:
    out = {}
    for s in manifest["stages"]:
        out[s["name"]] = {**s, "path": folder / s["output"], "record": read_stamp(folder / s["output"])}
    return out



def per_image(run: Path) -> pd.DataFrame | None:
    """The run folder's rows (every tau), or None when it holds none."""
    from certframe.run.folder import RunFolder

    if not (run / "results.csv").is_file():
        return None
    try:
        return RunFolder(run).results(require_complete=False)
    except (ValueError, OSError):
        return None


def study_table(folder: Path) -> tuple[pd.DataFrame, dict]:
    """One row per (row, sigma, tau): certified Dice mean and std over images, abstain rate, clean Dice, images,
    status, and the difference to the baseline row with its paired bootstrap CI; and the study's manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise StudyError(f"{str(folder)!r} holds no study (no study.json)")
    study = _study(folder, manifest)
    stages = _stages(folder, manifest)
    from certframe.study.spec import row_label

    frames = {}
    for row in study.rows:
        for sigma in study.sigmas:
            stage = stages.get(f"certify-{row}-sigma{sigma:g}")
            df = per_image(stage["path"]) if stage else None
            status = stage_status(stage)
            if status == "complete" and (df is None or not len(df)):
                status = "missing"  # recorded complete, but its run folder is gone or unreadable: never a number
            frames[(row, sigma)] = (df, status)
    boot = study.bootstrap
    records = []
    for row in study.rows:
        for sigma in study.sigmas:
            df, status = frames[(row, sigma)]
            base, _ = frames[(study.baseline, sigma)]
            for tau in study.certify["taus"]:
                rec = {"row": row, "label": row_label(study, row), "sigma": sigma, "tau": tau, "status": status,
                       "certified_dice": np.nan, "certified_dice_std": np.nan, "abstain_rate": np.nan,
                       "clean_dice": np.nan, "images": 0, "diff": np.nan, "ci_low": np.nan, "ci_high": np.nan}
                if df is not None and len(df):
                    d = df[df["tau"] == tau]
                    rec.update(certified_dice=float(d["certified_dice"].mean()),
                               certified_dice_std=float(d["certified_dice"].std(ddof=0)),
                               abstain_rate=float(d["abstain_rate"].mean()), clean_dice=float(d["clean_dice"].mean()),
                               images=int(len(d)), radius=float(d["radius"].iloc[0]))
                    if row != study.baseline and base is not None and len(base):
                        b = base[base["tau"] == tau][["image_id", "certified_dice"]]
                        pair = d[["image_id", "certified_dice"]].merge(b, on="image_id", suffixes=("", "_base"))
                        if len(pair):
                            diff, lo, hi = paired_bootstrap_ci(pair["certified_dice"], pair["certified_dice_base"],
                                                               n_boot=boot["n_boot"], level=boot["level"],
                                                               seed=boot["seed"])
                            rec.update(diff=diff, ci_low=lo, ci_high=hi, paired_images=int(len(pair)))
                records.append(rec)
    return pd.DataFrame.from_records(records), manifest


def quality_table(folder: Path) -> pd.DataFrame | None:
    path = Path(folder) / "quality" / "denoiser.json"
    if not path.is_file():
        return None
    return pd.DataFrame.from_records(json.loads(path.read_text())["rows"])


def cost_table(folder: Path) -> pd.DataFrame:
    """Per row: the models it uses (every training stage upstream of its runs), their summed wall and CPU
    seconds and the devices they ran on; the certification runs' own seconds, and the attack runs' (NaN, printed
    as such, for a row the study does not attack)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    study = _study(folder, manifest)
    stages = _stages(folder, manifest)
    from certframe.study.spec import row_label

    def upstream(name: str, seen: set) -> set:
        for n in stages[name]["inputs"]:
            if n not in seen:
                seen.add(n)
                upstream(n, seen)
        return seen

    out = []
    for row in study.rows:
        runs = [f"certify-{row}-sigma{s:g}" for s in study.sigmas if f"certify-{row}-sigma{s:g}" in stages]
        models = sorted(set().union(*(upstream(r, set()) for r in runs)) if runs else set())
        trained = [stages[m]["record"] or {} for m in models]
        certified = [stages[r]["record"] or {} for r in runs]
        attacked = [stages[a]["record"] or {} for s in study.sigmas if (a := f"attack-{row}-sigma{s:g}") in stages]
        devices = sorted({r.get("device") for r in trained + certified + attacked if r.get("device")})
        missing = [m for m, r in zip(models, trained) if r.get("status") != "complete"]
        out.append({"row": row, "label": row_label(study, row), "models": ", ".join(models) or "-",
                    "train_seconds": sum(r.get("seconds", 0.0) for r in trained),
                    "train_cpu_seconds": sum(r.get("cpu_seconds", 0.0) for r in trained),
                    "certify_seconds": sum(r.get("seconds", 0.0) for r in certified),
                    "attack_seconds": sum(r.get("seconds", 0.0) for r in attacked) if attacked else np.nan,
                    "device": ", ".join(devices) or "-",
                    "note": f"not complete: {', '.join(missing)}" if missing else ""})
    return pd.DataFrame.from_records(out)


def _cell(rec: dict) -> str:
    if rec["images"] == 0:
        return rec["status"]
    text = f"{rec['certified_dice']:.3f} ± {rec['certified_dice_std']:.3f} (abstain {rec['abstain_rate']:.3f}, " \
           f"clean {rec['clean_dice']:.3f})"
    return text if rec["status"] == "complete" else f"{text} [{rec['status']}]"


def table_lines(table: pd.DataFrame, manifest: dict, bootstrap: dict) -> list[str]:
    """The study table as Markdown: one line per row, one column per sigma; then each row minus the baseline."""
    sigmas = list(dict.fromkeys(table["sigma"]))
    lines = []
    for tau, t in table.groupby("tau", sort=False):
        head = "| row | " + " | ".join(f"σ {s:g}" for s in sigmas) + " |"
        lines += [f"Certified Dice ± std over images (abstain rate, clean Dice), tau {tau:g}:", "", head,
                  "|" + "---|" * (len(sigmas) + 1)]
        baseline = manifest["baseline"]
        base_label = t[t["row"] == baseline]["label"].iloc[0]
        for row, r in t.groupby("row", sort=False):
            cells = {rec["sigma"]: _cell(rec) for rec in r.to_dict("records")}
            lines.append(f"| {r['label'].iloc[0]} | " + " | ".join(cells[s] for s in sigmas) + " |")
        level = round(100 * bootstrap["level"])
        for row, r in t.groupby("row", sort=False):
            if row == baseline:
                continue
            cells = {}
            for rec in r.to_dict("records"):
                cells[rec["sigma"]] = ("-" if np.isnan(rec["diff"]) else
                                       f"{rec['diff']:+.3f} [{rec['ci_low']:+.3f}, {rec['ci_high']:+.3f}]")
            lines.append(f"| {r['label'].iloc[0]} minus {base_label}, paired bootstrap {level} % CI | "
                         + " | ".join(cells[s] for s in sigmas) + " |")
        lines.append("")
    lines.append(f"Paired bootstrap over images (pairs kept together): {bootstrap['n_boot']} resamples, seed "
                 f"{bootstrap['seed']}; it covers the variation over test images only, not between training runs.")
    return lines


def dice_figure(table: pd.DataFrame):
    """Certified Dice (mean ± std over images) against sigma, one line per row (first tau)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    t = table[table["tau"] == table["tau"].iloc[0]]
    for row, r in t.groupby("row", sort=False):
        r = r[r["images"] > 0]
        if len(r):
            ax.errorbar(r["sigma"], r["certified_dice"], yerr=r["certified_dice_std"], marker="o", capsize=3,
                        label=r["label"].iloc[0])
    ax.set_xlabel("σ (noise std, [0, 1] pixel units)")
    ax.set_ylabel("certified Dice")
    ax.set_ylim(0, 1)
    ax.set_title(f"certified Dice against σ (τ {t['tau'].iloc[0]:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _html(title: str, lines: list[str], tables: dict[str, pd.DataFrame], png: bytes) -> str:
    from certframe.report.html import table_html

    style = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}"
             "table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ccc;"
             "padding:3px 7px;text-align:right}th{background:#f0f0f0}td.text{text-align:left}"
             "pre{font-size:.85em;background:#f8f8f8;padding:.6em}img{max-width:100%}")
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<pre>{html.escape(chr(10).join(lines))}</pre>"]
    for name, df in tables.items():
        if df is not None and len(df):
            parts += [f"<h2>{html.escape(name)}</h2>", table_html(df, name.replace(' ', '-'))]
    parts.append(f'<h2>Figure</h2><img alt="certified Dice against sigma" '
                 f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_study_report(folder: str | Path, output: str | Path | None = None) -> tuple[pd.DataFrame, list[str],
                                                                                      list[Path]]:
    """Write the study report of ``folder`` to ``output`` (default ``folder/report``); returns the table, the
    text lines (also printed by the command) and the files written."""
    from certframe.report.figures import png_bytes

    folder = Path(folder)
    table, manifest = study_table(folder)
    study = _study(folder, manifest)
    quality, cost = quality_table(folder), cost_table(folder)
    lines = [f"{manifest['title']} (study {manifest['name']}, {folder})", ""]
    lines += table_lines(table, manifest, study.bootstrap)
    if quality is not None:
        cols = [c for c in ("sigma", "images", "t_star", "trained_t_max", "in_range", "psnr_noisy", "psnr_denoised",
                            "ssim_noisy", "ssim_denoised", "dice_clean", "dice_denoised") if c in quality.columns]
        lines += ["", "Denoiser quality (PSNR dB / SSIM of D(x + eps) against x; the clean segmenter's Dice on clean "
                      "and denoised images):", quality[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    elif "quality" in _stages(folder, manifest):
        lines += ["", f"Denoiser quality: {stage_status(_stages(folder, manifest)['quality'])}"]
    else:
        lines += ["", "Denoiser quality: none requested (no row of the study uses a denoiser)"]
    lines += ["", "Training cost per row (every model the row uses; wall and CPU seconds summed over resumes):",
              cost.to_string(index=False, float_format=lambda v: f"{v:.1f}")]
    attacks = attack_table(study, _stages(folder, manifest))
    lines += [""] + attack_lines(attacks, study.sigmas)
    out = Path(output) if output is not None else folder / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    png = png_bytes(dice_figure(table))
    files = [("table.csv", table.to_csv(index=False))]
    if attacks is not None:
        files.append((ATTACKS_CSV, attacks.to_csv(index=False)))
    else:  # no attack pass: an attacks.csv left by an earlier report of this study would contradict the text
        (out / ATTACKS_CSV).unlink(missing_ok=True)
    files += [("report.txt", "\n".join(lines) + "\n"), ("dice_vs_sigma.png", png),
              ("report.html", _html(manifest["title"], lines, {"certified Dice": table, "denoiser quality": quality,
                                                               "training cost": cost,
                                                               "attack pass": html_table(attacks)}, png))]
    written = []
    for name, data in files:
        atomic_write(out / name, data)
        written.append(out / name)
    return table, lines, written
