"""Running one stage of a study by calling the library function its command calls.

=====================  =====================================================================
stage kind             library function (and the command it is behind)
=====================  =====================================================================
``train-denoiser``     :func:`certframe.training.denoiser_job.run_train_denoiser` (train denoiser)
``convert-denoiser``   the ``ddpm`` plugin's ``guided-diffusion`` converter (convert guided-diffusion)
``train-segmenter``    :func:`certframe.training.segmenter_job.run_train_segmenter` (train segmenter)
``quality``            :func:`certframe.quality.evaluate.run_evaluate_denoiser` (evaluate denoiser)
``certify``            :func:`certframe.run.run_certify` with a :class:`~certframe.run.RunSpec` (certify)
``attack``             :func:`certframe.run.run_attack` with an :class:`~certframe.run.AttackSpec` (attack)
=====================  =====================================================================

Nothing here trains or certifies by itself. Resuming is the library's: a stage whose record has
the same key but is not complete is called with ``resume=True`` where its saved state exists (the
trainers' ``.resume`` folders, a run folder's manifest), otherwise its output is replaced.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from certframe.study.folder import digest, now, read_stamp, write_stamp
from certframe.study.plan import Stage
from certframe.study.spec import ROW_DENOISER, Study


@dataclass
class Context:
    """What every stage needs: the study, its folder, the device (resolved), the registry, a console."""

    study: Study
    folder: Path
    device: str
    registry: object
    console: object
    stages: dict

    def output(self, name: str) -> Path:
        return self.stages[name].output

    def denoiser_options(self) -> dict:
        """The ``ddpm`` (or plugin) denoiser's options: the study's model folder, or the options given."""
        den = self.study.denoiser
        if den.kind == "train":
            return {**den.options, "model": str(self.output("ddpm"))}
        if den.kind == "adm":
            return {**den.options, "model": str(self.output("adm"))}
        return dict(den.options)

    def denoiser_plugin(self) -> str:
        den = self.study.denoiser
        return den.plugin if den.kind == "plugin" else "ddpm"


def _weights(ctx: Context, ref: str) -> str:
    return str(ctx.output(ref.removeprefix("stage:")))


def _state_exists(folder: Path) -> bool:
    return (folder / "state.json").is_file()


def run_train_denoiser_stage(stage: Stage, ctx: Context, resume: bool) -> None:
    from certframe.training.denoiser_job import run_train_denoiser

    t = stage.settings["train"]
    state = stage.output.with_name(stage.output.name + ".resume")
    resume = resume and _state_exists(state)
    run_train_denoiser(dataset=ctx.study.dataset, dataset_options=dict(ctx.study.dataset_options),
                       output=stage.output, denoiser="ddpm", size=t["size"], channels=list(t["channels"]),
                       layers_per_block=t["layers_per_block"], attention=t["attention"], steps=t["steps"],
                       batch_size=t["batch_size"], lr=t["lr"], max_sigma=t["max_sigma"], margin=t["margin"],
                       ema_decay=t["ema_decay"], checkpoint_every=t["checkpoint_every"], resume=resume,
                       overwrite=not resume, device=ctx.device, seed=t["seed"], quiet=True, crop=t["crop"],
                       registry=ctx.registry, console=ctx.console, precision=t["precision"])


def run_convert_stage(stage: Stage, ctx: Context, resume: bool) -> None:
    adm = dict(stage.settings["adm"])
    checkpoint = adm.pop("checkpoint")
    converter = ctx.registry.get("denoiser", "ddpm").factory.converters["guided-diffusion"]
    converter(checkpoint, stage.output, overwrite=True, **adm)


def run_train_segmenter_stage(stage: Stage, ctx: Context, resume: bool) -> None:
    from certframe.training.segmenter import resume_dir
    from certframe.training.segmenter_job import run_train_segmenter

    s, t = stage.settings, stage.settings["train"]
    resume = resume and _state_exists(resume_dir(stage.output))
    denoiser = s.get("denoiser")
    run_train_segmenter(dataset=s["dataset"], dataset_options=dict(s["dataset_options"]), epochs=t["epochs"],
                        batch_size=t["batch_size"], lr=t["lr"], noise_sigma=s["noise_sigma"], output=stage.output,
                        segmenter=s["segmenter"], segmenter_options=dict(s["segmenter_options"]),
                        denoiser=ctx.denoiser_plugin() if denoiser else None,
                        denoiser_options=ctx.denoiser_options() if denoiser else None,
                        init=_weights(ctx, s["init"]) if "init" in s else None, resume=resume,
                        overwrite=not resume, device=ctx.device, seed=t["seed"], patience=t["patience"],
                        lr_plateau=t["lr_plateau"], quiet=True, registry=ctx.registry, console=ctx.console)


def run_quality_stage(stage: Stage, ctx: Context, resume: bool) -> None:
    from certframe.quality.evaluate import run_evaluate_denoiser

    q, study = stage.settings["quality"], ctx.study
    stage.output.parent.mkdir(parents=True, exist_ok=True)
    run_evaluate_denoiser(dataset=study.dataset, dataset_options={**study.dataset_options, "split": "test"},
                          denoiser=ctx.denoiser_plugin(), denoiser_options=ctx.denoiser_options(),
                          sigmas=list(study.sigmas), segmenter=study.segmenter,
                          segmenter_options={"weights": str(ctx.output("clean"))}, limit=q["limit"],
                          seed=q["seed"], batch_size=q["batch_size"], output=stage.output, device=ctx.device,
                          registry=ctx.registry, console=ctx.console)


def run_spec(stage: Stage, ctx: Context):
    """The :class:`~certframe.run.RunSpec` of a certify (or attack) stage."""
    row, sigma = stage.extra["row"], stage.extra["sigma"]
    options = ctx.denoiser_options() if ROW_DENOISER[row] != "none" else None
    return ctx.study.run_spec(row, sigma, _weights(ctx, stage.settings["weights"]), options, ctx.device)


def run_certify_stage(stage: Stage, ctx: Context, resume: bool) -> None:
    from certframe.run import run_certify

    resume = resume and (stage.output / "manifest.json").is_file()
    run_certify(run_spec(stage, ctx), stage.output, resume=resume, overwrite=not resume, quiet=True,
                registry=ctx.registry, console=ctx.console)


def run_attack_stage(stage: Stage, ctx: Context, resume: bool) -> None:
    from certframe.run import AttackSpec, run_attack

    spec = run_spec(stage, ctx)
    attack = dict(stage.settings["attack"])
    fields = {k: v for k, v in spec.as_dict().items()}
    if attack.get("limit") is not None:
        fields["limit"] = attack.pop("limit")
    attack.pop("limit", None)
    for key in ("attacks", "eps_l2", "radius_multiples"):
        if key in attack and isinstance(attack[key], list):
            attack[key] = tuple(attack[key])
    resume = resume and (stage.output / "manifest.json").is_file()
    run_attack(AttackSpec(**fields, **attack), stage.output, resume=resume, overwrite=not resume, quiet=True,
               registry=ctx.registry, console=ctx.console)


RUNNERS = {"train-denoiser": run_train_denoiser_stage, "convert-denoiser": run_convert_stage,
           "train-segmenter": run_train_segmenter_stage, "quality": run_quality_stage,
           "certify": run_certify_stage, "attack": run_attack_stage}


def execute(stage: Stage, ctx: Context) -> dict:
    """Run ``stage`` (resuming where its record allows), recording it beside its output; returns the record.

    The record says ``running`` while the stage runs, ``interrupted`` after Ctrl-C and ``failed`` after
    an error (both re-raised), ``complete`` with the output's digest at the end; wall and CPU seconds add
    up over attempts.
    """
    old = read_stamp(stage.output) or {}
    same = old.get("key") == stage.key
    spent = (float(old.get("seconds", 0.0)), float(old.get("cpu_seconds", 0.0))) if same else (0.0, 0.0)
    inputs = {n: {"key": ctx.stages[n].key, "digest": digest(ctx.output(n))} for n in stage.inputs}
    record = {"stage": stage.name, "kind": stage.kind, "key": stage.key, "settings": stage.settings,
              "inputs": inputs, "output": stage.output.name, "device": ctx.device, "cost": stage.cost,
              "started": old.get("started") if same else now(), "attempts": int(old.get("attempts", 0)) + 1
              if same else 1, "seconds": spent[0], "cpu_seconds": spent[1], "status": "running"}
    write_stamp(stage.output, record)
    wall, cpu = time.perf_counter(), time.process_time()

    def spent_now() -> dict:
        return {"seconds": round(spent[0] + time.perf_counter() - wall, 2),
                "cpu_seconds": round(spent[1] + time.process_time() - cpu, 2)}

    try:
        RUNNERS[stage.kind](stage, ctx, same and old.get("status") != "complete")
    except KeyboardInterrupt:
        write_stamp(stage.output, {**record, **spent_now(), "status": "interrupted", "stopped": now()})
        raise
    except BaseException as err:
        write_stamp(stage.output, {**record, **spent_now(), "status": "failed", "stopped": now(),
                                   "error": f"{type(err).__name__}: {err}"})
        raise
    record = {**record, **spent_now(), "status": "complete", "finished": now(), "digest": digest(stage.output)}
    write_stamp(stage.output, record)
    return record
