"""``certframe evaluate denoiser``: PSNR / SSIM of a denoiser per sigma, its t*, trained range, Dice behind it.

A thin command over :func:`certframe.quality.denoiser.denoiser_quality`.
"""
from __future__ import annotations

import math
from pathlib import Path

import click

from certframe.cli.options import device_option, parse_options, plugin_option, seed_option
from certframe.quality.evaluate import run_evaluate_denoiser


def _sigma(ctx, param, values):
    for v in values:
        if not (math.isfinite(v) and v > 0):
            raise click.BadParameter(f"sigma must be a positive finite noise level, got {v}")
    if not values:
        raise click.BadParameter("give at least one --sigma")
    return values



@click.group("evaluate")
def evaluate():
    """Measure a component on its own (denoiser quality)."""


@evaluate.command("denoiser")
@plugin_option("dataset", None, "Data set plugin (its test split by default).")
@plugin_option("denoiser", "ddpm", "Denoiser plugin to measure.")
@click.option("--segmenter", "segmenter_name", default=None,
              help="Optional segmenter plugin: adds its Dice on clean and on denoised images.")
@click.option("--segmenter-option", "segmenter_options", multiple=True, metavar="KEY=VALUE",
              help="Option passed to the segmenter plugin (repeatable).")
@click.option("--sigma", "sigmas", type=float, multiple=True, callback=_sigma, required=True,
              help="Noise std in [0, 1] pixel units (repeatable).")
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Images per forward pass.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None, help="Also write the table as JSON.")
@device_option
@seed_option
def denoiser(dataset_name, dataset_options, denoiser_name, denoiser_options, segmenter_name, segmenter_options,
             sigmas, limit, batch_size, output, device, seed):
    """PSNR and SSIM of D(x + eps) and of x + eps against x per sigma, t*, trained range, Dice."""
    # errors go through the one boundary, certframe.cli.errors
    run_evaluate_denoiser(dataset=dataset_name, dataset_options=parse_options(dataset_options, "--dataset-option"),
                          denoiser=denoiser_name, denoiser_options=parse_options(denoiser_options, "--denoiser-option"),
                          sigmas=sigmas, segmenter=segmenter_name,
                          segmenter_options=parse_options(segmenter_options, "--segmenter-option"),
                          limit=limit, seed=seed, batch_size=batch_size, output=output, device=device)
