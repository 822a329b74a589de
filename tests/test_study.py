"""``certframe study``: a tiny synthetic study end to end, reuse, resume after Ctrl-C, a changed row, bad input.

The study is ``examples/studies/synthetic.toml`` (16 synthetic chest X-rays at 32 px, a 4-step DDPM with
channels [8, 16], 4-epoch UNets, SegCertify n0 10, n 100 on 4 test images at sigma 0.25 and 0.5), run
once per module on the CPU in fp32; its table is pinned to the values of that run. A smaller study with
an [attack] table (``ATTACK_STUDY``, a few seconds) checks the report's attack pass against the attack
run folders.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from certframe.cli import main
from certframe.study import load_study, paired_bootstrap_ci, run_study
from certframe.study.spec import StudyError

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "examples" / "studies" / "synthetic.toml"
STAGES = ["ddpm", "clean", "gaussian-sigma0.25", "gaussian-sigma0.5", "finetuned-sigma0.25-0.5", "quality",
          "certify-gaussian-sigma0.25", "certify-gaussian-sigma0.5", "certify-ddpm-sigma0.25",
          "certify-ddpm-sigma0.5", "certify-finetuned-sigma0.25", "certify-finetuned-sigma0.5"]
# (row, sigma): certified Dice, abstain rate, clean Dice, minus the Gaussian row, CI low, CI high
GOLDEN = {("gaussian", 0.25): (0.743197, 0.451904, 0.878488, None, None, None),
          ("gaussian", 0.5): (0.236761, 0.734375, 0.869066, None, None, None),
          ("ddpm", 0.25): (0.661438, 0.555908, 0.901044, -0.081759, -0.124862, -0.043169),
          ("ddpm", 0.5): (0.078029, 0.905762, 0.901044, -0.158732, -0.231583, -0.085881),
          ("finetuned", 0.25): (0.748908, 0.223389, 0.933245, 0.005711, -0.010069, 0.026559),
          ("finetuned", 0.5): (0.146982, 0.533691, 0.933245, -0.089779, -0.125144, -0.055079)}


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and "report" not in p.relative_to(folder).parts and p.name != "study.json"}


def _values(table) -> dict:
    out = {}
    for rec in table.to_dict("records"):
        out[(rec["row"], rec["sigma"])] = tuple(None if np.isnan(rec[k]) else rec[k] for k in
                                                ("certified_dice", "abstain_rate", "clean_dice", "diff", "ci_low",
                                                 "ci_high"))
    return out


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The tiny study, run once through the command line on the CPU."""
    folder = tmp_path_factory.mktemp("study") / "synthetic"
    result = CliRunner().invoke(main, ["study", str(STUDY), "--output", str(folder), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return folder, result.output


def test_tiny_study_end_to_end_with_golden_table(done):
    folder, output = done
    assert "12 stages: 0 reused, 12 to run" in output
    from certframe.study.report import study_table

    table, manifest = study_table(folder)
    assert manifest["name"] == "synthetic" and manifest["stages"][0]["name"] == "ddpm"
    values = _values(table)
    assert set(values) == set(GOLDEN)
    for key, expected in GOLDEN.items():
        for got, want in zip(values[key], expected):
            assert (got is None) == (want is None), key
            if want is not None:
                assert got == pytest.approx(want, abs=1e-6), key
    # every output is the ordinary one, with its stage record beside it
    assert (folder / "models" / "ddpm" / "certframe.json").is_file()
    assert json.loads((folder / "models" / "clean.json").read_text())["training"]["epochs_run"] == 4
    assert json.loads((folder / "runs" / "ddpm-sigma0.5" / "manifest.json").read_text())["status"] == "complete"
    for name in STAGES:
        stage = next(s for s in manifest["stages"] if s["name"] == name)
        from certframe.study.folder import read_stamp

        assert read_stamp(folder / stage["output"])["status"] == "complete", name
    report = folder / "report"
    assert {p.name for p in report.iterdir()} == {"report.html", "report.txt", "table.csv", "dice_vs_sigma.png"}
    text = (report / "report.txt").read_text()
    assert "| UNet fine-tuned on D(x + eps) + DDPM minus Gaussian-trained UNet (per sigma), paired bootstrap 95 % CI " \
           "| +0.006 [-0.010, +0.027] | -0.090 [-0.125, -0.055] |" in text
    assert "Denoiser quality" in text and "Training cost per row" in text


def test_rerun_reuses_every_stage(done):
    folder, _ = done
    before = _mtimes(folder)
    result = CliRunner().invoke(main, ["study", str(STUDY), "--output", str(folder), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "12 stages: 12 reused, 0 to run; at most 0 training steps and 0 forward passes" in result.output
    assert "] ddpm:" not in result.output and "done in" not in result.output  # nothing ran
    assert _mtimes(folder) == before
    plan = CliRunner().invoke(main, ["study", str(STUDY), "--output", str(folder), "--plan"])
    assert plan.exit_code == 0 and "12 reused" in plan.output


def test_report_command_on_a_study_folder(done, tmp_path):
    folder, _ = done
    result = CliRunner().invoke(main, ["report", str(folder), "--output", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "paired bootstrap 95 % CI" in result.output
    assert (tmp_path / "rep" / "report.html").read_text().startswith("<!DOCTYPE html>")


class _InterruptAt(Console):
    """A console that raises KeyboardInterrupt (as Ctrl-C would) when a trainer prints ``line`` for ``model``."""

    def __init__(self, model: str, line: str):
        super().__init__(quiet=True)
        self.model, self.line, self.fired, self.current = model, line, False, ""

    def print(self, *objects, **kwargs):
        text = " ".join(str(o) for o in objects)
        if "through denoiser" in text or "fine-tuning" in text or "training" in text:
            self.current = text
        if not self.fired and self.model in self.current and text.startswith(self.line):
            self.fired = True
            raise KeyboardInterrupt
        return super().print(*objects, **kwargs)


def test_interrupted_mid_stage_resumes_to_the_uninterrupted_result(done, tmp_path):
    folder, _ = done
    other = tmp_path / "synthetic"
    stop = _InterruptAt("through denoiser ddpm", "epoch 2/4")  # the fine-tuning, after its 2nd epoch's state
    with pytest.raises(KeyboardInterrupt):
        run_study(STUDY, other, device="cpu", quiet=True, stage_console=stop)
    assert stop.fired
    from certframe.study.folder import read_stamp

    stamp = read_stamp(other / "models" / "finetuned-sigma0.25-0.5.safetensors")
    assert stamp["status"] == "interrupted"
    assert (other / "models" / "finetuned-sigma0.25-0.5.resume" / "state.json").is_file()
    assert not (other / "runs").exists()
    again = run_study(STUDY, other, device="cpu", quiet=True)
    statuses = {s.name: s.status for s in again.stages}
    assert statuses["finetuned-sigma0.25-0.5"] == "resume"
    assert [n for n, s in statuses.items() if s == "reuse"] == STAGES[:4]
    history = json.loads((other / "models" / "finetuned-sigma0.25-0.5.json").read_text())["training"]
    assert history["epochs_run"] == 4
    from safetensors.torch import load_file

    from certframe.study.report import study_table

    resumed, straight = (load_file(f / "models" / "finetuned-sigma0.25-0.5.safetensors") for f in (other, folder))
    assert resumed.keys() == straight.keys() and all(resumed[k].equal(straight[k]) for k in resumed)
    assert _values(study_table(other)[0]) == _values(study_table(folder)[0])
    assert read_stamp(other / "models" / "finetuned-sigma0.25-0.5.safetensors")["attempts"] == 2


def test_changed_row_setting_reruns_only_that_row(done, tmp_path):
    folder, _ = done
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    before = _mtimes(copy)
    changed = tmp_path / "changed" / "synthetic.toml"  # the same study (its name is the file's stem)
    changed.parent.mkdir()
    changed.write_text(STUDY.read_text().replace("per_sigma = false          #", "epochs = 3\nper_sigma = false  #"))
    result = run_study(changed, copy, device="cpu", quiet=True)
    rerun = ["finetuned-sigma0.25-0.5", "certify-finetuned-sigma0.25", "certify-finetuned-sigma0.5"]
    assert result.ran == rerun
    first = next(s for s in result.stages if s.name == "finetuned-sigma0.25-0.5")
    assert first.status == "rerun" and first.reason == "train.epochs 4 -> 3"
    after = _mtimes(copy)
    touched = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert touched and all(k.startswith(("models/finetuned-", "runs/finetuned-")) for k in touched), touched
    assert json.loads((copy / "models" / "finetuned-sigma0.25-0.5.json").read_text())["training"]["epochs"] == 3


def _write(tmp_path: Path, text: str, name: str = "synthetic.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _refused(args: list[str]) -> str:
    result = CliRunner().invoke(main, ["study", *args, "--device", "cpu"])
    assert result.exit_code == 1, result.output
    return result.output.splitlines()[0]


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, done):
    out = tmp_path / "out"
    text = STUDY.read_text()
    cases = [
        (text.replace("patience = 5", "patience = 5\nepochz = 3"),
         " [segmenter]: unknown key(s) ['epochz']; valid keys: batch_size, clean, epochs, finetuned, gaussian, lr, "
         "lr_plateau, options, patience, plugin, seed"),
        (text.replace("[denoiser]\ntrain = { steps = 4, channels = [8, 16], batch_size = 4 }\nddim_steps = 2\n", ""),
         ": row 'ddpm' needs the denoiser, but the study has no [denoiser] table (train = {...}, model = FOLDER, "
         "adm = { checkpoint = FILE.pt } or plugin = NAME)"),
        (text.replace("batch_size = 4 }", "batch_size = 4, max_sigma = 0.3 }"),
         " [denoiser.train]: max_sigma 0.3 is below the study's largest sigma 0.5: the DDPM would not be trained "
         "for it (drop max_sigma: it defaults to the largest sigma)"),
        (text.replace("train = { steps = 4, channels = [8, 16], batch_size = 4 }", 'model = "ddpm-synthetic-lung"')
         .replace("sigmas = [0.25, 0.5]", "sigmas = [0.25, 2.0]"),
         " [denoiser]: sigma 2 needs timestep t*="),
    ]
    for i, (study_text, expected) in enumerate(cases):
        (tmp_path / f"case{i}").mkdir()
        path = _write(tmp_path / f"case{i}", study_text)
        line = _refused([str(path), "--output", str(out)])
        assert line.startswith(f"Error: {path}{expected}"), line
        assert not out.exists()
    # a data set with no train split: 2 image pairs, one for val and one for test
    from PIL import Image

    root = tmp_path / "tiny"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for k in range(2):
        Image.fromarray(np.full((32, 32, 3), 90 * k, np.uint8)).save(root / "images" / f"c{k}.png")
        Image.fromarray(np.full((32, 32), 255 * k, np.uint8)).save(root / "masks" / f"c{k}.png")
    path = _write(tmp_path, text.replace('dataset = "synthetic-lung"', 'dataset = "folder"').replace(
        "dataset_options = { count = 16, size = 32 }",
        f'dataset_options = {{ root = "{root}", size = 32, val_fraction = 0.3, test_fraction = 0.5 }}'), "nosplit.toml")
    line = _refused([str(path), "--output", str(out)])
    assert line == (f"Error: {path}: data set 'folder' has no train split: split='train' with {{'root': '{root}', "
                    f"'size': 32, 'val_fraction': 0.3, 'test_fraction': 0.5}} holds no images (the study trains on "
                    f"split=train, validates on split=val and certifies split=test)"), line
    assert not out.exists()
    # an output folder holding another study: refused, left as it was
    folder, _ = done
    before = _mtimes(folder)
    other = _write(tmp_path, text, "other.toml")
    line = _refused([str(other), "--output", str(folder)])
    assert line == (f"Error: --output {str(folder)!r} holds another study, 'synthetic' (from {STUDY}), not 'other': "
                    f"choose another folder (--output) or delete that one"), line
    assert _mtimes(folder) == before


def test_every_example_study_file_is_valid():
    files = sorted((ROOT / "examples" / "studies").glob("*.toml"))
    names = {p.stem for p in files}
    assert {"synthetic", "kvasir-seg", "cvc-clinicdb", "isic2018", "ph2", "jsrt", "montgomery", "shenzhen"} <= names
    for path in files:
        study = load_study(path)
        assert study.name == path.stem and study.baseline in study.rows


def test_study_file_errors_name_file_and_key(tmp_path):
    path = _write(tmp_path, 'dataset = "synthetic-lung"\nsigmas = [0.5, -1]\n')
    with pytest.raises(StudyError, match=r"synthetic.toml: sigma must be a finite noise level > 0"):
        load_study(path)
    path = _write(tmp_path, 'dataset = "synthetic-lung"\nrows = ["gaussian"]\nbaseline = "ddpm"\n')
    with pytest.raises(StudyError, match=r"baseline 'ddpm' is not one of the rows \['gaussian'\]"):
        load_study(path)
    path = _write(tmp_path, 'dataset = "synthetic-lung"\nrows = ["gaussian"]\nn = 0\n')
    with pytest.raises(StudyError, match=r"synthetic.toml: n must be a positive integer number of samples, got 0"):
        load_study(path)


def test_paired_bootstrap_ci_resamples_images_with_a_fixed_seed():
    a, b = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.5, 0.5, 0.5, 0.5])
    d, lo, hi = paired_bootstrap_ci(a, b, n_boot=2000, seed=0)
    assert d == pytest.approx(0.25) and lo < d < hi and (lo, hi) == paired_bootstrap_ci(a, b, n_boot=2000, seed=0)[1:]
    assert paired_bootstrap_ci(a, a)[0:3] == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap_ci(a, b[:3])


def test_ctrl_c_on_the_command_line_says_how_to_resume(tmp_path, monkeypatch):
    import certframe.study.stages as stages

    def interrupted(stage, ctx, resume):
        raise KeyboardInterrupt

    monkeypatch.setitem(stages.RUNNERS, "train-denoiser", interrupted)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["study", str(STUDY), "--output", str(out), "--device", "cpu"])
    assert result.exit_code == 130, result.output
    assert "run the same command again to resume it" in result.output
    from certframe.study.folder import read_stamp

    assert read_stamp(out / "models" / "ddpm")["status"] == "interrupted"


# The smallest study with an attack pass: one Gaussian UNet (1 epoch, one for both sigmas), 2 test images,
# the falsification job (2 pixels) and a 2-step PGD-L2, at the certified radius and twice it.
ATTACK_STUDY = """
title = "synthetic-lung: the attack pass"
dataset = "synthetic-lung"
dataset_options = { count = 16, size = 32 }
sigmas = [0.25, 0.5]
rows = ["gaussian"]
n0 = 10
n = 100
alpha = 0.001
tau = 0.75
limit = 2
batch_size = 55

[segmenter]
plugin = "monai"
options = { arch = "unet", network = { channels = [8, 16], strides = [2], num_res_units = 0 } }
epochs = 1
batch_size = 4
lr = 0.003

[segmenter.gaussian]
per_sigma = false

[attack]
attacks = ["pgdl2"]
attack_options = { pgdl2 = { steps = 2 } }
radius_multiples = [1.0, 2.0]
falsify_options = { max_pixels = 2, steps = 2, restarts = 1, num_draws = 2, empirical = false }

[bootstrap]
n_boot = 100
"""
ATTACK_ROW = "| Gaussian-trained UNet (one for all sigma) |"


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """The attack study, run once on the CPU (a few seconds)."""
    root = tmp_path_factory.mktemp("attacked")
    path = _write(root, ATTACK_STUDY, "attacked.toml")
    result = run_study(path, root / "attacked", device="cpu", quiet=True)
    return root / "attacked", result


def _attack_cells(text: str) -> list[str]:
    """The cells (sigma 0.25, sigma 0.5) of the attack pass's row in report.txt."""
    section = text[text.index("Attack pass"):]
    line = next(v for v in section.splitlines() if v.startswith(ATTACK_ROW))
    return [c.strip() for c in line[len(ATTACK_ROW):].strip(" |").split(" | ")]


def test_attack_pass_in_the_study_report_is_what_the_attack_run_folders_record(attacked):
    import pandas as pd

    folder, result = attacked
    assert result.ran[-2:] == ["attack-gaussian-sigma0.25", "attack-gaussian-sigma0.5"]
    report = folder / "report"
    assert {p.name for p in report.iterdir()} == {"report.html", "report.txt", "table.csv", "attacks.csv",
                                                  "dice_vs_sigma.png"}
    csv = pd.read_csv(report / "attacks.csv")
    cells = _attack_cells((report / "report.txt").read_text())
    for sigma, cell in zip((0.25, 0.5), cells):
        run = folder / "attacks" / f"gaussian-sigma{sigma:g}"
        manifest = json.loads((run / "manifest.json").read_text())
        recorded = json.loads((run / "robustness.json").read_text())  # one object per budget
        got = csv[csv["sigma"] == sigma].to_dict("records")
        assert len(got) == len(recorded) == 4 and manifest["status"] == "complete"
        for g, r in zip(got, recorded):
            assert g["status"] == "complete" and g["run"] == str(run)
            for key in ("attacks", "norm", "tau", "radius_multiple", "images", "covered", "tested", "not_tested"):
                assert g[key] == r[key], (sigma, key)
            for key in ("violations", "flips_beyond_claim"):  # empty where the run records none, never 0
                assert (None if np.isnan(g[key]) else g[key]) == r[key], (sigma, key)
            # robustness.json keeps 10 decimals (pandas' to_json), the report every digit
            for key in ("eps", "clean_dice", "base_robust_dice", "smoothed_dice", "smoothed_robust_dice",
                        "certified_dice_at_eps"):
                assert (np.isnan(g[key]) and r[key] is None) or round(g[key], 10) == pytest.approx(r[key], abs=1e-15)
            at_claim = r["radius_multiple"] <= 1
            assert g["check"] == (f"{r['violations']:.0f} violations of {r['tested']} tested" if at_claim else
                                  f"{r['flips_beyond_claim']:.0f} flips beyond the claim of {r['tested']} tested")
        # the sentence: the manifest's totals (violations; tests at and beyond the claim; images)
        claim = [r for r in recorded if r["radius_multiple"] <= 1]
        beyond = [r for r in recorded if r["radius_multiple"] > 1]
        assert sum(r["tested"] for r in recorded) == manifest["tested"]
        flips = sum(r["flips_beyond_claim"] for r in beyond)
        assert cell == (f"{manifest['violations']} violations in {sum(r['tested'] for r in claim)} tests at the claim, "
                        f"of {sum(r['covered'] for r in claim)} covered pixels; {flips:.0f} flips in "
                        f"{sum(r['tested'] for r in beyond)} tests beyond it (k 2), {manifest['images']} images, "
                        f"attacks falsify, pgdl2"), cell
    from certframe.study.folder import read_stamp
    from certframe.study.report import cost_table

    cost = cost_table(folder).set_index("row")  # the attack runs' own seconds, on the row they attack
    spent = sum(read_stamp(folder / "attacks" / f"gaussian-sigma{s:g}")["seconds"] for s in (0.25, 0.5))
    assert cost.loc["gaussian", "attack_seconds"] == pytest.approx(spent) and spent > 0
    page = (report / "report.html").read_text()
    assert "<h2>attack pass</h2>" in page and "violations of" in page and "&lt;NA&gt;" not in page


def test_attack_pass_not_run_missing_or_interrupted_is_said_never_a_zero(attacked, tmp_path):
    import pandas as pd

    from certframe.study.folder import read_stamp, stamp_path, write_stamp
    from certframe.study.report import write_study_report

    folder, _ = attacked
    copy = tmp_path / "attacked"
    shutil.copytree(folder, copy)
    # sigma 0.25: cut short after its first image (what Ctrl-C leaves: the record interrupted, the run running)
    run = copy / "attacks" / "gaussian-sigma0.25"
    write_stamp(run, {**read_stamp(run), "status": "interrupted"})
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    lines = (run / "results.csv").read_text().splitlines(keepends=True)
    (run / "results.csv").write_text("".join(lines[:1 + manifest["rows_per_image"]]))
    # sigma 0.5: its record says complete but its run folder is gone
    shutil.rmtree(copy / "attacks" / "gaussian-sigma0.5")
    _, lines, _ = write_study_report(copy)
    first, second = _attack_cells("\n".join(lines))
    assert first.endswith(", 1 image, attacks falsify, pgdl2 [interrupted]") and second == "missing"
    # sigma 0.5 never ran (a study stopped before its attack stages): "not run", no count
    stamp_path(copy / "attacks" / "gaussian-sigma0.5").unlink()
    _, lines, _ = write_study_report(copy)
    assert _attack_cells("\n".join(lines))[1] == "not run"
    csv = pd.read_csv(copy / "report" / "attacks.csv")
    cut, never = csv[csv["sigma"] == 0.25], csv[csv["sigma"] == 0.5]
    assert (cut["status"] == "interrupted").all() and (cut["images"] == 1).all() and len(cut) == 4
    assert len(never) == 1 and never["status"].iloc[0] == "not run"
    assert never[["images", "covered", "tested", "violations", "flips_beyond_claim", "check"]].isna().all(axis=None)
    budgets = [v.split() for v in "\n".join(lines).splitlines() if v.split()[:2] == ["gaussian", "0.5"]]
    assert budgets == [["gaussian", "0.5", "not", "run"] + ["-"] * 12], budgets


def test_study_without_an_attack_table_says_so_in_one_line(done):
    folder, _ = done
    text = (folder / "report" / "report.txt").read_text()
    assert text.count("Attack pass") == 1
    assert "Attack pass: none requested (the study file has no [attack] table)." in text
    assert not (folder / "report" / "attacks.csv").exists()
    from certframe.study.report import cost_table

    cost = cost_table(folder)  # no attack pass: no attack seconds (NaN), not 0
    assert len(cost) == 3 and cost["attack_seconds"].isna().all()


def test_report_of_a_run_folder_recorded_complete_but_gone_says_missing(done, tmp_path):
    """A certify stage recorded complete whose run folder was deleted: 'missing' in the table and no CI against it,
    never the numbers of a run that is not there; the quality stage deleted likewise says so."""
    from certframe.study.report import write_study_report

    folder, _ = done
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    shutil.rmtree(copy / "runs" / "finetuned-sigma0.5")
    for name in ("denoiser.json", "denoiser.stage.json"):
        (copy / "quality" / name).unlink()
    table, lines, _ = write_study_report(copy, tmp_path / "rep")
    rec = table.set_index(["row", "sigma"]).loc[("finetuned", 0.5)]
    assert rec["status"] == "missing" and rec["images"] == 0 and np.isnan(rec["certified_dice"])
    assert np.isnan(rec["diff"])
    row = next(line for line in lines if line.startswith("| UNet fine-tuned on D(x + eps) + DDPM |"))
    assert row.endswith("| missing |")
    assert table.set_index(["row", "sigma"]).loc[("finetuned", 0.25), "status"] == "complete"
    assert "Denoiser quality: not run" in lines


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_study_on_cuda_runs_every_stage_on_the_device(tmp_path):
    """`--device cuda`: every stage (DDPM and UNet training, the quality table, each certification) records the
    device it ran on, and the table is complete. CUDA training is not bit-reproducible against the CPU (other
    kernels), so its values are checked for range, not against the CPU's golden table."""
    from certframe.study.folder import read_stamp

    folder = tmp_path / "cuda"
    result = run_study(STUDY, folder, device="cuda", quiet=True)
    assert result.ran == STAGES
    devices = {s.name: read_stamp(s.output)["device"] for s in result.stages}
    assert all(d.startswith("cuda") for d in devices.values()), devices
    table = result.table
    assert (table["status"] == "complete").all() and (table["images"] == 4).all()
    assert table["certified_dice"].between(0, 1).all()
