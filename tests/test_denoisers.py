"""Diffusion denoisers (ddpm one-shot, ddim): the maths pinned, the shipped model, the plumbing."""
from __future__ import annotations

import contextlib
import json
import math
import socket

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from certframe.interfaces import NoiseKey
from certframe.plugins.datasets.synthetic import SyntheticLung
from certframe.plugins.denoisers import diffusion
from certframe.plugins.denoisers.ddim import DDIMDenoiser
from certframe.plugins.denoisers.ddpm import DDPMDenoiser
from certframe.plugins.denoisers.ddpm_training import (
    build_scheduler,
    build_unet,
    default_checkpoint_every,
    max_timestep,
    random_crops,
    resume_dir,
    save_diffusion_folder,
    train_diffusion,
)
from certframe.plugins.denoisers.diffusion import (
    ddim_timesteps,
    paper_code_timestep,
    predict_x0,
    resize,
    resized_noise_std,
    timestep_for_sigma,
)

T = 1000


def linear_abar() -> np.ndarray:
    """Ho et al. 2020: betas linear from 1e-4 to 0.02 over 1000 steps (float64, by hand)."""
    return np.cumprod(1 - np.linspace(1e-4, 0.02, T))


def cosine_abar() -> np.ndarray:
    """Nichol & Dhariwal 2021: abar_t = f((t+1)/T) / f(0), f(u) = cos^2((u + s)/(1 + s) pi/2), s = 0.008."""
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array([f((t + 1) / T) / f(0) for t in range(T)])


# ------------------------------------------------------------------------ t*
@pytest.mark.parametrize("schedule, by_hand, expected", [
    ("linear", linear_abar, {0.25: 144, 0.5: 258, 1.0: 396}),
    ("squaredcos_cap_v2", cosine_abar, {0.25: 289, 0.5: 495, 1.0: 701}),
])
def test_t_star_matches_hand_computed_values(schedule, by_hand, expected):
    acp = build_scheduler(beta_schedule=schedule).alphas_cumprod
    abar = by_hand()
    ratio = np.sqrt((1 - abar) / abar)
    for sigma, t in expected.items():
        assert timestep_for_sigma(acp, sigma) == t
        # the hand-computed schedule agrees, and t* brackets the target ratio 2 sigma
        assert int(np.abs(ratio - 2 * sigma).argmin()) == t
        assert ratio[t - 1] < 2 * sigma < ratio[t + 1]
    # cosine, sigma 0.5: abar = 1/2 -> (t+1)/T = 1.008 * 1/2 - 0.008 = 0.496 -> t = 495 (closed form)
    if schedule == "squaredcos_cap_v2":
        assert round(1000 * (1.008 / 2 - 0.008)) - 1 == expected[0.5]


def test_t_star_is_not_the_paper_codes_convention():
    """abar = 1/(1+sigma^2) ignores that [0,1] -> [-1,1] doubles the noise: it picks half the noise level."""
    acp = build_scheduler().alphas_cumprod
    wrong = {s: paper_code_timestep(acp, s) for s in (0.25, 0.5, 1.0)}
    assert wrong == {0.25: 73, 0.5: 144, 1.0: 258}
    for s in (0.25, 0.5, 1.0):
        assert timestep_for_sigma(acp, s) != wrong[s]
        # the right t* for sigma is the wrong convention's t* for 2 sigma
        assert timestep_for_sigma(acp, s) == paper_code_timestep(acp, 2 * s)
        a = float(acp[timestep_for_sigma(acp, s)])
        assert a == pytest.approx(1 / (1 + 4 * s * s), rel=0.01)


def test_t_star_rejects_bad_sigma():
    acp = build_scheduler().alphas_cumprod
    for bad in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            timestep_for_sigma(acp, bad)


def test_training_range_covers_the_largest_sigma():
    acp = build_scheduler().alphas_cumprod
    assert max_timestep(acp, None) == 999
    assert max_timestep(acp, 1.0, 0.0) == 396
    assert max_timestep(acp, 1.0, 0.25) == timestep_for_sigma(acp, 1.25) > 396


