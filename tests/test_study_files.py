"""The example study files of the real data sets (``examples/studies/*.toml`` but synthetic.toml) against a
tiny fixture of each data set in its real on-disk layout (tests/dataset_fixtures.py).

Each file is copied with only its ``dataset_options`` root pointed at the fixture, and ``certframe study FILE
--plan`` builds the train, val and test splits with the file's options, builds the file's segmenter network
and checks its denoiser settings: so each file's settings are accepted by its loader and plugins, and its plan
lists one stage per model, row and sigma. Without the masks folder the same file fails with one clear line.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from dataset_fixtures import (
    write_cvc,
    write_isic,
    write_jsrt,
    write_kvasir,
    write_montgomery,
    write_ph2,
    write_shenzhen,
)

from certframe.cli import main
from certframe.study import load_study
from certframe.study.spec import ROW_DENOISER, ROW_MODEL

STUDIES = Path(__file__).resolve().parents[1] / "examples" / "studies"

pytestmark = [pytest.mark.filterwarnings("ignore::certframe.plugins.datasets._files.UnpairedImagesWarning"),
              pytest.mark.filterwarnings("ignore:Corrupt EXIF data")]


def _isic(root: Path) -> Path:  # the three challenge phases: the official splits
    write_isic(root, "Training", range(6))
    write_isic(root, "Validation", range(100, 102))
    return write_isic(root, "Test", range(200, 202))


def _jsrt(root: Path) -> Path:  # the real 2048 x 2048 raw images: the study file keeps image_size's default
    for k in range(1, 7):
        write_jsrt(root, k, side=2048)
    return root


# study file -> (the writer of a fixture in that data set's layout, the glob of its mask folders, the start of
# the loader's error without them). Each fixture has 6 or 7 pairs, so the seeded split (test 20 %, val 10 %,
# rounded) leaves at least one image in every split; ISIC 2018 has its three official phases.
FIXTURES = {
    "kvasir-seg": (write_kvasir, "masks", "kvasir-seg masks: expected a folder at "),
    "cvc-clinicdb": (lambda root: write_cvc(root, range(1, 7), "tif"), "Ground Truth",
                     "cvc-clinicdb masks: expected a folder at "),
    "isic2018": (_isic, "ISIC2018_Task1_*_GroundTruth", "isic2018: no image/mask pairs found under "),
    "ph2": (lambda root: write_ph2(root, 6), "PH2 Dataset images/*/*_lesion", "ph2: no image/mask pairs found under "),
    "jsrt": (_jsrt, "scratch", "jsrt: no image/mask pairs found under "),
    "montgomery": (lambda root: write_montgomery(root, range(6)), "ManualMask",
                   "montgomery leftMask: expected a folder at "),
    "shenzhen": (lambda root: write_shenzhen(root, range(7)), "masks", "shenzhen masks: expected a folder at "),
}


def test_every_real_data_study_file_has_a_fixture():
    assert {p.stem for p in STUDIES.glob("*.toml")} - {"synthetic"} == set(FIXTURES)


def _pointed_at(name: str, root: Path, folder: Path) -> Path:
    """The example study file ``name`` copied into ``folder`` (same file name, so the same study name) with its
    dataset_options' root replaced by ``root`` and nothing else changed."""
    text = (STUDIES / f"{name}.toml").read_text()
    lines = [i for i, line in enumerate(text.splitlines()) if line.startswith("dataset_options")]
    assert len(lines) == 1, f"{name}.toml: expected one dataset_options line"
    line = text.splitlines()[lines[0]]
    new, count = re.subn(r'\broot = "[^"]*"', f"root = {json.dumps(str(root))}", line)
    assert count == 1, f"{name}.toml: dataset_options has no root = \"...\": {line}"
    path = folder / f"{name}.toml"
    path.write_text(text.replace(line, new))
    return path


def _expected_stages(study) -> list[str]:
    """The stage names docs/study.md gives for the study's rows, sigmas and model groups, in plan order."""
    def tag(group):
        return "sigma" + "-".join(f"{s:g}" for s in group)

    kinds = {ROW_MODEL[r] for r in study.rows}
    uses_denoiser = any(ROW_DENOISER[r] != "none" for r in study.rows)
    if uses_denoiser or (study.models["gaussian"].init == "clean" and "gaussian" in kinds):
        kinds.add("clean")
    denoiser = study.denoiser.kind if uses_denoiser else None
    names = {"train": ["ddpm"], "adm": ["adm"]}.get(denoiser, [])
    for kind in ("clean", "gaussian", "finetuned"):
        if kind in kinds:
            names += [kind if kind == "clean" else f"{kind}-{tag(g)}" for g in study.models[kind].groups()]
    names += ["quality"] if uses_denoiser else []
    names += [f"certify-{row}-sigma{s:g}" for row in study.rows for s in study.sigmas]
    names += [f"attack-{row}-sigma{s:g}" for row in (study.attack or {}).get("rows", []) for s in study.sigmas]
    return names


def _plan_stages(output: str) -> dict[str, str]:
    """stage name -> status, from the plan's table."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["stage", "status"])
    end = next(i for i, line in enumerate(lines) if re.match(r"\d+ stages: ", line))
    return dict(line.split()[:2] for line in lines[start + 1:end])


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_study_file_plans_against_its_data_sets_real_layout(name, tmp_path):
    write = FIXTURES[name][0]
    root = write(tmp_path / "data" / name)
    path = _pointed_at(name, root, tmp_path)
    out = tmp_path / "studies" / name
    result = CliRunner().invoke(main, ["study", str(path), "--plan", "--output", str(out)])
    assert result.exit_code == 0, result.output
    study = load_study(path)
    assert study.dataset_options["root"] == str(root)
    assert study.sigmas and study.rows and study.baseline in study.rows
    stages = _plan_stages(result.output)
    expected = _expected_stages(study)
    assert list(stages) == expected
    assert set(stages.values()) == {"run"}
    assert f"{len(expected)} stages: 0 reused, {len(expected)} to run" in result.output
    assert any(line.startswith(f"study {name} (") for line in result.output.splitlines())
    assert not out.exists() and not (tmp_path / "studies").exists()  # --plan writes nothing


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_study_file_without_the_masks_folder_is_one_clear_error(name, tmp_path):
    write, masks, message = FIXTURES[name]
    root = write(tmp_path / "data" / name)
    gone = sorted(root.glob(masks))
    assert gone
    for folder in gone:
        shutil.rmtree(folder)
    path = _pointed_at(name, root, tmp_path)
    out = tmp_path / "studies" / name
    result = CliRunner().invoke(main, ["study", str(path), "--plan", "--output", str(out)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    dataset = load_study(path).dataset
    assert errors[0].startswith(f"Error: {path}: data set {dataset!r} could not be built: split='train' gave "
                                f"FileNotFoundError: {message}"), errors[0]
    assert str(gone[0] if "expected a folder" in message else root) in errors[0]
    assert not out.exists()
