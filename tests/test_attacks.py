"""The attack suite: norm balls, effectiveness, targeted attacks, EOT gradients, violations, CLI."""
from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import ListDataset, ThresholdSegmenter
from paused_run import interrupt, start_paused, wait_for_pause

from certframe.attacks import (
    EOTPGDL2,
    PGD,
    PGDL2,
    DenoisedSegmenter,
    SegPGD,
    TargetedPGD,
    check_eps,
    check_norm,
    count_violations,
)
from certframe.attacks.base import project, validate_labels
from certframe.attacks.pipeline import eot_gradient
from certframe.attacks.segpgd import segpgd_lambda, segpgd_loss
from certframe.attacks.suite import attack_jobs, robustness_table
from certframe.attacks.violations import check_certificates
from certframe.cli import main
from certframe.core import metrics
from certframe.core.smoothing import SmoothedSegmenter
from certframe.interfaces import ABSTAIN, NoiseKey
from certframe.plugins.certifiers.segcertify import SegCertify
from certframe.plugins.denoisers.none import NoDenoiser
from certframe.registry import get_registry
from certframe.run import attack_dataset
from certframe.run.folder import RunError, RunFolder, compare_results

TOL = 1e-6


@pytest.fixture(scope="module")
def registry():
    return get_registry(load_entrypoints=False)


@pytest.fixture(scope="module")
def lung(registry):
    """The undefended bundled segmenter and two synthetic lung images with masks."""
    torch.manual_seed(0)
    seg = registry.create("segmenter", "monai", weights="synthetic-lung")
    data = registry.create("dataset", "synthetic-lung", count=2, size=64)
    x = torch.stack([data[i].image for i in range(2)])
    y = torch.stack([data[i].mask for i in range(2)])
    return seg, x, y


def _dice(seg, images, masks):
    pred = seg.predict(images)
    return [metrics.mean_dice(pred[i], masks[i], 2) for i in range(len(images))]


# ------------------------------------------------------------------ norm ball and box
ALL = [("fgsm", "linf", {}), ("pgd", "linf", {"step_size": 4 / 255}), ("pgdl2", "l2", {"step_size": 0.5}),
       ("targeted-pgd", "linf", {}), ("targeted-pgd", "l2", {}), ("segpgd", "linf", {}), ("segpgd", "l2", {}),
       ("eot-pgdl2", "l2", {"num_draws": 2, "steps": 3}), ("eot-pgd", "linf", {"num_draws": 2, "steps": 3})]


