"""A study file: the paper's whole protocol on one data set, parsed and validated before anything trains.

A study file is a TOML file (``docs/study.md``, ``examples/studies/``)::

    title = "CVC-ClinicDB: Gaussian training against a DDPM denoiser"
    dataset = "cvc-clinicdb"                       # the data set plugin; no split: training reads
    dataset_options = { root = "data/CVC-ClinicDB", size = 128 }   # train/val, certification test
    sigmas = [0.5, 1.0]
    rows = ["gaussian", "ddpm", "finetuned"]       # of clean, gaussian, ddpm, ddim, finetuned
    baseline = "gaussian"                          # each other row's paired bootstrap CI is against it
    n0 = 10                                        # certification: the keys of an experiment file's
    n = 100                                        # run (docs/experiments.md) but the plugins, sigma
    alpha = 0.001                                  # and output, which the study sets
    tau = 0.75
    limit = 60

    [segmenter]                                    # every segmenter the study trains
    plugin = "monai"
    options = { arch = "unet", network = { channels = [16, 32, 64, 128], strides = [2, 2, 2] } }
    epochs = 60
    patience = 5
    [segmenter.gaussian]                           # per model: overrides, and its sigmas
    per_sigma = true

    [denoiser]                                     # train = {...} | model = FOLDER | adm = {...} | plugin = NAME
    train = { steps = 3000, channels = [16, 32, 64, 64] }
    ddim_steps = 2

:func:`load_study` returns a :class:`Study` or raises :class:`StudyError` whose message names the
file, the table and the key, what was expected and what came. The certification keys are checked
by the experiment files' own rules (:func:`certframe.run.config.normalize`) and then by
:class:`certframe.run.RunSpec` itself, so a study accepts exactly what ``certframe certify`` accepts.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certframe.run.config import ConfigError, normalize
from certframe.run.spec import RunSpec, check_sigma
from certframe.validation import OptionError, check_bool, check_int, check_number, check_seed

ROWS = ("clean", "gaussian", "ddpm", "ddim", "finetuned")
"""The rows a study can certify, in table order."""

DEFAULT_ROWS = ("gaussian", "ddpm", "finetuned")
"""The paper's rows (Laousy et al. 2023, with the fine-tuned row of Salman et al. 2020)."""

ROW_MODEL = {"clean": "clean", "gaussian": "gaussian", "ddpm": "clean", "ddim": "clean", "finetuned": "finetuned"}
"""Which trained segmenter each row certifies."""

ROW_DENOISER = {"clean": "none", "gaussian": "none", "ddpm": "ddpm", "ddim": "ddim", "finetuned": "ddpm"}

TOP_KEYS = ("title", "name", "dataset", "dataset_options", "sigmas", "rows", "baseline", "device", "segmenter",
            "denoiser", "quality", "attack", "bootstrap",
            # certification (the run keys of an experiment file the study does not set itself)
            "certifier", "certifier_options", "n0", "n", "alpha", "tau", "taus", "seed", "limit", "batch_size",
            "certificates", "accelerate")
CERTIFY_KEYS = ("certifier", "certifier_options", "n0", "n", "alpha", "tau", "taus", "seed", "limit",
                "batch_size", "certificates", "accelerate")
TRAIN_KEYS = ("epochs", "patience", "batch_size", "lr", "lr_plateau", "seed")
SEGMENTER_KEYS = ("plugin", "options") + TRAIN_KEYS + ("clean", "gaussian", "finetuned")
MODEL_KEYS = {"clean": TRAIN_KEYS, "gaussian": TRAIN_KEYS + ("per_sigma", "sigmas", "init"),
              "finetuned": TRAIN_KEYS + ("per_sigma", "sigmas")}
DENOISER_KEYS = ("train", "model", "adm", "plugin", "options", "ddim_steps")
DENOISER_TRAIN_KEYS = ("size", "crop", "channels", "layers_per_block", "attention", "steps", "batch_size", "lr",
                       "max_sigma", "margin", "ema_decay", "checkpoint_every", "seed", "precision")
