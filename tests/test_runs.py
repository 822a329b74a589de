"""Run folders: manifest, crash-safe resume (a real kill -9), re-runs from manifests,
experiment files, and clear errors on corrupt or mismatched folders."""
from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from paused_run import interrupt, start_paused, wait_for_pause  # noqa: E402  (tests/)

from certframe.cli import main
from certframe.registry import get_registry
from certframe.run.config import ConfigError, apply_overrides, expand, load_experiment
from certframe.run.folder import RunFolder
from certframe.run.layout import RunError
from certframe.run.records import dataset_identity
from certframe.run.tables import compare_results

ROOT = Path(__file__).resolve().parent.parent
# small and fast: 64x64 synthetic chest X-rays, the bundled Gaussian-trained UNet
REQUEST = ["certify", "--dataset", "synthetic-lung", "--segmenter-option", "weights=synthetic-lung-noise0.25",
           "--sigma", "0.25", "--n0", "10", "-n", "40", "--alpha", "0.01", "--tau", "0.6", "--tau", "0.75",
           "--batch-size", "25"]
# On the CPU in fp32 whether or not CUDA is present (the default --device auto would mean CUDA and bf16 there):
# these tests compare run folders bit for bit with CPU runs pinned to one thread, and read fp32 from manifests.
BASE = [*REQUEST, "--device", "cpu"]


@pytest.fixture(autouse=True)
def _same_threads_as_subprocesses(one_thread):
    """Every test here compares with subprocess runs (OMP_NUM_THREADS=1): see conftest.one_thread."""
    yield


def invoke(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def read(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "results.csv", dtype={"image_id": str})


def same_certificates(a: Path, b: Path) -> None:
    names = sorted(p.name for p in (a / "certificates").glob("*.npz"))
    assert names == sorted(p.name for p in (b / "certificates").glob("*.npz")) and names
    for name in names:
        za, zb = np.load(a / "certificates" / name), np.load(b / "certificates" / name)
        assert set(za.files) == {"labels", "taus", "mask", "clean", "image"}
        for key in za.files:
            np.testing.assert_array_equal(za[key], zb[key], err_msg=f"{name}:{key}")


COUNT = 5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of COUNT images."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference") / "run"
    invoke(*BASE, "--dataset-option", f"count={COUNT}", "--output", out, "--quiet")
    torch.set_num_threads(old)
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_run_resumes_to_identical_results(tmp_path, sig, reference):
    count = COUNT

    run, marker = tmp_path / "interrupted", tmp_path / "paused"
    proc = start_paused([*BASE, "--dataset-option", f"count={count}", "--output", run, "--quiet"], marker)
    wait_for_pause(marker, proc)  # image 0's two rows (tau 0.6, 0.75) are written; image 1 is under way
    interrupt(proc, sig)
    assert proc.returncode != 0
    done = read(run)
    assert done["index"].tolist() == [0, 0], "the run was not interrupted in image 1"
    manifest = json.loads((run / "manifest.json").read_text())
    if sig == signal.SIGINT:   # Ctrl-C: the manifest says so, and the command says how to continue
        assert proc.returncode == 130 and manifest["status"] == "interrupted"
        assert "--resume" in proc.stderr.read().decode()
    else:                      # kill -9 leaves no chance to write anything
        assert manifest["status"] == "running"

    # without --resume the folder is protected
    r = invoke(*BASE, "--dataset-option", f"count={count}", "--output", run, ok=False)
    assert r.exit_code != 0 and "--resume" in r.output

    invoke(*BASE, "--dataset-option", f"count={count}", "--output", run, "--resume", "--quiet")
    compare_results(read(reference), read(run))  # every column but wall time
    assert read(run)[["index", "tau"]].values.tolist() == [[i, t] for i in range(count) for t in (0.6, 0.75)]
    same_certificates(reference, run)
    resumed = json.loads((run / "manifest.json").read_text())
    assert resumed["status"] == "complete" and resumed["resumed"] == 1 and resumed["images"] == count
    if importlib.util.find_spec("pyarrow") is not None:
        pd.testing.assert_frame_equal(pd.read_parquet(run / "results.parquet").drop(columns="seconds"),
                                      read(run).drop(columns="seconds"))
    else:  # Parquet is written only where pyarrow is installed
        assert not (run / "results.parquet").exists()


