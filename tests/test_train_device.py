"""Training on the device: both trainers draw every batch from the counter-based stream by step number
(so the draws of a step do not depend on the steps before it, resume is exact, and CPU and CUDA draw
the same batches), read nothing on the host per step, keep data that fits on the device, and take
``--precision`` as certify does."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from training_helpers import lung_command, lung_splits, single_thread, untrained_monai

from certframe.checkpoint import read_config
from certframe.cli import main
from certframe.core import philox
from certframe.plugins.datasets.synthetic import SyntheticLung
from certframe.plugins.denoisers import ddpm_training
from certframe.plugins.denoisers.ddpm_training import random_crops, resume_dir, train_diffusion
from certframe.training import device as train_device
from certframe.training import segmenter as training
from certframe.training.segmenter import stack, train_segmenter

NET = {"channels": [4, 8], "strides": [2], "num_res_units": 1}
DDPM = dict(block_out_channels=(8, 16), batch_size=4, lr=1e-3, checkpoint_every=10 ** 6)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


def fresh():
    return untrained_monai(NET, seed=5)


def seg_data(count=16):
    return lung_splits(count, 8)


# ----------------------------------------------------------------- recorders
def record_ddpm_steps(monkeypatch):
    """Record ``(x0, noise, t)`` of every step through the loop's call of ``training_target`` (on the CPU)."""
    steps, real = [], ddpm_training.training_target

    def target(scheduler, x0, noise, t):
        steps.append((x0.detach().cpu(), noise.detach().cpu(), t.detach().cpu()))
        return real(scheduler, x0, noise, t)

    monkeypatch.setattr(ddpm_training, "training_target", target)
    return steps


def record_segmenter_inputs(model):
    """Record the input of every training forward pass (not validation: the net is in eval mode then)."""
    inputs = []
    model.net.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].detach().cpu()) if mod.training
                                        else None)
    return inputs


# ------------------------------------------------------------ the draws
def test_ddpm_draws_of_a_step_are_those_of_its_step_number(monkeypatch, tmp_path):
    """x0, noise and t of step s are made from the named streams at draw index s, whatever ran before:
    the same when drawn in chunks of 64, of 2 or of 3 steps, and after a resume from step 3."""
    data = SyntheticLung(count=8, size=16, split="train")
    opts = dict(DDPM, crop=8, log_every=5, seed=4)
    straight = record_ddpm_steps(monkeypatch)
    res = train_diffusion(data, tmp_path / "a", steps=5, **opts)
    assert len(straight) == 5
    # step 3 rebuilt by hand from the streams ("train-diffusion", seed, purpose), draw index 3
    key = lambda purpose: philox.stream_key("train-diffusion", 4, purpose)  # noqa: E731
    images = stack(data)[0] * 2 - 1
    s, B = 3, 4
    idx = philox.integers(key("index"), s, 1, B, len(images))[0]
    top, left = (philox.integers(key(p), s, 1, B, 16 - 8 + 1)[0] for p in ("crop-top", "crop-left"))
    flip = philox.uniform(key("flip"), s, 1, B)[0] < 0.5
    x0 = random_crops(images[idx], 8, top, left)
    x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
    assert torch.equal(straight[s][0], x0)
    assert torch.equal(straight[s][1], philox.normal(key("noise"), s * B, B, 8 * 8).view(B, 1, 8, 8))
    assert torch.equal(straight[s][2], philox.integers(key("timestep"), s, 1, B, res.t_max + 1)[0])
    assert len({tuple(t.tolist()) for _, _, t in straight}) == 5  # five different steps

    for chunk in (2, 3):
        monkeypatch.setattr(ddpm_training, "DRAW_CHUNK", chunk)
        again = record_ddpm_steps(monkeypatch)
        train_diffusion(data, tmp_path / f"c{chunk}", steps=5, **opts)
        assert all(torch.equal(a, b) for sa, sb in zip(straight, again) for a, b in zip(sa, sb))
    train_diffusion(data, tmp_path / "r", steps=3, **opts)
    resumed = record_ddpm_steps(monkeypatch)
    train_diffusion(data, tmp_path / "r", steps=5, resume=True, **opts)
    assert len(resumed) == 2
    assert all(torch.equal(a, b) for sa, sb in zip(straight[3:], resumed) for a, b in zip(sa, sb))


