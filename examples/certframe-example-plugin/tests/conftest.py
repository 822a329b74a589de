"""Fixtures: a small example data set and a checkpoint trained on it (once per session)."""
import sys
from pathlib import Path

import pytest

try:  # installed (pip install -e .), or run from a checkout without installing
    import certframe_example_plugin  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


@pytest.fixture(scope="session")
def example_root(tmp_path_factory):
    from certframe_example_plugin.data import write_example_data

    return write_example_data(tmp_path_factory.mktemp("example-data"), count=24, size=32, seed=0)


@pytest.fixture(scope="session")
def trained_weights(example_root, tmp_path_factory):
    import torch

    from certframe_example_plugin.train import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("weights") / "tiny-cnn.safetensors"
    result = train(example_root, out, epochs=20, noise_sigma=0.25, seed=0)
    assert result.checkpoint == out and out.is_file()
    return out
