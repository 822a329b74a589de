"""Attack runs: certify each image, attack it, and check every certificate on the attacked image.

:func:`run_attack` is what ``certframe attack`` calls: it builds the plugins of a
validated :class:`~certframe.run.spec.AttackSpec`, plans the jobs (attack x budget,
:func:`certframe.attacks.suite.attack_jobs`), writes the manifest, runs
:class:`~certframe.run.attack_step.AttackStep` on the images not done yet (rows appended as each
image finishes, so an interrupted run resumes) and writes ``summary.json`` (per attack
and budget) and ``robustness.json`` (per method and budget). :func:`attack_dataset` is
the same loop without a run folder.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import pandas as pd
import torch
from rich.console import Console

from certframe.files import atomic_write
from certframe.interfaces import Certifier, CertifyRequest, Denoiser, SegmentationDataset, Segmenter
from certframe.run.attack_step import AttackStep, attack_arguments
from certframe.run.build import Names, build_plugins, check_plugins, prepare_models, probe_models, resolve_device
from certframe.run.certify import progress_bar, result_rows, step_results, with_warnings
from certframe.run.folder import RESULTS_PARQUET, RunFolder
from certframe.run.manifest import attack_manifest
from certframe.run.records import now
from certframe.run.selection import run_size, select_indices
from certframe.run.spec import AttackSpec
from certframe.run.tables import write_parquet
from certframe.validation import OptionError, check_keys, check_output_folder

ATTACK_SUMMARY, ROBUSTNESS, PIXELS = "summary.json", "robustness.json", "pixels.csv"
# columns every attack results table has (checked when a run folder is read back)
ATTACK_COLUMNS = ["image_id", "index", "segmenter", "denoiser", "certifier", "sigma", "tau", "radius", "attack",
                  "norm", "eps", "violations", "seconds"]

log = logging.getLogger("certframe.attack")


def append_pixels(path: Path, pixels: list[dict]) -> None:
    """Append one image's per-pixel falsification rows to ``pixels.csv`` (the radius figure reads it)."""
    if not pixels:
        return
    frame = pd.DataFrame(pixels)
    frame.to_csv(path, mode="a", header=not path.exists() or path.stat().st_size == 0, index=False)


def read_pixels(path: str | Path) -> pd.DataFrame:
    """``pixels.csv`` of an attack run folder; rows of an image written twice (a resumed run) kept once."""
    path = Path(path)
    frame = pd.read_csv(path / PIXELS if path.is_dir() else path)
    keys = [c for c in ("index", "tau", "radius_multiple", "slice", "row", "col") if c in frame.columns]
    return frame.drop_duplicates(keys, keep="last").reset_index(drop=True)