def test_segmenter_draws_of_an_epoch_are_those_of_its_epoch_and_step_numbers(tmp_path):
    """The batches of epoch e come from the streams ("train-segmenter", seed, purpose) at draw index e (order)
    and the global step (flip, noise), so a run resumed at epoch 1 feeds the model what the straight run did."""
    data = seg_data()
    kw = dict(batch_size=8, lr=3e-3, noise_sigma=0.25, seed=6)
    model = fresh()
    straight = record_segmenter_inputs(model)
    train_segmenter(model, *data, epochs=3, checkpoint=tmp_path / "a.safetensors", **kw)
    assert len(straight) == 3 * 2
    # epoch 1, its batch 0 (global step 2), by hand
    key = lambda purpose: philox.stream_key("train-segmenter", 6, purpose)  # noqa: E731
    images = stack(data[0])[0]
    order = philox.permutation(key("order"), 1, 16)
    x = images[order[:8]]
    if philox.uniform(key("flip"), 2, 1, 1)[0, 0] < 0.5:
        x = x.flip(-1)
    x = x + 0.25 * philox.normal(key("noise"), 2 * 8, 8, 32 * 32).view_as(x)
    assert torch.equal(straight[2], x)

    train_segmenter(fresh(), *data, epochs=1, checkpoint=tmp_path / "b.safetensors", **kw)
    model = fresh()
    resumed = record_segmenter_inputs(model)
    train_segmenter(model, *data, epochs=3, checkpoint=tmp_path / "b.safetensors", resume=True, **kw)
    assert len(resumed) == 4 and all(torch.equal(a, b) for a, b in zip(straight[2:], resumed))


def test_the_sigma_of_each_batch_comes_from_its_own_stream():
    data = seg_data()
    model = fresh()
    inputs = record_segmenter_inputs(model)
    train_segmenter(model, *data, epochs=2, batch_size=8, lr=1e-9, noise_sigma=[0.1, 2.0], seed=1)
    chosen = philox.integers(philox.stream_key("train-segmenter", 1, "sigma"), 0, 4, 1, 2)[:, 0].tolist()
    spread = [float((x - x.clamp(0, 1)).abs().amax()) for x in inputs]  # noise of std 2 leaves [0, 1] by far
    assert [s > 1.0 for s in spread] == [c == 1 for c in chosen] and 0 in chosen and 1 in chosen


@cuda
def test_cpu_and_cuda_draw_the_same_batches(monkeypatch, tmp_path):
    """Indices, crops, flips and timesteps equal on both devices (the words are integers); noise to rounding.
    Data kept on the host (pinned, copied per batch) gives the same batches as data on the device."""
    data = SyntheticLung(count=8, size=16, split="train")
    runs = {}
    for name, device, fraction in (("cpu", "cpu", 0.25), ("cuda", "cuda", 0.25), ("cuda-host", "cuda", 0.0)):
        monkeypatch.setattr(train_device, "DEVICE_DATA_FRACTION", fraction)
        runs[name] = record_ddpm_steps(monkeypatch)
        train_diffusion(data, tmp_path / name, steps=3, crop=8, log_every=3, device=device, precision="fp32",
                        **DDPM)
    for other in ("cuda", "cuda-host"):
        for (x0, noise, t), (x0c, noisec, tc) in zip(runs["cpu"], runs[other]):
            assert torch.equal(t, tc) and torch.equal(x0, x0c)
            assert torch.allclose(noise, noisec, atol=1e-5, rtol=0)
    inputs = {}
    for name, device, fraction in (("cpu", "cpu", 0.25), ("cuda", "cuda", 0.25), ("cuda-host", "cuda", 0.0)):
        monkeypatch.setattr(train_device, "DEVICE_DATA_FRACTION", fraction)
        model = fresh()
        inputs[name] = record_segmenter_inputs(model)
        train_segmenter(model, *seg_data(), epochs=2, batch_size=8, lr=1e-3, device=device, precision="fp32")
    assert len(inputs["cpu"]) == 4
    for other in ("cuda", "cuda-host"):
        assert all(torch.equal(a, b) for a, b in zip(inputs["cpu"], inputs[other]))  # clean: order and flips


# ------------------------------------------------------------ no host read per step
def count_host_reads(monkeypatch):
    """Count reads of a tensor's value on the host (item, cpu, tolist, numpy, bool, int, float) made by code
    outside the installed libraries, i.e. by certframe and the tests.

    Calls from inside libraries are left out: they read host-side bookkeeping, not a device's tensor
    (non-capturable Adam keeps its step counters on the CPU and ``.item()``s them every step; MONAI's
    Dice loss ``.tolist()``s a CPU ``arange`` of the axes). On CUDA, :func:`test_cuda_training_needs_no_sync_per_step`
    checks the device itself.
    """
    counter = {"n": 0}
    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, **k):
            if "site-packages" not in sys._getframe(1).f_code.co_filename:
                counter["n"] += 1
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)
    return counter


def ddpm_reads(counter, tmp_path, steps):
    counter["n"] = 0
    train_diffusion(SyntheticLung(count=8, size=16, split="train"), tmp_path / f"d{steps}", steps=steps,
                    log_every=steps, **DDPM)
    return counter["n"]