# ------------------------------------------------------------ x0 prediction
def test_predict_x0_inverts_each_parameterisation():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1, torch.randn(2, 1, 4, 4, generator=g)
    a = torch.tensor(0.3)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(predict_x0(eps, x_t, a, "epsilon"), x0)
    torch.testing.assert_close(predict_x0(x0, x_t, a, "sample"), x0)
    torch.testing.assert_close(predict_x0(v, x_t, a, "v_prediction"), x0)
    with pytest.raises(ValueError, match="prediction_type"):
        predict_x0(eps, x_t, a, "score")


def test_ddim_timesteps():
    assert ddim_timesteps(258, 1) == [258]
    assert ddim_timesteps(258, 4) == [258, 194, 129, 64]
    assert ddim_timesteps(2, 10) == [2, 1, 0]  # duplicates dropped
    with pytest.raises(ValueError):
        ddim_timesteps(100, 0)


# --------------------------------------------------------------------- resize
def test_resized_noise_std_is_exact():
    assert resized_noise_std(0.5, (64, 64), (64, 64)) == 0.5
    g = torch.Generator().manual_seed(1)
    for src, dst in (((128, 128), (64, 64)), ((100, 90), (64, 64)), ((32, 32), (64, 64))):
        noise = torch.randn(400, 1, *src, generator=g)
        measured = float(resize(noise, dst).std())
        # 400 * 4096 correlated values: the empirical std is within 1 %
        assert measured == pytest.approx(resized_noise_std(1.0, src, dst), rel=0.01)
    assert resized_noise_std(1.0, (128, 128), (64, 64)) < 0.33  # halving averages noise away


# ------------------------------------------------------------------- fixtures
def tiny_model(folder, *, seed=0, prediction_type="epsilon", size=16, channels=1):
    torch.manual_seed(seed)
    unet = build_unet(size, channels, (8, 16), 1)
    save_diffusion_folder(folder, unet, build_scheduler(prediction_type=prediction_type), {"test": True})
    return unet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "ddpm"
    tiny_model(folder)
    return folder


@pytest.fixture(scope="module")
def shipped():
    return DDPMDenoiser()  # the bundled ddpm-synthetic-lung


class TimestepSpy(torch.nn.Module):
    """Wraps a unet and records the timesteps it is called with."""

    def __init__(self, unet):
        super().__init__()
        self.inner, self.calls = unet, []

    @property
    def config(self):
        return self.inner.config

    def forward(self, x, t):
        self.calls.append(sorted(set(t.tolist())))
        return self.inner(x, t)


def test_denoiser_calls_the_model_at_t_star_for_two_sigma(tiny):
    den = DDPMDenoiser(model=str(tiny))
    den.diffusion.unet = spy = TimestepSpy(den.diffusion.unet)
    x = torch.rand(2, 1, 16, 16)
    den(x + 0.5 * torch.randn_like(x), 0.5)
    assert spy.calls == [[258]]  # not 144, the paper code's choice
    # a 32x32 image is halved to the model's 16x16: t* for the noise std after resizing
    spy.calls.clear()
    x = torch.rand(2, 1, 32, 32)
    out = den(x + 0.5 * torch.randn_like(x), 0.5)
    assert out.shape == (2, 1, 32, 32)
    expected = timestep_for_sigma(den.diffusion.alphas_cumprod, resized_noise_std(0.5, (32, 32), (16, 16)))
    assert spy.calls == [[expected]] and expected < 258
    assert den.timestep(0.5, (32, 32)) == expected
    den4 = DDIMDenoiser(model=str(tiny), steps=4)
    den4.diffusion.unet = spy = TimestepSpy(den4.diffusion.unet)
    den4(torch.rand(1, 1, 16, 16), 0.5)
    assert spy.calls == [[258], [194], [129], [64]]


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_ddim_one_step_equals_one_shot(tmp_path, prediction_type):
    tiny_model(tmp_path / "m", prediction_type=prediction_type)
    g = torch.Generator().manual_seed(2)
    noisy = torch.rand(3, 1, 16, 16, generator=g) + 0.5 * torch.randn(3, 1, 16, 16, generator=g)
    one_shot = DDPMDenoiser(model=str(tmp_path / "m"))(noisy, 0.5)
    assert torch.equal(DDIMDenoiser(model=str(tmp_path / "m"), steps=1)(noisy, 0.5), one_shot)
    assert not torch.allclose(DDIMDenoiser(model=str(tmp_path / "m"), steps=3)(noisy, 0.5), one_shot)
    assert one_shot.min() >= 0 and one_shot.max() <= 1


