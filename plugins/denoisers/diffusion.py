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

Trained range: a model trained by certframe records the timesteps it was trained
on (``training.t_max`` in the folder's ``certframe.json``, see
:mod:`certframe.plugins.denoisers.ddpm_training`). A network queried beyond them
returns garbage, so :func:`check_trained_range` refuses a sigma whose ``t*`` (for
the image size given, after :func:`resized_noise_std`) exceeds ``t_max``, naming
the largest sigma supported (:func:`largest_sigma`). Folders without that record
(third-party diffusers folders, converted checkpoints) are assumed trained on all
timesteps of their schedule.

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

import json
import math
import warnings
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from certframe.core.statistics import check_sigma

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
    sigma = check_sigma(sigma)
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
    return float(sigma) * _noise_shrink(tuple(int(v) for v in in_size), tuple(int(v) for v in out_size))


@lru_cache(maxsize=64)
def _noise_shrink(in_size: tuple[int, int], out_size: tuple[int, int]) -> float:
    h = _axis_row_sq_norms(in_size[0], out_size[0])
    w = _axis_row_sq_norms(in_size[1], out_size[1])
    return math.sqrt(float(h.mean() * w.mean()))


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
    trained_t_max: the largest timestep the model was trained on (``training.t_max``
        of the folder's ``certframe.json``), or None when the folder does not record
        it (third-party diffusers folders): such a model is ASSUMED to be trained on
        every timestep of its schedule, as DDPMs usually are.
    """

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str,
                 path: Path, trained_t_max: int | None = None):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{path}: scheduler prediction_type {prediction_type!r} is not one of "
                             f"{PREDICTION_TYPES}")
        self.unet = unet.eval().requires_grad_(False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float32), persistent=False)
        self.prediction_type = prediction_type
        self.path = Path(path)
        self.trained_t_max = None if trained_t_max is None else int(trained_t_max)

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def sample_size(self) -> tuple[int, int]:
        s = self.unet.config.sample_size
        return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))


# ------------------------------------------------------------- trained range
TRAINING_RECORD = "certframe.json"


def read_trained_t_max(folder: Path, num_timesteps: int) -> int | None:
    """``training.t_max`` from ``folder/certframe.json``; None when the file or the entry is absent.

    A record that is not an integer in ``0 .. num_timesteps - 1`` is a ValueError
    naming the file (a corrupt record must not silently widen the range).
    """
    record = Path(folder) / TRAINING_RECORD
    if not record.is_file():
        return None
    try:
        info = json.loads(record.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(record)!r} is not valid JSON: {err}") from err
    if isinstance(info, dict) and info.get("interrupted"):
        stop = info["interrupted"]
        warnings.warn(f"{str(folder)!r} holds the EMA model of a training run interrupted at step "
                      f"{stop.get('step')} of {stop.get('steps')}; resume it to finish", stacklevel=3)
    t_max = (info.get("training") or {}).get("t_max") if isinstance(info, dict) else None
    if t_max is None:
        return None
    if isinstance(t_max, bool) or not isinstance(t_max, int) or not 0 <= t_max < num_timesteps:
        raise ValueError(f"{str(record)!r}: training.t_max must be an integer timestep in 0..{num_timesteps - 1}, "
                         f"got {t_max!r}")
    return t_max


def largest_sigma(alphas_cumprod: torch.Tensor, t_max: int | None, image_size: tuple[int, int],
                  model_size: tuple[int, int]) -> float:
    """The largest sigma (on images of ``image_size``) whose ``t*`` is ``<= t_max``.

    ``t* <= t_max`` exactly when the model-range noise ``2 s'`` (``s'`` = sigma
    after resizing) lies at or below the midpoint of the noise-to-signal ratios
    of ``t_max`` and ``t_max + 1`` (:func:`timestep_for_sigma` breaks ties towards
    the smaller t); resizing scales sigma linearly (:func:`resized_noise_std`).
    ``inf`` when ``t_max`` is None or the last timestep.
    """
    if t_max is None or t_max >= len(alphas_cumprod) - 1:
        return math.inf
    ratio = noise_to_signal(alphas_cumprod)
    boundary = float(ratio[t_max] + ratio[t_max + 1]) / 4
    return boundary / resized_noise_std(1.0, tuple(image_size), tuple(model_size))


def check_trained_range(model: "DiffusionModel", sigma: float, image_size: tuple[int, int]) -> int:
    """``t*`` for ``sigma`` on images of ``image_size``; ValueError when it lies beyond ``trained_t_max``.

    The message names the folder, the timestep range trained on and the largest
    sigma supported at this image size.
    """
    t_star = timestep_for_sigma(model.alphas_cumprod, resized_noise_std(sigma, tuple(image_size), model.sample_size))
    if model.trained_t_max is not None and t_star > model.trained_t_max:
        top = largest_sigma(model.alphas_cumprod, model.trained_t_max, image_size, model.sample_size)
        h, w = image_size
        raise ValueError(
            f"sigma {sigma:g} needs timestep t*={t_star}, but the diffusion model {str(model.path)!r} was trained "
            f"on t in 0..{model.trained_t_max} only ({TRAINING_RECORD}): the largest sigma it supports on "
            f"{h}x{w} images is {top:.4g}. Train one for this sigma (certframe train denoiser --max-sigma "
            f"{sigma:g}) or pass the denoiser option allow_untrained_sigma=true to use it anyway")
    return t_star


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
    t_max = read_trained_t_max(folder, len(scheduler.alphas_cumprod))
    return DiffusionModel(unet, scheduler.alphas_cumprod, scheduler.config.prediction_type, folder,
                          trained_t_max=t_max).to(device)


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
        what = " (a batch of volumes: diffusion denoisers are 2-D)" if noisy.dim() == 5 else ""
        raise ValueError(f"expected noisy images [B, C, H, W], got shape {tuple(noisy.shape)}{what}")
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