QUALITY_KEYS = ("limit", "batch_size", "seed")
ATTACK_KEYS = ("rows", "attacks", "attack_options", "limit", "radius_multiples", "falsify", "falsify_options")
BOOTSTRAP_KEYS = ("n_boot", "level", "seed")
TRAIN_DEFAULTS = {"epochs": 60, "patience": 5, "batch_size": 16, "lr": 1e-3, "lr_plateau": None, "seed": 0}
DENOISER_TRAIN_DEFAULTS = {"size": None, "crop": None, "channels": [16, 32, 64, 64], "layers_per_block": 1,
                           "attention": False, "steps": 3000, "batch_size": 16, "lr": 1e-3, "max_sigma": None,
                           "margin": 0.25, "ema_decay": 0.999, "checkpoint_every": None, "seed": 0,
                           "precision": "auto"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class StudyError(OptionError):
    """A study file is malformed or cannot run; the message names the file, the key and what was expected."""


@dataclass(frozen=True)
class ModelGroup:
    """The segmenters of one kind: ``clean`` (noise 0), ``gaussian`` (trained on x + eps) or ``finetuned``
    (the clean one fine-tuned on D(x + eps)). per_sigma: one model per sigma of ``sigmas``, else one model
    for all (each batch draws one sigma). init: ``scratch`` or ``clean`` (fine-tune the clean model)."""

    kind: str
    train: dict
    sigmas: tuple = ()
    per_sigma: bool = True
    init: str = "scratch"

    def groups(self) -> list[tuple[float, ...]]:
        """The sigma groups, one per model: ``[(0.0,)]`` for the clean model."""
        if self.kind == "clean":
            return [(0.0,)]
        return [(s,) for s in self.sigmas] if self.per_sigma else [tuple(self.sigmas)]

    def for_sigma(self, sigma: float) -> tuple[float, ...]:
        """The group whose model serves ``sigma`` (the nearest trained sigma)."""
        groups = self.groups()
        for g in groups:
            if sigma in g:
                return g
        return min(groups, key=lambda g: min(abs(s - sigma) for s in g))


@dataclass(frozen=True)
class DenoiserSource:
    """Where the study's diffusion denoiser comes from: ``train`` (a DDPM trained by the study with the
    settings ``train``), ``folder`` (an existing diffusers folder or bundled name, ``model``), ``adm`` (an
    OpenAI guided-diffusion checkpoint converted by the study, ``adm``: its path and converter flags) or
    ``plugin`` (any denoiser plugin ``plugin`` with ``options``). ddim_steps: the DDIM row's steps."""

    kind: str
    plugin: str = "ddpm"
    options: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    adm: dict = field(default_factory=dict)
    ddim_steps: int = 2


@dataclass(frozen=True)
class Study:
    """A validated study file. ``certify``: the :class:`~certframe.run.RunSpec` keys every certification
    shares (certifier, n0, n, alpha, taus, seed, limit, batch_size, ...)."""

    path: Path
    name: str
    title: str
    dataset: str
    dataset_options: dict
    sigmas: tuple
    rows: tuple
    baseline: str
    certify: dict
    segmenter: str
    segmenter_options: dict
    models: dict
    denoiser: DenoiserSource | None
    quality: dict
    attack: dict | None
    bootstrap: dict
    device: str = "auto"

    def needed_models(self) -> list[str]:
        """The model kinds the rows need, in training order."""
        kinds = {ROW_MODEL[r] for r in self.rows}
        if "finetuned" in kinds or (self.denoiser is not None and self.uses_denoiser()):
            kinds.add("clean")  # fine-tuning starts from it; the quality table measures it on denoised images
        if "gaussian" in kinds and self.models["gaussian"].init == "clean":
            kinds.add("clean")
        return [k for k in ("clean", "gaussian", "finetuned") if k in kinds]

    def uses_denoiser(self) -> bool:
        return any(ROW_DENOISER[r] != "none" for r in self.rows)

    def run_spec(self, row: str, sigma: float, segmenter_weights: str, denoiser_options: dict | None,
                 device: str) -> RunSpec:
        """The certify run of ``row`` at ``sigma`` (validated by :class:`RunSpec`)."""
        denoiser = ROW_DENOISER[row]
        options = {}
        if denoiser != "none":
            options = dict(denoiser_options or {})
            if denoiser == "ddim":
                options["steps"] = self.denoiser.ddim_steps
        if denoiser == "ddpm" and self.denoiser.kind == "plugin":
            denoiser = self.denoiser.plugin
        return RunSpec(dataset=self.dataset, dataset_options={**self.dataset_options, "split": "test"},
                       segmenter=self.segmenter, segmenter_options={"weights": segmenter_weights},
                       denoiser=denoiser, denoiser_options=options, sigma=sigma, device=device,
                       label=row_label(self, row), **self.certify)


def row_label(study: Study, row: str) -> str:
    """The row's name in tables and figures."""
    g = study.models["gaussian"]
    return {"clean": "clean UNet, no denoiser",
            "gaussian": f"Gaussian-trained UNet ({'per sigma' if g.per_sigma else 'one for all sigma'})",
            "ddpm": "clean UNet + DDPM one-shot",
            "ddim": f"clean UNet + DDIM {study.denoiser.ddim_steps if study.denoiser else 2} steps",
            "finetuned": "UNet fine-tuned on D(x + eps) + DDPM"}[row]


def _where(source: str, table: str | None) -> str:
    return source if table is None else f"{source} [{table}]"


def _table(doc: dict, key: str, source: str, parent: str | None = None) -> dict | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        name = key if parent is None else f"{parent}.{key}"
        raise StudyError(f"{source}: [{name}] must be a table, got {value!r}")
    return value


def _keys(table: dict, allowed, where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(sorted(allowed))}")


def _train_settings(table: dict, where: str, base: dict) -> dict:
    out = dict(base)
    for key in TRAIN_KEYS:
        if key not in table:
            continue
        value = table[key]
        name = f"{where}: {key}"
        if key == "epochs" or key == "batch_size":
            value = check_int(name, value, 1)
        elif key in ("patience", "lr_plateau"):
            value = None if value is None else check_int(name, value, 1)
        elif key == "lr":
            value = check_number(name, value, above=0, meaning="the Adam learning rate")
        elif key == "seed":
            value = check_seed(value, name)
        out[key] = value
    return out


def _sigmas(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise StudyError(f"{where}: sigmas must be a non-empty list of noise levels, got {value!r}")
    try:
        sigmas = tuple(check_sigma(s) for s in value)
    except OptionError as err:
        raise StudyError(f"{where}: {err}") from None
    if len(set(sigmas)) != len(sigmas):
        raise StudyError(f"{where}: sigmas must be distinct, got {list(value)}")
    return sigmas


def _models(doc: dict, source: str, sigmas: tuple) -> tuple[str, dict, dict]:
    table = _table(doc, "segmenter", source) or {}
    _keys(table, SEGMENTER_KEYS, _where(source, "segmenter"))
    plugin = table.get("plugin", "monai")
    if not isinstance(plugin, str) or not plugin:
        raise StudyError(f"{_where(source, 'segmenter')}: plugin must be a segmenter plugin name, got {plugin!r}")
    options = table.get("options", {})
    if not isinstance(options, dict) or "weights" in options:
        raise StudyError(f"{_where(source, 'segmenter')}: options must be a table of the segmenter's options "
                         f"without weights (the study trains them), got {options!r}")
    base = _train_settings(table, _where(source, "segmenter"), TRAIN_DEFAULTS)
    models = {}
    for kind in ("clean", "gaussian", "finetuned"):
        sub = _table(table, kind, source, "segmenter") or {}
        where = _where(source, f"segmenter.{kind}")
        _keys(sub, MODEL_KEYS[kind], where)
        train = _train_settings(sub, where, base)
        group_sigmas = _sigmas(sub["sigmas"], where) if "sigmas" in sub else sigmas
        per_sigma = check_bool(f"{where}: per_sigma", sub.get("per_sigma", True))
        init = sub.get("init", "scratch")
        if init not in ("scratch", "clean"):
            raise StudyError(f"{where}: init must be \"scratch\" or \"clean\" (fine-tune the clean model), "
                             f"got {init!r}")
        if kind != "clean" and per_sigma and not set(sigmas) <= set(group_sigmas):
            missing = sorted(set(sigmas) - set(group_sigmas))
            raise StudyError(f"{where}: per_sigma models need every study sigma among sigmas; {missing} missing "
                             f"from {list(group_sigmas)}")
        models[kind] = ModelGroup(kind, train, () if kind == "clean" else group_sigmas, per_sigma,
                                  "clean" if kind == "finetuned" else init)
    return plugin, dict(options), models


def _denoiser(doc: dict, source: str, sigmas: tuple) -> DenoiserSource | None:
    table = _table(doc, "denoiser", source)
    if table is None:
        return None
    where = _where(source, "denoiser")
    _keys(table, DENOISER_KEYS, where)
    given = [k for k in ("train", "model", "adm", "plugin") if k in table]
    if len(given) != 1:
        raise StudyError(f"{where}: give exactly one of train = {{...}} (train a DDPM), model = FOLDER (a "
                         f"diffusers folder), adm = {{ checkpoint = FILE.pt }} (convert OpenAI's ADM) or plugin "
                         f"= NAME, got {given or 'none'}")
    kind = {"model": "folder"}.get(given[0], given[0])
    ddim = check_int(f"{where}: ddim_steps", table.get("ddim_steps", 2), 1)
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise StudyError(f"{where}: options must be a table of the denoiser's options, got {options!r}")
    if kind == "train":
        train = _table(table, "train", source, "denoiser") or {}
        _keys(train, DENOISER_TRAIN_KEYS, _where(source, "denoiser.train"))
        settings = {**DENOISER_TRAIN_DEFAULTS, **train}
        if settings["max_sigma"] is None:
            settings["max_sigma"] = max(sigmas)
        top = check_number(f"{_where(source, 'denoiser.train')}: max_sigma", settings["max_sigma"], minimum=0)
        if 0 < top < max(sigmas):
            raise StudyError(f"{_where(source, 'denoiser.train')}: max_sigma {top:g} is below the study's largest "
                             f"sigma {max(sigmas):g}: the DDPM would not be trained for it (drop max_sigma: it "
                             f"defaults to the largest sigma)")
        return DenoiserSource("train", "ddpm", dict(options), settings, {}, ddim)
    if kind == "folder":
        model = table["model"]
        if not isinstance(model, str) or not model:
            raise StudyError(f"{where}: model must be a diffusers folder or a bundled model name, got {model!r}")
        path = Path(model)
        value = str(path.resolve()) if path.exists() else model
        return DenoiserSource("folder", "ddpm", {**options, "model": value}, {}, {}, ddim)
    if kind == "adm":
        adm = _table(table, "adm", source, "denoiser") or {}
        if not isinstance(adm.get("checkpoint"), str):
            raise StudyError(f"{_where(source, 'denoiser.adm')}: checkpoint must be the path of an OpenAI "
                             f"guided-diffusion .pt file, got {adm.get('checkpoint')!r}")
        adm = {**adm, "checkpoint": str(Path(adm["checkpoint"]).resolve())}
        return DenoiserSource("adm", "ddpm", dict(options), {}, adm, ddim)
    plugin = table["plugin"]
    if not isinstance(plugin, str) or not plugin:
        raise StudyError(f"{where}: plugin must be a denoiser plugin name, got {plugin!r}")
    return DenoiserSource("plugin", plugin, dict(options), {}, {}, ddim)


def _certify(doc: dict, source: str) -> dict:
    try:
        table = normalize({k: doc[k] for k in CERTIFY_KEYS if k in doc}, source)
    except ConfigError as err:
        raise StudyError(str(err)) from None
    certify = {"certifier": "segcertify", "certifier_options": {}, "n0": 10, "n": 100, "alpha": 0.001,
               "taus": (0.75,), "seed": 0, "limit": None, "batch_size": 32, "certificates": True,
               "accelerate": None, **table}
    certify["taus"] = tuple(certify["taus"])
    return certify


def _sub(doc: dict, key: str, allowed, source: str) -> dict | None:
    table = _table(doc, key, source)
    if table is not None:
        _keys(table, allowed, _where(source, key))
    return table


def parse_study(doc: dict, source: str, stem: str = "study") -> Study:
    """A :class:`Study` from a parsed study file (``source`` names the file in messages)."""
    if not isinstance(doc, dict):
        raise StudyError(f"{source}: expected a table at the top level")
    _keys(doc, TOP_KEYS, source)
    name = doc.get("name", stem)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise StudyError(f"{source}: name must be letters, digits, '.', '_', '+' or '-', got {name!r}")
    title = doc.get("title", name)
    dataset = doc.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise StudyError(f"{source}: dataset must name a data set plugin (certframe plugins --kind dataset), "
                         f"got {dataset!r}")
    dataset_options = doc.get("dataset_options", {})
    if not isinstance(dataset_options, dict):
        raise StudyError(f"{source}: dataset_options must be a table, got {dataset_options!r}")
    if "split" in dataset_options:
        raise StudyError(f"{source}: dataset_options must not give split: the study trains on split=train "
                         f"(validates on val) and certifies split=test")
    sigmas = _sigmas(doc.get("sigmas", [0.5, 1.0]), source)
    rows = doc.get("rows", list(DEFAULT_ROWS))
    if not isinstance(rows, list) or not rows or not all(isinstance(r, str) for r in rows):
        raise StudyError(f"{source}: rows must be a non-empty list of row names ({', '.join(ROWS)}), got {rows!r}")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise StudyError(f"{source}: unknown row(s) {unknown}; rows: {', '.join(ROWS)}")
    if len(set(rows)) != len(rows):
        raise StudyError(f"{source}: rows must be distinct, got {rows}")
    rows = tuple(r for r in ROWS if r in rows)
    baseline = doc.get("baseline", "gaussian")
    if baseline not in rows:
        raise StudyError(f"{source}: baseline {baseline!r} is not one of the rows {list(rows)}: every row is "
                         f"compared with it (add it to rows, or name another baseline)")
    device = doc.get("device", "auto")
    if not isinstance(device, str) or not device:
        raise StudyError(f"{source}: device must be auto, cpu, cuda or cuda:N, got {device!r}")
    certify = _certify(doc, source)
    segmenter, seg_options, models = _models(doc, source, sigmas)
    denoiser = _denoiser(doc, source, sigmas)
    for row in rows:
        if ROW_DENOISER[row] != "none" and denoiser is None:
            raise StudyError(f"{source}: row {row!r} needs the denoiser, but the study has no [denoiser] table "
                             f"(train = {{...}}, model = FOLDER, adm = {{ checkpoint = FILE.pt }} or plugin = NAME)")
    quality = {"limit": None, "batch_size": 8, "seed": certify["seed"], **(_sub(doc, "quality", QUALITY_KEYS,
                                                                                 source) or {})}
    for key in ("limit", "batch_size"):
        if quality[key] is not None:
            check_int(f"{_where(source, 'quality')}: {key}", quality[key], 1)
    attack = _sub(doc, "attack", ATTACK_KEYS, source)
    if attack is not None:
        attack = {"rows": list(rows), **attack}
        bad = [r for r in attack["rows"] if r not in rows]
        if bad:
            raise StudyError(f"{_where(source, 'attack')}: rows {bad} are not rows of the study {list(rows)}")
    bootstrap = {"n_boot": 10_000, "level": 0.95, "seed": 0, **(_sub(doc, "bootstrap", BOOTSTRAP_KEYS, source)
                                                                 or {})}
    check_int(f"{_where(source, 'bootstrap')}: n_boot", bootstrap["n_boot"], 100)
    check_number(f"{_where(source, 'bootstrap')}: level", bootstrap["level"], above=0, below=1)
    check_seed(bootstrap["seed"], f"{_where(source, 'bootstrap')}: seed")
    study = Study(path=Path(source), name=name, title=title if isinstance(title, str) else name, dataset=dataset,
                  dataset_options=dict(dataset_options), sigmas=sigmas, rows=rows, baseline=baseline,
                  certify=certify, segmenter=segmenter, segmenter_options=seg_options, models=models,
                  denoiser=denoiser, quality=quality, attack=attack, bootstrap=bootstrap, device=device)
    try:  # the certification settings, by the run layer's own rules (n0, n, alpha, taus, batch_size, ...)
        for sigma in sigmas:
            RunSpec(dataset=dataset, sigma=sigma, **certify)
    except OptionError as err:
        raise StudyError(f"{source}: {err}") from None
    return study


def load_study(path: str | Path) -> Study:
    """Read and validate the study file ``path`` (TOML); :class:`StudyError` naming the file and key otherwise."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {str(path)!r} not found")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise StudyError(f"{path}: not valid TOML: {err}") from None
    return parse_study(doc, str(path), path.stem)