def test_ddim_steps_option_is_checked(tiny):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            DDIMDenoiser(model=str(tiny), steps=bad)


def test_channel_mismatch_names_both(tiny):
    with pytest.raises(ValueError, match=r"3 channel\(s\).*expects 1"):
        DDPMDenoiser(model=str(tiny))(torch.rand(1, 3, 16, 16), 0.5)


def test_gradients_flow_through_ddpm(tiny):
    den = DDPMDenoiser(model=str(tiny), clip=False)
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    den(x, 0.5).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in den.parameters())  # the model itself is frozen


# ------------------------------------------------------------ save and load
def test_save_load_round_trip(tmp_path):
    unet = tiny_model(tmp_path / "m", prediction_type="v_prediction")
    loaded = diffusion.load_diffusion_model(tmp_path / "m")
    assert loaded.prediction_type == "v_prediction" and loaded.sample_size == (16, 16)
    saved = unet.state_dict()
    for k, v in loaded.unet.state_dict().items():
        assert torch.equal(v, saved[k]), k
    torch.testing.assert_close(loaded.alphas_cumprod, build_scheduler().alphas_cumprod)
    # the folder is a real diffusers DDPMPipeline folder
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    # a flat folder (config.json + scheduler_config.json side by side) loads too
    flat = tmp_path / "flat"
    unet.save_pretrained(str(flat), safe_serialization=True)
    build_scheduler().save_pretrained(str(flat))
    assert diffusion.load_diffusion_model(flat).sample_size == (16, 16)


