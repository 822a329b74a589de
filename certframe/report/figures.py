"""Figures of certification results (matplotlib, Agg canvas: no display, no global pyplot state).

* :func:`dice_vs_radius`   certified Dice (mean +- std over images) against the
  certified radius R = sigma * Phi^-1(tau), one line per method: the standard figure
  of randomized-smoothing papers (Cohen et al. 2019; Fischer et al. 2021; Laousy et
  al. 2023), with each method's runs at several sigmas joined into one curve.
* :func:`abstain_vs_radius` the mean abstain rate against the radius, per method.
* :func:`empirical_vs_certified_radius` per attacked pixel of a falsification test
  (:mod:`certframe.attacks.falsification`): the smallest flipping L2 norm an attack found
  against the certified radius, with the line y = x (points below it are claims an
  attack contradicts).
* :func:`overlays`          per image: the image, its ground truth, the base
  segmenter's clean prediction and the certified prediction at each tau, with
  abstained pixels in red (read from the run's ``certificates/*.npz``); a volume as one
  slice per axis through the centre of its foreground (:func:`representative_slices`).
  A hierarchical run (its certificates hold ``levels``) gets one more panel per tau: each
  pixel coloured by the level it is certified at (fine, then coarser groups; abstain red).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

ABSTAIN_COLOR = "#e31a1c"
_CLASS_COLORS = ["#1f78b4", "#33a02c", "#ff7f00", "#6a3d9a", "#b15928", "#a6cee3", "#b2df8a", "#fdbf6f"]
LEVEL_COLORS = ["#1a9850", "#fee08b", "#f46d43", "#762a83", "#4393c3"]
"""Level 0 (fine classes) green, then the coarser levels; abstain is :data:`ABSTAIN_COLOR`."""


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(png_bytes(fig))
    return path


def _curve_figure(table: pd.DataFrame, value: str, std: str | None, ylabel: str, title: str) -> Figure:
    datasets = sorted(table["dataset"].unique())
    fig = _new_figure(5.5 * len(datasets), 4.2)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, ds in zip(axes, datasets):
        part = table[table["dataset"] == ds]
        for (method, certifier), g in part.groupby(["method", "certifier"], sort=True):
            g = g.sort_values("radius")
            name = method if part["certifier"].nunique() == 1 else f"{method} [{certifier}]"
            line, = ax.plot(g["radius"], g[value], marker="o", label=name)
            if std is not None:
                ax.fill_between(g["radius"], (g[value] - g[std]).clip(0, 1), (g[value] + g[std]).clip(0, 1),
                                color=line.get_color(), alpha=0.15, linewidth=0)
            for _, r in g.iterrows():
                ax.annotate(f"σ={r['sigma']:g}", (r["radius"], r[value]), textcoords="offset points",
                            xytext=(3, 4), fontsize=7, color=line.get_color())
        ax.set_xlabel("certified radius R = σ·Φ⁻¹(τ)  (L2, [0,1] pixel units)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.set_title(f"{title}: {ds}" if len(datasets) > 1 or ds else title, fontsize=10)
        ax.legend(fontsize=8)
    return fig


def dice_vs_radius(table: pd.DataFrame) -> Figure:
    """Certified Dice (mean, band = +-std over images) against the radius, one line per method.

    table: :func:`certframe.report.report.comparison_table`.
    """
    return _curve_figure(table, "certified_dice", "certified_dice_std", "certified Dice", "certified Dice")


def abstain_vs_radius(table: pd.DataFrame) -> Figure:
    """Mean abstain rate (fraction of pixels without certificate) against the radius."""
    return _curve_figure(table, "abstain_rate", None, "abstain rate", "abstain rate")


def empirical_vs_certified_radius(pixels: pd.DataFrame) -> Figure:
    """Scatter of ``empirical_radius`` (y) against ``certified_radius`` (x), one colour per ``method``.

    pixels: rows of :meth:`certframe.attacks.falsification.FalsificationResult.pixel_rows`
    (columns ``certified_radius``, ``empirical_radius``, ``empirical_upper``, ``method``,
    optional ``rejected``). A pixel no attack flipped within its search budget
    (``empirical_radius`` NaN) is drawn as an open triangle at ``empirical_upper``: its
    empirical radius is at least that. Pixels the sound test rejected are ringed in red.
    """
    missing = {"certified_radius", "empirical_radius", "empirical_upper", "method"} - set(pixels.columns)
    if missing:
        raise ValueError(f"pixel rows lack the column(s) {sorted(missing)}; expected the rows of "
                         f"FalsificationResult.pixel_rows()")
    if pixels.empty:
        raise ValueError("no attacked pixel to plot (every certificate was 'not tested')")
    fig = _new_figure(5.2, 4.6)
    ax = fig.subplots()
    top = float(np.nanmax(np.concatenate([pixels["certified_radius"].to_numpy(float),
                                          pixels["empirical_radius"].to_numpy(float),
                                          pixels["empirical_upper"].to_numpy(float)])))
    top = top * 1.05 if np.isfinite(top) and top > 0 else 1.0
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="y = x")
    ringed = False
    for i, (method, g) in enumerate(pixels.groupby("method", sort=True)):
        color = _CLASS_COLORS[i % len(_CLASS_COLORS)]
        found = g["empirical_radius"].notna()
        ax.scatter(g.loc[found, "certified_radius"], g.loc[found, "empirical_radius"], s=18, color=color,
                   label=f"{method}: flip found")
        if (~found).any():
            ax.scatter(g.loc[~found, "certified_radius"], g.loc[~found, "empirical_upper"], s=22, marker="^",
                       facecolors="none", edgecolors=color, label=f"{method}: none within search (≥)")
        if "rejected" in g.columns and g["rejected"].astype(bool).any():
            r = g[g["rejected"].astype(bool) & found]
            ax.scatter(r["certified_radius"], r["empirical_radius"], s=70, facecolors="none",
                       edgecolors=ABSTAIN_COLOR, linewidths=1.2,
                       label=None if ringed else "rejected by the test at x' (p < 1/2)")
            ringed = True
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("certified radius (L2, [0,1] pixel units)")
    ax.set_ylabel("empirical radius: smallest flipping L2 norm found")
    ax.set_title("empirical vs certified radius per attacked pixel", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _colorize(base: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """RGB ``[H, W, 3]``: ``base`` grey/RGB image with classes >= 1 blended in and ABSTAIN in red."""
    out = base.copy()
    for c in range(1, num_classes):
        m = labels == c
        out[m] = 0.45 * out[m] + 0.55 * np.array(to_rgb(_CLASS_COLORS[(c - 1) % len(_CLASS_COLORS)]))
    out[labels < 0] = to_rgb(ABSTAIN_COLOR)
    return out


def _colorize_levels(base: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """RGB ``[H, W, 3]``: ``base`` with each pixel blended in the colour of its certified level
    (:data:`LEVEL_COLORS`), abstained pixels (-1) in red."""
    out = base.copy()
    for level in range(int(levels.max()) + 1 if levels.size else 0):
        m = levels == level
        out[m] = 0.35 * out[m] + 0.65 * np.array(to_rgb(LEVEL_COLORS[level % len(LEVEL_COLORS)]))
    out[levels < 0] = to_rgb(ABSTAIN_COLOR)
    return out


def representative_slices(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(axis, index)]`` for a volume's mask ``[D, H, W]``: per axis (0 = D, 1 = H, 2 = W) the
    slice through the centre of the foreground (the mean position of the labels > 0, rounded),
    or the middle slice when the volume has no foreground."""
    mask = np.asarray(mask)
    where = np.argwhere(mask > 0)
    centre = (where.mean(axis=0) if len(where) else (np.asarray(mask.shape) - 1) / 2)
    return [(axis, int(min(max(round(float(centre[axis])), 0), mask.shape[axis] - 1))) for axis in range(mask.ndim)]


