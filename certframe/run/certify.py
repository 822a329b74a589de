"""Certify runs: a data set through one smoothed segmenter, image by image, into a run folder.

:func:`run_certify` is what ``certframe certify``, ``certframe demo`` and every process
of a torchrun/SLURM job call: it builds the plugins of a validated
:class:`~certframe.run.spec.RunSpec`, writes the manifest, certifies the images not done
yet through :class:`~certframe.run.step.CertifyStep` (rows appended and certificates
saved as each image finishes, by a :class:`~certframe.run.writer.RunWriter` thread that overlaps
the next image, so an interrupted run resumes), and finishes the folder
once every image is done. :func:`certify_dataset` is the same loop without a run folder,
for library use.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from certframe.core.certificate import hierarchy_maps
from certframe.core.smoothing import SmoothedSegmenter
from certframe.interfaces import Certifier, CertifyRequest, Denoiser, Sample, SegmentationDataset, Segmenter
from certframe.run.build import (
    Names,
    Plugins,
    build_plugins,
    check_plugins,
    method_label,
    prepare_models,
    probe_models,
    resolve_device,
)
from certframe.run.folder import RunFolder
from certframe.run.layout import RunError
from certframe.run.manifest import certify_manifest
from certframe.run.records import provenance_diff
from certframe.run.selection import run_size, samples, select_indices
from certframe.run.spec import RunSpec
from certframe.run.step import CertifyStep, ImageResult
from certframe.run.tables import summarize
from certframe.validation import check_output_folder

log = logging.getLogger("certframe.certify")


def smoothed_segmenter(segmenter: Segmenter, denoiser: Denoiser | None, request: CertifyRequest,
                       device: torch.device, accelerate=None) -> SmoothedSegmenter:
    """The smoothed segmenter of a run, plain or with an :class:`~certframe.run.accelerate.Acceleration`."""
    if accelerate is None:
        return SmoothedSegmenter(segmenter, denoiser, request.sigma)
    return accelerate.smoothed(segmenter, denoiser, request.sigma, device)


def _acceleration(options: dict | None):
    if options is None:
        return None
    from certframe.run.accelerate import Acceleration

    return Acceleration(**options)


def image_results(step: CertifyStep, dataset: SegmentationDataset, indices: Iterable[int],
                  prefetch_depth: int = 0) -> Iterator[ImageResult]:
    """Run ``step`` on each index, in order (images loaded ahead when ``prefetch_depth`` > 0).

    An item the data set cannot read is an error naming the data set and the index.
    """
    indices = list(indices)
    items = samples(dataset, indices, prefetch_depth, step.device)
    done = 0
    while True:
        try:
            index, sample = next(items)
        except StopIteration:
            return
        except Exception as err:
            index = indices[done] if done < len(indices) else "?"
            raise ValueError(f"the data set {type(dataset).__name__} could not read item {index}: "
                             f"{type(err).__name__}: {err}") from err
        done += 1
        yield step(index, sample)


def step_results(step_type: type[CertifyStep], segmenter: Segmenter, denoiser: Denoiser | None,
                 certifier: Certifier, dataset: SegmentationDataset, request: CertifyRequest, indices: Iterable[int],
                 *, seed: int, batch_size: int | str, device: torch.device, names: Names | None = None,
                 accelerate=None, **options) -> Iterator[ImageResult]:
    """The loop of every run, with a run folder or without: build the per-image step and run it over ``indices``.

    step_type: :class:`CertifyStep` or :class:`~certframe.run.attack_step.AttackStep` (``options``: its
    own keywords), on the smoothed segmenter of ``segmenter`` and ``denoiser`` (prepared on ``device``,
    :func:`~certframe.run.build.prepare_models`), plain or accelerated (``accelerate``: an
    :class:`~certframe.run.accelerate.Acceleration`, whose ``prefetch`` loads images ahead). The step is
    built now; the images are certified as the results are taken, in order.
    """
    step = step_type(smoothed_segmenter(segmenter, denoiser, request, device, accelerate), certifier, dataset,
                     request, seed=seed, batch_size=batch_size, device=device, names=names or Names(), **options)
    return image_results(step, dataset, indices, 0 if accelerate is None else accelerate.prefetch)


def result_rows(results: Iterable[ImageResult], on_image: Callable[[int, str, list[dict]], None] | None = None,
                on_certificates: Callable[[int, Sample, list, torch.Tensor], None] | None = None) -> Iterator[dict]:
    """The rows of each image's result in turn (the no-folder runs), each image's callbacks called first."""
    for result in results:
        if on_certificates is not None:
            on_certificates(result.index, result.sample, result.certificates, result.clean)
        if on_image is not None:
            on_image(result.index, result.sample.id, result.rows)
        yield from result.rows


def certificate_file(result: ImageResult) -> dict:
    """The keyword arguments of :meth:`~certframe.run.folder.RunFolder.save_certificate` for one image."""
    return {"labels": [labels.numpy() for labels in result.labels], "taus": [c.tau for c in result.certificates],
            "mask": result.sample.mask.numpy(), "clean": result.clean.numpy(),
            "image": result.sample.image.cpu().numpy(), **hierarchy_maps(result.certificates)}


def certify_dataset(dataset: SegmentationDataset, segmenter: Segmenter, denoiser: Denoiser | None,
                    certifier: Certifier, *, sigma: float, n0: int, n: int, alpha: float,
                    taus: Sequence[float] = (0.75,), seed: int, batch_size: int | str = 32,
                    device: str | torch.device = "auto", names: Names | None = None,
                    indices: Iterable[int] | None = None,
                    on_image: Callable[[int, str, list[dict]], None] | None = None,
                    on_certificates: Callable[[int, Sample, list, torch.Tensor], None] | None = None,
                    accelerate=None) -> Iterator[dict]:
    """Yield result rows (see :mod:`certframe.run.step`), image by image, without a run folder.

    seed: with each image's id, fixes every noise draw (required: there is no default seed).
    indices: which items to certify (default: all). on_image(index, image id, rows) and
    on_certificates(index, sample, certificates, clean prediction [H, W] on the CPU) are
    called after each image. accelerate: an :class:`~certframe.run.accelerate.Acceleration`
    or None (plain fp32, no prefetch). batch_size: draws per pass or ``"auto"``.
    """
    request = CertifyRequest(sigma, n0, n, alpha, taus)
    device = resolve_device(device)
    segmenter, denoiser = prepare_models(segmenter, denoiser, dataset, device)
    results = step_results(CertifyStep, segmenter, denoiser, certifier, dataset, request,
                           range(len(dataset)) if indices is None else indices, seed=seed, batch_size=batch_size,
                           device=device, names=names, accelerate=accelerate)
    yield from result_rows(results, on_image, on_certificates)


def progress_bar(console: Console, text: str, quiet: bool) -> Progress:
    return Progress(TextColumn(text), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, disable=quiet, transient=False)


def with_warnings(manifest: dict, spec: RunSpec) -> dict:
    """Log the spec's warnings (:meth:`RunSpec.warnings`) before sampling; the manifest records them."""
    warnings = spec.warnings()
    for warning in warnings:
        log.warning("%s", warning)
    return {**manifest, "warnings": warnings} if warnings else manifest