def test_missing_folder_fails_fast_without_network(tmp_path, monkeypatch):
    import diffusers

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    def never(*args, **kwargs):
        raise AssertionError("from_pretrained was reached")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(diffusers.UNet2DModel, "from_pretrained", never)
    monkeypatch.setattr(diffusers.DDPMScheduler, "from_pretrained", never)
    for name in ("google/ddpm-cifar10-32", str(tmp_path / "nowhere"), "no-such-bundled-model"):
        with pytest.raises(FileNotFoundError, match="not found.*never downloaded"):
            DDPMDenoiser(model=name)
        with pytest.raises(FileNotFoundError, match="not found"):
            DDIMDenoiser(model=name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a diffusers model folder"):
        DDPMDenoiser(model=str(tmp_path / "empty"))
    pickled = tmp_path / "pickled"
    (pickled / "unet").mkdir(parents=True)
    (pickled / "scheduler").mkdir()
    (pickled / "unet" / "config.json").write_text("{}")
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"")
    (pickled / "scheduler" / "scheduler_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        DDPMDenoiser(model=str(pickled))


# ------------------------------------------------------------ trained range
def test_shipped_model_refuses_sigma_beyond_its_trained_timesteps(shipped):
    """ddpm-synthetic-lung was trained on t in 0..440 (max_sigma 1.0, margin 0.25, 64x64)."""
    assert shipped.trained_t_max == 440
    passes = {0.25: 144, 0.5: 258, 1.0: 396, 1.25: 440}
    for sigma, t in passes.items():
        assert shipped.check_sigma(sigma) == t and shipped.sigma_in_range(sigma) is True
    for sigma, t in {1.26: 441, 1.3: 447, 1.5: 475}.items():
        assert shipped.timestep(sigma) == t and shipped.sigma_in_range(sigma) is False
        with pytest.raises(ValueError, match=rf"sigma {sigma:g} needs timestep t\*={t}.*ddpm-synthetic-lung.*"
                                             rf"t in 0\.\.440.*largest sigma it supports on 64x64 images is 1\.254"):
            shipped.check_sigma(sigma)
    # the boundary: midpoint of the noise-to-signal ratios of t = 440 and 441, halved
    ratio = diffusion.noise_to_signal(shipped.diffusion.alphas_cumprod)
    assert shipped.max_sigma == pytest.approx(float(ratio[440] + ratio[441]) / 4, rel=1e-12)
    assert shipped.max_sigma == pytest.approx(1.25441, abs=1e-5)
    assert shipped.check_sigma(shipped.max_sigma * 0.9999) == 440
    with pytest.raises(ValueError, match="largest sigma"):
        shipped.check_sigma(shipped.max_sigma * 1.0001)
    # 128x128 images are shrunk to the model's 64x64 first: much larger sigma stay in range
    shrink = resized_noise_std(1.0, (128, 128), (64, 64))
    assert shipped.max_sigma_at((128, 128)) == pytest.approx(shipped.max_sigma / shrink)
    assert shipped.check_sigma(2.0, (128, 128)) == 303
    with pytest.raises(ValueError, match="on 128x128 images is 3.984"):
        shipped.check_sigma(4.0, (128, 128))
    # forward refuses too, before any network call, and so does ddim (same model, same check)
    with pytest.raises(ValueError, match="trained on t in 0..440"):
        shipped(torch.rand(1, 1, 64, 64), 1.5)
    with pytest.raises(ValueError, match="largest sigma it supports on 64x64 images is 1.254"):
        DDIMDenoiser(steps=2)(torch.rand(1, 1, 64, 64), 1.3)


def test_allow_untrained_sigma_warns_and_denoises():
    den = DDPMDenoiser(allow_untrained_sigma=True)
    with pytest.warns(UserWarning, match="allow_untrained_sigma.*t\\*=475"):
        out = den(torch.rand(1, 1, 64, 64), 1.5)
    assert out.shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="sigma"):  # a bad sigma is never allowed
        den.check_sigma(float("nan"))


def test_folder_without_a_training_record_is_assumed_fully_trained(tiny):
    den = DDPMDenoiser(model=str(tiny))  # certframe.json holds {"test": true}: no training.t_max
    assert den.trained_t_max is None and den.max_sigma == math.inf and den.sigma_in_range(5.0) is None
    assert den.check_sigma(5.0) == den.timestep(5.0)
    assert DDIMDenoiser(model=str(tiny), steps=2).max_sigma == math.inf


def test_corrupt_or_interrupted_training_record(tmp_path):
    tiny_model(tmp_path / "m")
    record = tmp_path / "m" / "certframe.json"
    record.write_text(json.dumps({"training": {"t_max": 5000}}))
    with pytest.raises(ValueError, match=r"certframe.json.*t_max must be an integer timestep in 0..999, got 5000"):
        DDPMDenoiser(model=str(tmp_path / "m"))
    record.write_text(json.dumps({"training": {"t_max": 100}, "interrupted": {"step": 3, "steps": 10}}))
    with pytest.warns(UserWarning, match="interrupted at step 3 of 10"):
        den = DDIMDenoiser(model=str(tmp_path / "m"))
    assert den.trained_t_max == 100 and den.check_sigma(0.1) <= 100


