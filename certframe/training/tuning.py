"""What a segmenter was tuned for: the denoiser and noise levels of its training, and a check at certification.

Denoised smoothing (Salman et al., NeurIPS 2020) puts a denoiser D in front of a
segmenter f and certifies f(D(x + eps)); fine-tuning f on D(x + eps) (Carlini et al.,
ICLR 2023, the fine-tuned variant) makes f fit exactly that D and those sigmas.
Certifying such a model with another denoiser, or at a sigma it was not trained for,
is legitimate (the certificate stays valid) but not what it was tuned for, and the
certified Dice then says little about the tuned pipeline: :func:`check_tuning`
returns the warning text to show and record in the run manifest.

A checkpoint's configuration (:func:`certframe.checkpoint.read_config`) carries::

    "tuned_for": {"denoiser": "ddpm", "denoiser_options": {"model": "ddpm-synthetic-lung"},
                  "denoiser_hash": "sha256:...", "sigmas": [0.25, 0.5]}

written by ``certframe train segmenter`` (``denoiser`` is ``"none"`` for Gaussian
training). The denoiser is identified by :func:`module_hash`, a content hash of its
tensors, so the same weights give the same hash whatever folder they are read from.
"""
from __future__ import annotations

import hashlib
import math

import torch

TOLERANCE = 1e-9


def module_hash(module: torch.nn.Module | None) -> str:
    """``"sha256:<hex>"`` over the names, dtypes, shapes and bytes of ``module``'s state dict (in key
    order); a module without tensors (the ``none`` denoiser) hashes the empty state."""
    h = hashlib.sha256()
    state = module.state_dict() if module is not None else {}
    for key in sorted(state):
        t = state[key]
        if not torch.is_tensor(t):
            continue
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def tuning_record(denoiser: str, denoiser_options: dict, denoiser_hash: str | None, sigmas) -> dict:
    """The ``"tuned_for"`` entry of a checkpoint's configuration."""
    return {"denoiser": denoiser, "denoiser_options": dict(denoiser_options or {}),
            "denoiser_hash": denoiser_hash, "sigmas": [float(s) for s in sigmas]}


def tuned_for(checkpoint_config: dict | None) -> dict | None:
    """What the model of this checkpoint configuration was tuned for, or None (clean training).

    Reads ``"tuned_for"``; older checkpoints that only record Gaussian training
    (``training.noise_sigma > 0``) count as tuned for the ``none`` denoiser at that sigma.
    """
    if not checkpoint_config:
        return None
    if checkpoint_config.get("tuned_for"):
        return dict(checkpoint_config["tuned_for"])
    sigma = (checkpoint_config.get("training") or {}).get("noise_sigma") or 0
    sigmas = [float(s) for s in (sigma if isinstance(sigma, (list, tuple)) else [sigma]) if s]
    if sigmas:
        return tuning_record("none", {}, module_hash(None), sigmas)
    return None


def check_tuning(config: dict | None, denoiser_name: str, denoiser_hash: str | None, sigma: float) -> str | None:
    """A warning text when certifying with another denoiser or sigma than the model was tuned for, else None.

    config: the segmenter checkpoint's configuration (or None: nothing is known, no warning).
    denoiser_name, denoiser_hash: the denoiser of the run (``module_hash`` of the built denoiser).
    sigma: the run's noise level.
    """
    tuned = tuned_for(config)
    if tuned is None:
        return None
    problems = []
    if denoiser_name != tuned["denoiser"]:
        problems.append(f"denoiser {denoiser_name!r} instead of {tuned['denoiser']!r}")
    elif tuned.get("denoiser_hash") and denoiser_hash and denoiser_hash != tuned["denoiser_hash"]:
        problems.append(f"denoiser {denoiser_name!r} with other weights ({denoiser_hash[:19]}... instead of "
                        f"{tuned['denoiser_hash'][:19]}...)")
    if not any(math.isclose(float(sigma), s, rel_tol=0, abs_tol=TOLERANCE) for s in tuned["sigmas"]):
        problems.append(f"sigma {sigma:g} outside the trained sigma(s) {', '.join(f'{s:g}' for s in tuned['sigmas'])}")
    if not problems:
        return None
    return (f"the segmenter was tuned for denoiser {tuned['denoiser']!r} at sigma "
            f"{', '.join(f'{s:g}' for s in tuned['sigmas'])}; this run uses " + " and ".join(problems)
            + ": the certificate holds, but it does not measure the pipeline the model was tuned for")


def segmenter_tuning_warning(segmenter, denoiser_name: str, denoiser, sigma: float) -> str | None:
    """:func:`check_tuning` for built plugins: reads ``segmenter.checkpoint_config`` (None when absent)
    and hashes ``denoiser`` (None for no denoiser, which counts as ``none``)."""
    config = getattr(segmenter, "checkpoint_config", None)
    return check_tuning(config, denoiser_name, module_hash(denoiser), sigma)