def _overlay_rows(cert: dict, name: str) -> list[tuple[str, dict]]:
    """The rows of the overlay figure for one saved certificate: ``(row label, 2-D maps)``.

    An image gives one row; a volume (``image [C, D, H, W]``) one row per axis at its
    :func:`representative_slices`. Maps: image ``[C, h, w]``, mask / clean ``[h, w]``,
    labels ``[T, h, w]`` (and levels ``[T, h, w]`` for a hierarchical run).
    """
    if cert["image"].ndim == 3:
        return [(name, cert)]
    rows = []
    for axis, index in representative_slices(cert["mask"]):
        maps = {"image": np.take(cert["image"], index, axis=axis + 1),
                "mask": np.take(cert["mask"], index, axis=axis),
                "clean": np.take(cert["clean"], index, axis=axis),
                "labels": np.take(cert["labels"], index, axis=axis + 1)}
        if "levels" in cert:
            maps["levels"] = np.take(cert["levels"], index, axis=axis + 1)
        rows.append((f"{name}\n{'DHW'[axis]} = {index}", maps))
    return rows


def overlays(run, n_images: int = 4) -> Figure:
    """Rows: the first ``n_images`` images (by index) of ``run`` (a loaded
    :class:`~certframe.report.report.Run`); columns: image, ground truth, clean
    prediction, certified prediction per tau (abstained pixels red), and for a hierarchical run
    the certified level per tau (:func:`_colorize_levels`).

    A volume takes three rows: one slice per axis (D, H, W), each through the centre of
    the volume's foreground (the middle slice when it has none;
    :func:`representative_slices`); the abstain rate under a certified slice is the
    slice's, the volume's own is in the results table."""
    indices = sorted(run.results["index"].unique())[:max(1, int(n_images))]
    certs = [run.folder.certificate(i) for i in indices]
    taus = certs[0]["taus"]
    num_classes = max(len(run.class_names),
                      int(max(max(c["mask"].max(), c["clean"].max(), c["labels"].max()) for c in certs)) + 1)
    ids = run.results.drop_duplicates("index").set_index("index")["image_id"]
    rows = [row for index, cert in zip(indices, certs) for row in _overlay_rows(cert, str(ids.get(index, index)))]
    hierarchical = all("levels" in cert for cert in certs)
    cols = 3 + len(taus) * (2 if hierarchical else 1)
    fig = _new_figure(2.1 * cols, 2.1 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    titles = ["image", "ground truth", "clean prediction"] + [f"certified τ={t:g}" for t in taus]
    if hierarchical:
        titles += [f"certified level τ={t:g}" for t in taus]
    for row, (name, cert) in enumerate(rows):
        image = cert["image"].astype(np.float32) / 255.0
        base = np.repeat(image[0][..., None], 3, axis=2) if image.shape[0] == 1 else image[:3].transpose(1, 2, 0)
        panels = [base, _colorize(base, cert["mask"], num_classes), _colorize(base, cert["clean"], num_classes)]
        for t in range(len(taus)):
            panels.append(_colorize(base, cert["labels"][t], num_classes))
        if hierarchical:
            panels += [_colorize_levels(base, cert["levels"][t]) for t in range(len(taus))]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(np.clip(panel, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
            if col == 0:
                ax.set_ylabel(name, fontsize=7)
        for t in range(len(taus)):
            rate = float((cert["labels"][t] < 0).mean())
            axes[row, 3 + t].set_xlabel(f"{'not fine' if hierarchical else 'abstain'} {rate:.1%}", fontsize=7)
            if hierarchical:
                rate = float((cert["levels"][t] < 0).mean())
                axes[row, 3 + len(taus) + t].set_xlabel(f"abstain {rate:.1%}", fontsize=7)
    handles = [Patch(color=_CLASS_COLORS[(c - 1) % len(_CLASS_COLORS)],
                     label=run.class_names[c] if c < len(run.class_names) else f"class {c}")
               for c in range(1, num_classes)] + [Patch(color=ABSTAIN_COLOR, label="abstain")]
    if hierarchical:
        top = max(int(cert["levels"].max()) for cert in certs)
        handles += [Patch(color=LEVEL_COLORS[level % len(LEVEL_COLORS)],
                          label="level 0 (fine)" if level == 0 else f"level {level}") for level in range(top + 1)]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(f"{run.method}, σ={run.config.get('sigma'):g}", fontsize=9)
    return fig


def all_figures(runs: Sequence, table: pd.DataFrame, overlay_images: int = 4) -> dict[str, Figure]:
    """``{file name: figure}`` for a report: the two curves and one overlay figure per run
    that saved certificates."""
    figs = {"certified_dice_vs_radius.png": dice_vs_radius(table),
            "abstain_rate_vs_radius.png": abstain_vs_radius(table)}
    if overlay_images > 0:
        for i, run in enumerate(runs):
            first = int(run.results["index"].min())
            if run.folder.certificate_path(first).exists():
                safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run.method)
                figs[f"overlays-{i:02d}-{safe}-sigma{run.config.get('sigma'):g}.png"] = overlays(run, overlay_images)
    return figs
