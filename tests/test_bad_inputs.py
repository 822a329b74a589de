"""Every command checks all its inputs before it starts (issue 27).

One test per case of the issue: the exact command, its exit code and the exact first line it
prints (the error, or for case 4 the warning), and that nothing is left behind (no run folder,
no training output; case 9 leaves the user's file as it was). The README's table "Bad inputs
and what they say" lists the same cases.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from certframe.cli import main

# a tiny certify run: 2 images of 32x32, n large enough to certify at tau 0.75, alpha 0.01
DATA = ["--dataset", "synthetic-lung", "--dataset-option", "count=2", "--dataset-option", "size=32"]
REQUEST = ["--n0", "4", "-n", "24", "--alpha", "0.01", "--batch-size", "24", "--device", "cpu"]
WEIGHTS = ["--segmenter-option", "weights=synthetic-lung-noise0.25"]
TINY = DATA + WEIGHTS + REQUEST
TRAIN_DATA = ["--dataset", "synthetic-lung", "--dataset-option", "count=2", "--dataset-option", "size=32"]


def invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def first_line(result) -> str:
    """The command's first line of output (stdout and stderr, as a user sees them)."""
    text = result.output.strip()
    assert "Traceback" not in text, text
    return text.splitlines()[0] if text else ""


def fails_with(result, line: str) -> None:
    assert result.exit_code == 1, result.output
    assert first_line(result) == line, result.output


# ---------------------------------------------------------------- 1. train denoiser --max-sigma < 0 / nan

@pytest.mark.parametrize("value, shown", [("-1", "-1.0"), ("nan", "nan"), ("inf", "inf")])
def test_1_train_denoiser_refuses_a_negative_or_nan_max_sigma(tmp_path, value, shown):
    out = tmp_path / "ddpm"
    r = invoke("train", "denoiser", *TRAIN_DATA, "--steps", "1", "--batch-size", "2", "--channels", "8,8",
               "--max-sigma", value, "--output", out, "--device", "cpu", "--quiet")
    fails_with(r, f"Error: --max-sigma must be a finite number >= 0 (the largest smoothing sigma the denoiser "
                  f"serves; 0 trains on every timestep), got {shown}")
    assert not out.exists() and not Path(f"{out}.resume").exists()


# ---------------------------------------------------------------- 2. train segmenter --init vs --arch

@pytest.mark.parametrize("args, line", [
    (["--arch", "segresnet"],
     "Error: --arch segresnet conflicts with --init synthetic-lung, whose weights have arch='unet': fine-tuning "
     "keeps the network of the --init weights (drop --arch, or train from scratch without --init)"),
    (["--network-option", "channels=[16,32,64,128]"],
     "Error: --network-option channels=[16, 32, 64, 128] conflicts with --init synthetic-lung, whose weights "
     "have channels=[8, 16, 32, 64]: fine-tuning keeps the network of the --init weights (drop "
     "--network-option, or train from scratch without --init)"),
    (["--segmenter-option", "arch=basicunet"],
     "Error: --segmenter-option arch=basicunet conflicts with --init synthetic-lung, whose weights have "
     "arch='unet': fine-tuning keeps the network of the --init weights (drop --segmenter-option, or train from "
     "scratch without --init)"),
], ids=["arch", "network-option", "segmenter-option"])
def test_2_train_segmenter_refuses_an_architecture_that_disagrees_with_init(tmp_path, args, line):
    out = tmp_path / "seg.safetensors"
    r = invoke("train", "segmenter", *TRAIN_DATA, "--init", "synthetic-lung", *args, "--epochs", "1",
               "--batch-size", "2", "--output", out, "--device", "cpu", "--quiet")
    fails_with(r, line)
    assert not list(tmp_path.iterdir())


