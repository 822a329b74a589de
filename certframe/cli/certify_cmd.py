"""``certframe certify``: certify every image of a data set, one row per (image, tau).

``run_certify`` is the library function behind it (also used by ``demo``): it builds
the plugins, writes a run folder (:mod:`certframe.runs`) as images finish, and
resumes an interrupted run. ``--config`` runs every run of an experiment file
(:mod:`certframe.config`); options given explicitly on the command line override it.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

import click
from click.core import ParameterSource
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from certframe.accelerate import Acceleration
from certframe.cli.options import BATCH_SIZE, acceleration_from_params, acceleration_options
from certframe.cli.options import device_option, parse_options, plugin_option, seed_option
from certframe.distributed import sharded
from certframe.config import DEFAULTS, ConfigError, apply_overrides, load_experiment
from certframe.engine import Names, certify_dataset, resolve_device
from certframe.registry import PluginError, get_registry
from certframe.runs import FORMAT, RunError, RunFolder, _now, dataset_identity, jsonable, package_versions
from certframe.runs import resolved_options, summarize

log = logging.getLogger("certframe.certify")


def run_certify(*, dataset: str, dataset_options: dict, segmenter: str, segmenter_options: dict,
                denoiser: str, denoiser_options: dict, certifier: str, certifier_options: dict,
                sigma: float, n0: int, n: int, alpha: float, taus: Sequence[float], batch_size: int,
                seed: int, device: str, output: Path, resume: bool = False, overwrite: bool = False,
                quiet: bool = False, limit: int | None = None, registry=None, console=None,
                label: str | None = None, indices: Sequence[int] | None = None, certificates: bool = True,
                show_summary: bool = True, accelerate: dict | None = None):
    """Build the plugins, certify, write the run folder ``output``; return the summary DataFrame.

    indices: certify only these data set indices (default: all, or the first ``limit``);
        a caller sharding a data set over workers passes each its share. The run is
        finished (sorted results, Parquet, summary.json, status "complete") only once
        every image is done.
    certificates: save each image's label maps under ``output/certificates/`` (for
        overlays in reports).
    label: the method's name in reports (default: segmenter, weights and denoiser).
    accelerate: options of :class:`certframe.accelerate.Acceleration` (precision,
        channels_last, compile, prefetch); None = plain fp32 without prefetching.
    Returns the summary (see :func:`certframe.runs.summarize`) of the rows done so far.
    """
    registry = registry or get_registry()
    console = console or Console(quiet=quiet)
    taus = [float(t) for t in taus]
    options = {"dataset": dataset_options, "segmenter": segmenter_options, "denoiser": denoiser_options,
               "certifier": certifier_options}
    names_ = {"dataset": dataset, "segmenter": segmenter, "denoiser": denoiser, "certifier": certifier}
    config = {"dataset": dataset, "dataset_options": dataset_options, "segmenter": segmenter,
              "segmenter_options": segmenter_options, "denoiser": denoiser,
              "denoiser_options": denoiser_options, "certifier": certifier,
              "certifier_options": certifier_options, "sigma": float(sigma), "n0": int(n0), "n": int(n),
              "alpha": float(alpha), "taus": taus, "seed": int(seed), "limit": limit}
    built = {kind: registry.create(kind, names_[kind], **options[kind]) for kind in names_}
    data, seg, den, cert = built["dataset"], built["segmenter"], built["denoiser"], built["certifier"]
    plugins = {}
    for kind, name in names_.items():
        entry = registry.get(kind, name)
        plugins[kind] = {"name": name, "options": resolved_options(entry, options[kind]),
                         "distribution": entry.distribution, "version": entry.version, "plugin": entry.plugin}
    label = label or _method_label(segmenter, segmenter_options, denoiser)
    manifest = {"format": FORMAT, "label": label, "config": jsonable(config),
                "execution": {"batch_size": batch_size if batch_size == "auto" else int(batch_size),
                              "device": str(device), "certificates": bool(certificates),
                              "accelerate": None if accelerate is None else
                              Acceleration(**accelerate).resolve(resolve_device(device)).as_dict()},
                "device": str(resolve_device(device)), "plugins": plugins,
                "correction": plugins["certifier"]["options"].get("correction"),
                "dataset": dataset_identity(data), "classes": list(data.class_names),
                "versions": package_versions(),
                "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "created": _now()}
    run = RunFolder(output)
    done = run.start(manifest, resume=resume, overwrite=overwrite)
    total = len(data) if limit is None else min(int(limit), len(data))
    wanted = list(range(total)) if indices is None else [int(i) for i in indices]
    bad = [i for i in wanted if not 0 <= i < total]
    if bad:
        raise ValueError(f"indices {bad[:5]} are outside the data set's range 0..{total - 1}")
    todo = [i for i in wanted if i not in done]
    if done:
        log.info("resuming %s: %d of %d images already done", output, len(wanted) - len(todo), len(wanted))
    names = Names(segmenter=_label(segmenter, segmenter_options), denoiser=denoiser, certifier=cert.name)

    def on_certificates(index, sample, certs, clean):
        if certificates:
            run.save_certificate(index, labels=[c.labels.cpu().numpy() for c in certs],
                                 taus=[c.tau for c in certs], mask=sample.mask.numpy(), clean=clean.numpy(),
                                 image=sample.image.cpu().numpy())

    with Progress(TextColumn(f"certify {label} sigma={sigma:g}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, disable=quiet, transient=False) as progress:
        task = progress.add_task("certify", total=len(wanted), completed=len(wanted) - len(todo))

        def on_image(index, image_id, rows):
            run.append(rows)
            progress.advance(task)

        for _ in certify_dataset(data, seg, den, cert, sigma=sigma, n0=n0, n=n, alpha=alpha, taus=taus,
                                 batch_size=batch_size, seed=seed, device=device, names=names,
                                 indices=todo, on_image=on_image, on_certificates=on_certificates,
                                 accelerate=None if accelerate is None else Acceleration(**accelerate)):
            pass
    finished = set(run.repair(len(taus)))
    if finished >= set(range(total)):
        summary = run.finish()
        log.info("run complete: %s", output)
    else:
        summary = summarize(run.results(require_complete=False))
        log.info("%d of %d images done in %s", len(finished), total, output)
    if show_summary:
        print_summary(summary.assign(method=label), console, title=f"certified Dice ({output})")
    return summary


def _label(name: str, options: dict) -> str:
    """``monai`` + ``weights=out/lung-noise0.25.safetensors`` -> ``monai:lung-noise0.25``."""
    weights = options.get("weights")
    return f"{name}:{weights_name(weights)}" if weights else name


def weights_name(weights) -> str:
    """The file name of a weights path without ``.safetensors`` / ``.json`` (dots in names stay)."""
    name = Path(str(weights).rstrip("/")).name
    for suffix in (".safetensors", ".json"):
        name = name.removesuffix(suffix)
    return name


def _method_label(segmenter: str, segmenter_options: dict, denoiser: str) -> str:
    base = _label(segmenter, segmenter_options)
    return base if denoiser == "none" else f"{base} + {denoiser}"


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
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column("method", overflow="fold", ratio=1, min_width=12)
    rows = [[cell(r, key, fmt) for key, _, fmt in cols] for _, r in summary.iterrows()]
    for i, (_, header, _) in enumerate(cols):
        width = max([len(header)] + [len(row[i]) for row in rows])
        table.add_column(header, justify="right", no_wrap=True, min_width=width)
    for m, cells in zip(methods, rows):
        table.add_row(m, *cells)
    console.print(table)


def certify_options(f):
    """The options of ``certify`` (shared with other commands that certify)."""
    for deco in reversed([
        plugin_option("dataset", DEFAULTS["dataset"], "Data set plugin."),
        plugin_option("segmenter", DEFAULTS["segmenter"], "Segmenter plugin."),
        plugin_option("denoiser", DEFAULTS["denoiser"], "Denoiser plugin (none: Gaussian-trained baseline)."),
        plugin_option("certifier", DEFAULTS["certifier"], "Certifier plugin."),
        click.option("--sigma", type=float, default=DEFAULTS["sigma"], show_default=True,
                     help="Noise std in [0, 1] pixel units."),
        click.option("--n0", type=int, default=DEFAULTS["n0"], show_default=True, help="Selection draws."),
        click.option("-n", "--n", "n", type=int, default=DEFAULTS["n"], show_default=True,
                     help="Estimation draws."),
        click.option("--alpha", type=float, default=DEFAULTS["alpha"], show_default=True,
                     help="Family-wise error level per image."),
        click.option("--tau", "taus", type=float, multiple=True, default=tuple(DEFAULTS["taus"]),
                     show_default=True, help="Threshold(s) in (0.5, 1); radius sigma * Phi^-1(tau). Repeatable."),
        click.option("--batch-size", type=BATCH_SIZE, default=DEFAULTS["batch_size"], show_default=True,
                     help="Noise draws per forward pass, or auto (fit the memory available)."),
        seed_option, device_option,
        click.option("--limit", type=int, default=None, help="Certify only the first N images."),
    ]):
        f = deco(f)
    return f


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
    try:
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
            specs = [{**values, "output": str(output), "name": output.name}]
        else:
            overrides = {key: values[key] for name, key in _PARAMS.items() if given[name]}
            overrides.update({k: values[k] for k in _OPTION_PARAMS if given[k]})
            specs = load_experiment(source)
            explicit_output = output if given["output"] else None
            if explicit_output is None and any(s["output"] is None for s in specs):
                raise click.UsageError("give --output for the re-run")
            specs = apply_overrides(specs, overrides, explicit_output)
        registry = get_registry()
        console = Console(quiet=quiet)
        for i, spec in enumerate(specs):
            if len(specs) > 1:
                log.info("run %d of %d: %s -> %s", i + 1, len(specs), spec["name"], spec["output"])
            # acceleration: the file's (or manifest's) settings, explicit options on top
            spec_accelerate = spec.get("accelerate")
            run_accelerate = accelerate if spec_accelerate is None else {**spec_accelerate, **accelerate_given}
            sharded(run_certify)(**{k: v for k, v in spec.items() if k not in ("name", "output", "accelerate")},
                                 output=Path(spec["output"]), resume=resume, overwrite=overwrite, quiet=quiet,
                                 registry=registry, console=console, accelerate=run_accelerate)
    except (PluginError, ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        # RunError and ConfigError are ValueErrors
        raise click.ClickException(str(err)) from err


__all__ = ["run_certify", "print_summary", "certify_options", "certify", "RunError", "ConfigError"]