# ------------------------------------------------------------------ training
def test_training_resumes_to_the_same_weights(tmp_path):
    data = SyntheticLung(count=8, size=16, split="train")
    opts = dict(block_out_channels=(8, 16), steps=4, batch_size=4, lr=1e-3, checkpoint_every=2, log_every=2)
    straight = train_diffusion(data, tmp_path / "a", **opts)
    assert straight.t_max == timestep_for_sigma(build_scheduler().alphas_cumprod, 1.25)
    train_diffusion(data, tmp_path / "b", **{**opts, "steps": 2})
    resumed = train_diffusion(data, tmp_path / "b", **opts, resume=True)
    assert [h["step"] for h in resumed.history] == [2, 4]
    a = diffusion.load_diffusion_model(tmp_path / "a").unet.state_dict()
    b = diffusion.load_diffusion_model(tmp_path / "b").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in build_unet(16, 1, (8, 16)).state_dict().items())
    assert sorted(p.name for p in resume_dir(tmp_path / "a").iterdir()) == [
        "state.json", "step-4.ema.safetensors", "step-4.optimizer.safetensors", "step-4.unet.safetensors"]
    with pytest.raises(ValueError, match="different settings.*lr"):
        train_diffusion(data, tmp_path / "b", **{**opts, "lr": 0.1, "steps": 6}, resume=True)
    with pytest.raises(FileExistsError):
        train_diffusion(data, tmp_path / "a", **opts)


def test_training_range_accounts_for_the_resize_and_the_schedule(tmp_path):
    acp = build_scheduler().alphas_cumprod
    with pytest.raises(ValueError, match="beyond the schedule's last timestep"):
        max_timestep(acp, 100.0)
    kept = tmp_path / "kept"
    tiny_model(kept)
    with pytest.raises(ValueError, match="beyond the schedule"):  # refused before --overwrite deletes anything
        train_diffusion(SyntheticLung(count=2, size=16, split="train"), kept, block_out_channels=(8, 16), steps=1,
                        max_sigma=100.0, overwrite=True)
    assert (kept / "certframe.json").is_file()
    # 32x32 images trained at 16x16: max_sigma is on the 32x32 images, t_max after the shrink
    data = SyntheticLung(count=4, size=32, split="train")
    res = train_diffusion(data, tmp_path / "m", size=16, block_out_channels=(8, 16), steps=1, batch_size=2)
    shrink = resized_noise_std(1.0, (32, 32), (16, 16))
    assert res.t_max == timestep_for_sigma(acp, 1.25 * shrink) < timestep_for_sigma(acp, 1.25)
    den = DDPMDenoiser(model=str(tmp_path / "m"))
    assert den.sigma_in_range(1.0, (32, 32)) and den.check_sigma(1.25, (32, 32)) == res.t_max
    assert den.sigma_in_range(1.0, (16, 16)) is False  # the same sigma on the model's own size is beyond it
    meta = json.loads((tmp_path / "m" / "certframe.json").read_text())
    assert meta["training"]["data_size"] == [32, 32] and meta["training"]["cpu_seconds"] >= 0


def test_crop_training_keeps_the_whole_image_model(tmp_path):
    data = SyntheticLung(count=4, size=32, split="train")
    x = torch.arange(3 * 2 * 32 * 24, dtype=torch.float32).view(3, 2, 32, 24)
    top, left = torch.tensor([0, 16, 7]), torch.tensor([8, 0, 3])  # the extremes and one inside
    patches = random_crops(x, 16, top, left)
    assert patches.shape == (3, 2, 16, 16)
    for i in range(3):  # each patch is the window of its own image at its own offsets, every channel
        assert torch.equal(patches[i], x[i, :, top[i]:top[i] + 16, left[i]:left[i] + 16])
    res = train_diffusion(data, tmp_path / "m", crop=16, block_out_channels=(8, 16), steps=2, batch_size=2)
    meta = json.loads((tmp_path / "m" / "certframe.json").read_text())["training"]
    assert meta["crop"] == 16 and meta["size"] == 32
    assert res.t_max == timestep_for_sigma(build_scheduler().alphas_cumprod, 1.25)
    den = DDPMDenoiser(model=str(tmp_path / "m"))
    assert den.diffusion.sample_size == (32, 32) and den.sigma_in_range(1.0, (32, 32))  # no resize at inference
    assert den(torch.rand(1, 1, 32, 32), 0.5).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="different settings.*crop"):
        train_diffusion(data, tmp_path / "m", crop=8, block_out_channels=(8, 16), steps=3, batch_size=2, resume=True)
    with pytest.raises(ValueError, match="crop must be in 1..32 .* divisible by 2"):
        train_diffusion(data, tmp_path / "x", crop=15, block_out_channels=(8, 16), steps=1)
    with pytest.raises(ValueError, match="fully convolutional"):
        train_diffusion(data, tmp_path / "x", crop=16, attention=True, block_out_channels=(8, 16), steps=1)


