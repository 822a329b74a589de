"""Results that cannot be silently wrong (run layer): provenance, clean one-line errors, honest status.

Each case of issue 14 that the run layer owns gets a test: the wrong result it used to
give is now a refusal or a one-line error naming the file, plugin or option.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from certframe.cli import main
from certframe.cli.errors import describe
from certframe.plugins.segmenters.monai_segmenter import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "synthetic-lung", "--dataset-option", "count=2", "--dataset-option", "size=32",
        "--n0", "4", "-n", "12", "--alpha", "0.01", "--batch-size", "16", "--quiet"]


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def one_line_error(result, *fragments):
    """The command failed with one ``Error:`` line (no traceback) containing every fragment."""
    assert result.exit_code != 0
    text = result.output.strip()
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def copy_weights(name: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(WEIGHTS_DIR / f"{name}.safetensors", dest)
    return dest


def test_resume_refuses_weights_replaced_in_place(tmp_path):
    weights = copy_weights("synthetic-lung", tmp_path / "w" / "model.safetensors")
    out = tmp_path / "run"
    run("certify", *TINY, "--segmenter-option", f"weights={weights}", "--limit", "1", "--output", out)
    copy_weights("synthetic-lung-noise0.25", weights)          # same path, another model
    r = run("certify", *TINY, "--segmenter-option", f"weights={weights}", "--output", out, "--resume", ok=False)
    one_line_error(r, "cannot resume", "segmenter's weights differ", "segmenter file weights=")
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"   # untouched


def test_manifest_records_hashes_absolute_paths_and_the_checkpoint_configuration(tmp_path, monkeypatch):
    weights = copy_weights("synthetic-lung", tmp_path / "w" / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    run("certify", *TINY, "--segmenter-option", "weights=w/model.safetensors", "--output", "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["segmenter_options"]["weights"] == str(weights.resolve())
    seg = manifest["provenance"]["segmenter"]
    assert seg["model"]["state_sha256"].startswith("sha256:") and len(seg["model"]["state_sha256"]) == 71
    assert seg["model"]["in_channels"] == 1
    assert seg["files"]["weights"]["path"] == str(weights.resolve())
    assert len(seg["files"]["weights"]["sha256"]) == 64
    config = json.loads((WEIGHTS_DIR / "synthetic-lung.json").read_text())
    # the options list what the checkpoint says, not the signature's defaults (network=None)
    assert manifest["plugins"]["segmenter"]["options"]["network"] == config["network"]
    assert manifest["plugins"]["segmenter"]["options"]["in_channels"] == config["in_channels"]
    # --from-manifest re-runs from another working directory (absolute paths)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run("certify", "--from-manifest", tmp_path / "run" / "manifest.json", "--output", "again", "--quiet")
    assert json.loads((elsewhere / "again" / "manifest.json").read_text())["status"] == "complete"
    # ... and refuses when the weights changed since
    copy_weights("synthetic-lung-noise0.25", weights)
    r = run("certify", "--from-manifest", tmp_path / "run" / "manifest.json", "--output", "third", ok=False)
    one_line_error(r, "used other inputs", "segmenter's weights differ")
    assert not (elsewhere / "third").exists()


def test_a_swept_key_cannot_be_overridden(tmp_path):
    r = run("certify", "--config", ROOT / "examples" / "configs" / "cvc-clinicdb.toml", "--sigma", "0.5",
            "--output", tmp_path / "x", ok=False)
    one_line_error(r, "sigma is swept", "docs/experiments.md")
    assert (ROOT / "docs" / "experiments.md").is_file()     # the page config.py points to exists
    assert "docs/experiments.md" in (ROOT / "certframe" / "run" / "config.py").read_text()


@pytest.mark.parametrize("args, fragments", [
    (["--sigma", "inf"], ["sigma must be a finite noise level > 0", "got inf"]),
    (["--sigma", "nan"], ["sigma must be a finite noise level > 0"]),
    (["--limit", "0"], ["limit must be an integer >= 1, got 0"]),
    (["--device", "tpu"], ["device 'tpu'", "expected auto, cpu, cuda"]),
    (["--dataset-option", "count=four"], ["dataset 'synthetic-lung'", "count=four", "could not be built"]),
    (["--dataset", "nope"], ["unknown dataset 'nope'", "certframe plugins"]),
], ids=["sigma-inf", "sigma-nan", "limit-0", "device-tpu", "count-four", "unknown-dataset"])
def test_bad_parameters_fail_before_anything_is_written(tmp_path, args, fragments):
    out = tmp_path / "run"
    r = run("certify", *TINY, "--segmenter-option", "weights=synthetic-lung", *args, "--output", out, ok=False)
    one_line_error(r, *fragments)
    assert not out.exists()


def test_broken_weights_are_one_line_naming_the_file(tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((WEIGHTS_DIR / "synthetic-lung.safetensors").read_bytes()[:1000])
    r = run("certify", *TINY, "--segmenter-option", f"weights={truncated}", "--output", tmp_path / "a", ok=False)
    one_line_error(r, "segmenter 'monai'", str(truncated), "could not be built")
    # weights of another architecture: hundreds of "size mismatch" lines become one
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(WEIGHTS_DIR / "synthetic-lung.safetensors"), "pt") as f:
        meta = f.metadata()
    config = json.loads(meta["certframe"])
    config["network"] = {**config.get("network", {}), "channels": [4, 8, 16, 32]}
    other = tmp_path / "other.safetensors"
    save_file(load_file(str(WEIGHTS_DIR / "synthetic-lung.safetensors")), str(other),
              metadata={"certframe": json.dumps(config)})
    r = run("certify", *TINY, "--segmenter-option", f"weights={other}", "--output", tmp_path / "b", ok=False)
    line = one_line_error(r, "segmenter 'monai'", "could not be built")
    assert len(line) < 600


def test_a_corrupt_diffusers_folder_is_one_line(tmp_path):
    folder = tmp_path / "ddpm"
    shutil.copytree(WEIGHTS_DIR / "ddpm-synthetic-lung", folder)
    (folder / "unet" / "config.json").write_text("{ not json")
    r = run("certify", *TINY, "--segmenter-option", "weights=synthetic-lung", "--denoiser", "ddpm",
            "--denoiser-option", f"model={folder}", "--output", tmp_path / "run", ok=False)
    one_line_error(r, "denoiser 'ddpm'", "could not be built")


def test_a_read_only_output_folder_is_one_line(tmp_path, monkeypatch):
    """(Tests run as root, who may write anywhere: the folder's refusal is simulated where it happens.)"""
    from certframe.run.folder import RunFolder

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self.path / ".lock"))

    monkeypatch.setattr(RunFolder, "lock", refuse)
    r = run("certify", *TINY, "--segmenter-option", "weights=synthetic-lung", "--output", tmp_path / "run", ok=False)
    one_line_error(r, "permission denied", str(tmp_path / "run" / ".lock"), "--output")


