"""Experiment files: one TOML file describes one or many certify runs (a table of a paper).

A file has three parts, all optional (see ``examples/configs/`` and ``docs/experiments.md``)::

    title = "JSRT, Table 1 of Laousy et al. 2023"      # free text
    dataset = "jsrt"                                    # top level: defaults of every run
    dataset_options = { root = "data/JSRT", size = 256 }
    sigma = 0.25
    tau = 0.75                                          # or taus = [0.75, 0.9]
    n0 = 10
    n = 100
    alpha = 0.001
    output = "runs/jsrt/{name}"                         # the default is runs/<file stem>/{name}

    [sweep]                                             # cartesian product over lists
    sigma = [0.25, 0.5, 1.0]

    [[runs]]                                            # one entry per method
    name = "gaussian"
    segmenter_options = { weights = "weights/jsrt-noise{sigma}.safetensors" }

    [[runs]]
    name = "ddpm"
    denoiser = "ddpm"

Every ``[[runs]]`` entry is combined with every point of ``[sweep]`` (here 2 x 3 =
6 runs). Values of a run override the top level; option tables (``*_options``) are
merged key by key. A run is named ``<name>-<key><value>...`` over the swept keys
(``ddpm-sigma0.5``) and labelled (the method name in reports) by the same without
``sigma``, so the runs of one method at several sigmas join into one curve.
Strings may use the placeholders ``{name}``, ``{label}``, ``{sigma}``, ``{seed}``,
``{dataset}``, ``{segmenter}``, ``{denoiser}``, ``{certifier}`` and ``{stem}`` (the file
stem); other braces are left alone. Relative paths are relative to the working
directory, as on the command line.

Options given explicitly on the command line override the file for every run
(``--dataset-option`` merges into ``dataset_options``); an explicit ``--output``
is the run folder of a single run, or the parent folder of several.

A run's ``manifest.json`` is accepted wherever an experiment file is: it re-runs
exactly that run.
"""
from __future__ import annotations

import itertools
import json
import re
import tomllib
from pathlib import Path
from typing import Any

# key -> (allowed python types, default). One source for the CLI defaults too.
SPEC: dict[str, tuple[tuple[type, ...], Any]] = {
    "dataset": ((str,), "synthetic-lung"),
    "dataset_options": ((dict,), {}),
    "segmenter": ((str,), "monai"),
    "segmenter_options": ((dict,), {}),
    "denoiser": ((str,), "none"),
    "denoiser_options": ((dict,), {}),
    "certifier": ((str,), "segcertify"),
    "certifier_options": ((dict,), {}),
    "sigma": ((float, int), 0.25),
    "n0": ((int,), 10),
    "n": ((int,), 100),
    "alpha": ((float, int), 0.001),
    "taus": ((list,), [0.75]),
    "batch_size": ((int, str), 32),
    "seed": ((int,), 0),
    "device": ((str,), "auto"),
    "limit": ((int, type(None)), None),
    "certificates": ((bool,), True),
    "label": ((str, type(None)), None),
    "output": ((str,), None),
    "accelerate": ((dict, type(None)), None),
}
DEFAULTS = {k: v for k, (_, v) in SPEC.items()}
RUN_KEYS = sorted(set(SPEC) | {"tau", "name"})
TOP_KEYS = sorted(set(RUN_KEYS) | {"title", "sweep", "runs"})
SWEEP_KEYS = sorted(set(SPEC) - {"taus", "output", "label", "accelerate"})
_PLACEHOLDER = re.compile(r"\{(name|label|sigma|seed|dataset|segmenter|denoiser|certifier|stem)\}")


class ConfigError(ValueError):
    """An experiment file is malformed; the message names the file, the key and what was expected."""


def _check_keys(table: dict, allowed: list[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(allowed)}")


def _check_value(key: str, value: Any, where: str) -> Any:
    types, _ = SPEC[key]
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ConfigError(f"{where}: {key} must be {names}, got {value!r} ({type(value).__name__})")
    if key == "taus":
        if not value or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in value):
            raise ConfigError(f"{where}: taus must be a non-empty list of numbers, got {value!r}")
        value = [float(t) for t in value]
    if key in ("sigma", "alpha"):
        value = float(value)
    if key == "batch_size" and isinstance(value, str) and value != "auto":
        raise ConfigError(f"{where}: batch_size must be an integer or \"auto\", got {value!r}")
    return value


def normalize(table: dict, where: str, allowed: list[str] = RUN_KEYS) -> dict:
    """Check keys and value types of one table; ``tau`` (number or list) becomes ``taus``."""
    _check_keys(table, allowed, where)
    out = {}
    for key, value in table.items():
        if key in ("title", "sweep", "runs"):
            continue
        if key == "name":
            if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", value):
                raise ConfigError(f"{where}: name must be letters, digits, '.', '_', '+' or '-', got {value!r}")
            out[key] = value
            continue
        if key == "tau":
            if "taus" in table:
                raise ConfigError(f"{where}: give tau or taus, not both")
            key, value = "taus", value if isinstance(value, list) else [value]
        out[key] = _check_value(key, value, where)
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = {**out.get(k, {}), **v} if k.endswith("_options") and isinstance(v, dict) else v
    return out


