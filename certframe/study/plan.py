"""The stages of a study, their dependencies, keys, and what each will cost.

A stage's key is the SHA-256 of its settings (everything that decides its output: data set, network,
training settings, certification request, ...) and of its input stages' keys, so a changed setting
changes the key of its stage and of every stage downstream of it, and of nothing else. The key is
recorded beside the output (:mod:`certframe.study.folder`) with each input's output digest. A stage is

* ``reuse``  its record says complete, with this key, its output exists and its inputs' outputs still
  have the digests it was made from: nothing runs;
* ``resume`` its record has this key but is not complete (Ctrl-C, a crash): the trainer or the run
  continues from its saved state (a segmenter's last epoch, a DDPM's last checkpoint, a run
  folder's finished images), to the result of an uninterrupted run;
* ``run``    nothing there yet;  ``rerun``  a record with another key, or an input that is remade:
  the output is replaced.

Devices are not part of the key: the same study on CPU then CUDA reuses what the CPU made.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from certframe.run.records import config_diff
from certframe.study.folder import digest, read_stamp
from certframe.study.spec import ROW_DENOISER, ROW_MODEL, Study


@dataclass
class Stage:
    """One step of a study: ``kind`` (train-denoiser, convert-denoiser, train-segmenter, quality, certify,
    attack), its ``output`` path, its ``settings`` (JSON-able), the names of the stages it reads, its
    estimated ``cost`` (``training_steps``, ``forward_passes``: upper bounds, early stopping may cut them)
    and, once planned, its ``key``, ``status`` and the ``reason`` for it."""

    name: str
    kind: str
    output: Path
    settings: dict
    inputs: tuple = ()
    cost: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    key: str = ""
    status: str = ""
    reason: str = ""


def stage_key(kind: str, settings: dict, input_keys: dict) -> str:
    blob = json.dumps({"kind": kind, "settings": settings, "inputs": input_keys}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _tag(sigmas) -> str:
    return "sigma" + "-".join(f"{s:g}" for s in sigmas)


def model_stage_name(kind: str, group: tuple) -> str:
    return "clean" if kind == "clean" else f"{kind}-{_tag(group)}"


@dataclass
class Facts:
    """What the plan needs to know about the data: split sizes, image shape, channels and classes."""

    train: int
    val: int
    test: int
    in_channels: int
    num_classes: int
    shape: tuple


def build_stages(study: Study, folder: Path, facts: Facts, external: dict | None = None) -> list[Stage]:
    """Every stage the study needs, in an order where each stage's inputs come first.

    external: digests of inputs the study does not make (an existing denoiser folder), folded into
    the settings of the stages that read them.
    """
    folder = Path(folder)
    external = external or {}
    stages: list[Stage] = []
    data = {"dataset": study.dataset, "dataset_options": study.dataset_options}
    seg = {"segmenter": study.segmenter, "segmenter_options": study.segmenter_options}
    den = study.denoiser
    denoiser_stage = None
    denoiser_settings: dict = {}
    if den is not None and (study.uses_denoiser()):
        if den.kind == "train":
            t = den.train
            denoiser_stage = "ddpm"
            batches = t["steps"]
            stages.append(Stage("ddpm", "train-denoiser", folder / "models" / "ddpm", {**data, "train": t},
                                cost={"training_steps": batches, "forward_passes": batches * t["batch_size"]}))
            denoiser_settings = {"denoiser": "ddpm", "model": "stage:ddpm", **den.options}
        elif den.kind == "adm":
            denoiser_stage = "adm"
            stages.append(Stage("adm", "convert-denoiser", folder / "models" / "adm",
                                {"adm": den.adm, "checkpoint_digest": external.get("adm")},
                                cost={"training_steps": 0, "forward_passes": 0}))
            denoiser_settings = {"denoiser": "ddpm", "model": "stage:adm", **den.options}
        else:
            denoiser_settings = {"denoiser": den.plugin, **den.options, "digest": external.get("denoiser")}
    den_inputs = (denoiser_stage,) if denoiser_stage else ()

    for kind in study.needed_models():
        group_of = study.models[kind]
        train = group_of.train
        for group in group_of.groups():
            name = model_stage_name(kind, group)
            noise = group[0] if len(group) == 1 else list(group)
            settings = {**data, **seg, "train": train, "noise_sigma": noise}
            inputs: tuple = ()
            extra_passes = 0
            if kind == "finetuned" or (kind == "gaussian" and group_of.init == "clean"):
                inputs = ("clean",)
                settings["init"] = "stage:clean"
            if kind == "finetuned":
                inputs = inputs + den_inputs
                settings["denoiser"] = denoiser_settings
                extra_passes = facts.train * train["epochs"] + facts.val  # the denoiser's calls
            batches = math.ceil(facts.train / train["batch_size"]) * train["epochs"]
            passes = (facts.train + facts.val) * train["epochs"] + extra_passes
            stages.append(Stage(name, "train-segmenter", folder / "models" / f"{name}.safetensors", settings,
                                inputs, cost={"training_steps": batches, "forward_passes": passes},
                                extra={"model": kind, "group": list(group)}))

    test = facts.test if study.certify["limit"] is None else min(facts.test, study.certify["limit"])
    if den is not None and study.uses_denoiser():
        limit = facts.test if study.quality["limit"] is None else min(facts.test, study.quality["limit"])
        stages.append(Stage("quality", "quality", folder / "quality" / "denoiser.json",
                            {**data, "sigmas": list(study.sigmas), "quality": study.quality,
                             "denoiser": denoiser_settings},
                            ("clean",) + den_inputs,
                            cost={"training_steps": 0, "forward_passes": limit * len(study.sigmas) * 3}))

    def model_for(row: str, sigma: float) -> str:
        kind = ROW_MODEL[row]
        return model_stage_name(kind, study.models[kind].for_sigma(sigma))

    request = {k: v for k, v in study.certify.items() if k not in ("batch_size", "accelerate")}
    for row in study.rows:
        for sigma in study.sigmas:
            model = model_for(row, sigma)
            den_name = ROW_DENOISER[row]
            calls = 1 + (0 if den_name == "none" else den.ddim_steps if den_name == "ddim" else 1)
            settings = {**data, "segmenter": study.segmenter, "weights": f"stage:{model}", "row": row,
                        "sigma": sigma, "request": request,
                        "denoiser": None if den_name == "none" else {**denoiser_settings, "kind": den_name,
                                                                    "ddim_steps": den.ddim_steps}}
            inputs = (model,) + (den_inputs if den_name != "none" else ())
            draws = study.certify["n0"] + study.certify["n"]
            stages.append(Stage(f"certify-{row}-sigma{sigma:g}", "certify", folder / "runs" / f"{row}-sigma{sigma:g}",
                                settings, inputs, cost={"training_steps": 0, "forward_passes": test * draws * calls},
                                extra={"row": row, "sigma": sigma, "model": model}))
    if study.attack is not None:
        attack = {k: v for k, v in study.attack.items() if k != "rows"}
        for row in study.attack["rows"]:
            for sigma in study.sigmas:
                certify = next(s for s in stages if s.name == f"certify-{row}-sigma{sigma:g}")
                settings = {**certify.settings, "attack": attack}
                images = test if attack.get("limit") is None else min(test, attack["limit"])
                stages.append(Stage(f"attack-{row}-sigma{sigma:g}", "attack",
                                    folder / "attacks" / f"{row}-sigma{sigma:g}", settings, certify.inputs,
                                    cost={"training_steps": 0,
                                          "forward_passes": 2 * images * (study.certify["n0"] + study.certify["n"])},
                                    extra=dict(certify.extra)))
    return stages


def _diff(old: dict, new: dict) -> list[str]:
    """The settings that differ, as ``key old -> new`` (JSON values)."""
    return config_diff(old, new, line=lambda key, a, b: f"{key} {json.dumps(a, default=str)} -> "
                                                        f"{json.dumps(b, default=str)}")


def judge(stage: Stage, by_name: dict[str, Stage]) -> None:
    """Set ``stage.key``, ``status`` and ``reason`` from its record beside the output and its inputs' state."""
    stage.key = stage_key(stage.kind, stage.settings, {n: by_name[n].key for n in stage.inputs})
    stamp = read_stamp(stage.output)
    exists = stage.output.exists()
    remade = [n for n in stage.inputs if by_name[n].status != "reuse"]
    if stamp is None:
        stage.status, stage.reason = ("rerun", "output without a stage record") if exists else ("run", "")
        return
    if stamp.get("key") != stage.key:
        changed = _diff(stamp.get("settings", {}), stage.settings)
        changed += [f"input {n} changed" for n in stage.inputs
                    if stamp.get("inputs", {}).get(n, {}).get("key") != by_name[n].key]
        stage.status, stage.reason = "rerun", "; ".join(changed) or "settings changed"
        return
    if stamp.get("status") != "complete":
        stage.status, stage.reason = "resume", f"{stamp.get('status', 'interrupted')} before"
        return
    if not exists:
        stage.status, stage.reason = "rerun", "output missing"
        return
    if remade:
        stage.status, stage.reason = "rerun", f"input {', '.join(remade)} is remade"
        return
    stale = [n for n in stage.inputs
             if stamp.get("inputs", {}).get(n, {}).get("digest") != digest(by_name[n].output)]
    if stale:
        stage.status, stage.reason = "rerun", f"the output of {', '.join(stale)} changed since"
        return
    stage.status, stage.reason = "reuse", ""


