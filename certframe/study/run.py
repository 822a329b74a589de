"""``run_study``: check a study completely, print its plan, run the stages that need it, write the report.

Order of work, so that bad input fails before anything is trained or written:

1. the study file (:func:`certframe.study.spec.load_study`);
2. the output folder: new, empty, or holding this study (:func:`certframe.study.folder.check_study_folder`);
3. the data set's train, val and test splits, the segmenter network (built once, untrained), the
   denoiser (an existing one is loaded and asked for every sigma; a DDPM to train has its options
   checked), the device;
4. the plan (:mod:`certframe.study.plan`), printed; with ``plan_only`` nothing else happens;
5. ``study.json``, then each stage in order (:func:`certframe.study.stages.execute`), judged again just
   before it runs (an input made in this call may have the digest it had before);
6. the report (:func:`certframe.study.report.write_study_report`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from certframe.study.folder import check_study_folder, digest, write_manifest
from certframe.study.plan import Facts, Stage, build_stages, judge, plan, plan_lines
from certframe.study.spec import Study, StudyError, load_study
from certframe.study.stages import Context, execute
from certframe.validation import OptionError


@dataclass
class StudyResult:
    """stages: every stage with the status it had when it was judged (``reuse`` for those not run);
    ran: the names of the stages run in this call; table / lines / written: the report."""

    study: Study
    folder: Path
    stages: list[Stage]
    plan: list[str]
    ran: list[str] = field(default_factory=list)
    table: object = None
    lines: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def default_output(study: Study) -> Path:
    return Path("studies") / study.name


def data_facts(study: Study, registry) -> Facts:
    """Build the train, val and test splits (StudyError naming the split otherwise); their sizes and shape."""
    from certframe.registry import PluginNotFound

    source = str(study.path)
    data = {}
    for split in ("train", "val", "test"):
        try:
            data[split] = registry.create("dataset", study.dataset, **study.dataset_options, split=split)
        except PluginNotFound as err:
            raise StudyError(f"{source}: {err}") from None
        except Exception as err:  # a plugin's own refusal (a missing root or folder, no such split, ...)
            # train is built first: its failure is the data set's (a missing folder), not a missing split
            what = " has no val split (the study validates on split=val)" if split == "val" else " could not be built"
            raise StudyError(f"{source}: data set {study.dataset!r}{what}: split={split!r} gave "
                             f"{type(err).__name__}: {err}") from None
        if len(data[split]) == 0:
            raise StudyError(f"{source}: data set {study.dataset!r} has no {split} split: split={split!r} with "
                             f"{study.dataset_options} holds no images (the study trains on split=train, validates "
                             f"on split=val and certifies split=test)")
    first = data["train"][0]
    return Facts(len(data["train"]), len(data["val"]), len(data["test"]), int(data["train"].in_channels),
                 int(data["train"].num_classes), tuple(int(v) for v in first.image.shape))


def check_models(study: Study, facts: Facts, registry) -> dict:
    """Build the segmenter network once (untrained) and check the denoiser against every sigma; returns the
    digests of the inputs the study does not make (an existing denoiser folder, an ADM checkpoint)."""
    from certframe.training.segmenter_job import build_trainable

    source = str(study.path)
    try:
        build_trainable(registry, study.segmenter, dict(study.segmenter_options), facts.in_channels,
                        facts.num_classes, seed=0, spatial_shape=facts.shape[1:])
    except Exception as err:
        raise StudyError(f"{source} [segmenter]: {type(err).__name__ + ': ' if not isinstance(err, ValueError) else ''}"
                         f"{err}") from None
    external = {}
    den = study.denoiser
    if den is None or not study.uses_denoiser():
        return external
    if den.kind == "train":
        from certframe.training.denoiser_job import check_train_denoiser_options

        t = den.train
        try:
            check_train_denoiser_options(output=Path("unused"), size=t["size"], crop=t["crop"],
                                         channels=list(t["channels"]), layers_per_block=t["layers_per_block"],
                                         attention=t["attention"], steps=t["steps"], batch_size=t["batch_size"],
                                         lr=t["lr"], max_sigma=t["max_sigma"], margin=t["margin"],
                                         ema_decay=t["ema_decay"], checkpoint_every=t["checkpoint_every"],
                                         log_every=50, resume=False, overwrite=False, seed=t["seed"])
        except (OptionError, ValueError) as err:
            raise StudyError(f"{source} [denoiser.train]: {str(err).replace('--', '').replace('-', '_')}") from None
        return external
    if den.kind == "adm":
        path = Path(den.adm["checkpoint"])
        if not path.is_file():
            raise StudyError(f"{source} [denoiser.adm]: checkpoint {str(path)!r} not found")
        external["adm"] = digest(path)
        return external
    try:
        model = registry.create("denoiser", den.plugin, **den.options)
    except Exception as err:
        raise StudyError(f"{source} [denoiser]: {type(err).__name__}: {err}") from None
    if hasattr(model, "check_sigma"):
        for sigma in study.sigmas:
            try:
                model.check_sigma(sigma, facts.shape[-2:])
            except ValueError as err:
                raise StudyError(f"{source} [denoiser]: {err}") from None
    model_path = den.options.get("model")
    if model_path and Path(model_path).exists():
        external["denoiser"] = digest(Path(model_path))
    return external


def prepare(path: str | Path | Study, output: str | Path | None = None, *, device: str | None = None,
            registry=None) -> tuple[Study, Path, list[Stage], str, dict | None]:
    """Everything of :func:`run_study` before the first write: the study, its folder, the judged stages, the
    resolved device and the folder's manifest (None for a new folder)."""
    from certframe.registry import get_registry
    from certframe.validation import resolve_device

    registry = registry or get_registry()
    study = path if isinstance(path, Study) else load_study(path)
    folder = Path(output) if output is not None else default_output(study)
    manifest = check_study_folder(folder, study.name)
    try:
        dev = str(resolve_device(device or study.device, "--device"))
    except OptionError as err:
        raise StudyError(str(err)) from None
    facts = data_facts(study, registry)
    external = check_models(study, facts, registry)
    stages = plan(build_stages(study, folder, facts, external))
    return study, folder, stages, dev, manifest