def attack_dataset(dataset: SegmentationDataset, segmenter: Segmenter, denoiser: Denoiser | None,
                   certifier: Certifier, attacks: dict[str, Callable], *, sigma: float, n0: int, n: int,
                   alpha: float, taus: Sequence[float] = (0.75,), eps_l2: Sequence[float] | None = None,
                   eps_linf: Sequence[float] = (), attack_options: dict[str, dict] | None = None,
                   radius_multiples: Sequence[float] = (1.0,), falsify: bool = True,
                   falsify_options: dict | None = None, seed: int, batch_size: int | str = 32,
                   device: str | torch.device = "auto",
                   names: Names | None = None, indices: Iterable[int] | None = None,
                   on_image: Callable[[int, str, list[dict]], None] | None = None) -> Iterator[dict]:
    """Yield attack result rows (see :mod:`certframe.attacks.suite`), image by image.

    Every image runs the same jobs, :func:`~certframe.attacks.suite.attack_jobs` (attack x
    budget), and yields ``len(jobs) * len(taus)`` rows: jobs in order, taus within each job.
    attacks: ``{name: factory}``; ``factory(model=segmenter, eps=..., [norm=...], [sigma=...,
    denoiser=...,] seed=..., **attack_options[name])`` builds the attack (``norm`` for attacks
    that support several; ``sigma`` and ``denoiser`` for attacks whose ``threat`` is "smoothed").
    eps_l2: L2 budgets (default: the certified radii ``sigma * Phi^-1(tau)`` of ``taus`` times
    ``1 - 1e-6``: the guarantee covers the OPEN ball ``||delta||_2 < R``).
    eps_linf: Linf budgets in [0, 1] pixel units (default none).
    radius_multiples, falsify, falsify_options: see :class:`~certframe.run.spec.AttackSpec`.
    seed: fixes the noise draws (with each image's id) and the attacks' randomness.
    """
    from certframe.attacks.falsification import check_falsify_options
    from certframe.attacks.suite import attack_jobs

    request = CertifyRequest(sigma, n0, n, alpha, taus)
    falsify_options = check_falsify_options(dict(falsify_options or {}))
    attack_options = dict(attack_options or {})
    unknown = sorted(set(attack_options) - set(attacks))
    if unknown:
        raise ValueError(f"options given for attack(s) {unknown} that are not run; attacks: {sorted(attacks)}")
    jobs = attack_jobs(attacks, taus=request.taus, eps_l2=eps_l2, eps_linf=eps_linf,
                       radius_multiples=radius_multiples, falsify=falsify)
    device = resolve_device(device)
    segmenter, denoiser = prepare_models(segmenter, denoiser, dataset, device)
    results = step_results(AttackStep, segmenter, denoiser, certifier, dataset, request,
                           range(len(dataset)) if indices is None else indices, seed=seed, batch_size=batch_size,
                           device=device, names=names, jobs=jobs, attack_options=attack_options,
                           falsify_options=falsify_options)
    yield from result_rows(results, on_image)


RUN_SET_OPTIONS = {"model": "--segmenter", "eps": "--eps-l2, --eps-linf, --radius-multiple",
                   "norm": "--eps-l2, --eps-linf", "seed": "--seed", "sigma": "--sigma", "denoiser": "--denoiser"}
"""Arguments of an attack's factory that the run sets, and the options that set them (the budget and norm,
the seed, and sigma / denoiser for attacks on the smoothed model)."""


def check_attack_options(spec: AttackSpec, registry) -> None:
    """Every ``--attack-option`` key is one its attack takes and the run does not set; the valid ones are listed.

    The values are checked by :func:`build_attacks`, which builds each attack once.
    """
    for name, options in spec.attack_options.items():
        entry = registry.get("attack", name)
        clash = [key for key in options if key in RUN_SET_OPTIONS]
        if clash:
            raise OptionError(f"attack option {clash[0]!r} of {name} is set by the run "
                              f"({RUN_SET_OPTIONS[clash[0]]}), not by --attack-option")
        if not entry.accepts_any_option():
            check_keys(options, [k for k in entry.options() if k not in RUN_SET_OPTIONS], "attack option", name)


def build_attacks(spec: AttackSpec, jobs, plugins) -> None:
    """Build every attack job once, at its first budget, with the user's options, before the run folder exists.

    An attack validates its arguments when it is built (steps, step_size, restarts, ...): a bad
    ``--attack-option`` value fails here, named as ``ATTACK:KEY=VALUE``, instead of after the
    first image is certified. Nothing is run.
    """
    from certframe.core.statistics import certified_radius

    for job in jobs:
        if job.factory is None or job.name not in spec.attack_options:
            continue
        options = spec.attack_options[job.name]
        eps = job.eps if job.eps is not None else \
            certified_radius(spec.sigma, spec.taus[0]) * job.radius_multiple
        try:
            job.factory(**attack_arguments(job, segmenter=plugins.segmenter, denoiser=plugins.denoiser,
                                           sigma=spec.sigma, seed=spec.seed, eps=eps, options=options))
        except (ValueError, TypeError) as err:
            given = ", ".join(f"{job.name}:{k}={json.dumps(v)}" for k, v in options.items())
            raise OptionError(f"attack option {given} is invalid: {err}") from None