def segmenter_reads(counter, images, **kw):
    counter["n"] = 0
    train_segmenter(fresh(), *seg_data(images), epochs=1, batch_size=8, lr=1e-3, noise_sigma=[0.25, 0.5], **kw)
    return counter["n"]


def test_no_host_read_per_step_in_either_trainer(monkeypatch, tmp_path):
    """2 or 8 DDPM steps between two logs, 2 or 8 segmenter steps in an epoch: the same number of host reads."""
    counter = count_host_reads(monkeypatch)
    assert ddpm_reads(counter, tmp_path, 2) == ddpm_reads(counter, tmp_path, 8)
    assert segmenter_reads(counter, 16) == segmenter_reads(counter, 64) <= 4  # per epoch: loss, Dice, sigmas


def test_the_host_read_counter_sees_one_read_per_step(monkeypatch, tmp_path):
    """The control: a loop that reads one value per step (as ``loss.item()`` did) makes the counts differ by
    the 6 extra steps; the same harness as the test above."""
    counter = count_host_reads(monkeypatch)
    real_target = ddpm_training.training_target

    def target_read_each_step(scheduler, x0, noise, t):
        noise.sum().item()  # a per-step host read inside the step loop
        return real_target(scheduler, x0, noise, t)

    monkeypatch.setattr(ddpm_training, "training_target", target_read_each_step)
    assert ddpm_reads(counter, tmp_path, 8) - ddpm_reads(counter, tmp_path, 2) == 6
    real_step = training.optimiser_step

    def step_read_each_step(loss, *args, **kwargs):
        loss.item()
        return real_step(loss, *args, **kwargs)

    monkeypatch.setattr(training, "optimiser_step", step_read_each_step)
    assert segmenter_reads(counter, 64) - segmenter_reads(counter, 16) == 6


@cuda
def test_cuda_training_needs_no_sync_per_step(tmp_path):
    """torch.cuda.set_sync_debug_mode("warn") warns at every synchronising call: as many with 2 as with 8 steps."""
    import warnings

    def syncs(run):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    data = SyntheticLung(count=8, size=16, split="train")
    few, many = (syncs(lambda: train_diffusion(data, tmp_path / f"d{n}", steps=n, log_every=n, device="cuda", **DDPM))
                 for n in (2, 8))
    assert few == many
    few, many = (syncs(lambda: train_segmenter(fresh(), *seg_data(n), epochs=1, batch_size=8, device="cuda",
                                               noise_sigma=0.25)) for n in (16, 64))
    assert few == many


@cuda
def test_resume_on_cuda_is_exact(tmp_path):
    """With deterministic kernels, 2 + 2 DDPM steps and 1 + 1 segmenter epochs on CUDA end where 4 steps / 2 epochs
    do."""
    from certframe.plugins.denoisers import diffusion

    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        data = SyntheticLung(count=8, size=16, split="train")
        opts = dict(DDPM, checkpoint_every=2, log_every=2, device="cuda")
        train_diffusion(data, tmp_path / "a", steps=4, **opts)
        train_diffusion(data, tmp_path / "b", steps=2, **opts)
        train_diffusion(data, tmp_path / "b", steps=4, resume=True, **opts)
        a = diffusion.load_diffusion_model(tmp_path / "a").unet.state_dict()
        b = diffusion.load_diffusion_model(tmp_path / "b").unet.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        kw = dict(batch_size=8, lr=3e-3, noise_sigma=0.25, device="cuda")
        whole = fresh()
        train_segmenter(whole, *seg_data(), epochs=2, checkpoint=tmp_path / "w.safetensors", **kw)
        train_segmenter(fresh(), *seg_data(), epochs=1, checkpoint=tmp_path / "h.safetensors", **kw)
        half = fresh()
        train_segmenter(half, *seg_data(), epochs=2, checkpoint=tmp_path / "h.safetensors", resume=True, **kw)
        assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), half.state_dict().values()))
    finally:
        torch.use_deterministic_algorithms(False)