def test_resume_drops_a_partially_written_image(tmp_path):
    count = 3
    reference = tmp_path / "reference"
    invoke(*BASE, "--dataset-option", f"count={count}", "--output", reference, "--quiet")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text((reference / "manifest.json").read_text())
    lines = (reference / "results.csv").read_text().splitlines(keepends=True)
    # header, image 0 complete, image 1: one full row of two and a cut-off line
    (run / "results.csv").write_text("".join(lines[:4]) + lines[4][:17])
    with pytest.raises(RunError, match="truncated: its last line is cut off"):
        RunFolder(run).results()
    (run / "results.csv").write_text("".join(lines[:4]))
    with pytest.raises(RunError, match=r"last image \(index 1\) has 1 of 2 rows"):
        RunFolder(run).results(require_complete=False)
    (run / "results.csv").write_text("".join(lines[:4]) + lines[4][:17])
    assert RunFolder(run).repair(rows_per_image=2) == {0: "lung-test-0000"}
    assert (run / "results.csv").read_text() == "".join(lines[:3])
    invoke(*BASE, "--dataset-option", f"count={count}", "--output", run, "--resume", "--quiet")
    compare_results(read(reference), read(run))


def test_manifest_records_the_resolved_configuration(tmp_path):
    run = tmp_path / "run"
    # --device auto (the default): the manifest keeps what was asked and records what it resolved to
    invoke(*REQUEST, "--dataset-option", "count=2", "--output", run, "--quiet", "--label", "gaussian UNet")
    m = json.loads((run / "manifest.json").read_text())
    assert m["format"] == "certframe-run/1" and m["status"] == "complete" and m["label"] == "gaussian UNet"
    assert m["config"] == {"dataset": "synthetic-lung", "dataset_options": {"count": 2},
                           "segmenter": "monai", "segmenter_options": {"weights": "synthetic-lung-noise0.25"},
                           "denoiser": "none", "denoiser_options": {}, "certifier": "segcertify",
                           "certifier_options": {}, "sigma": 0.25, "n0": 10, "n": 40, "alpha": 0.01,
                           "taus": [0.6, 0.75], "seed": 0, "limit": None,
                           "noise_stream": "philox4x32-10/box-muller/1"}
    assert {k: m["execution"][k] for k in ("batch_size", "device", "certificates")} == {
        "batch_size": 25, "device": "auto", "certificates": True}
    assert m["rows_per_image"] == 2
    assert m["device"] == ("cuda" if torch.cuda.is_available() else "cpu") and m["correction"] == "holm"
    assert m["execution"]["accelerate"]["precision"] == (
        ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if torch.cuda.is_available() else "fp32")
    assert m["plugins"]["certifier"]["options"] == {"correction": "holm"}
    assert m["plugins"]["dataset"]["options"] == {"count": 2, "size": 64, "seed": 0, "split": "test"}
    assert m["plugins"]["segmenter"]["version"] == m["versions"]["certframe"]
    assert {"python", "torch", "numpy", "scipy", "pandas"} <= set(m["versions"])
    data = get_registry(load_entrypoints=False).create("dataset", "synthetic-lung", count=2)
    assert m["dataset"] == dataset_identity(data) and len(m["dataset"]["sha256"]) == 64
    other = get_registry(load_entrypoints=False).create("dataset", "synthetic-lung", count=2, seed=1)
    assert dataset_identity(other)["sha256"] != m["dataset"]["sha256"]
    assert m["classes"] == ["background", "lungs"]
    summary = json.loads((run / "summary.json").read_text())
    df = read(run)
    for row in summary:
        part = df[df["tau"] == row["tau"]]
        assert row["images"] == 2
        assert row["certified_dice"] == pytest.approx(part["certified_dice"].mean(), abs=1e-12)
        assert row["certified_dice_std"] == pytest.approx(np.std(part["certified_dice"].values), abs=1e-12)


