"""Volumes ``[C, D, H, W]`` through the whole pipeline (issue 18): votes, decisions, the guarantee,
runs with resume, reports, attacks, and the errors that refuse a wrong pairing before sampling.

The model is a voxel threshold (class 1 where x > 0.5), whose smoothed probabilities are known in
closed form: ``P(class 1 at voxel i) = Phi((x_i - 0.5) / sigma)``; a voxel moves from class 1 to
class 0 exactly at L2 distance ``x_i - 0.5``, so every claim can be checked against the truth.
"""
from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import ThresholdSegmenter
from scipy.stats import norm
from test_attacks import ALL as ATTACK_CASES
from test_certifiers import ALPHA, BROKEN, SOUND, TAU, TRIALS, BinomialVotes, within_alpha, wrong_images

from certframe import hookimpl
from certframe.core.sampler import gaussian_noise
from certframe.core.smoothing import SmoothedSegmenter
from certframe.core.statistics import certified_radius
from certframe.interfaces import ABSTAIN, Certifier, CertifyRequest, NoiseKey, Sample, SegmentationDataset, Segmenter
from certframe.plugins.certifiers.adaptive import AdaptiveSegCertify
from certframe.plugins.certifiers.segcertify import SegCertify

SIGMA = 0.25
R75 = SIGMA * norm.ppf(0.75)


class VoxelThreshold(Segmenter):
    """Class 1 where channel 0 > 0.5: volumes ``[B, C, D, H, W] -> logits [B, 2, D, H, W]`` (spatial_dims 3)."""

    num_classes = 2
    in_channels = 1
    spatial_dims = 3

    def forward(self, images):
        if images.dim() != 5 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected volumes [B, {self.in_channels}, D, H, W], got shape {tuple(images.shape)}")
        d = images[:, :1] - 0.5
        return torch.cat([-d, d], dim=1)


GOLDEN_SIGMA = 0.1