def test_2_an_init_with_matching_options_still_fine_tunes(tmp_path):
    out = tmp_path / "seg.safetensors"
    r = invoke("train", "segmenter", *TRAIN_DATA, "--init", "synthetic-lung", "--arch", "unet",
               "--network-option", "channels=[8,16,32,64]", "--epochs", "1", "--batch-size", "2", "--output", out,
               "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    assert out.is_file()


# ---------------------------------------------------------------- 3. a repeated tau

def test_3_certify_refuses_a_repeated_tau(tmp_path):
    out = tmp_path / "run"
    r = invoke("certify", *TINY, "--tau", "0.75", "--tau", "0.75", "--output", out, "--quiet")
    fails_with(r, "Error: taus must be distinct (each tau gives one row per image): 0.75 is given 2 times in "
                  "[0.75, 0.75]")
    assert not out.exists()


def test_3_the_library_refuses_a_repeated_tau_too():
    from certframe.interfaces import CertifyRequest

    with pytest.raises(ValueError, match=r"taus must be distinct .*: 0.9 is given 2 times in \[0.75, 0.9, 0.9\]"):
        CertifyRequest(0.25, 10, 100, 0.001, (0.75, 0.9, 0.9))


def test_3_golden_summary_of_two_images_at_two_distinct_taus(tmp_path):
    """The summary counts images, not rows: 2 images at 2 taus are 2 images per tau."""
    out = tmp_path / "run"
    r = invoke("certify", *TINY, "--tau", "0.75", "--tau", "0.6", "--output", out)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["tau"], s["images"]) for s in summary] == [(0.6, 2), (0.75, 2)]
    assert "Warning" not in r.output


# ---------------------------------------------------------------- 4. an n that cannot certify at this tau and alpha

WARNING_4 = ("Warning: n=20 cannot certify any pixel at tau=0.75 and alpha=0.001: even 20 votes of 20 give the "
             "p-value 0.75^20 = 0.0032 > alpha, so every pixel abstains; n >= 25 is needed (necessary, not "
             "sufficient: the correction over the image's pixels asks for more)")


