"""Diffusion-model denoising for randomized smoothing: the shared mathematics.

Denoised smoothing with an off-the-shelf diffusion model (Carlini, Tramer,
Dvijotham, Rice, Sun, Kolter, "(Certified!!) Adversarial Robustness for Free!",
ICLR 2023; for medical segmentation: Laousy et al., MICCAI 2023).

A DDPM (Ho et al., NeurIPS 2020) trained on images in ``[-1, 1]`` defines noisy
images ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) z``, ``z ~ N(0, I)``. The
smoothing sampler hands the denoiser ``x + eps`` with ``x`` in ``[0, 1]`` and
``eps ~ N(0, sigma^2 I)``. Mapped to the model's range, ``y = 2 (x + eps) - 1 =
x_0 + 2 sigma z``: the noise std DOUBLES to ``2 sigma``. Hence:

1. ``t*`` = the timestep whose noise-to-signal ratio ``sqrt((1 - abar_t) / abar_t)``
   is closest to ``2 sigma`` (:func:`timestep_for_sigma`). The paper's released
   code matches ``abar_t`` to ``1 / (1 + sigma^2)``, i.e. ratio ``sigma``, which
   ignores the factor 2 and picks a timestep with half the noise level
   (:func:`paper_code_timestep`, kept only so tests can pin the difference).
2. ``x_t* = sqrt(abar_t*) y`` (then ``x_t* = sqrt(abar) x_0 + sqrt(abar) 2 sigma z``
   and ``sqrt(abar) 2 sigma ~= sqrt(1 - abar)``).
3. One network call predicts ``x_0`` (:func:`predict_x0`, for models trained to
   predict epsilon, the sample, or v), clipped to ``[-1, 1]`` and mapped back
   to ``[0, 1]`` (one-shot denoising, :func:`ddim_denoise` with ``steps=1``).
4. DDIM (Song et al., ICLR 2021, eta = 0): from the same ``x_t*``, ``k``
   deterministic steps ``t* = t_0 > t_1 > ... > t_{k-1} > -1`` (``abar_{-1} = 1``),
   each ``x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_hat`` with ``eps_hat``
   recomputed from the clipped ``x0_hat``. The last step lands on ``x0_hat``
   itself, so ``k = 1`` IS one-shot denoising, bit for bit.

When the image size differs from the model's ``sample_size``, the noisy image is
resized (bilinear, antialiased) to the model's resolution and the result resized
back. Resizing is a linear filter that averages pixels and so lowers the noise
std; :func:`resized_noise_std` computes the exact (root-mean-square over pixels)
std after resizing, and ``t*`` is chosen for that std.

Everything here is differentiable (no ``no_grad``/``inference_mode``): attacks
back-propagate through the denoiser; the smoothing sampler already runs it under
inference mode.

Model folders are diffusers folders, loaded with ``local_files_only=True`` and
safetensors only: either the ``DDPMPipeline`` layout (``model_index.json``,
``unet/config.json``, ``unet/diffusion_pytorch_model.safetensors``,
``scheduler/scheduler_config.json``) or a flat folder (``config.json``,
``diffusion_pytorch_model.safetensors``, ``scheduler_config.json``).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"


# --------------------------------------------------------------------------- t*
def noise_to_signal(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``sqrt((1 - abar_t) / abar_t)`` for every timestep (float64 ``[T]``)."""
    a = alphas_cumprod.to(torch.float64)
    return ((1 - a) / a).sqrt()