def run_attack(spec: AttackSpec, output: str | Path, *, resume: bool = False, overwrite: bool = False,
               quiet: bool = False, registry=None, console: Console | None = None) -> pd.DataFrame:
    """Build the plugins, attack and certify, write the run folder; return the robustness table.

    resume: continue an interrupted run in ``output`` (same configuration, else RunError):
        images already done are kept, only the others are attacked; the final files
        (results.parquet, summary.json, robustness.json) cover every image of the run.
    """
    from certframe.attacks.suite import attack_jobs, robustness_table, summarize_attacks
    from certframe.registry import get_registry

    registry = registry or get_registry()
    console = console or Console(quiet=quiet)
    check_output_folder(output)
    factories = {name: registry.get("attack", name).factory for name in spec.attacks}
    check_attack_options(spec, registry)
    request = spec.request
    # the rows each image writes, known before the run: needed to tell a complete image from a cut one
    jobs = attack_jobs(factories, taus=spec.taus, eps_l2=spec.eps_l2, eps_linf=spec.eps_linf,
                       radius_multiples=spec.radius_multiples, falsify=spec.falsify)
    device = resolve_device(spec.device)
    plugins = build_plugins(spec, registry)
    check_plugins(spec, plugins)
    build_attacks(spec, jobs, plugins)
    manifest = attack_manifest(spec, plugins, registry)
    total = run_size(plugins.dataset, spec.limit)
    segmenter, denoiser = prepare_models(plugins.segmenter, plugins.denoiser, plugins.dataset, device)
    probe_models(segmenter, denoiser, plugins.dataset, request.sigma, device)
    manifest = with_warnings(manifest, spec)
    run = RunFolder(output, required_columns=ATTACK_COLUMNS)
    done = run.start(manifest, resume=resume, overwrite=overwrite, rows_per_image=len(jobs) * len(spec.taus))
    with run.recording_failure():
        todo = [i for i in select_indices(total) if i not in done]
        if done:
            log.info("resuming %s: %d of %d images already done", output, total - len(todo), total)
        results = step_results(AttackStep, segmenter, denoiser, plugins.certifier, plugins.dataset, request, todo,
                               seed=spec.seed, batch_size=spec.batch_size, device=device, names=plugins.names(spec),
                               jobs=jobs, attack_options=spec.attack_options, falsify_options=spec.falsify_options)
        with progress_bar(console, "attack", quiet) as progress:
            task = progress.add_task("attack", total=total, completed=total - len(todo))
            for result in results:
                run.append(result.rows)
                append_pixels(run.path / PIXELS, result.pixels)
                progress.advance(task)
        # the whole run: rows kept from before the interruption plus the new ones (image_id as str)
        df = run.results(require_complete=False)
        df = df.sort_values("index", kind="stable").reset_index(drop=True)
        finished = set(df["index"].astype(int))
        complete = finished >= set(range(total))
        if complete:
            write_parquet(df, run.path / RESULTS_PARQUET)
        summary, table = summarize_attacks(df), robustness_table(df)
        atomic_write(run.path / ATTACK_SUMMARY, (summary.to_json(orient="records", indent=2) + "\n").encode())
        atomic_write(run.path / ROBUSTNESS, (table.to_json(orient="records", indent=2) + "\n").encode())
        if complete:
            run.update_manifest(status="complete", finished=now(), images=int(df["index"].nunique()),
                                violations=int(df["violations"].where(~df["not_tested"].astype(bool)).sum()),
                                tested=int(df["tested"].where(~df["not_tested"].astype(bool)).sum()))
            log.info("run complete: %s", output)
        else:
            log.info("%d of %d images done in %s", len(finished), total, output)
    run.unlock()  # start() locks the folder (flock)
    return table


__all__ = ["run_attack", "check_attack_options", "build_attacks", "attack_dataset", "read_pixels", "ATTACK_COLUMNS",
           "ATTACK_SUMMARY", "ROBUSTNESS", "PIXELS"]
