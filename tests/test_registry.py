"""The plugin registry: in-process plugins, entry points, clashes, broken plugins, the CLI."""
import sys
import textwrap
import types

import pytest
from click.testing import CliRunner

from certframe import hookimpl
from certframe.cli import main
from certframe.registry import DISABLE_ENV, PluginError, PluginNotFound, get_registry


def make_plugin(**hooks):
    mod = types.SimpleNamespace()
    for name, fn in hooks.items():
        setattr(mod, name, hookimpl(fn))
    return mod


def test_builtins_register_through_the_hooks():
    r = get_registry(load_entrypoints=False)
    assert "monai" in r.names("segmenter")
    assert {"segcertify", "cohen-per-pixel"} <= set(r.names("certifier"))
    assert "none" in r.names("denoiser")
    assert "synthetic-lung" in r.names("dataset")
    entry = r.get("certifier", "segcertify")
    assert entry.plugin == "builtin" and entry.distribution == "certframe"


def test_plugin_registered_in_a_test_is_available_and_works():
    from conftest import ThresholdSegmenter

    plugin = make_plugin(register_segmenters=lambda register: register("threshold", ThresholdSegmenter))
    r = get_registry(load_entrypoints=False, plugins=[("test-plugin", plugin)])
    seg = r.create("segmenter", "threshold", in_channels=1)
    assert isinstance(seg, ThresholdSegmenter)
    assert r.get("segmenter", "threshold").plugin == "test-plugin"


def test_unknown_name_lists_what_is_available():
    r = get_registry(load_entrypoints=False)
    with pytest.raises(PluginNotFound, match=r"unknown certifier 'nope'; available certifiers: .*segcertify"):
        r.get("certifier", "nope")
    with pytest.raises(PluginError, match="unknown plugin kind"):
        r.get("widget", "x")


def test_unknown_option_is_a_clear_error():
    r = get_registry(load_entrypoints=False)
    with pytest.raises(PluginError, match=r"does not accept option\(s\) \['sizee'\]; its options: .*size"):
        r.create("dataset", "synthetic-lung", sizee=32)


def test_name_clash_is_reported_and_first_kept():
    from certframe.plugins.denoisers.none import NoDenoiser

    plugin = make_plugin(register_denoisers=lambda register: register("none", object))
    r = get_registry(load_entrypoints=False, plugins=[("clasher", plugin)])
    assert r.get("denoiser", "none").factory is NoDenoiser
    assert any("name clash" in f.error and "'none'" in f.error and f.plugin == "clasher" for f in r.failures)


def test_broken_hook_is_reported_not_fatal():
    def boom(register):
        raise RuntimeError("weights missing")

    r = get_registry(load_entrypoints=False, plugins=[("broken", make_plugin(register_segmenters=boom))])
    assert "monai" in r.names("segmenter")
    assert [f.plugin for f in r.failures] == ["broken"]
    assert "weights missing" in r.failures[0].error


def test_bad_registration_name_is_reported():
    plugin = make_plugin(register_datasets=lambda register: register("Bad Name", object))
    r = get_registry(load_entrypoints=False, plugins=[("badname", plugin)])
    assert "lower case" in r.failures[0].error


# --- plugins installed as distributions: a fake dist-info on sys.path -----------------------

SEGMENTER_PKG = '''
import torch
from certframe import hookimpl
from certframe.interfaces import Segmenter

class Threshold(Segmenter):
    """Class 1 where the image is brighter than `level`."""
    num_classes = 2
    in_channels = 1
    def __init__(self, level: float = 0.5):
        super().__init__()
        self.level = level
    def forward(self, images):
        d = images[:, :1] - self.level
        return torch.cat([-d, d], 1)

@hookimpl
def register_segmenters(register):
    register("ep-threshold", Threshold)
'''


def install_fake_distribution(root, dist, module, source, ep_name=None):
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"  # wheel naming: - becomes _
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[certframe]\n{ep_name or module} = {module}\n")


@pytest.fixture
def fake_dists(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "certframe-threshold", "cf_threshold_plugin", SEGMENTER_PKG)
    install_fake_distribution(tmp_path, "certframe-broken", "cf_broken_plugin",
                              "raise ImportError('needs a library that is not installed')")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for m in ("cf_threshold_plugin", "cf_broken_plugin"):
        sys.modules.pop(m, None)


def test_entry_point_plugin_is_listed_and_broken_one_reported(fake_dists):
    result = CliRunner().invoke(main, ["plugins"], env={DISABLE_ENV: "", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())  # rich wraps long lines
    assert "ep-threshold" in out
    assert "certframe-threshold 1.2.3" in out
    assert "cf_broken_plugin" in out and "needs a library that is not installed" in out
    assert "segcertify" in out  # the tool still works


def test_entry_point_plugin_works_in_certify(fake_dists, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "certify", "--dataset", "synthetic-lung", "--dataset-option", "count=2",
        "--dataset-option", "size=16", "--segmenter", "ep-threshold", "--segmenter-option", "level=0.4",
        "--sigma", "0.25", "--n0", "5", "-n", "20", "--alpha", "0.01", "--output", str(out), "--quiet"],
        env={DISABLE_ENV: ""})
    assert result.exit_code == 0, result.output
    import pandas as pd
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 2 and set(df["segmenter"]) == {"ep-threshold"}


def test_environment_variable_disables_third_party_plugins(fake_dists, monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")
    r = get_registry()
    assert "ep-threshold" not in r.names("segmenter")
    assert "monai" in r.names("segmenter") and not r.failures