def test_a_manifest_reruns_the_same_experiment(tmp_path):
    run = tmp_path / "run"
    invoke(*BASE, "--dataset-option", "count=2", "--output", run, "--quiet", "--label", "g")
    again = tmp_path / "again"
    invoke("certify", "--from-manifest", run / "manifest.json", "--output", again, "--quiet")
    compare_results(read(run), read(again))
    same_certificates(run, again)
    a, b = (json.loads((p / "manifest.json").read_text()) for p in (run, again))
    assert a["config"] == b["config"] and a["execution"] == b["execution"] and b["label"] == "g"
    # --config accepts a manifest too, and explicit options still override it
    third = tmp_path / "third"
    invoke("certify", "--config", run / "manifest.json", "--output", third, "--quiet", "--sigma", "0.5")
    c = json.loads((third / "manifest.json").read_text())
    assert c["config"] == {**a["config"], "sigma": 0.5}
    # no --output: refused rather than writing over the original
    r = invoke("certify", "--from-manifest", run / "manifest.json", ok=False)
    assert r.exit_code != 0 and "already holds results" in r.output


def test_resume_with_another_configuration_is_refused(tmp_path):
    run = tmp_path / "run"
    invoke(*BASE, "--dataset-option", "count=1", "--output", run, "--quiet")
    r = invoke(*BASE, "--dataset-option", "count=1", "--output", run, "--resume", "--sigma", "0.5", ok=False)
    assert r.exit_code != 0
    assert "configuration differs: sigma: 0.25 in the run, 0.5 now" in r.output
    r = invoke(*BASE, "--dataset-option", "count=1", "--dataset-option", "seed=3", "--output", run, "--resume",
               ok=False)
    assert "dataset_options.seed: '<absent>' in the run, 3 now" in r.output and "data set identity" in r.output
    # mixed precision is CUDA-only, so check the precision rule on the folder itself
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["execution"]["accelerate"]["precision"] == "fp32"
    bf16 = {**manifest, "execution": {**manifest["execution"], "accelerate": {"precision": "bf16"}}}
    with pytest.raises(RunError, match="precision: 'fp32' in the run, 'bf16' now"):
        RunFolder(run).start(bf16, resume=True)


def _make_folder(path: Path, rows: list[dict], taus=(0.75,), status="complete") -> RunFolder:
    folder = RunFolder(path)
    folder.start({"config": {"taus": list(taus)}, "dataset": {"sha256": "x"}})
    folder.append(rows)
    if status == "complete":
        folder.finish()
    return folder


def _row(index, tau=0.75, **extra):
    return {"image_id": f"im{index}", "index": index, "segmenter": "s", "denoiser": "none",
            "certifier": "segcertify", "sigma": 0.25, "tau": tau, "radius": 0.1686, "certified_dice": 0.5,
            "clean_dice": 0.9, "abstain_rate": 0.1, "seconds": 1.0, **extra}