def run_certify(spec: RunSpec, output: str | Path, *, resume: bool = False, overwrite: bool = False,
                quiet: bool = False, registry=None, console: Console | None = None,
                indices: Sequence[int] | None = None, plugins: Plugins | None = None,
                expect_provenance: dict | None = None):
    """Build the plugins, certify, write the run folder ``output``; return the summary DataFrame.

    Everything that can be checked is checked before the folder is written: the spec (at
    construction), ``output`` (a folder, or nothing yet), the device, the plugins' options
    (built here), the segmenter's classes against the data set's, the denoiser's noise range,
    one pass of the models on the first image (:func:`~certframe.run.build.probe_models`), and
    ``expect_provenance`` (the ``provenance`` of a manifest being re-run: the models and files
    must be the same). The spec's warnings (an n that cannot certify) are logged before
    sampling and recorded in the manifest.
    indices: certify only these data set indices (default: all, or the first ``spec.limit``);
        a caller sharding a data set over workers passes each its share. The run is finished
        (sorted results, Parquet, summary.json, status "complete") only once every image is done.
    A failure while certifying marks the manifest ``failed`` (Ctrl-C: ``interrupted``) with
    the reason; the rows of finished images stay, and ``--resume`` continues.
    Returns the summary (:func:`certframe.run.tables.summarize`) of the rows done so far.
    """
    from certframe.registry import get_registry

    registry = registry or get_registry()
    console = console or Console(quiet=quiet)
    check_output_folder(output)
    device = resolve_device(spec.device)
    accelerate = _acceleration(spec.accelerate)
    request = spec.request
    plugins = plugins or build_plugins(spec, registry)
    check_plugins(spec, plugins)
    manifest = certify_manifest(spec, plugins, registry)
    diff = provenance_diff(expect_provenance, manifest["provenance"])
    if diff:
        raise RunError("the manifest being re-run used other inputs: " + "; ".join(diff))
    total = run_size(plugins.dataset, spec.limit)
    wanted = select_indices(total, indices)
    segmenter, denoiser = prepare_models(plugins.segmenter, plugins.denoiser, plugins.dataset, device)
    probe_models(segmenter, denoiser, plugins.dataset, request.sigma, device)
    manifest = with_warnings(manifest, spec)
    run = RunFolder(output)
    done = run.start(manifest, resume=resume, overwrite=overwrite)
    todo = [i for i in wanted if i not in done]
    if done:
        log.info("resuming %s: %d of %d images already done", output, len(wanted) - len(todo), len(wanted))
    with run.recording_failure():
        results = step_results(CertifyStep, segmenter, denoiser, plugins.certifier, plugins.dataset, request, todo,
                               seed=spec.seed, batch_size=spec.batch_size, device=device, names=plugins.names(spec),
                               accelerate=accelerate)
        label = method_label(spec)
        with progress_bar(console, f"certify {label} sigma={spec.sigma:g}", quiet) as progress:
            task = progress.add_task("certify", total=len(wanted), completed=len(wanted) - len(todo))
            # each image's certificate and rows are written by a background thread while the next
            # image is certified; leaving the block (Ctrl-C too) writes every image certified so far
            with run.writer() as writer:
                for result in results:
                    writer.submit(result.index, result.rows, certificate_file(result) if spec.certificates else None)
                    progress.advance(task)
        finished = set(run.repair(len(spec.taus)))
        if finished >= set(range(total)):
            summary = run.finish()
            log.info("run complete: %s", output)
        else:
            summary = summarize(run.results(require_complete=False))
            log.info("%d of %d images done in %s", len(finished), total, output)
    return summary


