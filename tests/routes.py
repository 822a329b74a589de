"""Drive ``certframe certify`` and ``certframe attack`` on the bundled synthetic data for one model route."""
from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner

from certframe.cli import main


def plugin_args(kind: str, name: str, options: dict) -> list[str]:
    args = [f"--{kind}", name]
    for key, value in options.items():
        args += [f"--{kind}-option", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return args


def certify_cli(out, segmenter: str, options: dict, denoiser: str = "none", denoiser_options: dict | None = None,
                count: int = 2) -> pd.DataFrame:
    """Certify ``count`` synthetic-lung images (64 px, n0 5, n 20) and return results.csv."""
    args = ["certify", "--dataset", "synthetic-lung", "--dataset-option", f"count={count}", "--dataset-option",
            "size=64", *plugin_args("segmenter", segmenter, options),
            *plugin_args("denoiser", denoiser, denoiser_options or {}),
            "-n", "20", "--n0", "5", "--output", str(out), "--device", "cpu", "--quiet", "--prefetch", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == count and rows["certified_dice"].between(0, 1).all()
    assert (rows["num_samples"] == 25).all()
    return rows


def attack_cli(out, segmenter: str, options: dict, denoiser: str = "none",
               denoiser_options: dict | None = None) -> pd.DataFrame:
    """``certframe attack --attack pgdl2 -n 10 --n0 5`` on one synthetic-lung image; returns results.csv."""
    args = ["attack", "--dataset", "synthetic-lung", "--dataset-option", "count=1", "--dataset-option", "size=64",
            *plugin_args("segmenter", segmenter, options), *plugin_args("denoiser", denoiser, denoiser_options or {}),
            "--attack", "pgdl2", "--no-falsify", "-n", "10", "--n0", "5", "--output", str(out), "--device", "cpu",
            "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) >= 1 and set(rows["attack"]) == {"pgdl2"}
    # the attack really moved the input, within its budget
    assert (rows["perturbation_l2"] > 0).all() and (rows["perturbation_l2"] <= rows["eps_l2_bound"] + 1e-5).all()
    return rows