# ------------------------------------------------------------ resume, precision, data placement
def test_resume_refuses_a_state_from_before_the_stream_and_another_precision(tmp_path):
    path = tmp_path / "m.safetensors"
    train_segmenter(fresh(), *seg_data(), epochs=1, batch_size=8, checkpoint=path)
    state_file = training.resume_dir(path) / "state.json"
    state = json.loads(state_file.read_text())
    assert state["version"] == 2 and state["stream"] == philox.STREAM_VERSION and "generator" not in state
    assert state["training"]["precision"] == "fp32" and read_config(path)["training"]["precision"] == "fp32"
    state_file.write_text(json.dumps({**state, "training": {**state["training"], "precision": "bf16"}}))
    with pytest.raises(ValueError, match=r"different settings .*precision='bf16' vs 'fp32'"):
        train_segmenter(fresh(), *seg_data(), epochs=2, batch_size=8, checkpoint=path, resume=True)
    old = {k: v for k, v in state.items() if k != "stream"}
    state_file.write_text(json.dumps({**old, "version": 1, "generator": "AAAA"}))
    with pytest.raises(ValueError, match=r"cannot resume: .*\(version 1\) drew its batches from a torch.Generator"
                                         r".*--overwrite"):
        train_segmenter(fresh(), *seg_data(), epochs=2, batch_size=8, checkpoint=path, resume=True)

    data = SyntheticLung(count=4, size=16, split="train")
    train_diffusion(data, tmp_path / "d", steps=1, log_every=1, **DDPM)
    state_file = resume_dir(tmp_path / "d") / "state.json"
    state = json.loads(state_file.read_text())
    assert state["training"]["precision"] == "fp32"
    assert json.loads((tmp_path / "d" / "certframe.json").read_text())["training"]["precision"] == "fp32"
    state_file.write_text(json.dumps({**state, "stream": "philox4x32-10/box-muller/0"}))
    with pytest.raises(ValueError, match=r"drew its batches from the stream 'philox4x32-10/box-muller/0'"):
        train_diffusion(data, tmp_path / "d", steps=2, resume=True, **DDPM)
    state_file.write_text(json.dumps({**state, "training": {**state["training"], "precision": "fp16"}}))
    with pytest.raises(ValueError, match=r"precision='fp16' vs 'fp32'"):
        train_diffusion(data, tmp_path / "d", steps=2, resume=True, **DDPM)
    with pytest.raises(ValueError, match=r"mixed precision \(bf16\) is only used on CUDA"):
        train_diffusion(data, tmp_path / "e", steps=1, precision="bf16", **DDPM)
    with pytest.raises(ValueError, match=r"mixed precision \(fp16\) is only used on CUDA"):
        train_segmenter(fresh(), *seg_data(), epochs=1, precision="fp16")


def test_data_stays_on_the_device_when_it_fits(monkeypatch):
    assert train_device.fits_on_device(10 ** 15, torch.device("cpu"))  # the CPU: always
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    assert train_device.fits_on_device(250, torch.device("cuda"))  # a quarter of the free memory
    assert not train_device.fits_on_device(251, torch.device("cuda"))
    x = torch.arange(12.0).view(4, 3)
    (placed,), where = train_device.place([x], "cpu")
    assert where == torch.device("cpu") and torch.equal(train_device.gather(placed, torch.tensor([2, 0]), where),
                                                         x[[2, 0]])


def test_precision_option_of_both_train_commands(tmp_path):
    runner = CliRunner()
    seg = lung_command(4) + ["--network-option", "channels=[4,8]", "--network-option", "strides=[2]", "--epochs",
                             "1", "--batch-size", "4", "--device", "cpu", "-q"]
    r = runner.invoke(main, seg + ["--precision", "bf16", "--output", str(tmp_path / "x.safetensors")])
    assert r.exit_code == 1 and "mixed precision (bf16) is only used on CUDA" in r.output
    assert not (tmp_path / "x.safetensors").exists()
    r = runner.invoke(main, seg + ["--precision", "fp32", "--output", str(tmp_path / "s.safetensors")])
    assert r.exit_code == 0, r.output
    assert read_config(tmp_path / "s.safetensors")["training"]["precision"] == "fp32"
    den = ["train", "denoiser", "--dataset", "synthetic-lung", "--dataset-option", "count=4", "--dataset-option",
           "size=16", "--channels", "8,16", "--steps", "1", "--batch-size", "2", "--device", "cpu", "-q"]
    r = runner.invoke(main, den + ["--precision", "fp16", "--output", str(tmp_path / "y")])
    assert r.exit_code == 1 and "mixed precision (fp16) is only used on CUDA" in r.output
    assert not (tmp_path / "y").exists()
    r = runner.invoke(main, den + ["--output", str(tmp_path / "d")])  # auto: fp32 on the CPU
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "d" / "certframe.json").read_text())["training"]["precision"] == "fp32"
    assert "--precision [auto|fp32|bf16|fp16]" in runner.invoke(main, ["train", "denoiser", "--help"]).output


def test_training_speed_benchmark_runs_on_cpu():
    """benchmarks/training_speed.py is what a GPU run calls; it must not first break there."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "training_speed.py"
    run = subprocess.run([sys.executable, str(script), "--device", "cpu", "--seconds", "0", "--ddpm-size", "16",
                          "--ddpm-channels", "8,16", "--ddpm-images", "4", "--ddpm-batch", "2", "--log-every", "1",
                          "--seg-size", "32", "--seg-images", "8", "--seg-val", "4", "--seg-batch", "4",
                          "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ddpm: 16 px" in run.stdout and "steps/s" in run.stdout and "segmenter: monai unet 32 px" in run.stdout