def run_study(path: str | Path | Study, output: str | Path | None = None, *, device: str | None = None,
              plan_only: bool = False, registry=None, console: Console | None = None,
              quiet: bool = False, stage_console: Console | None = None) -> StudyResult:
    """Check, plan, run and report the study ``path`` in the folder ``output`` (default ``studies/<name>``).

    Stages whose output is complete with the same key and inputs are reused; interrupted ones resume;
    changed ones rerun (:mod:`certframe.study.plan`). Ctrl-C propagates after the running stage has
    recorded itself ``interrupted``: the same call continues. stage_console: where the trainers and runs
    print (default: nowhere). Returns a :class:`StudyResult`.
    """
    from certframe.registry import get_registry

    registry = registry or get_registry()
    console = console or Console(quiet=quiet)
    study, folder, stages, dev, manifest = prepare(path, output, device=device, registry=registry)
    lines = [f"study {study.name} ({study.title}) in {folder}, device {dev}"] + plan_lines(stages, folder)
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    result = StudyResult(study, folder, stages, lines)
    if plan_only:
        return result
    write_manifest(folder, study, stages, created=(manifest or {}).get("created"))
    ctx = Context(study, folder, dev, registry, stage_console or Console(quiet=True), {s.name: s for s in stages})
    done: dict[str, Stage] = {}
    for stage in stages:
        judge(stage, done)  # again: an input made in this call may have kept its digest
        done[stage.name] = stage
        if stage.status == "reuse":
            continue
        console.print(f"[{len(done)}/{len(stages)}] {stage.name}: {stage.status}"
                      + (f" ({stage.reason})" if stage.reason else ""), markup=False, highlight=False, soft_wrap=True)
        record = execute(stage, ctx)
        result.ran.append(stage.name)
        console.print(f"    done in {record['seconds']:.1f} s ({record['cpu_seconds']:.1f} CPU s), {stage.output}",
                      markup=False, highlight=False, soft_wrap=True)
    from certframe.study.report import write_study_report

    result.table, result.lines, result.written = write_study_report(folder)
    for line in result.lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: {folder / 'report' / 'report.html'}", markup=False, highlight=False, soft_wrap=True)
    return result
