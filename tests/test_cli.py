"""The CLI through click's CliRunner."""
import json

import pandas as pd
import pytest
from click.testing import CliRunner

from certframe.cli import main
from certframe.core.metrics import mean_dice
from certframe.registry import get_registry


def invoke(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def test_certify_writes_one_row_per_image_and_tau(tmp_path):
    out = tmp_path / "run"
    result = invoke("certify", "--dataset", "synthetic-lung", "--dataset-option", "count=3",
                    "--segmenter-option", "weights=synthetic-lung-noise0.25", "--sigma", "0.25",
                    "--n0", "10", "-n", "100", "--alpha", "0.01", "--tau", "0.75", "--tau", "0.8",
                    "--batch-size", "20", "--device", "cpu", "--output", str(out))  # clean Dice checked on the CPU
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 6
    assert df["image_id"].tolist() == [f"lung-test-000{i}" for i in (0, 0, 1, 1, 2, 2)]
    assert df["tau"].tolist() == [0.75, 0.8] * 3
    assert df["radius"].round(4).tolist() == [0.1686, 0.2104] * 3
    assert set(df["n0"]) == {10} and set(df["n"]) == {100} and set(df["num_samples"]) == {110}
    assert ((df["certified_dice"] >= 0) & (df["certified_dice"] <= 1)).all()
    assert ((df["abstain_rate"] > 0) & (df["abstain_rate"] < 1)).all()
    # a stricter tau certifies no more pixels
    assert (df["abstain_rate"].values[1::2] >= df["abstain_rate"].values[0::2]).all()
    # the clean Dice column is the plain Dice of the base segmenter
    reg = get_registry(load_entrypoints=False)
    seg = reg.create("segmenter", "monai", weights="synthetic-lung-noise0.25")
    data = reg.create("dataset", "synthetic-lung", count=3)
    s = data[1]
    clean = seg(s.image[None]).argmax(1)[0]
    assert df["clean_dice"][2] == pytest.approx(mean_dice(clean, s.mask, 2))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["sigma"] == 0.25 and manifest["config"]["taus"] == [0.75, 0.8]
    summary = json.loads((out / "summary.json").read_text())
    assert summary[0]["images"] == 3


def test_certify_is_reproducible_across_batch_sizes(tmp_path):
    """The same draws in passes of 7 or 64 give the same rows, on the CPU in fp32. (On CUDA, bf16 autocast and
    kernels chosen per batch shape may move a near-tie's vote, so the claim is checked on the CPU.)"""
    frames = []
    for b in (7, 64):
        out = tmp_path / f"b{b}"
        r = invoke("certify", "--dataset-option", "count=2", "--segmenter-option", "weights=synthetic-lung",
                   "-n", "30", "--batch-size", str(b), "--device", "cpu", "--output", str(out), "--quiet")
        assert r.exit_code == 0, r.output
        frames.append(pd.read_csv(out / "results.csv").drop(columns=["seconds", "forward_passes"]))
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_unknown_plugin_name_is_a_clear_cli_error(tmp_path):
    r = CliRunner().invoke(main, ["certify", "--certifier", "magic", "--output", str(tmp_path / "x")])
    assert r.exit_code != 0
    assert "unknown certifier 'magic'; available certifiers:" in r.output


def test_bad_option_syntax(tmp_path):
    r = CliRunner().invoke(main, ["certify", "--dataset-option", "count", "--output", str(tmp_path / "x")])
    assert r.exit_code == 2 and "expected KEY=VALUE" in r.output


def test_cli_rejects_bad_tau(tmp_path):
    r = CliRunner().invoke(main, ["certify", "--tau", "0.4", "--output", str(tmp_path / "x"),
                                 "--segmenter-option", "weights=synthetic-lung"])
    assert r.exit_code == 1 and "tau must lie in the open interval (0.5, 1)" in r.output


def test_missing_weights_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(main, ["certify", "--segmenter-option", "weights=nowhere.safetensors",
                                  "--output", str(tmp_path / "x")])
    assert r.exit_code == 1 and "segmenter weights 'nowhere.safetensors' not found" in r.output


# ------------------------------------------------ train / evaluate / convert share the one error boundary
def test_train_segmenter_errors_go_through_the_one_boundary_and_debug_shows_the_traceback(tmp_path):
    """``certframe --debug train segmenter`` with a bad input shows the traceback; without --debug one line."""
    import os
    import subprocess
    import sys

    bad = tmp_path / "model.pt"
    args = ["train", "segmenter", "--dataset", "synthetic-lung", "--dataset-option", "count=2", "--output", str(bad),
            "--device", "cpu", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "CERTFRAME_DEBUG"}

    def cli(*extra):
        return subprocess.run([sys.executable, "-m", "certframe", *extra, *args], capture_output=True, text=True,
                              env=env, timeout=300)

    plain = cli()
    assert plain.returncode == 1, plain.stderr
    assert "Traceback" not in plain.stderr
    assert plain.stderr.strip() == f"Error: --output must be a .safetensors path, got {str(bad)!r}"
    debug = cli("--debug")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "run_train_segmenter" in debug.stderr
    last = debug.stderr.strip().splitlines()[-1]
    assert last == f"ValueError: --output must be a .safetensors path, got {str(bad)!r}"
    assert not bad.exists()


@pytest.mark.parametrize("args", [
    ["train", "segmenter", "--segmenter", "no-such-segmenter", "--output", "out.safetensors"],
    ["evaluate", "denoiser", "--denoiser", "no-such-denoiser", "--sigma", "0.25", "--output", "out.json"],
], ids=["train-segmenter", "evaluate-denoiser"])
def test_train_and_evaluate_get_the_shared_error_hints(tmp_path, args):
    """An unknown plugin gets the boundary's hint (`certframe plugins`), as in certify and attack."""
    args = [str(tmp_path / a) if a.startswith("out.") else a for a in args]
    r = CliRunner().invoke(main, [*args, "--dataset", "synthetic-lung", "--dataset-option", "count=2",
                                  "--device", "cpu"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "(`certframe plugins` lists what is installed" in r.output