def test_corrupt_and_mismatched_folders_give_clear_errors(tmp_path):
    with pytest.raises(RunError, match="no such directory"):
        RunFolder(tmp_path / "nowhere").manifest()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="manifest.json is missing"):
        RunFolder(tmp_path / "empty").results()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        RunFolder(tmp_path / "bad").manifest()

    f = _make_folder(tmp_path / "cols", [_row(0)])
    with pytest.raises(RunError, match=r"has columns .* the new rows have"):
        f.append([_row(1, extra_metric=1.0)])
    text = f.results_path.read_text().replace("certified_dice", "dice_cert")
    f.results_path.write_text(text)
    with pytest.raises(RunError, match=r"lacks the column\(s\) \['certified_dice'\]"):
        f.results()

    f = _make_folder(tmp_path / "short", [_row(0), _row(1)], taus=(0.6, 0.75), status="running")
    with pytest.raises(RunError, match=r"image index 0 has 1 rows, expected 2"):
        f.results(require_complete=False)

    f = _make_folder(tmp_path / "dup", [_row(0), _row(1), _row(0)], status="running")
    with pytest.raises(RunError, match="rows of image index 0 appear in two places"):
        f.repair(1)

    f = _make_folder(tmp_path / "running", [_row(0)], status="running")
    with pytest.raises(RunError, match="is incomplete .* `certframe certify --resume --from-manifest"):
        f.results()
    assert len(f.results(require_complete=False)) == 1
    f.update_manifest(kind="attack")          # the advice names the command that wrote the folder
    with pytest.raises(RunError, match="is incomplete .* `certframe attack --resume --output"):
        f.results()

    f = _make_folder(tmp_path / "cut", [_row(0), _row(1)])
    f.results_path.write_bytes(f.results_path.read_bytes()[:-5])
    with pytest.raises(RunError, match="truncated"):
        f.results()

    with pytest.raises(RunError, match="exclude each other"):
        RunFolder(tmp_path / "x").start({"config": {}}, resume=True, overwrite=True)
    f = _make_folder(tmp_path / "nomanifest", [_row(0)])
    f.manifest_path.unlink()
    with pytest.raises(RunError, match="manifest.json is missing"):
        f.start({"config": {"taus": [0.75]}}, resume=True)


def test_two_processes_cannot_write_one_run_folder(tmp_path):
    first = RunFolder(tmp_path / "run")
    first.start({"config": {"taus": [0.75]}})
    first.append([_row(0)])
    code = ("import sys; from certframe.run.folder import RunFolder, RunError\n"
            "try:\n    RunFolder(sys.argv[1]).start({'config': {'taus': [0.75]}}, resume=True)\n"
            "except RunError as e:\n    print(e); sys.exit(3)\n")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True)
    assert other.returncode == 3 and "another process is writing the run folder" in other.stdout
    first.finish()  # releases the lock
    import fcntl

    with (tmp_path / "run" / ".lock").open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise if still held


@pytest.mark.parametrize("width", [80, 100])
def test_summary_table_fits_the_terminal(width):
    from rich.console import Console

    from certframe.cli.tables import print_summary

    row = {"segmenter": "monai:synthetic-lung-noise0.25", "denoiser": "ddpm", "certifier": "segcertify",
           "sigma": 0.25, "tau": 0.75, "radius": 0.16862, "certified_dice": 0.8123, "certified_dice_std": 0.1012,
           "clean_dice": 0.9, "abstain_rate": 0.05, "num_samples": 110.0, "images": 100}
    summary = pd.DataFrame([row, {**row, "tau": 0.9, "radius": 0.32038, "certified_dice": 0.61,
                                  "segmenter": "monai:a-very-long-weights-name-from-a-hospital-archive-v12"}])
    console = Console(width=width, record=True)
    print_summary(summary, console, title="certified Dice (runs/a/fairly/long/folder/name)")
    lines = console.export_text().splitlines()
    assert "…" not in "".join(lines) and max(map(len, lines)) <= width
    # settings every row shares are in the title; those that differ stay columns
    assert lines[1].split() == ["segcertify,", "σ", "0.25,", "draws", "110,", "images", "100"]
    assert lines[2].split() == ["method", "τ", "radius", "cert.", "Dice", "clean", "Dice", "abstain"]
    numbers = [line.split()[-5:] for line in lines[4:] if "±" in line]
    assert numbers == [["0.75", "0.169", "0.812±0.101", "0.900", "0.050"],
                       ["0.9", "0.320", "0.610±0.101", "0.900", "0.050"]]
    # method names are whole (a long one wraps, its numbers stay on its first line)
    methods = "".join(re.split(r"\s{2,}", line.strip())[0] for line in lines[4:]).replace(" ", "")
    assert methods == ("monai:synthetic-lung-noise0.25+ddpm"
                       "monai:a-very-long-weights-name-from-a-hospital-archive-v12+ddpm")