@pytest.mark.parametrize("name,norm,extra", ALL, ids=[f"{a}-{n}" for a, n, _ in ALL])
def test_attacks_stay_in_norm_ball_and_unit_box(registry, lung, name, norm, extra):
    seg, x, y = lung
    # saturate part of the image so that clipping to [0, 1] is active
    x = (x * 1.6 - 0.3).clamp(0, 1)
    eps = 0.5 if norm == "l2" else 8 / 255
    entry = registry.get("attack", name)
    options = {"model": seg, "eps": eps, **extra}
    if getattr(entry.factory, "norms", None):
        options["norm"] = norm
    if entry.factory.threat == "smoothed":
        options["sigma"] = 0.25
    attack = registry.create("attack", name, **options)
    adv = attack(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    d = (adv.double() - x.double()).flatten(1)
    size = d.norm(dim=1) if norm == "l2" else d.abs().amax(dim=1)
    assert bool((size <= eps + TOL).all()), f"{name} left the {norm} ball: {size.tolist()} > {eps}"
    assert bool((size > 0.3 * eps).all()), f"{name} barely moved: {size.tolist()}"


def test_projection_is_exact():
    delta = torch.tensor([[[[3.0, 4.0]]], [[[0.3, 0.4]]]])  # L2 norms 5 and 0.5
    p = project(delta, 1.0, "l2")
    assert torch.allclose(p.flatten(1).norm(dim=1), torch.tensor([1.0, 0.5]), atol=1e-7)
    assert torch.allclose(p[0], delta[0] / 5)  # direction kept
    assert torch.equal(p[1], delta[1])          # inside: unchanged
    assert torch.equal(project(delta, 0.35, "linf"), delta.clamp(-0.35, 0.35))


def test_seeded_attacks_are_reproducible(lung):
    seg, x, y = lung
    a = PGD(seg, eps=8 / 255, steps=3, seed=7)(x, y)
    b = PGD(seg, eps=8 / 255, steps=3, seed=7)(x, y)
    c = PGD(seg, eps=8 / 255, steps=3, seed=8)(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------ effectiveness
def test_pgd_lowers_dice_of_undefended_segmenter(lung):
    seg, x, y = lung
    eps = 8 / 255
    clean = _dice(seg, x, y)
    attacked = _dice(seg, PGD(seg, eps=eps, step_size=2 / 255, steps=10)(x, y), y)
    g = torch.Generator().manual_seed(0)
    random_sign = (x + eps * torch.randint(0, 2, x.shape, generator=g).mul(2).sub(1)).clamp(0, 1)
    noisy = _dice(seg, random_sign, y)
    for c, a, r in zip(clean, attacked, noisy):
        assert a < c - 0.02, (clean, attacked)
        assert a < r - 0.01, (noisy, attacked)  # worse than random noise of the same Linf size


def test_pgdl2_and_segpgd_lower_dice(lung):
    seg, x, y = lung
    clean = _dice(seg, x, y)
    for attack in (PGDL2(seg, eps=1.0, steps=10), SegPGD(seg, eps=8 / 255, steps=10)):
        attacked = _dice(seg, attack(x, y), y)
        assert all(a < c - 0.02 for a, c in zip(attacked, clean)), (type(attack).__name__, clean, attacked)


def test_targeted_attack_moves_predictions_toward_target(lung):
    seg, x, y = lung
    before = seg.predict(x)
    # erase the lungs: target all background
    adv = TargetedPGD(seg, target=0, eps=16 / 255, step_size=1 / 255, steps=40)(x, y)
    after = seg.predict(adv)
    lungs_before, lungs_after = (before == 1).float().mean().item(), (after == 1).float().mean().item()
    assert lungs_after < 0.85 * lungs_before, (lungs_before, lungs_after)
    toward, away = int(((before == 1) & (after == 0)).sum()), int(((before == 0) & (after == 1)).sum())
    assert toward > 2 * away, (toward, away)
    # a mask target: the left half lungs, the right half background
    target = torch.zeros(64, 64, dtype=torch.long)
    target[:, :32] = 1
    agree_before = (before == target).float().mean().item()
    adv = TargetedPGD(seg, target=target, norm="l2", eps=2.0, steps=10)(x, y)
    agree_after = (seg.predict(adv) == target).float().mean().item()
    assert agree_after > agree_before + 0.05, (agree_before, agree_after)


def test_torchattacks_targeted_api_composes(lung):
    """torchattacks' own targeted mode: the labels given are the target mask."""
    seg, x, _ = lung
    atk = PGD(seg, eps=16 / 255, step_size=1 / 255, steps=40)
    atk.set_mode_targeted_by_label(quiet=True)
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    lungs_before = (seg.predict(x) == 1).float().mean().item()
    lungs_after = (seg.predict(atk(x, target)) == 1).float().mean().item()
    assert lungs_after < 0.85 * lungs_before, (lungs_before, lungs_after)


# ------------------------------------------------------------------ SegPGD maths
def test_segpgd_schedule_and_loss_golden():
    assert segpgd_lambda(1, 10) == 0.0
    assert segpgd_lambda(10, 10) == pytest.approx(9 / 20)
    assert segpgd_lambda(5, 8) == pytest.approx(4 / 16)
    with pytest.raises(ValueError, match="step t"):
        segpgd_lambda(0, 10)
    # two pixels: one right (logits 2 vs 0, label 0), one wrong (logits 1 vs 0, label 1)
    logits = torch.tensor([[[[2.0, 1.0]], [[0.0, 0.0]]]])  # [1, 2, 1, 2]
    labels = torch.tensor([[[0, 1]]])
    ce_right = math.log(1 + math.exp(-2.0))
    ce_wrong = math.log(1 + math.exp(1.0))
    lam = 0.25
    expected = ((1 - lam) * ce_right + lam * ce_wrong) / 2
    assert segpgd_loss(logits, labels, lam).item() == pytest.approx(expected, rel=1e-6)
    assert segpgd_loss(logits, labels, 0.0).item() == pytest.approx(ce_right / 2, rel=1e-6)


# ------------------------------------------------------------------ EOT
def _ddpm_denoiser(registry, tmp_path):
    """The ``ddpm`` plugin with its bundled model when there is one, else a tiny random diffusers model."""
    try:
        return registry.create("denoiser", "ddpm")
    except FileNotFoundError:
        pass
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4)
    folder = tmp_path / "tiny-ddpm"
    unet.save_pretrained(folder, safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)
    return registry.create("denoiser", "ddpm", model=str(folder))


def test_eot_gradients_flow_through_ddpm_denoiser(registry, lung, tmp_path):
    seg, x, y = lung
    den = _ddpm_denoiser(registry, tmp_path)
    pipeline = DenoisedSegmenter(seg, den, sigma=0.25)
    calls = []
    handle = den.register_forward_hook(lambda m, i, o: calls.append(o.requires_grad))
    try:
        grad = eot_gradient(pipeline, x[:1], y[:1], num_draws=2, draw_batch=2,
                            generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert calls and all(calls), "the denoiser's output was not part of the autograd graph"
    assert grad.shape == x[:1].shape
    assert bool(torch.isfinite(grad).all())
    assert float(grad.abs().sum()) > 0
    # and the attack built on it stays in its ball
    adv = EOTPGDL2(seg, sigma=0.25, denoiser=den, eps=0.5, steps=2, num_draws=2)(x[:1], y[:1])
    assert float((adv - x[:1]).flatten().norm()) <= 0.5 + TOL and float((adv - x[:1]).abs().sum()) > 0


def test_eot_gradient_is_mean_of_per_draw_gradients():
    """Golden check of the EOT estimate: the same draws, differentiated one by one."""
    seg = ThresholdSegmenter()
    pipeline = DenoisedSegmenter(seg, NoDenoiser(), sigma=0.3)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = (torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(2)) > 0.5).long()
    got = eot_gradient(pipeline, x, y, num_draws=5, draw_batch=2, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    expected = torch.zeros_like(x)
    for m in (2, 2, 1):  # the same draw batches, in the same order
        noise = torch.randn((m, 1, 1, 4, 4), generator=g) * 0.3
        for j in range(m):
            xi = x.clone().requires_grad_(True)
            loss = F.cross_entropy(seg(xi + noise[j]), y)
            expected += torch.autograd.grad(loss, xi)[0] / 5
    assert torch.allclose(got, expected, atol=1e-7)


# ------------------------------------------------------------------ violations
def test_violation_counts_exact():
    certified = torch.tensor([[0, 1], [ABSTAIN, 1]])
    adversarial = torch.tensor([[0, 0], [1, ABSTAIN]])
    majority = torch.tensor([[1, 0], [1, 1]])
    v = count_violations(certified, 0.5, adversarial, 0.3, majority)
    assert (v.covered, v.violations, v.abstained, v.kept, v.majority_flips) == (3, 1, 1, 1, 2)
    assert v.covers and v.violation_rate == pytest.approx(1 / 3)
    # the perturbation reaches the radius: nothing was promised, nothing is violated
    v = count_violations(certified, 0.5, adversarial, 0.5)
    assert (v.covered, v.violations, v.majority_flips) == (0, 0, None) and not v.covers
    # a certificate that holds
    v = count_violations(certified, 0.5, certified.clone(), 0.3)
    assert (v.covered, v.violations, v.kept) == (3, 0, 3)


def test_violation_checker_input_errors():
    with pytest.raises(ValueError, match="same image size"):
        count_violations(torch.zeros(2, 2, dtype=torch.long), 0.5, torch.zeros(3, 2, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="integer labels"):
        count_violations(torch.zeros(2, 2), 0.5, torch.zeros(2, 2, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        count_violations(torch.zeros(2, 2, dtype=torch.long), -1, torch.zeros(2, 2, dtype=torch.long), 0.1)


def test_violation_checker_catches_a_wrong_certificate_and_passes_a_correct_one():
    """End to end with the threshold segmenter (P(class 1) = Phi((x - 0.5) / sigma) exactly).

    x: 4x4 pixels at 0.9 (class 1) and 0.1 (class 0). x': two class-1 pixels pushed
    to 0.1, ||x' - x||_2 = 0.8 sqrt(2) = 1.13. The honest certificate (R = 0.25 *
    Phi^-1(0.75) = 0.169) does not reach x': 0 violations. The same labels claimed
    with a radius of 10 (a deliberately wrong certificate) are contradicted on
    exactly those two pixels, which x' certifies as class 0.
    """
    seg = ThresholdSegmenter()
    smoothed = SmoothedSegmenter(seg, None, sigma=0.25)
    x = torch.full((1, 4, 4), 0.1)
    x[0, :2] = 0.9
    x_adv = x.clone()
    x_adv[0, 0, :2] = 0.1
    l2 = float((x_adv - x).norm())
    kwargs = dict(n0=20, n=300, alpha=0.001, taus=(0.75,), key=NoiseKey(0, "t"))
    cert = smoothed.certify(x, SegCertify(), **kwargs)[0]
    cert_adv = smoothed.certify(x_adv, SegCertify(), **kwargs)[0]
    assert bool((cert.labels != ABSTAIN).all()) and bool((cert_adv.labels != ABSTAIN).all())
    honest = check_certificates(cert, cert_adv, l2)
    assert (honest.covered, honest.violations) == (0, 0)
    from dataclasses import replace
    wrong = check_certificates(replace(cert, radius=10.0), cert_adv, l2)
    assert (wrong.covered, wrong.violations, wrong.kept, wrong.abstained) == (16, 2, 14, 0)
    with pytest.raises(ValueError, match="different noise levels"):
        check_certificates(cert, replace(cert_adv, sigma=0.5), l2)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("eps,norm,match", [(-0.1, "l2", "eps must be a finite number > 0"),
                                            (0, "linf", "eps must be a finite number > 0"),
                                            (float("nan"), "l2", "finite"), ("big", "l2", "a number"),
                                            (8, "linf", "8/255")])
def test_bad_eps(eps, norm, match):
    with pytest.raises(ValueError, match=match):
        check_eps(eps, norm)


def test_bad_norm_target_and_inputs(lung):
    seg, x, y = lung
    with pytest.raises(ValueError, match=r"norm must be one of \('l2', 'linf'\), got 'l3'"):
        check_norm("l3")
    with pytest.raises(ValueError, match="norm must be one of"):
        SegPGD(seg, norm="l1")
    with pytest.raises(ValueError, match=r"target class 5 is not a class of the model \(expected 0..1\)"):
        TargetedPGD(seg, target=5)
    with pytest.raises(ValueError, match="integer tensor"):
        TargetedPGD(seg, target=torch.zeros(64, 64))
    with pytest.raises(ValueError, match="target mask must have shape"):
        TargetedPGD(seg, target=torch.zeros(32, 32, dtype=torch.long))(x, y)
    with pytest.raises(ValueError, match=r"target mask hold classes \[0, 3\]"):
        bad = torch.zeros(64, 64, dtype=torch.long)
        bad[0, 0] = 3
        TargetedPGD(seg, target=bad)(x, y)
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0"):
        PGDL2(seg, eps=0)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        PGD(seg)(x * 2, y)
    with pytest.raises(ValueError, match=r"labels must have shape \[B, H, W\]"):
        PGD(seg)(x, y[:, :10])
    with pytest.raises(ValueError, match=r"labels hold classes \[0, 1, 2\]"):
        validate_labels(torch.tensor([[[0, 1, 2]]]), torch.zeros(1, 1, 1, 3), 2)
    with pytest.raises(ValueError, match="needs the smoothing noise level sigma"):
        EOTPGDL2(seg)
    with pytest.raises(ValueError, match="objective must be one of"):
        EOTPGDL2(seg, sigma=0.25, objective="max")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        PGD(seg, steps=0)
    with pytest.raises(ValueError, match="'pgd' supports linf budgets and none was given"):
        attack_jobs({"pgd": PGD}, taus=(0.75,))
    with pytest.raises(ValueError, match="radius multiple must be a finite number > 0"):
        attack_jobs({"pgdl2": PGDL2}, taus=(0.75,), radius_multiples=(0,))


# ------------------------------------------------------------------ suite and CLI
def test_suite_rows_and_no_violations_on_threshold_model():
    """The full loop on a model whose smoothed behaviour is known: rows, own-radius budgets, no violations."""
    from certframe.core.statistics import certified_radius

    torch.manual_seed(0)
    img = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3
    img[:, 2:6, 2:6] += 0.6
    mask = (img[0] > 0.5).long()
    data = ListDataset([(img, mask)])
    attacks = {"pgdl2": PGDL2, "eot-pgdl2": EOTPGDL2, "pgd": PGD}
    rows = list(attack_dataset(data, ThresholdSegmenter(), None, SegCertify(), attacks, sigma=0.25, n0=10, n=200,
                               alpha=0.01, taus=(0.6, 0.75), eps_linf=(2 / 255,),
                               attack_options={"eot-pgdl2": {"num_draws": 4, "steps": 3}},
                               falsify_options={"max_pixels": 2, "steps": 4, "restarts": 1, "empirical": False},
                               seed=0, device="cpu"))
    df = pd.DataFrame(rows)
    r6, r75 = certified_radius(0.25, 0.6), certified_radius(0.25, 0.75)
    # falsify + 2 L2 attacks at each certificate's own radius + 1 Linf attack, each for 2 taus
    assert len(df) == (1 + 2 + 1) * 2
    assert set(zip(df.attack, df.norm)) == {("falsify", "l2"), ("pgdl2", "l2"), ("eot-pgdl2", "l2"),
                                            ("pgd", "linf")}
    # default L2 budgets: the certificate's own radius, just inside the open ball (falsify: R itself,
    # it shrinks the ball internally)
    own = df[df.attack.isin(["pgdl2", "eot-pgdl2"])]
    expected = own.tau.map({0.6: r6, 0.75: r75}) * (1 - 1e-6)
    assert own.eps.values == pytest.approx(expected.values, rel=1e-12)
    assert (own.radius_multiple == 1).all() and df[df.norm == "linf"].radius_multiple.isna().all()
    assert (df.perturbation_l2 <= df.eps_l2_bound + TOL).all()
    # every L2 row tested the claim for real, and a correct certificate shows no violation
    l2 = df[df.norm == "l2"]
    assert (l2.tested > 0).all() and (~l2.not_tested).all() and (l2.violations == 0).all()
    assert (l2.certified_dice_at_eps == l2.certified_dice).all()
    assert (l2.min_upper_bound > 0.5).all()
    linf = df[df.norm == "linf"]
    assert linf.eps_l2_bound.iloc[0] == pytest.approx(2 / 255 * 8)
    table = robustness_table(df)
    assert table.violations.fillna(0).sum() == 0 and (table.tested > 0).any()


def test_cli_attack_writes_rows(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "attack", "--dataset-option", "count=1", "--dataset-option", "size=32",
        "--segmenter-option", "weights=synthetic-lung-noise0.25", "--n0", "5", "-n", "40", "--alpha", "0.01",
        "--tau", "0.6", "--attack", "pgdl2", "--attack", "eot-pgdl2", "--attack", "pgd",
        "--attack-option", "eot-pgdl2:num_draws=2", "--attack-option", "eot-pgdl2:steps=2",
        "--attack-option", "pgd:steps=3", "--eps-l2", "0.05", "--eps-l2", "0.3", "--eps-linf", "1/255",
        "--no-falsify", "--device", "cpu", "-o", str(out)], terminal_width=160)
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 5
    for col in ["image_id", "segmenter", "denoiser", "certifier", "sigma", "tau", "radius", "attack", "norm", "eps",
                "base_robust_dice", "smoothed_robust_dice", "certified_dice_at_eps", "violations"]:
        assert col in df.columns
    assert set(df.attack) == {"pgdl2", "eot-pgdl2", "pgd"}
    assert df.segmenter.iloc[0] == "monai:synthetic-lung-noise0.25" and df.denoiser.iloc[0] == "none"
    assert sorted(df[df.norm == "l2"].eps.unique()) == [0.05, 0.3]
    assert df[df.norm == "linf"].eps.iloc[0] == pytest.approx(1 / 255)
    # R(0.6) = 0.063: the 0.05 budget is tested; 0.3 lies beyond every radius: "not tested", never 0
    assert (df[df.eps == 0.05].tested > 0).all() and (df[df.eps == 0.05].violations == 0).all()
    assert df[df.eps == 0.3].not_tested.all() and df[df.eps == 0.3].violations.isna().all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["violations"] == 0
    assert len(json.loads((out / "robustness.json").read_text())) == 3  # l2 0.05, l2 0.3, linf 1/255
    assert "empirical vs certified Dice" in result.output and "not tested" in result.output
    # the same folder again without --overwrite: a clear error, nothing lost
    again = CliRunner().invoke(main, ["attack", "-o", str(out), "--dataset-option", "count=1",
                                      "--segmenter-option", "weights=synthetic-lung-noise0.25"])
    assert again.exit_code != 0 and "already holds results" in again.output


@pytest.mark.parametrize("args,match", [
    (["--eps-linf", "8"], "8/255"),
    (["--eps-l2", "-1"], "eps must be a finite number > 0"),
    (["--eps-l2", "abc"], "expected a number such as 0.5 or 2/255"),
    (["--attack", "nope"], "unknown attack 'nope'"),
    (["--attack-option", "segpgd:steps=2"], "which is not run"),
    (["--attack", "targeted-pgd", "--attack-option", "targeted-pgd:target=7"], "target class 7"),
])
def test_cli_bad_values(tmp_path, args, match):
    result = CliRunner().invoke(main, ["attack", "--dataset-option", "count=1", "--dataset-option", "size=32",
                                       "--segmenter-option", "weights=synthetic-lung", "-n", "10",
                                       "-o", str(tmp_path / "r"), *args], terminal_width=200)
    assert result.exit_code != 0
    assert match in " ".join(result.output.split()), result.output


# ------------------------------------------------------------------ job plan and resume
def test_attack_jobs_plan_rows_per_image():
    attacks = {"pgdl2": PGDL2, "pgd": PGD, "segpgd": SegPGD}
    jobs = attack_jobs(attacks, taus=(0.6, 0.75), eps_l2=(0.3, 0.3), eps_linf=(1 / 255,))
    assert [(j.name, j.norm, j.eps, j.pass_norm) for j in jobs] == [
        ("falsify", "l2", None, False), ("pgdl2", "l2", 0.3, False), ("pgd", "linf", 1 / 255, False),
        ("segpgd", "l2", 0.3, True), ("segpgd", "linf", 1 / 255, True)]
    assert jobs[1].threat == "base" and jobs[1].factory is PGDL2
    # default L2 budgets: each certificate's own radius (eps None) times each multiple
    jobs = attack_jobs({"pgdl2": PGDL2}, taus=(0.6, 0.75), radius_multiples=(1, 2), falsify=False)
    assert [(j.name, j.eps, j.radius_multiple) for j in jobs] == [("pgdl2", None, 1.0), ("pgdl2", None, 2.0)]
    with pytest.raises(ValueError, match="nothing to run"):
        attack_jobs({}, taus=(0.75,), falsify=False)
    with pytest.raises(ValueError, match="'pgd' supports linf budgets and none was given"):
        attack_jobs({"pgd": PGD}, taus=(0.75,), eps_l2=())
    # attack_dataset runs exactly these jobs: len(jobs) * len(taus) rows per image, jobs in order
    data = ListDataset([(torch.full((1, 8, 8), 0.2), torch.zeros(8, 8, dtype=torch.long))] * 2)
    rows = list(attack_dataset(data, ThresholdSegmenter(), None, SegCertify(), {"pgdl2": PGDL2, "pgd": PGD},
                               sigma=0.25, n0=5, n=20, alpha=0.01, taus=(0.6, 0.75), eps_linf=(1 / 255,),
                               attack_options={"pgdl2": {"steps": 1}, "pgd": {"steps": 1}},
                               falsify_options={"max_pixels": 1, "steps": 1, "restarts": 1, "n_test": 20,
                                                "empirical": False}, seed=0, device="cpu"))
    jobs = attack_jobs({"pgdl2": PGDL2, "pgd": PGD}, taus=(0.6, 0.75), eps_linf=(1 / 255,))
    assert len(rows) == 2 * len(jobs) * 2
    assert [(r["attack"], r["norm"]) for r in rows[:len(jobs) * 2:2]] == [(j.name, j.norm) for j in jobs]


# 3 images at 32x32; each writes 2 jobs (pgdl2 at L2 0.3, pgd at Linf 1/255) x 2 taus = 4 rows. The kill lands
# in image 1 because the process waits there for it (tests/paused_run.py), not because an image takes long.
RESUME_COUNT, RESUME_ROWS = 3, 4
RESUME_ARGS = ["attack", "--dataset-option", f"count={RESUME_COUNT}", "--dataset-option", "size=32",
               "--segmenter-option", "weights=synthetic-lung-noise0.25", "--n0", "5", "-n", "100",
               "--alpha", "0.01", "--tau", "0.6", "--tau", "0.75", "--attack", "pgdl2", "--attack", "pgd",
               "--attack-option", "pgdl2:steps=40", "--attack-option", "pgd:steps=40", "--eps-l2", "0.3",
               "--eps-linf", "1/255", "--no-falsify", "--batch-size", "50", "--device", "cpu", "--quiet"]
WALL_TIME = ("seconds", "attack_seconds")


def _attack(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args], terminal_width=200)
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _read(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "results.csv", dtype={"image_id": str})


@pytest.fixture(scope="module")
def attack_reference(tmp_path_factory):
    """An uninterrupted attack run of RESUME_COUNT images."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("attack-reference") / "run"
    try:
        _attack(*RESUME_ARGS, "-o", out)
    finally:
        torch.set_num_threads(old)
    return out


def _interrupted_copy(reference: Path, run: Path) -> list[str]:
    """A copy of ``reference`` cut inside image 1: image 0's rows, two of image 1's and a cut-off line."""
    run.mkdir()
    manifest = json.loads((reference / "manifest.json").read_text())
    manifest["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(manifest))
    lines = (reference / "results.csv").read_text().splitlines(keepends=True)
    (run / "results.csv").write_text("".join(lines[:1 + RESUME_ROWS + 2]) + lines[1 + RESUME_ROWS + 2][:25])
    return lines


def _same_as_reference(reference: Path, run: Path) -> None:
    ref, got = _read(reference), _read(run)
    compare_results(ref, got, ignore=WALL_TIME)  # every column but wall time
    assert got["index"].tolist() == [i for i in range(RESUME_COUNT) for _ in range(RESUME_ROWS)]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["resumed"] == 1
    assert manifest["images"] == RESUME_COUNT and manifest["rows_per_image"] == RESUME_ROWS
    assert manifest["violations"] == json.loads((reference / "manifest.json").read_text())["violations"]
    # the final files cover the whole run, not only the images attacked after the resume
    if (reference / "results.parquet").exists():
        parquet = pd.read_parquet(run / "results.parquet")
        assert pd.api.types.is_string_dtype(parquet["image_id"])
        compare_results(got, parquet, ignore=WALL_TIME)
    for name, ignore in (("summary.json", ["attack_seconds"]), ("robustness.json", [])):
        a, b = (pd.DataFrame(json.loads((p / name).read_text())).drop(columns=ignore) for p in (reference, run))
        pd.testing.assert_frame_equal(a, b)
    assert pd.DataFrame(json.loads((run / "robustness.json").read_text()))["images"].tolist() == [RESUME_COUNT] * 4


def test_cli_attack_killed_run_resumes_to_identical_results(tmp_path, attack_reference, one_thread):
    run, marker = tmp_path / "killed", tmp_path / "paused"
    proc = start_paused([*RESUME_ARGS, "-o", run], marker)
    wait_for_pause(marker, proc)  # image 0's rows are written; image 1 is under way
    interrupt(proc, signal.SIGKILL)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = _read(run)
    assert done["index"].tolist() == [0] * RESUME_ROWS, "the run was not killed in image 1"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["rows_per_image"] == RESUME_ROWS

    # without --resume the folder is protected
    r = _attack(*RESUME_ARGS, "-o", run, ok=False)
    assert r.exit_code != 0 and "already holds results" in r.output and "--resume" in r.output
    assert _read(run).equals(done)

    _attack(*RESUME_ARGS, "-o", run, "--resume")
    _same_as_reference(attack_reference, run)
    # the images done before the kill were kept, not attacked again
    kept = _read(run).iloc[:len(done)]
    pd.testing.assert_frame_equal(kept, done)


def test_cli_attack_resume_drops_a_partially_written_image(tmp_path, attack_reference, one_thread):
    # repair needs the attack run's rows per image (jobs x taus), not one per tau
    lines = _interrupted_copy(attack_reference, tmp_path / "repaired")
    assert RunFolder(tmp_path / "repaired").repair(rows_per_image=RESUME_ROWS) == {0: "lung-test-0000"}
    assert (tmp_path / "repaired" / "results.csv").read_text() == "".join(lines[:1 + RESUME_ROWS])
    # --resume repairs the folder itself: image 0 kept, image 1 (cut) and image 2 attacked
    run = tmp_path / "run"
    _interrupted_copy(attack_reference, run)
    _attack(*RESUME_ARGS, "-o", run, "--resume")
    _same_as_reference(attack_reference, run)
    assert (run / "results.csv").read_text().startswith("".join(lines[:1 + RESUME_ROWS]))


def test_cli_attack_resume_guards(tmp_path, attack_reference):
    run = tmp_path / "run"
    _interrupted_copy(attack_reference, run)
    before = (run / "results.csv").read_bytes()
    # without --resume: refused, nothing lost
    r = _attack(*RESUME_ARGS, "-o", run, ok=False)
    assert r.exit_code != 0 and "already holds results" in r.output
    # another configuration: refused with the difference named
    changed = ["0.5" if a == "0.3" else a for a in RESUME_ARGS]  # --eps-l2 0.5 instead of 0.3
    r = _attack(*changed, "-o", run, "--resume", ok=False)
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), r.output
    assert "cannot resume" in r.output
    assert "configuration differs: eps_l2: [0.3] in the run, [0.5] now" in " ".join(r.output.split())
    # --resume with --overwrite: a clean error (no traceback), nothing overwritten
    r = _attack(*RESUME_ARGS, "-o", run, "--resume", "--overwrite", ok=False)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "--resume and --overwrite exclude each other" in r.output and "Traceback" not in r.output
    assert (run / "results.csv").read_bytes() == before
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"
    with pytest.raises(RunError, match="truncated"):
        RunFolder(run).results(require_complete=False)


# ------------------------------------------------------------------ issue 13: stronger base attacks
def test_target_margin_golden():
    from certframe.attacks.targeted import target_margin
    # one image, 3 classes, 2 pixels: pixel 0 logits (1, 3, 0) target 0 -> margin 2; pixel 1 (5, 0, 1) target 0 -> -4
    logits = torch.tensor([[[[1.0, 5.0]], [[3.0, 0.0]], [[0.0, 1.0]]]])
    target = torch.zeros(1, 1, 2, dtype=torch.long)
    assert target_margin(logits, target).tolist() == pytest.approx([(2 + 0) / 2])          # kappa 0
    assert target_margin(logits, target, kappa=1.0).tolist() == pytest.approx([(2 - 1) / 2])
    assert target_margin(logits, target, cap=1.5).tolist() == pytest.approx([(1.5 + 0) / 2])


def test_pgd_default_step_scales_with_eps_and_best_iterate_is_kept():
    seg = ThresholdSegmenter()
    assert PGD(seg, eps=0.5, steps=10).step_size == pytest.approx(0.125)
    assert PGD(seg, eps=1 / 255, steps=10).step_size == pytest.approx(2.5 / 2550)
    # a too-large step oscillates between 0.4 and 0.6 around the optimum 0.55: the best iterate is kept
    attack = PGD(seg, eps=0.2)
    x = torch.full((1, 1, 2, 2), 0.6)

    def objective(adv, t):
        return -(adv - 0.55).pow(2).flatten(1).sum(dim=1)

    best = attack.ascend(x, objective=objective, step_size=0.2, steps=3, start_random=False)
    last = attack.ascend(x, lambda adv, t: -2 * (adv - 0.55), step_size=0.2, steps=3, start_random=False)
    assert torch.allclose(best, x) and torch.allclose(last, torch.full_like(x, 0.4))
    # restarts: more runs never end with a lower objective
    one = objective(attack.ascend(x, objective=objective, step_size=0.07, steps=2, start_random=True,
                                generator=torch.Generator().manual_seed(0)), 0)
    three = objective(attack.ascend(x, objective=objective, step_size=0.07, steps=2, start_random=True, restarts=3,
                                  generator=torch.Generator().manual_seed(0)), 0)
    assert float(three) >= float(one)


def test_no_device_message_for_a_parameter_free_model(capsys):
    for factory in (PGD, PGDL2, SegPGD, TargetedPGD):
        factory(ThresholdSegmenter())
    EOTPGDL2(ThresholdSegmenter(), sigma=0.25)
    assert "Failed to set device" not in capsys.readouterr().out


def test_eot_value_and_gradient_matches_eot_gradient():
    """Per-image objective: its gradient is B times eot_gradient's on the same draws (same direction)."""
    from certframe.attacks.eot_pgdl2 import eot_value_and_gradient

    pipeline = DenoisedSegmenter(ThresholdSegmenter(), NoDenoiser(), sigma=0.3)
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = (torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(2)) > 0.5).long()
    for objective in ("expected-loss", "smoothed-softmax"):
        want = eot_gradient(pipeline, x, y, num_draws=5, draw_batch=2, generator=torch.Generator().manual_seed(3),
                            objective=objective)
        value, got = eot_value_and_gradient(pipeline, x, y, num_draws=5, draw_batch=2,
                                            generator=torch.Generator().manual_seed(3), objective=objective)
        assert torch.allclose(got, 2 * want, atol=1e-6) and value.shape == (2,)
    # the value is the mean over draws and pixels of the per-pixel CE, per image
    g = torch.Generator().manual_seed(3)
    noise = torch.cat([torch.randn((2, 2, 1, 4, 4), generator=g), torch.randn((2, 2, 1, 4, 4), generator=g),
                       torch.randn((1, 2, 1, 4, 4), generator=g)]) * 0.3
    ce = torch.stack([F.cross_entropy(pipeline(x + noise[j]), y, reduction="none").mean(dim=(1, 2)) for j in range(5)])
    value, _ = eot_value_and_gradient(pipeline, x, y, num_draws=5, draw_batch=2,
                                      generator=torch.Generator().manual_seed(3))
    assert torch.allclose(value, ce.mean(dim=0), atol=1e-6)