def timestep_for_sigma(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """``t*``: the timestep with ``sqrt((1 - abar_t) / abar_t)`` closest to ``2 sigma``.

    alphas_cumprod: ``abar_t`` for t = 0..T-1 (a diffusers scheduler's ``alphas_cumprod``).
    sigma: noise std in ``[0, 1]`` pixel units (the sampler's sigma; the model's
    ``[-1, 1]`` range doubles it). Ties go to the smaller t.
    """
    sigma = float(sigma)
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a positive finite noise level, got {sigma}")
    return int((noise_to_signal(alphas_cumprod) - 2 * sigma).abs().argmin())


def paper_code_timestep(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """The convention of Carlini et al.'s released code: ``abar_t`` closest to ``1/(1+sigma^2)``.

    WRONG for images in ``[0, 1]`` fed to a ``[-1, 1]`` model (it ignores the factor
    2 of the range map); not used by the denoisers, kept so tests pin the difference.
    """
    target = 1.0 / (1.0 + float(sigma) ** 2)
    return int((alphas_cumprod.to(torch.float64) - target).abs().argmin())


# ----------------------------------------------------------------- prediction
def predict_x0(model_output: torch.Tensor, x_t: torch.Tensor, abar_t: float | torch.Tensor,
               prediction_type: str) -> torch.Tensor:
    """``x0_hat`` from the network output at a timestep with cumulative alpha ``abar_t``.

    epsilon:      ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``
    sample:       the output itself
    v_prediction: ``sqrt(abar) x_t - sqrt(1 - abar) v`` (Salimans & Ho, ICLR 2022)
    Not clipped. Shapes ``[B, C, H, W]``.
    """
    abar = torch.as_tensor(abar_t, dtype=x_t.dtype, device=x_t.device)
    if prediction_type == "epsilon":
        return (x_t - (1 - abar).sqrt() * model_output) / abar.sqrt()
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return abar.sqrt() * x_t - (1 - abar).sqrt() * model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def ddim_timesteps(t_star: int, steps: int) -> list[int]:
    """The ``k`` DDIM timesteps from ``t*`` towards 0: ``round(t* (k - i) / k)``, i = 0..k-1.

    Duplicates (``k > t* + 1``) are dropped, so fewer than k steps may run; the
    step after the last one lands on ``abar = 1`` (the clean image).
    """
    if int(steps) < 1:
        raise ValueError(f"DDIM needs steps >= 1, got {steps}")
    k = int(steps)
    ts = [int(round(t_star * (k - i) / k)) for i in range(k)]
    return sorted(set(ts), reverse=True)


# --------------------------------------------------------------------- resize
def _axis_row_sq_norms(n_in: int, n_out: int) -> torch.Tensor:
    """Squared L2 norms of the rows of the 1-D bilinear (antialiased) resize matrix ``[n_out]``."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)  # each row: one impulse
    rows = F.interpolate(eye, size=(1, n_out), mode="bilinear", antialias=True, align_corners=False)
    return rows.reshape(n_in, n_out).pow(2).sum(0)


def resized_noise_std(sigma: float, in_size: tuple[int, int], out_size: tuple[int, int]) -> float:
    """Std of i.i.d. ``N(0, sigma^2)`` pixel noise after :func:`resize` from ``in_size`` to ``out_size``.

    The separable resize filter maps pixel noise to ``sigma * ||row||_2`` per output
    pixel (rows: the filter's weights); the root-mean-square over output pixels is
    returned. Equal sizes: ``sigma`` itself.
    """
    if tuple(in_size) == tuple(out_size):
        return float(sigma)
    h = _axis_row_sq_norms(in_size[0], out_size[0])
    w = _axis_row_sq_norms(in_size[1], out_size[1])
    return float(sigma) * math.sqrt(float(h.mean() * w.mean()))


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of ``[B, C, H, W]`` to ``size`` (a no-op when equal)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


# ---------------------------------------------------------------------- model
class DiffusionModel(torch.nn.Module):
    """A loaded diffusers UNet2DModel and its DDPMScheduler's noise schedule.

    unet: ``diffusers.UNet2DModel`` in eval mode with frozen parameters.
    alphas_cumprod: float32 buffer ``[T]`` (``abar_t``), moved with the module.
    prediction_type: what the unet predicts (epsilon, sample, v_prediction).
    path: the folder it came from.
    """

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str,
                 path: Path):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{path}: scheduler prediction_type {prediction_type!r} is not one of "
                             f"{PREDICTION_TYPES}")
        self.unet = unet.eval().requires_grad_(False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float32), persistent=False)
        self.prediction_type = prediction_type
        self.path = Path(path)

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def sample_size(self) -> tuple[int, int]:
        s = self.unet.config.sample_size
        return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))


def bundled_models() -> list[str]:
    """Names of the diffusers folders shipped in ``certframe/plugins/weights/``."""
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if p.is_dir() and _layout(p) is not None)


def _layout(folder: Path) -> tuple[Path, Path] | None:
    """``(unet_dir, scheduler_dir)`` of a diffusers folder, or None."""
    if (folder / "unet" / "config.json").is_file() and (folder / "scheduler" / "scheduler_config.json").is_file():
        return folder / "unet", folder / "scheduler"
    if (folder / "config.json").is_file() and (folder / "scheduler_config.json").is_file():
        return folder, folder
    return None


def resolve_model(model: str | Path) -> tuple[Path, Path, Path]:
    """``(folder, unet_dir, scheduler_dir)`` for a folder path or a bundled name.

    Checks the files on disk BEFORE anything touches diffusers, so a missing or
    incomplete folder is a clear :class:`FileNotFoundError` at once and never a
    hub download attempt.
    """
    p = Path(model).expanduser()
    candidates = [p] if p.is_dir() else []
    if not p.is_absolute() and len(p.parts) == 1 and (WEIGHTS_DIR / p).is_dir():
        candidates.append(WEIGHTS_DIR / p)
    for folder in candidates:
        layout = _layout(folder)
        if layout is None:
            raise FileNotFoundError(
                f"{str(folder)!r} is not a diffusers model folder: expected unet/config.json and "
                f"scheduler/scheduler_config.json (DDPMPipeline layout) or config.json and "
                f"scheduler_config.json side by side")
        unet_dir, sched_dir = layout
        if not (unet_dir / UNET_WEIGHTS).is_file():
            found = sorted(q.name for q in unet_dir.iterdir() if q.is_file())
            raise FileNotFoundError(f"no {UNET_WEIGHTS} in {str(unet_dir)!r} (found {found}); only "
                                    f"safetensors weights are loaded, never pickled .bin files")
        return folder, unet_dir, sched_dir
    raise FileNotFoundError(f"diffusion model {str(model)!r} not found: expected a local diffusers folder "
                            f"or a bundled name ({', '.join(bundled_models()) or 'none bundled'}); "
                            f"models are never downloaded")


def load_diffusion_model(model: str | Path, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a local diffusers ``UNet2DModel`` + ``DDPMScheduler`` (``local_files_only=True``).

    model: a folder (see the module docstring for layouts) or a bundled name such
    as ``"ddpm-synthetic-lung"``. Raises :class:`FileNotFoundError` before any
    diffusers call when the folder is missing or incomplete.
    """
    folder, unet_dir, sched_dir = resolve_model(model)
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, use_safetensors=True,
                                       low_cpu_mem_usage=False)
    scheduler = DDPMScheduler.from_pretrained(str(sched_dir), local_files_only=True)
    return DiffusionModel(unet, scheduler.alphas_cumprod, scheduler.config.prediction_type, folder).to(device)


# ------------------------------------------------------------------- denoise
def ddim_denoise(model: DiffusionModel, noisy: torch.Tensor, sigma: float, *, steps: int = 1,
                 clip: bool = True) -> torch.Tensor:
    """Denoise ``noisy = x + eps`` (``[B, C, H, W]``, ``[0, 1]`` space, unclipped) at noise std ``sigma``.

    ``steps = 1``: one-shot denoising (Carlini et al. 2023); ``steps = k``: k
    deterministic DDIM steps from ``t*`` (see the module docstring). clip: clip
    each ``x0_hat`` to ``[-1, 1]`` (the result is then in ``[0, 1]``).
    Returns ``[B, C, H, W]``; differentiable in ``noisy``.
    """
    if noisy.dim() != 4:
        raise ValueError(f"expected noisy images [B, C, H, W], got shape {tuple(noisy.shape)}")
    if noisy.shape[1] != model.in_channels:
        raise ValueError(f"the images have {noisy.shape[1]} channel(s), the diffusion model {str(model.path)!r} "
                         f"expects {model.in_channels}")
    size_in = tuple(noisy.shape[-2:])
    size_model = model.sample_size
    sigma_model = resized_noise_std(sigma, size_in, size_model)
    abar = model.alphas_cumprod
    t_star = timestep_for_sigma(abar, sigma_model)
    y = 2 * resize(noisy, size_model) - 1
    x_t = abar[t_star].sqrt() * y
    ts = ddim_timesteps(t_star, steps)
    for i, t in enumerate(ts):
        a_t = abar[t]
        out = model.unet(x_t, torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)).sample
        x0 = predict_x0(out, x_t, a_t, model.prediction_type)
        if clip:
            x0 = x0.clamp(-1, 1)
        if i + 1 == len(ts):
            x_t = x0
            break
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        a_next = abar[ts[i + 1]]
        x_t = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    out = resize((x_t + 1) / 2, size_in)
    return out.clamp(0, 1) if clip else out