# ---- experiment files

def test_experiment_file_expands_runs_times_sweep(tmp_path):
    doc = {"dataset": "synthetic-lung", "dataset_options": {"count": 2, "size": 64}, "tau": 0.75, "n": 20,
           "sweep": {"sigma": [0.25, 0.5]},
           "runs": [{"name": "gauss", "segmenter_options": {"weights": "w-noise{sigma}"}},
                    {"name": "ddpm", "denoiser": "ddpm", "dataset_options": {"count": 3}}]}
    specs = expand(doc, stem="exp")
    assert [s["name"] for s in specs] == ["gauss-sigma0.25", "gauss-sigma0.5", "ddpm-sigma0.25", "ddpm-sigma0.5"]
    assert [s["label"] for s in specs] == ["gauss", "gauss", "ddpm", "ddpm"]
    assert [s["output"] for s in specs] == [f"runs/exp/{s['name']}" for s in specs]
    assert specs[1]["segmenter_options"] == {"weights": "w-noise0.5"}
    assert specs[2]["dataset_options"] == {"count": 3, "size": 64}  # merged key by key
    assert specs[0]["taus"] == [0.75] and specs[0]["n"] == 20 and specs[0]["n0"] == 10
    assert specs[3]["denoiser"] == "ddpm" and specs[3]["sigma"] == 0.5

    over = apply_overrides(specs, {"n": 5, "dataset_options": {"size": 32}}, tmp_path / "o")
    assert [s["n"] for s in over] == [5] * 4 and over[2]["dataset_options"] == {"count": 3, "size": 32}
    assert over[0]["output"] == str(tmp_path / "o" / "gauss-sigma0.25")