def _fmt(value: Any) -> str:
    return str(value)


def _substitute(value: Any, names: dict) -> Any:
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: _fmt(names[m.group(1)]), value)
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    return value


def _default_name(spec: dict) -> str:
    weights = spec["segmenter_options"].get("weights")
    name = spec["segmenter"]
    if weights:
        name += "-" + Path(str(weights).rstrip("/")).name.removesuffix(".safetensors").removesuffix(".json")
    if spec["denoiser"] != "none":
        name += f"+{spec['denoiser']}"
    return name


def expand(doc: dict, *, source: str = "<config>", stem: str = "experiment") -> list[dict]:
    """The runs of a parsed experiment file: a list of complete run specs (all of :data:`SPEC`
    plus ``name``), in file order (runs outer, sweep inner)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a table at the top level")
    base = normalize(doc, source, TOP_KEYS)
    sweep = doc.get("sweep", {})
    if not isinstance(sweep, dict):
        raise ConfigError(f"{source}: [sweep] must be a table of lists")
    _check_keys(sweep, SWEEP_KEYS, f"{source} [sweep]")
    axes = []
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source} [sweep]: {key} must be a non-empty list, got {values!r}")
        axes.append([(key, _check_value(key, v, f"{source} [sweep]"),
                      f"{key.removesuffix('_options')}{j}" if isinstance(v, dict) else f"{key}{v}")
                     for j, v in enumerate(values)])
    runs = doc.get("runs", [{}])
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs) or not runs:
        raise ConfigError(f"{source}: runs must be a non-empty array of tables ([[runs]])")
    out, seen = [], {}
    for i, run in enumerate(runs):
        run_spec = normalize(run, f"{source} [[runs]] #{i + 1}")
        for point in itertools.product(*axes):
            spec = _merge(_merge(_merge(DEFAULTS, base), run_spec), {k: v for k, v, _ in point})
            spec.pop("name", None)
            base_name = run_spec.get("name") or base.get("name") or _default_name(spec)
            name = "-".join([base_name] + [tag for _, _, tag in point])
            label = spec.get("label") or "-".join([base_name] + [tag for k, _, tag in point if k != "sigma"])
            names = {"name": name, "label": label, "stem": stem, **{k: spec[k] for k in
                     ("sigma", "seed", "dataset", "segmenter", "denoiser", "certifier")}}
            spec = _substitute(spec, names)
            spec["label"] = _substitute(label, names)
            spec["output"] = spec["output"] or f"runs/{stem}/{name}"
            spec["name"] = name
            spec["swept"] = sorted(k for k, _, _ in point)
            if spec["output"] in seen:
                raise ConfigError(f"{source}: runs {seen[spec['output']]!r} and {name!r} both write to "
                                  f"{spec['output']!r}; give each [[runs]] entry its own name or use "
                                  f"{{name}} in output")
            seen[spec["output"]] = name
            out.append(spec)
    return out


def spec_from_manifest(manifest: dict, source: str = "manifest") -> dict:
    """The run spec that re-runs the run a manifest describes (output: that run's folder)."""
    config = manifest.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: not a certframe run manifest (no 'config' object)")
    execution = manifest.get("execution", {})
    table = {**{k: v for k, v in config.items() if k in SPEC},
             **{k: v for k, v in execution.items() if k in SPEC}}
    spec = _merge(DEFAULTS, normalize(table, source))
    spec["label"] = manifest.get("label")
    spec["output"] = str(Path(source).parent) if source.endswith(".json") else None
    spec["name"] = Path(spec["output"]).name if spec["output"] else "run"
    return spec


def manifest_provenance(path: str | Path) -> dict | None:
    """The ``provenance`` (model and file hashes) a run's manifest records, or None."""
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest.get("provenance") if isinstance(manifest, dict) else None


def load_experiment(path: str | Path) -> list[dict]:
    """Read a TOML experiment file, or a run's ``manifest.json``; return the run specs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON: {err}") from err
        return [spec_from_manifest(manifest, str(path))]
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    return expand(doc, source=str(path), stem=path.stem)


def apply_overrides(specs: list[dict], overrides: dict, output: str | Path | None = None) -> list[dict]:
    """Options given on the command line win over the file: ``*_options`` merge key by key.

    output: an explicit ``--output``: the run folder of a single run, else the parent
    folder of every run (``OUTPUT/<name>``).
    """
    out = []
    for spec in specs:
        swept = sorted(set(spec.get("swept") or ()) & set(overrides))
        if swept:
            key = swept[0]
            raise ConfigError(f"{key} is swept by the experiment file ([sweep] {key} = [...]); overriding it on the "
                              f"command line would run every point of the sweep at {key} = {overrides[key]!r} "
                              f"under the names, outputs and weights of the other values. Drop the option, or "
                              f"edit the file's [sweep] (see docs/experiments.md)")
        spec = _merge(spec, {k: v for k, v in overrides.items() if k in SPEC})
        if output is not None:
            spec["output"] = str(output) if len(specs) == 1 else str(Path(output) / spec["name"])
        out.append(spec)
    return out
