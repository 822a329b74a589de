"""``certframe certify``: certify every image of a data set, one row per (image, tau).

A thin command: it parses the options (or an experiment file / a run's manifest,
:mod:`certframe.run.config`, with explicit options on top) into validated
:class:`~certframe.run.RunSpec` objects, calls :func:`certframe.run.run_certify_sharded`
for each (one process, or this process's shard under torchrun/SLURM) and prints the
summary table.
"""
from __future__ import annotations

import logging
from pathlib import Path

import click
from click.core import ParameterSource
from rich.console import Console

from certframe.cli.options import acceleration_from_params, acceleration_options, certify_options, parse_options
from certframe.cli.tables import print_summary, print_warnings
from certframe.registry import get_registry
from certframe.run import RunSpec, run_certify_sharded
from certframe.run.build import method_label
from certframe.run.config import apply_overrides, load_experiment, manifest_provenance
from certframe.run.distributed import dist_env
from certframe.run.spec import spec_fields

log = logging.getLogger("certframe.certify")


# click parameter name -> run spec key
_PARAMS = {"dataset_name": "dataset", "segmenter_name": "segmenter", "denoiser_name": "denoiser",
           "certifier_name": "certifier", "sigma": "sigma", "n0": "n0", "n": "n", "alpha": "alpha",
           "taus": "taus", "batch_size": "batch_size", "seed": "seed", "device": "device", "limit": "limit",
           "label": "label", "certificates": "certificates"}
_OPTION_PARAMS = {"dataset_options": "--dataset-option", "segmenter_options": "--segmenter-option",
                  "denoiser_options": "--denoiser-option", "certifier_options": "--certifier-option"}


@click.command("certify")
@certify_options
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("runs/certify"),
              show_default=True, help="Run folder (with --config and several runs: their parent folder).")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Experiment file (TOML; or a run's manifest.json). Explicit options override it.")
@click.option("--from-manifest", "manifest_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Re-run the run a manifest.json describes (same as --config MANIFEST).")
@click.option("--label", default=None, help="Method name in tables and figures.")
@click.option("--certificates/--no-certificates", default=True, show_default=True,
              help="Save each image's certified label map (needed for overlay figures).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --output.")
@click.option("--overwrite", is_flag=True, help="Replace the results in --output.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, table or info logs.")
@acceleration_options
@click.pass_context
def certify(ctx, output, config_path, manifest_path, resume, overwrite, quiet, **params):
    """Certify a segmenter on a data set with randomized smoothing (SegCertify)."""
    if quiet:
        logging.getLogger("certframe").setLevel(logging.WARNING)
    accelerate = acceleration_from_params(params)
    accelerate_given = {key: value for name, key, value in zip(
        ("precision", "channels_last", "compile_model", "prefetch"), list(accelerate), accelerate.values())
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}
    given = {name: ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
             for name in list(params) + ["output"]}
    values = {key: params[name] for name, key in _PARAMS.items()}
    values["taus"] = list(values["taus"])
    for name, hint in _OPTION_PARAMS.items():
        values[name] = parse_options(params[name], hint)
    if config_path and manifest_path:
        raise click.UsageError("give --config or --from-manifest, not both")
    source = config_path or manifest_path
    if source is None:
        runs = [{**values, "output": str(output), "name": output.name}]
    else:
        overrides = {key: values[key] for name, key in _PARAMS.items() if given[name]}
        overrides.update({k: values[k] for k in _OPTION_PARAMS if given[k]})
        runs = load_experiment(source)
        explicit_output = output if given["output"] else None
        if explicit_output is None and any(r["output"] is None for r in runs):
            raise click.UsageError("give --output for the re-run")
        runs = apply_overrides(runs, overrides, explicit_output)
    expect = None
    if manifest_path is not None or (config_path is not None and config_path.suffix == ".json"):
        expect = manifest_provenance(source)
    specs = []
    for run in runs:
        # acceleration: the file's (or manifest's) settings, explicit options on top
        spec_accelerate = run.get("accelerate")
        run = {**run, "accelerate": accelerate if spec_accelerate is None else {**spec_accelerate,
                                                                               **accelerate_given}}
        specs.append((run["name"], Path(run["output"]),
                      RunSpec(**{k: v for k, v in run.items() if k in _SPEC_FIELDS})))
    registry = get_registry()
    console = Console(quiet=quiet)
    rank = dist_env().rank
    for i, (name, out, spec) in enumerate(specs):
        if len(specs) > 1:
            log.info("run %d of %d: %s -> %s", i + 1, len(specs), name, out)
        summary, world = run_certify_sharded(spec, out, resume=resume, overwrite=overwrite, quiet=quiet,
                                             registry=registry, console=console, expect_provenance=expect)
        if rank == 0 and not quiet:
            where = f"{out}" if world == 1 else f"{out}, {world} processes"
            print_summary(summary.assign(method=method_label(spec)), console, title=f"certified Dice ({where})")
            print_warnings(spec.warnings(), console)


_SPEC_FIELDS = set(spec_fields(RunSpec))

__all__ = ["certify_options", "certify"]