def test_4_certify_warns_before_sampling_and_the_summary_repeats_it(tmp_path):
    out = tmp_path / "run"
    r = invoke("certify", *DATA, *WEIGHTS, "--n0", "4", "-n", "20", "--batch-size", "24", "--device", "cpu",
               "--output", out, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    # said before sampling (the log, on stderr) and repeated under the summary table (stdout)
    assert any("n=20 cannot certify any pixel at tau=0.75" in line for line in r.stderr.splitlines()), r.stderr
    assert lines[-1] == WARNING_4, r.output
    # golden summary: one row for the one tau, 2 images (not 4), nothing certified
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 1
    s = summary[0]
    assert (s["tau"], s["images"], s["certified_dice"], s["abstain_rate"], s["num_samples"]) == (
        0.75, 2, 0.0, 1.0, 24.0)
    assert round(s["radius"], 4) == 0.1686
    assert "images 2" in r.stdout and "0.000±0.000" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["warnings"] == [WARNING_4.removeprefix("Warning: ")]


def test_4_smallest_certifying_n():
    from certframe.core.statistics import smallest_certifying_n

    assert smallest_certifying_n(0.75, 0.001) == 25       # 0.75^24 = 0.00100 > 0.001 >= 0.75^25
    assert smallest_certifying_n(0.75, 0.01) == 17
    assert smallest_certifying_n(0.9, 0.001) == 66
    assert smallest_certifying_n(0.5 + 1e-9, 0.5) == 2
    for tau, alpha in [(0.6, 0.05), (0.99, 1e-6), (0.75, 0.0032)]:
        n = smallest_certifying_n(tau, alpha)
        assert tau ** n <= alpha < tau ** (n - 1)


def test_4_no_warning_when_n_can_certify(tmp_path):
    r = invoke("certify", *TINY, "--output", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "Warning" not in r.output and "cannot certify" not in r.output


# ---------------------------------------------------------------- 5. a TorchScript model returning int64 logits

class IntLogits(nn.Module):
    def forward(self, x):
        fg = (x[:, :1] > 0.5).long()
        return torch.cat([1 - fg, fg], dim=1)


def test_5_int64_logits_are_refused_before_the_run_folder(tmp_path):
    model = tmp_path / "int.pt"
    torch.jit.script(IntLogits()).save(str(model))
    out = tmp_path / "run"
    r = invoke("certify", *DATA, *REQUEST, "--segmenter", "torchscript", "--segmenter-option", f"path={model}",
               "--output", out, "--quiet")
    fails_with(r, "Error: the segmenter TorchScriptSegmenter returned int64 logits, expected floating-point "
                  "scores [B, 2, H, W] (one score per class; class labels are not logits)")
    assert not out.exists()


# ---------------------------------------------------------------- 6. torchscript device=cuda without CUDA

def test_6_torchscript_device_cuda_without_cuda_names_the_device(tmp_path, monkeypatch):
    model = tmp_path / "int.pt"
    torch.jit.script(IntLogits()).save(str(model))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    r = invoke("certify", *DATA, *REQUEST, "--segmenter", "torchscript", "--segmenter-option", f"path={model}",
               "--segmenter-option", "device=cuda", "--output", out, "--quiet")
    fails_with(r, f"Error: segmenter 'torchscript' (path={model}, device=cuda) could not be built: OptionError: "
                  f"device 'cuda' asked for, but CUDA is not available here: expected cpu or auto")
    assert not out.exists()


# ---------------------------------------------------------------- 7. train denoiser --size 0 (and its other numbers)

@pytest.mark.parametrize("args, line", [
    (["--size", "0"], "--size must be an integer >= 1 (the training resolution in pixels), got 0"),
    (["--crop", "0"], "--crop must be an integer >= 1 (the side of the training patches), got 0"),
    (["--steps", "0"], "--steps must be an integer >= 1 (optimisation steps), got 0"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1 (images per step), got 0"),
    (["--channels", "8,0"], "--channels must be positive integers (one width per resolution level), got [8, 0]"),
    (["--lr", "0"], "--lr must be a finite number > 0 (the Adam learning rate), got 0.0"),
    (["--ema-decay", "1"], "--ema-decay must be a number in (0, 1) (the EMA weight of the old average), got 1.0"),
    (["--seed", "-1"], "--seed must be an int in [0, 2**64), got -1 (the seeds are 64-bit)"),
], ids=["size", "crop", "steps", "batch-size", "channels", "lr", "ema-decay", "seed"])
def test_7_train_denoiser_checks_its_numbers_first(tmp_path, args, line):
    out = tmp_path / "ddpm"
    r = invoke("train", "denoiser", *TRAIN_DATA, "--steps", "1", *args, "--output", out, "--device", "cpu",
               "--quiet")
    fails_with(r, f"Error: {line}")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- 8. --seed >= 2**64 and the falsify options, up front

def test_8_certify_refuses_a_seed_beyond_64_bits(tmp_path):
    out = tmp_path / "run"
    r = invoke("certify", *TINY, "--seed", str(2 ** 64), "--output", out, "--quiet")
    fails_with(r, "Error: seed must be an int in [0, 2**64), got 18446744073709551616 (the seeds are 64-bit)")
    assert not out.exists()


ATTACK = ["--attack", "pgdl2"]


@pytest.mark.parametrize("option, line", [
    ("level=2", "falsify option level must be a number in (0, 1) (the family-wise level of the test at the "
                "attacked images), got 2"),
    ("n_test=0", "falsify option n_test must be an integer >= 1 (fresh draws per tested pixel; leave it out for "
                 "the default), got 0"),
    ("max_pixels=0", "falsify option max_pixels must be an integer >= 1 (pixels attacked per certificate), got 0"),
    ("empirical=maybe", "falsify option empirical must be true or false, got 'maybe'"),
    ("foo=1", "unknown falsify option 'foo'; valid options: empirical, empirical_iterations, empirical_upper, "
              "level, max_pixels, n_test, num_draws, restarts, steps"),
], ids=["level", "n_test", "max_pixels", "empirical", "unknown"])
def test_8_attack_checks_the_falsify_options_before_the_run_folder(tmp_path, option, line):
    out = tmp_path / "run"
    r = invoke("attack", *TINY, *ATTACK, "--falsify-option", option, "--output", out, "--quiet")
    fails_with(r, f"Error: {line}")
    assert not out.exists()


@pytest.mark.parametrize("option, line", [
    ("pgdl2:steps=0", "attack option pgdl2:steps=0 is invalid: steps must be an integer >= 1, got 0"),
    ("pgdl2:foo=1", "unknown attack option 'foo' of pgdl2; valid options: random_start, restarts, step_size, "
                    "steps"),
    ("pgdl2:eps=1", "attack option 'eps' of pgdl2 is set by the run (--eps-l2, --eps-linf, --radius-multiple), "
                    "not by --attack-option"),
], ids=["steps", "unknown", "eps"])
def test_8_attack_checks_the_attack_options_before_the_run_folder(tmp_path, option, line):
    out = tmp_path / "run"
    r = invoke("attack", *TINY, *ATTACK, "--no-falsify", "--attack-option", option, "--output", out, "--quiet")
    fails_with(r, f"Error: {line}")
    assert not out.exists()


# ---------------------------------------------------------------- 9. --output naming an existing file

@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("command", ["certify", "attack"])
def test_9_output_naming_a_file_says_a_folder_is_expected(tmp_path, command, extra):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    more = ATTACK if command == "attack" else []
    r = invoke(command, *TINY, *more, "--output", existing, *extra, "--quiet")
    fails_with(r, f"Error: --output {str(existing)!r} is an existing file; a run folder is expected (the file is "
                  f"left as it is)")
    assert existing.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_9_train_denoiser_and_convert_output_naming_a_file(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    r = invoke("train", "denoiser", *TRAIN_DATA, "--steps", "1", "--output", existing, "--overwrite", "--device",
               "cpu", "--quiet")
    fails_with(r, f"Error: --output {str(existing)!r} is an existing file; a diffusers model folder is expected "
                  f"(the file is left as it is)")
    ckpt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, ckpt)
    r = invoke("convert", "guided-diffusion", ckpt, existing, "--overwrite")
    fails_with(r, f"Error: OUTPUT {str(existing)!r} is an existing file; a diffusers model folder is expected "
                  f"(the file is left as it is)")
    assert existing.read_text() == "keep me\n"


# ---------------------------------------------------------------- 10. evaluate denoiser and convert

EVALUATE = ["evaluate", "denoiser", "--dataset", "synthetic-lung", "--dataset-option", "count=2",
            "--denoiser-option", "model=ddpm-synthetic-lung", "--sigma", "0.25"]


@pytest.mark.parametrize("args, line", [
    (["--batch-size", "0"], "--batch-size must be an integer >= 1 (images per forward pass), got 0"),
    (["--seed", "-1"], "--seed must be an int in [0, 2**64), got -1 (the seeds are 64-bit)"),
    (["--limit", "0"], "--limit must be an integer >= 1 (the number of images), got 0"),
], ids=["batch-size", "seed", "limit"])
def test_10_evaluate_denoiser_checks_its_numbers(tmp_path, args, line):
    out = tmp_path / "quality.json"
    r = invoke(*EVALUATE, *args, "--output", out, "--device", "cpu")
    fails_with(r, f"Error: {line}")
    assert not out.exists()


def test_10_convert_names_a_broken_safetensors_file(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(bytes(range(256)) * 8)
    r = invoke("convert", "guided-diffusion", bad, tmp_path / "out")
    # what safetensors says in the brackets is its own text (it varies with its version): the rest is pinned
    first = r.output.strip().splitlines()[0]
    assert r.exit_code == 1 and first.startswith(f"Error: {str(bad)!r} is not a readable safetensors file "
                                                 f"(safetensors said: ")
    assert first.endswith("); expected the state dict {name: tensor} of a guided-diffusion model "
                          "(.pt or .safetensors)")
    assert "weights_only" not in r.output and "unpickl" not in first
    assert not (tmp_path / "out").exists()


def test_10_convert_never_advises_unpickling(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(bytes(range(256)) * 8)
    r = invoke("convert", "guided-diffusion", bad, tmp_path / "out")
    fails_with(r, f"Error: {str(bad)!r} cannot be read as a state dict of tensors (UnpicklingError); expected "
                  f"the state dict {{name: tensor}} of a guided-diffusion model (.pt written by "
                  f"torch.save(model.state_dict()), or .safetensors); certframe reads it with "
                  f"torch.load(weights_only=True) and never unpickles other objects")
    assert "weights_only=False" not in r.output and "`False`" not in r.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 11. report at 80 columns

def test_11_report_at_80_columns_keeps_sigma_and_tau(tmp_path):
    run = tmp_path / "run"
    assert invoke("certify", *TINY, "--tau", "0.75", "--tau", "0.6", "--output", run, "--quiet").exit_code == 0
    r = CliRunner().invoke(main, ["report", str(run), "--output", str(tmp_path / "report2"), "--reporter", "table"],
                           env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    table = r.stdout
    assert "…" not in table, table
    assert max(len(line) for line in table.splitlines()) <= 80, table
    rows = [line.split() for line in table.splitlines() if "±" in line]
    assert [row[-8:-6] for row in rows] == [["0.25", "0.6"], ["0.25", "0.75"]], table


# ---------------------------------------------------------------- issue 23: evaluate denoiser --device

def test_evaluate_denoiser_takes_the_shared_device_option(tmp_path):
    from certframe.cli.evaluate_cmd import denoiser as command
    from certframe.cli.train_denoiser_cmd import denoiser as train_command

    option = {p.name: p for p in command.params}["device"]
    shared = {p.name: p for p in train_command.params}["device"]
    assert (option.opts, option.default, option.help) == (shared.opts, shared.default, shared.help)
    r = invoke(*EVALUATE, "--limit", "1", "--device", "tpu")
    fails_with(r, "Error: device 'tpu' is not a device torch knows: expected auto, cpu, cuda or cuda:N")
    out = tmp_path / "q.json"
    r = invoke(*EVALUATE, "--limit", "1", "--device", "cpu", "--output", out)
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["device"] == "cpu"