def golden_volume(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``([1, S, S, S], [S, S, S])``: background 0 and a cube at 1, 5 sigma from the threshold at
    GOLDEN_SIGMA (P(own class) = Phi(5) = 1 - 3e-7: 199 or 200 of 200 votes, p-value <= 2e-8 at tau 0.9,
    below Holm's alpha / 512), and the plane W = S - 1 at exactly 0.5 (P = 1/2: no tau > 1/2 can be
    certified there)."""
    x = torch.zeros(1, size, size, size)
    x[0, 2:6, 2:6, 2:6] = 1.0
    x[0, :, :, size - 1] = 0.5
    return x, (x[0] > 0.5).long()


def expected_golden_labels(x: torch.Tensor) -> torch.Tensor:
    labels = (x[0] > 0.5).long()
    labels[x[0] == 0.5] = ABSTAIN
    return labels


# ------------------------------------------------------------------ votes and golden decisions
def test_a_volume_draw_is_the_same_philox_stream_read_for_more_values():
    """Draw i of a volume [C, D, H, W] is draw i of the stream of (seed, id, phase) read for C*D*H*W
    values: the same numbers an image of C x (D*H) x W would get, reshaped."""
    key = NoiseKey(7, "vol")
    vol = gaussian_noise((1, 4, 5, 6), 0.5, key=key, phase="estimation", start=3, count=2, device="cpu")
    flat = gaussian_noise((1, 20, 6), 0.5, key=key, phase="estimation", start=3, count=2, device="cpu")
    assert vol.shape == (2, 1, 4, 5, 6) and torch.equal(vol.reshape(2, 1, 20, 6), flat)


def test_volume_votes_are_counted_per_voxel_and_do_not_depend_on_the_batch_size():
    x, _ = golden_volume()
    sm = SmoothedSegmenter(VoxelThreshold(), None, SIGMA)
    counts = [sm.voter(x, NoiseKey(0, "v"), batch_size=b).counts("estimation", 50) for b in (1, 7, 64)]
    assert counts[0].shape == (2, 8, 8, 8) and counts[0].dtype == torch.int64
    assert (counts[0].sum(dim=0) == 50).all()
    assert torch.equal(counts[0], counts[1]) and torch.equal(counts[0], counts[2])


def test_golden_decisions_on_a_tiny_volume():
    """Exact per-voxel decisions and radius for seed 0: the cube and the background are certified with their
    class (P = 0.977 against tau = 0.75), the 0.5 plane abstains (P = 1/2), and the counts are [K, D, H, W]."""
    x, mask = golden_volume()
    sm = SmoothedSegmenter(VoxelThreshold(), None, GOLDEN_SIGMA)
    voter = sm.voter(x, NoiseKey(0, "golden-volume"), batch_size=32)
    counts = voter.counts("estimation", 200)
    assert counts.shape == (2, 8, 8, 8) and (counts.sum(0) == 200).all()
    certs = sm.certify(x, SegCertify(), key=NoiseKey(0, "golden-volume"), n0=20, n=200, alpha=0.001,
                       taus=(0.75, 0.9))
    assert [c.labels.shape for c in certs] == [(8, 8, 8)] * 2
    for cert in certs:
        assert torch.equal(cert.labels, expected_golden_labels(x)), cert.tau
        assert cert.radius == certified_radius(GOLDEN_SIGMA, cert.tau)
        assert cert.radius == pytest.approx(GOLDEN_SIGMA * norm.ppf(cert.tau))
        assert cert.num_samples == 220 and cert.pvalues.shape == (8, 8, 8)
    assert certs[0].info["forward_passes"] == 1 + 7           # 20 and 200 draws, 32 per pass
    # the estimation votes of that pass are the voter's: same key, same phase, same draws
    assert torch.equal(counts, SmoothedSegmenter(VoxelThreshold(), None, GOLDEN_SIGMA)
                       .voter(x, NoiseKey(0, "golden-volume"), batch_size=5).counts("estimation", 200))
    # golden values of the seeded stream on this volume: votes for class 1 on the 0.5 plane
    assert [int(counts[1, 0, 0, 7]), int(counts[1, 4, 4, 7]), int(counts[1, 7, 7, 7])] == [100, 90, 103]
    # ... which are the stream's own: a vote for class 1 on the plane is a positive noise value at that voxel
    noise = gaussian_noise((1, 8, 8, 8), GOLDEN_SIGMA, key=NoiseKey(0, "golden-volume"), phase="estimation",
                           start=0, count=200, device="cpu")
    assert int((noise[:, 0, 4, 4, 7] > 0).sum()) == 90


def test_the_adaptive_certifier_certifies_a_volume():
    x, _ = golden_volume()
    sm = SmoothedSegmenter(VoxelThreshold(), None, GOLDEN_SIGMA)
    cert, = sm.certify(x, AdaptiveSegCertify(), key=NoiseKey(0, "adaptive"), n0=20, n=400, alpha=0.001)
    assert cert.labels.shape == (8, 8, 8) and cert.pvalues.shape == (8, 8, 8)
    assert torch.equal(cert.labels, expected_golden_labels(x))
    assert 20 < cert.num_samples <= 420


def test_certified_dice_per_volume_and_per_class():
    """The same metric rows as for images: mean foreground Dice, one column per class for K > 2, the
    empty-truth flags; abstained voxels count as errors."""
    from certframe.core.metrics import metric_row

    truth = torch.zeros(4, 4, 4, dtype=torch.long)
    truth[:2, :2, :2] = 1                      # 8 voxels of class 1
    truth[2:, 2:, 2:] = 2                      # 8 voxels of class 2
    pred = truth.clone()
    pred[0, 0, 0] = ABSTAIN                    # class 1: TP 7, FN 1 -> 14 / 15
    pred[3, 3, 3] = 1                          # class 2: TP 7, FN 1; class 1: FP 1 -> 14 / 16
    row = metric_row(pred, truth, ("background", "liver", "tumour"))
    assert row["certified_dice_liver"] == pytest.approx(14 / 16)
    assert row["certified_dice_tumour"] == pytest.approx(14 / 15)
    assert row["certified_dice"] == pytest.approx((14 / 16 + 14 / 15) / 2)
    assert row["empty_truth"] is False and row["empty_truth_tumour"] is False


def test_batch_size_auto_counts_voxels_on_the_cpu():
    from certframe.run.accelerate import auto_batch_size

    sm = SmoothedSegmenter(VoxelThreshold(), None, SIGMA)
    assert auto_batch_size(sm, torch.zeros(1, 64, 64, 64), limit=1000) == 8       # 32 x 256^2 voxels per pass
    assert auto_batch_size(sm, torch.zeros(1, 128, 128, 128), limit=1000) == 1
    assert auto_batch_size(sm, torch.zeros(1, 256, 256), limit=1000) == 32       # images: as before


@pytest.mark.parametrize("size, roi, overlap", [((128, 128, 128), (96, 96, 96), 0.25),
                                               ((40, 200, 97), (32, 64, 64), 0.5),
                                               ((16, 16, 16), (32, 32, 32), 0.25),
                                               ((100, 64, 70), (64, 64, 64), 0.0),
                                               ((255, 255), (128, 128), 0.75)])
def test_the_documented_window_count_is_monais(size, roi, overlap):
    """docs/volumes.md: windows per axis ceil((size - roi) / int(roi (1 - overlap))) + 1, product over axes;
    pinned against MONAI's own enumeration of the sliding-window patches."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    from certframe.run.accelerate import certification_cost, sliding_windows

    padded = [max(s, r) for s, r in zip(size, roi)]     # sliding_window_inference pads up to the roi first
    interval = _get_scan_interval(padded, roi, len(size), (overlap,) * len(size))
    assert sliding_windows(size, roi, overlap) == len(dense_patch_slices(padded, roi, interval))
    cost = certification_cost(size, n0=100, n=1000, roi_size=roi, overlap=overlap)
    assert cost["window_passes"] == 1100 * cost["windows"] and cost["draws"] == 1100


def test_the_plugin_contracts_accept_a_volume_segmenter_and_data_set():
    from certframe.contract import check_dataset, check_segmenter

    check_segmenter(VoxelThreshold, image_size=(4, 6, 8))
    check_segmenter(VoxelThreshold)                                   # default volume size (16, 32, 48)
    check_dataset(TinyVolumes, options={"count": 2})


# ------------------------------------------------------------------ the guarantee on a volume
# The statistical check of tests/test_certifiers.py on a volume: the votes of the voxel threshold are
# drawn in closed form (exact binomials with P(class 1) = Phi((x_i - 0.5) / sigma)), TRIALS = 1,000
# certificates per certifier. The volume [4, 4, 4] is the worst case for H0: p <= tau: its first
# slice is far above the threshold (x = 1, P = 0.977, certified first by Holm), the other 48 voxels
# lie exactly at P = tau (x = 0.5 + sigma Phi^-1(tau): true nulls, any certification there is wrong).
def worst_case_volume() -> np.ndarray:
    x = np.full((4, 4, 4), 0.5 + SIGMA * norm.ppf(TAU))
    x[0] = 1.0
    p1 = norm.cdf((x - 0.5) / SIGMA)
    assert np.allclose(p1[1:], TAU)
    return p1


@pytest.mark.parametrize("certifier", SOUND, ids=["holm", "bonferroni", "cohen-per-pixel"])
def test_family_wise_error_stays_within_alpha_on_a_volume(certifier):
    p1 = worst_case_volume()
    wrong, _ = wrong_images(certifier, p1=p1)
    assert within_alpha(wrong[TAU]), f"{wrong[TAU]} / {TRIALS} volumes wrong at alpha {ALPHA}"
    assert wrong[TAU] > 0 or certifier.correction == "bonferroni"     # the volume does reach the nulls


@pytest.mark.parametrize("certifier", BROKEN, ids=["segcertify-uncorrected", "cohen-uncorrected", "holm-2alpha"])
def test_same_check_fails_on_a_broken_certifier_on_a_volume(certifier):
    """The check has power on volumes too: no correction over the voxels, or Holm at 2 alpha, fails it."""
    wrong, _ = wrong_images(certifier, p1=worst_case_volume())
    assert not within_alpha(wrong[TAU]), f"{wrong[TAU]} / {TRIALS}"


def test_volume_votes_feed_the_certifier_with_volume_shapes():
    votes = BinomialVotes(worst_case_volume(), seed=0)
    request = CertifyRequest(sigma=SIGMA, n0=100, n=1000, alpha=ALPHA, taus=(TAU,))
    cert, = SegCertify().certify(votes, request)
    assert cert.labels.shape == (4, 4, 4) and votes.asked == [("selection", 100, 0), ("estimation", 1000, 0)]
    assert (cert.labels[0] == 1).all()     # the far slice is certified


# ------------------------------------------------------------------ clear errors, before any sampling
def test_a_2d_segmenter_refuses_a_volume_and_a_volume_segmenter_an_image():
    x, _ = golden_volume()
    with pytest.raises(ValueError, match=r"segmenter ThresholdSegmenter expects inputs of shape \[C, H, W\] "
                                         r"\(images\), spatial_dims=2; got a volume of shape \[1, 8, 8, 8\]"):
        SmoothedSegmenter(ThresholdSegmenter(), None, SIGMA).voter(x, NoiseKey(0, "v"))
    with pytest.raises(ValueError, match=r"expects inputs of shape \[C, D, H, W\] \(volumes\), spatial_dims=3; "
                                         r"got an image of shape \[1, 8, 8\]"):
        SmoothedSegmenter(VoxelThreshold(), None, SIGMA).voter(torch.rand(1, 8, 8), NoiseKey(0, "v"))


def test_a_mask_whose_shape_does_not_match_its_volume_is_refused():
    from certframe.validation import validate_sample

    x, mask = golden_volume()
    with pytest.raises(ValueError, match=r"sample 'v': mask size \(8, 8, 7\) differs from the image size "
                                         r"\(8, 8, 8\)"):
        validate_sample(Sample(x, mask[:, :, :7], "v"), ("background", "foreground"))
    with pytest.raises(ValueError, match=r"sample 'v': mask must have shape \[D, H, W\] = \(8, 8, 8\) like "
                                         r"its image, got shape \(8, 8\)"):
        validate_sample(Sample(x, mask[0], "v"), ("background", "foreground"))


# ------------------------------------------------------------------ a tiny volume data set as a plugin
INTERRUPT = {"at": None}
"""Item index at which TinyVolumes raises KeyboardInterrupt (a Ctrl-C in the middle of a run)."""


class TinyVolumes(SegmentationDataset):
    """``count`` volumes ``[1, S, S, S]``: background 0.1, a cube of side S/2 at 0.5 + 1.5 R75 (P(class 1) =
    Phi(1.5 Phi^-1(0.75)) = 0.85, true flip distance 1.5 R75), shifted by one voxel per item."""

    class_names = ("background", "foreground")
    in_channels = 1

    def __init__(self, count: int = 2, size: int = 8):
        self.count, self.size = int(count), int(size)

    def __len__(self):
        return self.count

    def item_ids(self):
        return [f"vol-{i}" for i in range(self.count)]

    def __getitem__(self, i):
        if not 0 <= i < self.count:
            raise IndexError(i)
        if INTERRUPT["at"] == i:
            raise KeyboardInterrupt
        s, h = self.size, self.size // 2
        x = torch.full((1, s, s, s), 0.1)
        a = 1 + i % (s - h - 1)
        x[0, a:a + h, a:a + h, 1:1 + h] = 0.5 + 1.5 * R75
        return Sample(x, (x[0] > 0.5).long(), f"vol-{i}")


class Overclaiming(Certifier):
    """A deliberately false certifier: SegCertify's decisions with ``factor`` times its radius."""

    def __init__(self, factor: float = 10.0):
        self.inner, self.factor = SegCertify(), float(factor)
        self.name = f"segcertify-x{factor:g}"

    def certify(self, votes, request):
        from dataclasses import replace

        return [replace(c, radius=c.radius * self.factor, method=self.name)
                for c in self.inner.certify(votes, request)]


class VolumePlugin:
    """The test plugin: the data set, the voxel segmenter and the false certifier, registered like a package."""

    @hookimpl
    def register_datasets(self, register):
        register("tiny-volumes", TinyVolumes)

    @hookimpl
    def register_segmenters(self, register):
        register("voxel-threshold", VoxelThreshold)
        register("pixel-threshold", ThresholdSegmenter)

    @hookimpl
    def register_certifiers(self, register):
        register("overclaim-x10", Overclaiming)


PLUGIN = VolumePlugin()


@pytest.fixture
def cli(monkeypatch):
    """``certframe`` through CliRunner with :data:`PLUGIN` installed as an entry point (as a package would be)."""
    from certframe import registry
    from certframe.cli import main

    ep = importlib.metadata.EntryPoint(name="volume-tests", value="test_volumes:PLUGIN", group="certframe")
    monkeypatch.setattr(registry, "_entry_points", lambda: [ep])
    monkeypatch.delenv(registry.DISABLE_ENV, raising=False)
    monkeypatch.setitem(INTERRUPT, "at", None)

    def invoke(*args, ok=True):
        result = CliRunner().invoke(main, [str(a) for a in args])
        if ok:
            assert result.exit_code == 0, result.output + repr(result.exception)
        return result
    return invoke


VOLUME_BASE = ["--dataset", "tiny-volumes", "--segmenter", "voxel-threshold", "--sigma", SIGMA, "--n0", 20, "-n", 200,
               "--alpha", 0.001, "--device", "cpu", "--quiet"]
VOLUME_RUN = [*VOLUME_BASE, "--prefetch", 0, "--tau", 0.75, "--tau", 0.9]


def test_certify_resume_and_report_a_volume_run(cli, tmp_path, one_thread):
    reference, run = tmp_path / "reference", tmp_path / "interrupted"
    cli("certify", *VOLUME_RUN, "--dataset-option", "count=3", "--output", reference)
    rows = pd.read_csv(reference / "results.csv")
    # one row per (volume, sigma, method, tau), with certified Dice per volume
    assert rows[["index", "tau"]].values.tolist() == [[i, t] for i in range(3) for t in (0.75, 0.9)]
    assert (rows.num_samples == 220).all() and (rows.forward_passes == 8).all()
    # the cube's voxels have P(class 1) = 0.85: some certified at tau 0.75, none at 0.9 (that would be wrong)
    assert (rows[rows.tau == 0.75].certified_dice > 0).all() and (rows[rows.tau == 0.9].certified_dice == 0).all()
    assert rows.abstain_rate.between(0, 1).all() and (rows.clean_dice == 1).all()
    cert = np.load(reference / "certificates" / "000000.npz")
    assert cert["labels"].shape == (2, 8, 8, 8) and cert["image"].shape == (1, 8, 8, 8)

    # interrupted at the third volume (Ctrl-C), then resumed: identical to the uninterrupted run
    INTERRUPT["at"] = 2
    stopped = cli("certify", *VOLUME_RUN, "--dataset-option", "count=3", "--output", run, ok=False)
    assert stopped.exit_code != 0
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert len(pd.read_csv(run / "results.csv")) == 4
    INTERRUPT["at"] = None
    cli("certify", *VOLUME_RUN, "--dataset-option", "count=3", "--output", run, "--resume")
    from certframe.run.folder import compare_results
    compare_results(pd.read_csv(reference / "results.csv"), pd.read_csv(run / "results.csv"))
    for i in range(3):
        a, b = (np.load(r / "certificates" / f"{i:06d}.npz") for r in (reference, run))
        assert all(np.array_equal(a[k], b[k]) for k in a.files)

    # the report: HTML, tables, and overlays with one slice per axis of each volume
    out = tmp_path / "report"
    cli("report", reference, "--output", out, "--overlays", 2)
    html = (out / "report.html").read_text()
    assert "certified" in html.lower()
    overlays = sorted((out / "figures").glob("overlays-*.png"))
    assert len(overlays) == 1
    from matplotlib.image import imread
    h, w = imread(overlays[0]).shape[:2]
    assert h > w / 2       # 2 volumes x 3 axes = 6 rows of 5 panels


def test_representative_slices_go_through_the_foreground():
    from certframe.report.figures import representative_slices

    mask = np.zeros((8, 10, 12), dtype=np.int16)
    mask[1:4, 6:9, 2:3] = 1
    assert representative_slices(mask) == [(0, 2), (1, 7), (2, 2)]
    assert representative_slices(np.zeros((8, 10, 12))) == [(0, 4), (1, 4), (2, 6)]  # middle: round(3.5) = 4


def test_wrong_pairings_fail_at_plugin_check_time(cli, tmp_path):
    """A 2-D segmenter with a volume data set and a 2-D diffusion denoiser with a volume are refused before
    anything is sampled or written, saying what was expected and what came."""
    r = cli("certify", *VOLUME_RUN, "--segmenter", "pixel-threshold", "--output", tmp_path / "a", ok=False)
    assert r.exit_code != 0
    assert ("the segmenter 'pixel-threshold' (ThresholdSegmenter) expects inputs of shape [C, H, W] (images), "
            "spatial_dims=2; the dataset 'tiny-volumes' gives volumes of shape [1, 8, 8, 8] ([C, D, H, W])"
            in " ".join(r.output.split()))
    assert not (tmp_path / "a" / "results.csv").exists()
    r = cli("certify", *VOLUME_RUN, "--denoiser", "ddpm", "--output", tmp_path / "b", ok=False)
    assert r.exit_code != 0
    assert ("the denoiser 'ddpm' (DDPMDenoiser) expects inputs of shape [C, H, W] (images), spatial_dims=2; "
            "the dataset 'tiny-volumes' gives volumes" in " ".join(r.output.split()))
    assert not (tmp_path / "b" / "results.csv").exists()


@pytest.mark.parametrize("name,norm,extra", ATTACK_CASES, ids=[f"{a}-{n}" for a, n, _ in ATTACK_CASES])
def test_every_attack_stays_in_the_ball_of_the_whole_volume(name, norm, extra):
    """Each built-in attack on volumes [B, C, D, H, W]: same shape, in [0, 1], inside the norm ball measured
    over all C*D*H*W values of each volume, and it moves."""
    from certframe.registry import get_registry

    registry = get_registry(load_entrypoints=False)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 1, 6, 7, 8, generator=gen) * 1.6 - 0.3).clamp(0, 1)
    y = (x[:, 0] > 0.5).long()
    eps = 0.5 if norm == "l2" else 8 / 255
    entry = registry.get("attack", name)
    options = {"model": VoxelThreshold(), "eps": eps, **extra}
    if getattr(entry.factory, "norms", None):
        options["norm"] = norm
    if entry.factory.threat == "smoothed":
        options["sigma"] = SIGMA
    adv = registry.create("attack", name, **options)(x, y)
    assert adv.shape == x.shape and float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    d = (adv.double() - x.double()).flatten(1)
    size = d.norm(dim=1) if norm == "l2" else d.abs().amax(dim=1)
    assert bool((size <= eps + 1e-5).all()) and bool((size > 0.3 * eps).all()), size.tolist()