def plan(stages: list[Stage]) -> list[Stage]:
    """Judge every stage in order (inputs first); returns the stages."""
    by_name = {}
    for stage in stages:
        by_name[stage.name] = stage
        judge(stage, by_name)
    return stages


def plan_lines(stages: list[Stage], folder: Path) -> list[str]:
    """The plan as text: one line per stage (status, output, cost), then the totals of what will run."""
    width = max(len(s.name) for s in stages)
    lines = [f"{'stage':<{width}}  {'status':<6}  {'train steps':>11}  {'forward passes':>14}  output / why"]
    steps = passes = 0
    for s in stages:
        runs = s.status != "reuse"
        if runs:
            steps += s.cost.get("training_steps", 0)
            passes += s.cost.get("forward_passes", 0)
        c_steps = f"{s.cost.get('training_steps', 0):,}" if runs else "-"
        c_pass = f"{s.cost.get('forward_passes', 0):,}" if runs else "-"
        where = str(s.output.relative_to(folder)) if s.output.is_relative_to(folder) else str(s.output)
        lines.append(f"{s.name:<{width}}  {s.status:<6}  {c_steps:>11}  {c_pass:>14}  {where}"
                     + (f" ({s.reason})" if s.reason else ""))
    reused = sum(s.status == "reuse" for s in stages)
    lines.append(f"{len(stages)} stages: {reused} reused, {len(stages) - reused} to run; at most {steps:,} training "
                 f"steps and {passes:,} forward passes")
    return lines