def test_default_checkpoint_cadence():
    assert [default_checkpoint_every(n) for n in (1, 4, 95, 500, 2000, 10000)] == [1, 1, 10, 50, 200, 200]


def test_ctrl_c_keeps_a_checkpoint_and_resume_is_exact(tmp_path):
    data = SyntheticLung(count=8, size=16, split="train")
    opts = dict(block_out_channels=(8, 16), steps=4, batch_size=4, lr=1e-3, checkpoint_every=10, log_every=1)
    train_diffusion(data, tmp_path / "a", **opts)

    def ctrl_c_at_step_2(record):
        if record["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_diffusion(data, tmp_path / "b", **opts, on_log=ctrl_c_at_step_2)
    state = json.loads((resume_dir(tmp_path / "b") / "state.json").read_text())
    assert state["step"] == 2  # no regular checkpoint before step 10: this one is the interrupt's
    meta = json.loads((tmp_path / "b" / "certframe.json").read_text())
    assert meta["interrupted"]["step"] == 2 and meta["interrupted"]["steps"] == 4
    with pytest.warns(UserWarning, match="interrupted at step 2 of 4"):
        DDPMDenoiser(model=str(tmp_path / "b"))  # the EMA model at step 2 is usable, and says what it is
    with pytest.raises(FileExistsError, match="resume"):
        train_diffusion(data, tmp_path / "b", **opts)
    resumed = train_diffusion(data, tmp_path / "b", **opts, resume=True)
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    a = diffusion.load_diffusion_model(tmp_path / "a").unet.state_dict()
    b = diffusion.load_diffusion_model(tmp_path / "b").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "interrupted" not in json.loads((tmp_path / "b" / "certframe.json").read_text())
    log = (tmp_path / "b" / "train.log").read_text()
    for line in ("start:", "step 2/4 loss", "interrupted at step 2/4", "resume at step 2", "step 4/4 loss",
                 "done: 4 steps"):
        assert line in log, line
    assert log.index("interrupted at step 2/4") < log.index("resume at step 2")


def test_a_real_sigint_is_deferred_to_the_end_of_the_step(tmp_path, monkeypatch):
    """A real SIGINT (what Ctrl-C sends) in the middle of step 2: step 2 finishes, its state + EMA model are saved,
    step 3 never starts, and the resumed run is exact.

    No clock: the signal is sent from inside step 2 (between the forward pass and the backward pass, where the
    loop asks for the training target), directed at the main thread with ``signal.pthread_kill``, which runs
    the Python-level handler before it returns. So the handler has run by the time step 2 continues, on any
    machine, busy or idle. A handler that did not defer would raise there, mid-step, and nothing would be saved.
    """
    import signal
    import threading

    from certframe.plugins.denoisers import ddpm_training

    data = SyntheticLung(count=8, size=16, split="train")
    opts = dict(block_out_channels=(8, 16), steps=3, batch_size=4, lr=1e-3, checkpoint_every=10, log_every=1)
    train_diffusion(data, tmp_path / "a", **opts)

    assert threading.current_thread() is threading.main_thread()  # where Python runs signal handlers
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # not blocked: delivered at once
    real_target, calls, handlers = ddpm_training.training_target, [], []

    def target_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # step 2, after its forward pass, before loss.backward() and the optimiser step
            handlers.append(signal.getsignal(signal.SIGINT))
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # handled before this returns
        return real_target(*args, **kwargs)

    monkeypatch.setattr(ddpm_training, "training_target", target_then_ctrl_c)
    # Python's own Ctrl-C handler, as in a terminal (a test run started as a background job ignores SIGINT)
    with sigint_handler(signal.default_int_handler):
        with pytest.raises(KeyboardInterrupt):
            train_diffusion(data, tmp_path / "b", **opts)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    assert len(calls) == 2  # the interrupt came at the end of step 2: step 3 never started
    assert handlers[0] is not signal.default_int_handler  # training had its own handler in place
    assert json.loads((resume_dir(tmp_path / "b") / "state.json").read_text())["step"] == 2
    assert json.loads((tmp_path / "b" / "certframe.json").read_text())["interrupted"]["step"] == 2
    assert "interrupted at step 2/3" in (tmp_path / "b" / "train.log").read_text()
    monkeypatch.setattr(ddpm_training, "training_target", real_target)
    train_diffusion(data, tmp_path / "b", **opts, resume=True)
    a = diffusion.load_diffusion_model(tmp_path / "a").unet.state_dict()
    b = diffusion.load_diffusion_model(tmp_path / "b").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@contextlib.contextmanager
def sigint_handler(handler):
    """SIGINT handled by ``handler`` within ``with`` (then the handler before)."""
    import signal

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_process_that_ignores_sigint_keeps_ignoring_it_while_training(tmp_path, monkeypatch):
    """Started with nohup or as a background job, a process ignores SIGINT: training must not install its deferring
    handler there (a SIGINT meant for the shell would then stop it). The same SIGINT as above, mid step 2, is
    ignored: all 3 steps run, the weights equal an undisturbed run's, and SIGINT is still ignored after."""
    import signal
    import threading

    from certframe.plugins.denoisers import ddpm_training

    data = SyntheticLung(count=8, size=16, split="train")
    opts = dict(block_out_channels=(8, 16), steps=3, batch_size=4, lr=1e-3, checkpoint_every=10, log_every=1)
    train_diffusion(data, tmp_path / "a", **opts)
    real_target, calls, handlers = ddpm_training.training_target, [], []

    def target_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            handlers.append(signal.getsignal(signal.SIGINT))
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        return real_target(*args, **kwargs)

    monkeypatch.setattr(ddpm_training, "training_target", target_then_ctrl_c)
    with sigint_handler(signal.SIG_IGN):
        train_diffusion(data, tmp_path / "b", **opts)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert handlers == [signal.SIG_IGN] and len(calls) == 3
    assert "interrupted" not in json.loads((tmp_path / "b" / "certframe.json").read_text())
    a = diffusion.load_diffusion_model(tmp_path / "a").unet.state_dict()
    b = diffusion.load_diffusion_model(tmp_path / "b").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_denoiser_command_on_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    from certframe.cli import main
    from certframe.plugins.denoisers.ddpm import DDPMDenoiser as Plugin

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Plugin, "trainer", staticmethod(interrupted))
    result = CliRunner().invoke(main, ["train", "denoiser", "--dataset", "synthetic-lung", "--dataset-option",
                                       "count=2", "--output", str(tmp_path / "d"), "-q"])
    assert result.exit_code != 0 and "--resume" in result.output and "train.log" in result.output


