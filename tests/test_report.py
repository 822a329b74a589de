"""``certframe report``: numbers computed by hand, figures that hold pixels, report.html that parses."""
from __future__ import annotations

import base64
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.colors import to_rgb
from PIL import Image
from scipy.stats import norm

from certframe.cli import main
from certframe.hookspecs import hookimpl
from certframe.registry import get_registry
from certframe.report import Reporter, comparison_table, load_runs, make_report
from certframe.report.figures import ABSTAIN_COLOR, _colorize, abstain_vs_radius, dice_vs_radius
from certframe.run.folder import RunFolder

# per image: (certified Dice, abstain rate) per tau, clean Dice, seconds
RUN_A = {"label": "alpha-method-with-a-long-name", "sigma": 0.25, "taus": [0.6, 0.75],
         "images": [({0.6: (0.5, 0.1), 0.75: (0.375, 0.25)}, 0.875, 2.0),
                    ({0.6: (0.875, 0.3), 0.75: (0.625, 0.5)}, 0.625, 4.0)]}
RUN_B = {"label": "beta", "sigma": 0.5, "taus": [0.75],
         "images": [({0.75: (0.25, 0.5)}, 1.0, 1.0), ({0.75: (0.5, 0.5)}, 0.75, 2.0),
                    ({0.75: (0.75, 0.25)}, 0.5, 6.0)]}


def make_run(path: Path, spec: dict, *, certificates: bool = True, finish: bool = True) -> Path:
    """A run folder written through RunFolder, with known numbers and 16x16 label maps."""
    folder = RunFolder(path)
    folder.start({"format": "certframe-run/1", "label": spec["label"], "classes": ["background", "lesion"],
                  "config": {"dataset": "toy", "sigma": spec["sigma"], "taus": spec["taus"], "n0": 10, "n": 100,
                             "alpha": 0.001, "seed": 0}, "dataset": {"sha256": "0" * 64}})
    yy, xx = np.mgrid[:16, :16]
    for index, (per_tau, clean, seconds) in enumerate(spec["images"]):
        rows = []
        for tau in spec["taus"]:
            dice, abstain = per_tau[tau]
            rows.append({"image_id": f"img-{index}", "index": index, "segmenter": "seg", "denoiser": "none",
                         "certifier": "segcertify", "sigma": spec["sigma"], "tau": tau,
                         "radius": spec["sigma"] * float(norm.ppf(tau)), "certified_dice": dice,
                         "clean_dice": clean, "abstain_rate": abstain, "seconds": seconds})
        if certificates:
            mask = ((yy - 8) ** 2 + (xx - 8) ** 2 < 25).astype(np.int64)
            labels = np.stack([np.where(np.abs(np.hypot(yy - 8, xx - 8) - 5) < 1 + t, -1, mask)
                               for t in range(len(spec["taus"]))])
            folder.save_certificate(index, labels=labels, taus=spec["taus"], mask=mask, clean=mask,
                                    image=(xx / 15.0)[None] * np.ones((1, 16, 16)))
        folder.append(rows)
    if finish:
        folder.finish()
    return path


@pytest.fixture
def two_runs(tmp_path):
    return [make_run(tmp_path / "runs" / "a", RUN_A), make_run(tmp_path / "runs" / "b", RUN_B)]


def invoke(*args, ok=True):
    result = CliRunner(env={"COLUMNS": "100"}).invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_report_shows_the_values_computed_by_hand(two_runs, tmp_path):
    out = tmp_path / "report"
    result = invoke("report", *two_runs, "--output", out)
    rows = json.loads((out / "report.json").read_text())
    got = [(r["method"], r["sigma"], r["tau"], r["images"]) for r in rows]
    assert got == [("alpha-method-with-a-long-name", 0.25, 0.6, 2), ("alpha-method-with-a-long-name", 0.25, 0.75, 2),
                   ("beta", 0.5, 0.75, 3)]
    expected = [  # certified Dice mean, std (ddof=0), abstain, clean Dice mean, std, seconds per image
        (0.6875, 0.1875, 0.2, 0.75, 0.125, 3.0),
        (0.5, 0.125, 0.375, 0.75, 0.125, 3.0),
        (0.5, math.sqrt(0.125 / 3), 5 / 12, 0.75, math.sqrt(0.125 / 3), 3.0),
    ]
    for r, (dice, std, abstain, clean, clean_std, sec) in zip(rows, expected):
        assert r["certified_dice"] == pytest.approx(dice, abs=1e-12)
        assert r["certified_dice_std"] == pytest.approx(std, abs=1e-12)
        assert r["abstain_rate"] == pytest.approx(abstain, abs=1e-12)
        assert r["clean_dice"] == pytest.approx(clean, abs=1e-12)
        assert r["clean_dice_std"] == pytest.approx(clean_std, abs=1e-12)
        assert r["seconds_per_image"] == pytest.approx(sec, abs=1e-12)
        assert r["radius"] == pytest.approx(r["sigma"] * norm.ppf(r["tau"]), abs=1e-12)
    # the rich table (100 columns), method names in full
    lines = result.output.splitlines()
    row = next(line for line in lines if line.startswith("beta"))
    assert row.split() == ["beta", "0.5", "0.75", "0.337", "0.500±0.204", "0.417", "0.750", "3.00", "3"]
    row = next(line for line in lines if line.startswith("alpha-method-with-a-long-name") and " 0.6 " in line)
    assert row.split()[1:] == ["0.25", "0.6", "0.063", "0.688±0.188", "0.200", "0.750", "3.00", "2"]
    assert "…" not in result.output and max(len(line) for line in lines) <= 100
    assert pd.read_csv(out / "report.csv").shape == (3, 14)