def test_attack_a_volume_run_false_certificate_caught_honest_one_clean(cli, tmp_path):
    """``certframe attack`` on volumes (L2 over the whole volume): a certifier claiming 10x SegCertify's radius
    is caught by the falsification job (the cube's voxels flip at 1.5 R < 10 R); the honest one gives 0
    violations with the voxels it tested stated."""
    base = ["attack", *VOLUME_BASE, "--tau", 0.75, "--dataset-option", "count=1", "--attack", "pgdl2",
            "--attack-option", "pgdl2:steps=5", "--falsify-option", "empirical=false"]
    cli(*base, "--certifier", "overclaim-x10", "--output", tmp_path / "false")
    rows = pd.read_csv(tmp_path / "false" / "results.csv")
    caught = rows[rows.attack == "falsify"]
    assert int(caught.tested.iloc[0]) == 8 and int(caught.violations.iloc[0]) >= 1
    assert json.loads((tmp_path / "false" / "manifest.json").read_text())["violations"] >= 1
    pixels = pd.read_csv(tmp_path / "false" / "pixels.csv")
    assert {"slice", "row", "col"} <= set(pixels.columns)
    assert (pixels.perturbation_l2 < pixels.budget).all()

    cli(*base, "--certifier", "segcertify", "--output", tmp_path / "honest")
    rows = pd.read_csv(tmp_path / "honest" / "results.csv")
    assert (rows.tested > 0).all() and (rows.violations == 0).all()
    manifest = json.loads((tmp_path / "honest" / "manifest.json").read_text())
    assert manifest["violations"] == 0 and manifest["tested"] > 0
    pgd = rows[rows.attack == "pgdl2"]
    assert (pgd.perturbation_l2 < pgd.radius).all()          # L2 over the whole volume, inside the claim
