"""docs/certify-your-own-model.md: every command of the guide runs as written (issue 16, "the guide's commands
run as written").

The guide's fenced ``bash`` and ``python`` blocks run in document order from a scratch folder that stands in
for the repository root (``tests`` linked in, for the nnU-Net fixture command), with ``certframe`` on PATH from
this interpreter's environment. ``pip install`` lines are skipped (the extras are what this test needs
installed); a block after the comment ``<!-- run first ... -->`` runs before the others (the nnU-Net fixture
folder that the nnU-Net command reads). Each ``certframe certify`` must leave a results.csv with one row per
image and a certified Dice in [0, 1].
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "certify-your-own-model.md"
BLOCK = re.compile(r"(<!-- run first[^>]*-->\n)?```(bash|python)\n(.*?)```", re.S)


def guide_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every runnable block, in the order the test runs them."""
    found = [(bool(first), lang, code) for first, lang, code in BLOCK.findall(GUIDE.read_text())]
    ordered = [b for b in found if b[0]] + [b for b in found if not b[0]]
    out = []
    for _, lang, code in ordered:
        if lang == "bash":
            code = "\n".join(line for line in code.splitlines() if not line.startswith("pip install"))
        if code.strip():
            out.append((lang, code))
    return out


def run_blocks(blocks: list[tuple[str, str]], cwd: Path) -> None:
    """Run each ``(language, code)`` block in ``cwd``; AssertionError naming the first that fails."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    for lang, code in blocks:
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (f"{lang} block failed:\n{code}\n--- stdout\n{done.stdout}\n"
                                      f"--- stderr\n{done.stderr}")


def test_the_runner_stops_on_a_failing_command(tmp_path):
    """The control: a block whose first line fails (bash -e) or a python block that raises is reported."""
    with pytest.raises(AssertionError, match="bash block failed"):
        run_blocks([("bash", "false\ntouch reached")], tmp_path)
    assert not (tmp_path / "reached").exists()
    with pytest.raises(AssertionError, match="python block failed"):
        run_blocks([("python", "raise SystemExit(3)")], tmp_path)
    run_blocks([("bash", "certframe --help > /dev/null"), ("python", "import certframe")], tmp_path)


def test_the_guide_has_the_blocks_this_test_runs():
    blocks = guide_blocks()
    assert [lang for lang, _ in blocks].count("python") == 1
    assert blocks[0][1].lstrip().startswith("python -c") and "make_results_folder" in blocks[0][1]
    routes = " ".join(code for _, code in blocks)
    for route in ("monai", "smp", "nnunet", "torchscript"):
        assert f"--segmenter {route}" in routes, route
    assert "check_plugin" in routes


def test_every_command_of_the_guide_runs_as_written(tmp_path):
    pytest.importorskip("segmentation_models_pytorch", reason="the guide's smp route needs certframe[smp]")
    pytest.importorskip("dynamic_network_architectures", reason="the guide's nnU-Net route needs certframe[nnunet]")
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    run_blocks(guide_blocks(), tmp_path)
    runs = {"monai", "smp", "nnunet-run", "torchscript"}
    for run in runs:
        rows = pd.read_csv(tmp_path / "runs" / "own" / run / "results.csv")
        assert len(rows) == 4 and rows["certified_dice"].between(0, 1).all(), run
    assert (tmp_path / "runs" / "own" / "my-unet.safetensors").is_file()
