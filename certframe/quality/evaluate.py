"""Measure a denoiser on a data set: the library behind ``certframe evaluate denoiser``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from certframe.registry import get_registry
from certframe.validation import OptionError, check_int, check_seed, require_images, resolve_device


def _cell(value, fmt: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else fmt.format(value)
    return str(value)


def run_evaluate_denoiser(*, dataset: str, dataset_options: dict, denoiser: str, denoiser_options: dict,
                          sigmas, segmenter: str | None = None, segmenter_options: dict | None = None,
                          limit: int | None = None, seed: int = 0, batch_size: int = 8, output: Path | None = None,
                          device: str = "auto", registry=None, console=None):
    """Check every option, build the plugins, measure (:func:`denoiser_quality`) on ``device``, print a table,
    optionally write JSON; returns the table.

    The options are checked before any plugin is built: output a ``.json`` path (not a folder),
    limit and batch_size integers >= 1, seed an int in [0, 2**64), device auto, cpu, cuda or cuda:N.
    """
    from certframe.quality.denoiser import denoiser_quality, quality_records

    registry = registry or get_registry()
    console = console or Console()
    if output is not None and Path(output).suffix != ".json":
        raise ValueError(f"--output must be a .json file, got {str(output)!r}")
    if output is not None and Path(output).is_dir():
        raise OptionError(f"--output {str(output)!r} is an existing folder; a .json file path is expected")
    if limit is not None:
        check_int("--limit", limit, 1, meaning="the number of images")
    check_int("--batch-size", batch_size, 1, meaning="images per forward pass")
    check_seed(seed, "--seed")
    dev = resolve_device(device)
    data = registry.create("dataset", dataset, **dataset_options)
    require_images(data, "certframe evaluate denoiser measures denoisers (PSNR / SSIM)", dataset)
    den = registry.create("denoiser", denoiser, **denoiser_options).to(dev).eval()
    seg = registry.create("segmenter", segmenter, **(segmenter_options or {})).to(dev).eval() if segmenter else None
    table = denoiser_quality(den, data, sigmas, segmenter=seg, limit=limit, seed=seed, batch_size=batch_size)
    view = Table(title=f"denoiser {denoiser} on {dataset} ({int(table['images'].iloc[0])} images, seed {seed}, "
                       f"{dev})")
    columns = [("sigma", "sigma", "{:g}"), ("t*", "t_star", "{}"), ("trained", "in_range", "{}"),
               ("max sigma", "max_sigma", "{:.3f}"), ("PSNR noisy", "psnr_noisy", "{:.2f}"),
               ("PSNR denoised", "psnr_denoised", "{:.2f}"), ("SSIM noisy", "ssim_noisy", "{:.3f}"),
               ("SSIM denoised", "ssim_denoised", "{:.3f}")]
    if seg is not None:
        columns += [("Dice clean", "dice_clean", "{:.3f}"), ("Dice denoised", "dice_denoised", "{:.3f}")]
    for title, _, _ in columns:
        view.add_column(title, justify="right")
    for row in table.to_dict("records"):
        view.add_row(*[_cell(row[key], fmt) for _, key, fmt in columns])
    console.print(view)
    console.print("PSNR in dB against the clean image; the noisy input is clipped to [0, 1]; trained: whether t* "
                  "lies in the timesteps the model was trained on (- : not recorded)")
    for row in table.to_dict("records"):
        if row["note"]:
            console.print(f"[yellow]sigma {row['sigma']:g}: refused: {row['note']}[/yellow]")
    if output is not None:
        record = {"dataset": dataset, "dataset_options": dataset_options, "denoiser": denoiser,
                  "denoiser_options": denoiser_options, "segmenter": segmenter,
                  "segmenter_options": segmenter_options or {}, "seed": seed, "limit": limit, "device": str(dev),
                  "rows": quality_records(table)}
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(record, indent=2) + "\n")
        console.print(f"wrote {output}")
    return table