def test_os_errors_become_one_line_with_the_fix():
    full = OSError(28, "No space left on device")
    full.filename = "runs/x/results.csv"
    assert describe(full) == ("the disk is full while writing 'runs/x/results.csv': free space, then continue "
                              "the run with --resume")
    denied = PermissionError(13, "Permission denied")
    denied.filename = "/ro/run/.lock"
    assert "permission denied" in describe(denied) and "/ro/run/.lock" in describe(denied)
    assert describe(RuntimeError("boom\nmore")) == "RuntimeError: boom (run `certframe --debug ...` for the traceback)"


def test_a_failing_data_set_marks_the_run_failed_and_report_says_why(tmp_path):
    from certframe import hookimpl
    from certframe.plugins.datasets.synthetic import SyntheticLung
    from certframe.registry import get_registry
    from certframe.run import RunSpec, run_certify
    from certframe.run.folder import RunError, RunFolder

    class Flaky(SyntheticLung):
        def item_ids(self):
            return [f"flaky-{i}" for i in range(len(self))]

        def __getitem__(self, i):
            if i == 1:
                raise OSError("unreadable file lung-1.png")
            return super().__getitem__(i)

    class Plugin:
        @hookimpl
        def register_datasets(self, register):
            register("flaky", Flaky)

    reg = get_registry(load_entrypoints=False, plugins=[("flaky", Plugin())])
    spec = RunSpec(dataset="flaky", dataset_options={"count": 3, "size": 32},
                   segmenter_options={"weights": "synthetic-lung"}, n0=4, n=12, alpha=0.01, batch_size=16)
    with pytest.raises(ValueError, match="Flaky could not read item 1: OSError: unreadable file lung-1.png"):
        run_certify(spec, tmp_path / "run", quiet=True, registry=reg)
    manifest = RunFolder(tmp_path / "run").manifest()
    assert manifest["status"] == "failed" and "could not read item 1" in manifest["error"]
    with pytest.raises(RunError, match="status 'failed': ValueError: .*could not read item 1"):
        RunFolder(tmp_path / "run").results()
    assert len(RunFolder(tmp_path / "run").results(require_complete=False)) == 1   # image 0 is kept