def test_train_denoiser_command(tmp_path):
    from certframe.cli import main

    out = tmp_path / "ddpm"
    args = ["train", "denoiser", "--dataset", "synthetic-lung", "--dataset-option", "count=4",
            "--dataset-option", "size=16", "--channels", "8,16", "--steps", "2", "--batch-size", "2",
            "--max-sigma", "0.5", "--prediction-type", "sample", "--device", "cpu", "--output", str(out), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "certframe.json").read_text())
    assert meta["training"]["t_max"] == timestep_for_sigma(build_scheduler().alphas_cumprod, 0.625)
    assert meta["dataset"] == "synthetic-lung"
    assert DDPMDenoiser(model=str(out)).diffusion.prediction_type == "sample"
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "exists" in again.output
    bad = CliRunner().invoke(main, args[:-3] + ["--channels", "8,x", "--output", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "comma-separated" in bad.output
    none = CliRunner().invoke(main, args[:-3] + ["--denoiser", "none", "--output", str(tmp_path / "y")])
    assert none.exit_code != 0 and "denoiser 'none' has no trainer" in none.output
    assert "trainable denoisers: ddim, ddpm" in none.output
    assert "step 2/2 loss" in (out / "train.log").read_text()
    replaced = CliRunner().invoke(main, args + ["--overwrite"])
    assert replaced.exit_code == 0, replaced.output


# ------------------------------------------------------------ shipped model
def test_shipped_model_denoises_synthetic_lungs(shipped):
    data = SyntheticLung(count=8, size=64, seed=0, split="test")
    x = torch.stack([data[i].image for i in range(len(data))])
    g = torch.Generator().manual_seed(3)
    z = torch.randn(x.shape, generator=g)
    with torch.inference_mode():
        for sigma in (0.25, 0.5, 1.0):
            noisy = x + sigma * z
            denoised = shipped(noisy, sigma)
            mse = float((denoised - x).square().mean())
            assert mse < float((noisy - x).square().mean())
            assert mse < float((noisy.clamp(0, 1) - x).square().mean()) / 2  # better than clipping, by far
            assert denoised.min() >= 0 and denoised.max() <= 1


@pytest.mark.parametrize("name, options", [("ddpm", {}), ("ddim", {"steps": 2})])
def test_denoisers_compose_with_the_certifier(name, options):
    from certframe.core import metrics
    from certframe.core.smoothing import SmoothedSegmenter
    from certframe.registry import get_registry

    registry = get_registry()
    segmenter = registry.create("segmenter", "monai", weights="synthetic-lung")
    denoiser = registry.create("denoiser", name, **options)
    sample = SyntheticLung(count=1, size=64, seed=0, split="test")[0]
    smoothed = SmoothedSegmenter(segmenter, denoiser, sigma=0.5)
    certs = smoothed.certify(sample.image, registry.create("certifier", "segcertify"), n0=10, n=100,
                             alpha=0.001, taus=(0.75,), batch_size=55, key=NoiseKey(0, sample.id))
    assert len(certs) == 1 and certs[0].sigma == 0.5
    assert certs[0].radius == pytest.approx(0.5 * 0.6744897501960817)
    assert certs[0].abstain_rate < 0.5
    assert metrics.dice(certs[0].labels, sample.mask, 1) > 0.7


def test_train_denoiser_refuses_volumes_unless_the_plugin_declares_them(tmp_path, monkeypatch):
    """The diffusion denoisers are 2-D (spatial_dims = 2): a volume data set is refused before training
    starts or writes anything; a denoiser plugin whose factory declares volumes gets them."""
    from certframe.cli import main

    args = ["train", "denoiser", "--dataset", "synthetic-volume", "--dataset-option", "count=2",
            "--dataset-option", "size=16", "--steps", "1", "--output", str(tmp_path / "d"), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and not (tmp_path / "d").exists()
    message = " ".join(result.output.split())
    assert ("the denoiser 'ddpm' is a 2-D model (spatial_dims=2) and trains on images [C, H, W]; the dataset "
            "'synthetic-volume' gives volumes of shape [1, 16, 16, 16] ([C, D, H, W])") in message, result.output
    seen = []
    monkeypatch.setattr(DDPMDenoiser, "spatial_dims", (2, 3))

    def trainer(train, output, **kwargs):
        seen.append(tuple(train[0].image.shape))
        raise ValueError("stub trainer reached")

    monkeypatch.setattr(DDPMDenoiser, "trainer", staticmethod(trainer))
    reached = CliRunner().invoke(main, args)
    assert seen == [(1, 16, 16, 16)] and "stub trainer reached" in reached.output, reached.output
