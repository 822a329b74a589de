"""``certframe demo``: the main job on the built-in default, in about a minute on 2 CPU cores.

Certifies the bundled segmenters on the built-in synthetic chest X-ray data
(synthetic-lung, 64x64): a clean-trained UNet, a Gaussian-trained UNet
(sigma 0.25), and the clean UNet behind the bundled DDPM (``ddpm-synthetic-lung``)
as a one-shot denoiser and as a 2-step DDIM denoiser, each as the base of a
smoothed segmenter at sigma 0.25, with SegCertify (n0=10, n=100, alpha=0.001,
tau=0.75). The methods are listed in ``DEMO_METHODS``.
"""
from __future__ import annotations

from pathlib import Path

import click
import pandas as pd
from rich.console import Console

from certframe.cli.options import device_option, seed_option
from certframe.cli.tables import print_summary
from certframe.registry import get_registry
from certframe.run import RunSpec, run_certify

# label -> (segmenter options, denoiser name, denoiser options)
DEMO_METHODS: dict[str, tuple[dict, str, dict]] = {
    "clean UNet": ({"weights": "synthetic-lung"}, "none", {}),
    "Gaussian-trained UNet": ({"weights": "synthetic-lung-noise0.25"}, "none", {}),
    "clean UNet + DDPM": ({"weights": "synthetic-lung"}, "ddpm", {"model": "ddpm-synthetic-lung"}),
    "clean UNet + DDIM (2 steps)": ({"weights": "synthetic-lung"}, "ddim",
                                    {"model": "ddpm-synthetic-lung", "steps": 2}),
}


@click.command("demo")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--images", type=int, default=8, show_default=True, help="Synthetic test images.")
@click.option("--sigma", type=float, default=0.25, show_default=True)
@click.option("-n", "--n", "n", type=int, default=100, show_default=True)
@seed_option
@device_option
@click.option("--quiet", "-q", is_flag=True)
def demo(output, images, sigma, n, seed, device, quiet):
    """Certify the bundled models on built-in synthetic data and compare them."""
    console = Console(quiet=quiet)
    registry = get_registry()
    frames = []
    for i, (label, (seg_opts, den, den_opts)) in enumerate(DEMO_METHODS.items()):
        if den not in registry.names("denoiser"):
            continue
        console.print(f"[bold]{label}[/] (denoiser: {den})")
        spec = RunSpec(dataset="synthetic-lung", dataset_options={"count": images, "size": 64},
                       segmenter="monai", segmenter_options=seg_opts, denoiser=den, denoiser_options=den_opts,
                       certifier="segcertify", sigma=sigma, n0=10, n=n, alpha=0.001, taus=(0.75,),
                       batch_size=50, seed=seed, device=device, label=label)
        summary = run_certify(spec, output / f"{i}-{den}", overwrite=True, quiet=True, registry=registry,
                              console=console)
        summary.insert(0, "method", label)
        frames.append(summary)
    print_summary(pd.concat(frames, ignore_index=True).assign(segmenter=lambda d: d["method"]), console,
                  title="certframe demo: certified Dice")
    console.print(f"run folders under {output}/")