def test_attack_accepts_batch_size_auto(tmp_path):
    run("attack", *TINY, "--segmenter-option", "weights=synthetic-lung", "--dataset-option", "count=1",
        "--batch-size", "auto", "--attack", "pgdl2", "--output", tmp_path / "a")


def test_debug_shows_the_traceback(tmp_path):
    r = CliRunner().invoke(main, ["--debug", "certify", *TINY, "--sigma", "inf", "--output", str(tmp_path / "x")])
    assert r.exit_code != 0 and r.exception is not None and "finite noise level" in str(r.exception)


def test_a_denoiser_beyond_its_trained_range_is_refused_before_writing(tmp_path):
    """The bundled DDPM was trained on t <= 440: at 32 px (the resize to 64 px lowers the noise) sigma 3.0
    lies beyond it; the run stops before the folder exists, naming the largest sigma it supports."""
    out = tmp_path / "run"
    r = run("certify", *TINY, "--segmenter-option", "weights=synthetic-lung", "--denoiser", "ddpm",
            "--sigma", "3.0", "--output", out, ok=False)
    one_line_error(r, "ddpm-synthetic-lung", "largest sigma")
    assert not out.exists()


def test_every_example_experiment_file_expands():
    """The files of examples/configs parse and expand (names unique, outputs distinct); the data set
    files run the paper's Gaussian and DDPM rows plus the denoised-fine-tuned row at every sigma; the bundled
    synthetic-lung file its bundled denoised-fine-tuned model, behind the denoiser and at the sigma it was tuned for."""
    from certframe.run.config import load_experiment

    for path in sorted((ROOT / "examples" / "configs").glob("*.toml")):
        runs = load_experiment(path)
        assert len({r["output"] for r in runs}) == len(runs) and runs, path.name
        names = {r["name"] for r in runs}
        if path.stem != "synthetic-lung":
            assert {f"ddpm-finetuned-sigma{s}" for s in (0.25, 0.5, 1.0)} <= names, (path.name, names)
        else:
            from certframe.registry import get_registry
            from certframe.training.tuning import segmenter_tuning_warning

            (tuned,) = [r for r in runs if r["name"] == "ddpm-finetuned"]
            registry = get_registry()
            seg = registry.create("segmenter", "monai", **tuned["segmenter_options"])
            den = registry.create("denoiser", tuned["denoiser"], **tuned["denoiser_options"])
            assert segmenter_tuning_warning(seg, tuned["denoiser"], den, tuned["sigma"]) is None
            assert "instead of" in segmenter_tuning_warning(seg, "none", None, tuned["sigma"])