def _png_pixels(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.load()
    return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


def test_figures_are_written_and_hold_the_table(two_runs, tmp_path):
    out = tmp_path / "report"
    invoke("report", *two_runs, "--output", out, "--reporter", "figures", "--overlays", "2")
    files = sorted(p.name for p in (out / "figures").iterdir())
    assert files == ["abstain_rate_vs_radius.png", "certified_dice_vs_radius.png",
                     "overlays-00-alpha-method-with-a-long-name-sigma0.25.png", "overlays-01-beta-sigma0.5.png"]
    for name in files:
        pixels = _png_pixels((out / "figures" / name).read_bytes())
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200
        assert pixels.var() > 0.005, name  # not a blank canvas
    overlay = _png_pixels((out / "figures" / files[3]).read_bytes())
    red = np.all(np.abs(overlay - np.array(to_rgb(ABSTAIN_COLOR))) < 0.02, axis=-1)
    assert red.sum() > 100  # abstained pixels are drawn

    # the curves plot exactly the table's numbers, one line per method
    table = comparison_table(load_runs(two_runs))
    ax = dice_vs_radius(table).axes[0]
    lines = {line.get_label(): line.get_xydata() for line in ax.lines}
    assert sorted(lines) == ["alpha-method-with-a-long-name", "beta"]
    np.testing.assert_allclose(lines["alpha-method-with-a-long-name"],
                               [[0.25 * norm.ppf(0.6), 0.6875], [0.25 * norm.ppf(0.75), 0.5]])
    np.testing.assert_allclose(lines["beta"], [[0.5 * norm.ppf(0.75), 0.5]])
    ax = abstain_vs_radius(table).axes[0]
    lines = {line.get_label(): line.get_xydata() for line in ax.lines}
    np.testing.assert_allclose(lines["beta"], [[0.5 * norm.ppf(0.75), 5 / 12]])


def test_overlay_colours():
    base = np.full((2, 2, 3), 0.5)
    labels = np.array([[0, 1], [-1, 0]])
    rgb = _colorize(base, labels, 2)
    np.testing.assert_array_equal(rgb[0, 0], [0.5, 0.5, 0.5])  # background: the image itself
    np.testing.assert_allclose(rgb[1, 0], to_rgb(ABSTAIN_COLOR))  # abstain: red
    assert not np.allclose(rgb[0, 1], 0.5)  # class 1 tinted


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.images, self.cells, self._cell = 0, [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables += 1
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.cells.append(self._cell)
            self._cell = None


def test_report_html_is_self_contained(two_runs, tmp_path):
    out = tmp_path / "report"
    invoke("report", *two_runs, "--output", out, "--reporter", "html", "--title", "Toy <comparison>")
    text = (out / "report.html").read_text()
    parser = _Collect()
    parser.feed(text)
    parser.close()
    assert parser.tables == 2  # comparison and runs
    assert len(parser.images) == 4  # two curves, two overlay figures
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        pixels = _png_pixels(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert pixels.var() > 0.005
    assert "alpha-method-with-a-long-name" in parser.cells and "beta" in parser.cells
    assert "0.6875" in parser.cells and "0.4167" in parser.cells
    assert "Toy &lt;comparison&gt;" in text and "<comparison>" not in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert not (out / "figures").exists() and not (out / "report.json").exists()


def test_a_folder_of_runs_and_duplicate_methods(two_runs, tmp_path):
    make_run(tmp_path / "runs" / "b2", RUN_B)
    make_run(tmp_path / "runs" / "a" / "ranks" / "rank0", RUN_A, finish=False)  # a part of run a: not a run
    runs = load_runs([tmp_path / "runs"])
    assert sorted(r.method for r in runs) == ["alpha-method-with-a-long-name", "beta (b)", "beta (b2)"]


def test_report_errors_are_clear(two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --output is ./report: a refused call must not leave it behind
    r = invoke("report", tmp_path / "nowhere", ok=False)
    assert r.exit_code != 0 and "no such directory" in r.output
    (tmp_path / "empty").mkdir()
    r = invoke("report", tmp_path / "empty", ok=False)
    assert "not a certframe run folder (manifest.json is missing)" in r.output
    running = make_run(tmp_path / "running", RUN_B, finish=False)
    r = invoke("report", running, "--output", tmp_path / "o", ok=False)
    assert "is incomplete" in r.output and "--resume" in r.output
    assert not (tmp_path / "o").exists()
    invoke("report", running, "--output", tmp_path / "o", "--allow-incomplete", "--reporter", "table")
    r = invoke("report", *two_runs, "--reporter", "pdf", ok=False)
    assert "unknown reporter 'pdf'; available reporters: figures, html, table" in r.output
    assert not (tmp_path / "report").exists()  # every refusal above was checked before anything was made
    a = two_runs[0] / "results.csv"
    a.write_bytes(a.read_bytes()[:-10])
    r = invoke("report", *two_runs, "--output", tmp_path / "o", ok=False)
    assert "results.csv is truncated" in r.output
    missing = make_run(tmp_path / "nocert", RUN_B, certificates=False)
    (missing / "certificates").mkdir()
    invoke("report", missing, "--output", tmp_path / "o2")  # no certificates: no overlays, no error
    assert not list((tmp_path / "o2" / "figures").glob("overlays*"))


class _Plugin:
    seen = {}

    @hookimpl
    def register_reporters(self, register):
        class Markdown(Reporter):
            """A third-party reporter: the table as Markdown."""

            def __init__(self, digits: int = 2):
                self.digits = digits

            def write(self, runs, table, output):
                path = output / "table.md"
                lines = [f"| {r.method} | {r.certified_dice:.{self.digits}f} |" for r in table.itertuples()]
                path.write_text("\n".join(lines) + "\n")
                _Plugin.seen["runs"] = [run.method for run in runs]
                return [path]

        register("markdown", Markdown)


def test_third_party_reporter_plugin(two_runs, tmp_path):
    registry = get_registry(load_entrypoints=False, plugins=[("md", _Plugin())])
    assert registry.names("reporter") == ["figures", "html", "markdown", "table"]
    table, written = make_report(two_runs, tmp_path / "o", reporters=["markdown"], registry=registry,
                                 reporter_options={"overlay_images": 1})
    assert written == [tmp_path / "o" / "table.md"]
    assert (tmp_path / "o" / "table.md").read_text().splitlines() == [
        "| alpha-method-with-a-long-name | 0.69 |", "| alpha-method-with-a-long-name | 0.50 |", "| beta | 0.50 |"]
    assert _Plugin.seen["runs"] == ["alpha-method-with-a-long-name", "beta"]


def test_report_over_real_certify_runs(tmp_path):
    """End to end: two certify runs of the bundled models, then a report with overlays."""
    runs = []
    for label, weights in (("clean", "synthetic-lung"), ("gaussian", "synthetic-lung-noise0.25")):
        runs.append(tmp_path / label)
        invoke("certify", "--dataset-option", "count=2", "--dataset-option", "size=32",
               "--segmenter-option", f"weights={weights}",
               "-n", "20", "--alpha", "0.05", "--tau", "0.6", "--label", label, "--output", runs[-1], "--quiet")
    out = tmp_path / "report"
    invoke("report", *runs, "--output", out, "--overlays", "2", "--quiet")
    rows = json.loads((out / "report.json").read_text())
    for row, run in zip(rows, runs):
        df = pd.read_csv(run / "results.csv")
        assert row["method"] == run.name
        assert row["certified_dice"] == pytest.approx(df["certified_dice"].mean(), abs=1e-12)
        assert row["abstain_rate"] == pytest.approx(df["abstain_rate"].mean(), abs=1e-12)
    assert len(list((out / "figures").glob("overlays-*.png"))) == 2
    assert (out / "report.html").stat().st_size > 10_000