def test_experiment_file_errors_name_the_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sigmas'\]; valid keys: .*alpha.*sigma"):
        expand({"sigmas": [0.25]})
    with pytest.raises(ConfigError, match=r"\[\[runs\]\] #2: unknown key\(s\) \['denoisr'\]"):
        expand({"runs": [{"name": "a"}, {"name": "b", "denoisr": "ddpm"}]})
    with pytest.raises(ConfigError, match=r"\[sweep\]: unknown key\(s\) \['taus'\]"):
        expand({"sweep": {"taus": [[0.75]]}})
    with pytest.raises(ConfigError, match="n0 must be int, got '10' \\(str\\)"):
        expand({"n0": "10"})
    with pytest.raises(ConfigError, match='batch_size must be an integer or "auto", got \'big\''):
        expand({"batch_size": "big"})
    assert expand({"batch_size": "auto"})[0]["batch_size"] == "auto"
    with pytest.raises(ConfigError, match="both write to"):
        expand({"runs": [{"name": "a"}, {"name": "a"}]})
    bad = tmp_path / "bad.toml"
    bad.write_text("sigma = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_experiment(bad)
    r = invoke("certify", "--config", bad, ok=False)
    assert r.exit_code != 0 and "not valid TOML" in r.output


def test_config_file_with_command_line_overrides(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(f'''
dataset = "synthetic-lung"
dataset_options = {{ count = 1, size = 64 }}
segmenter_options = {{ weights = "synthetic-lung-noise0.25" }}
n0 = 10
n = 30
alpha = 0.01
tau = [0.6, 0.75]
sigma = 0.5
output = "{tmp_path.as_posix()}/runs/{{name}}"
[[runs]]
name = "first"
[[runs]]
name = "second"
seed = 7
''')
    invoke("certify", "--config", exp, "-n", "20", "--quiet")  # -n explicit: wins; sigma: from the file
    for name, seed in (("first", 0), ("second", 7)):
        m = json.loads((tmp_path / "runs" / name / "manifest.json").read_text())
        assert m["config"]["n"] == 20 and m["config"]["sigma"] == 0.5 and m["config"]["seed"] == seed
        assert m["config"]["taus"] == [0.6, 0.75] and m["label"] == name
    # an explicit --output is the parent of several runs
    invoke("certify", "--config", exp, "--output", tmp_path / "elsewhere", "--limit", "1", "--quiet")
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["first", "second"]


@pytest.mark.parametrize("name", ["jsrt", "montgomery", "shenzhen", "isic2018", "cvc-clinicdb"])
def test_example_configs_hold_the_paper_settings(name):
    specs = load_experiment(ROOT / "examples" / "configs" / f"{name}.toml")
    registry = get_registry(load_entrypoints=False)
    assert name in registry.names("dataset")
    # the paper's Gaussian and DDPM rows, plus the denoised-fine-tuned DDPM row (issue 15)
    assert sorted((s["denoiser"], s["sigma"]) for s in specs) == sorted(
        (d, s) for d in ("none", "ddpm", "ddpm") for s in (0.25, 0.5, 1.0))
    for s in specs:
        assert (s["dataset"], s["n0"], s["n"], s["alpha"], s["taus"], s["certifier"]) == (
            name, 10, 100, 0.001, [0.75], "segcertify")
    assert len({s["output"] for s in specs}) == 9


def test_the_step_certifies_through_the_library_certification():
    """CertifyStep certifies through SmoothedSegmenter.certify_request, as SmoothedSegmenter.certify
    does: the same draws, labels and radii; the recorded votes give g's majority. A certifier that
    returns the wrong number of certificates, or a request at another sigma, is refused."""
    from conftest import ListDataset, ThresholdSegmenter

    from certframe.core.smoothing import SmoothedSegmenter
    from certframe.interfaces import CertifyRequest, NoiseKey
    from certframe.plugins.certifiers.segcertify import SegCertify
    from certframe.run.build import Names
    from certframe.run.step import CertifyStep

    gen = torch.Generator().manual_seed(0)
    data = ListDataset([(torch.rand(1, 10, 12, generator=gen), torch.zeros(10, 12, dtype=torch.long))])
    smoothed = SmoothedSegmenter(ThresholdSegmenter(), None, 0.25)
    request = CertifyRequest(0.25, 10, 60, 0.01, (0.6, 0.75))
    step = CertifyStep(smoothed, SegCertify(), data, request, seed=5, batch_size=16, device=torch.device("cpu"),
                       names=Names())
    sample = data[0]
    certs, votes = step.certify(sample.image, sample.id, record=True)
    library = smoothed.certify(sample.image, SegCertify(), key=NoiseKey(5, sample.id), n0=10, n=60, alpha=0.01,
                               taus=(0.6, 0.75), batch_size=7)
    for a, b in zip(certs, library, strict=True):
        assert torch.equal(a.labels, b.labels) and a.radius == b.radius
        assert a.info["forward_passes"] == votes.forward_passes
    assert torch.equal(votes.majority(), votes.recorded["estimation"].argmax(dim=0))
    result = step(0, sample)
    assert [torch.equal(labels, cert.labels) for labels, cert in zip(result.labels, certs)] == [True, True]
    assert torch.equal(result.clean, ThresholdSegmenter()(sample.image[None]).argmax(dim=1)[0])

    class OneCertificate(SegCertify):
        def certify(self, votes, request):
            return super().certify(votes, request)[:1]

    with pytest.raises(ValueError, match="returned 1 certificates for 2 taus"):
        smoothed.certify_request(sample.image, OneCertificate(), request, key=NoiseKey(5, sample.id))
    with pytest.raises(ValueError, match="the request's sigma 0.5 is not the smoothed segmenter's 0.25"):
        smoothed.certify_request(sample.image, SegCertify(), CertifyRequest(0.5, 10, 60, 0.01),
                                 key=NoiseKey(5, sample.id))