def run_certify_sharded(spec: RunSpec, output: str | Path, *, environ=None, registry=None, **kwargs):
    """:func:`run_certify` in one process, or this process's shard of a torchrun/SLURM job.

    Rank r certifies ``indices[r::world_size]`` into ``OUTPUT/ranks/rank{r}``; after a barrier
    rank 0 merges the parts into ``OUTPUT`` (:func:`certframe.run.distributed.merge_runs`) and
    returns the merged summary (other ranks return their part's). Returns ``(summary, world_size)``.
    """
    from certframe.registry import get_registry
    from certframe.run import distributed

    env = distributed.dist_env(environ)
    if not env.distributed:
        return run_certify(spec, output, registry=registry, **kwargs), 1
    output = check_output_folder(output)
    resume, overwrite = kwargs.get("resume", False), kwargs.get("overwrite", False)
    merged = RunFolder(output)
    if merged.results_path.exists() and merged.results_path.stat().st_size and not (resume or overwrite):
        raise RunError(f"{output} already holds results; pass --resume to continue that run "
                       f"or --overwrite to start again")
    spec = spec.replace(device=distributed.rank_device(spec.device, env))
    resolve_device(spec.device)
    distributed.init_process_group(env, spec.device)
    registry = registry or get_registry()
    plugins = build_plugins(spec, registry)
    wanted = select_indices(run_size(plugins.dataset, spec.limit), kwargs.pop("indices", None))
    if env.rank != 0:
        kwargs["quiet"] = True
    part = run_certify(spec, distributed.rank_folder(output, env.rank), registry=registry, plugins=plugins,
                       indices=distributed.shard(wanted, env.rank, env.world_size), **kwargs)
    distributed.barrier()              # every part written
    if env.rank != 0:
        distributed.barrier()          # rank 0 merged
        return part, env.world_size
    try:
        summary = distributed.merge_runs(output, env.world_size, wanted)
    finally:
        distributed.barrier()
    log.info("merged %d parts into %s", env.world_size, output)
    return summary, env.world_size


__all__ = ["run_certify", "run_certify_sharded", "certify_dataset", "smoothed_segmenter", "image_results",
           "step_results", "result_rows", "certificate_file"]
